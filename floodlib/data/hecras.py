"""HEC-RAS 2D results (a plan's ``.pNN.hdf``) read into the simulation store.

Where things live in a plan file (HEC-RAS 5.x and 6.x alike):

- ``Geometry/2D Flow Areas/Attributes`` — one row per 2D flow area: ``Name`` and ``Cell Count``.
  Per-cell arrays hold ``Cell Count`` real cells first; the rows after them are ghost cells on the
  area's boundary and are ignored.
- ``Geometry/2D Flow Areas/<area>/Cells Center Coordinate`` (cells, 2) x, y and
  ``Cells Minimum Elevation`` (cells,), in the model's coordinates.
- ``Results/Unsteady/Output/Output Blocks/Base Output/Unsteady Time Series`` — the output time stamps
  (``Time Date Stamp (ms)``, ``Time Date Stamp``, ``Time`` in days) and, under ``2D Flow Areas/<area>``,
  (times, cells) arrays: ``Depth`` (5.x), ``Cell Invert Depth`` (6.x) or ``Water Surface``.

The store wants a regular grid, so only meshes whose cell centres lie on one square lattice (HEC-RAS's
default square cells, trimmed to an irregular outline) can be read; grid cells outside the outline are
NaN in ``water_depth``.

Units: the root attribute ``Units System`` says ``SI Units`` (metres) or ``US Customary`` (feet). Plans in
feet are converted to metres — coordinates, cell size, elevations, depths and a DEM's elevations — with
the foot of the plan's ``Projection`` when it names one (US survey foot, 1200/3937 m, or international
foot, 0.3048 m) and the international foot otherwise; the store records the conversion. A file that does
not state its units is refused unless the caller states them (``units="SI"`` or ``"US"``).

Output times: the store needs one fixed interval. HEC-RAS also writes the simulation's end time as a last
output when the end falls between two regular outputs; such a last output (closer to the one before it
than the interval) is dropped with a warning. Any other uneven spacing is refused.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np

from floodlib.data.geotiff import (INTERNATIONAL_FOOT_M, US_SURVEY_FOOT_M, Raster, read_geotiff, sample_raster,
                                   terrain_points)
from floodlib.data.store import Simulation, SimulationFileError, field_error, open_hdf5, write_simulation

AREAS_PATH = "Geometry/2D Flow Areas"
TIME_SERIES_PATH = "Results/Unsteady/Output/Output Blocks/Base Output/Unsteady Time Series"

# Centres may sit this fraction of a cell off the fitted lattice (float noise in the file) and still
# count as on it; 1e-3 is 5 cm for 50 m cells, far below any real displacement of a computation point.
LATTICE_TOLERANCE = 1e-3
# Negative depths down to this are single-precision rounding of (water surface − bed); deeper ones are not.
DEPTH_ROUNDING_M = 1e-3
TIME_TOLERANCE_S = 1e-3
# The largest terrain a plan may ask for, in points: 0.8 GB as float32 in the store (2 million cells at
# the default 10 terrain points per cell edge). terrain_ratio=1000 on a 12 x 200 grid would be 2.4 billion.
MAX_TERRAIN_POINTS = 200_000_000
# Terrain points computed at once (nearest-cell search or DEM sampling): bounds the working memory of a
# large terrain to a few hundred MB beyond the terrain itself.
TERRAIN_BLOCK_POINTS = 4_000_000

_SECONDS_PER_UNIT = {"days": 86400.0, "day": 86400.0, "hours": 3600.0, "hour": 3600.0,
                     "minutes": 60.0, "minute": 60.0, "seconds": 1.0, "second": 1.0}


@dataclass
class _Lattice:
    """Where each HEC-RAS cell falls on the store's grid."""

    cell_size: float
    rows: np.ndarray  # (cells,) int, 0 on the north edge
    cols: np.ndarray  # (cells,) int, 0 on the west edge
    shape: tuple[int, int]
    origin_x: float  # west edge of column 0, in the plan's length unit
    origin_y: float  # north edge of row 0, in the plan's length unit

    def scaled(self, metres_per_unit: float) -> "_Lattice":
        """The same lattice with lengths in metres (``metres_per_unit`` m per unit of the plan)."""
        if metres_per_unit == 1.0:
            return self
        # Micrometre rounding again, as in _fit_lattice: 100 ft cells become exactly 30.48 m.
        return _Lattice(cell_size=round(self.cell_size * metres_per_unit, 6), rows=self.rows, cols=self.cols,
                        shape=self.shape, origin_x=self.origin_x * metres_per_unit,
                        origin_y=self.origin_y * metres_per_unit)


@dataclass(frozen=True)
class _Foot:
    """The foot a US Customary plan's lengths are in, and why that one."""

    metres: float  # m per foot
    name: str  # 'US survey foot' or 'international foot'
    reason: str
    projection_in_metres: bool = False  # the plan's Projection contradicts its units


def list_2d_areas(plan_hdf: str | Path) -> list[str]:
    """Names of the 2D flow areas in a HEC-RAS plan (or geometry) HDF file.

    Parameters
    ----------
    plan_hdf : path of the ``.pNN.hdf`` file.

    Returns
    -------
    list of str, in the file's order (that of ``Geometry/2D Flow Areas/Attributes``).

    Raises
    ------
    SimulationFileError
        When the file is missing, is not HDF5, or has no 2D flow areas.
    """
    path = Path(plan_hdf)
    with open_hdf5(path) as h5:
        try:
            return _area_names(h5, path)
        except (OSError, KeyError, RuntimeError) as error:
            # h5py reports damaged metadata or compressed chunks in any of these ways.
            raise _damaged(path, error) from None


