"""The trained models of a run folder: which each stage kept (its ``summary.json``), rebuilt from their
checkpoints and checked to hold the architecture their stage recorded."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from floodlib.models.checkpoints import load_model
from floodlib.runs.folder import PROFILE_FILE, SUMMARY_FILE, RunError, read_summary


@dataclass
class RunModel:
    """A trained model of a run folder, with what its stage recorded about it."""

    stage: str
    name: str
    arch: str
    path: Path
    parameters: int
    seconds_per_epoch: float
    train_samples: int
    model: torch.nn.Module | None = None

    @property
    def key(self) -> str:
        """``<stage>/<name>``: unique in a run (A and C both train e.g. Arch_05)."""
        return f"{self.stage}/{self.name}"

    def load(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Rebuild the model from its checkpoint, checked to hold the architecture its stage recorded
        (CheckpointError naming the file otherwise)."""
        self.model = load_model(self.path, expected_arch=self.arch, device=device)
        if not self.parameters:
            self.parameters = sum(p.numel() for p in self.model.parameters())
        return self.model


def _stage_rows(run_dir: Path, stage: str) -> list[dict]:
    """``name``, ``arch``, ``model_path`` (and what else the stage recorded) of each model a stage kept."""
    try:
        summary = read_summary(run_dir, stage)
    except FileNotFoundError:
        summary_path = run_dir / stage / SUMMARY_FILE
        raise RunError(
            f"{summary_path}: run folder {run_dir} has no models of stage {stage} (the stage has not completed); "
            f"run it first: python -m floodlib.pipeline {run_dir / PROFILE_FILE} --only {stage}") from None
    if stage == "B":
        return [{"name": "Arch_04_tuned", "arch": summary.tuned.arch, "model_path": summary.tuned.model_path}]
    return [row.model_dump() for row in summary.ranking]


def run_models(run_dir: str | Path, stages: Sequence[str] = ("C",), *, context: Sequence[str] = ("A", "B"),
               load: bool = True, device: str | torch.device = "cpu") -> list[RunModel]:
    """The trained models of ``stages`` (required) and of ``context`` stages (skipped with a warning when
    absent), each rebuilt from its checkpoint and checked to hold the architecture its stage recorded.

    Raises RunError when a required stage has no models, and CheckpointError naming the file when a
    checkpoint is missing, corrupted or of another architecture.
    """
    run_dir = Path(run_dir)
    if not (run_dir / PROFILE_FILE).exists():
        raise RunError(f"{run_dir}: not a floodlib run folder (no {PROFILE_FILE}); expected outputs/<run>/")
    models = []
    for stage in [*stages, *(s for s in context if s not in stages)]:
        try:
            rows = _stage_rows(run_dir, stage)
        except RunError as error:
            if stage in stages:
                raise
            warnings.warn(f"context models of stage {stage} skipped: {error}", stacklevel=2)
            continue
        for row in rows:
            path = run_dir / stage / row["model_path"]
            details = {}
            own = path.parent / SUMMARY_FILE
            if own.exists():
                try:
                    details = json.loads(own.read_text())
                except json.JSONDecodeError as error:
                    raise RunError(f"{own}: not valid JSON ({error}); expected the model's training summary") \
                        from None
            entry = RunModel(stage=stage, name=row["name"], arch=row["arch"], path=path,
                             parameters=int(row.get("parameters", details.get("parameters", 0))),
                             seconds_per_epoch=float(row.get("seconds_per_epoch", details.get("seconds_per_epoch", np.nan))),
                             train_samples=int(details.get("train_samples", 0)))
            if load:
                entry.load(device)
            models.append(entry)
    return models
