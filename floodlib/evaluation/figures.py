"""Static figures of the evaluation: one sample's prediction, pages of them, RAE boxplots, the model comparison.

The prediction viewer draws with the same functions, so a headless run saves exactly the pictures the
viewer shows. Every function returns a matplotlib Figure and shows nothing.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from floodlib.data.preview import TERRAIN_COLOURS
from floodlib.data.samples import TRANSFORMS
from floodlib.evaluation.metrics import MetricSpec, resolve_device, sample_metrics

#: One colour per architecture in every figure (learning curves, boxplots, comparison, rollouts), whichever
#: stage trained it; the stage is told by the label (and by hatching or marker where stages share a plot).
ARCHITECTURE_COLOURS = {"Arch_02": "#1f77b4", "Arch_03": "#ff7f0e", "Arch_04": "#2ca02c", "Arch_04_tuned": "#17becf",
                        "Arch_05": "#d62728", "Arch_07": "#9467bd", "Arch_08": "#8c564b", "Arch_09": "#e377c2"}


def model_colour(name: str) -> str:
    """The colour of a model named ``<stage>/<name>`` or ``<name>`` (its architecture's; grey when unknown)."""
    return ARCHITECTURE_COLOURS.get(str(name).rsplit("/", 1)[-1], "#7f7f7f")


def whole_number_ticks(axis) -> None:
    """Ticks of an epoch, step or pass axis at whole numbers only (matplotlib's default puts some at 2.5)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def scale_length_m(width_m: float) -> float:
    """A round length (1, 2 or 5 times a power of ten, m) of at most a quarter of ``width_m``: a scale bar's."""
    if not width_m > 0:
        raise ValueError(f"width_m={width_m!r}: expected a map width > 0 m")
    target = width_m / 4
    power = 10.0 ** math.floor(math.log10(target))
    return max(step * power for step in (1, 2, 5) if step * power <= target * (1 + 1e-9))


def scale_bar(ax, *, cell_size_m: float, cells_across: int) -> None:
    """Draw a scale bar in the lower left of a map drawn one pixel per cell (``imshow`` of a grid of
    ``cells_across`` columns of ``cell_size_m``): a round length, labelled in m or km, on a white box."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = scale_length_m(cell_size_m * cells_across)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    bar = AnchoredSizeBar(ax.transData, length / cell_size_m, label, "lower left", pad=0.3, borderpad=0.4, sep=2,
                          frameon=True, size_vertical=max(cells_across / 150, 0.3),
                          fontproperties=FontProperties(size=7))
    bar.patch.set_alpha(0.75)
    bar.patch.set_linewidth(0)
    ax.add_artist(bar)


def plain_log_ticks(axis) -> None:
    """A log axis labelled 0.2, 0.5, 1, 2, 5 ... instead of 10^-1 and 10^0 alone: values a reader can read off."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


PANELS = ("terrain (m)", "depth at n (m)", "true change (m; blue: water gained)", "predicted change (m)",
          "error: predicted − true (m; purple: too much water)")
#: The colour map of every error map (prediction pages, rollout maps): purple where the surrogate holds too much
#: water, orange where too little, white where it is right.
ERROR_COLOURS = "PuOr"


@dataclass
class SampleView:
    """One sample with a model's prediction, ready to draw.

    ``terrain`` (T, T), m; ``depth_now``, ``truth``, ``prediction`` (P, P), m; ``rae`` and
    ``small_denominator`` as in :func:`~floodlib.evaluation.metrics.sample_metrics`; ``info`` where the
    sample comes from (:meth:`~floodlib.data.dataset.PatchDataset.sample_info`); ``cell_size_m`` its plan's
    cells, for the scale bar (None: none drawn).
    """

    terrain: np.ndarray
    depth_now: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    rae: float
    small_denominator: bool
    model: str = ""
    split: str = ""
    item: int = 0
    info: dict = field(default_factory=dict)
    cell_size_m: float | None = None

    @property
    def error(self) -> np.ndarray:
        return self.prediction - self.truth

    def label(self) -> str:
        where = ""
        if self.info:
            where = (f" · {self.info['plan']} · n = {self.info['time_s'] / 60:g} min · patch origin cell "
                     f"({self.info['row']}, {self.info['col']})")
            if self.info.get("transform"):  # as the sample is drawn: flipped as the reference's snapshot rule says
                where += f" · shown with {TRANSFORMS[int(self.info['transform'])]}"
        return f"{self.model} · {self.split}[{self.item}]{where}"


def format_rae(rae: float, small_denominator: bool) -> str:
    """How a sample's RAE is shown: four significant digits, flagged when its denominator is too small."""
    text = f"RAE {rae:.4g}"
    return text + " (small denominator: the patch barely changes)" if small_denominator else text


def view_sample(model: torch.nn.Module, dataset, item: int, *, name: str = "", spec: MetricSpec = MetricSpec(),
                device: str | torch.device = "cpu") -> SampleView:
    """Predict sample ``item`` of ``dataset`` with ``model`` and score it."""
    if not 0 <= item < len(dataset):
        raise IndexError(f"sample {item} is outside split {dataset.name!r} ({len(dataset)} samples)")
    sample = dataset[item]
    device = resolve_device(device)
    model = model.to(device).eval()
    with torch.inference_mode():
        prediction = model(sample.terrain[None].to(device), sample.depths[None].to(device))[0, 0].float().cpu().numpy()
    truth, depth_now = sample.depth_change[0].numpy(), sample.depths[1].numpy()
    metrics = sample_metrics(prediction[None], truth[None], depth_now[None], spec=spec)
    return SampleView(terrain=sample.terrain[0].numpy(), depth_now=depth_now, truth=truth, prediction=prediction,
                      rae=float(metrics["rae"][0]), small_denominator=bool(metrics["small_denominator"][0]),
                      model=name, split=dataset.name, item=int(item), info=dataset.sample_info(item),
                      cell_size_m=float(dataset.cell_sizes_m[int(dataset.index[item]["plan"])]))


def _limits(views: Sequence[SampleView]) -> tuple[float, float]:
    change = max(max(float(np.abs(v.truth).max()), float(np.abs(v.prediction).max()), float(np.abs(v.error).max()))
                 for v in views)
    depth = max(float(v.depth_now.max()) for v in views)
    return change or 1e-3, depth or 1e-3


def _draw_row(fig, axes, view: SampleView, *, change_limit: float, depth_limit: float, titles: bool) -> None:
    styles = (
        (view.terrain, dict(cmap=TERRAIN_COLOURS)),
        (view.depth_now, dict(cmap="Blues", vmin=0, vmax=depth_limit)),
        (view.truth, dict(cmap="RdBu", vmin=-change_limit, vmax=change_limit)),
        (view.prediction, dict(cmap="RdBu", vmin=-change_limit, vmax=change_limit)),
        (view.error, dict(cmap=ERROR_COLOURS, vmin=-change_limit, vmax=change_limit)),
    )
    for ax, (image, style), title in zip(axes, styles, PANELS):
        shown = ax.imshow(image, interpolation="nearest", **style)
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(title, fontsize=10)
    if view.cell_size_m is not None:  # on the depth at n: every panel shows the same patch
        scale_bar(axes[1], cell_size_m=view.cell_size_m, cells_across=view.depth_now.shape[1])


def sample_figure(view: SampleView):
    """One sample: terrain, depth at n, true and predicted change and their error, with the sample's RAE.

    Change, prediction and error share one symmetric colour scale, so their colours compare directly.
    """
    import matplotlib.pyplot as plt

    change_limit, depth_limit = _limits([view])
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), constrained_layout=True)
    _draw_row(fig, axes, view, change_limit=change_limit, depth_limit=depth_limit, titles=True)
    fig.suptitle(f"{view.label()}\n{format_rae(view.rae, view.small_denominator)}", fontsize=11)
    return fig


