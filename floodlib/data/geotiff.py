"""Terrain rasters: read a GeoTIFF DEM (rasterio) and sample it onto a store's terrain points.

A DEM must be georeferenced in a projected CRS whose unit is the metre or a foot: coordinates in
degrees would be taken for metres (a 1° pixel read as a 1 m one), so a geographic CRS is refused, and a
DEM in feet is converted to metres as it is read (:func:`read_geotiff`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from floodlib.data.store import SimulationFileError

# Metres per foot, exact by definition: the international foot (1959) and the US survey foot
# (1200/3937 m). PROJ reports the latter as 0.30480060960121924, one ulp away from 1200/3937.
INTERNATIONAL_FOOT_M = 0.3048
US_SURVEY_FOOT_M = 1200 / 3937
_LINEAR_UNITS = (("metre", 1.0), ("international foot", INTERNATIONAL_FOOT_M), ("US survey foot", US_SURVEY_FOOT_M))
# The elevations' unit as GDAL reports a band's unit type (from the GeoTIFF's VerticalUnitsGeoKey or its
# own metadata), lower-cased: the names GDAL and PROJ give the three units, and their usual abbreviations.
_VERTICAL_UNITS = {
    **dict.fromkeys(("metre", "meter", "metres", "meters", "m"), ("metre", 1.0)),
    **dict.fromkeys(("foot", "feet", "ft", "international foot", "international feet", "ft_intl"),
                    ("international foot", INTERNATIONAL_FOOT_M)),
    **dict.fromkeys(("us survey foot", "us survey feet", "ftus", "us-ft", "us_survey_foot", "foot_us"),
                    ("US survey foot", US_SURVEY_FOOT_M)),
}
# Fewer pixels a side is a sample, not a surface: 3 is the smallest raster with a pixel that has
# neighbours on every side, so that slope is defined everywhere in its interior.
MIN_RASTER_PIXELS = 3
#: Elevations outside this range, m, are no terrain on Earth (the Dead Sea shore is at -430 m, Everest at
#: 8,849 m): a DEM holding them has an undeclared nodata value (-9999, -32768, -3.4e38 ...).
MIN_ELEVATION_M = -1000.0
MAX_ELEVATION_M = 9000.0
_REPROJECT_HINT = ("reproject it first, e.g. gdalwarp -t_srs EPSG:<UTM zone in metres> -tr 1 1 -r bilinear "
                   "in.tif out.tif")


@dataclass
class Raster:
    """A north-up raster, in metres.

    Attributes
    ----------
    values : (rows, cols) float32, elevation in m, NaN where the file has no data.
    x0, y0 : west and north edges of the raster (outer corner of pixel row 0, column 0), m.
    dx, dy : pixel width and height, m (both positive; rows run south).
    crs : the coordinate reference system as ``EPSG:<code>`` or WKT, or None.
    path : where it was read from (for messages).
    units_factor : metres per unit of the file's CRS (1.0 for a CRS in metres, 0.3048 for the
        international foot, 1200/3937 for the US survey foot). ``x0, y0, dx, dy`` and ``values`` have
        been multiplied by it: coordinates in the CRS itself are ``x0 / units_factor`` and so on.
    source_units : name of that unit (``"metre"``, ``"international foot"``, ``"US survey foot"``).
    vertical_units, vertical_factor : the elevations' unit and metres per unit of it (``values`` has been
        multiplied by it): the unit the file states for them (a compound CRS's vertical part, or the band's
        unit), else the CRS's own unit.
    vertical_stated : whether the file states the elevations' unit (False: taken from the CRS, or metres
        for a raster without CRS).
    """

    values: np.ndarray
    x0: float
    y0: float
    dx: float
    dy: float
    crs: str | None = None
    path: str = "<raster>"
    units_factor: float = 1.0
    source_units: str = "metre"
    vertical_units: str = "metre"
    vertical_factor: float = 1.0
    vertical_stated: bool = False

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north), m."""
        rows, cols = self.values.shape
        return self.x0, self.y0 - rows * self.dy, self.x0 + cols * self.dx, self.y0


