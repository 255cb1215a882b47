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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np

from floodlib.data.geotiff import Raster, read_geotiff, sample_raster, terrain_points
from floodlib.data.store import Simulation, SimulationFileError, field_error, open_hdf5, write_simulation

AREAS_PATH = "Geometry/2D Flow Areas"
TIME_SERIES_PATH = "Results/Unsteady/Output/Output Blocks/Base Output/Unsteady Time Series"

# Centres may sit this fraction of a cell off the fitted lattice (float noise in the file) and still
# count as on it; 1e-3 is 5 cm for 50 m cells, far below any real displacement of a computation point.
LATTICE_TOLERANCE = 1e-3
# Negative depths down to this are single-precision rounding of (water surface − bed); deeper ones are not.
DEPTH_ROUNDING_M = 1e-3
TIME_TOLERANCE_S = 1e-3

_SECONDS_PER_UNIT = {"days": 86400.0, "day": 86400.0, "hours": 3600.0, "hour": 3600.0,
                     "minutes": 60.0, "minute": 60.0, "seconds": 1.0, "second": 1.0}


@dataclass
class _Lattice:
    """Where each HEC-RAS cell falls on the store's grid."""

    cell_size: float
    rows: np.ndarray  # (cells,) int, 0 on the north edge
    cols: np.ndarray  # (cells,) int, 0 on the west edge
    shape: tuple[int, int]
    origin_x: float  # west edge of column 0, m
    origin_y: float  # north edge of row 0, m


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