def prediction_page(views: Sequence[SampleView], *, title: str = ""):
    """Several samples, one row each (one page of the prediction figures). Each row has its own colour scales,
    shared by its true change, predicted change and error: a sample whose water moves centimetres is not
    drawn blank beside one whose moves metres."""
    import matplotlib.pyplot as plt

    if not views:
        raise ValueError("a prediction page needs at least one sample")
    fig, axes = plt.subplots(len(views), 5, figsize=(17, 3.3 * len(views)), squeeze=False, constrained_layout=True)
    for row, view in enumerate(views):
        change_limit, depth_limit = _limits([view])
        _draw_row(fig, axes[row], view, change_limit=change_limit, depth_limit=depth_limit, titles=row == 0)
        info = view.info
        shown_as = "" if not info.get("transform") else f", {TRANSFORMS[int(info['transform'])]}"
        axes[row, 0].set_ylabel(f"[{view.item}] {info.get('plan', '')}\nn = {info.get('time_s', 0) / 60:g} min{shown_as}\n"
                                f"{format_rae(view.rae, view.small_denominator)}", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def figure_png(fig, *, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (and closed, so a long session does not keep every figure alive)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


#: At most this many splits side by side in one row of :func:`plot_rae_boxplots`; more go into more rows.
BOXPLOT_SPLITS_PER_ROW = 5


def plot_rae_boxplots(samples: pd.DataFrame, *, splits: Sequence[str] | None = None, title: str = ""):
    """Per-sample RAE per split (x) and model (colour), log scale, the no-change baseline at 1.

    ``samples``: the per-sample rows of :func:`~floodlib.evaluation.run.evaluate_models`. Samples with a
    too-small denominator are left out of the boxes; their count per model and split is in the legend's
    note below the plot and in the summary table. More than ``BOXPLOT_SPLITS_PER_ROW`` splits are drawn in
    rows of as many splits each (the last may hold fewer) on one shared RAE axis, so that the figure keeps a
    page's proportions.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    order = list(splits) if splits is not None else list(dict.fromkeys(samples["split"]))
    held = list(dict.fromkeys(samples["split"]))
    unknown = [split for split in order if split not in held]
    if unknown or not order:
        raise ValueError(f"plot_rae_boxplots: split(s) {unknown or order}: the samples hold no such split; they hold "
                         f"{held}")
    shown = samples[~samples["small_denominator"].astype(bool) & samples["split"].isin(order)]
    models = list(dict.fromkeys(samples["model"]))
    palette = {model: model_colour(model) for model in models}
    rows = max(1, math.ceil(len(order) / BOXPLOT_SPLITS_PER_ROW))
    per_row = math.ceil(len(order) / rows)
    chunks = [order[k:k + per_row] for k in range(0, len(order), per_row)]
    width = max(8, 1.3 * per_row * max(1, len(models)) ** 0.5)
    fig, axes = plt.subplots(rows, 1, figsize=(width, 5 if rows == 1 else 3.6 * rows), sharey=True, squeeze=False,
                             constrained_layout=True)
    for index, (ax, chunk) in enumerate(zip(axes[:, 0], chunks)):
        if len(order) == 1:  # one split: a box per model, named on the axis
            sns.boxplot(data=shown, x="model", y="rae", hue="model", order=models, hue_order=models, ax=ax,
                        palette=palette, log_scale=True, fliersize=2, linewidth=0.8, legend=False)
            xlabel = order[0]
        else:
            part = shown[shown["split"].isin(chunk)]
            sns.boxplot(data=part, x="split", y="rae", hue="model", order=chunk, hue_order=models, ax=ax,
                        palette=palette, log_scale=True, fliersize=2, linewidth=0.8, legend=index == 0)
            xlabel = ""
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="no-change baseline")
        ax.set_ylabel("per-sample RAE against no change\n(log; below 1 is better)" if rows > 1 else
                      "per-sample RAE against no change (log; below 1 is better)")
        plain_log_ticks(ax.yaxis)
        for label in ax.get_xticklabels():
            label.set_rotation(25 if len(order) == 1 else 10)
            label.set_horizontalalignment("right" if len(order) == 1 else "center")
        if index == 0:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_xlabel(xlabel)
    dropped = int(samples.loc[samples["split"].isin(order), "small_denominator"].astype(bool).sum())
    if dropped:
        note = f"({dropped} sample-model pairs with a too-small denominator are not drawn; counted in the table)"
        last = axes[-1, 0]
        last.set_xlabel(f"{last.get_xlabel()}\n{note}".strip(), fontsize=9)
    fig.suptitle(title or "RAE against the no-change baseline (1 = no better than predicting no change)")
    return fig


#: Axis labels of the comparison's accuracy columns.
ACCURACY_LABELS = {"median_test_rae": "median per-sample RAE on the test split (1 = no change)",
                   "pooled_test_rae": "pooled RAE on the test split (1 = no change)"}


def plot_comparison(comparison: pd.DataFrame, *, accuracy: str = "median_test_rae"):
    """Runtime, size and accuracy side by side: CPU latency against test RAE (marker area ~ MB on disk),
    and training time per epoch. ``comparison``: :func:`~floodlib.evaluation.compare.compare_models`."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5), constrained_layout=True)
    size = comparison["size_mb"].to_numpy(dtype=float)
    area = 40 + 400 * size / max(size.max(), 1e-9)
    colours = [model_colour(model) for model in comparison["model"]]
    stages = comparison["model"].astype(str).str.split("/").str[0]
    from matplotlib.lines import Line2D

    markers = {"A": "s", "B": "D", "C": "o"}
    for stage, marker in markers.items():
        chosen = (stages == stage).to_numpy()
        if chosen.any():
            left.scatter(comparison["latency_cpu_ms"][chosen], comparison[accuracy][chosen], s=area[chosen],
                         c=[c for c, keep in zip(colours, chosen) if keep], marker=marker, alpha=0.7,
                         edgecolors="black")
    # Told apart by colour (architecture) and marker (stage), not by labels, which overlap where models agree.
    shown_stages = [stage for stage in markers if (stages == stage).any()]
    stage_legend = left.legend(
        [Line2D([], [], marker=markers[stage], linestyle="", markerfacecolor="lightgrey", markeredgecolor="black",
                markersize=8) for stage in shown_stages], [f"stage {stage}" for stage in shown_stages],
        title="marker: stage", title_fontsize=8, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    left.add_artist(stage_legend)
    architectures = list(dict.fromkeys(comparison["model"].astype(str).str.rsplit("/", n=1).str[-1]))
    left.legend([Line2D([], [], marker="s", linestyle="", markerfacecolor=model_colour(arch), markeredgecolor="black",
                        markersize=8) for arch in architectures], architectures, title="colour: architecture",
                title_fontsize=8, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 0.62))
    left.set_xscale("log")
    plain_log_ticks(left.xaxis)
    left.set_xlabel("CPU latency per sample, batch of 1 (ms, log)")
    left.set_ylabel(ACCURACY_LABELS.get(accuracy, accuracy.replace("_", " ")))
    left.axhline(1.0, color="black", linestyle="--", linewidth=1)
    left.set_title("accuracy against runtime (marker area ~ MB on disk)")
    bars = comparison["model"].astype(str)
    if "train_samples" in comparison:  # epochs of different splits: say how many samples each one holds
        bars = [f"{model} ({int(n):,} samples)" if pd.notna(n) else model
                for model, n in zip(bars, comparison["train_samples"])]
    right.barh(bars, comparison["seconds_per_epoch"], color=colours)
    right.invert_yaxis()
    right.set_xlabel("training time per epoch, s (a pass over its training and validation splits)")
    right.set_title("training cost")
    return fig
