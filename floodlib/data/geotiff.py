"""Terrain rasters: read a GeoTIFF DEM (rasterio) and sample it onto a store's terrain points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from floodlib.data.store import SimulationFileError


@dataclass
class Raster:
    """A north-up raster.

    Attributes
    ----------
    values : (rows, cols) float32, NaN where the file has no data.
    x0, y0 : west and north edges of the raster (outer corner of pixel row 0, column 0), m.
    dx, dy : pixel width and height, m (both positive; rows run south).
    crs : the coordinate reference system as ``EPSG:<code>`` or WKT, or None.
    path : where it was read from (for messages).
    """

    values: np.ndarray
    x0: float
    y0: float
    dx: float
    dy: float
    crs: str | None = None
    path: str = "<raster>"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north), m."""
        rows, cols = self.values.shape
        return self.x0, self.y0 - rows * self.dy, self.x0 + cols * self.dx, self.y0


def read_geotiff(path: str | Path, band: int = 1) -> Raster:
    """Read one band of a GeoTIFF (any compression GDAL reads) as float32, nodata as NaN.

    Raises :class:`SimulationFileError` for a missing or unreadable file or a rotated/south-up grid.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.exists():
        raise SimulationFileError(f"{path}: file: does not exist")
    try:
        with rasterio.open(path) as dataset:
            if band < 1 or band > dataset.count:
                raise SimulationFileError(f"{path}: band: {band} is not one of the file's bands 1..{dataset.count}")
            values = dataset.read(band, masked=True).astype(np.float32).filled(np.nan)
            transform = dataset.transform
            crs = dataset.crs
            nodata = dataset.nodata
    except RasterioIOError as error:
        raise SimulationFileError(f"{path}: file: is not a readable GeoTIFF ({error})") from None
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise SimulationFileError(
            f"{path}: geotransform: {tuple(transform)[:6]} is rotated or not north-up; expected a north-up grid")
    # Some writers store the nodata value with float32 rounding (e.g. -3.4028230607370965e+38).
    if nodata is not None and np.isfinite(nodata):
        values[np.isclose(values, np.float32(nodata), rtol=1e-6)] = np.nan
    values[np.abs(values) > 1e30] = np.nan
    if crs is None:
        crs_text = None
    else:
        epsg = crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg else crs.to_wkt()
    return Raster(values=values, x0=transform.c, y0=transform.f, dx=transform.a, dy=-transform.e,
                  crs=crs_text, path=str(path))


def sample_raster(raster: Raster, *, x: np.ndarray, y: np.ndarray, what: str = "terrain") -> np.ndarray:
    """Bilinear values of ``raster`` at points (x, y) (m, same CRS). Points must lie within the raster's
    pixel centres' hull and on data: otherwise a :class:`SimulationFileError` says how many do not and where.
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
