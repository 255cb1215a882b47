"""Terrain for the built-in simulator: 1 m elevation on the points of a grid of 10 m cells.

A grid of ``rows x cols`` cells of ``CELL_SIZE_M`` (10 m) has its terrain sampled every
``TERRAIN_SPACING_M`` (1 m) on the cell edges, so the terrain array has shape
``(rows * r + 1, cols * r + 1)`` with ``r = 10`` (see ``floodlib.data.store``). Row 0 is the northern
edge and column 0 the western edge.

Two families:

- :func:`valley_terrain` — a seeded procedural valley (:class:`ValleyParams`): a meandering channel
  running to a downstream edge, banks with low levees, a floodplain rising away from the channel,
  valley walls, a regional downstream slope and multi-scale roughness;
- :func:`dem_terrain` — a window of whole cells cut from a 1 m GeoTIFF DEM (:class:`DemSource`),
  mirror-tiled when the grid is larger than the DEM (which must hold at least the smallest grid's
  ``MIN_DEM_POINTS`` x ``MIN_DEM_POINTS`` terrain points).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from floodlib.data.geotiff import read_geotiff
from floodlib.data.store import SimulationFileError

CELL_SIZE_M = 10.0
TERRAIN_SPACING_M = 1.0
TERRAIN_RATIO = int(round(CELL_SIZE_M / TERRAIN_SPACING_M))
EDGES = ("north", "east", "south", "west")
OPPOSITE_EDGE = {"north": "south", "south": "north", "east": "west", "west": "east"}
# 512 cells a side is a 5121 x 5121 terrain (105 MB float32) and ~300 MB of depth frames for a
# 280-minute plan: the largest plan that still fits comfortably in one worker's memory.
MIN_GRID_CELLS = 8
MAX_GRID_CELLS = 512
# A DEM smaller than the smallest grid's terrain window is not extended by reflection: a 1 x 1 DEM
# would become a flat plane and a 2 x 2 one a zigzag, neither of them terrain.
MIN_DEM_POINTS = MIN_GRID_CELLS * TERRAIN_RATIO + 1


def check_edge(edge: str, *, field_name: str) -> str:
    """Return ``edge`` if it is one of :data:`EDGES`, else raise a ValueError naming the field."""
    if edge not in EDGES:
        raise ValueError(f"{field_name}: {edge!r} is not an edge name; expected one of {', '.join(EDGES)}")
    return edge


def check_grid(rows: int, cols: int) -> tuple[int, int]:
    """Validate a grid size in cells (whole numbers in ``MIN_GRID_CELLS..MAX_GRID_CELLS``)."""
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}: {value!r} must be a whole number of {CELL_SIZE_M:g} m cells")
        if not MIN_GRID_CELLS <= value <= MAX_GRID_CELLS:
            raise ValueError(f"{name}: {value} cells is outside the allowed {MIN_GRID_CELLS}..{MAX_GRID_CELLS} "
                             f"cells of {CELL_SIZE_M:g} m")
    return int(rows), int(cols)


@dataclass
class Terrain:
    """Terrain of one plan.

    Attributes
    ----------
    elevation : (rows * 10 + 1, cols * 10 + 1) float32, m; row 0 is the northern edge.
    origin_x, origin_y : west and north edges of the grid (outer corner of cell row 0, column 0), m.
    crs : coordinate reference system of the origin, or None for synthetic terrain.
    description : JSON-able summary of where the terrain came from (generator and parameters, or DEM
        file and window), stored with the simulation.
    downstream_edge : the edge the valley drains to (synthetic terrain), or None when unknown.
    channel_centerline : (n, 2) float64 — (row, column) in terrain points of the channel centre, one
        point per cross-section along the valley axis; None for DEM terrain.
    """

    elevation: np.ndarray
    origin_x: float = 0.0
    origin_y: float = 0.0
    crs: str | None = None
    description: dict[str, Any] | None = None
    downstream_edge: str | None = None
    channel_centerline: np.ndarray | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of 10 m cells covered by the terrain."""
        points_r, points_c = self.elevation.shape
        return (points_r - 1) // TERRAIN_RATIO, (points_c - 1) // TERRAIN_RATIO


