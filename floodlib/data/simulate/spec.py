"""Plans and projects of the built-in simulator: the inflow hydrograph, one plan's terrain, inflow and
outflow (:class:`PlanSpec`), and a family of plans drawn from one seed (:class:`ProjectSpec`, :func:`plan_specs`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from floodlib.data.store import SimulationFileError
from floodlib.data.terrain import (
    CELL_SIZE_M,
    EDGES,
    OPPOSITE_EDGE,
    TERRAIN_RATIO,
    DemSource,
    ValleyParams,
    check_dem,
    check_edge,
    check_grid,
    complete_windows,
    project_offset_refusal,
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
DEFAULT_DURATION_S = 280 * 60.0  # the reference's snapshots at 0, 70, 140, 210 min plus 60 min
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
        if isinstance(self.terrain, DemSource) and (self.terrain.row_offset or self.terrain.col_offset):
            raise ValueError("ProjectSpec.terrain: "
                             + project_offset_refusal(self.terrain.row_offset, self.terrain.col_offset))
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
    draw is made whether used or not, so changing one range does not reshuffle the others. A DEM window
    drawn over nodata moves to the nearest window wholly on data (a DEM with none for the grid is refused,
    once, with a SimulationFileError naming the file).
    """
    rng = np.random.default_rng(project.seed)
    outflow = project.resolved_outflow_edge
    edges = project.inflow_edges or tuple(edge for edge in EDGES if edge != outflow)
    if isinstance(project.terrain, DemSource):
        from floodlib.data.geotiff import read_geotiff

        raster = read_geotiff(project.terrain.path, band=project.terrain.band)
        check_dem(raster, rows=project.rows, cols=project.cols)  # once, not once per plan
        dem_values = raster.values
        needs = (project.rows * TERRAIN_RATIO + 1, project.cols * TERRAIN_RATIO + 1)
        windows = complete_windows(dem_values, need_rows=needs[0], need_cols=needs[1])
        if windows is not None and not windows.complete.any():
            missing = ~np.isfinite(dem_values)
            r, c = divmod(int(np.argmax(missing)), missing.shape[1])  # the first, row by row
            raise SimulationFileError(
                f"{raster.path}: elevation: no window of {needs[0]}x{needs[1]} points (the {project.rows}x"
                f"{project.cols}-cell grid of project {project.name!r}) lies wholly on data: {int(missing.sum())} of "
                f"{missing.size} pixels are nodata (first at row {r}, column {c}); expected a DEM with a complete "
                f"area that large (a smaller grid, or the DEM's holes filled, e.g. gdal_fillnodata.py)")
        if raster.crs is None:
            warnings.warn(f"{raster.path}: no CRS: its coordinates are taken to be metres and its pixels 1 m apart, "
                          f"and the maps made from project {project.name!r} carry no CRS; if it is in feet, or to "
                          f"georeference the maps, give it its CRS first (gdal_edit.py -a_srs EPSG:<code> "
                          f"{raster.path}; a run made from it then counts it as changed, and --force redoes its "
                          "stages)", UserWarning, stacklevel=2)
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
            for fraction, have, need in zip(window, dem_values.shape, needs):
                room = have - need if need <= have else have - 1
                offsets.append(int(fraction * (room + 1)) if room > 0 else 0)
            # A window over nodata moves to the nearest one wholly on data (DEMs of surveys often have nodata
            # margins); a DEM with no such window was refused above.
            if windows is not None:
                offsets = windows.nearest(tuple(offsets))
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
