"""The viewer's whole-domain mode: a surrogate rolled out over a stored plan, beside the solver's depths.

From a stored output time s of a plan, the surrogate predicts the whole domain step by step (one lead
time each, its patches' rings closed by iteration; :func:`floodlib.predict.predict_plan`, with the plan's
own edge depths as the boundary condition). At each step k the viewer shows the solver's depth, the
surrogate's depth and their difference, and the step's full-domain RAE against the no-change baseline:

    RAE(k) = sum |surrogate(k) - solver(k)| / sum |solver(k) - depth at s|

over the plan's cells (NaN cells, outside the model's area, left out). The outer two-cell ring is the
boundary condition, so it agrees with the solver by construction. At k = 0 both are the start's depth and
the RAE is undefined (0 / 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from floodlib.data.store import Simulation
from floodlib.evaluation.figures import scale_bar
from floodlib.evaluation.metrics import MetricSpec
from floodlib.evaluation.rollout import domain_rae
from floodlib.predict import DomainPredictor, PredictError, Rollout, StepResult, plan_start_frame, predict_plan

PANELS = ("solver depth (m)", "surrogate depth (m)", "difference: surrogate − solver (m)")
#: Slack on time comparisons, s.
TIME_SLACK_S = 1e-6


def _minutes(time_s: float) -> str:
    return f"{time_s / 60:g} min"


def last_output_s(simulation: Simulation) -> float:
    """The time of the plan's last stored output, s."""
    return float((simulation.water_depth.shape[0] - 1) * simulation.output_interval_s)


def start_times(simulation: Simulation, delta_t_s: float) -> np.ndarray:
    """The stored output times (s) from which at least one step of ``delta_t_s`` ends within the plan."""
    times = simulation.times_s.astype(np.float64)
    return times[times + delta_t_s <= last_output_s(simulation) + TIME_SLACK_S]


def max_steps(simulation: Simulation, start_s: float, delta_t_s: float) -> int:
    """How many steps of ``delta_t_s`` from ``start_s`` end within the plan (0 when not one does)."""
    return max(int(math.floor((last_output_s(simulation) - start_s) / delta_t_s + 1e-9)), 0)


def check_choice(simulation: Simulation, *, start_s: float, steps: int, delta_t_s: float, name: str) -> None:
    """PredictError, saying what would fit, unless ``steps`` steps of ``delta_t_s`` from the output time
    ``start_s`` end within plan ``name``."""
    plan_start_frame(simulation, start_s, name=f"plan {name}")
    last = last_output_s(simulation)
    fitting = max_steps(simulation, start_s, delta_t_s)
    if fitting < 1:
        starts = start_times(simulation, delta_t_s)
        latest = f"the latest start is {_minutes(starts[-1])}" if len(starts) else \
            "the plan is too short for a single step; choose another plan"
        raise PredictError(f"plan {name}: a start at {_minutes(start_s)} leaves no room for one step of "
                           f"{_minutes(delta_t_s)} (the models' lead time) before its last output at "
                           f"{_minutes(last)}; {latest}")
    if steps < 1:
        raise PredictError(f"plan {name}: {steps} steps requested; choose 1 to {fitting}")
    if steps > fitting:
        raise PredictError(f"plan {name}: {steps} steps of {_minutes(delta_t_s)} from {_minutes(start_s)} end at "
                           f"{_minutes(start_s + steps * delta_t_s)}, past its last output at {_minutes(last)}; "
                           f"at most {fitting} step(s) from {_minutes(start_s)}")


def solver_depths(simulation: Simulation, times_s: np.ndarray) -> tuple[np.ndarray, bool]:
    """The solver's depth (len(times_s), rows, cols), m, at ``times_s``, and whether any of them had to be
    interpolated (linearly) between stored outputs because it is not an output time."""
    position = np.asarray(times_s, dtype=np.float64) / simulation.output_interval_s
    frames = np.rint(position).astype(np.int64)
    if np.allclose(position, frames, atol=1e-6):
        return np.asarray(simulation.water_depth[frames], dtype=np.float32), False
    before = np.floor(position + 1e-9).astype(np.int64)
    after = np.minimum(before + 1, simulation.water_depth.shape[0] - 1)
    weight = (position - before)[:, None, None].astype(np.float32)
    depth = (1 - weight) * simulation.water_depth[before] + weight * simulation.water_depth[after]
    return depth.astype(np.float32), True