@dataclass(frozen=True)
class ValleyParams:
    """Shape of a procedural valley. Lengths in m, slopes in m/m.

    Attributes
    ----------
    downstream_edge : edge the valley and its channel drain to ("north", "east", "south", "west");
        the channel enters on the opposite edge.
    slope : regional downstream slope of the valley and channel bed, m/m (0.002).
    channel_width_m : top width of the channel, m (40). At least 25 m (2.5 cells) so that the channel
        stays connected on the 10 m grid.
    channel_depth_m : depth of the channel below the bank tops, m (2.0).
    meander_amplitude_m : largest lateral excursion of the channel centre from the valley axis, m (120);
        capped at ``(cross-valley width / 2 - channel width) / 1.5`` so the channel stays clear of the
        side edges on small grids (the cap is recorded in the terrain description).
    meander_wavelength_m : along-valley wavelength of the meanders, m (700).
    levee_height_m : height of the natural levees on the bank tops, m (0.3).
    floodplain_slope : cross-valley rise of the floodplain away from the channel, m/m (0.004).
    floodplain_half_width_m : distance from the channel beyond which the valley walls rise, m (300).
    wall_slope : cross-valley slope of the valley walls, m/m (0.03).
    roughness_m : standard deviation of the multi-scale roughness, m (0.25); damped to a third in the
        channel so its bed stays a continuous low line.
    roughness_wavelength_m : longest wavelength of the roughness, m (160); the spectrum follows a power
        law (fractal, Hurst exponent 0.8) down to 2 m.
    base_elevation_m : bed elevation of the channel at the downstream edge, m (100).
    """

    downstream_edge: str = "south"
    slope: float = 0.002
    channel_width_m: float = 40.0
    channel_depth_m: float = 2.0
    meander_amplitude_m: float = 120.0
    meander_wavelength_m: float = 700.0
    levee_height_m: float = 0.3
    floodplain_slope: float = 0.004
    floodplain_half_width_m: float = 300.0
    wall_slope: float = 0.03
    roughness_m: float = 0.25
    roughness_wavelength_m: float = 160.0
    base_elevation_m: float = 100.0

    def __post_init__(self) -> None:
        check_edge(self.downstream_edge, field_name="ValleyParams.downstream_edge")
        for item in fields(self):
            if item.name in ("downstream_edge",):
                continue
            value = getattr(self, item.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"ValleyParams.{item.name}: {value!r} must be a finite number")
            if value < 0:
                raise ValueError(f"ValleyParams.{item.name}: {value!r} must be >= 0")
        if self.channel_width_m < 2.5 * CELL_SIZE_M:
            raise ValueError(f"ValleyParams.channel_width_m: {self.channel_width_m} m is too narrow; at least "
                             f"{2.5 * CELL_SIZE_M:g} m (2.5 cells) keeps the channel connected on the {CELL_SIZE_M:g} m grid")
        if self.channel_depth_m <= 0:
            raise ValueError(f"ValleyParams.channel_depth_m: {self.channel_depth_m} must be > 0 m")
        if self.meander_wavelength_m <= 0 or self.roughness_wavelength_m < 2 * TERRAIN_SPACING_M:
            raise ValueError("ValleyParams.meander_wavelength_m must be > 0 m and roughness_wavelength_m >= 2 m; "
                             f"got {self.meander_wavelength_m} and {self.roughness_wavelength_m}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DemSource:
    """A window of a GeoTIFF DEM at 1 m spacing.

    Attributes
    ----------
    path : the GeoTIFF (read with :func:`floodlib.data.geotiff.read_geotiff`: a projected CRS in metres or
        feet, or no CRS with a real geotransform, taken as metres).
    row_offset, col_offset : first DEM pixel (row from the north, column from the west) of the window;
        the window's terrain points are the DEM pixel centres from there on.
    band : raster band, 1-based.
    """

    path: str
    row_offset: int = 0
    col_offset: int = 0
    band: int = 1

    def __post_init__(self):
        if isinstance(self.path, os.PathLike):  # a pathlib.Path, as a user writes it: kept as text (JSON, specs)
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.path, str) or not self.path:
            raise TypeError(f"DemSource.path: {self.path!r}; expected the GeoTIFF's path (str or pathlib.Path)")
        for name in ("row_offset", "col_offset", "band"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name == "band"):
                raise ValueError(f"DemSource.{name}: {value!r}; expected a whole number >= {int(name == 'band')}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_offset_refusal(row_offset: int, col_offset: int) -> str:
    """Why a project's DEM takes no offset (each plan draws its own window), and what to do instead."""
    return (f"row_offset={row_offset}, col_offset={col_offset}: each plan of a project draws its own window of the "
            "DEM, so a project takes no offset; to simulate one area, crop the DEM to it first "
            "(gdal_translate -srcwin <col> <row> <width> <height> in.tif area.tif)")


def _fractal_noise(shape: tuple[int, int], *, rng: np.random.Generator, longest_m: float,
                   spacing_m: float, hurst: float = 0.8) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise with a power-law spectrum between 2 samples and ``longest_m``.

    One FFT of white noise filtered by ``k^-(hurst + 1)`` gives every scale at once (the multi-scale
    roughness); the field is periodic over the padded size, which is larger than the terrain.
    """
    from scipy import fft

    padded = tuple(fft.next_fast_len(n + n // 4, real=True) for n in shape)
    white = rng.standard_normal(padded)
    ky = fft.fftfreq(padded[0], d=spacing_m)[:, None]
    kx = fft.rfftfreq(padded[1], d=spacing_m)[None, :]
    k = np.hypot(ky, kx)
    k_min = 1.0 / longest_m
    # Flat below the longest wavelength so the largest scale does not dominate as k -> 0.
    amplitude = np.maximum(k, k_min) ** -(hurst + 1.0)
    amplitude[0, 0] = 0.0
    field = fft.irfft2(fft.rfft2(white) * amplitude, s=padded)[: shape[0], : shape[1]]
    field -= field.mean()
    return field / field.std()


def valley_terrain(params: ValleyParams, *, rows: int, cols: int, seed: int) -> Terrain:
    """Procedural valley terrain for a ``rows x cols`` grid of 10 m cells, deterministic for ``seed``.

    Parameters
    ----------
    params : the valley's shape (:class:`ValleyParams`).
    rows, cols : grid size in 10 m cells.
    seed : seeds the meander phases and the roughness.

    Returns
    -------
    Terrain with ``elevation`` (rows * 10 + 1, cols * 10 + 1) float32 m, origin (0, 0), no CRS, and the
    channel centreline.
    """
    rows, cols = check_grid(rows, cols)
    rng = np.random.default_rng(seed)
    # Build in a canonical frame (valley axis along columns, draining east), then orient.
    along_vertical = params.downstream_edge in ("north", "south")
    n_across, n_along = (cols, rows) if along_vertical else (rows, cols)
    points_across = n_across * TERRAIN_RATIO + 1
    points_along = n_along * TERRAIN_RATIO + 1
    x = np.arange(points_along) * TERRAIN_SPACING_M  # along the valley, m
    y = np.arange(points_across) * TERRAIN_SPACING_M  # across the valley, m
    length = x[-1]
    width = y[-1]

    half_channel = params.channel_width_m / 2
    amplitude_cap = max(0.0, (width / 2 - params.channel_width_m) / 1.5)
    amplitude = min(params.meander_amplitude_m, amplitude_cap)
    phase_1, phase_2 = rng.uniform(0, 2 * np.pi, size=2)
    k1 = 2 * np.pi / params.meander_wavelength_m
    k2 = k1 / 0.57  # an incommensurate second harmonic makes the bends irregular
    centre = width / 2 + amplitude * (0.8 * np.sin(k1 * x + phase_1) + 0.2 * np.sin(k2 * x + phase_2))
    centre_slope = amplitude * (0.8 * k1 * np.cos(k1 * x + phase_1) + 0.2 * k2 * np.cos(k2 * x + phase_2))
    # Perpendicular distance to the centreline (first order in the bend curvature): keeps the channel's
    # true width where it crosses the valley obliquely.
    distance = np.abs(y[:, None] - centre[None, :]) / np.sqrt(1.0 + centre_slope[None, :] ** 2)

    bank = 0.25 * params.channel_width_m
    inside = np.clip((half_channel - distance) / bank, 0.0, 1.0)
    channel_shape = inside * inside * (3.0 - 2.0 * inside)  # smoothstep: flat bed, sloping banks
    beyond_bank = np.maximum(distance - half_channel, 0.0)
    levee_width = 0.5 * params.channel_width_m
    elevation = (
        -params.channel_depth_m * channel_shape
        + params.levee_height_m * np.exp(-(((beyond_bank - levee_width) / levee_width) ** 2)) * (distance > half_channel)
        + params.floodplain_slope * beyond_bank
        + params.wall_slope * np.maximum(distance - params.floodplain_half_width_m, 0.0)
        + params.slope * (length - x)[None, :]
    )
    if params.roughness_m > 0:
        noise = _fractal_noise(elevation.shape, rng=rng, longest_m=params.roughness_wavelength_m,
                               spacing_m=TERRAIN_SPACING_M)
        # Damped in the channel: roughness as large as the channel depth would cut it into pools.
        elevation += params.roughness_m * noise * (1.0 - (2.0 / 3.0) * channel_shape)
    # Bed at the downstream edge = base elevation (the bed is at -depth in the formula above).
    elevation += params.base_elevation_m + params.channel_depth_m

    centreline = np.column_stack([centre / TERRAIN_SPACING_M, x / TERRAIN_SPACING_M])  # (across, along)
    downstream = params.downstream_edge
    if downstream == "east":
        oriented = elevation
        line = centreline
    elif downstream == "west":
        oriented = elevation[:, ::-1]
        line = np.column_stack([centreline[:, 0], (points_along - 1) - centreline[:, 1]])
    elif downstream == "south":
        oriented = elevation.T
        line = centreline[:, ::-1]
    else:  # north
        oriented = elevation.T[::-1, :]
        line = np.column_stack([(points_along - 1) - centreline[:, 1], centreline[:, 0]])
    description = {"generator": "floodlib valley", "seed": int(seed), "params": params.to_dict(),
                   "meander_amplitude_used_m": float(amplitude)}
    return Terrain(elevation=np.ascontiguousarray(oriented, dtype=np.float32), description=description,
                   downstream_edge=downstream, channel_centerline=line)


def _reflect_indices(start: int, count: int, size: int) -> np.ndarray:
    """Indices ``start .. start + count - 1`` folded back into ``0 .. size - 1`` by reflection about the
    first and last samples (a b c d c b a b ...): the mirrored terrain is continuous and repeats no row."""
    period = 2 * (size - 1)
    folded = (start + np.arange(count)) % period
    return np.where(folded < size, folded, period - folded)


def _covered_ranges(have: int, need: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every offset a window of ``need`` points may take along an axis of ``have`` pixels: the offsets and
    the first and last pixel its (possibly mirror-tiled) points come from. Reflection walks the pixels one
    step at a time, so the pixels a window uses are always one unbroken range."""
    if need <= have:
        offsets = np.arange(have - need + 1)
        return offsets, offsets, offsets + need - 1
    offsets = np.arange(have)
    covered = [_reflect_indices(int(offset), need, have) for offset in offsets]
    return offsets, np.array([c.min() for c in covered]), np.array([c.max() for c in covered])


@dataclass(frozen=True)
class WindowMap:
    """Which windows of a DEM hold no nodata: ``complete[i, j]`` for the window at row ``row_offsets[i]``,
    column ``col_offsets[j]`` (see :func:`complete_windows`)."""

    row_offsets: np.ndarray
    col_offsets: np.ndarray
    complete: np.ndarray

    def nearest(self, near: tuple[int, int]) -> tuple[int, int]:
        """The complete window's offset nearest ``near`` (``near`` itself when complete; ties: row-major first)."""
        i, j = (int(np.searchsorted(offsets, value)) for offsets, value in zip((self.row_offsets, self.col_offsets), near))
        if i < len(self.row_offsets) and j < len(self.col_offsets) and self.complete[i, j] \
                and (self.row_offsets[i], self.col_offsets[j]) == tuple(near):
            return tuple(near)
        rows, cols = np.nonzero(self.complete)
        if not len(rows):
            raise ValueError("no window of this DEM is complete")
        distance = (self.row_offsets[rows] - near[0]) ** 2 + (self.col_offsets[cols] - near[1]) ** 2
        best = int(np.argmin(distance))
        return int(self.row_offsets[rows[best]]), int(self.col_offsets[cols[best]])


def complete_windows(values: np.ndarray, *, need_rows: int, need_cols: int) -> WindowMap | None:
    """Every offset a window of ``need_rows`` x ``need_cols`` points may take on the DEM ``values`` (mirror-tiled
    along an axis the DEM is too small for), and whether its points hold no nodata (NaN); None when the DEM
    has no nodata at all, so that every window is complete."""
    missing = ~np.isfinite(values)
    if not missing.any():
        return None
    (row_offsets, row_lo, row_hi), (col_offsets, col_lo, col_hi) = (_covered_ranges(have, need) for have, need in
                                                                    zip(values.shape, (need_rows, need_cols)))
    # nodata pixels in every window at once: a summed-area table read at each window's corners
    counts = np.int32 if missing.size < 2**31 else np.int64  # half the memory of a large DEM's table
    table = np.zeros((missing.shape[0] + 1, missing.shape[1] + 1), dtype=counts)
    table[1:, 1:] = missing.cumsum(axis=0, dtype=counts).cumsum(axis=1, dtype=counts)
    r0, r1, c0, c1 = row_lo[:, None], row_hi[:, None] + 1, col_lo[None, :], col_hi[None, :] + 1
    complete = (table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]) == 0
    return WindowMap(row_offsets=row_offsets, col_offsets=col_offsets, complete=complete)


