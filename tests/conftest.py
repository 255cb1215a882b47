"""Fixtures shared by several test files: one tiny run of the whole pipeline (A -> D) per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder of the tiny profile, every stage executed by papermill in a real kernel."""
    from floodlib.pipeline.runner import run_pipeline

    return run_pipeline(TINY, outputs=tmp_path_factory.mktemp("outputs"))


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run's stage folders (its data linked) to damage or change freely."""
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "data").symlink_to(tiny_run / "data", target_is_directory=True)
    shutil.copy(tiny_run / "params.yaml", copy / "params.yaml")
    for stage in ("A", "B", "C"):
        shutil.copytree(tiny_run / stage, copy / stage, ignore=shutil.ignore_patterns("*.ipynb", "*.html", "trials"))
    return copy
