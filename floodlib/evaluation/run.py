"""Evaluation of a run folder: its trained models on every split, saved metrics, the headline and the
runtime / size / accuracy comparison (what ``notebooks/D_evaluate.ipynb`` reports)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from floodlib.data.dataset import TEST_PROJECTS_SPLIT, PatchDataset
from floodlib.data.store import atomic_write
from floodlib.evaluation.figures import SampleView, prediction_page, view_sample
from floodlib.evaluation.metrics import MetricSpec, evaluate_dataset, resolve_device, summarise
from floodlib.runs import RunError, RunModel, StageDSummary, run_models  # noqa: F401 (RunModel, run_models: part of this API)

#: The reference's published median per-sample RAE (Arch_05 on its own HEC-RAS data).
REFERENCE_MEDIAN_RAE = 0.108
REFERENCE_NOTE = ("the reference's published median per-sample RAE, Arch_05 on its own HEC-RAS data; the data "
                  "differ, so this is context, not a like-for-like comparison")
#: What the held-out splits test, for headlines.
SPLIT_DESCRIPTIONS = {
    "big_test": "plans held out of the training projects: terrain like the training terrain",
    TEST_PROJECTS_SPLIT: "whole projects held out of training: terrain never seen",
}


#: Raised when a run folder cannot be evaluated: a stage's models are missing or a checkpoint is unusable.
EvaluationError = RunError


def evaluate_models(models: Sequence[RunModel], datasets: dict[str, PatchDataset], *, spec: MetricSpec = MetricSpec(),
                    batch_size: int = 64, device: str | torch.device = "auto", log=print) -> pd.DataFrame:
    """Per-sample metrics of every model on every split: one row per (model, split, sample).

    Splits are unions of plans and a plan's samples do not depend on the split, so each model predicts
    every plan once; each split's rows are then taken from those, in the split's own sample order.
    """
    if not datasets:
        raise ValueError("no splits to evaluate")
    first = next(iter(datasets.values()))
    files = list(dict.fromkeys(f for d in datasets.values() for f in d.files))
    union = PatchDataset(files, spec=first.spec, name="all plans", memory_map=first.memory_map)
    frames = []
    for entry in models:
        if entry.model is None:
            raise ValueError(f"{entry.key}: model not loaded (run_models(load=True))")
        start = time.perf_counter()
        rows = evaluate_dataset(entry.model, union, spec=spec, batch_size=batch_size, device=device)
        if log:
            log(f"{entry.key}: {len(rows)} samples of {len(files)} plans in {time.perf_counter() - start:.1f} s")
        by_file = {file: part for file, part in rows.groupby("file", sort=False)}
        for split, dataset in datasets.items():
            parts = [by_file[str(f)] for f in dataset.files if str(f) in by_file]
            part = pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0].copy()
            part["sample"] = np.arange(len(part))
            part.insert(0, "split", split)
            part.insert(0, "arch", entry.arch)
            part.insert(0, "stage", entry.stage)
            part.insert(0, "model", entry.key)
            frames.append(part)
    return pd.concat(frames, ignore_index=True)


def summary_table(samples: pd.DataFrame, spec: MetricSpec = MetricSpec()) -> pd.DataFrame:
    """Figures per model and split (:func:`~floodlib.evaluation.metrics.summarise`), indexed (model, split)."""
    rows = []
    for (model, split), part in samples.groupby(["model", "split"], sort=False):
        rows.append({"model": model, "stage": part["stage"].iloc[0], "arch": part["arch"].iloc[0], "split": split,
                     **summarise(part, spec)})
    return pd.DataFrame(rows).set_index(["model", "split"])


def save_metrics(stage_dir: str | Path, samples: pd.DataFrame, table: pd.DataFrame) -> list[Path]:
    """Write ``metrics/<stage>/<model>/<split>.csv`` (per sample) and ``metrics/summary.csv``, atomically."""
    stage_dir = Path(stage_dir)
    written = []
    for (model, split), part in samples.groupby(["model", "split"], sort=False):
        path = stage_dir / "metrics" / model / f"{split}.csv"
        written.append(atomic_write(path, lambda temporary, part=part: part.drop(columns=["file"]).to_csv(temporary, index=False)))
    written.append(atomic_write(stage_dir / "metrics" / "summary.csv", lambda temporary: table.to_csv(temporary)))
    return written


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV, atomically."""
    return atomic_write(path, lambda temporary: table.to_csv(temporary))


def report_summary(result: dict, table: pd.DataFrame, comparison: pd.DataFrame | None = None, *,
                   headlines: dict[str, dict] | None = None) -> StageDSummary:
    """Stage D's summary: the headline (of the test split), the headline of every reported split by name
    (``headlines``: the test split's and, when projects are held out, ``test_projects``'), the table per model
    and split, the comparison (as JSON-ready records: a missing figure such as GPU latency without a GPU is
    null)."""
    return StageDSummary(headline=result, headlines=headlines or {result["split"]: result},
                         table=json.loads(table.reset_index().to_json(orient="records")),
                         comparison=None if comparison is None else json.loads(comparison.to_json(orient="records")))


