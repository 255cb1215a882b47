"""Data-parallel training started from one process, such as a notebook's kernel.

``fit(..., devices=4, strategy="ddp")`` needs one process per device. Under ``torchrun`` or SLURM those
processes exist already. Otherwise — a stage notebook, or a script run with plain ``python`` — floodlib
starts the other ranks on this machine itself: each runs the same ``fit`` call, rebuilt from a JSON file
(the model from a checkpoint of its initial weights, the splits from their plan files and sample
definition), with the environment Lightning reads for processes it did not create. (Lightning's own
launcher re-runs ``sys.argv``, which in a Jupyter kernel is the kernel, not the training.)

``python -m floodlib.training.launch JOB.json`` is one such rank.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

#: Variables by which a launcher (torchrun, SLURM, Lightning) tells a process its rank.
_LAUNCHED = ("LOCAL_RANK", "RANK", "SLURM_PROCID")
_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")


def local_processes(*, strategy, devices, num_nodes: int, on_gpu: bool) -> int:
    """How many processes floodlib must start for this ``fit`` call (0: none — one process, or a launcher
    already started them)."""
    if strategy != "ddp" or any(name in os.environ for name in _LAUNCHED):
        return 0
    if devices == "auto":
        devices = torch.cuda.device_count() if on_gpu else 1
    count = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 0
    if count <= 1:
        return 0
    if num_nodes > 1:
        raise ValueError(f"num_nodes={num_nodes}: training on several machines needs one process per device "
                         "started by torchrun or SLURM (see the README's recipe)")
    return count


def started_ddp_strategy():
    """Lightning's DDP for processes that already exist (started by :func:`local_ranks`): Lightning launches
    none, so it also runs inside a Jupyter kernel, where its script launcher refuses to start."""
    from lightning.pytorch.strategies import DDPStrategy

    class StartedDDPStrategy(DDPStrategy):
        def _configure_launcher(self) -> None:
            self._launcher = None

    return StartedDDPStrategy()


def split_description(split, folder: Path) -> dict[str, Any]:
    """What rebuilds ``split`` in another process (:func:`split_from_description`): its plan files, sample
    definition and name, and its sample index saved as ``<name>.npy`` in ``folder`` — a subset's too."""
    index_path = folder / f"{len(list(folder.glob('*.npy')))}.npy"
    np.save(index_path, split.index, allow_pickle=False)
    return {"files": [str(f) for f in split.files], "spec": asdict(split.spec), "name": split.name,
            "memory_map": split.memory_map, "index": str(index_path)}


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
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_ranks(processes: int, *, model, train, val, settings: dict[str, Any]) -> Iterator[None]:
    """Start ranks 1..processes-1 of the same ``fit`` call and make this process rank 0, for the duration.

    On leaving: the other ranks are waited for (and stopped if this rank failed), the process group is
    destroyed so that a later ``fit`` can form its own, and the environment is restored. A rank that fails
    interrupts this one (its error output is in the raised message).
    """
    from floodlib.training.artifacts import save_model

    with tempfile.TemporaryDirectory(prefix="floodlib-ddp-") as folder:
        folder = Path(folder)
        save_model(model, folder / "initial.pth")
        job = {"model": str(folder / "initial.pth"), "train": split_description(train, folder),
               "val": split_description(val, folder), "fit": settings}
        (folder / "job.json").write_text(json.dumps(job))
        saved = {name: os.environ.get(name) for name in _ENVIRONMENT}
        shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(processes),
                  "NODE_RANK": "0"}
        workers, logs = [], []
        for rank in range(1, processes):
            logs.append(open(folder / f"rank{rank}.log", "w"))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "floodlib.training.launch", str(folder / "job.json")],
                env={**os.environ, **shared, "LOCAL_RANK": str(rank)}, stdout=logs[-1], stderr=subprocess.STDOUT))
        failed: list[int] = []
        done = threading.Event()

        def watch():
            while not done.wait(0.5):
                for rank, worker in enumerate(workers, start=1):
                    if worker.poll() not in (None, 0) and rank not in failed:
                        failed.append(rank)
                        _thread.interrupt_main()  # a collective would otherwise wait for the dead rank

        watcher = threading.Thread(target=watch, name="floodlib-ddp-watch", daemon=True)
        os.environ.update(shared, LOCAL_RANK="0")
        watcher.start()
        try:
            yield
        except BaseException:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            if failed:
                raise RuntimeError(_failure(folder, failed)) from None
            raise
        finally:
            done.set()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(timeout=600)
                if worker.poll() is None:
                    worker.kill()
            for log in logs:
                log.close()
        codes = {rank: worker.returncode for rank, worker in enumerate(workers, start=1)}
        if any(codes.values()):
            raise RuntimeError(_failure(folder, [rank for rank, code in codes.items() if code]))


def _failure(folder: Path, ranks: list[int]) -> str:
    parts = []
    for rank in ranks:
        text = (folder / f"rank{rank}.log").read_text(errors="replace").strip().splitlines()
        parts.append(f"rank {rank} failed:\n" + "\n".join(text[-15:]))
    return "data-parallel training stopped: " + "\n".join(parts)


def run_rank(job_path: str | Path) -> None:
    """One rank other than 0 of a data-parallel ``fit`` started by :func:`local_ranks`."""
    from floodlib.training.artifacts import load_model
    from floodlib.training.fit import PlateauSchedule, fit

    job = json.loads(Path(job_path).read_text())
    model = load_model(job["model"])
    settings = dict(job["fit"])
    if settings.get("plateau") is not None:
        settings["plateau"] = PlateauSchedule(**settings["plateau"])
    fit(model, split_from_description(job["train"]), split_from_description(job["val"]), **settings)


if __name__ == "__main__":
    run_rank(sys.argv[1])
