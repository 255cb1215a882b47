"""Data-parallel training with Lightning's DDP: two real processes on CPU (gloo), started by torchrun.

Two ranks with half the batch each see, together, exactly the batches of one process, and DDP averages
their gradients — the mean of the two halves' mean losses is the whole batch's mean — so the run follows
the single-process run with the same global batch up to the order of floating-point sums (relative 1e-4
over four epochs). Only rank 0 writes files; a run continued from its checkpoint under DDP ends where an
uninterrupted DDP run does; started from one plain process, fit starts the other rank itself — on this
machine, or, for two machines, through the server ``python -m floodlib.training.launch --serve`` that the
second machine runs (here a second process on this one, as a second machine would on a shared folder).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from floodlib.training import read_checkpoint
from floodlib.training.launch import split_description, split_from_description

JOB = Path(__file__).parent / "training_job.py"
EPOCHS = 4


def _environment(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)


def _run(root: Path, epochs: int, *, devices: int = 1, keep: bool = False, torchrun: bool = True,
         nodes: int = 1, check: bool = True, env: dict[str, str] | None = None, strategy: str = "ddp"):
    command = [str(JOB), str(root), str(epochs), "--devices", str(devices), "--num-nodes", str(nodes),
               "--strategy", strategy, *(["--keep"] if keep else [])]
    if devices > 1 and torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
                   *command]
    else:
        command = [sys.executable, *command]
    done = subprocess.run(command, env=env or _environment(), capture_output=True, text=True, timeout=600)
    if not check:
        return done
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def _serve(folder: Path, node_rank: int = 1, jobs: int = 1) -> subprocess.Popen:
    """The server a second machine runs: it starts that machine's ranks for each job under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "floodlib.training.launch", "--serve", str(folder),
                             "--node-rank", str(node_rank), "--jobs", str(jobs)],
                            env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ranks_of(job_folder: Path) -> list[int]:
    """Process ids of ranks running a job of ``job_folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"floodlib.training.rank" in argv and str(job_folder / "job.json").encode() in argv:
                found.append(int(entry.name))
    return found


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
    # A sample definition that differs by project travels too (JSON turns its tuples into lists).
    from dataclasses import replace

    from floodlib.data.dataset import PatchDataset

    spec = replace(train.spec, projects={"growing": {"patch_stride_cells": 16, "snapshot_times_s": (0, 1200)}})
    dense = PatchDataset(train.files, spec=spec, name="dense")
    assert len(dense) != len(train)
    rebuilt = split_from_description(json.loads(json.dumps(split_description(dense, tmp_path))))
    assert rebuilt.spec == dense.spec and rebuilt.spec.for_project("growing") == dense.spec.for_project("growing")
    np.testing.assert_array_equal(rebuilt.index, dense.index)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The runs the DDP tests compare with, made once: ``EPOCHS`` epochs in one process and under torchrun
    with two processes; each (its root folder, its output)."""
    root = tmp_path_factory.mktemp("ddp_reference")
    return {name: (root / name, _run(root / name, EPOCHS, devices=devices))
            for name, devices in (("single", 1), ("torchrun", 2))}


def test_two_process_ddp_matches_one_process_and_writes_once(reference_runs):
    single, _ = reference_runs["single"]
    ddp, output = reference_runs["torchrun"]

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
    # Both ranks destroy Lightning's process group before the interpreter is torn down: a group left open
    # there now and then aborted a rank after a successful training (SIGABRT from gloo's threads).
    assert sorted(re.findall(r"rank (\d+) at exit: process group (\w+)", output)) == [("0", "closed"), ("1", "closed")]
    weights_a = read_checkpoint(single / "stage" / "models" / "Arch_02" / "model.pth")["state_dict"]
    weights_b = read_checkpoint(ddp / "stage" / "models" / "Arch_02" / "model.pth")["state_dict"]
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-3, atol=1e-5)


