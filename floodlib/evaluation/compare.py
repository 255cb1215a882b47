"""Runtime, size and accuracy side by side: each model's inference latency (CPU, and GPU when there is one),
parameters and training time per epoch beside its RAE on the test split."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from floodlib.data.dataset import PatchDataset
from floodlib.evaluation.report import EvaluationError
from floodlib.runs import RunModel


def inference_latency(model: torch.nn.Module, terrain: torch.Tensor, depths: torch.Tensor, *,
                      device: str | torch.device = "cpu", batch_size: int = 1, repeats: int = 10,
                      warmup: int = 2) -> float:
    """Median seconds per sample of a forward pass on ``batch_size`` copies of one sample."""
    device = torch.device(device)
    model = model.to(device).eval()
    terrain = terrain.expand(batch_size, *terrain.shape[1:]).contiguous().to(device)
    depths = depths.expand(batch_size, *depths.shape[1:]).contiguous().to(device)
    times = []
    with torch.inference_mode():
        for step in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(terrain, depths)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return float(np.median(times)) / batch_size


def compare_models(models: Sequence[RunModel], table: pd.DataFrame, dataset: PatchDataset, *,
                   repeats: int = 10, batch_size: int = 32, devices: Sequence[str] | None = None) -> pd.DataFrame:
    """Parameters, MB on disk, inference time per sample (batch of 1 and batched; CPU, and CUDA when
    present), training time per epoch and accuracy on ``dataset``'s split, one row per model."""
    if len(dataset) == 0:
        raise EvaluationError(f"split {dataset.name!r} has no samples to time the models on")
    devices = list(devices) if devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sample = dataset[0]
    terrain, depths = sample.terrain[None], sample.depths[None]
    rows = []
    for entry in models:
        row = {"model": entry.key, "stage": entry.stage, "arch": entry.arch, "parameters": entry.parameters,
               "size_mb": entry.path.stat().st_size / 1e6}
        for device in ("cpu", "cuda"):
            if device in devices:
                row[f"latency_{device}_ms"] = 1e3 * inference_latency(entry.model, terrain, depths, device=device,
                                                                      repeats=repeats)
                row[f"batched_{device}_ms_per_sample"] = 1e3 * inference_latency(
                    entry.model, terrain, depths, device=device, batch_size=batch_size, repeats=max(2, repeats // 3))
            else:
                row[f"latency_{device}_ms"] = row[f"batched_{device}_ms_per_sample"] = float("nan")
        entry.model.to("cpu")
        row["seconds_per_epoch"] = entry.seconds_per_epoch
        row["train_samples"] = entry.train_samples
        figures = table.loc[(entry.key, dataset.name)]
        row["median_test_rae"] = float(figures["median_rae"])
        row["pooled_test_rae"] = float(figures["pooled_rae"])
        rows.append(row)
    return pd.DataFrame(rows)


def measured_on(run_dir, stages: Sequence[str] = ("A", "B", "C")) -> str:
    """Where the comparison's times were measured, one line each: training per epoch by each of ``stages``
    that has completed (the machine its summary records), inference here and now."""
    from floodlib.environment import describe, environment
    from floodlib.runs import RunError, read_summary

    lines = []
    for stage in stages:
        try:
            recorded = read_summary(run_dir, stage).environment
        except RunError:
            continue
        lines.append(f"training, stage {stage}: " + (describe(recorded) if recorded else
                                                       "not recorded (the stage ran before floodlib recorded it)"))
    lines.append(f"inference, stage D: {describe(environment())}")
    return "Times measured on\n" + "\n".join(f"  {line}" for line in lines)
