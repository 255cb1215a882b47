"""What the training benchmarks share (``data_scaling.py``, ``ring_blend.py``): each trains one architecture
once per value of one setting (a sample count, a blend fraction), one process per value when asked, and
prints the figures of every value side by side.

Imported by those scripts, which run as ``python benchmarks/NAME.py``: their folder is then first on the
module path, in the worker processes too.
"""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch


def add_worker_arguments(parser: argparse.ArgumentParser, *, per: str) -> None:
    """``--accelerator``, ``--threads``, ``--jobs`` and ``--json``; ``per`` names one trained value ("size")."""
    parser.add_argument("--accelerator", default="auto", help="Lightning's: auto (a GPU when present), cpu, gpu")
    parser.add_argument("--threads", type=int, default=2, help=f"CPU threads per {per}")
    parser.add_argument("--jobs", type=int, default=1, help=f"{per}s trained at once, each in its own process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def device_label(args: argparse.Namespace, *, per: str) -> str:
    """The card that trains, or the CPU threads each value gets: for the header of the printed figures."""
    if args.accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {args.threads} threads per {per}"


def train_each(train_and_score: Callable[..., dict[str, Any]], run_dir: str, arch: str, values: list,
               settings: dict[str, Any], *, jobs: int) -> list[dict[str, Any]]:
    """``train_and_score(run_dir, arch, value, settings)`` for every value, in order: one after the other, or
    ``jobs`` at a time in fresh processes (spawned: a forked process would inherit torch's thread pool)."""
    if jobs <= 1:
        return [train_and_score(run_dir, arch, value, settings) for value in values]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as workers:
        futures = [workers.submit(train_and_score, run_dir, arch, value, settings) for value in values]
        return [future.result() for future in futures]
