"""Accuracy of depth-change predictions: RAE against the no-change baseline, MAE, RMSE and wet/dry agreement.

Per sample (one 32×32 patch), with Δh the true depth change and Δĥ the predicted one (m):

- ``rae`` = Σ|Δĥ − Δh| / Σ|Δh| over the patch's cells. The no-change baseline (Δĥ = 0) scores exactly 1;
  a model that beats it scores below 1.
- ``small_denominator``: the patch barely changes (mean |Δh| below :attr:`MetricSpec.min_mean_change_m`),
  so its RAE divides by almost nothing and is not meaningful. Such samples are counted and kept in the
  pooled figures; the per-sample distribution (median, quartiles) is taken over the others.
- wet/dry agreement at a threshold d: a cell is wet when the next depth h(n) + Δh exceeds d; the
  contingency counts (hits, misses, false alarms) of the predicted against the true wet cells give the
  critical success index CSI = hits / (hits + misses + false alarms).

Per split, the pooled RAE = Σ over all samples and cells of |Δĥ − Δh| / Σ |Δh| — robust to the
near-zero denominators that make a mean of per-sample RAEs explode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from floodlib.data.batches import batches_of


@dataclass(frozen=True)
class MetricSpec:
    """How samples are scored.

    Attributes
    ----------
    min_mean_change_m : a sample whose mean |true depth change| over its cells is below this (m) has a
        denominator too small for its RAE to mean anything; it is counted as such, never dropped.
    wet_thresholds_m : depths (m) above which a cell counts as wet, for the CSI of the next depth.
    """

    min_mean_change_m: float = 1e-3
    wet_thresholds_m: tuple[float, ...] = field(default=(0.05, 0.3))

    def __post_init__(self):
        if not np.isfinite(self.min_mean_change_m) or self.min_mean_change_m < 0:
            raise ValueError(f"MetricSpec.min_mean_change_m={self.min_mean_change_m!r} must be a non-negative number (m)")
        thresholds = tuple(float(t) for t in self.wet_thresholds_m)
        if not thresholds or any(not np.isfinite(t) or t <= 0 for t in thresholds):
            raise ValueError(f"MetricSpec.wet_thresholds_m={self.wet_thresholds_m!r} must be positive depths (m)")
        object.__setattr__(self, "wet_thresholds_m", thresholds)

    def csi_columns(self) -> list[str]:
        return [f"csi_{_threshold_key(t)}" for t in self.wet_thresholds_m]


def _threshold_key(threshold: float) -> str:
    return f"{threshold:g}m"


def sample_metrics(prediction, truth, depth_now, *, spec: MetricSpec = MetricSpec()) -> dict[str, np.ndarray]:
    """Per-sample error sums and wet/dry counts.

    Parameters
    ----------
    prediction, truth : (N, P, P) or (N, 1, P, P) predicted and true depth change, m.
    depth_now : (N, P, P) depth at n, m (for the wet/dry comparison of the next depth).

    Returns a dict of (N,) arrays: ``rae``, ``small_denominator``, ``abs_error_sum_m``, ``abs_change_sum_m``,
    ``squared_error_sum_m2``, ``cells`` and, per wet threshold d,
    ``hits_<d>m``, ``misses_<d>m``, ``false_alarms_<d>m``.
    """
    prediction, truth, depth_now = (np.asarray(a, dtype=np.float64) for a in (prediction, truth, depth_now))
    n, cells_per_sample = truth.shape[0], int(np.prod(truth.shape[1:]))
    prediction, truth, depth_now = (a.reshape(n, cells_per_sample) for a in (prediction, truth, depth_now))
    if prediction.shape != truth.shape or depth_now.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape}, truth {truth.shape} and depth_now {depth_now.shape} "
                         "must hold the same samples and cells")
    error = prediction - truth
    abs_error = np.abs(error).sum(axis=1)
    abs_change = np.abs(truth).sum(axis=1)
    cells = np.full(n, cells_per_sample, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rae = np.where(abs_change > 0, abs_error / abs_change, np.where(abs_error > 0, np.inf, 0.0))
    result = {
        "rae": rae,
        "small_denominator": abs_change < spec.min_mean_change_m * cells,
        "abs_error_sum_m": abs_error,
        "abs_change_sum_m": abs_change,
        "squared_error_sum_m2": (error ** 2).sum(axis=1),
        "cells": cells,
    }
    true_next, predicted_next = depth_now + truth, depth_now + prediction
    for threshold in spec.wet_thresholds_m:
        wet, predicted_wet = true_next > threshold, predicted_next > threshold
        key = _threshold_key(threshold)
        result[f"hits_{key}"] = (wet & predicted_wet).sum(axis=1)
        result[f"misses_{key}"] = (wet & ~predicted_wet).sum(axis=1)
        result[f"false_alarms_{key}"] = (~wet & predicted_wet).sum(axis=1)
    return result


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: this torch {torch.__version__} sees no CUDA device; use 'auto' or 'cpu'")
    return device


def predict_dataset(model: torch.nn.Module, dataset, *, batch_size: int = 64,
                    device: str | torch.device = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's depth-change predictions over ``dataset``, in its order.

    Returns ``(prediction, truth, depth_now)``, each (N, P, P) float32, m.
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    loader = batches_of(dataset, batch_size=batch_size, device=device)  # on a GPU, cut there
    predictions, truths, depths = [], [], []
    with torch.inference_mode():
        for batch in loader:
            output = model(batch.terrain.to(device, non_blocking=True), batch.depths.to(device, non_blocking=True))
            if not torch.isfinite(output).all():
                name = getattr(model, "arch", type(model).__name__)
                raise ValueError(f"model {name} predicted NaN or infinite depth changes on {len(predictions) * batch_size}"
                                 f"-{len(predictions) * batch_size + len(output) - 1} of the samples; they cannot be "
                                 "scored (its weights or inputs are broken)")
            predictions.append(output[:, 0].float().cpu().numpy())
            truths.append(batch.depth_change[:, 0].cpu().numpy())
            depths.append(batch.depths[:, 1].cpu().numpy())
    if not predictions:
        empty = np.zeros((0, 0, 0), dtype=np.float32)
        return empty, empty, empty
    return np.concatenate(predictions), np.concatenate(truths), np.concatenate(depths)


def evaluate_dataset(model: torch.nn.Module, dataset, *, spec: MetricSpec = MetricSpec(), batch_size: int = 64,
                     device: str | torch.device = "auto") -> pd.DataFrame:
    """One row per sample of ``dataset`` (a :class:`~floodlib.data.dataset.PatchDataset`): where it comes
    from (``plan``, ``frame``, ``row``, ``col``, ``transform``) and its metrics (see :func:`sample_metrics`)."""
    prediction, truth, depth_now = predict_dataset(model, dataset, batch_size=batch_size, device=device)
    metrics = sample_metrics(prediction, truth, depth_now, spec=spec)
    index = dataset.index
    frame = pd.DataFrame({
        "sample": np.arange(len(index)),
        "file": [str(dataset.files[p]) for p in index["plan"]],
        "plan": [dataset.summary.plans[p] for p in index["plan"]],
        "frame": index["frame"], "row": index["row"], "col": index["col"], "transform": index["transform"],
    })
    for name, values in metrics.items():
        frame[name] = values
    return frame


def summarise(samples: pd.DataFrame, spec: MetricSpec = MetricSpec()) -> dict[str, float]:
    """A split's figures from its per-sample rows (:func:`evaluate_dataset`).

    ``pooled_rae`` over every sample; ``median_rae``, ``q1_rae``, ``q3_rae`` and ``mean_rae`` over the samples
    whose denominator is meaningful; ``small_denominator`` counts the others; ``mae_m`` and ``rmse_m`` of the
    depth change per cell; ``baseline_mae_m`` of the no-change prediction; ``csi_<d>m`` pooled over cells.
    """
    meaningful = samples.loc[~samples["small_denominator"].astype(bool), "rae"].to_numpy(dtype=float)
    cells = samples["cells"].sum()
    abs_change = samples["abs_change_sum_m"].sum()

    def ratio(numerator, denominator):
        return float(numerator / denominator) if denominator > 0 else float("nan")

    result = {
        "samples": int(len(samples)),
        "small_denominator": int(samples["small_denominator"].astype(bool).sum()),
        "pooled_rae": ratio(samples["abs_error_sum_m"].sum(), abs_change),
        "median_rae": float(np.median(meaningful)) if len(meaningful) else float("nan"),
        "q1_rae": float(np.percentile(meaningful, 25)) if len(meaningful) else float("nan"),
        "q3_rae": float(np.percentile(meaningful, 75)) if len(meaningful) else float("nan"),
        "mean_rae": float(np.mean(meaningful)) if len(meaningful) else float("nan"),
        "mae_m": ratio(samples["abs_error_sum_m"].sum(), cells),
        "rmse_m": float(np.sqrt(ratio(samples["squared_error_sum_m2"].sum(), cells))),
        "baseline_mae_m": ratio(abs_change, cells),
    }
    for threshold in spec.wet_thresholds_m:
        key = _threshold_key(threshold)
        hits = samples[f"hits_{key}"].sum()
        result[f"csi_{key}"] = ratio(hits, hits + samples[f"misses_{key}"].sum() + samples[f"false_alarms_{key}"].sum())
    return result
