"""The prediction viewer: an ipywidgets app over a run folder.

Choose a model, a split, a plan and a sample (or step through the split) and see the terrain, the depth
at n, the true and predicted depth change and their error on shared colour scales, with the sample's
RAE. The picture is drawn by :func:`floodlib.evaluation.sample_figure`, the function headless runs save
PNGs with, so what the viewer shows and what a report saves are the same picture.

In JupyterLab::

    from floodlib.viewer import show
    show("../outputs/smoke")

As a page in the browser: ``python -m floodlib.viewer outputs/smoke`` (served by Voilà).
"""

from __future__ import annotations

import html
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets

from floodlib.data.dataset import PatchDataset, discover_plans, split_plans
from floodlib.data.store import atomic_write
from floodlib.evaluation.figures import SampleView, figure_png, format_rae, sample_figure, view_sample
from floodlib.evaluation.metrics import MetricSpec
from floodlib.models.checkpoints import CheckpointError
from floodlib.runs import RunError, RunModel, open_run, run_models, splits


class ViewerError(ValueError):
    """The run folder cannot be viewed (not a run, no trained models, no data)."""


def _error_html(message: str) -> str:
    return (f"<div style='color:#a40000;white-space:pre-wrap;font-family:monospace'>"
            f"{html.escape(message, quote=False)}</div>")


class PredictionViewer:
    """An interactive viewer of a run's predictions.

    Parameters
    ----------
    run_dir : the run folder (``outputs/<run>/``).
    stages : stages whose models must be there (a clear error otherwise); by default C's.
    context : stages whose models are offered too when present.
    spec : how the shown RAE is computed (the evaluation's :class:`MetricSpec`).
    device : where predictions run (``"auto"``: CUDA when present).

    ``viewer.widget`` is the app; displaying the viewer shows it. :meth:`select` changes the view from code.
    A model whose checkpoint cannot be used (corrupted, of another architecture) shows the error in the
    app instead of a picture; the other models stay usable.
    """

    def __init__(self, run_dir: str | Path, *, stages: Sequence[str] = ("C",), context: Sequence[str] = ("A", "B"),
                 spec: MetricSpec = MetricSpec(), device: str = "auto", split: str = "big_test"):
        self.run_dir = Path(run_dir)
        try:
            self.run = open_run(self.run_dir)
            self.entries: dict[str, RunModel] = {e.key: e for e in run_models(self.run_dir, stages, context=context,
                                                                              load=False)}
            self.split_names = list(split_plans(discover_plans(self.run.data_dir), self.run.split_spec()))
        except (RunError, FileNotFoundError, ValueError) as error:
            raise ViewerError(f"cannot view run folder {self.run_dir}: {error}") from None
        self.spec = spec
        self.device = device
        self._datasets: dict[str, PatchDataset] = {}
        self._busy = False
        self.current_view: SampleView | None = None

        self.model_choice = widgets.Dropdown(options=list(self.entries), description="model")
        names = self.split_names
        self.split_choice = widgets.Dropdown(options=names, value=split if split in names else names[0],
                                             description="split")
        self.plan_choice = widgets.Dropdown(description="plan")
        self.sample_choice = widgets.IntSlider(min=0, max=0, description="in plan", continuous_update=False)
        self.previous_button = widgets.Button(description="◀ previous", tooltip="previous sample of the split")
        self.next_button = widgets.Button(description="next ▶", tooltip="next sample of the split")
        self.picture = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="1500px"))
        self.rae_label = widgets.HTML()
        self.details = widgets.HTML()
        self.error = widgets.HTML()
        for widget, name in ((self.model_choice, "model"), (self.split_choice, "split"), (self.plan_choice, "plan"),
                             (self.sample_choice, "sample"), (self.previous_button, "previous"),
                             (self.next_button, "next"), (self.picture, "picture"), (self.rae_label, "rae"),
                             (self.details, "details"), (self.error, "error")):
            widget.add_class(f"floodlib-{name}")
        self.widget = widgets.VBox([
            widgets.HBox([self.model_choice, self.split_choice, self.plan_choice]),
            widgets.HBox([self.previous_button, self.sample_choice, self.next_button]),
            self.rae_label, self.error, self.picture, self.details,
        ])
        self.widget.add_class("floodlib-viewer")

        for widget, what in ((self.model_choice, "model"), (self.split_choice, "split"), (self.plan_choice, "plan"),
                             (self.sample_choice, "sample")):
            widget.observe(lambda change, what=what: self._changed(what), names="value")
        self.previous_button.on_click(lambda button: self.step(-1))
        self.next_button.on_click(lambda button: self.step(1))
        self._changed("split")

    # -- what is selected -------------------------------------------------------------------------------------

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

    # -- changes ----------------------------------------------------------------------------------------------

    def _update_plans(self) -> None:
        summary = self.dataset().summary
        self.plan_choice.options = [(f"{plan} ({count} samples)", index)
                                    for index, (plan, count) in enumerate(zip(summary.plans, summary.samples_per_plan))]
        self.plan_choice.value = next((i for i, c in enumerate(summary.samples_per_plan) if c), 0) \
            if summary.plans else None
        self._set_sample_range()
        self.sample_choice.value = 0

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
            if what == "split":
                self._update_plans()
            elif what == "plan":
                self._set_sample_range()
                self.sample_choice.value = 0
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

    def select(self, *, model: str | None = None, split: str | None = None, plan: int | str | None = None,
               sample: int | None = None, item: int | None = None) -> SampleView | None:
        """Change the view from code: ``model`` key, ``split`` name, ``plan`` (index or ``project/plan``) and
        ``sample`` within it, or ``item`` (the sample's number in the split). Returns the new view."""
        with self._quietly():
            if model is not None:
                if model not in self.entries:
                    raise ValueError(f"unknown model {model!r}; this run has {list(self.entries)}")
                self.model_choice.value = model
            if split is not None:
                if split not in self.split_names:
                    raise ValueError(f"unknown split {split!r}; this run has {self.split_names}")
                if split != self.split_choice.value:
                    self.split_choice.value = split
                    self._update_plans()
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

    def refresh(self) -> None:
        """Draw the selected sample with the selected model (errors are shown, not raised)."""
        if self._busy:
            return
        self.current_view = None
        try:
            dataset = self.dataset()
            if len(dataset) == 0:
                raise ViewerError(f"split {dataset.name!r} has no samples")
            key = self.model_choice.value
            view = view_sample(self.model(key), dataset, self.item, name=key, spec=self.spec, device=self.device)
        except (CheckpointError, ViewerError, OSError, ValueError) as error:
            self.error.value = _error_html(str(error))
            self.rae_label.value = "<b>RAE —</b>"
            self.picture.value = b""
            self.details.value = ""
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

    def save_png(self, path: str | Path) -> Path:
        """Save the picture shown now as a PNG (atomically)."""
        if self.current_view is None:
            raise ViewerError("nothing is shown to save (see the viewer's error)")
        data = self.picture.value  # the shown picture, drawn by sample_figure
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
