"""Predicting a stored plan (or a user's terrain and boundary) hours ahead, and saving the result in the store format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import floodlib
from floodlib.data.store import Simulation, write_simulation
from floodlib.predict.boundary import Boundary, StoredBoundary
from floodlib.predict.closure import DomainPredictor, Rollout
from floodlib.predict.tiling import PredictError

#: The models' lead time, s (the samples' delta_t).
STEP_S = 3600.0
#: What a prediction records as its boundary when the plan's own edge depths were it.
OWN_EDGES = "the plan's own edge depths"


def plan_start_frame(simulation: Simulation, start_s: float, *, name: str = "plan") -> int:
    """The frame of ``simulation`` at ``start_s``; PredictError unless it is a stored output time."""
    last = (simulation.water_depth.shape[0] - 1) * simulation.output_interval_s
    position = start_s / simulation.output_interval_s
    if not math.isfinite(start_s) or start_s < 0 or start_s > last + 1e-6:
        raise PredictError(f"{name}: start {start_s / 60:g} min is outside the plan, whose outputs run from 0 to "
                           f"{last / 60:g} min")
    if abs(position - round(position)) > 1e-6:
        raise PredictError(f"{name}: start {start_s / 60:g} min is not one of its output times (every "
                           f"{simulation.output_interval_s / 60:g} min)")
    return int(round(position))


def check_trained_on(model, simulation: Simulation, *, delta_t_s: float, name: str) -> None:
    """PredictError when the model's checkpoint says it learnt another lead time, or on cells of other sizes,
    than this prediction asks of it (a model knows one of each; nothing is checked for checkpoints written
    before they were recorded)."""
    trained = getattr(model, "trained_on", None) or {}
    learnt = trained.get("delta_t_s")
    if learnt is not None and abs(float(learnt) - delta_t_s) > 1e-6:
        raise PredictError(f"{name}: the model learnt to predict {float(learnt) / 60:g} min ahead (its samples' delta_t); "
                           f"a step of {delta_t_s / 60:g} min is not something it can predict")
    sizes = trained.get("cell_size_m") or []
    if sizes and not any(abs(float(size) - simulation.cell_size_m) < 1e-6 for size in sizes):
        raise PredictError(f"{name}: cells of {simulation.cell_size_m:g} m; the model learnt on cells of "
                           f"{', '.join(f'{float(size):g}' for size in sizes)} m, and water crosses a cell of "
                           "another size in another time")


def predict_plan(model, simulation: Simulation, *, start_s: float, steps: int, boundary: Boundary | None = None,
                 depth_start: np.ndarray | None = None, delta_t_s: float | None = None, name: str | None = None,
                 predictor: DomainPredictor | None = None, progress=None, **options) -> Rollout:
    """Roll ``model`` out over ``simulation`` for ``steps`` steps of ``delta_t_s`` from its frame at ``start_s``.

    ``boundary`` defaults to the plan's own edge depths (:class:`StoredBoundary`), in which case the rollout
    must end within the plan. ``options`` go to :class:`DomainPredictor` (device, precision, tolerance_m, ...);
    a ready ``predictor`` for this plan's terrain may be passed instead, to reuse its terrain features.
    ``depth_start`` (rows, cols, m) replaces the plan's own depth at ``start_s`` (e.g. a dry start under a
    user's ``boundary``). ``delta_t_s`` defaults to the lead time the model learnt (its checkpoint's
    ``trained_on``), else one hour (``STEP_S``).
    """
    name = name or f"plan {simulation.project}/{simulation.plan}"
    if delta_t_s is None:
        delta_t_s = float((getattr(model, "trained_on", None) or {}).get("delta_t_s") or STEP_S)
    check_trained_on(model, simulation, delta_t_s=delta_t_s, name=name)
    if depth_start is None:
        depth_start = np.asarray(simulation.water_depth[plan_start_frame(simulation, start_s, name=name)],
                                 dtype=np.float32)
    elif not (math.isfinite(start_s) and start_s >= 0):
        raise PredictError(f"{name}: start {start_s!r} s must be a time >= 0")
    if steps < 1:
        raise PredictError(f"{name}: {steps} steps requested; a prediction needs at least one")
    if boundary is None:
        boundary = StoredBoundary(simulation, name=name)
        end = start_s + steps * delta_t_s
        if end > boundary.last_s + 1e-6:
            latest_s = boundary.last_s - steps * delta_t_s
            fits = int((boundary.last_s - start_s) / delta_t_s + 1e-9)
            hints = ([f"start at {latest_s / 60:g} min at the latest"] if latest_s >= -1e-6 else []) + \
                ([f"predict at most {fits} step(s) from {start_s / 60:g} min"] if fits >= 1 else [])
            raise PredictError(f"{name}: {steps} step(s) of {delta_t_s / 60:g} min from {start_s / 60:g} min end at "
                               f"{end / 60:g} min, past the plan's last output at {boundary.last_s / 60:g} min (its "
                               "edge depths are the boundary condition)" + ("; " + " or ".join(hints) if hints else ""))
    if predictor is None:
        if simulation.terrain_ratio * 32 + 1 != 321:
            raise PredictError(f"{name}: terrain every {simulation.terrain_spacing_m:g} m under "
                               f"{simulation.cell_size_m:g} m cells; the models take 10 terrain points per cell "
                               "(10 m cells over 1 m terrain)")
        predictor = DomainPredictor(model, simulation.terrain, mask=np.isnan(depth_start),
                                    terrain_ratio=simulation.terrain_ratio, **options)
    elif predictor.shape != simulation.grid_shape:
        raise PredictError(f"{name}: the predictor was built for a {predictor.shape} domain, the plan is "
                           f"{simulation.grid_shape}")
    return predictor.rollout(depth_start, boundary, start_s=start_s, steps=steps, delta_t_s=delta_t_s, progress=progress)


def rollout_simulation(simulation: Simulation, rollout: Rollout, *, model_name: str, boundary_name: str,
                       settings: dict | None = None) -> Simulation:
    """The rollout in the store's layout: frame k is the prediction k steps after the start (frame 0 the
    start's depth); ``extra`` records the start time, the model, the boundary, the prediction's ``settings``
    (e.g. a dry start, precision, tolerance) and each step's closure. ``event`` is the plan's own only when
    its own edges were the boundary."""
    interval = float(rollout.times_s[1] - rollout.times_s[0]) if len(rollout.times_s) > 1 else STEP_S
    return Simulation(
        project=simulation.project,
        plan=f"{simulation.plan}-surrogate",
        terrain=np.asarray(simulation.terrain, dtype=np.float32),
        water_depth=rollout.depths.astype(np.float32),
        cell_size_m=simulation.cell_size_m,
        terrain_spacing_m=simulation.terrain_spacing_m,
        output_interval_s=interval,
        source=f"floodlib {floodlib.__version__} surrogate ({model_name}) with ring closure",
        origin_x=simulation.origin_x,
        origin_y=simulation.origin_y,
        crs=simulation.crs,
        event=simulation.event if boundary_name == OWN_EDGES else None,
        extra={
            "start_s": float(rollout.times_s[0]),
            **(settings or {}),
            "model": model_name,
            "boundary": boundary_name,
            "predicted_from": f"{simulation.project}/{simulation.plan}",
            "closure_passes": [step.iterations + 1 for step in rollout.steps],
            "closure_residuals_m": [[float(r) for r in step.residuals] for step in rollout.steps],
            "closure_converged": [bool(step.converged) for step in rollout.steps],
            "step_seconds": [float(step.seconds) for step in rollout.steps],
        },
    )


def write_rollout(path: str | Path, simulation: Simulation, rollout: Rollout, *, model_name: str,
                  boundary_name: str, settings: dict | None = None) -> Path:
    """Write :func:`rollout_simulation` to ``path`` atomically."""
    return write_simulation(path, rollout_simulation(simulation, rollout, model_name=model_name,
                                                     boundary_name=boundary_name, settings=settings))
