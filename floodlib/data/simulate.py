"""The built-in flood simulator: landlab's ``OverlandFlow`` (de Almeida local inertial scheme) on 10 m cells.

A **plan** (:class:`PlanSpec`) is one terrain and one inflow hydrograph; :func:`simulate_plan` runs it
and returns a :class:`floodlib.data.store.Simulation`. A **project** (:class:`ProjectSpec`) is a family
of plans drawn deterministically from one seed (:func:`plan_specs`); :func:`simulate_project` runs them
in parallel processes and writes ``<out_dir>/<project>/<plan>.h5``.

Model set-up (what the stored ``source``, ``event`` and ``extra`` attributes record):

- **Cell elevation** — the mean of the cell's 1 m terrain points (:func:`floodlib.data.terrain.cell_elevation`).
  The solver has no sub-grid bathymetry: a cell holds ``area * depth`` of water, so the mean elevation is
  the one that gives a submerged cell the right storage volume, and mass, depths and the wave's travel time
  follow from storage. The minimum would keep sub-cell ditches conveying, but it treats every cell as if
  its lowest 1 m point filled it, overstating storage (by 0.2-0.5 m of depth per cell on rough
  floodplains) and drowning the roughness the 1 m terrain is there to carry. The procedural channel is
  at least 2.5 cells wide, so the mean keeps it a continuous low line; for DEM terrain, channels narrower
  than a cell lose conveyance, a known limit of a 10 m grid without sub-grid hydraulics.
- **Inflow** — there is no discharge boundary in ``OverlandFlow``: the hydrograph ``Q(t)`` (m³/s) enters as
  a source (``rainfall_intensity``, m/s) spread evenly over a strip of cells along the inflow edge,
  ``inflow_width_m`` wide and ``INFLOW_STRIP_CELLS`` deep. Spreading it keeps the depth at the source,
  and so the stable time step ``alpha * dx / sqrt(g * h_max)``, from collapsing.
- **Outflow** — the outflow edge is open, the other three closed. The grid carries one ring of ghost
  cells outside the stored cells; on the open edge each ghost is ``outfall_slope * 10 m`` lower than its
  neighbour and takes its neighbour's depth before every step, a normal-depth (zero depth gradient)
  boundary: water leaves at the rate the downstream slope drives it. Outflow volume is measured
  directly, as the sum over time steps of the discharge on the links into the ghost cells times the
  cell width and the step.
- **Mass balance** — inflow volume (the source actually applied) against stored volume change plus
  outflow volume; the residual is the mass the solver itself creates or destroys (``steep_slopes`` resets
  depths below ``h_init`` to ``h_init / 1000``). A plan whose relative residual exceeds
  ``MAX_MASS_ERROR`` (1 %) fails and nothing is written.
- **Stored depths** — ``water_depth`` every ``output_interval_s`` from t = 0, float32, m. Depths at or
  below the solver's thin film ``H_INIT_M`` are stored as 0 (dry); the volume so removed is reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from floodlib.data.store import Simulation, SimulationFileError, read_simulation, write_simulation
from floodlib.data.terrain import (
    CELL_SIZE_M,
    EDGES,
    OPPOSITE_EDGE,
    TERRAIN_RATIO,
    TERRAIN_SPACING_M,
    DemSource,
    Terrain,
    ValleyParams,
    cell_elevation,
    check_edge,
    check_grid,
    make_terrain,
)

MAX_MASS_ERROR = 0.01  # relative, of the inflow volume
H_INIT_M = 1e-5  # OverlandFlow's thin film, m (its default): keeps the scheme free of divisions by zero
TIME_STEP_FACTOR = 0.7  # alpha in dt = alpha * dx / sqrt(g * h_max) (Bates et al. 2010; landlab's default)
# Weight of a link's own discharge against its parallel neighbours' (de Almeida et al. 2012). 0.9, not
# landlab's 0.8: the averaging leaks channel momentum onto dry bank links, whose cells then overdraw and
# are reset by steep_slopes, creating water (-1.6 % mass error on a 128x128, 280-min valley plan at 0.8,
# -0.5 % at 0.9); 1.0 (no averaging) conserves that plan to 1e-5 but oscillates in a closed basin
# 0.45 m deep (+-23 cm, -3.4 % mass error), so 0.9 is the compromise.
THETA = 0.9
INFLOW_STRIP_CELLS = 2  # depth of the inflow strip, cells
DEFAULT_OUTFALL_SLOPE = 0.001  # m/m, for DEM terrain (synthetic terrain uses its own valley slope)
DEFAULT_DURATION_S = 280 * 60.0  # the seed's snapshots at 0, 70, 140, 210 min plus 60 min
DEFAULT_OUTPUT_INTERVAL_S = 60.0


class SimulationFailedError(RuntimeError):
    """A plan could not be simulated (mass balance, non-finite depths, bad set-up); nothing was written."""


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: {value!r} must be a finite number {expected}")
    return float(value)


@dataclass(frozen=True)
class Hydrograph:
    """A smooth single-peaked inflow hydrograph.

    ``Q(t) = base + (peak - base) * s(t)`` with ``s = sin²(π t / 2 t_p)`` on the rise (0 at t = 0, 1 at
    the peak), ``s = cos²(π (t - t_p) / 2 (D - t_p))`` on the recession and ``s = 0`` after the event;
    ``Q`` and its slope are continuous.

    Attributes
    ----------
    peak_discharge_m3s : peak discharge, m³/s (> 0).
    time_to_peak_s : time of the peak from the plan's start, s (> 0).
    duration_s : end of the event (back to base flow), s (> time_to_peak_s).
    base_flow_m3s : constant base flow under the event, m³/s (0 <= base < peak).
    """

    peak_discharge_m3s: float
    time_to_peak_s: float
    duration_s: float
    base_flow_m3s: float = 0.0

    def __post_init__(self) -> None:
        _positive("Hydrograph.peak_discharge_m3s", self.peak_discharge_m3s)
        _positive("Hydrograph.time_to_peak_s", self.time_to_peak_s)
        _positive("Hydrograph.duration_s", self.duration_s)
        _positive("Hydrograph.base_flow_m3s", self.base_flow_m3s, allow_zero=True)
        if self.duration_s <= self.time_to_peak_s:
            raise ValueError(f"Hydrograph.duration_s: {self.duration_s} s must be later than time_to_peak_s "
                             f"({self.time_to_peak_s} s)")
        if self.base_flow_m3s >= self.peak_discharge_m3s:
            raise ValueError(f"Hydrograph.base_flow_m3s: {self.base_flow_m3s} m³/s must be below the peak "
                             f"({self.peak_discharge_m3s} m³/s)")

    def discharge(self, t_s: float | np.ndarray) -> float | np.ndarray:
        """Q(t), m³/s, at times ``t_s`` (s; scalar or array)."""
        t = np.asarray(t_s, dtype=np.float64)
        rise = np.sin(0.5 * np.pi * np.clip(t / self.time_to_peak_s, 0.0, 1.0)) ** 2
        fall_time = self.duration_s - self.time_to_peak_s
        fall = np.cos(0.5 * np.pi * np.clip((t - self.time_to_peak_s) / fall_time, 0.0, 1.0)) ** 2
        shape = np.where(t <= self.time_to_peak_s, rise, fall) * (t >= 0)
        q = self.base_flow_m3s + (self.peak_discharge_m3s - self.base_flow_m3s) * shape
        return float(q) if q.ndim == 0 else q

    def volume(self, t_end_s: float) -> float:
        """Exact inflow volume from t = 0 to ``t_end_s``, m³ (the integral of :meth:`discharge`)."""
        t_end = max(float(t_end_s), 0.0)
        tp = self.time_to_peak_s
        fall_time = self.duration_s - tp
        a = min(t_end, tp)
        rise = a / 2 - tp / (2 * np.pi) * np.sin(np.pi * a / tp)
        b = min(max(t_end - tp, 0.0), fall_time)
        fall = b / 2 + fall_time / (2 * np.pi) * np.sin(np.pi * b / fall_time)
        return self.base_flow_m3s * t_end + (self.peak_discharge_m3s - self.base_flow_m3s) * (rise + fall)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _outflow_edge(outflow_edge: str | None, terrain, *, fallback: str) -> str:
    """The open outflow edge: the one asked for, else a valley's downstream edge, else ``fallback``."""
    if outflow_edge is not None:
        return outflow_edge
    if isinstance(terrain, ValleyParams):
        return terrain.downstream_edge
    return fallback


