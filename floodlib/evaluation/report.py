"""What stage D reports: the figures per model and split (saved as CSV), the headline of each held-out split,
and the stage's typed summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from floodlib.data.dataset import TEST_PROJECTS_SPLIT
from floodlib.data.store import atomic_write
from floodlib.evaluation.metrics import MetricSpec, summarise
from floodlib.runs import RunError, StageDSummary


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


def summary_table(samples: pd.DataFrame, spec: MetricSpec = MetricSpec()) -> pd.DataFrame:
    """Figures per model and split (:func:`~floodlib.evaluation.metrics.summarise`), indexed (model, split)."""
    if samples.empty:
        raise ValueError("no per-sample metrics to summarise (the splits evaluated hold no samples)")
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
                   headlines: dict[str, dict] | None = None, rollouts: list[dict] | None = None) -> StageDSummary:
    """Stage D's summary: the headline (of the test split), the headline of every reported split by name
    (``headlines``: the test split's and, when projects are held out, ``test_projects``'), the table per model
    and split, the comparison (as JSON-ready records: a missing figure such as GPU latency without a GPU is
    null) and the full-domain ``rollouts`` of the C models when there are any (closest to the solver first, as
    :func:`~floodlib.evaluation.rollout.rollout_comparison` orders them; the first is also ``rollout``)."""
    return StageDSummary(headline=result, headlines=headlines or {result["split"]: result},
                         table=json.loads(table.reset_index().to_json(orient="records")),
                         comparison=None if comparison is None else json.loads(comparison.to_json(orient="records")),
                         rollout=rollouts[0] if rollouts else None, rollouts=rollouts or None)


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
    pooled = ", ".join(f"{model} {value:.3f}" for model, value in sorted(result["pooled_rae"].items(),
                                                                            key=lambda item: item[1]))
    tests = f" ({result['tests']})" if result.get("tests") else ""
    return (f"{result['split']}{tests}: best by median per-sample RAE {result['best_model']}, "
            f"{result['best_median_rae']:.3f} (its pooled RAE {result['best_pooled_rae']:.3f}).\n"
            f"Pooled RAE, lowest first: {pooled}; {beat} the no-change baseline (RAE 1) pooled.\n"
            f"Context: the reference's median per-sample RAE {result['reference_median_rae']:.3f} "
            f"({result['reference_note']}).")
