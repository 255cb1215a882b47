"""Data-parallel training started from one process, such as a notebook's kernel.

``fit(..., devices=4, strategy="ddp")`` needs one process per device. Under ``torchrun`` or SLURM those
processes exist already. Otherwise — a stage notebook, or a script run with plain ``python`` — floodlib
starts the other ranks itself: each runs the same ``fit`` call, rebuilt from a JSON job (the model from a
checkpoint of its initial weights, the splits from their plan files, sample definition and sample index),
with the environment Lightning reads for processes it did not create. (Lightning's own launcher re-runs
``sys.argv``, which in a Jupyter kernel is the kernel, not the training.)

On this machine the ranks are started directly. For ``num_nodes > 1`` the job is written into the fit's
output folder, which every machine must see (a shared file system, as clusters have), and each other
machine runs a server that starts its ranks for every job that appears there::

    python -m floodlib.training.launch --serve outputs/paper --node-rank 1     # on the second machine

``python -m floodlib.training.launch JOB.json`` is one rank (what the starters run).
"""

from __future__ import annotations

import _thread
import argparse
import atexit
import contextlib
import functools
import json
import shutil
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

#: Variables by which a launcher (torchrun, Lightning) tells a process its rank.
_LAUNCHED = ("LOCAL_RANK", "RANK")
_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")
#: The folder, inside a fit's output folder, that holds a job for other machines while it trains
#: (``<out_dir>/ddp-jobs/<name>/job.json``).
JOB_FOLDER = "ddp-jobs"
#: How long rank 0 waits for every other machine to take up a job (seconds; FLOODLIB_NODE_WAIT_S overrides).
NODE_WAIT_S = 600.0


def launched_externally() -> bool:
    """Whether a launcher started this process as one rank of several (torchrun, Lightning, SLURM tasks)."""
    if any(name in os.environ for name in _LAUNCHED):
        return True
    return "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


@functools.cache  # registered once per process
def destroy_process_group_at_exit() -> None:
    """Have this process destroy its process group when Python exits, if it still has one then.

    Lightning's DDP creates the group and never destroys it; under torchrun, SLURM and in the ranks floodlib
    starts, the process then ends with gloo's worker threads still holding work whose tensors are freed
    while the interpreter is being torn down, which now and then aborts the rank ("terminate called without
    an active exception", SIGABRT) after a training that succeeded. An exit handler runs while the
    interpreter is still whole. Registered once per process; a group destroyed earlier makes it a no-op.
    """
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def local_processes(*, strategy, devices, num_nodes: int, on_gpu: bool) -> int:
    """How many processes per machine floodlib must start for this ``fit`` call (0: none — one process, or
    a launcher already started them)."""
    if strategy != "ddp" or launched_externally():
        return 0
    if devices == "auto":
        devices = torch.cuda.device_count() if on_gpu else 1
    count = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 0
    if count <= 1 and num_nodes <= 1:
        return 0
    return max(count, 1)


def started_ddp_strategy():
    """Lightning's DDP for processes that already exist (started by :func:`local_ranks`): Lightning launches
    none, so it also runs inside a Jupyter kernel, where its script launcher refuses to start. Ranks are
    read from the variables floodlib sets, never from a scheduler's (a SLURM batch script's own variables
    describe the job, not these processes)."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    class StartedDDPStrategy(DDPStrategy):
        def _configure_launcher(self) -> None:
            self._launcher = None

    return StartedDDPStrategy(cluster_environment=LightningEnvironment())


def split_description(split, folder: Path) -> dict[str, Any]:
    """What rebuilds ``split`` in another process (:func:`split_from_description`): its plan files, sample
    definition and name, and its sample index saved as ``<name>.npy`` in ``folder`` — a subset's too."""
    index_path = folder / f"{len(list(folder.glob('*.npy')))}.npy"
    np.save(index_path, split.index, allow_pickle=False)
    return {"files": [str(Path(f).resolve()) for f in split.files], "spec": asdict(split.spec), "name": split.name,
            "memory_map": split.memory_map, "index": str(index_path.resolve())}