@dataclass(frozen=True)
class PlanSpec:
    """One plan: terrain, grid, inflow and solver settings.

    Attributes
    ----------
    terrain : :class:`ValleyParams` (procedural, seeded by ``terrain_seed``) or :class:`DemSource`.
    hydrograph : the inflow event.
    rows, cols : grid size in 10 m cells.
    terrain_seed : seed of the procedural terrain (ignored for a DEM).
    inflow_edge : edge the inflow enters through ("north", "east", "south", "west").
    inflow_location : centre of the inflow along its edge as a fraction of the edge length, measured from
        the western end (north/south edges) or the northern end (east/west edges); None puts it where
        the channel crosses the edge (procedural terrain only), else the edge's midpoint.
    inflow_width_m : width of the inflow strip along the edge, m (at least one cell).
    outflow_edge : the open edge; None: the valley's downstream edge (procedural terrain), else the edge
        opposite the inflow.
    manning_n : Manning's roughness, s/m^(1/3), uniform.
    duration_s : simulated time, s; a whole number of output intervals.
    output_interval_s : time between stored depth frames, s.
    outfall_slope : drop per metre of the ghost cells beyond the open edge (normal-depth boundary), m/m;
        None: the valley slope (procedural terrain) or ``DEFAULT_OUTFALL_SLOPE``.
    """

    terrain: ValleyParams | DemSource
    hydrograph: Hydrograph
    rows: int = 128
    cols: int = 128
    terrain_seed: int = 0
    inflow_edge: str = "north"
    inflow_location: float | None = None
    inflow_width_m: float = 60.0
    outflow_edge: str | None = None
    manning_n: float = 0.04
    duration_s: float = DEFAULT_DURATION_S
    output_interval_s: float = DEFAULT_OUTPUT_INTERVAL_S
    outfall_slope: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.terrain, (ValleyParams, DemSource)):
            raise TypeError(f"PlanSpec.terrain: {type(self.terrain).__name__} is neither ValleyParams nor DemSource")
        if not isinstance(self.hydrograph, Hydrograph):
            raise TypeError(f"PlanSpec.hydrograph: {type(self.hydrograph).__name__} is not a Hydrograph")
        check_grid(self.rows, self.cols)
        check_edge(self.inflow_edge, field_name="PlanSpec.inflow_edge")
        if self.outflow_edge is not None:
            check_edge(self.outflow_edge, field_name="PlanSpec.outflow_edge")
        if self.resolved_outflow_edge == self.inflow_edge:
            raise ValueError(f"PlanSpec.inflow_edge: {self.inflow_edge!r} is also the open outflow edge; the inflow "
                             "must enter through a closed edge")
        if self.inflow_location is not None and not (0.0 <= self.inflow_location <= 1.0):
            raise ValueError(f"PlanSpec.inflow_location: {self.inflow_location!r} must be a fraction of the edge in [0, 1]")
        _positive("PlanSpec.inflow_width_m", self.inflow_width_m)
        if self.inflow_width_m < CELL_SIZE_M:
            raise ValueError(f"PlanSpec.inflow_width_m: {self.inflow_width_m} m is narrower than one {CELL_SIZE_M:g} m cell")
        _positive("PlanSpec.manning_n", self.manning_n)
        _positive("PlanSpec.duration_s", self.duration_s)
        _positive("PlanSpec.output_interval_s", self.output_interval_s)
        frames = self.duration_s / self.output_interval_s
        if abs(frames - round(frames)) > 1e-9:
            raise ValueError(f"PlanSpec.duration_s: {self.duration_s} s is not a whole number of output intervals "
                             f"({self.output_interval_s} s)")
        if self.outfall_slope is not None:
            _positive("PlanSpec.outfall_slope", self.outfall_slope)

    @property
    def resolved_outflow_edge(self) -> str:
        return _outflow_edge(self.outflow_edge, self.terrain, fallback=OPPOSITE_EDGE[self.inflow_edge])

    @property
    def n_frames(self) -> int:
        """Stored frames: t = 0, output_interval_s, ..., duration_s."""
        return int(round(self.duration_s / self.output_interval_s)) + 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["terrain"] = {"kind": type(self.terrain).__name__, **self.terrain.to_dict()}
        return data


