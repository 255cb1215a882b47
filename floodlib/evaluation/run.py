"""A run folder's models on every split (one row per model, split and sample) and pages of their predictions."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from floodlib.data.dataset import PatchDataset
from floodlib.evaluation.figures import SampleView, prediction_page, view_sample
from floodlib.evaluation.metrics import MetricSpec, evaluate_dataset
from floodlib.runs import RunModel


#: What tells a sample apart across splits cut from the same plans with the same sample definition.
SAMPLE_KEY = ["file", "frame", "row", "col", "transform"]


def _sample_keys(dataset: PatchDataset) -> pd.DataFrame:
    index = dataset.index
    return pd.DataFrame({"file": [str(dataset.files[p]) for p in index["plan"]], "frame": index["frame"],
                         "row": index["row"], "col": index["col"], "transform": index["transform"]})


def evaluate_models(models: Sequence[RunModel], datasets: dict[str, PatchDataset], *, spec: MetricSpec = MetricSpec(),
                    batch_size: int = 64, device: str | torch.device = "auto", log=print,
                    splits_of: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Per-sample metrics of every model on every split: one row per (model, split, sample).

    Each split's rows are its own samples in its own order — a subset (``PatchDataset.subset``) gives only
    the samples it holds, and a split cut with another sample definition its own samples. Splits of one
    sample definition share plans, so each model predicts every sample of their plans once and each split
    takes its rows from those. ``splits_of`` maps a model's key to the only splits it is evaluated on (its
    other splits' plans are not predicted); a model it does not name gets every split.
    """
    if not datasets:
        raise ValueError("no splits to evaluate")
    if not any(len(dataset) for dataset in datasets.values()):
        raise ValueError("no samples to evaluate in any split: " + "; ".join(
            f"{name}: {dataset.summary.empty_reason()}" for name, dataset in datasets.items()))
    splits_of = dict(splits_of or {})
    for key, names in splits_of.items():
        unknown = [name for name in names if name not in datasets]
        if unknown or not names:
            raise ValueError(f"splits_of[{key!r}] = {list(names)}: expected some of the evaluated splits {list(datasets)}")
    frames, unions = [], {}
    for entry in models:
        if entry.model is None:
            raise ValueError(f"{entry.key}: model not loaded (run_models(load=True))")
        chosen = [name for name in splits_of.get(entry.key, datasets)]
        groups: list[list[str]] = []  # the chosen splits by sample definition
        for name in chosen:
            group = next((g for g in groups if datasets[g[0]].spec == datasets[name].spec), None)
            group.append(name) if group is not None else groups.append([name])
        rows_of: dict[str, pd.DataFrame] = {}
        for group in groups:
            if tuple(group) not in unions:  # indexed once per set of splits
                first = datasets[group[0]]
                files = list(dict.fromkeys(f for name in group for f in datasets[name].files))
                unions[tuple(group)] = PatchDataset(files, spec=first.spec, name="plans of " + ", ".join(group),
                                                    memory_map=first.memory_map)
            union = unions[tuple(group)]
            start = time.perf_counter()
            rows = evaluate_dataset(entry.model, union, spec=spec, batch_size=batch_size, device=device)
            if log:
                log(f"{entry.key}: {len(rows)} samples of {len(union.files)} plans ({', '.join(group)}) "
                    f"in {time.perf_counter() - start:.1f} s")
            for name in group:
                rows_of[name] = rows
        for split in chosen:
            dataset = datasets[split]
            # the split's own samples, in its order (left merge keeps the left frame's order)
            rows = rows_of[split]
            part = _sample_keys(dataset).merge(rows, on=SAMPLE_KEY, how="left", validate="many_to_one",
                                               indicator=True)
            if (part.pop("_merge") != "both").any():
                raise ValueError(f"split {split!r}: some of its samples are not among those its sample definition "
                                 "cuts from its plans")
            part = part[list(rows.columns)]
            part["sample"] = np.arange(len(part))
            part.insert(0, "split", split)
            part.insert(0, "arch", entry.arch)
            part.insert(0, "stage", entry.stage)
            part.insert(0, "model", entry.key)
            frames.append(part)
    return pd.concat(frames, ignore_index=True)


CONTEXT_SPLITS = ("held_out", "all")


def context_splits_of(models: Sequence[RunModel], reported: Sequence[str], mode: str = "held_out") -> dict[str, list[str]]:
    """Stage D's ``splits_of`` for :func:`evaluate_models`: the models of stages other than C (there for
    context) on the ``reported`` held-out splits alone (``mode`` "held_out"), or on every split ("all")."""
    if mode not in CONTEXT_SPLITS:
        raise ValueError(f"context_splits={mode!r}: expected one of {CONTEXT_SPLITS}")
    return {entry.key: list(reported) for entry in models if entry.stage != "C"} if mode == "held_out" else {}


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