def format_domain_rae(rae: float, small_denominator: bool, *, step: int, start_s: float) -> str:
    """How a step's full-domain RAE is shown: four significant digits, flagged when its denominator is too
    small, a dash at the start."""
    if step == 0:
        return "RAE — (the start: nothing predicted yet)"
    text = f"RAE {rae:.4g} over the whole domain, against no change since {_minutes(start_s)}"
    if small_denominator:
        text += " (small denominator: the domain barely changes since the start)"
    return text


def closure_text(result: StepResult | None, *, tolerance_m: float) -> str:
    """The closure of one step in words: its passes (``iterations`` + 1) and last ring change."""
    if result is None:
        return "closure: none at the start"
    state = "converged" if result.converged else "NOT converged"
    if result.relaxation < 1:
        state += f", damped to {result.relaxation:.3g}"
    return (f"closure: {len(result.residuals)} pass(es), last ring change "
            f"{result.residuals[-1] * 1000:.3g} mm ({state}, tolerance {tolerance_m * 1000:g} mm), "
            f"{result.patches_predicted} patch predictions, {result.seconds:.2f} s")


@dataclass
class DomainFrame:
    """One step of a :class:`DomainRollout`: ``solver``, ``surrogate`` (rows, cols), m, at ``time_s``;
    ``rae`` and ``small_denominator`` as in :func:`domain_rae`; ``closure`` the step's result (None at the start)."""

    step: int
    time_s: float
    solver: np.ndarray
    surrogate: np.ndarray
    rae: float
    small_denominator: bool
    closure: StepResult | None

    @property
    def difference(self) -> np.ndarray:
        """surrogate − solver, m."""
        return self.surrogate - self.solver


@dataclass
class DomainRollout:
    """A surrogate's rollout over a plan's whole domain beside the solver's depths at the same times.

    ``rollout``: :class:`floodlib.predict.Rollout` (``depths`` (steps + 1, rows, cols), frame 0 the start);
    ``solver``: the plan's depths at ``rollout.times_s``, same shape; ``interpolated``: whether some of those
    fell between stored outputs; ``tolerance_m``: the closure's; ``min_mean_change_m``: the RAE's small-
    denominator threshold (:class:`~floodlib.evaluation.metrics.MetricSpec`); ``cell_size_m``: the plan's, for
    the maps' scale bar (None: no bar).
    """

    model: str
    plan: str
    rollout: Rollout
    solver: np.ndarray
    delta_t_s: float
    interpolated: bool = False
    tolerance_m: float = 1e-3
    min_mean_change_m: float = MetricSpec().min_mean_change_m
    cell_size_m: float | None = None

    @property
    def steps(self) -> int:
        return len(self.rollout.steps)

    @property
    def start_s(self) -> float:
        return float(self.rollout.times_s[0])

    def truncated(self, steps: int) -> "DomainRollout":
        """Its first ``steps`` steps (a rollout of fewer steps from the same start is the same prefix)."""
        if not 1 <= steps <= self.steps:
            raise ValueError(f"steps={steps}: this rollout has 1 to {self.steps}")
        rollout = Rollout(depths=self.rollout.depths[:steps + 1], times_s=self.rollout.times_s[:steps + 1],
                          steps=self.rollout.steps[:steps])
        return DomainRollout(model=self.model, plan=self.plan, rollout=rollout, solver=self.solver[:steps + 1],
                             delta_t_s=self.delta_t_s, interpolated=self.interpolated, tolerance_m=self.tolerance_m,
                             min_mean_change_m=self.min_mean_change_m, cell_size_m=self.cell_size_m)

    def frame(self, step: int) -> DomainFrame:
        """Step ``step`` (0 the start, up to :attr:`steps`)."""
        if not 0 <= step <= self.steps:
            raise IndexError(f"step {step} is outside the rollout: 0 (the start) to {self.steps}")
        surrogate, solver = self.rollout.depths[step], self.solver[step]
        rae, small = domain_rae(surrogate, solver, self.solver[0], min_mean_change_m=self.min_mean_change_m)
        return DomainFrame(step=step, time_s=float(self.rollout.times_s[step]), solver=solver, surrogate=surrogate,
                           rae=rae, small_denominator=small, closure=self.rollout.steps[step - 1] if step else None)

    @cached_property
    def depth_limit(self) -> float:
        """The depth colour scale's top over the whole rollout (solver and surrogate), m, so colours compare
        across steps as well as between the two maps."""
        both = np.concatenate([self.solver.ravel(), self.rollout.depths.ravel()])
        top = np.nanmax(both) if np.isfinite(both).any() else 0.0
        return float(top) or 1e-3

    @cached_property
    def difference_limit(self) -> float:
        """The difference colour scale's half-width over the whole rollout, m."""
        difference = np.abs(self.rollout.depths - self.solver)
        top = np.nanmax(difference) if np.isfinite(difference).any() else 0.0
        return float(top) or 1e-3

    def label(self, step: int) -> str:
        time_s = float(self.rollout.times_s[step])
        return (f"{self.model} · {self.plan} · t = {_minutes(time_s)}: step {step} of {self.steps} "
                f"({_minutes(self.delta_t_s)} each) from {_minutes(self.start_s)}")