def split_from_description(description: dict[str, Any]):
    """The split :func:`split_description` described, with exactly its samples."""
    from floodlib.data.dataset import PatchDataset
    from floodlib.data.samples import SampleSpec

    spec = dict(description["spec"])
    spec["snapshot_times_s"] = tuple(spec["snapshot_times_s"])
    split = PatchDataset(description["files"], spec=SampleSpec(**spec), name=description["name"],
                         memory_map=description["memory_map"])
    return split.with_index(np.load(description["index"], allow_pickle=False), description["name"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _child_environment(shared: dict[str, str], **rank: str) -> dict[str, str]:
    """This process's environment for a rank floodlib starts: the rendezvous variables, without a scheduler's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    return {**env, **shared, **rank}


def _start_ranks(job: Path, shared: dict[str, str], node_rank: int, local_ranks_: range, logs: Path):
    workers = []
    for local_rank in local_ranks_:
        log = open(logs / f"node{node_rank}-rank{local_rank}.log", "w")
        workers.append((local_rank, log, subprocess.Popen(
            [sys.executable, "-m", "floodlib.training.rank", str(job)],
            env=_child_environment(shared, NODE_RANK=str(node_rank), LOCAL_RANK=str(local_rank)),
            stdout=log, stderr=subprocess.STDOUT)))
    return workers


def _rank_failure(folder: Path, node_rank: int, local_rank: int, code: int) -> str:
    """Which rank failed, how, and the end of its output."""
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    log = folder / f"node{node_rank}-rank{local_rank}.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.exists() else []
    return f"rank {local_rank} of machine {node_rank} failed ({how})" + ("".join(f"\n{line}" for line in tail)
                                                                         if tail else "")


@contextlib.contextmanager
def local_ranks(processes: int, *, model, train, val, settings: dict[str, Any], num_nodes: int = 1,
                job_folder: Path | None = None) -> Iterator[None]:
    """Start the other ranks of the same ``fit`` call and make this process global rank 0, for the duration:
    ranks 1..processes-1 on this machine, and, for ``num_nodes > 1``, a job in ``job_folder`` that
    :func:`serve` on each other machine takes up (this waits until every machine has).

    On leaving: the other ranks are waited for (and stopped if this rank failed), the process group is
    destroyed so that a later ``fit`` can form its own, the environment is restored and the job removed. A
    rank that fails, here or on another machine, interrupts this one (its output is in the raised message).
    """
    from floodlib.models.checkpoints import save_model

    with contextlib.ExitStack() as cleanup:
        if num_nodes > 1:
            if job_folder is None:
                raise ValueError("num_nodes > 1 needs a folder every machine sees for the job")
            folder = Path(job_folder)
            if folder.exists():
                shutil.rmtree(folder)  # a job left by a run that was killed: its ranks are gone too
            folder.mkdir(parents=True)
            cleanup.callback(_remove_job, folder)
            address = os.environ.get("MASTER_ADDR") or socket.gethostname()
        else:
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="floodlib-ddp-")))
            address = "127.0.0.1"
        save_model(model, folder / "initial.pth")
        shared = {"MASTER_ADDR": address, "MASTER_PORT": str(_free_port()),
                  "WORLD_SIZE": str(processes * num_nodes)}
        job = {"id": uuid.uuid4().hex, "model": str((folder / "initial.pth").resolve()),
               "train": split_description(train, folder), "val": split_description(val, folder),
               "fit": {**settings, "devices": processes}, "environment": shared, "processes": processes,
               "num_nodes": num_nodes}
        temporary = folder / "job.json.tmp"
        temporary.write_text(json.dumps(job))
        temporary.replace(folder / "job.json")  # a server never reads a half-written job
        saved = {name: os.environ.get(name) for name in _ENVIRONMENT}
        workers = _start_ranks(folder / "job.json", shared, 0, range(1, processes), folder)
        failed: list[str] = []
        done = threading.Event()

        def failures() -> list[str]:
            found = [_rank_failure(folder, 0, r, worker.returncode) for r, _, worker in workers
                     if worker.poll() not in (None, 0)]
            for marker in sorted(folder.glob("node*.failed")):
                found.append(marker.read_text(errors="replace"))
            return found

        def watch():
            while not done.wait(0.5):
                if not failed and (found := failures()):
                    failed.extend(found)
                    _thread.interrupt_main()  # a collective would otherwise wait for the dead rank

        watcher = threading.Thread(target=watch, name="floodlib-ddp-watch", daemon=True)
        try:
            _wait_until_ready(folder, processes, num_nodes, failures)
            os.environ.update(shared, NODE_RANK="0", LOCAL_RANK="0")
            watcher.start()
            yield
        except BaseException:
            done.set()
            try:
                if watcher.is_alive():
                    watcher.join()
                # The collective that broke here may have been a failing rank's doing: give its report a moment.
                deadline = time.monotonic() + (5.0 if workers or num_nodes > 1 else 0.0)
                while not failed and time.monotonic() < deadline:
                    failed.extend(failures())
                    time.sleep(0.2)
            except KeyboardInterrupt:  # the watcher's own interruption, for the failure it found
                if not failed:
                    raise
            for _, _, worker in workers:
                if worker.poll() is None:
                    worker.kill()
            if failed:
                raise RuntimeError("data-parallel training stopped: " + "\n".join(failed)) from None
            raise
        finally:
            done.set()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _destroy_process_group()
            for _, log, worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(timeout=600)
                if worker.poll() is None:
                    worker.kill()
                log.close()
        if found := failures():
            raise RuntimeError("data-parallel training stopped: " + "\n".join(found))
        if num_nodes > 1:
            _wait_for_ends(folder, num_nodes, failures)


def _remove_job(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # when no other job is there


def _wait_s() -> float:
    return float(os.environ.get("FLOODLIB_NODE_WAIT_S", NODE_WAIT_S))


def ready_marker(folder: Path, node_rank: int, local_rank: int) -> Path:
    return folder / f"node{node_rank}-rank{local_rank}.ready"


def _wait_until_ready(folder: Path, processes: int, num_nodes: int, failures) -> None:
    """Wait until every other rank has built its model and splits and is about to join the process group.

    A rank that dies before joining would leave rank 0 blocked inside the rendezvous, where nothing can
    interrupt it; one that dies in training breaks a collective, which raises here at once.
    """
    wait_s = _wait_s()
    deadline = time.monotonic() + wait_s
    while True:
        if found := failures():
            raise RuntimeError("data-parallel training stopped: " + "\n".join(found))
        absent = [k for k in range(1, num_nodes) if not (folder / f"node{k}.joined").exists()]
        waiting = [(k, r) for k in range(num_nodes) for r in range(processes)
                   if (k, r) != (0, 0) and not ready_marker(folder, k, r).exists()]
        if not waiting:
            return
        if time.monotonic() > deadline:
            if absent:
                raise RuntimeError(
                    f"num_nodes={num_nodes}: machine(s) {absent} did not take up the training job in {folder} "
                    f"within {wait_s:.0f} s; on each, start `python -m floodlib.training.launch --serve "
                    f"{folder.parent.parent} --node-rank K` (K = 1..{num_nodes - 1}) with this folder visible there "
                    "(FLOODLIB_NODE_WAIT_S sets the wait)")
            raise RuntimeError(f"ranks (machine, rank) {waiting} were not ready within {wait_s:.0f} s; their "
                               f"output is in {folder} (FLOODLIB_NODE_WAIT_S sets the wait)")
        time.sleep(0.2)


def _wait_for_ends(folder: Path, num_nodes: int, failures, *, wait_s: float = 60.0) -> None:
    """Wait until each machine 1..num_nodes-1 has reported its ranks' end (``node<K>.done``)."""
    deadline = time.monotonic() + wait_s
    while missing := [k for k in range(1, num_nodes) if not (folder / f"node{k}.done").exists()]:
        if found := failures():
            raise RuntimeError("data-parallel training stopped: " + "\n".join(found))
        if time.monotonic() > deadline:
            raise RuntimeError(f"machine(s) {missing} did not report the end of the training job in {folder}")
        time.sleep(0.2)


def serve(folder: str | Path, *, node_rank: int, poll_s: float = 1.0, jobs: int | None = None) -> int:
    """Machine ``node_rank``'s side of data-parallel training on several machines: start this machine's
    ranks for every job that appears under ``folder`` (a run folder, or any folder above a fit's output),
    one job at a time, until ``jobs`` jobs have run (None: until stopped). Returns the number of failed jobs.

    Each job folder gets ``node<K>.joined`` when the ranks start, then ``node<K>.done`` or
    ``node<K>.failed`` (with the failing rank's output), which stops rank 0 with that message.
    """
    folder = Path(folder)
    if node_rank < 1:
        raise ValueError(f"--node-rank {node_rank}: machine 0 is the one that runs fit; give 1 or more")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder to watch for training jobs does not exist")
    seen: set[str] = set()
    handled = failed = 0
    print(f"node {node_rank}: waiting for training jobs under {folder.resolve()}", flush=True)
    while jobs is None or handled < jobs:
        for path in sorted(folder.rglob(f"{JOB_FOLDER}/*/job.json")):
            try:
                job = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # removed while being read
            if job["id"] in seen or node_rank >= job["num_nodes"]:
                continue
            seen.add(job["id"])
            handled += 1
            failed += not _serve_job(path, job, node_rank)
        else:
            time.sleep(poll_s)
    return failed


def _serve_job(path: Path, job: dict[str, Any], node_rank: int) -> bool:
    folder = path.parent
    print(f"node {node_rank}: training {job['fit']['name']} ({job['processes']} processes) for {folder}", flush=True)
    workers = _start_ranks(path, job["environment"], node_rank, range(job["processes"]), folder)
    (folder / f"node{node_rank}.joined").write_text("")
    bad: list[tuple[int, int]] = []
    try:
        while not bad and any(worker.poll() is None for _, _, worker in workers):
            bad = [(rank, worker.returncode) for rank, _, worker in workers if worker.poll() not in (None, 0)]
            time.sleep(0.2)
        bad = bad or [(rank, worker.returncode) for rank, _, worker in workers if worker.returncode]
    finally:
        for _, log, worker in workers:
            if worker.poll() is None:
                worker.kill()  # one rank failed: the others of this machine cannot go on
                worker.wait()
            log.close()
    if bad:
        text = "\n".join(_rank_failure(folder, node_rank, rank, code) for rank, code in bad)
        with contextlib.suppress(OSError):
            (folder / f"node{node_rank}.failed").write_text(text)
        print(text, flush=True)
        return False
    with contextlib.suppress(OSError):
        (folder / f"node{node_rank}.done").write_text("")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m floodlib.training.launch",
                                     description="--serve: start this machine's ranks for every data-parallel fit "
                                                 "job that appears under a folder.")
    parser.add_argument("target", help="the folder to watch (e.g. the run folder, as this machine sees it)")
    parser.add_argument("--serve", action="store_true", help="watch the folder and run this machine's ranks")
    parser.add_argument("--node-rank", type=int, default=None, help="this machine's number, 1..num_nodes-1")
    parser.add_argument("--jobs", type=int, default=None, help="stop after this many jobs (default: never)")
    args = parser.parse_args(argv)
    if not args.serve:
        parser.error(f"{args.target}: give --serve to watch a folder (one rank of a job file runs as "
                     "python -m floodlib.training.rank JOB.json)")
    if args.node_rank is None or args.node_rank < 1:
        parser.error("--serve needs --node-rank K: this machine's number, 1 or more (0 runs the pipeline or fit)")
    if not Path(args.target).is_dir():
        parser.error(f"--serve {args.target}: no such folder (the run folder, as this machine sees it)")
    return 1 if serve(args.target, node_rank=args.node_rank, jobs=args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