@dataclass(frozen=True)
class ProjectSpec:
    """A family of plans on one terrain family, drawn from ``seed`` by :func:`plan_specs`.

    Ranges are ``(low, high)`` and drawn uniformly (log-uniformly for the peak discharge).

    Attributes
    ----------
    name : project name (a folder name: letters, digits, ``-``, ``_``, ``.``).
    terrain : the terrain family: :class:`ValleyParams` (each plan gets its own terrain seed) or
        :class:`DemSource` (each plan gets its own window of the DEM when the grid fits in it).
    n_plans : number of plans.
    seed : the project seed; the plans depend on nothing else.
    rows, cols : grid size in 10 m cells.
    peak_discharge_m3s : range of the peak inflow, m³/s.
    time_to_peak_s : range of the time to peak, s.
    event_duration_s : range of the event duration, s (at least time to peak + 10 min is enforced).
    base_flow_fraction : range of the base flow as a fraction of the peak.
    manning_n : range of Manning's n, s/m^(1/3).
    inflow_location : range of the inflow position along its edge (fraction); the upstream edge of a
        procedural valley always takes its inflow at the channel.
    inflow_edges : edges the inflow may enter through, drawn uniformly; None: every edge but the outflow edge.
    outflow_edge : the open edge; None: the valley's downstream edge, or "south" for a DEM.
    terrain_ranges : ``((field, low, high), ...)`` numeric :class:`ValleyParams` fields varied per plan.
    inflow_width_m, duration_s, output_interval_s : as in :class:`PlanSpec`.
    """

    name: str
    terrain: ValleyParams | DemSource = field(default_factory=ValleyParams)
    n_plans: int = 10
    seed: int = 0
    rows: int = 128
    cols: int = 128
    peak_discharge_m3s: tuple[float, float] = (40.0, 160.0)
    time_to_peak_s: tuple[float, float] = (1200.0, 3600.0)
    event_duration_s: tuple[float, float] = (5400.0, 12600.0)
    base_flow_fraction: tuple[float, float] = (0.02, 0.08)
    manning_n: tuple[float, float] = (0.03, 0.06)
    inflow_location: tuple[float, float] = (0.35, 0.65)
    inflow_edges: tuple[str, ...] | None = None
    outflow_edge: str | None = None
    terrain_ranges: tuple[tuple[str, float, float], ...] = ()
    inflow_width_m: float = 60.0
    duration_s: float = DEFAULT_DURATION_S
    output_interval_s: float = DEFAULT_OUTPUT_INTERVAL_S

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name) or self.name.startswith("."):
            raise ValueError(f"ProjectSpec.name: {self.name!r} must be a non-empty folder name of letters, digits, '-', '_', '.'")
        if not isinstance(self.terrain, (ValleyParams, DemSource)):
            raise TypeError(f"ProjectSpec.terrain: {type(self.terrain).__name__} is neither ValleyParams nor DemSource")
        if isinstance(self.n_plans, bool) or not isinstance(self.n_plans, int) or self.n_plans < 1:
            raise ValueError(f"ProjectSpec.n_plans: {self.n_plans!r} must be a whole number >= 1")
        check_grid(self.rows, self.cols)
        for name in ("peak_discharge_m3s", "time_to_peak_s", "event_duration_s", "base_flow_fraction",
                     "manning_n", "inflow_location"):
            low, high = getattr(self, name)
            _positive(f"ProjectSpec.{name}[0]", low, allow_zero=name in ("base_flow_fraction", "inflow_location"))
            if not (math.isfinite(high) and high >= low):
                raise ValueError(f"ProjectSpec.{name}: ({low}, {high}) must be a range (low, high) with high >= low")
        if self.inflow_location[1] > 1 or self.base_flow_fraction[1] >= 1:
            raise ValueError(f"ProjectSpec: inflow_location {self.inflow_location} must lie in [0, 1] and "
                             f"base_flow_fraction {self.base_flow_fraction} below 1")
        if self.outflow_edge is not None:
            check_edge(self.outflow_edge, field_name="ProjectSpec.outflow_edge")
        for edge in self.inflow_edges or ():
            check_edge(edge, field_name="ProjectSpec.inflow_edges")
            if edge == self.resolved_outflow_edge:
                raise ValueError(f"ProjectSpec.inflow_edges: {edge!r} is the outflow edge")
        numeric = {item.name for item in fields(ValleyParams) if item.name != "downstream_edge"}
        for entry in self.terrain_ranges:
            name, low, high = entry
            if not isinstance(self.terrain, ValleyParams) or name not in numeric:
                raise ValueError(f"ProjectSpec.terrain_ranges: {name!r} is not a numeric ValleyParams field "
                                 f"({', '.join(sorted(numeric))}) of a procedural terrain")
            if not high >= low:
                raise ValueError(f"ProjectSpec.terrain_ranges: {entry!r} must have high >= low")

    @property
    def resolved_outflow_edge(self) -> str:
        return _outflow_edge(self.outflow_edge, self.terrain, fallback="south")

    def plan_names(self) -> list[str]:
        return [f"plan_{index:03d}" for index in range(self.n_plans)]