def hecras_names(plan_hdf: str | Path, *, area: str | None = None, project: str | None = None,
                 plan: str | None = None) -> tuple[str, str]:
    """The (project, plan) names :func:`read_hecras` gives one area of a plan, from the file's attributes
    alone (no depths, cells or terrain are read): where a run keeps the plan is known before reading it.

    Same arguments and defaults as :func:`read_hecras`; SimulationFileError for a missing or damaged file
    or an unknown area.
    """
    path = Path(plan_hdf)
    with open_hdf5(path) as h5:
        try:
            names = _area_names(h5, path)
            area = _pick_area(path, names, area)
            plan_id = _plan_id(h5) or path.name
        except (OSError, KeyError, RuntimeError) as error:
            raise _damaged(path, error) from None
    return _names(path, names, area, plan_id, project=project, plan=plan)


def _names(path: Path, areas: list[str], area: str, plan_id: str, *, project: str | None,
           plan: str | None) -> tuple[str, str]:
    """(project, plan): the ones given, else the file's project name and the plan's id (with the area's
    name when the plan has several)."""
    return (project if project is not None else project_name_from_file(path),
            plan if plan is not None else plan_id if len(areas) == 1 else f"{plan_id} ({area})")


def read_hecras(
    plan_hdf: str | Path,
    *,
    area: str | None = None,
    terrain: str | Path | None = None,
    project: str | None = None,
    plan: str | None = None,
    terrain_ratio: int = 10,
    units: str | None = None,
) -> Simulation:
    """Read one 2D flow area of a HEC-RAS plan's results as a store :class:`Simulation`.

    Parameters
    ----------
    plan_hdf : path of the plan results file (``<project>.pNN.hdf``), in SI or US Customary units.
    area : name of the 2D flow area; None picks the only one (an error lists them if there are several).
        A plan with several areas is read one area per call.
    terrain : GeoTIFF DEM in the plan's coordinates, sampled bilinearly at the store's terrain points; it
        must cover the whole grid box (out-of-area cells included) with data. A DEM with a CRS is read in
        that CRS's unit (metres, or feet converted to m by :func:`~floodlib.data.geotiff.read_geotiff`); one
        without a CRS is taken to be in the plan's own units (feet for a US Customary plan). None builds
        the terrain from HEC-RAS's ``Cells Minimum Elevation``: each terrain point takes the value of the
        nearest in-area cell (a step surface, coarse but always available).
    project : defaults to the HEC-RAS project name, the file name before ``.pNN`` (``backwater_curve`` for
        ``backwater_curve.p01.hdf``), so that plans of one project share it (the areas of one plan too).
    plan : defaults to the plan's short id, else its title, else the file name; when the plan has more
        than one 2D area, followed by the area's name in brackets (``Dam Break (Upper 2D Area)``) so that
        each area of one plan gets its own plan name.
    terrain_ratio : terrain points per cell edge, r; terrain spacing = cell size / r, m. The terrain's
        (rows * r + 1) x (cols * r + 1) points may number at most ``MAX_TERRAIN_POINTS`` (200 million).
    units : ``"SI"`` or ``"US"`` (US Customary, feet) for a file without a ``Units System`` attribute;
        None (the default) reads the attribute. Stating units that contradict the file's is an error.

    Returns
    -------
    Simulation
        ``water_depth`` (times, rows, cols) float32, m, rows north→south and columns west→east on the
        lattice of the cell centres, NaN where the grid box has no HEC-RAS cell; ``terrain``
        (rows * r + 1, cols * r + 1) float32, m; ``cell_size_m`` the lattice spacing; ``output_interval_s``
        the (uniform) spacing of the output times, s; ``origin_x``, ``origin_y`` the north-west corner of
        cell (0, 0) in the plan's coordinates, m; ``crs`` the file's ``Projection`` (WKT) or None.
        ``extra`` holds ``hecras_first_output`` (the first output's date and time, when the file has
        stamps), ``source_units`` (``"SI"`` or ``"US Customary"``) and ``source_units_from`` (``"Units
        System"`` or ``"units argument"``); for a plan in feet also ``converted_from`` (the foot:
        ``"US survey foot"`` or ``"international foot"``), ``foot_m`` (m per foot) and
        ``source_origin_x``, ``source_origin_y`` (the corner in the projection's own feet: ``crs`` is
        still the plan's projection, whose unit is the foot); and ``hecras_dropped_output_s`` (s after the
        first output) when a last output off the interval was dropped.

    Lengths in feet become metres with the foot the plan's ``Projection`` names: the US survey foot
    (1200/3937 m) or the international foot (0.3048 m); with no projection, or one that does not say
    which foot, the international foot (and ``source`` says it was assumed). Elevations and depths use the
    same foot (the two differ by 2 parts per million, 0.2 mm in 100 ft).

    Warns
    -----
    UserWarning
        When the last output is closer to the one before it than the output interval (the simulation
        ended between two regular outputs): that output is dropped, and the warning names its time.

    Raises
    ------
    SimulationFileError
        Naming the file, the dataset or attribute and the value, for: a missing or unreadable file, an
        unknown area, no cell centres, centres off a square lattice, units that are unknown, not stated
        (without ``units=``) or contradicted by ``units=``, output times unevenly spaced (other than the
        dropped last one), no depth data, NaN or negative depths (below −1 mm; shallower negatives are
        rounding and become 0), a terrain grid over ``MAX_TERRAIN_POINTS`` (refused before anything
        large is built or read), or a DEM that does not cover the grid.
    """
    path = Path(plan_hdf)
    ratio = _check_terrain_ratio(path, terrain_ratio)
    stated_units = _check_units_argument(path, units)
    with open_hdf5(path) as h5:
        try:
            names = _area_names(h5, path)
            area = _pick_area(path, names, area)
            system, system_from = _plan_units(h5, path, stated_units)
            crs = _attr_text(h5, "Projection")
            foot = _foot(crs) if system == "US" else None
            if foot is not None and foot.projection_in_metres:
                contradiction = (f"the plan's lengths are in feet ({system_from}: US Customary) but its Projection is "
                                 "in metres, so its coordinates cannot be in both")
                if terrain is not None:
                    raise field_error(path, "Projection", f"{contradiction}: a DEM cannot be placed under its cells; "
                                      "correct the plan's units or its projection in HEC-RAS")
                warnings.warn(f"{path}: {contradiction}; its lengths are read as {foot.name} ({foot.reason})",
                              UserWarning, stacklevel=2)
            count = _cell_count(h5, path, area)
            centres_field = f"{AREAS_PATH}/{area}/Cells Center Coordinate"
            centres = _cell_centres(h5, path, area, count)
            # The lattice is fitted in the file's own unit, so that lattice errors quote the file's numbers.
            native = _fit_lattice(path, centres_field, centres, unit="ft" if foot else "m")
            _check_terrain_size(path, area, native.shape, ratio)
            times_s, stamps, times_field = _output_times(h5, path)
            interval_s, kept = _output_interval(path, times_field, times_s)
            depth, depth_field = _cell_depths(h5, path, area, count, len(times_s))
            if terrain is None:
                minimum_elevation = _minimum_elevation(h5, path, area, count)
            else:  # to check the DEM against, where the file holds them
                node = h5.get(f"{AREAS_PATH}/{area}/Cells Minimum Elevation")
                minimum_elevation = (np.asarray(node[:count], dtype=np.float64) if isinstance(node, h5py.Dataset)
                                     and node.ndim == 1 and node.shape[0] >= count else None)
            version = _version(h5)
            plan_id = _plan_id(h5) or path.name
        except (OSError, KeyError, RuntimeError) as error:
            # h5py reports damaged metadata or compressed chunks in any of these ways.
            raise _damaged(path, error) from None

    extra: dict = {}
    if stamps:
        extra["hecras_first_output"] = stamps[0].isoformat(sep=" ")
    if kept < len(times_s):
        dropped = float(round(times_s[-1], 3))
        when = f" ({stamps[-1].isoformat(sep=' ')})" if stamps else ""
        warnings.warn(f"{path}: {times_field}: the last output, {dropped:g} s after the first{when}, is "
                      f"{times_s[-1] - times_s[-2]:g} s after the one before it, off the {interval_s:g} s output "
                      "interval (the simulation ended between two outputs); it is dropped and the first "
                      f"{kept} outputs are read", UserWarning, stacklevel=2)
        extra["hecras_dropped_output_s"] = dropped
        depth = depth[:kept]

    metres = foot.metres if foot else 1.0
    lattice = native.scaled(metres)
    water_depth = _depth_grid(path, depth_field, depth, lattice, metres=metres)
    cell_size = lattice.cell_size
    spacing = cell_size / ratio
    shape = (lattice.shape[0] * ratio + 1, lattice.shape[1] * ratio + 1)
    if terrain is None:
        terrain_values = _terrain_from_cells(path, area, minimum_elevation * metres, lattice, ratio)
        terrain_text = "terrain from the nearest cell's Cells Minimum Elevation (no DEM given)"
    else:
        raster = read_geotiff(terrain)
        _check_same_crs(path, crs, raster)
        at, value_scale, dem_text = _dem_units(raster, foot)
        terrain_values = _sample_dem(raster, native, ratio, at=at, value_scale=value_scale,
                                     what=f"terrain for {path.name} area {area} ({shape[0]}x{shape[1]} points "
                                          f"{spacing:g} m apart)")
        terrain_text = f"terrain {Path(terrain).name} ({raster.dx:.4g} m pixels) sampled bilinearly{dem_text}"
        extra["dem_pixel_m"] = float(raster.dx)
        if minimum_elevation is not None:
            _check_dem_elevations(path, terrain, area, terrain_values, minimum_elevation * metres, lattice, ratio)

    extra["source_units"] = "US Customary" if system == "US" else "SI"
    extra["source_units_from"] = system_from
    units_text = ""
    if foot is not None:
        extra.update(converted_from=foot.name, foot_m=foot.metres, source_origin_x=native.origin_x,
                     source_origin_y=native.origin_y)
        units_text = f", US Customary lengths converted to m with the {foot.name} ({foot.metres:.10g} m; {foot.reason})"
    project, plan = _names(path, names, area, plan_id, project=project, plan=plan)
    simulation = Simulation(
        project=project,
        plan=plan,
        terrain=terrain_values,
        water_depth=water_depth,
        cell_size_m=cell_size,
        terrain_spacing_m=spacing,
        output_interval_s=interval_s,
        source=f"HEC-RAS {version} {path.name} area {area}, depth from {depth_field.rsplit('/', 1)[-1]}, "
               f"{terrain_text}{units_text}",
        origin_x=lattice.origin_x,
        origin_y=lattice.origin_y,
        crs=crs,
        event=None,
        extra=extra,
    )
    return simulation.validate(path)