def _crs_text(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _crs_for_message(text: str) -> str:
    """A CRS short enough to read in a message: an EPSG code, or the start of its WKT."""
    return text if len(text) <= 100 else text[:80] + "..."


def _linear_unit(path: Path, crs) -> tuple[str, float]:
    """(name, metres per unit) of ``crs``'s linear unit; refuses degrees and units other than metre or foot."""
    from rasterio.errors import CRSError

    text = _crs_for_message(_crs_text(crs))
    if crs.is_geographic:
        raise SimulationFileError(
            f"{path}: crs: {text} is a geographic CRS (coordinates in degrees); expected a projected CRS in metres "
            f"(a DEM's pixel size and the 10 m grid are in metres); {_REPROJECT_HINT}")
    try:
        name, factor = crs.linear_units_factor
    except CRSError:
        raise SimulationFileError(
            f"{path}: crs: {text} is neither geographic nor projected and has no linear unit; expected a projected CRS "
            f"in metres; {_REPROJECT_HINT}") from None
    for known, metres in _LINEAR_UNITS:
        # Tight enough to tell the US survey foot (2e-6 relative) from the international one, and both
        # from the Clarke's, Indian and Gold Coast feet, which are refused below.
        if abs(factor - metres) <= 1e-12 * metres:
            return known, metres
    raise SimulationFileError(
        f"{path}: crs: {text} is in {name!r} ({factor!r} m each); expected a projected CRS in metres (or in "
        f"international or US survey feet, converted as read); {_REPROJECT_HINT}")


def read_geotiff(path: str | Path, band: int = 1) -> Raster:
    """Read one band of a GeoTIFF (any compression GDAL reads) as float32 metres, nodata as NaN.

    The file must be georeferenced by a north-up geotransform, be at least ``MIN_RASTER_PIXELS``
    (3) pixels a side, and have one of:

    - a projected CRS in metres: read as it is;
    - a projected CRS in international or US survey feet: pixel size and origin are multiplied by the
      foot's exact length in metres (recorded as ``units_factor`` and ``source_units`` on the result);
    - no CRS but a geotransform other than the identity: the coordinates are assumed to be in metres
      already (a local survey grid); nothing in the file can confirm or refute it.

    Elevations are converted from the unit the file states for them — the vertical part of a compound
    CRS (a GeoTIFF's ``VerticalUnitsGeoKey``) or the band's unit, as GDAL reports it — which may differ from
    the coordinates' (UTM metres with NAVD88 heights in US survey feet is common in US lidar); a file that
    states none has its elevations in the CRS's own unit (metres without a CRS). ``vertical_units``,
    ``vertical_factor`` and ``vertical_stated`` on the result say which.

    Raises
    ------
    SimulationFileError
        naming the file, the field, its value and what was expected: a missing or unreadable file, a
        band the file lacks, no georeference (the identity geotransform GDAL reports for a bare image,
        or ground control points only), a rotated or south-up grid, a geographic CRS (degrees), a CRS
        in any other unit, an elevation unit other than metre or foot, elevations outside
        MIN_ELEVATION_M..MAX_ELEVATION_M (an undeclared nodata value), or fewer than 3 pixels a side.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = Path(path)
    if not path.exists():
        raise SimulationFileError(f"{path}: file: does not exist")
    try:
        # The warning is turned into the error below, which names the file.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                if dataset.count == 0:
                    raise SimulationFileError(
                        f"{path}: file: holds no raster band (GDAL reads it as {dataset.driver}"
                        + (f", a container of {len(dataset.subdatasets)} datasets" if dataset.subdatasets else "")
                        + "); expected a GeoTIFF DEM")
                if band < 1 or band > dataset.count:
                    raise SimulationFileError(
                        f"{path}: band: {band} is not one of the file's bands 1..{dataset.count}")
                transform = dataset.transform
                crs = dataset.crs
                band_unit = (dataset.units[band - 1] or "").strip()
                nodata = dataset.nodata
                shape = dataset.shape
                control_points = len(dataset.gcps[0]) if transform.is_identity else 0
                north_up = transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0
                values = None
                if north_up and not transform.is_identity and min(shape) >= MIN_RASTER_PIXELS:
                    values = dataset.read(band, masked=True).astype(np.float32).filled(np.nan)
    except RasterioIOError as error:
        raise SimulationFileError(f"{path}: file: is not a readable GeoTIFF ({_reasons(error)})") from None
    if transform.is_identity:
        how = (f"it has only {control_points} ground control points; warp it onto a grid first, e.g. "
               "gdalwarp -t_srs EPSG:<code in metres> in.tif out.tif") if control_points else (
               "georeference it first, e.g. gdal_translate -a_srs EPSG:<code> -a_ullr <west> <north> <east> <south> "
               "in.tif out.tif")
        raise SimulationFileError(
            f"{path}: geotransform: {tuple(transform)[:6]} (pixel size 1, origin 0, 0) is the identity: the file is "
            f"not georeferenced; expected a north-up geotransform in metres; {how}")
    if not north_up:
        raise SimulationFileError(
            f"{path}: geotransform: {tuple(transform)[:6]} is rotated or not north-up; expected a north-up grid")
    if crs is None:
        crs_text, units, factor = None, "metre", 1.0
    else:
        crs_text = _crs_text(crs)
        units, factor = _linear_unit(path, crs)
    if min(shape) < MIN_RASTER_PIXELS:
        raise SimulationFileError(
            f"{path}: size: {shape[0]}x{shape[1]} pixels (rows x columns) is too small; expected at least "
            f"{MIN_RASTER_PIXELS}x{MIN_RASTER_PIXELS} pixels of terrain")
    # Some writers store the nodata value with float32 rounding (e.g. -3.4028230607370965e+38).
    if nodata is not None and np.isfinite(nodata):
        values[np.isclose(values, np.float32(nodata), rtol=1e-6)] = np.nan
    values[np.abs(values) > 1e30] = np.nan
    # The unit the file states for the elevations, else the coordinates' own.
    vertical_units, vertical_factor = _VERTICAL_UNITS.get(band_unit.lower(), (None, None)) if band_unit \
        else (units, factor)
    if vertical_units is None:
        raise SimulationFileError(
            f"{path}: vertical unit (band {band}'s unit): {band_unit!r} is not a unit of elevation floodlib converts; "
            f"expected metre, foot or US survey foot (or none stated: the CRS's unit); convert the elevations "
            f"first, e.g. gdal_calc.py -A in.tif --calc=\"A*<metres per unit>\" --outfile=out.tif")
    if vertical_factor != 1.0:
        values = (values.astype(np.float64) * vertical_factor).astype(np.float32)
    implausible = np.isfinite(values) & ((values < MIN_ELEVATION_M) | (values > MAX_ELEVATION_M))
    if implausible.any():
        r, c = np.argwhere(implausible)[0]
        declared = "declares none" if nodata is None else f"declares {nodata:g}"
        raise SimulationFileError(
            f"{path}: elevation: {int(implausible.sum())} of {values.size} pixels of band {band} lie outside "
            f"{MIN_ELEVATION_M:g}..{MAX_ELEVATION_M:g} m, where no terrain is (the first, at row {r}, column {c}, "
            f"{float(values[r, c]):g} m): most likely a nodata value the file does not declare (it {declared}); "
            f"declare it, e.g. gdal_edit.py -a_nodata {float(values[r, c]) / vertical_factor:g} {path}")
    return Raster(values=values, x0=transform.c * factor, y0=transform.f * factor, dx=transform.a * factor,
                  dy=-transform.e * factor, crs=crs_text, path=str(path), units_factor=factor, source_units=units,
                  vertical_units=vertical_units, vertical_factor=vertical_factor, vertical_stated=bool(band_unit))


def _reasons(error: BaseException) -> str:
    """An error's message with those of the errors that caused it (GDAL's own reason comes as the cause of
    rasterio's "Read failed. See previous exception for details.")."""
    messages = []
    while error is not None and len(messages) < 4:
        text = str(error).strip()
        if text and "previous exception" not in text and not any(text in message for message in messages):
            messages.append(text)
        error = error.__cause__ or error.__context__
    return ": ".join(messages) or "unreadable"


def sample_raster(raster: Raster, *, x: np.ndarray, y: np.ndarray, what: str = "terrain") -> np.ndarray:
    """Bilinear values of ``raster`` at points (x, y) (m: the raster's CRS coordinates times its
    ``units_factor``). Points must lie within the raster's pixel centres' hull and on data: otherwise a
    :class:`SimulationFileError` says how many do not and where.
    """
    from scipy.ndimage import map_coordinates

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    col = (x - raster.x0) / raster.dx - 0.5
    row = (raster.y0 - y) / raster.dy - 0.5
    rows, cols = raster.values.shape
    tolerance = 1e-6
    outside = (col < -0.5 - tolerance) | (col > cols - 0.5 + tolerance) | (row < -0.5 - tolerance) | (row > rows - 0.5 + tolerance)
    if outside.any():
        west, south, east, north = raster.bounds
        raise SimulationFileError(
            f"{raster.path}: {what}: the raster (x {west:.2f}..{east:.2f}, y {south:.2f}..{north:.2f}) does not cover "
            f"the grid: {int(outside.sum())} of {outside.size} points fall outside (x {x.min():.2f}..{x.max():.2f}, "
            f"y {y.min():.2f}..{y.max():.2f})")
    # Half a pixel at the outer edge is served by the edge pixel itself.
    col = np.clip(col, 0, cols - 1)
    row = np.clip(row, 0, rows - 1)
    values = map_coordinates(raster.values.astype(np.float64), [row.ravel(), col.ravel()], order=1,
                             mode="nearest", cval=np.nan).reshape(x.shape)
    missing = ~np.isfinite(values)
    if missing.any():
        first = np.argwhere(missing)[0]
        raise SimulationFileError(
            f"{raster.path}: {what}: {int(missing.sum())} of {missing.size} points fall on nodata/NaN cells of the raster "
            f"(first at x={x[tuple(first)]:.2f}, y={y[tuple(first)]:.2f}); terrain must be complete under the grid")
    return values.astype(np.float32)


def terrain_points(*, origin_x: float, origin_y: float, spacing: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (x, y) of a store's terrain points: row 0 on the north edge ``origin_y``, column 0 on the
    west edge ``origin_x``, ``spacing`` m apart, ``shape`` = (rows * r + 1, cols * r + 1)."""
    rows, cols = shape
    xs = origin_x + spacing * np.arange(cols)
    ys = origin_y - spacing * np.arange(rows)
    return np.meshgrid(xs, ys)
