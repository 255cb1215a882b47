"""A real training run for tests that need separate processes (kill and resume, DDP):
``python training_job.py DIR EPOCHS``, or under ``torchrun --nproc_per_node 2 ... --devices 2`` for DDP, or
``--num-nodes 2`` with ``python -m floodlib.training.launch --serve DIR --node-rank 1`` running beside it.

Builds a small deterministic data set in DIR (if absent) and fits a small Arch_02 on it with resume on.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path

import numpy as np
import torch

from floodlib.data.dataset import PatchDataset
from floodlib.data.samples import SampleSpec
from floodlib.data.store import Simulation, write_simulation
from floodlib.models import create_model
from floodlib.training import PlateauSchedule, fit

SPEC = SampleSpec(snapshot_times_s=(0, 600, 1200, 1800), delta_t_s=600)


def growing_flood_plan(k: int, cells: int = 64, frames: int = 5) -> Simulation:
    """Depth grows 10 % per 10-minute frame over a smooth wet field: a depth change the models can learn."""
    rng = np.random.default_rng(k)
    y, x = np.mgrid[0:cells, 0:cells]
    base = 1.0 + 0.5 * np.sin(x / (5 + k)) * np.cos(y / 7) + 0.2 * rng.random((cells, cells))
    depth = np.stack([base * 1.1**f for f in range(frames)]).astype(np.float32)
    points = cells * 10 + 1
    terrain = 300 + rng.standard_normal((points, points)).cumsum(0).cumsum(1) * 1e-3
    return Simulation(project="growing", plan=f"plan_{k:03d}", terrain=terrain.astype(np.float32), water_depth=depth,
                      cell_size_m=10.0, terrain_spacing_m=1.0, output_interval_s=600.0, source="test: growing flood")


def datasets(root: Path) -> tuple[PatchDataset, PatchDataset]:
    files = []
    for k in range(3):
        path = root / "data" / f"plan_{k:03d}.h5"
        if not path.exists():
            write_simulation(path, growing_flood_plan(k))
        files.append(path)
    return PatchDataset(files[:2], spec=SPEC, name="train"), PatchDataset(files[2:], spec=SPEC, name="val")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("epochs", type=int)
    parser.add_argument("--devices", type=int, default=1, help="processes; > 1: DDP on CPU (gloo), under torchrun")
    parser.add_argument("--num-nodes", type=int, default=1, help="machines (> 1: each other one runs launch --serve)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep last.ckpt, so a later call can continue")
    parser.add_argument("--ring-blend", type=float, default=0.0, help="fit's ring_blend")
    parser.add_argument("--strategy", default="ddp", help="fit's strategy for devices > 1 ('auto': fit's default)")
    args = parser.parse_args()
    # Registered before fit, so it runs after any exit handler fit registers: what the process ends with.
    # One write per line: the ranks share torchrun's output, where print's separate newline could land after
    # the other rank's line.
    atexit.register(lambda: sys.stdout.write(f"rank {os.environ.get('RANK', '0')} at exit: process group "
                                             f"{'open' if torch.distributed.is_initialized() else 'closed'}\n"))
    torch.set_num_threads(1)
    train, val = datasets(Path(args.root))
    torch.manual_seed(0)
    model = create_model("Arch_02", downsampler="cubic", layers=4, channels=8)
    parallel = {"accelerator": "cpu", "devices": args.devices, "num_nodes": args.num_nodes, "strategy": args.strategy} \
        if args.devices > 1 or args.num_nodes > 1 else {}
    fit(model, train, val, out_dir=Path(args.root) / "stage", epochs=args.epochs, lr=3e-3, batch_size=args.batch_size,
        patience=50, plateau=PlateauSchedule(patience=1, cooldown=0, threshold=0.3), progress="epoch", seed=3,
        keep_resume_checkpoint=args.keep, ring_blend=args.ring_blend, **parallel)


if __name__ == "__main__":
    main()