def check_dem(raster, *, rows: int, cols: int) -> None:
    """What the built-in simulator needs of a whole DEM, whatever window it cuts (SimulationFileError naming
    the file otherwise): pixels ``TERRAIN_SPACING_M`` apart, and at least ``MIN_DEM_POINTS`` a side."""
    path = raster.path
    for name, value in (("pixel width", raster.dx), ("pixel height", raster.dy)):
        if abs(value - TERRAIN_SPACING_M) > 1e-6 * TERRAIN_SPACING_M:
            as_read = "" if raster.units_factor == 1.0 else f" ({value / raster.units_factor:g} {raster.source_units})"
            # gdalwarp's -tr is in the CRS's own unit: in feet, 1 m is 1 / (m per foot) of them
            step = f"{TERRAIN_SPACING_M / raster.units_factor:.10g}"  # enough digits to pass the 1e-6 check
            raise SimulationFileError(f"{path}: {name}: {value} m{as_read}; the built-in simulator needs a DEM at "
                                      f"{TERRAIN_SPACING_M:g} m (resample it first, e.g. gdalwarp -tr {step} {step}"
                                      + (f" in the CRS's unit, the {raster.source_units}" if raster.units_factor != 1.0
                                         else "")
                                      + ")")
    dem_rows, dem_cols = raster.values.shape
    if min(dem_rows, dem_cols) < MIN_DEM_POINTS:
        raise SimulationFileError(
            f"{path}: size: {dem_rows}x{dem_cols} pixels (rows x columns) is too small for a {rows}x{cols}-cell grid, "
            f"which needs {rows * TERRAIN_RATIO + 1}x{cols * TERRAIN_RATIO + 1} terrain points {TERRAIN_SPACING_M:g} m "
            f"apart; expected a DEM of at least {MIN_DEM_POINTS}x{MIN_DEM_POINTS} pixels (the smallest grid, "
            f"{MIN_GRID_CELLS}x{MIN_GRID_CELLS} cells), from which larger grids are mirror-tiled")