def convert_hecras(plan_hdf: str | Path, out_path: str | Path, **kwargs) -> Path:
    """:func:`read_hecras` then :func:`~floodlib.data.store.write_simulation` (atomic) to ``out_path``.

    Keyword arguments are those of :func:`read_hecras` (``area``, ``terrain``, ``project``, ``plan``,
    ``terrain_ratio``, ``units``). Nothing is written when reading fails. Returns the path written.
    """
    return write_simulation(out_path, read_hecras(plan_hdf, **kwargs))


# --- where things are in the file ------------------------------------------------------------------

def _damaged(path: Path, error: Exception) -> SimulationFileError:
    return field_error(path, "file", f"could not be read ({error}); it may be truncated or corrupt")


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else b""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _attr_text(node, name: str) -> str | None:
    if name not in node.attrs:
        return None
    return _text(node.attrs[name]) or None


def _dataset(h5: h5py.File, path: Path, name: str, why: str) -> h5py.Dataset:
    node = h5.get(name)
    if not isinstance(node, h5py.Dataset):
        raise field_error(path, name, f"dataset is missing; {why}")
    return node


def _area_names(h5: h5py.File, path: Path) -> list[str]:
    table = h5.get(f"{AREAS_PATH}/Attributes")
    if isinstance(table, h5py.Dataset) and table.dtype.names and "Name" in table.dtype.names:
        names = [_text(name) for name in table["Name"]]
    else:
        # Files without the table still have one geometry group per area.
        group = h5.get(AREAS_PATH)
        names = [key for key in group if isinstance(group[key], h5py.Group)] if isinstance(group, h5py.Group) else []
    names = [name for name in names if name]
    if not names:
        raise field_error(path, AREAS_PATH, "holds no 2D flow areas; expected a HEC-RAS plan with at least one 2D area")
    return names


