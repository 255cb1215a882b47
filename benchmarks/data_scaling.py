"""How much data a surrogate needs: held-out RAE of one architecture trained on more and more samples.

The samples come from a run folder's simulations, cut as its profile says (``data.samples``): the pool is
the run's ``big_train`` split, and nested random subsets of it (250, 1,000 and 4,000 samples by default:
each subset holds the smaller ones) train one architecture each from the same initial weights, with about
the same number of optimizer steps (at least the number asked for: whole epochs, so a few more for some
sizes) — so a larger set differs only in the data it shows, not in the compute it gets. The weights of the epoch with the lowest validation loss (on a fixed subset of ``big_val``) are
scored on the held-out splits: ``big_test`` (plans never seen) and ``test_projects`` (terrain never seen)
when the profile holds projects out. RAE is the pooled relative absolute error against the no-change
prediction (1: no better than predicting no change; 0: perfect).

    python -m floodlib.pipeline params/medium.yaml --only A   # or any run whose data is simulated
    python benchmarks/data_scaling.py outputs/medium
    python benchmarks/data_scaling.py outputs/medium --arch Arch_04 --sizes 250 1000 --steps 1500
    python benchmarks/data_scaling.py outputs/medium --jobs 3   # the sizes side by side (a GPU, many cores)

Only the data folder of the run is read (``<run>/data`` and ``<run>/params.yaml``); nothing is written to
the run. On 2 CPU cores Arch_02 trains at about 55 samples a second, so the default 2,500 steps of 16
samples take about 12 minutes per size; ``--steps`` trades accuracy for time for every size alike.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time

import numpy as np
import torch

from floodlib.data.dataset import PatchDataset
from floodlib.evaluation.metrics import evaluate_dataset, summarise
from floodlib.models import create_model, list_models
from floodlib.runs import open_run, splits
from floodlib.training import fit
from trials import add_worker_arguments, device_label, train_each

HELD_OUT = ("big_test", "test_projects")


def nested_subsets(pool: PatchDataset, sizes: list[int], *, seed: int) -> dict[int, PatchDataset]:
    """``pool``'s samples in one seeded random order; the first ``n`` of it for every size ``n``."""
    if max(sizes) > len(pool):
        raise SystemExit(f"the training pool ({pool.name}) has {len(pool)} samples, fewer than {max(sizes)}: "
                         "choose smaller --sizes, or a profile that cuts more samples (data.samples: "
                         "snapshot_every_s, patch_stride_cells) or simulates more plans")
    order = np.random.default_rng(seed).permutation(len(pool))
    return {n: pool.subset(np.sort(order[:n]), name=f"{n} samples") for n in sizes}


def epochs_for(steps: int, samples: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps over ``samples`` samples."""
    return max(1, math.ceil(steps / math.ceil(samples / batch_size)))


def train_and_score(run_dir: str, arch: str, size: int, args: dict) -> dict:
    """One point of the curve: train on ``size`` samples, score on the held-out splits (a worker process)."""
    torch.set_num_threads(args["threads"])
    run = open_run(run_dir)
    datasets = splits(run, ["big_train", "big_val", *HELD_OUT] if run.split_spec().test_projects
                      else ["big_train", "big_val", "big_test"])
    train = nested_subsets(datasets["big_train"], args["sizes"], seed=args["seed"])[size]
    val = datasets["big_val"]
    if len(val) > args["val_samples"]:
        keep = np.random.default_rng(args["seed"] + 1).permutation(len(val))[:args["val_samples"]]
        val = val.subset(np.sort(keep), name=f"big_val ({args['val_samples']} samples)")
    torch.manual_seed(args["seed"])
    model = create_model(arch)
    epochs = epochs_for(args["steps"], size, args["batch_size"])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        result = fit(model, train, val, out_dir=out_dir, epochs=epochs, lr=args["lr"],
                     batch_size=args["batch_size"], patience=epochs, seed=args["seed"], progress="none",
                     accelerator=args["accelerator"], resume=False)
    seconds = time.perf_counter() - began
    best = min(result.history["val_loss"])
    row = {"size": size, "epochs": epochs, "best_epoch": result.history["val_loss"].index(best) + 1,
           "val_rae": best / result.baseline_val_loss, "seconds": seconds}
    device = "cuda" if args["accelerator"] in ("gpu", "cuda") else "cpu" if args["accelerator"] == "cpu" else "auto"
    for split in HELD_OUT:
        if split in datasets:
            figures = summarise(evaluate_dataset(result.model, datasets[split], device=device))
            row[split] = {"samples": len(datasets[split]), "pooled_rae": figures["pooled_rae"],
                          "median_rae": figures["median_rae"]}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder whose data is simulated (e.g. outputs/medium)")
    parser.add_argument("--arch", default="Arch_02", choices=list_models())
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps for every size (default 2500)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-samples", type=int, default=256, help="validation subset for choosing the epoch")
    parser.add_argument("--seed", type=int, default=0)
    add_worker_arguments(parser, per="size")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.steps < 1 or args.batch_size < 1 or args.val_samples < 1:
        parser.error("--sizes, --steps, --batch-size and --val-samples must be positive")
    sizes = sorted(set(args.sizes))
    settings = {"sizes": sizes, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                "val_samples": args.val_samples, "seed": args.seed, "accelerator": args.accelerator,
                "threads": args.threads}
    run = open_run(args.run_dir)
    pool = splits(run, ["big_train"])["big_train"]
    nested_subsets(pool, sizes, seed=args.seed)  # refuses sizes the pool cannot give before anything trains
    device = device_label(args, per="size")
    print(f"floodlib data-scaling benchmark — {args.arch} on {run.profile.name}'s big_train ({len(pool)} samples: "
          f"{run.sample_spec().describe()}); {args.steps} steps of {args.batch_size}, Adam lr {args.lr:g}, "
          f"seed {args.seed}; {device}", flush=True)
    began = time.perf_counter()
    rows = train_each(train_and_score, args.run_dir, args.arch, sizes, settings, jobs=args.jobs)
    held_out = [split for split in HELD_OUT if split in rows[0]]
    header = f"{'samples':>8}{'epochs':>7}{'best':>5}{'val RAE':>9}" + "".join(
        f"{split + ' RAE':>20}{'median':>8}" for split in held_out) + f"{'train s':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row['size']:>8}{row['epochs']:>7}{row['best_epoch']:>5}{row['val_rae']:>9.3f}" + "".join(
            f"{row[split]['pooled_rae']:>20.3f}{row[split]['median_rae']:>8.3f}" for split in held_out)
            + f"{row['seconds']:>9.0f}")
    first, last = rows[0], rows[-1]
    for split in held_out:
        print(f"{split}: pooled RAE {first[split]['pooled_rae']:.3f} with {first['size']} samples -> "
              f"{last[split]['pooled_rae']:.3f} with {last['size']} "
              f"({last[split]['pooled_rae'] / first[split]['pooled_rae']:.2f}x; {first[split]['samples']} test samples)")
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "device": device, "settings": settings, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
