"""What a result was computed with: floodlib's version and commit, Python, the key libraries, the machine.

Trained models' summaries and every stage's ``summary.json`` record it (``environment``), so a figure in a
paper can say which torch on which CPU or GPU gave it: timings differ between machines several-fold, and
trained weights differ in their last digits between CPUs, whose kernels round differently.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import floodlib

#: The distributions whose versions are recorded (when installed).
LIBRARIES = ("torch", "lightning", "numpy", "h5py", "rasterio", "landlab", "optuna", "pandas")


def cpu_name() -> str:
    """The CPU's model name (``platform.processor()`` is often only the architecture on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout floodlib is imported from (``<hash>+dirty`` with uncommitted changes to
    tracked files), or None when it is not in a git checkout or git is missing."""
    root = Path(floodlib.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


def environment() -> dict[str, Any]:
    """floodlib's version (and commit), Python, the platform, the CPU and its cores, torch's threads, the
    CUDA devices torch sees, and the versions of :data:`LIBRARIES` — all JSON values."""
    record: dict[str, Any] = {"floodlib": floodlib.__version__}
    commit = git_commit()
    if commit:
        record["git_commit"] = commit
    record.update(python=platform.python_version(), platform=platform.platform(), cpu=cpu_name(),
                  cpu_count=os.cpu_count())
    for name in LIBRARIES:
        try:
            record[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import torch

    record["torch_threads"] = torch.get_num_threads()
    record["cuda_devices"] = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                              if torch.cuda.is_available() else [])
    return record


def describe(record: dict[str, Any]) -> str:
    """One line for a log or a report: ``floodlib 0.1.0 (abc123), torch 2.13.0, Python 3.11.9; <CPU>, 2 cores
    (2 torch threads); no GPU``."""
    version = record.get("floodlib", "?") + (f" ({record['git_commit']})" if record.get("git_commit") else "")
    devices = record.get("cuda_devices") or []
    gpu = ", ".join(devices) if devices else "no GPU"
    return (f"floodlib {version}, torch {record.get('torch', '?')}, Python {record.get('python', '?')}; "
            f"{record.get('cpu', '?')}, {record.get('cpu_count', '?')} cores ({record.get('torch_threads', '?')} torch "
            f"threads); {gpu}")