def _pick_area(path: Path, names: list[str], area: str | None) -> str:
    if area is None:
        if len(names) > 1:
            raise field_error(path, "area", f"the plan has {len(names)} 2D flow areas ({', '.join(map(repr, names))}); "
                        "choose one with area=")
        return names[0]
    if area not in names:
        raise field_error(path, "area", f"{area!r} is not a 2D flow area of this plan; its areas are "
                    f"{', '.join(map(repr, names))}")
    return area


def _cell_count(h5: h5py.File, path: Path, area: str) -> int:
    table = h5.get(f"{AREAS_PATH}/Attributes")
    count = None
    if isinstance(table, h5py.Dataset) and table.dtype.names and "Cell Count" in table.dtype.names:
        for row in table[()]:
            if _text(row["Name"]) == area:
                count = int(row["Cell Count"])
    if count is None:
        group = h5.get(f"{AREAS_PATH}/{area}")
        if isinstance(group, h5py.Group) and "Cell Count" in group.attrs:
            count = int(np.asarray(group.attrs["Cell Count"]).ravel()[0])
    if count is None:
        raise field_error(path, f"{AREAS_PATH}/Attributes", f"has no 'Cell Count' for area {area!r}; it is needed to tell "
                    "real cells from ghost cells")
    if count < 1:
        raise field_error(path, f"{AREAS_PATH}/Attributes", f"'Cell Count' of area {area!r} is {count}; expected >= 1")
    return count


def _cell_centres(h5: h5py.File, path: Path, area: str, count: int) -> np.ndarray:
    name = f"{AREAS_PATH}/{area}/Cells Center Coordinate"
    node = h5.get(name)
    if not isinstance(node, h5py.Dataset):
        raise field_error(path, name, "dataset is missing: the file has no cell centres, so its cells cannot be placed on "
                    "a grid (a results-only or trimmed file? read the full plan .pNN.hdf HEC-RAS wrote)")
    if node.ndim != 2 or node.shape[1] != 2 or node.shape[0] < count:
        raise field_error(path, name, f"shape {node.shape} must be (cells, 2) with at least Cell Count = {count} rows")
    centres = np.asarray(node[:count], dtype=np.float64)
    bad = ~np.isfinite(centres).all(axis=1)
    if bad.any():
        cell = int(np.flatnonzero(bad)[0])
        raise field_error(path, name, f"cell {cell} has centre {tuple(centres[cell])}; coordinates must be finite")
    return centres


def _check_units_argument(path: Path, units) -> str | None:
    """The ``units`` argument as 'SI', 'US' or None."""
    if units is None:
        return None
    if isinstance(units, str) and units.strip().upper() in ("SI", "US"):
        return units.strip().upper()
    raise field_error(path, "units", f"{units!r} must be 'SI' (metres), 'US' (US Customary, feet) or None (read the "
                      "file's 'Units System' attribute)")


def _plan_units(h5: h5py.File, path: Path, stated: str | None) -> tuple[str, str]:
    """'SI' or 'US', and where that comes from: the file's ``Units System`` or the ``units`` argument."""
    text = _attr_text(h5, "Units System")
    if text is None:
        if stated is None:
            # Reading feet as metres would shrink every depth and cell by 3.3x without a trace: refuse.
            raise field_error(path, "Units System", "attribute is missing or empty, so the file does not say whether "
                              "its lengths are metres or feet; state the HEC-RAS project's unit system with "
                              "units='SI' (metres) or units='US' (US Customary, feet)")
        return stated, "units argument"
    words = text.upper().replace("_", " ").split()
    if "SI" in words or "METRIC" in words:
        found = "SI"
    elif "US" in words or "CUSTOMARY" in words or "ENGLISH" in words:
        found = "US"
    else:
        raise field_error(path, "Units System", f"is {text!r}; expected 'SI Units' (metres) or 'US Customary' (feet)")
    if stated is not None and stated != found:
        raise field_error(path, "Units System", f"is {text!r} ({found}), but units={stated!r} was given; the file "
                          "states its units, so leave units=None (or correct it)")
    return found, "Units System"


