"""Running one plan: landlab's ``OverlandFlow`` with the inflow as a source strip, an open outflow edge
of ghost cells, the mass balance and the stored frames (:func:`simulate_plan`)."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from floodlib.data.store import Simulation
from floodlib.data.terrain import (
    CELL_SIZE_M,
    EDGES,
    TERRAIN_SPACING_M,
    Terrain,
    ValleyParams,
    cell_elevation,
    check_edge,
    make_terrain,
)
from floodlib.data.simulate.spec import (
    MAX_MASS_ERROR,
    H_INIT_M,
    TIME_STEP_FACTOR,
    THETA,
    INFLOW_STRIP_CELLS,
    DEFAULT_OUTFALL_SLOPE,
    DEFAULT_OUTPUT_INTERVAL_S,
    SimulationFailedError,
    Hydrograph,
    PlanSpec,
)


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
    outlet_cells = np.where(into_head[outlet], ends[outlet, 0], ends[outlet, 1])  # each outlet link's stored cell

    frames = np.empty((n_frames, rows, cols), dtype=np.float32)
    with _openmp_threads(1):
        return _step_and_record(flow, grid, depth, frames, padded_shape=padded.shape, ghost_nodes=ghost_nodes,
                                neighbour_nodes=neighbour_nodes, unit_source=unit_source, source=source,
                                hydrograph=hydrograph, outlet_links=outlet_links, outlet_sign=outlet_sign,
                                outlet_cells=outlet_cells, output_interval_s=output_interval_s)


def _step_and_record(flow, grid, depth, frames, *, padded_shape, ghost_nodes, neighbour_nodes, unit_source,
                     source, hydrograph, outlet_links, outlet_sign, outlet_cells, output_interval_s) -> FlowResult:
    """The time loop of :func:`run_overland_flow`.

    Water only leaves through the open edge: its ghost cells lie below their neighbours and hold their
    depth, so a surface gradient never points inward, but the scheme's inertia (the link's previous
    discharge, averaged with its parallel neighbours') can carry a link's discharge inward, which would
    bring water from nowhere (seen on DEM windows that drain away from the open edge: a fifth more water
    than the inflow, booked as negative outflow). Such a step's inflow through a link is taken back from
    the cell it entered, and the link's discharge set to zero."""
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
            leaving = discharge[outlet_links] * outlet_sign  # m²/s, > 0 out of the domain
            inward = leaving < 0
            if inward.any():
                cells = outlet_cells[inward]
                np.add.at(depth, cells, leaving[inward] * dt / CELL_SIZE_M)  # the volume q dx dt over dx²
                depth[cells] = np.maximum(depth[cells], 0.0)
                discharge[outlet_links[inward]] = 0.0
                leaving = np.maximum(leaving, 0.0)
            outflow += float(leaving.sum()) * CELL_SIZE_M * dt
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
def environment_variables(**values: str):
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
