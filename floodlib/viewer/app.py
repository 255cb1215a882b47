"""The prediction viewer: an ipywidgets app over a run folder, in two modes.

- **patches**: choose a model, a split, a plan and a sample (or step through the split) and see the terrain,
  the depth at n, the true and predicted depth change and their error on shared colour scales, with the
  sample's RAE. The picture is drawn by :func:`floodlib.evaluation.sample_figure`, the function headless runs
  save PNGs with, so what the viewer shows and what a report saves are the same picture.
- **whole domain**: choose a model, a plan of the split, a start time and a number of steps; the model
  predicts the plan's whole domain step by step (:mod:`floodlib.predict`), and a time slider shows the
  solver's depth, the surrogate's and their difference at each step, with the step's full-domain RAE
  against the no-change baseline and its ring closure (:mod:`floodlib.viewer.domain`). Rollouts are kept,
  so moving the slider only redraws.

In JupyterLab::

    from floodlib.viewer import show
    show("../outputs/smoke")

As a page in the browser: ``python -m floodlib.viewer outputs/smoke`` (served by Voilà).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets
import numpy as np

from floodlib.data.dataset import PatchDataset, discover_plans, split_plans
from floodlib.data.store import Simulation, atomic_write, read_simulation
from floodlib.evaluation.figures import SampleView, figure_png, format_rae, sample_figure, view_sample
from floodlib.evaluation.metrics import MetricSpec, resolve_device
from floodlib.models.checkpoints import CheckpointError
from floodlib.predict import DomainPredictor, PredictError
from floodlib.runs import RunError, RunModel, open_run, run_models, splits
from floodlib.viewer.domain import (DomainFrame, DomainRollout, check_choice, closure_text, domain_figure,
                                    domain_predictor, format_domain_rae, last_output_s, max_steps, predict_domain,
                                    start_times)

MODES = (("patches", "patches"), ("whole domain", "domain"))
#: Rollouts, predictors (terrain features) and plans kept in memory, the most recently used first.
ROLLOUTS_KEPT, PREDICTORS_KEPT, SIMULATIONS_KEPT = 16, 2, 4
#: Steps a new rollout has by default (fewer when the plan holds fewer).
DEFAULT_STEPS = 3
#: What a model or a plan can raise that the app shows instead of a traceback.
SHOWN_ERRORS = (CheckpointError, OSError, ValueError, RuntimeError)


class ViewerError(ValueError):
    """The run folder cannot be viewed (not a run, no trained models, no data)."""


def _error_html(message: str) -> str:
    return (f"<div style='color:#a40000;white-space:pre-wrap;font-family:monospace'>"
            f"{html.escape(message, quote=False)}</div>")


def _values(choice: widgets.Dropdown) -> list:
    return [value for _, value in choice.options]


def _keep(cache: OrderedDict, key, value, size: int):
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
    return value


class PredictionViewer:
    """An interactive viewer of a run's predictions, patch by patch or over whole plans.

    Parameters
    ----------
    run_dir : the run folder (``outputs/<run>/``).
    stages : stages whose models must be there (a clear error otherwise); by default C's.
    context : stages whose models are offered too when present.
    spec : how the shown RAE is computed (the evaluation's :class:`MetricSpec`).
    device : where predictions run (``"auto"``: CUDA when present).
    split : the split shown first.
    model : the model shown first, as its key (``"C/Arch_03"``); by default the first of ``stages``. Stage D
        passes the model its rollouts rank first, so the whole-domain mode opens on the one its maps show.

    ``viewer.widget`` is the app; displaying the viewer shows it. :meth:`select` changes the patch view from
    code, :meth:`select_domain` the whole-domain view. A model whose checkpoint cannot be used (corrupted, of
    another architecture), or a choice a plan cannot hold, shows the error in the app instead of a picture;
    the other choices stay usable.
    """

    def __init__(self, run_dir: str | Path, *, stages: Sequence[str] = ("C",), context: Sequence[str] = ("A", "B"),
                 spec: MetricSpec = MetricSpec(), device: str = "auto", split: str = "big_test",
                 model: str | None = None):
        self.run_dir = Path(run_dir)
        try:
            self.run = open_run(self.run_dir)
            self.entries: dict[str, RunModel] = {e.key: e for e in run_models(self.run_dir, stages, context=context,
                                                                              load=False)}
            self.split_files: dict[str, list[Path]] = split_plans(discover_plans(self.run.data_dir),
                                                                  self.run.split_spec())
            #: The models' lead time, s: one step of the whole-domain mode.
            self.delta_t_s = float(self.run.sample_spec().delta_t_s)
        except (RunError, FileNotFoundError, ValueError) as error:
            raise ViewerError(f"cannot view run folder {self.run_dir}: {error}") from None
        if model is not None and model not in self.entries:
            raise ViewerError(f"model={model!r} is not a model of run folder {self.run_dir}: expected one of "
                              f"{', '.join(self.entries)}")
        self.split_names = list(self.split_files)
        self.spec = spec
        self.device = device
        self._datasets: dict[str, PatchDataset] = {}
        self._simulations: OrderedDict[Path, Simulation] = OrderedDict()
        self._predictors: OrderedDict[tuple[str, Path], tuple[object, DomainPredictor]] = OrderedDict()
        self._rollouts: OrderedDict[tuple, DomainRollout] = OrderedDict()
        self._busy = False
        self._patch_split: str | None = None  # the split whose plans the patch controls list
        self._domain_split: str | None = None  # the split whose plans the domain controls list
        self.current_view: SampleView | None = None
        self.current_rollout: DomainRollout | None = None
        self.current_frame: DomainFrame | None = None

        self.mode_choice = widgets.ToggleButtons(options=MODES, value="patches",
                                                 tooltips=["samples of the split, patch by patch",
                                                           "a plan's whole domain, predicted step by step"])
        self.model_choice = widgets.Dropdown(options=list(self.entries), description="model")
        if model is not None:
            self.model_choice.value = model
        names = self.split_names
        self.split_choice = widgets.Dropdown(options=names, value=split if split in names else names[0],
                                             description="split")
        self.plan_choice = widgets.Dropdown(description="plan")
        self.sample_choice = widgets.IntSlider(min=0, max=0, description="in plan", continuous_update=False)
        self.previous_button = widgets.Button(description="◀ previous", tooltip="previous sample of the split")
        self.next_button = widgets.Button(description="next ▶", tooltip="next sample of the split")
        self.domain_plan_choice = widgets.Dropdown(description="plan")
        self.start_choice = widgets.Dropdown(description="start", tooltip="a stored output time of the plan")
        self.steps_choice = widgets.IntSlider(min=1, max=1, value=1, continuous_update=False,
                                              description=f"steps of {self.delta_t_s / 60:g} min",
                                              style={"description_width": "initial"})
        self.time_choice = widgets.IntSlider(min=0, max=1, value=1, description="step", continuous_update=False,
                                             tooltip="the step shown: 0 is the start",
                                             layout=widgets.Layout(width="520px"))
        self.time_label = widgets.HTML()
        self.picture = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="1500px"))
        self.rae_label = widgets.HTML()
        self.details = widgets.HTML()
        self.error = widgets.HTML()
        for widget, name in ((self.mode_choice, "mode"), (self.model_choice, "model"), (self.split_choice, "split"),
                             (self.plan_choice, "plan"), (self.sample_choice, "sample"),
                             (self.previous_button, "previous"), (self.next_button, "next"),
                             (self.domain_plan_choice, "domain-plan"), (self.start_choice, "start"),
                             (self.steps_choice, "steps"), (self.time_choice, "time"), (self.time_label, "time-label"),
                             (self.picture, "picture"), (self.rae_label, "rae"), (self.details, "details"),
                             (self.error, "error")):
            widget.add_class(f"floodlib-{name}")
        self._choices = widgets.HBox([self.model_choice, self.split_choice, self.plan_choice])
        self._patch_controls = widgets.HBox([self.previous_button, self.sample_choice, self.next_button])
        self._domain_controls = widgets.VBox([
            widgets.HBox([self.start_choice, self.steps_choice]),
            widgets.HBox([self.time_choice, self.time_label]),
        ])
        self._controls = widgets.VBox([self._patch_controls])
        self.widget = widgets.VBox([self.mode_choice, self._choices, self._controls,
                                    self.rae_label, self.error, self.picture, self.details])
        self.widget.add_class("floodlib-viewer")

        for widget, what in ((self.mode_choice, "mode"), (self.model_choice, "model"), (self.split_choice, "split"),
                             (self.plan_choice, "plan"), (self.sample_choice, "sample"),
                             (self.domain_plan_choice, "domain_plan"), (self.start_choice, "start"),
                             (self.steps_choice, "steps"), (self.time_choice, "time")):
            widget.observe(lambda change, what=what: self._changed(what), names="value")
        self.previous_button.on_click(lambda button: self.step(-1))
        self.next_button.on_click(lambda button: self.step(1))
        self._changed("split")

    # -- what is selected -------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """``"patches"`` or ``"domain"``."""
        return self.mode_choice.value

    def dataset(self, split: str | None = None) -> PatchDataset:
        """The dataset of ``split`` (the selected one by default), loaded once."""
        split = split or self.split_choice.value
        if split not in self._datasets:
            self._datasets[split] = splits(self.run, [split])[split]
        return self._datasets[split]

    def _plan_offsets(self) -> list[int]:
        counts = self.dataset().summary.samples_per_plan
        return [sum(counts[:i]) for i in range(len(counts))]

    @property
    def item(self) -> int:
        """The selected sample's number in its split."""
        plan = self.plan_choice.value or 0
        return self._plan_offsets()[plan] + self.sample_choice.value if self.dataset().summary.samples_per_plan else 0

    def model(self, key: str):
        """The model ``key`` (``<stage>/<name>``) rebuilt from its checkpoint once; CheckpointError when unusable
        (tried again on the next selection, so a replaced file is picked up)."""
        entry = self.entries[key]
        return entry.model if entry.model is not None else entry.load()

    @staticmethod
    def plan_name(path: Path) -> str:
        """``project/plan`` of a plan file ``<data>/<project>/<plan>.h5``."""
        return f"{path.parent.name}/{path.stem}"

    @property
    def domain_plan(self) -> Path | None:
        """The plan file selected in the whole-domain mode."""
        files = self.split_files[self.split_choice.value]
        index = self.domain_plan_choice.value
        return files[index] if index is not None and index < len(files) else None

    def simulation(self, path: Path) -> Simulation:
        """The plan at ``path``, memory-mapped and kept for the next few uses."""
        if path in self._simulations:
            self._simulations.move_to_end(path)
            return self._simulations[path]
        return _keep(self._simulations, path, read_simulation(path, memory_map=True), SIMULATIONS_KEPT)

    def _kept_rollout(self) -> DomainRollout | None:
        """The selected rollout if it is kept: computed for these steps, or for more from the same start."""
        wanted = (self.model_choice.value, self.domain_plan, self.start_choice.value, self.delta_t_s)
        steps = self.steps_choice.value
        for key, rollout in reversed(self._rollouts.items()):
            if key[:4] == wanted and key[4] >= steps:
                self._rollouts.move_to_end(key)
                return rollout if key[4] == steps else rollout.truncated(steps)
        return None

    def domain_rollout(self) -> DomainRollout:
        """The rollout of the selected model, plan, start and steps: computed once, then kept (a rollout of
        more steps from the same start serves fewer). Errors are raised."""
        key, path = self.model_choice.value, self.domain_plan
        if path is None:
            raise ViewerError(f"split {self.split_choice.value!r} has no plans")
        simulation = self.simulation(path)
        name = self.plan_name(path)
        start_s, steps = self.start_choice.value, self.steps_choice.value
        if start_s is None:
            raise PredictError(f"plan {name}: its outputs run from 0 to {last_output_s(simulation) / 60:g} min, too "
                               f"short for one step of {self.delta_t_s / 60:g} min (the models' lead time); choose "
                               "another plan")
        kept = self._kept_rollout()
        if kept is not None:
            return kept
        check_choice(simulation, start_s=start_s, steps=steps, delta_t_s=self.delta_t_s, name=name)
        model = self.model(key)
        cached = self._predictors.get((key, path))
        if cached is not None and cached[0] is model:
            predictor = cached[1]
            self._predictors.move_to_end((key, path))
        else:
            predictor = domain_predictor(model, simulation, device=resolve_device(self.device))
            _keep(self._predictors, (key, path), (model, predictor), PREDICTORS_KEPT)
        rollout = predict_domain(model, simulation, start_s=start_s, steps=steps, delta_t_s=self.delta_t_s,
                                 model_name=key, plan_name=name, predictor=predictor, spec=self.spec)
        return _keep(self._rollouts, (key, path, start_s, self.delta_t_s, steps), rollout, ROLLOUTS_KEPT)

    # -- changes ----------------------------------------------------------------------------------------------

    def _update_plans(self) -> None:
        summary = self.dataset().summary
        self.plan_choice.options = [(f"{plan} ({count} samples)", index)
                                    for index, (plan, count) in enumerate(zip(summary.plans, summary.samples_per_plan))]
        self.plan_choice.value = next((i for i, c in enumerate(summary.samples_per_plan) if c), 0) \
            if summary.plans else None
        self._set_sample_range()
        self.sample_choice.value = 0
        self._patch_split = self.split_choice.value

    def _update_domain_plans(self) -> None:
        files = self.split_files[self.split_choice.value]
        self.domain_plan_choice.options = [(self.plan_name(path), index) for index, path in enumerate(files)]
        self.domain_plan_choice.value = 0 if files else None
        self._domain_split = self.split_choice.value
        self._update_starts(default_steps=True)

    def _update_starts(self, *, default_steps: bool = False) -> None:
        """The start times of the selected plan: its output times from which one step fits."""
        path, previous = self.domain_plan, self.start_choice.value
        try:
            starts = start_times(self.simulation(path), self.delta_t_s) if path is not None else []
        except SHOWN_ERRORS:
            starts = []  # the plan cannot be read: refresh says why
        self.start_choice.options = [(f"{t / 60:g} min", float(t)) for t in starts]
        self.start_choice.value = previous if previous in _values(self.start_choice) else \
            (float(starts[0]) if len(starts) else None)
        self._update_steps(default_steps=default_steps)

    def _update_steps(self, *, default_steps: bool = False) -> None:
        """The steps that fit after the selected start (the choice kept where it still fits)."""
        path, start_s = self.domain_plan, self.start_choice.value
        try:
            fitting = max_steps(self.simulation(path), start_s, self.delta_t_s) if start_s is not None else 1
        except SHOWN_ERRORS:
            fitting = 1  # the plan cannot be read: refresh says why
        self.steps_choice.max = max(fitting, 1)
        if default_steps:
            self.steps_choice.value = min(DEFAULT_STEPS, self.steps_choice.max)
        self.steps_choice.disabled = fitting <= 1
        self._update_time_range()

    def _update_time_range(self) -> None:
        self.time_choice.max = self.steps_choice.value

    def _show_mode(self) -> None:
        """Show the selected mode's controls, its plans listing the selected split."""
        domain = self.mode == "domain"
        self._choices.children = (self.model_choice, self.split_choice,
                                  self.domain_plan_choice if domain else self.plan_choice)
        self._controls.children = (self._domain_controls if domain else self._patch_controls,)
        split = self.split_choice.value
        if domain and self._domain_split != split:
            self._update_domain_plans()
        if not domain and self._patch_split != split:
            self._update_plans()

    @contextmanager
    def _quietly(self):
        """Change several widgets without each change redrawing the picture."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def _changed(self, what: str) -> None:
        if self._busy:
            return
        with self._quietly():
            if what in ("mode", "split"):
                self._show_mode()
            elif what == "plan":
                self._set_sample_range()
                self.sample_choice.value = 0
            elif what == "domain_plan":
                self._update_starts()
            elif what == "start":
                self._update_steps()
            elif what == "steps":
                self._update_time_range()
        self.refresh()

    def _set_sample_range(self) -> None:
        counts = self.dataset().summary.samples_per_plan
        count = counts[self.plan_choice.value] if counts and self.plan_choice.value is not None else 0
        self.sample_choice.max = max(count - 1, 0)
        self.sample_choice.disabled = count <= 1

    def step(self, offset: int) -> None:
        """Move ``offset`` samples through the split, across plans, wrapping around at its ends."""
        total = len(self.dataset())
        if total:
            self.select(item=(self.item + offset) % total)

    def _check_model_and_split(self, model: str | None, split: str | None) -> None:
        """ValueError, before anything changes, for a model or split this run does not have."""
        if model is not None and model not in self.entries:
            raise ValueError(f"unknown model {model!r}; this run has {list(self.entries)}")
        if split is not None and split not in self.split_names:
            raise ValueError(f"unknown split {split!r}; this run has {self.split_names}")

    def _select_mode(self, mode: str, model: str | None, split: str | None) -> None:
        self.mode_choice.value = mode
        if model is not None:
            self.model_choice.value = model
        if split is not None:
            self.split_choice.value = split
        self._show_mode()

    def select(self, *, model: str | None = None, split: str | None = None, plan: int | str | None = None,
               sample: int | None = None, item: int | None = None) -> SampleView | None:
        """Show patches, changed from code: ``model`` key, ``split`` name, ``plan`` (index or ``project/plan``)
        and ``sample`` within it, or ``item`` (the sample's number in the split). Returns the new view."""
        self._check_model_and_split(model, split)
        with self._quietly():
            self._select_mode("patches", model, split)
            summary = self.dataset().summary
            if item is not None:
                if not 0 <= item < summary.samples:
                    raise IndexError(f"sample {item} is outside split {summary.name!r} ({summary.samples} samples)")
                offsets = self._plan_offsets()
                plan = max(i for i, start in enumerate(offsets) if start <= item and summary.samples_per_plan[i])
                sample = item - offsets[plan]
            if plan is not None:
                if isinstance(plan, str):
                    if plan not in summary.plans:
                        raise ValueError(f"unknown plan {plan!r} in split {summary.name!r}; it has {summary.plans}")
                    plan = summary.plans.index(plan)
                self.plan_choice.value = plan
                self._set_sample_range()
            if sample is not None:
                self.sample_choice.value = sample
        self.refresh()
        return self.current_view

    def select_domain(self, *, model: str | None = None, split: str | None = None, plan: int | str | None = None,
                      start_s: float | None = None, steps: int | None = None,
                      step: int | None = None) -> DomainFrame | None:
        """Show a whole plan, changed from code: ``model`` key, ``split`` name, ``plan`` (index in the split or
        ``project/plan``), ``start_s`` (a stored output time, s), ``steps`` (of the models' lead time,
        :attr:`delta_t_s`) and ``step``, the step shown (0 the start). Returns the frame shown.

        An unknown model, split or plan raises ValueError, as :meth:`select` does. A start or a number of
        steps the plan cannot hold, or a step outside the rollout, is shown in the app's error box (and None
        returned); the previous choice stays selected, so the app stays usable.
        """
        self._check_model_and_split(model, split)
        if plan is not None:
            split_name = split or self.split_choice.value
            names = [self.plan_name(path) for path in self.split_files[split_name]]
            if isinstance(plan, str):
                if plan not in names:
                    raise ValueError(f"unknown plan {plan!r} in split {split_name!r}; it has {names}")
                plan = names.index(plan)
            if not 0 <= plan < len(names):
                raise ValueError(f"plan {plan} is outside split {split_name!r} ({len(names)} plans)")
        problem = None
        with self._quietly():
            self._select_mode("domain", model, split)
            if plan is not None:
                self.domain_plan_choice.value = plan
                self._update_starts()
            if start_s is not None or steps is not None:
                problem = self._choose_start_and_steps(start_s, steps)
            if step is not None and problem is None:
                if 0 <= step <= self.steps_choice.value:
                    self.time_choice.value = step
                else:
                    problem = (f"step {step} is outside the rollout: 0 (the start) to {self.steps_choice.value}; "
                               "choose more steps or an earlier step")
        if problem is not None:
            self._show_error(problem)
            return None
        self.refresh()
        return self.current_frame

    def _choose_start_and_steps(self, start_s: float | None, steps: int | None) -> str | None:
        """Select ``start_s`` and ``steps`` when the plan holds them; otherwise what is wrong, in words."""
        path = self.domain_plan
        if path is None:
            return f"split {self.split_choice.value!r} has no plans"
        try:
            simulation = self.simulation(path)
            start = float(start_s) if start_s is not None else self.start_choice.value
            if start is None:
                start = 0.0  # the plan is too short: check_choice says so
            fitting = max_steps(simulation, start, self.delta_t_s)
            wanted = steps if steps is not None else min(self.steps_choice.value, max(fitting, 1))
            check_choice(simulation, start_s=start, steps=wanted, delta_t_s=self.delta_t_s, name=self.plan_name(path))
        except SHOWN_ERRORS as error:
            return str(error)
        start = min(_values(self.start_choice), key=lambda t: abs(t - start))  # the stored output time
        self.start_choice.value = start
        self.steps_choice.max = fitting
        self.steps_choice.value = wanted
        self.steps_choice.disabled = fitting <= 1
        self._update_time_range()
        return None

    # -- drawing ----------------------------------------------------------------------------------------------

    def _show_error(self, message: str) -> None:
        self.current_view = self.current_rollout = self.current_frame = None
        self.error.value = _error_html(message)
        self.rae_label.value = "<b>RAE —</b>"
        self.picture.value = b""
        self.details.value = ""
        self.time_label.value = ""

    def refresh(self) -> None:
        """Draw the selection of the mode shown (errors are shown, not raised)."""
        if self._busy:
            return
        if self.mode == "domain":
            self._refresh_domain()
        else:
            self._refresh_patches()

    def _refresh_patches(self) -> None:
        self.current_view = self.current_rollout = self.current_frame = None
        try:
            dataset = self.dataset()
            if len(dataset) == 0:
                raise ViewerError(f"split {dataset.name!r} has no samples")
            key = self.model_choice.value
            view = view_sample(self.model(key), dataset, self.item, name=key, spec=self.spec, device=self.device)
        except (CheckpointError, ViewerError, OSError, ValueError) as error:
            self._show_error(str(error))
            return
        self.current_view = view
        self.error.value = ""
        self.picture.value = figure_png(sample_figure(view))
        self.rae_label.value = f"<b>{html.escape(format_rae(view.rae, view.small_denominator))}</b>"
        info = view.info
        mae = abs(view.error).mean()
        self.details.value = html.escape(
            f"{view.split}[{view.item}] of {len(dataset)} samples · {info['plan']} · n = {info['time_s'] / 60:g} min "
            f"→ {info['next_time_s'] / 60:g} min · patch origin cell ({info['row']}, {info['col']}) · MAE {mae:.4f} m")

    def _refresh_domain(self) -> None:
        self.current_view = self.current_rollout = self.current_frame = None
        if self.start_choice.value is not None and self._kept_rollout() is None:
            self.details.value = html.escape(f"predicting {self.steps_choice.value} step(s) of the whole plan …")
        try:
            rollout = self.domain_rollout()
            frame = rollout.frame(self.time_choice.value)
            picture = figure_png(domain_figure(rollout, frame.step))
        except SHOWN_ERRORS as error:
            self._show_error(str(error))
            return
        self.current_rollout, self.current_frame = rollout, frame
        self.error.value = ""
        self.picture.value = picture
        self.time_label.value = html.escape(f"t = {frame.time_s / 60:g} min")
        rae = format_domain_rae(frame.rae, frame.small_denominator, step=frame.step, start_s=rollout.start_s)
        self.rae_label.value = f"<b>{html.escape(rae)}</b>"
        mae = float(np.nanmean(np.abs(frame.difference))) if np.isfinite(frame.difference).any() else 0.0
        self.details.value = html.escape(
            f"{self.split_choice.value} · {rollout.plan} · start {rollout.start_s / 60:g} min · step {frame.step} of "
            f"{rollout.steps} ({self.delta_t_s / 60:g} min each) → t = {frame.time_s / 60:g} min · MAE {mae:.4f} m · "
            f"{closure_text(frame.closure, tolerance_m=rollout.tolerance_m)}")

    def save_png(self, path: str | Path) -> Path:
        """Save the picture shown now (a patch or a whole-domain step) as a PNG (atomically)."""
        if self.current_view is None and self.current_frame is None:
            raise ViewerError("nothing is shown to save (see the viewer's error)")
        data = self.picture.value  # the shown picture, drawn by sample_figure or domain_figure
        return atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def show(run_dir: str | Path, **options):
    """The viewer of ``run_dir`` to display in a notebook, or, when the run folder cannot be viewed, a
    panel saying why (so a served page explains itself rather than failing blank)."""
    try:
        return PredictionViewer(run_dir, **options)
    except ViewerError as error:
        panel = widgets.HTML(_error_html(str(error)))
        panel.add_class("floodlib-error")
        return panel
