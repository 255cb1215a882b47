"""Data-parallel training with Lightning's DDP: two real processes on CPU (gloo), started by torchrun.

Two ranks with half the batch each see, together, exactly the batches of one process, and DDP averages
their gradients — the mean of the two halves' mean losses is the whole batch's mean — so the run follows
the single-process run with the same global batch up to the order of floating-point sums (relative 1e-4
over four epochs). Only rank 0 writes files; a run continued from its checkpoint under DDP ends where an
uninterrupted DDP run does; started from one plain process, fit starts the other rank itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from floodlib.training import read_checkpoint
from floodlib.training.launch import split_description, split_from_description

JOB = Path(__file__).parent / "training_job.py"
EPOCHS = 4


def _run(root: Path, epochs: int, *, devices: int = 1, keep: bool = False, torchrun: bool = True) -> str:
    command = [str(JOB), str(root), str(epochs), "--devices", str(devices), *(["--keep"] if keep else [])]
    if devices > 1 and torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
                   *command]
    else:
        command = [sys.executable, *command]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def _losses(root: Path) -> dict:
    return torch.load(root / "stage" / "losses" / "Arch_02" / "losses.pt", weights_only=True)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / "stage")) for p in (root / "stage").rglob("*") if p.is_file())


def test_a_split_sent_to_another_rank_keeps_exactly_its_samples(tmp_path):
    """The job a self-started rank rebuilds its splits from: a subset stays that subset, sample for sample."""
    sys.path.insert(0, str(JOB.parent))
    from training_job import datasets

    train, _ = datasets(tmp_path)
    part = train.subset([7, 2, 11, 0], "four")
    rebuilt = split_from_description(json.loads(json.dumps(split_description(part, tmp_path))))
    assert len(rebuilt) == 4 and rebuilt.name == "four"
    np.testing.assert_array_equal(rebuilt.index, part.index)
    for i in range(4):
        for a, b in zip(rebuilt[i], part[i]):
            assert torch.equal(a, b)


def test_two_process_ddp_matches_one_process_and_writes_once(tmp_path):
    single = tmp_path / "single"
    _run(single, EPOCHS)
    ddp = tmp_path / "ddp"
    output = _run(ddp, EPOCHS, devices=2)

    a, b = _losses(single), _losses(ddp)
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-4, err_msg=key)
    np.testing.assert_array_equal(b["lr"].numpy(), a["lr"].numpy())
    assert float(b["val_loss"][-1]) < float(b["baseline_val_loss"])  # it learned

    summary = json.loads((ddp / "stage" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["settings"]["world_size"] == 2 and summary["settings"]["strategy"] == "DDPStrategy"
    assert summary["train_samples"] == json.loads(
        (single / "stage" / "models" / "Arch_02" / "summary.json").read_text())["train_samples"]
    # The same files as one process (nothing per rank), each written once: one epoch line per epoch.
    assert _files(ddp) == _files(single) == ["losses/Arch_02/losses.pt", "models/Arch_02/model.pth",
                                             "models/Arch_02/summary.json"]
    assert sum(line.startswith("Arch_02 epoch ") for line in output.splitlines()) == EPOCHS
    weights_a = read_checkpoint(single / "stage" / "models" / "Arch_02" / "model.pth")["state_dict"]
    weights_b = read_checkpoint(ddp / "stage" / "models" / "Arch_02" / "model.pth")["state_dict"]
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-3, atol=1e-5)


def test_ddp_run_continues_from_its_checkpoint(tmp_path):
    whole = tmp_path / "whole"
    _run(whole, EPOCHS, devices=2)
    parts = tmp_path / "parts"
    _run(parts, 2, devices=2, keep=True)
    assert (parts / "stage" / "checkpoints" / "Arch_02" / "last.ckpt").exists()
    _run(parts, EPOCHS, devices=2)
    summary = json.loads((parts / "stage" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 2
    a, b = _losses(whole), _losses(parts)
    for key in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-6, err_msg=key)


def test_ddp_started_from_one_process_matches_torchrun(tmp_path):
    """A plain ``python`` process (or a notebook's kernel) asking for two devices: fit starts the second rank
    itself, and the run is the one torchrun gives."""
    launched = tmp_path / "torchrun"
    _run(launched, 2, devices=2)
    own = tmp_path / "own"
    output = _run(own, 2, devices=2, torchrun=False)
    a, b = _losses(launched), _losses(own)
    for key in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-6, err_msg=key)
    assert json.loads((own / "stage" / "models" / "Arch_02" / "summary.json").read_text())["settings"]["world_size"] == 2
    assert _files(own) == _files(launched)
    assert sum(line.startswith("Arch_02 epoch ") for line in output.splitlines()) == 2


def test_a_stage_notebook_trains_on_two_processes_from_its_kernel(tiny_run, tmp_path):
    """The pipeline's use: `devices: 2, strategy: ddp` in a stage section. Inside the Jupyter kernel that
    papermill runs, fit starts the second rank itself; the notebook (rank 0) alone writes the stage."""
    import yaml

    from floodlib.pipeline.runner import run_pipeline

    run = tmp_path / "run"
    run.mkdir()
    (run / "data").symlink_to(tiny_run / "data", target_is_directory=True)
    profile = yaml.safe_load((tiny_run / "params.yaml").read_text())
    profile["A"].update({"models": ["Arch_02"], "epochs": 2, "per_model": {}, "devices": 2, "strategy": "ddp"})
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(profile))
    run_pipeline(tmp_path / "ddp.yaml", run_dir=run, stages=["A"])
    summary = json.loads((run / "A" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["settings"]["world_size"] == 2 and summary["analysis"]["epochs_run"] == 2
    assert [row["name"] for row in json.loads((run / "A" / "summary.json").read_text())["ranking"]] == ["Arch_02"]
    assert sorted(str(p.relative_to(run / "A")) for p in (run / "A").rglob("*") if p.is_file()) == [
        "A_train.html", "A_train.ipynb", "figures/learning_curves.png", "figures/preview_small_train.png",
        "figures/preview_small_val.png", "losses/Arch_02/losses.pt",
        "models/Arch_02/model.pth", "models/Arch_02/summary.json", "summary.json"]