def read_hecras(
    plan_hdf: str | Path,
    *,
    area: str | None = None,
    terrain: str | Path | None = None,
    project: str | None = None,
    plan: str | None = None,
    terrain_ratio: int = 10,
) -> Simulation:
    """Read one 2D flow area of a HEC-RAS plan's results as a store :class:`Simulation`.

    Parameters
    ----------
    plan_hdf : path of the plan results file (``<project>.pNN.hdf``), SI units.
    area : name of the 2D flow area; None picks the only one (an error lists them if there are several).
    terrain : GeoTIFF DEM in the plan's coordinates, sampled bilinearly at the store's terrain points; it
        must cover the whole grid box (out-of-area cells included) with data. None builds the terrain
        from HEC-RAS's ``Cells Minimum Elevation``: each terrain point takes the value of the nearest
        in-area cell (a step surface, coarse but always available).
    project : defaults to the HEC-RAS project name, the file name before ``.pNN`` (``backwater_curve`` for
        ``backwater_curve.p01.hdf``), so that plans of one project share it.
    plan : defaults to the plan's short id, else its title, else the file name.
    terrain_ratio : terrain points per cell edge, r; terrain spacing = cell size / r, m.

    Returns
    -------
    Simulation
        ``water_depth`` (times, rows, cols) float32, m, rows north→south and columns west→east on the
        lattice of the cell centres, NaN where the grid box has no HEC-RAS cell; ``terrain``
        (rows * r + 1, cols * r + 1) float32, m; ``cell_size_m`` the lattice spacing; ``output_interval_s``
        the (uniform) spacing of the output times, s; ``origin_x``, ``origin_y`` the north-west corner of
        cell (0, 0) in the plan's coordinates, m; ``crs`` the file's ``Projection`` (WKT) or None.

    Raises
    ------
    SimulationFileError
        Naming the file, the dataset and the value, for: a missing or unreadable file, an unknown area,
        no cell centres, centres off a square lattice, non-SI units, uneven output times, no depth data,
        NaN or negative depths (below −1 mm; shallower negatives are rounding and become 0), or a DEM
        that does not cover the grid.
    """
    path = Path(plan_hdf)
    ratio = _check_terrain_ratio(path, terrain_ratio)
    with open_hdf5(path) as h5:
        try:
            area = _pick_area(path, _area_names(h5, path), area)
            count = _cell_count(h5, path, area)
            centres_field = f"{AREAS_PATH}/{area}/Cells Center Coordinate"
            centres = _cell_centres(h5, path, area, count)
            _check_units(h5, path)
            lattice = _fit_lattice(path, centres_field, centres)
            times_s, first_output, times_field = _output_times(h5, path)
            depth, depth_field = _cell_depths(h5, path, area, count, len(times_s))
            minimum_elevation = None
            if terrain is None:
                minimum_elevation = _minimum_elevation(h5, path, area, count)
            version = _version(h5)
            crs = _attr_text(h5, "Projection")
            plan_id = _plan_id(h5) or path.name
        except (OSError, KeyError, RuntimeError) as error:
            # h5py reports damaged metadata or compressed chunks in any of these ways.
            raise _damaged(path, error) from None

    interval_s = _output_interval(path, times_field, times_s)
    water_depth = _depth_grid(path, depth_field, depth, lattice)
    cell_size = lattice.cell_size
    spacing = cell_size / ratio
    shape = (lattice.shape[0] * ratio + 1, lattice.shape[1] * ratio + 1)
    if terrain is None:
        terrain_values = _terrain_from_cells(path, area, minimum_elevation, lattice, ratio)
        terrain_text = "terrain from the nearest cell's Cells Minimum Elevation (no DEM given)"
    else:
        raster = read_geotiff(terrain)
        _check_same_crs(path, crs, raster)
        xs, ys = terrain_points(origin_x=lattice.origin_x, origin_y=lattice.origin_y, spacing=spacing, shape=shape)
        terrain_values = sample_raster(raster, x=xs, y=ys,
                                       what=f"terrain for {path.name} area {area} ({shape[0]}x{shape[1]} points "
                                            f"{spacing:g} m apart)")
        terrain_text = f"terrain {Path(terrain).name} sampled bilinearly"

    simulation = Simulation(
        project=project if project is not None else project_name_from_file(path),
        plan=plan if plan is not None else plan_id,
        terrain=np.asarray(terrain_values, dtype=np.float32),
        water_depth=water_depth,
        cell_size_m=cell_size,
        terrain_spacing_m=spacing,
        output_interval_s=interval_s,
        source=f"HEC-RAS {version} {path.name} area {area}, depth from {depth_field.rsplit('/', 1)[-1]}, "
               f"{terrain_text}",
        origin_x=lattice.origin_x,
        origin_y=lattice.origin_y,
        crs=crs,
        event=None,
        extra={"hecras_first_output": first_output} if first_output else {},
    )
    return simulation.validate(path)