def plan_specs(project: ProjectSpec) -> list[PlanSpec]:
    """The project's plans, deterministic from ``project.seed`` alone.

    Each plan draws, in a fixed order: terrain seed (or DEM window), varied terrain parameters, inflow
    edge and location, peak discharge, time to peak, event duration, base flow and Manning's n. Every
    draw is made whether used or not, so changing one range does not reshuffle the others.
    """
    rng = np.random.default_rng(project.seed)
    outflow = project.resolved_outflow_edge
    edges = project.inflow_edges or tuple(edge for edge in EDGES if edge != outflow)
    dem_shape = None
    if isinstance(project.terrain, DemSource):
        from floodlib.data.geotiff import read_geotiff

        dem_shape = read_geotiff(project.terrain.path, band=project.terrain.band).values.shape
    specs = []
    for _ in range(project.n_plans):
        terrain_seed = int(rng.integers(0, 2**31 - 1))
        window = rng.random(2)
        varied = {name: float(rng.uniform(low, high)) for name, low, high in project.terrain_ranges}
        edge = edges[int(rng.integers(len(edges)))]
        location = float(rng.uniform(*project.inflow_location))
        low, high = project.peak_discharge_m3s
        peak = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        time_to_peak = float(rng.uniform(*project.time_to_peak_s))
        event = float(rng.uniform(*project.event_duration_s))
        base_fraction = float(rng.uniform(*project.base_flow_fraction))
        manning = float(rng.uniform(*project.manning_n))

        terrain: ValleyParams | DemSource = project.terrain
        if isinstance(terrain, ValleyParams):
            terrain = replace(terrain, **varied)
            if edge == OPPOSITE_EDGE[terrain.downstream_edge]:
                location = None  # a river enters its valley in the channel
        else:
            offsets = []
            for fraction, have, need in zip(window, dem_shape, (project.rows * TERRAIN_RATIO + 1,
                                                                 project.cols * TERRAIN_RATIO + 1)):
                room = have - need if need <= have else have - 1
                offsets.append(int(fraction * (room + 1)) if room > 0 else 0)
            terrain = replace(terrain, row_offset=offsets[0], col_offset=offsets[1])
        specs.append(PlanSpec(
            terrain=terrain,
            hydrograph=Hydrograph(peak_discharge_m3s=peak, time_to_peak_s=time_to_peak,
                                  duration_s=max(event, time_to_peak + 600.0), base_flow_m3s=base_fraction * peak),
            rows=project.rows, cols=project.cols, terrain_seed=terrain_seed,
            inflow_edge=edge, inflow_location=location, inflow_width_m=project.inflow_width_m,
            outflow_edge=outflow, manning_n=manning, duration_s=project.duration_s,
            output_interval_s=project.output_interval_s,
        ))
    return specs