def dem_terrain(source: DemSource, *, rows: int, cols: int) -> Terrain:
    """Terrain cut from a GeoTIFF DEM whose pixels are ``TERRAIN_SPACING_M`` (1 m) apart.

    The terrain points are the DEM pixel centres from (``row_offset``, ``col_offset``) on, so the grid's
    outer corner (``origin_x``, ``origin_y``) is that pixel's centre, in the DEM's CRS. The DEM is not
    resampled: another pixel size is an error (resampling would smooth the very micro-topography the
    1 m terrain is there to carry; resample the DEM beforehand, e.g. with ``gdalwarp -tr 1 1``).

    A DEM in feet is converted to metres as it is read, so its pixels must be 1 m (3.2808 ft) apart;
    ``origin_x``, ``origin_y`` are then in metres too (the CRS's coordinates times ``units_factor``, which
    the description records with ``source_units``).

    When the grid needs more points than the DEM has along an axis, the DEM is extended by mirror-tiling
    (reflection keeps the surface continuous); the description records ``mirrored_rows`` /
    ``mirrored_cols``, and only the unmirrored part matches the georeference. The DEM itself must hold at
    least the smallest grid's window, ``MIN_DEM_POINTS`` (81) points a side: a smaller one is refused, not
    tiled.

    Raises
    ------
    SimulationFileError
        naming the file: anything :func:`~floodlib.data.geotiff.read_geotiff` refuses (no georeference, a
        geographic CRS, a unit other than metre or foot, fewer than 3 pixels a side), a pixel size other
        than 1 m, a DEM smaller than ``MIN_DEM_POINTS`` points a side, a window that leaves a DEM large
        enough to hold it, an offset outside the DEM, or nodata (NaN) inside the window.
    """
    rows, cols = check_grid(rows, cols)
    raster = read_geotiff(source.path, band=source.band)
    check_dem(raster, rows=rows, cols=cols)
    path = raster.path
    dem_rows, dem_cols = raster.values.shape
    need_rows = rows * TERRAIN_RATIO + 1
    need_cols = cols * TERRAIN_RATIO + 1
    mirrored = {}
    for axis, offset, need, have in (("row", source.row_offset, need_rows, dem_rows),
                                     ("col", source.col_offset, need_cols, dem_cols)):
        if not 0 <= offset < have:
            raise SimulationFileError(f"{path}: {axis}_offset: {offset} is outside the DEM's 0..{have - 1} {axis}s")
        if need <= have and offset + need > have:
            raise SimulationFileError(
                f"{path}: {axis}_offset: a window of {need} points from {axis} {offset} leaves the DEM ({have} {axis}s); "
                f"use an offset <= {have - need}")
        mirrored[axis] = need > have
    row_index = _reflect_indices(source.row_offset, need_rows, dem_rows)
    col_index = _reflect_indices(source.col_offset, need_cols, dem_cols)
    window = raster.values[np.ix_(row_index, col_index)]
    missing = ~np.isfinite(window)
    if missing.any():
        r, c = np.argwhere(missing)[0]
        raise SimulationFileError(
            f"{path}: elevation: {int(missing.sum())} of {missing.size} points of the {need_rows}x{need_cols} window "
            f"at row {source.row_offset}, column {source.col_offset} are nodata (first at DEM row {row_index[r]}, "
            f"column {col_index[c]}); the terrain must be complete under the grid")
    description = {"dem": str(path), "band": source.band, "row_offset": int(source.row_offset),
                   "col_offset": int(source.col_offset), "mirrored_rows": mirrored["row"],
                   "mirrored_cols": mirrored["col"]}
    if raster.units_factor != 1.0:
        description.update(source_units=raster.source_units, units_factor=raster.units_factor)
    if raster.vertical_factor != 1.0:
        description.update(vertical_units=raster.vertical_units, vertical_factor=raster.vertical_factor)
    return Terrain(
        elevation=np.ascontiguousarray(window, dtype=np.float32),
        origin_x=raster.x0 + (source.col_offset + 0.5) * raster.dx,
        origin_y=raster.y0 - (source.row_offset + 0.5) * raster.dy,
        crs=raster.crs,
        description=description,
    )


