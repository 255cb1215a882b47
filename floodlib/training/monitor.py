"""Training monitoring: the no-change baseline, loss histories and a convergence analysis as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from floodlib.data.batches import batches_of


def no_change_loss(dataset, *, batch_size: int = 512) -> float:
    """L1 loss of predicting zero depth change on ``dataset``: mean |depth change| over all cells, m."""
    loader = batches_of(dataset, batch_size=batch_size)
    total, count = 0.0, 0
    for batch in loader:
        total += float(batch.depth_change.double().abs().sum())
        count += batch.depth_change.numel()
    if count == 0:
        raise ValueError(f"split {getattr(dataset, 'name', '?')!r} is empty: no baseline loss to compute")
    return total / count


@dataclass
class ConvergenceReport:
    """What the loss curves say, for a notebook to show and a stage summary to keep.

    Attributes
    ----------
    epochs_run : epochs completed.
    best_epoch : epoch (from 1) with the lowest validation loss.
    best_val_loss, baseline_val_loss : m; ``skill`` = 1 - best / baseline (> 0 beats the no-change baseline).
    stopped_early : early stopping ended the run before ``max_epochs``.
    val_still_falling : the validation loss fell over the last ``window`` epochs by more than 1 % of its value.
    gap_trend_per_epoch : slope of (val - train) over the last ``window`` epochs, m/epoch; > 0 suggests overfitting.
    overfitting : the gap is widening while validation loss no longer improves.
    """

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    baseline_val_loss: float
    skill: float
    beats_baseline: bool
    stopped_early: bool
    val_still_falling: bool
    gap_trend_per_epoch: float
    overfitting: bool
    window: int

    def to_dict(self) -> dict:
        return asdict(self)


def _slope(values: np.ndarray) -> float:
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


def analyse_convergence(train_loss, val_loss, *, baseline_val_loss: float, max_epochs: int,
                        window: int = 10) -> ConvergenceReport:
    """Convergence and overfitting indicators from per-epoch train and validation losses."""
    train = np.asarray(train_loss, dtype=np.float64)
    val = np.asarray(val_loss, dtype=np.float64)
    if len(val) == 0:
        raise ValueError("no epochs recorded")
    best = int(np.argmin(val))
    recent = slice(max(0, len(val) - window), len(val))
    val_slope = _slope(val[recent])
    gap_slope = _slope(val[recent] - train[recent])
    falling = val_slope * min(window, len(val)) < -0.01 * abs(val[recent]).mean()
    return ConvergenceReport(
        epochs_run=len(val),
        best_epoch=best + 1,
        best_val_loss=float(val[best]),
        baseline_val_loss=float(baseline_val_loss),
        skill=float(1 - val[best] / baseline_val_loss) if baseline_val_loss > 0 else float("nan"),
        beats_baseline=bool(val[best] < baseline_val_loss),
        stopped_early=len(val) < max_epochs,
        val_still_falling=bool(falling),
        gap_trend_per_epoch=gap_slope,
        overfitting=bool(gap_slope > 0 and not falling and best < len(val) - 1),
        window=window,
    )