@dataclass
class FlowResult:
    """What :func:`run_overland_flow` returns.

    Attributes
    ----------
    water_depth : (frames, rows, cols) float32, m, row 0 north; frame k at t = k * output_interval_s.
    mass_balance : volumes in m³ and the relative error (see :func:`run_overland_flow`).
    """

    water_depth: np.ndarray
    mass_balance: dict[str, float]


def inflow_strip(*, rows: int, cols: int, edge: str, location: float, width_m: float) -> np.ndarray:
    """Cells of the inflow strip: along ``edge``, centred ``location`` (fraction from the west/north end),
    ``width_m`` wide (rounded to whole cells, at least one) and ``INFLOW_STRIP_CELLS`` deep.

    Returns
    -------
    (rows, cols) bool, row 0 north.
    """
    check_edge(edge, field_name="inflow edge")
    length = cols if edge in ("north", "south") else rows
    n_cells = min(length, max(1, int(round(width_m / CELL_SIZE_M))))
    centre = location * length  # in cells from the west/north end
    first = int(np.clip(round(centre - n_cells / 2), 0, length - n_cells))
    depth = min(INFLOW_STRIP_CELLS, rows if edge in ("north", "south") else cols)
    mask = np.zeros((rows, cols), dtype=bool)
    span = slice(first, first + n_cells)
    if edge == "north":
        mask[:depth, span] = True
    elif edge == "south":
        mask[rows - depth:, span] = True
    elif edge == "west":
        mask[span, :depth] = True
    else:
        mask[span, cols - depth:] = True
    return mask


def _channel_location(terrain: Terrain, edge: str) -> float:
    """Where the procedural channel crosses ``edge``, as a fraction of the edge from its west/north end."""
    line = terrain.channel_centerline
    points_r, points_c = terrain.elevation.shape
    if edge in ("north", "south"):
        point = line[np.argmin(line[:, 0])] if edge == "north" else line[np.argmax(line[:, 0])]
        return float(point[1] / (points_c - 1))
    point = line[np.argmin(line[:, 1])] if edge == "west" else line[np.argmax(line[:, 1])]
    return float(point[0] / (points_r - 1))


