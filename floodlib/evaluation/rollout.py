"""Full-domain rollouts against the solver: a surrogate predicts a held-out plan hour by hour on its own,
closing its patches' boundary rings (:mod:`floodlib.predict`), and is scored against the stored simulation.

For a plan, a start time s and each step k (one lead time each):

- ``rae`` — full-domain RAE of the depth after k steps against the no-change baseline from the start:
  sum|predicted - solver| / sum|solver - depth at s| over the plan's cells;
- ``closed_rae_interiors`` and ``patch_rae_true_rings`` — the same step scored like-for-like over the
  interiors of the standard grid's patches that lie inside the domain: the closed prediction, and the
  same model given each patch's true ring at n + dt from the solver (what the patch test measures), both
  against the no-change baseline of that step (sum|pred - truth| / sum|truth - depth at n|);
- ``volume_solver_m3`` / ``volume_surrogate_m3`` — water stored on the domain;
- the closure's passes, last residual and whether it converged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from floodlib.data.store import Simulation, read_simulation
from floodlib.evaluation.figures import ERROR_COLOURS, model_colour, plain_log_ticks, scale_bar, whole_number_ticks
from floodlib.evaluation.metrics import MetricSpec, resolve_device
from floodlib.models.constants import PATCH_CELLS
from floodlib.predict import DomainPredictor, PredictError, Rollout, StoredBoundary, Tiling, predict_plan


@dataclass
class PlanRollout:
    """One plan's rollout and where it came from."""

    split: str
    path: Path
    simulation: Simulation
    rollout: Rollout
    start_s: float
    delta_t_s: float


def fitting_steps(simulation: Simulation, *, start_s: float, steps: int, delta_t_s: float) -> tuple[float, int]:
    """(start, steps) that fit in the plan: ``steps`` from ``start_s`` at most; from 0 when not one step fits
    from ``start_s``. PredictError when the plan is shorter than one step or the times are off its frames."""
    interval = simulation.output_interval_s
    last = (simulation.water_depth.shape[0] - 1) * interval
    name = f"plan {simulation.project}/{simulation.plan}"
    for value, what in ((start_s, "start"), (delta_t_s, "lead time")):
        if abs(value / interval - round(value / interval)) > 1e-6:
            raise PredictError(f"{name}: {what} {value / 60:g} min is not a multiple of its output interval "
                               f"({interval / 60:g} min)")
    if last < delta_t_s:
        raise PredictError(f"{name}: {last / 60:g} min long, shorter than one {delta_t_s / 60:g}-min step")
    if start_s + delta_t_s > last + 1e-6:
        start_s = 0.0
    return start_s, max(1, min(steps, int(math.floor((last - start_s) / delta_t_s + 1e-9))))


@torch.no_grad()
def patch_scores_true_rings(model, simulation: Simulation, frame: int, next_frame: int, predicted_next: np.ndarray,
                            *, device: torch.device) -> tuple[float, float, float]:
    """(sum |closed - truth|, sum |true-ring prediction - truth|, sum |truth - now|) over the interiors of the
    standard grid's patches inside the domain (none touching a cell outside the model's area)."""
    tiling = Tiling(*simulation.grid_shape)
    now = np.asarray(simulation.water_depth[frame], dtype=np.float32)
    later = np.asarray(simulation.water_depth[next_frame], dtype=np.float32)
    r, ring = simulation.terrain_ratio, 2
    closed = patch = baseline = 0.0
    for row, col in tiling.domain_origins("standard"):
        if row + PATCH_CELLS > now.shape[0] or col + PATCH_CELLS > now.shape[1]:
            continue
        window = np.s_[row:row + PATCH_CELLS, col:col + PATCH_CELLS]
        if np.isnan(now[window]).any() or np.isnan(later[window]).any():
            continue
        rings = later[window].copy()
        rings[ring:-ring, ring:-ring] = 0.0
        terrain = simulation.terrain[row * r:(row + PATCH_CELLS) * r + 1, col * r:(col + PATCH_CELLS) * r + 1]
        depths = torch.as_tensor(np.stack([rings, now[window]])[None], device=device)
        change = model(torch.as_tensor(np.ascontiguousarray(terrain)[None, None], device=device), depths)
        predicted = np.maximum(now[window] + change[0, 0].float().cpu().numpy(), 0.0)
        inner = np.s_[ring:-ring, ring:-ring]
        truth = later[window][inner]
        patch += float(np.abs(predicted[inner] - truth).sum())
        closed += float(np.abs(predicted_next[window][inner] - truth).sum())
        baseline += float(np.abs(truth - now[window][inner]).sum())
    return closed, patch, baseline