def _foot(crs: str | None) -> _Foot:
    """The foot of a US Customary plan: its projection's, else the international foot."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    unit = None
    if crs is not None:
        try:
            unit = CRS.from_wkt(crs).linear_units_factor  # (name, metres per unit)
        except CRSError:
            unit = None  # unparseable or not projected: nothing reliable to say which foot
    if unit is not None and abs(unit[1] - US_SURVEY_FOOT_M) < 1e-12:
        return _Foot(US_SURVEY_FOOT_M, "US survey foot", f"the unit of the plan's Projection, {unit[0]!r}")
    if unit is not None and abs(unit[1] - INTERNATIONAL_FOOT_M) < 1e-12:
        return _Foot(INTERNATIONAL_FOOT_M, "international foot", f"the unit of the plan's Projection, {unit[0]!r}")
    why = "no Projection" if crs is None else (
        "a Projection that could not be read" if unit is None else f"a Projection in {unit[0]!r}, not feet")
    return _Foot(INTERNATIONAL_FOOT_M, "international foot", f"assumed: the plan has {why}",
                 projection_in_metres=unit is not None and unit[1] == 1.0)


def _fit_lattice(path: Path, field: str, centres: np.ndarray, *, unit: str = "m") -> _Lattice:
    """Fit one square lattice through all cell centres, or say which centre is off it. Lengths stay in the
    plan's ``unit`` ('m' or 'ft'), the unit messages quote them in."""
    from scipy.spatial import cKDTree

    n = len(centres)
    if n < 2:
        raise field_error(path, field, f"holds {n} real cell; at least two are needed to infer the cell size")
    distance, neighbour = cKDTree(centres).query(centres, k=2)
    nearest = distance[:, 1]
    if nearest.min() == 0:
        cell = int(np.argmin(nearest))
        raise field_error(path, field, f"cells {cell} and {int(neighbour[cell, 1])} share the centre "
                    f"{tuple(centres[cell])}; expected one centre per cell")
    scale = float(np.median(nearest))
    tolerance = LATTICE_TOLERANCE * scale

    # Spacing along each axis: the typical gap between distinct coordinate values. A median, so that a
    # stray centre or a missing column does not decide it.
    steps = []
    for axis in (0, 1):
        values = np.sort(centres[:, axis])
        distinct = values[np.r_[0, np.flatnonzero(np.diff(values) > tolerance) + 1]]
        steps.append(float(np.median(np.diff(distinct))) if len(distinct) > 1 else None)
    step_x, step_y = steps
    if step_x is not None and step_y is not None and abs(step_x - step_y) > tolerance:
        raise field_error(path, field, f"cell centres are {step_x:g} {unit} apart in x but {step_y:g} {unit} apart in y; "
                    "the store needs square cells (equal x and y spacing)")
    step = step_x if step_y is None else step_y if step_x is None else 0.5 * (step_x + step_y)

    # Integer lattice indices. The lattice's offset comes from the circular mean of every centre's
    # position within a cell, so one misplaced centre cannot drag the lattice off all the others.
    index = np.empty(centres.shape, dtype=np.int64)
    first_residual = np.zeros(len(centres))
    for axis in (0, 1):
        cycles = centres[:, axis] / step
        phase = np.angle(np.mean(np.exp(2j * np.pi * cycles))) / (2 * np.pi)
        index[:, axis] = np.round(cycles - phase).astype(np.int64)
        first_residual = np.maximum(first_residual, np.abs(cycles - phase - index[:, axis]) * step)

    # One least-squares spacing for both axes, fitted to the centres already on the first lattice (so an
    # outlier cannot tilt it), then every centre's distance from its lattice point.
    on = first_residual <= tolerance
    if not on.any():
        on[:] = True
    mean_index = index[on].mean(axis=0)
    mean_xy = centres[on].mean(axis=0)
    di = index[on] - mean_index
    numerator = float(np.sum(di * (centres[on] - mean_xy)))
    denominator = float(np.sum(di * di))
    fitted = numerator / denominator if denominator > 0 else step
    offset = mean_xy - fitted * mean_index
    residual = np.abs(centres - (offset + fitted * index)).max(axis=1)
    off = residual > tolerance
    if off.any():
        cell = int(np.argmax(residual))
        x, y = centres[cell]
        raise field_error(path, field, f"cell {cell} has its centre at (x, y) = ({x:.3f}, {y:.3f}), "
                    f"{residual[cell]:.3f} {unit} off the {fitted:g} {unit} square lattice of the other centres "
                    f"({int(off.sum())} of {n} centres off by more than {tolerance:g} {unit}); only meshes of square "
                    "cells on one lattice can be gridded")

    cols = index[:, 0] - index[:, 0].min()
    rows = index[:, 1].max() - index[:, 1]
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    flat = rows * shape[1] + cols
    unique, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        shared = unique[counts > 1][0]
        cells = np.flatnonzero(flat == shared)[:2]
        raise field_error(path, field, f"cells {cells[0]} and {cells[1]} both fall on grid row {shared // shape[1]}, column "
                    f"{shared % shape[1]}; expected one centre per lattice point")
    # Micrometre rounding removes least-squares noise (40.00000000001 m) without moving any cell measurably.
    cell_size = round(fitted, 6)
    origin_x = float(offset[0] + fitted * (index[:, 0].min() - 0.5))
    origin_y = float(offset[1] + fitted * (index[:, 1].max() + 0.5))
    return _Lattice(cell_size=cell_size, rows=rows, cols=cols, shape=shape, origin_x=origin_x, origin_y=origin_y)