def run_overland_flow(
    cell_elevation_m: np.ndarray,
    *,
    inflow_cells: np.ndarray,
    hydrograph: Hydrograph,
    outflow_edge: str | None,
    manning_n: float,
    duration_s: float,
    output_interval_s: float = DEFAULT_OUTPUT_INTERVAL_S,
    outfall_slope: float = DEFAULT_OUTFALL_SLOPE,
) -> FlowResult:
    """Run ``OverlandFlow(steep_slopes=True)`` on a grid of 10 m cells and record the depths.

    One stable step at a time (``calc_time_step()`` then ``overland_flow(dt)``), never stepping past an
    output time; the source for a step is the hydrograph at the step's midpoint.

    Parameters
    ----------
    cell_elevation_m : (rows, cols), m, row 0 north.
    inflow_cells : (rows, cols) bool — where the inflow enters (spread evenly over these cells).
    hydrograph : the inflow, m³/s.
    outflow_edge : the open edge (normal-depth boundary), or None for a closed basin.
    manning_n : Manning's roughness, s/m^(1/3).
    duration_s, output_interval_s : simulated time and frame interval, s.
    outfall_slope : drop per metre to the ghost cells beyond the open edge, m/m.

    Returns
    -------
    FlowResult — ``mass_balance`` holds ``inflow_m3`` (source applied), ``outflow_m3`` (measured on the
    open-edge links), ``initial_storage_m3`` and ``final_storage_m3`` (solver depths x cell area over the
    stored cells), ``error_m3 = inflow - outflow - (final - initial)``, ``relative_error = error / inflow``,
    ``dry_film_removed_m3`` (final frame), ``time_steps``, ``min_stable_time_step_s``, ``max_depth_m``.
    """
    from landlab import RasterModelGrid
    from landlab.components import OverlandFlow

    z_cells = np.asarray(cell_elevation_m, dtype=np.float64)
    if z_cells.ndim != 2 or not np.isfinite(z_cells).all():
        raise ValueError(f"cell_elevation_m: shape {z_cells.shape} must be 2-D (rows, cols) and finite")
    rows, cols = z_cells.shape
    inflow_cells = np.asarray(inflow_cells, dtype=bool)
    if inflow_cells.shape != (rows, cols) or not inflow_cells.any():
        raise ValueError(f"inflow_cells: shape {inflow_cells.shape} must be {(rows, cols)} with at least one cell set")
    if outflow_edge is not None:
        check_edge(outflow_edge, field_name="outflow_edge")
    n_frames = int(round(duration_s / output_interval_s)) + 1
    cell_area = CELL_SIZE_M * CELL_SIZE_M

    # The solver grid has a ghost ring, so every stored cell is a core node (landlab never updates
    # the depth of a perimeter node). Built north-up, then flipped: landlab's row 0 is its southern edge.
    padded = np.pad(z_cells, 1, mode="edge")
    ghost = np.zeros(padded.shape, dtype=bool)
    neighbour = np.zeros(padded.shape, dtype=bool)
    if outflow_edge == "north":
        ghost[0, 1:-1], neighbour[1, 1:-1] = True, True
    elif outflow_edge == "south":
        ghost[-1, 1:-1], neighbour[-2, 1:-1] = True, True
    elif outflow_edge == "west":
        ghost[1:-1, 0], neighbour[1:-1, 1] = True, True
    elif outflow_edge == "east":
        ghost[1:-1, -1], neighbour[1:-1, -2] = True, True
    padded[ghost] -= outfall_slope * CELL_SIZE_M

    def to_nodes(north_up: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(north_up[::-1]).ravel()

    grid = RasterModelGrid(padded.shape, xy_spacing=CELL_SIZE_M)
    grid.add_field("topographic__elevation", to_nodes(padded).astype(np.float64), at="node")
    depth = grid.add_zeros("surface_water__depth", at="node")
    closed = {edge: edge != outflow_edge for edge in EDGES}
    grid.set_closed_boundaries_at_grid_edges(closed["east"], closed["north"], closed["west"], closed["south"])
    ghost_nodes = np.flatnonzero(to_nodes(ghost))
    neighbour_nodes = np.flatnonzero(to_nodes(neighbour))  # same order as ghost_nodes along the edge

    unit_source = np.zeros(grid.number_of_nodes)
    unit_source[np.flatnonzero(to_nodes(np.pad(inflow_cells, 1)))] = 1.0 / (inflow_cells.sum() * cell_area)
    source = np.zeros(grid.number_of_nodes)  # m/s; the component keeps this array and sees in-place updates
    flow = OverlandFlow(grid, h_init=H_INIT_M, alpha=TIME_STEP_FACTOR, theta=THETA, mannings_n=manning_n,
                        rainfall_intensity=source, steep_slopes=True)

    # Links from stored cells to the ghosts of the open edge; landlab's q is positive tail -> head.
    active = grid.active_links
    ends = grid.nodes_at_link[active]
    is_core = grid.status_at_node == grid.BC_NODE_IS_CORE
    into_head = ~is_core[ends[:, 1]]
    outlet = ~is_core[ends[:, 0]] | into_head
    outlet_links = active[outlet]
    outlet_sign = np.where(into_head[outlet], 1.0, -1.0)

    frames = np.empty((n_frames, rows, cols), dtype=np.float32)
    with _openmp_threads(1):
        return _step_and_record(flow, grid, depth, frames, padded_shape=padded.shape, ghost_nodes=ghost_nodes,
                                neighbour_nodes=neighbour_nodes, unit_source=unit_source, source=source,
                                hydrograph=hydrograph, outlet_links=outlet_links, outlet_sign=outlet_sign,
                                output_interval_s=output_interval_s)


def _step_and_record(flow, grid, depth, frames, *, padded_shape, ghost_nodes, neighbour_nodes, unit_source,
                     source, hydrograph, outlet_links, outlet_sign, output_interval_s) -> FlowResult:
    """The time loop of :func:`run_overland_flow`."""
    n_frames, rows, cols = frames.shape
    cell_area = CELL_SIZE_M * CELL_SIZE_M
    discharge = grid.at_link["surface_water__discharge"]
    core = grid.core_nodes

    def store(k: int) -> float:
        state = depth.reshape(padded_shape)[::-1][1:-1, 1:-1]
        frames[k] = np.where(state > H_INIT_M, state, 0.0)
        return float(state.sum() - frames[k].sum(dtype=np.float64)) * cell_area

    initial_storage = float(depth[core].sum()) * cell_area
    store(0)
    inflow = outflow = 0.0
    steps = 0
    min_step = math.inf
    max_depth = 0.0
    t = 0.0
    for k in range(1, n_frames):
        t_out = k * output_interval_s
        while t_out - t > 1e-9 * output_interval_s:
            depth[ghost_nodes] = depth[neighbour_nodes]  # normal-depth boundary: zero depth gradient
            stable = flow.calc_time_step()
            dt = min(stable, t_out - t)
            q_in = hydrograph.discharge(t + 0.5 * dt)
            np.multiply(unit_source, q_in, out=source)
            flow.overland_flow(dt)
            inflow += q_in * dt
            outflow += float(discharge[outlet_links] @ outlet_sign) * CELL_SIZE_M * dt
            t += dt
            steps += 1
            min_step = min(min_step, stable)
        t = t_out  # absorb round-off so output times stay exact
        dry_film = store(k)
        max_depth = max(max_depth, float(frames[k].max()))
    if not np.isfinite(frames).all():
        raise SimulationFailedError("water_depth: the solver produced non-finite depths")
    final_storage = float(depth[core].sum()) * cell_area
    error = inflow - outflow - (final_storage - initial_storage)
    balance = {
        "inflow_m3": float(inflow),
        "outflow_m3": float(outflow),
        "initial_storage_m3": initial_storage,
        "final_storage_m3": final_storage,
        "error_m3": float(error),
        "relative_error": float(error / inflow) if inflow > 0 else 0.0,
        "dry_film_removed_m3": dry_film if n_frames > 1 else 0.0,
        "time_steps": int(steps),
        "min_stable_time_step_s": float(min_step) if steps else 0.0,
        "max_depth_m": max_depth,
    }
    return FlowResult(water_depth=frames, mass_balance=balance)


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables (inherited by processes started meanwhile), restoring them afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _openmp_threads(threads: int):
    """Run landlab's OpenMP loops on ``threads`` threads, restoring the previous setting afterwards.

    Why: the per-link loops of a 10 m grid are too short to gain from threads, and on a busy machine
    GOMP's spinning threads made a 128x128 plan 27x slower (432 s instead of 16 s). landlab wheels bundle
    their own libgomp, so setting it here leaves other libraries' thread pools (torch's) alone.
    """
    import landlab

    candidates = sorted((Path(landlab.__file__).parent.parent / "landlab.libs").glob("libgomp*.so*"))
    library = None
    for candidate in [*map(str, candidates), "libgomp.so.1"]:
        try:
            library = ctypes.CDLL(candidate)
            break
        except OSError:
            continue
    if library is None:
        yield
        return
    previous = library.omp_get_max_threads()
    library.omp_set_num_threads(threads)
    try:
        yield
    finally:
        library.omp_set_num_threads(previous)


def _landlab_version() -> str:
    import landlab

    return landlab.__version__


def simulate_plan(spec: PlanSpec, *, project: str, plan: str) -> Simulation:
    """Simulate one plan.

    Parameters
    ----------
    spec : the plan.
    project, plan : names stored with the result (and used in messages).

    Returns
    -------
    Simulation — ``terrain`` (rows * 10 + 1, cols * 10 + 1) float32 m; ``water_depth`` (frames, rows, cols)
    float32 m every ``spec.output_interval_s`` from t = 0; ``event`` the inflow hydrograph; ``extra`` the
    mass balance, Manning's n, the terrain's description and the plan spec.

    Raises
    ------
    SimulationFailedError
        naming the project and plan, when the mass balance error exceeds ``MAX_MASS_ERROR`` or the solver
        fails.
    """
    where = f"project {project!r}, plan {plan!r}"
    terrain = make_terrain(spec.terrain, rows=spec.rows, cols=spec.cols, seed=spec.terrain_seed)
    location = spec.inflow_location
    if location is None:
        if terrain.channel_centerline is not None:
            location = _channel_location(terrain, spec.inflow_edge)
        else:
            location = 0.5
    inflow_cells = inflow_strip(rows=spec.rows, cols=spec.cols, edge=spec.inflow_edge, location=location,
                                width_m=spec.inflow_width_m)
    outfall_slope = spec.outfall_slope
    if outfall_slope is None:
        outfall_slope = spec.terrain.slope if isinstance(spec.terrain, ValleyParams) else DEFAULT_OUTFALL_SLOPE
    outfall_slope = max(outfall_slope, 1e-4)  # a flat outfall would hold water back indefinitely
    try:
        result = run_overland_flow(
            cell_elevation(terrain.elevation), inflow_cells=inflow_cells, hydrograph=spec.hydrograph,
            outflow_edge=spec.resolved_outflow_edge, manning_n=spec.manning_n, duration_s=spec.duration_s,
            output_interval_s=spec.output_interval_s, outfall_slope=outfall_slope)
    except SimulationFailedError as error:
        raise SimulationFailedError(f"{where}: {error}") from error
    balance = result.mass_balance
    if not abs(balance["relative_error"]) <= MAX_MASS_ERROR:
        raise SimulationFailedError(
            f"{where}: mass balance: inflow {balance['inflow_m3']:.1f} m³ vs storage change "
            f"{balance['final_storage_m3'] - balance['initial_storage_m3']:.1f} m³ + outflow {balance['outflow_m3']:.1f} m³ "
            f"leaves a relative error of {balance['relative_error']:+.3%}; expected within ±{MAX_MASS_ERROR:.0%}")
    times = np.arange(spec.n_frames) * spec.output_interval_s
    event = {
        "type": "inflow_hydrograph",
        "edge": spec.inflow_edge,
        "location": location,
        "width_m": spec.inflow_width_m,
        "inflow_cells": int(inflow_cells.sum()),
        **spec.hydrograph.to_dict(),
        "times_s": times.tolist(),
        "discharge_m3s": np.round(spec.hydrograph.discharge(times), 6).tolist(),
    }
    return Simulation(
        project=project,
        plan=plan,
        terrain=terrain.elevation,
        water_depth=result.water_depth,
        cell_size_m=CELL_SIZE_M,
        terrain_spacing_m=TERRAIN_SPACING_M,
        output_interval_s=spec.output_interval_s,
        source=f"landlab {_landlab_version()} OverlandFlow (de Almeida), steep_slopes=True",
        origin_x=terrain.origin_x,
        origin_y=terrain.origin_y,
        crs=terrain.crs,
        event=event,
        extra={
            "mass_balance": balance,
            "roughness_manning_n": spec.manning_n,
            "outflow_edge": spec.resolved_outflow_edge,
            "outfall_slope": outfall_slope,
            "cell_elevation": "mean of the cell's 1 m terrain points (trapezoidal weights)",
            "terrain_source": terrain.description,
            "plan_spec": spec.to_dict(),
        },
    )


def _is_complete(path: Path, *, project: str, plan: str, spec: PlanSpec) -> bool:
    """True when ``path`` already holds this plan: readable, valid, same names and shape."""
    if not path.exists():
        return False
    try:
        simulation = read_simulation(path, memory_map=True)
    except SimulationFileError:
        return False
    return (simulation.project == project and simulation.plan == plan
            and simulation.water_depth.shape == (spec.n_frames, spec.rows, spec.cols))


def _simulate_and_write(spec: PlanSpec, project: str, plan: str, path: str) -> str:
    write_simulation(path, simulate_plan(spec, project=project, plan=plan))
    return path


class PlanFailedError(RuntimeError):
    """One or more plans of a project failed; the other plans' files were written."""


def simulate_project(project: ProjectSpec, out_dir: str | Path, *, workers: int = 2,
                     progress: bool = True) -> list[Path]:
    """Simulate every plan of ``project`` into ``out_dir/<project>/<plan>.h5``.

    Plans whose file already exists and reads back valid are skipped (not rewritten). The others run in
    ``workers`` spawned processes (in this process when ``workers == 1``); the results do not depend on
    ``workers``. Each file is written atomically by :func:`floodlib.data.store.write_simulation`.

    Returns
    -------
    The plans' paths, in plan order.

    Raises
    ------
    PlanFailedError
        after the other plans have finished, naming every plan that failed and why.
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: {workers!r} must be a whole number >= 1")
    specs = plan_specs(project)
    names = project.plan_names()
    folder = Path(out_dir) / project.name
    paths = [folder / f"{name}.h5" for name in names]
    todo = [i for i, (spec, name, path) in enumerate(zip(specs, names, paths))
            if not _is_complete(path, project=project.name, plan=name, spec=spec)]
    failures: list[tuple[str, BaseException]] = []
    with tqdm(total=len(paths), initial=len(paths) - len(todo), desc=f"simulating {project.name}", unit="plan",
              disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                try:
                    _simulate_and_write(specs[i], project.name, names[i], str(paths[i]))
                except (SimulationFailedError, SimulationFileError, ValueError) as error:
                    failures.append((names[i], error))
                bar.update()
        else:
            n_workers = min(workers, len(todo))
            # Workers read OMP_NUM_THREADS when their OpenMP runtimes load: one thread each, or the
            # runtimes' spinning threads oversubscribe the cores (measured: a 6 s plan took over 10 min).
            with _environment(OMP_NUM_THREADS="1"), \
                    ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_simulate_and_write, specs[i], project.name, names[i], str(paths[i])): names[i]
                           for i in todo}
                for future in as_completed(futures):
                    error = future.exception()
                    if error is not None:
                        failures.append((futures[future], error))
                    bar.update()
    if failures:
        failures.sort(key=lambda item: item[0])
        listing = "; ".join(f"{name}: {type(error).__name__}: {error}" for name, error in failures)
        raise PlanFailedError(f"project {project.name!r}: {len(failures)} of {len(todo)} plans failed "
                              f"({listing}); the other plans' files are in {folder}") from failures[0][1]
    return paths