def roll_out_plans(model, plans: Sequence[tuple[str, str | Path]], *, start_s: float, steps: int, delta_t_s: float,
                   device: str = "auto", **options) -> tuple[pd.DataFrame, list[PlanRollout]]:
    """Roll ``model`` out over every (split, plan file) and score each step (see the module's docstring).

    Returns one row per plan and step, and the rollouts (for maps). ``options`` go to
    :class:`floodlib.predict.DomainPredictor` (tolerance_m, max_iterations, precision, ...).
    """
    frame, rollouts = roll_out_models({"model": model}, plans, start_s=start_s, steps=steps, delta_t_s=delta_t_s,
                                      device=device, **options)
    return frame.drop(columns="model", errors="ignore"), rollouts["model"]


def roll_out_models(models: Mapping[str, torch.nn.Module], plans: Sequence[tuple[str, str | Path]], *,
                    start_s: float, steps: int, delta_t_s: float, device: str = "auto",
                    **options) -> tuple[pd.DataFrame, dict[str, list[PlanRollout]]]:
    """:func:`roll_out_plans` for several models by name, each plan read once for all of them.

    Returns the rows of every model (a ``model`` column first) and each model's rollouts.
    """
    device = resolve_device(device)
    models = {name: model.to(device).eval() for name, model in models.items()}
    rows, rollouts = [], {name: [] for name in models}
    for split, path in plans:
        simulation = read_simulation(path)
        start, count = fitting_steps(simulation, start_s=start_s, steps=steps, delta_t_s=delta_t_s)
        for name, model in models.items():
            item, scored = _roll_out_plan(model, split, Path(path), simulation, start_s=start, steps=count,
                                          delta_t_s=delta_t_s, device=device, **options)
            rollouts[name].append(item)
            rows += [{"model": name, **row} for row in scored]
    return pd.DataFrame(rows), rollouts


def _roll_out_plan(model, split: str, path: Path, simulation: Simulation, *, start_s: float, steps: int,
                   delta_t_s: float, device, **options) -> tuple[PlanRollout, list[dict]]:
    """One model over one plan: its rollout and one row of scores per step."""
    mask = np.isnan(simulation.water_depth[0])
    predictor = DomainPredictor(model, simulation.terrain, mask=mask, terrain_ratio=simulation.terrain_ratio,
                                device=device, **options)
    rollout = predict_plan(model, simulation, start_s=start_s, steps=steps, delta_t_s=delta_t_s, predictor=predictor)
    interval = simulation.output_interval_s
    first = int(round(start_s / interval))
    start_depth = np.nan_to_num(simulation.water_depth[first])
    cell_area = simulation.cell_size_m ** 2
    boundary = StoredBoundary(simulation)
    step_frames = int(round(delta_t_s / interval))
    rows = []
    for k, step in enumerate(rollout.steps, 1):
        frame = first + (k - 1) * step_frames
        truth = np.nan_to_num(simulation.water_depth[frame + step_frames])
        predicted = np.nan_to_num(rollout.depths[k])
        baseline = float(np.abs(truth - start_depth).sum())
        # the one-step prediction from the solver's depth at n: the rollout's own first step, a fresh closure later
        one_step = step if k == 1 else predictor.step(simulation.water_depth[frame],
                                                      boundary.at((frame + step_frames) * interval))
        one_step_depth = np.nan_to_num(one_step.depth)
        now = np.nan_to_num(simulation.water_depth[frame])
        closed, patch, step_baseline = patch_scores_true_rings(model, simulation, frame, frame + step_frames,
                                                               one_step_depth, device=device)
        one_step_baseline = float(np.abs(truth - now).sum())
        rows.append({
            "split": split, "project": simulation.project, "plan": simulation.plan, "start_min": start_s / 60,
            "step": k, "time_min": (start_s + k * delta_t_s) / 60,
            "abs_error_m": float(np.abs(predicted - truth).sum()), "baseline_m": baseline,
            "rae": domain_rae(rollout.depths[k], simulation.water_depth[frame + step_frames],
                              simulation.water_depth[first])[0],
            "one_step_error_m": float(np.abs(one_step_depth - truth).sum()), "one_step_baseline_m": one_step_baseline,
            "one_step_rae": domain_rae(one_step.depth, simulation.water_depth[frame + step_frames],
                                       simulation.water_depth[frame])[0],
            "closed_error_interiors_m": closed, "patch_error_true_rings_m": patch,
            "step_baseline_interiors_m": step_baseline,
            "closed_rae_interiors": ratio(closed, step_baseline),
            "patch_rae_true_rings": ratio(patch, step_baseline),
            "volume_solver_m3": float(truth.sum() * cell_area),
            "volume_surrogate_m3": float(predicted.sum() * cell_area),
            "passes": len(step.residuals), "residual_m": float(step.residuals[-1]),
            "converged": bool(step.converged), "seconds": float(step.seconds),
            "patches_predicted": int(step.patches_predicted),
            "residuals_m": " ".join(f"{value:.3g}" for value in step.residuals),
        })
    return PlanRollout(split, path, simulation, rollout, start_s, delta_t_s), rows