def read_sample_metrics(stage_dir: str | Path, model: str, split: str) -> pd.DataFrame:
    """The per-sample metrics :func:`save_metrics` wrote for ``model`` (``<stage>/<name>``) on ``split``."""
    path = Path(stage_dir) / "metrics" / model / f"{split}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics of {model} on {split}; run stage D first")
    return pd.read_csv(path)


def reported_splits(splits, test_split: str = "big_test") -> list[str]:
    """The held-out splits stage D gives a headline and boxplots of all models: ``test_split`` (plans held out
    of training) and, when the run holds whole projects out (``SplitSpec.test_projects``), ``test_projects``
    (terrain never seen). ``splits``: the run's split names (or its datasets by name)."""
    names = list(splits)
    if test_split not in names:
        raise EvaluationError(f"test split {test_split!r} is not among the evaluated splits {names}")
    return [test_split] + ([TEST_PROJECTS_SPLIT] if TEST_PROJECTS_SPLIT in names and test_split != TEST_PROJECTS_SPLIT
                           else [])


def headline(table: pd.DataFrame, *, stage: str = "C", split: str = "big_test") -> dict:
    """The best ``stage`` model by median per-sample RAE on ``split``, whether every one beats the no-change
    baseline (pooled RAE < 1), what the split tests, and the reference's published figure beside it."""
    rows = table.xs(split, level="split")
    rows = rows[rows["stage"] == stage]
    if rows.empty:
        raise EvaluationError(f"no stage {stage} model was evaluated on split {split!r}")
    # Every sample of a split may barely change (no median): the pooled RAE ranks the models then.
    best = rows["median_rae"].idxmin() if rows["median_rae"].notna().any() else rows["pooled_rae"].idxmin()
    return {
        "stage": stage,
        "split": split,
        "tests": SPLIT_DESCRIPTIONS.get(split, ""),
        "best_model": best,
        "best_median_rae": float(rows.loc[best, "median_rae"]),
        "best_pooled_rae": float(rows.loc[best, "pooled_rae"]),
        "pooled_rae": {model: float(value) for model, value in rows["pooled_rae"].items()},
        "all_beat_baseline": bool((rows["pooled_rae"] < 1).all()),
        "reference_median_rae": REFERENCE_MEDIAN_RAE,
        "reference_note": REFERENCE_NOTE,
    }


def headline_text(result: dict) -> str:
    stage = result.get("stage", "C")
    beat = f"every stage {stage} model beats" if result["all_beat_baseline"] else f"NOT every stage {stage} model beats"
    pooled = ", ".join(f"{model} {value:.3f}" for model, value in result["pooled_rae"].items())
    tests = f" ({result['tests']})" if result.get("tests") else ""
    return (f"{result['split']}{tests}: best model {result['best_model']}, median per-sample RAE "
            f"{result['best_median_rae']:.3f} (pooled {result['best_pooled_rae']:.3f}) — reference "
            f"{result['reference_median_rae']:.3f} ({result['reference_note']}).\n"
            f"Pooled RAE: {pooled}; {beat} the no-change baseline (RAE 1).")


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


def choose_samples(samples: pd.DataFrame, *, count: int, seed: int = 0) -> list[int]:
    """``count`` random sample numbers of one model's split rows, preferring samples that change
    (a meaningful RAE denominator), sorted."""
    changing = samples.loc[~samples["small_denominator"].astype(bool), "sample"].to_numpy()
    pool = changing if len(changing) >= count else samples["sample"].to_numpy()
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool, size=min(count, len(pool)), replace=False))


def prediction_pages(entry: RunModel, dataset: PatchDataset, items: Sequence[int], *, per_page: int = 4,
                     spec: MetricSpec = MetricSpec(), device: str | torch.device = "cpu") -> list:
    """Figures of ``entry``'s predictions for samples ``items`` of ``dataset``, ``per_page`` rows each."""
    views: list[SampleView] = [view_sample(entry.model, dataset, item, name=entry.key, spec=spec, device=device)
                               for item in items]
    pages = [views[i:i + per_page] for i in range(0, len(views), per_page)]
    return [prediction_page(page, title=f"{entry.key} on {dataset.name}: page {number} of {len(pages)}")
            for number, page in enumerate(pages, 1)]


__all__ = ["EvaluationError", "REFERENCE_MEDIAN_RAE", "RunModel", "SPLIT_DESCRIPTIONS", "choose_samples",
           "compare_models", "evaluate_models", "headline", "headline_text", "inference_latency",
           "prediction_pages", "read_sample_metrics", "report_summary", "reported_splits", "resolve_device",
           "run_models", "save_metrics", "save_table", "summary_table"]