def _parse_stamp(text: str) -> datetime | None:
    match = re.fullmatch(r"(\d{1,2}[A-Za-z]{3}\d{4})\s+(\d{1,2}):?(\d{2}):?(\d{2})(?::(\d{1,3}))?", text.strip())
    if match is None:
        return None
    try:
        day = datetime.strptime(match[1], "%d%b%Y")
    except ValueError:
        return None
    # HEC-RAS writes midnight as 24:00 of the previous day in some places; timedelta carries it over.
    seconds = int(match[2]) * 3600 + int(match[3]) * 60 + int(match[4]) + int(match[5] or 0) / 1000
    return day + timedelta(seconds=seconds)


def _output_times(h5: h5py.File, path: Path) -> tuple[np.ndarray, list[datetime] | None, str]:
    """Output times (s since the first output), the outputs' date stamps (None when the file has only
    'Time') and the dataset read, from the most exact source."""
    group = h5.get(TIME_SERIES_PATH)
    if not isinstance(group, h5py.Group):
        raise field_error(path, TIME_SERIES_PATH, "group is missing; expected unsteady results (run the plan in HEC-RAS)")
    # The stamps are exact to the millisecond; 'Time' is a float in days, exact only to its precision.
    for name in ("Time Date Stamp (ms)", "Time Date Stamp"):
        node = group.get(name)
        if isinstance(node, h5py.Dataset):
            texts = [_text(value) for value in np.asarray(node[()]).ravel()]
            stamps = [_parse_stamp(text) for text in texts]
            bad = [i for i, stamp in enumerate(stamps) if stamp is None]
            if bad:
                raise field_error(path, f"{TIME_SERIES_PATH}/{name}", f"output {bad[0]} is {texts[bad[0]]!r}; expected a "
                            "stamp like '02JAN1900 00:30:00'")
            seconds = np.array([(stamp - stamps[0]).total_seconds() for stamp in stamps])
            return seconds, stamps or None, f"{TIME_SERIES_PATH}/{name}"
    node = group.get("Time")
    if isinstance(node, h5py.Dataset):
        unit = (_attr_text(node, "Time") or "Days").lower()
        if unit not in _SECONDS_PER_UNIT:
            raise field_error(path, f"{TIME_SERIES_PATH}/Time", f"unit {unit!r} is not one of days, hours, minutes, seconds")
        values = np.asarray(node[()], dtype=np.float64).ravel() * _SECONDS_PER_UNIT[unit]
        return values - (values[0] if values.size else 0.0), None, f"{TIME_SERIES_PATH}/Time"
    raise field_error(path, f"{TIME_SERIES_PATH}/Time", "dataset is missing, and so are 'Time Date Stamp (ms)' and "
                "'Time Date Stamp'; expected the output times")


def _output_interval(path: Path, field: str, times_s: np.ndarray) -> tuple[float, int]:
    """The fixed output interval, s, and how many outputs keep to it: all of them, or all but the last when
    only the last is closer than the interval to the one before it (HEC-RAS writes the end of a simulation
    that ends between two regular outputs)."""
    if len(times_s) < 2:
        raise field_error(path, field, f"holds {len(times_s)} output time; at least two are needed for an output interval")
    gaps = np.diff(times_s)
    interval = float(gaps[0])
    if interval <= 0:
        raise field_error(path, field, f"output 1 is {interval:g} s after output 0; output times must increase")
    uneven = np.abs(gaps - interval) > TIME_TOLERANCE_S
    kept = len(times_s)
    if len(gaps) > 1 and uneven[-1] and not uneven[:-1].any() and 0 < gaps[-1] < interval:
        kept -= 1
        uneven = uneven[:-1]
    if uneven.any():
        k = int(np.flatnonzero(uneven)[0])
        raise field_error(path, field, f"outputs are not evenly spaced: {interval:g} s after output 0 but {gaps[k]:g} s "
                    f"between outputs {k} and {k + 1}; the store needs one fixed, positive output interval (only a "
                    "last output closer than that to the one before it, the end of the simulation, is dropped)")
    return round(interval, 3), kept


def _cell_depths(h5: h5py.File, path: Path, area: str, count: int, frames: int) -> tuple[np.ndarray, str]:
    """(frames, count) depths in m, float64, with the dataset (or expression) they came from."""
    base = f"{TIME_SERIES_PATH}/2D Flow Areas/{area}"

    def series(name: str) -> np.ndarray:
        node = h5[name]
        if node.ndim != 2 or node.shape[0] != frames or node.shape[1] < count:
            raise field_error(path, name, f"shape {node.shape} must be ({frames} output times, at least Cell Count = "
                        f"{count} cells)")
        return np.asarray(node[:, :count], dtype=np.float64)

    for name in ("Depth", "Cell Invert Depth"):
        if isinstance(h5.get(f"{base}/{name}"), h5py.Dataset):
            return series(f"{base}/{name}"), f"{base}/{name}"
    if isinstance(h5.get(f"{base}/Water Surface"), h5py.Dataset):
        surface = series(f"{base}/Water Surface")
        return surface - _minimum_elevation(h5, path, area, count), f"{base}/Water Surface - Cells Minimum Elevation"
    raise field_error(path, f"{base}/Depth", "dataset is missing, and so are 'Cell Invert Depth' and 'Water Surface'; "
                "expected per-cell depths (set HEC-RAS to write them in the plan's output options)")