def domain_rae(prediction: np.ndarray, truth: np.ndarray, depth_start: np.ndarray, *,
               min_mean_change_m: float = MetricSpec().min_mean_change_m) -> tuple[float, bool]:
    """Full-domain RAE against the no-change baseline from the start, and whether its denominator is too
    small to mean anything (mean |truth - depth_start| below ``min_mean_change_m``, m).

    ``prediction``, ``truth``, ``depth_start``: (rows, cols), m; cells where the truth or the start is NaN
    are left out. 0 / 0 gives NaN, x / 0 infinity; both are flagged small.
    """
    inside = np.isfinite(truth) & np.isfinite(depth_start)
    truth, start = truth[inside].astype(np.float64), depth_start[inside].astype(np.float64)
    error = float(np.abs(prediction[inside].astype(np.float64) - truth).sum())
    change = float(np.abs(truth - start).sum())
    cells = int(inside.sum())
    small = cells == 0 or change / cells < min_mean_change_m
    if change > 0:
        return error / change, small
    return (math.nan if error == 0 else math.inf), True


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def pooled(frame: pd.DataFrame, numerator: str, denominator: str) -> float:
    total = float(frame[denominator].sum())
    return float(frame[numerator].sum()) / total if total > 0 else math.nan


def _last_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """Each plan's last step (plans shorter than the rollout end sooner)."""
    return frame[frame["step"] == frame.groupby(["project", "plan"])["step"].transform("max")]


def _relative(rows: pd.DataFrame) -> float:
    total = float(rows["volume_solver_m3"].sum())
    return float((rows["volume_surrogate_m3"] - rows["volume_solver_m3"]).sum()) / total if total > 0 else math.nan


def volume_error(frame: pd.DataFrame) -> float:
    """(surrogate - solver) / solver water volume, the volumes of every plan's last step added up first.

    One plan's excess offsets another's shortfall here, so it says whether the surrogate creates or loses
    water overall, not how close each plan is: for that, :func:`volume_errors_by_plan`."""
    return _relative(_last_steps(frame))


def volume_errors_by_plan(frame: pd.DataFrame) -> pd.Series:
    """(surrogate - solver) / solver water volume of each plan after its last step, indexed by project/plan
    (NaN where the solver's domain is dry)."""
    last = _last_steps(frame)
    solver = last["volume_solver_m3"].to_numpy(dtype=np.float64)
    error = last["volume_surrogate_m3"].to_numpy(dtype=np.float64) - solver
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(solver > 0, error / np.where(solver > 0, solver, 1.0), np.nan)
    return pd.Series(relative, index=(last["project"] + "/" + last["plan"]).to_numpy(), name="volume_error")