def test_ddp_run_continues_from_its_checkpoint(reference_runs, tmp_path):
    whole, _ = reference_runs["torchrun"]
    parts = tmp_path / "parts"
    _run(parts, 2, devices=2, keep=True)
    assert (parts / "stage" / "checkpoints" / "Arch_02" / "last.ckpt").exists()
    _run(parts, EPOCHS, devices=2)
    summary = json.loads((parts / "stage" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 2
    a, b = _losses(whole), _losses(parts)
    for key in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-6, err_msg=key)


def test_ddp_started_from_one_process_matches_torchrun(reference_runs, tmp_path):
    """A plain ``python`` process (or a notebook's kernel) asking for two devices, with fit's default strategy:
    fit starts the second rank itself (rather than Lightning running the whole script again), and the run is
    the one torchrun gives."""
    launched, _ = reference_runs["torchrun"]
    own = tmp_path / "own"
    output = _run(own, EPOCHS, devices=2, torchrun=False, strategy="auto")
    a, b = _losses(launched), _losses(own)
    for key in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-6, err_msg=key)
    assert json.loads((own / "stage" / "models" / "Arch_02" / "summary.json").read_text())["settings"]["world_size"] == 2
    assert _files(own) == _files(launched)
    assert sum(line.startswith("Arch_02 epoch ") for line in output.splitlines()) == EPOCHS