def _minimum_elevation(h5: h5py.File, path: Path, area: str, count: int) -> np.ndarray:
    name = f"{AREAS_PATH}/{area}/Cells Minimum Elevation"
    node = _dataset(h5, path, name, "it is needed for depths from water surface or for terrain without a DEM")
    if node.ndim != 1 or node.shape[0] < count:
        raise field_error(path, name, f"shape {node.shape} must be (cells,) with at least Cell Count = {count} values")
    return np.asarray(node[:count], dtype=np.float64)


#: How far (m) the DEM at the cells' centres may lie from the plan's own minimum cell elevations, in the
#: median: HEC-RAS's minimum is the lowest terrain in a cell, within a metre or two of its centre's on all
#: but the steepest ground (Muncie's 40 m cells: 0.1 m); a DEM in feet read as metres, on another vertical
#: datum or of another place lies tens to hundreds of metres off.
MAX_DEM_OFFSET_M = 10.0


def _check_dem_elevations(path: Path, terrain, area: str, terrain_values: np.ndarray, minimum_m: np.ndarray,
                          lattice: _Lattice, ratio: int) -> None:
    """Refuse a DEM whose elevations at the cells' centres lie, in the median, more than MAX_DEM_OFFSET_M from
    the plan's ``Cells Minimum Elevation``."""
    centres = terrain_values[lattice.rows * ratio + ratio // 2, lattice.cols * ratio + ratio // 2].astype(np.float64)
    known = np.isfinite(minimum_m) & np.isfinite(centres)
    if not known.any():
        return
    offset = float(np.median(centres[known] - minimum_m[known]))
    if abs(offset) > MAX_DEM_OFFSET_M:
        raise SimulationFileError(
            f"{terrain}: elevation: at the centres of {path.name}'s cells (area {area}) the DEM lies a median "
            f"{offset:+.1f} m from the plan's own minimum cell elevations ({AREAS_PATH}/{area}/Cells Minimum "
            f"Elevation: {minimum_m[known].min():.1f}..{minimum_m[known].max():.1f} m, the DEM there "
            f"{centres[known].min():.1f}..{centres[known].max():.1f} m); expected within {MAX_DEM_OFFSET_M:g} m, "
            "as from the DEM the plan was built on: is it in other vertical units (feet read as metres), on another "
            "vertical datum, or of another place?")


def _depth_grid(path: Path, field: str, depth: np.ndarray, lattice: _Lattice, *, metres: float = 1.0) -> np.ndarray:
    """Place (frames, cells) depths on the grid in m, after checking them cell by cell. ``depth`` is in the
    plan's unit, ``metres`` m each (messages quote the file's own value)."""
    depth_m = depth * metres if metres != 1.0 else depth
    bad = ~np.isfinite(depth_m) | (depth_m < -DEPTH_ROUNDING_M)
    if bad.any():
        frame, cell = (int(v) for v in np.argwhere(bad)[0])
        value = f"{depth[frame, cell]}" if metres == 1.0 else f"{depth[frame, cell]} ft ({depth_m[frame, cell]:.4g} m)"
        raise field_error(path, field, f"frame {frame}, cell {cell} (grid row {lattice.rows[cell]}, column "
                    f"{lattice.cols[cell]}) holds {value}; depths inside the area must be numbers >= 0 m "
                    f"({int(bad.sum())} of {bad.size} values fail this)")
    grid = np.full((depth.shape[0], *lattice.shape), np.nan, dtype=np.float32)
    grid[:, lattice.rows, lattice.cols] = np.maximum(depth_m, 0.0)
    return grid


def _row_blocks(shape: tuple[int, int]):
    """Slices of terrain rows of at most TERRAIN_BLOCK_POINTS points each (one slice for a small terrain)."""
    step = max(1, TERRAIN_BLOCK_POINTS // shape[1])
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def _terrain_from_cells(path: Path, area: str, elevation: np.ndarray, lattice: _Lattice, ratio: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    name = f"{AREAS_PATH}/{area}/Cells Minimum Elevation"
    bad = ~np.isfinite(elevation)
    if bad.any():
        cell = int(np.flatnonzero(bad)[0])
        raise field_error(path, name, f"cell {cell} holds {elevation[cell]}; a finite elevation is needed to build terrain "
                    "without a DEM (pass terrain= a GeoTIFF instead)")
    rows, cols = lattice.shape
    shape = (rows * ratio + 1, cols * ratio + 1)
    # Distances in cell units (centre of cell (i, j) at (j + 0.5, i + 0.5)) keep ties exact.
    tree = cKDTree(np.column_stack([lattice.cols + 0.5, lattice.rows + 0.5]))
    point_cols = np.arange(shape[1]) / ratio
    terrain = np.empty(shape, dtype=np.float32)
    for block in _row_blocks(shape):
        point_rows, point_cols_2d = np.meshgrid(np.arange(block.start, block.stop) / ratio, point_cols, indexing="ij")
        _, nearest = tree.query(np.column_stack([point_cols_2d.ravel(), point_rows.ravel()]))
        terrain[block] = elevation[nearest].reshape(point_rows.shape)
    return terrain


def _dem_units(raster: Raster, foot: _Foot | None) -> tuple[float, float, str]:
    """How a DEM meets a plan: (m per unit of the plan's coordinates where the DEM is sampled, m per unit of
    the sampled values, a note for ``source``). The plan's coordinates are the DEM's CRS coordinates."""
    if foot is None:
        return 1.0, 1.0, ""  # a plan in metres: the DEM as read_geotiff gives it, in metres
    factor = getattr(raster, "units_factor", None)
    if raster.crs is not None and factor is not None:
        # read_geotiff has put the DEM in metres with its own CRS's unit; the plan's feet are that CRS's.
        return float(factor), 1.0, ""
    # No CRS to say otherwise (or a reader that does not convert): the DEM is in the plan's feet, its
    # elevations too unless the file states their unit (read_geotiff has then converted them).
    if getattr(raster, "vertical_stated", False):
        return 1.0, 1.0, f" (no CRS: coordinates taken to be in the plan's {foot.name})"
    return 1.0, foot.metres, f" (no CRS: taken to be in the plan's {foot.name})"


def _sample_dem(raster: Raster, lattice: _Lattice, ratio: int, *, at: float, value_scale: float,
                what: str) -> np.ndarray:
    """The DEM at the terrain points of ``lattice`` (in the plan's own unit, times ``at`` to meet the DEM's
    coordinates), times ``value_scale``: m. Sampled a block of rows at a time."""
    rows, cols = lattice.shape
    shape = (rows * ratio + 1, cols * ratio + 1)
    spacing = lattice.cell_size / ratio * at
    blocks = list(_row_blocks(shape))
    terrain = np.empty(shape, dtype=np.float32)
    for block in blocks:
        xs, ys = terrain_points(origin_x=lattice.origin_x * at, origin_y=lattice.origin_y * at - spacing * block.start,
                                spacing=spacing, shape=(block.stop - block.start, shape[1]))
        where = what if len(blocks) == 1 else f"{what}, rows {block.start}..{block.stop - 1}"
        try:
            values = sample_raster(raster, x=xs, y=ys, what=where)
        except SimulationFileError as error:
            raise SimulationFileError(
                f"{error}. The store's grid is the box around the 2D area's cells, cells outside the area included, so "
                "the terrain must cover the whole box: export it over a larger extent, or fill its nodata (e.g. "
                "gdal_fillnodata.py) where it was clipped to the area's outline") from None
        terrain[block] = values if value_scale == 1.0 else values.astype(np.float64) * value_scale
    return terrain


def _check_same_crs(path: Path, crs: str | None, raster: Raster) -> None:
    """Refuse a DEM whose stated CRS is not the plan's: its values would land on the wrong cells."""
    if crs is None or raster.crs is None:
        return
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        plan_crs = CRS.from_wkt(crs)
        dem_crs = CRS.from_user_input(raster.crs)
    except CRSError:
        return  # one side is unparseable: nothing reliable to compare
    same_code = plan_crs.to_epsg() is not None and plan_crs.to_epsg() == dem_crs.to_epsg()
    if not (same_code or plan_crs == dem_crs):
        plan_name = f"EPSG:{plan_crs.to_epsg()}" if plan_crs.to_epsg() is not None else crs[:80]
        raise SimulationFileError(f"{raster.path}: crs: {raster.crs} is not the plan's projection ({plan_name}, from "
                                  f"'Projection' in {path}); reproject the DEM to the plan's coordinates")


def _check_terrain_ratio(path: Path, terrain_ratio) -> int:
    if isinstance(terrain_ratio, bool) or not isinstance(terrain_ratio, (int, np.integer)) or terrain_ratio < 1:
        raise field_error(path, "terrain_ratio", f"{terrain_ratio!r} must be a whole number >= 1 of terrain points per cell")
    return int(terrain_ratio)


def _check_terrain_size(path: Path, area: str, grid: tuple[int, int], ratio: int) -> None:
    """Refuse, before anything is built, a terrain of more than MAX_TERRAIN_POINTS points."""
    rows, cols = grid
    shape = (rows * ratio + 1, cols * ratio + 1)
    points = shape[0] * shape[1]
    if points <= MAX_TERRAIN_POINTS:
        return
    # The largest ratio that fits (the point count grows with the ratio, so step down from an estimate).
    largest = int((MAX_TERRAIN_POINTS / (rows * cols)) ** 0.5)
    while largest >= 1 and (rows * largest + 1) * (cols * largest + 1) > MAX_TERRAIN_POINTS:
        largest -= 1
    advice = (f"use terrain_ratio <= {largest}" if largest >= 1
              else "even terrain_ratio=1 is too large for this grid")
    raise field_error(path, "terrain_ratio", f"{ratio} would make a terrain of {shape[0]:,} x {shape[1]:,} = "
                      f"{points:,} points ({points * 4 / 1e9:,.1f} GB as float32) for the {rows} x {cols} cells of "
                      f"area {area!r}; at most {MAX_TERRAIN_POINTS:,} points are allowed: {advice}")


def _version(h5: h5py.File) -> str:
    results = h5.get("Results/Unsteady")
    for text in ((_attr_text(results, "Program Version") if isinstance(results, h5py.Group) else None),
                 _attr_text(h5, "File Version")):
        match = re.search(r"(\d+(?:\.\d+)+)", text or "")
        if match:
            return match[1]
    return "(version unknown)"


def _plan_id(h5: h5py.File) -> str | None:
    places = [("Plan Data/Plan Information", "Plan ShortID"), ("Results/Unsteady", "Short ID"),
              ("Plan Data/Plan Information", "Plan Title"), ("Results/Unsteady", "Plan Title")]
    for group, name in places:
        node = h5.get(group)
        if isinstance(node, h5py.Group):
            text = _attr_text(node, name)
            if text:
                return text
    return None


def project_name_from_file(path: str | Path) -> str:
    """The HEC-RAS project name of a plan results file: its name before ``.pNN`` / ``.gNN``
    (``backwater_curve`` for ``backwater_curve.p01.hdf``), else its stem."""
    path = Path(path)
    match = re.match(r"(.+?)\.[pg]\d{2}(\.|$)", path.name, flags=re.IGNORECASE)
    return match[1] if match else path.stem