def volume_summary(frame: pd.DataFrame) -> dict:
    """How close the surrogate's water volume stays to the solver's after each plan's last step: the median
    over plans of |relative error|, the smallest and largest error, and the error of each project (its plans'
    volumes added up)."""
    by_plan = volume_errors_by_plan(frame).dropna()
    by_project = {str(project): _relative(rows) for project, rows in _last_steps(frame).groupby("project")}
    if by_plan.empty:
        return {"volume_error_median_abs": math.nan, "volume_error_range": None, "volume_error_by_project": by_project}
    return {"volume_error_median_abs": float(by_plan.abs().median()),
            "volume_error_range": [float(by_plan.min()), float(by_plan.max())],
            "volume_error_by_project": by_project}


def _finite(value):
    """JSON-ready: NaN (no water moved, nothing to score) becomes None; dicts are converted value by value."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def rollout_summary(frame: pd.DataFrame, *, model: str, max_iterations: int) -> dict:
    """The rollout's headline: pooled RAE per step over every plan; the one-step prediction from the solver's
    depth at each step's start, full-domain and over the patch interiors against the same model with true
    rings; and how the closure converged."""
    by_step = {int(k): pooled(group, "abs_error_m", "baseline_m") for k, group in frame.groupby("step")}
    closed = pooled(frame, "closed_error_interiors_m", "step_baseline_interiors_m")
    true_rings = pooled(frame, "patch_error_true_rings_m", "step_baseline_interiors_m")
    passes = frame["passes"].to_numpy()
    return _finite({
        "model": model,
        "plans": int(frame.groupby(["project", "plan"]).ngroups),
        "steps": int(len(frame)),
        "pooled_rae_by_step": by_step,
        # plans shorter than the rollout end sooner: a later step pools fewer plans
        "plans_by_step": {int(k): int(group.groupby(["project", "plan"]).ngroups) for k, group in frame.groupby("step")},
        "pooled_rae": pooled(frame, "abs_error_m", "baseline_m"),
        "one_step_rae": pooled(frame, "one_step_error_m", "one_step_baseline_m"),
        "one_step_rae_by_split": {split: pooled(group, "one_step_error_m", "one_step_baseline_m")
                                  for split, group in frame.groupby("split")},
        "closed_rae_interiors": closed,
        "patch_rae_true_rings": true_rings,
        "closed_over_true_rings": closed / true_rings if true_rings > 0 else math.nan,
        "converged_fraction": float(frame["converged"].mean()),
        "converged_within_20_fraction": float((frame["converged"] & (frame["passes"] <= 20)).mean()),
        "median_passes": float(np.median(passes)),
        "max_passes": int(passes.max()),
        "max_iterations": int(max_iterations),
        "volume_error_last_step": volume_error(frame),
        **volume_summary(frame),
    })


def rollout_comparison(frame: pd.DataFrame, *, max_iterations: int) -> list[dict]:
    """:func:`rollout_summary` of every model in ``frame`` (rows of :func:`roll_out_models`), the one closest
    to the solver first: lowest full-domain RAE pooled over every plan and step (a model with nothing to
    score last)."""
    summaries = [rollout_summary(group, model=str(model), max_iterations=max_iterations)
                 for model, group in frame.groupby("model", sort=False)]
    return sorted(summaries, key=lambda item: (item["pooled_rae"] is None, item["pooled_rae"] or 0.0))


def rollout_table(summaries: list[dict]) -> pd.DataFrame:
    """The rolled-out models side by side, one row each (from :func:`rollout_comparison`)."""
    rows = []
    for item in summaries:
        rows.append({"model": item["model"],
                     **{f"RAE after step {step}": value for step, value in item["pooled_rae_by_step"].items()},
                     "RAE, all steps": item["pooled_rae"],
                     "closed / true rings": item["closed_over_true_rings"],
                     "converged within 20": item["converged_within_20_fraction"],
                     "water error, median plan": item.get("volume_error_median_abs")})
    return pd.DataFrame(rows).set_index("model")


def rollout_text(summary: dict) -> str:
    """The rollout headline in words."""
    def show(value):
        return "n/a" if value is None else f"{value:.3f}"

    volume = _volume_text(summary)
    plans = summary.get("plans_by_step") or {}
    by_step = ", ".join(f"{step}: {show(value)}" + (f" ({plans[step]} of {summary['plans']} plans, the others ended sooner)"
                                                     if plans.get(step, summary["plans"]) < summary["plans"] else "")
                        for step, value in summary["pooled_rae_by_step"].items())
    by_split = ", ".join(f"{split} {show(value)}" for split, value in summary["one_step_rae_by_split"].items())
    overall = "" if summary.get("pooled_rae") is None else f" ({summary['pooled_rae']:.3f} over all steps)"
    return (f"{summary['model']} over {summary['plans']} held-out plans ({summary['steps']} closed steps): pooled "
            f"full-domain RAE after each step {by_step}{overall}.\n"
            f"One step from the solver's depth: full domain {show(summary['one_step_rae'])} ({by_split}); patch "
            f"interiors {show(summary['closed_rae_interiors'])} closed vs {show(summary['patch_rae_true_rings'])} with "
            f"true rings (ratio {show(summary['closed_over_true_rings'])}).\n"
            f"Closure: {summary['converged_fraction']:.0%} of steps converged, median {summary['median_passes']:g} "
            f"passes, at most {summary['max_passes']} (limit {summary['max_iterations']}).\n"
            f"Water volume after each plan's last step against the solver's: {volume}.")


def _volume_text(summary: dict) -> str:
    """The volume errors in words: per plan (median |error| and range) and per project; summaries written
    before those were recorded have only the sum over plans."""
    if summary.get("volume_error_median_abs") is None:
        total = summary.get("volume_error_last_step")
        return "n/a" if total is None else f"{total:+.0%} with every plan's volume added up"
    low, high = summary["volume_error_range"]
    projects = ", ".join(f"{project} {'n/a' if value is None else format(value, '+.0%')}"
                         for project, value in summary["volume_error_by_project"].items())
    return (f"{summary['volume_error_median_abs']:.0%} off in the median plan (from {low:+.0%} to {high:+.0%}); "
            f"by project {projects}")


def plot_rollout_rae(frame: pd.DataFrame, *, title: str = ""):
    """Full-domain RAE per step for every plan (thin lines) and pooled per split (thick), beside the closed and
    true-ring patch RAE of the first step."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    colours = dict(zip(sorted(frame["split"].unique()), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (split, project, plan), group in frame.groupby(["split", "project", "plan"]):
        left.plot(group["step"], group["rae"], color=colours[split], alpha=0.35, linewidth=1)
    for split, group in frame.groupby("split"):
        steps = sorted(group["step"].unique())
        left.plot(steps, [pooled(group[group["step"] == k], "abs_error_m", "baseline_m") for k in steps],
                  color=colours[split], linewidth=3, marker="o", label=f"{split} (pooled)")
    left.plot([], [], color="grey", alpha=0.35, linewidth=1, label="one plan")
    left.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="no change")
    left.set(xlabel="steps after the start (one lead time each)", ylabel="full-domain RAE against no change since the start",
             title="rollout (a step pools the plans that reach it)")
    whole_number_ticks(left.xaxis)
    left.legend(fontsize=8)
    labels, values = [], []
    for split, group in frame.groupby("split"):
        labels += [f"{split}\nclosed", f"{split}\ntrue rings"]
        values += [pooled(group, "closed_error_interiors_m", "step_baseline_interiors_m"),
                   pooled(group, "patch_error_true_rings_m", "step_baseline_interiors_m")]
    right.bar(range(len(values)), values, color=[colours[label.split("\n")[0]] for label in labels], alpha=0.8)
    for x, value in enumerate(values):
        right.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    right.set_xticks(range(len(values)), labels, fontsize=7)
    right.set(ylabel="one-step RAE, patch interiors", title="closed rings vs true rings")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_rollout_models(frame: pd.DataFrame, *, title: str = ""):
    """Full-domain RAE after each step, every plan pooled, one line per model (rows of :func:`roll_out_models`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4))
    for model, group in frame.groupby("model", sort=False):
        steps = sorted(group["step"].unique())
        ax.plot(steps, [pooled(group[group["step"] == k], "abs_error_m", "baseline_m") for k in steps], marker="o",
                linewidth=2, color=model_colour(model), label=f"{model} ({pooled(group, 'abs_error_m', 'baseline_m'):.3f} over all steps)")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="no change")
    ax.set(xlabel="steps after the start (one lead time each)",
           ylabel="full-domain RAE against no change, pooled", title=title)
    ax.set_xticks(sorted(frame["step"].unique()))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_convergence(frame: pd.DataFrame, *, tolerance_m: float, title: str = ""):
    """Closure residual per pass for every step (log scale), and the distribution of passes per step."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for residuals in frame["residuals_m"]:
        values = [max(float(v), 1e-9) for v in residuals.split()]
        left.semilogy(range(1, len(values) + 1), values, color="tab:blue", alpha=0.3)
    left.axhline(tolerance_m, color="tab:red", linestyle="--", label=f"tolerance {tolerance_m * 1000:g} mm")
    left.set(xlabel="pass", ylabel="largest ring change (m)", title="closure convergence, every step")
    whole_number_ticks(left.xaxis)
    left.legend(fontsize=8)
    counts = frame["passes"].value_counts().sort_index()
    right.bar(counts.index, counts.values, color="tab:blue")
    right.set(xlabel="passes to converge", ylabel="steps",
              title=f"{frame['converged'].mean():.0%} of {len(frame)} steps converged")
    whole_number_ticks(right.xaxis)
    whole_number_ticks(right.yaxis)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_volume(frame: pd.DataFrame, *, title: str = ""):
    """Water volume on the domain after each step, solver against surrogate, one point per plan and step:
    colour by project, marker by step, in thousands of m³."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    markers = "os^Dv<>p"
    for (project, step), group in frame.groupby(["project", "step"]):
        colour = f"C{sorted(frame['project'].unique()).index(project) % 10}"
        ax.scatter(group["volume_solver_m3"] / 1e3, group["volume_surrogate_m3"] / 1e3, color=colour,
                   marker=markers[(int(step) - 1) % len(markers)], alpha=0.75, label=f"{project}, step {step}")
    top = float(max(frame["volume_solver_m3"].max(), frame["volume_surrogate_m3"].max(), 1.0)) * 1.05 / 1e3
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="surrogate = solver")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="solver volume (10³ m³)", ylabel="surrogate volume (10³ m³)",
           title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_rollout_maps(item: PlanRollout, *, title: str = ""):
    """Depth by the solver and by the surrogate, and their difference, at the start and after each step; cells
    outside the model's area grey, a scale bar on the solver's maps."""
    import matplotlib.pyplot as plt

    simulation, rollout = item.simulation, item.rollout
    interval = simulation.output_interval_s
    frames = [int(round(t / interval)) for t in rollout.times_s]
    truth = np.stack([np.asarray(simulation.water_depth[f]) for f in frames])
    depth_max = float(np.nanmax([np.nanmax(truth), np.nanmax(rollout.depths), 0.05]))
    error = rollout.depths - truth
    error_max = float(max(np.nanmax(np.abs(error)), 0.05))
    count = len(frames)
    fig, axes = plt.subplots(count, 3, figsize=(9.5, 3.0 * count), squeeze=False)
    for k in range(count):
        minutes = rollout.times_s[k] / 60
        for col, (field, cmap, limits, name) in enumerate((
                (truth[k], "Blues", (0, depth_max), "solver depth (m)"),
                (rollout.depths[k], "Blues", (0, depth_max), "surrogate depth (m)"),
                (error[k], ERROR_COLOURS, (-error_max, error_max), "surrogate − solver (m)"))):
            image = axes[k, col].imshow(np.ma.masked_invalid(field), interpolation="nearest",
                                        cmap=plt.get_cmap(cmap).with_extremes(bad="lightgrey"), vmin=limits[0],
                                        vmax=limits[1])
            if col == 0:
                scale_bar(axes[k, col], cell_size_m=simulation.cell_size_m, cells_across=field.shape[1])
            axes[k, col].set_xticks([])
            axes[k, col].set_yticks([])
            axes[k, col].set_title(f"{name}, {minutes:g} min", fontsize=9)
            fig.colorbar(image, ax=axes[k, col], fraction=0.046, pad=0.02)
    fig.suptitle(title or f"{item.split}: {simulation.project}/{simulation.plan}")
    fig.tight_layout()
    return fig