def convert_hecras(plan_hdf: str | Path, out_path: str | Path, **kwargs) -> Path:
    """:func:`read_hecras` then :func:`~floodlib.data.store.write_simulation` (atomic) to ``out_path``.

    Keyword arguments are those of :func:`read_hecras`. Nothing is written when reading fails.
    Returns the path written.
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


def _check_units(h5: h5py.File, path: Path) -> None:
    units = _attr_text(h5, "Units System")
    # Depths, elevations and coordinates would all be in feet; converting the coordinates would
    # detach the grid from the plan's (feet-based) projection, so such plans are refused rather than guessed.
    if units is not None and "SI" not in units.upper().split():
        raise field_error(path, "Units System", f"is {units!r}; only SI plans (metres) can be read; set the HEC-RAS "
                    "project to SI units and rerun the plan")


def _fit_lattice(path: Path, field: str, centres: np.ndarray) -> _Lattice:
    """Fit one square lattice through all cell centres, or say which centre is off it."""
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
        raise field_error(path, field, f"cell centres are {step_x:g} m apart in x but {step_y:g} m apart in y; the store "
                    "needs square cells (equal x and y spacing)")
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
        raise field_error(path, field, f"cell {cell} has its centre at (x, y) = ({x:.3f}, {y:.3f}), {residual[cell]:.3f} m "
                    f"off the {fitted:g} m square lattice of the other centres ({int(off.sum())} of {n} centres off "
                    f"by more than {tolerance:g} m); only meshes of square cells on one lattice can be gridded")

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


def _output_times(h5: h5py.File, path: Path) -> tuple[np.ndarray, str | None, str]:
    """Output times (s since the first output), the first output's stamp and the dataset read, from the
    most exact source."""
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
            return seconds, stamps[0].isoformat(sep=" ") if stamps else None, f"{TIME_SERIES_PATH}/{name}"
    node = group.get("Time")
    if isinstance(node, h5py.Dataset):
        unit = (_attr_text(node, "Time") or "Days").lower()
        if unit not in _SECONDS_PER_UNIT:
            raise field_error(path, f"{TIME_SERIES_PATH}/Time", f"unit {unit!r} is not one of days, hours, minutes, seconds")
        values = np.asarray(node[()], dtype=np.float64).ravel() * _SECONDS_PER_UNIT[unit]
        return values - (values[0] if values.size else 0.0), None, f"{TIME_SERIES_PATH}/Time"
    raise field_error(path, f"{TIME_SERIES_PATH}/Time", "dataset is missing, and so are 'Time Date Stamp (ms)' and "
                "'Time Date Stamp'; expected the output times")


def _output_interval(path: Path, field: str, times_s: np.ndarray) -> float:
    if len(times_s) < 2:
        raise field_error(path, field, f"holds {len(times_s)} output time; at least two are needed for an output interval")
    gaps = np.diff(times_s)
    interval = float(gaps[0])
    uneven = np.abs(gaps - interval) > TIME_TOLERANCE_S
    if interval <= 0 or uneven.any():
        k = int(np.flatnonzero(uneven)[0]) if uneven.any() else 0
        raise field_error(path, field, f"outputs are not evenly spaced: {interval:g} s after output 0 but {gaps[k]:g} s "
                    f"between outputs {k} and {k + 1}; the store needs one fixed, positive output interval")
    return round(interval, 3)


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


def _depth_grid(path: Path, field: str, depth: np.ndarray, lattice: _Lattice) -> np.ndarray:
    """Place (frames, cells) depths on the grid, after checking them cell by cell."""
    bad = ~np.isfinite(depth) | (depth < -DEPTH_ROUNDING_M)
    if bad.any():
        frame, cell = (int(v) for v in np.argwhere(bad)[0])
        raise field_error(path, field, f"frame {frame}, cell {cell} (grid row {lattice.rows[cell]}, column "
                    f"{lattice.cols[cell]}) holds {depth[frame, cell]}; depths inside the area must be numbers >= 0 m "
                    f"({int(bad.sum())} of {bad.size} values fail this)")
    grid = np.full((depth.shape[0], *lattice.shape), np.nan, dtype=np.float32)
    grid[:, lattice.rows, lattice.cols] = np.maximum(depth, 0.0)
    return grid


def _terrain_from_cells(path: Path, area: str, elevation: np.ndarray, lattice: _Lattice, ratio: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    name = f"{AREAS_PATH}/{area}/Cells Minimum Elevation"
    bad = ~np.isfinite(elevation)
    if bad.any():
        cell = int(np.flatnonzero(bad)[0])
        raise field_error(path, name, f"cell {cell} holds {elevation[cell]}; a finite elevation is needed to build terrain "
                    "without a DEM (pass terrain= a GeoTIFF instead)")
    rows, cols = lattice.shape
    # Distances in cell units (centre of cell (i, j) at (j + 0.5, i + 0.5)) keep ties exact.
    point_rows, point_cols = np.meshgrid(np.arange(rows * ratio + 1) / ratio, np.arange(cols * ratio + 1) / ratio,
                                         indexing="ij")
    centres = np.column_stack([lattice.cols + 0.5, lattice.rows + 0.5])
    _, nearest = cKDTree(centres).query(np.column_stack([point_cols.ravel(), point_rows.ravel()]))
    return elevation[nearest].reshape(point_rows.shape).astype(np.float32)


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