def domain_predictor(model, simulation: Simulation, *, device="cpu", **options) -> DomainPredictor:
    """A predictor of ``simulation``'s domain with ``model`` on ``device``: its terrain features are computed
    here once and reused by every rollout over the plan. ``options`` go to :class:`DomainPredictor`."""
    model = model.to(device)
    mask = np.isnan(np.asarray(simulation.water_depth[0]))
    return DomainPredictor(model, simulation.terrain, mask=mask, terrain_ratio=simulation.terrain_ratio,
                           device=device, **options)


def predict_domain(model, simulation: Simulation, *, start_s: float, steps: int, delta_t_s: float,
                   model_name: str = "", plan_name: str | None = None, predictor: DomainPredictor | None = None,
                   spec: MetricSpec = MetricSpec(), device="cpu") -> DomainRollout:
    """Roll ``model`` out over ``simulation`` for ``steps`` steps of ``delta_t_s`` (s) from its output time
    ``start_s`` (s) and set the solver's depths beside it. PredictError (saying what fits) when the steps do
    not end within the plan; ``predictor`` (from :func:`domain_predictor`) reuses terrain features."""
    name = plan_name or f"{simulation.project}/{simulation.plan}"
    check_choice(simulation, start_s=start_s, steps=steps, delta_t_s=delta_t_s, name=name)
    if predictor is None:
        predictor = domain_predictor(model, simulation, device=device)
    rollout = predict_plan(model, simulation, start_s=float(start_s), steps=int(steps), delta_t_s=float(delta_t_s),
                           predictor=predictor, name=f"plan {name}")
    solver, interpolated = solver_depths(simulation, rollout.times_s)
    return DomainRollout(model=model_name, plan=name, rollout=rollout, solver=solver, delta_t_s=float(delta_t_s),
                         interpolated=interpolated, tolerance_m=predictor.tolerance_m,
                         min_mean_change_m=spec.min_mean_change_m, cell_size_m=float(simulation.cell_size_m))


def domain_figure(rollout: DomainRollout, step: int):
    """Step ``step`` of ``rollout``: the solver's and the surrogate's depth on one colour scale (fixed over
    the rollout) and their difference on a symmetric diverging one, with the step's RAE and closure.
    Cells outside the model's area are grey. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    frame = rollout.frame(step)
    rows, cols = frame.solver.shape
    height = min(max(5.0 * rows / cols, 2.5), 9.0) + 1.4
    fig, axes = plt.subplots(1, 3, figsize=(16, height), constrained_layout=True)
    depth_map = plt.get_cmap("Blues").with_extremes(bad="lightgrey")
    difference_map = plt.get_cmap("PuOr").with_extremes(bad="lightgrey")
    limit = rollout.difference_limit
    styles = ((frame.solver, dict(cmap=depth_map, vmin=0, vmax=rollout.depth_limit)),
              (frame.surrogate, dict(cmap=depth_map, vmin=0, vmax=rollout.depth_limit)),
              (frame.difference, dict(cmap=difference_map, vmin=-limit, vmax=limit)))
    for ax, (image, style), title in zip(axes, styles, PANELS):
        shown = ax.imshow(np.ma.masked_invalid(image), interpolation="nearest", **style)
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
    if rollout.cell_size_m is not None:
        scale_bar(axes[0], cell_size_m=rollout.cell_size_m, cells_across=cols)
    if rollout.interpolated:
        axes[0].set_xlabel("interpolated between the plan's stored outputs", fontsize=8)
    fig.suptitle(f"{rollout.label(step)}\n"
                 f"{format_domain_rae(frame.rae, frame.small_denominator, step=step, start_s=rollout.start_s)}\n"
                 f"{closure_text(frame.closure, tolerance_m=rollout.tolerance_m)}", fontsize=10)
    return fig