def make_terrain(source: ValleyParams | DemSource, *, rows: int, cols: int, seed: int = 0) -> Terrain:
    """Dispatch to :func:`valley_terrain` (``seed`` used) or :func:`dem_terrain` (``seed`` ignored)."""
    if isinstance(source, ValleyParams):
        return valley_terrain(source, rows=rows, cols=cols, seed=seed)
    if isinstance(source, DemSource):
        return dem_terrain(source, rows=rows, cols=cols)
    raise TypeError(f"terrain source: {type(source).__name__} is neither ValleyParams nor DemSource")


def cell_elevation(elevation: np.ndarray) -> np.ndarray:
    """Mean elevation of each 10 m cell from its 1 m terrain points (trapezoidal weights).

    Each cell averages its (r + 1) x (r + 1) points with edge points weighted 1/2 and corners 1/4, i.e.
    the exact mean of the bilinear surface through the points; a point shared by two cells is split
    between them, so the cell means integrate the whole terrain exactly once.

    Parameters
    ----------
    elevation : (rows * r + 1, cols * r + 1), m.

    Returns
    -------
    (rows, cols) float64, m.
    """
    r = TERRAIN_RATIO
    z = np.asarray(elevation, dtype=np.float64)
    points_r, points_c = z.shape
    rows, cols = (points_r - 1) // r, (points_c - 1) // r
    if rows * r + 1 != points_r or cols * r + 1 != points_c:
        raise ValueError(f"elevation: shape {z.shape} is not (rows * {r} + 1, cols * {r} + 1)")
    along_rows = z[:-1].reshape(rows, r, points_c).sum(axis=1) - 0.5 * z[0:-1:r] + 0.5 * z[r::r]
    along_rows /= r
    cells = along_rows[:, :-1].reshape(rows, cols, r).sum(axis=2) - 0.5 * along_rows[:, 0:-1:r] + 0.5 * along_rows[:, r::r]
    return cells / r