def test_a_stage_notebook_trains_on_two_machines_of_two_processes_from_its_kernel(tiny_run, tmp_path, monkeypatch):
    """The pipeline's use: `devices: 2, num_nodes: 2, strategy: ddp` in a stage section. Inside the Jupyter
    kernel that papermill runs, fit starts this machine's second rank itself and the job of the second
    machine goes into the run folder, where that machine's server takes it up; the notebook (global rank 0)
    alone writes the stage."""
    import yaml

    from floodlib.pipeline.runner import run_pipeline

    run = tmp_path / "run"
    run.mkdir()
    (run / "data").symlink_to(tiny_run / "data", target_is_directory=True)
    profile = yaml.safe_load((tiny_run / "params.yaml").read_text())
    profile["A"].update({"models": ["Arch_02"], "epochs": 2, "per_model": {}, "devices": 2, "num_nodes": 2,
                         "strategy": "ddp"})
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(profile))
    server = _serve(run)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # the kernel's environment: this machine, as the others see it
    try:
        run_pipeline(tmp_path / "ddp.yaml", run_dir=run, stages=["A"])
    finally:
        if server.poll() is None:
            server.kill()
    assert server.wait(timeout=60) == 0 and "node 1: training Arch_02 (2 processes)" in server.stdout.read()
    summary = json.loads((run / "A" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["settings"]["world_size"] == 4 and summary["settings"]["num_nodes"] == 2
    assert summary["analysis"]["epochs_run"] == 2
    assert [row["name"] for row in json.loads((run / "A" / "summary.json").read_text())["ranking"]] == ["Arch_02"]
    assert sorted(str(p.relative_to(run / "A")) for p in (run / "A").rglob("*") if p.is_file()) == [
        "A_train.html", "A_train.ipynb", "figures/learning_curves.png", "figures/preview_small_train.png",
        "figures/preview_small_val.png", "kernel.log", "losses/Arch_02/losses.pt",
        "models/Arch_02/model.pth", "models/Arch_02/summary.json", "summary.json"]


def test_two_machines_one_process_each_match_one_process(reference_runs, tmp_path):
    """``num_nodes=2`` from a plain process: fit writes the job into its output folder and the second
    machine's server starts that machine's rank; the run is the one-process run with the same global batch."""
    single, _ = reference_runs["single"]
    server = _serve(tmp_path / "nodes")
    output = _run(tmp_path / "nodes" / "run", EPOCHS, nodes=2, env=_environment(MASTER_ADDR="127.0.0.1"))
    assert server.wait(timeout=120) == 0, server.stdout.read()
    log = server.stdout.read()
    assert "node 1: training Arch_02 (1 processes)" in log, log
    a, b = _losses(single), _losses(tmp_path / "nodes" / "run")
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-4, err_msg=key)
    summary = json.loads((tmp_path / "nodes" / "run" / "stage" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["settings"]["world_size"] == 2 and summary["settings"]["num_nodes"] == 2
    assert _files(tmp_path / "nodes" / "run") == _files(single)  # the job folder is gone
    assert sum(line.startswith("Arch_02 epoch ") for line in output.splitlines()) == EPOCHS


def test_the_server_refuses_a_missing_machine_number_or_folder(tmp_path):
    for arguments, message in ((["--serve", str(tmp_path)], "--serve needs --node-rank K"),
                               (["--serve", str(tmp_path), "--node-rank", "0"], "--serve needs --node-rank K"),
                               (["--serve", str(tmp_path / "absent"), "--node-rank", "1"], "absent: no such folder")):
        done = subprocess.run([sys.executable, "-m", "floodlib.training.launch", *arguments], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, (arguments, done.stderr)


def test_the_launcher_and_the_training_package_load_lightning_only_for_fit():
    """The server answers bad arguments at once: neither it nor ``import floodlib.training`` imports Lightning,
    whose import costs seconds; the package's names still resolve (and ``fit`` brings Lightning in)."""
    probe = ("import sys, floodlib.training as t, floodlib.training.launch\n"
             "print('lightning' in sys.modules, set(t.__all__) <= set(dir(t)))\n"
             "missing = [name for name in t.__all__ if getattr(t, name, None) is None]\n"
             "from floodlib.training import fit, load_model, NonFiniteLossError\n"
             "print('lightning' in sys.modules, fit.__module__, load_model.__module__, t.fit is fit, missing)\n"
             "try:\n    t.absent\nexcept AttributeError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.splitlines() == [
        "False True", "True floodlib.training.fitting floodlib.models.checkpoints True []",
        "module 'floodlib.training' has no attribute 'absent'"], done.stdout + done.stderr


def test_a_machine_that_never_takes_up_the_job_is_a_clear_error(tmp_path):
    done = _run(tmp_path, 2, nodes=2, check=False, env=_environment(MASTER_ADDR="127.0.0.1", FLOODLIB_NODE_WAIT_S="3"))
    assert done.returncode != 0
    assert "machine(s) [1] did not take up the training job" in done.stderr
    assert "python -m floodlib.training.launch --serve" in done.stderr and "--node-rank K" in done.stderr
    assert not (tmp_path / "stage" / "models").exists() and not (tmp_path / "stage" / "ddp-jobs").exists()


def test_a_rank_killed_on_the_other_machine_stops_rank_0_with_a_message(tmp_path):
    """Killed before it joins the process group (where rank 0 could not be interrupted) or while training
    (a collective breaks): rank 0 stops within seconds naming the rank, and the server reports it."""
    for when in ("before joining", "while training"):
        root = tmp_path / when.replace(" ", "_")
        server = _serve(root)
        main = subprocess.Popen([sys.executable, str(JOB), str(root / "run"), "400", "--num-nodes", "2"],
                                env=_environment(MASTER_ADDR="127.0.0.1"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        job = root / "run" / "stage" / "ddp-jobs" / "Arch_02"
        marker = job / ("node1.joined" if when == "before joining" else "node1-rank0.ready")
        deadline = time.monotonic() + 120
        while not (marker.exists() and _ranks_of(job)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if when == "while training":
            while "Arch_02 epoch 2/" not in main.stdout.readline() and time.monotonic() < deadline:
                pass
        for pid in _ranks_of(job):
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, error = main.communicate(timeout=120)
        assert main.returncode != 0 and time.monotonic() - killed < 30, when
        assert "rank 0 of machine 1 failed (killed by signal 9)" in error, (when, error[-2000:])
        assert server.wait(timeout=60) == 1 and "killed by signal 9" in server.stdout.read()
        assert not job.exists()
