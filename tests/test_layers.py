"""The library's layers and its import graph, as pyproject.toml's import-linter contracts state them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
CONTRACTS = 4


def lint(package_parent: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", str(config)], cwd=package_parent, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"})


def test_the_library_keeps_its_layers():
    result = lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout


@pytest.fixture
def library_copy(tmp_path) -> Path:
    shutil.copytree(ROOT / "floodlib", tmp_path / "floodlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize("module, line, contract", [
    # a model module reaching up into the run folder: a lower layer importing a higher one
    ("models/base.py", "from floodlib.runs import open_run", "layers, lowest last"),
    # the viewer using the pipeline's stages instead of floodlib.runs
    ("viewer/app.py", "from floodlib.pipeline import stages", "layers, lowest last"),
    # a shared block importing the registry that imports it: a cycle inside models
    ("models/layers.py", "from floodlib.models.registry import register_model", "no import cycles"),
    # checkpoints needing Lightning to load a model
    ("models/checkpoints.py", "import lightning", "loading a model needs no Lightning"),
    # evaluation importing the runner
    ("evaluation/report.py", "from floodlib.pipeline.runner import run_pipeline", "never imports the pipeline runner"),
])
def test_an_import_across_the_layers_fails_the_check(library_copy, module, line, contract):
    _append(library_copy / "floodlib" / module, line)
    result = lint(library_copy, library_copy / "pyproject.toml")
    assert result.returncode == 1, result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken, result.stdout  # (an upward import also closes a cycle between packages)


def test_loading_a_model_imports_neither_lightning_nor_the_pipeline(tmp_path):
    from floodlib.models import create_model, save_model

    path = save_model(create_model("Arch_02", layers=3, channels=4), tmp_path / "model.pth")
    code = ("import sys; from floodlib.models import load_model; model = load_model(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "or m.startswith(('floodlib.pipeline', 'floodlib.training')))); print(model.config['arch'])")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                            check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "Arch_02"]


def test_the_viewer_imports_neither_the_pipeline_nor_training():
    code = ("import sys, floodlib.viewer; print(sorted(m for m in sys.modules if m.startswith(('floodlib.pipeline', "
            "'floodlib.training', 'lightning', 'pytorch_lightning', 'optuna', 'papermill'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"
