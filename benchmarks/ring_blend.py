"""Training for full-domain prediction: one architecture trained with more or less of its boundary rings
blended toward the depth at n (``fit(..., ring_blend=...)``), each scored both ways it is used.

A patch model is given the depth at n+1 on its 2-cell boundary ring. Full-domain prediction
(:mod:`floodlib.predict`) does not know that ring: it starts each step's closure from the depth at n and
iterates the rings of two overlapping grids toward n+1. A model trained only on true rings reads the water
that leaves or enters a patch off its ring; given rings still at their depth at n it predicts little change,
so "no change" nearly closes on itself and a rolled-out flood keeps water it should drain.

For every blend fraction, the same architecture starts from the same weights (the run's stage-A model of it
when there is one, else a fresh seeded initialisation), trains the same epochs on the run's ``big_train``
(validated on ``big_val``, true rings), and its best epoch is scored:

- per patch with the true rings: pooled RAE on ``big_test`` (plans never seen) and ``test_projects``
  (terrain never seen, when the profile holds projects out) — the figure stage D headlines;
- rolled out over every held-out plan (as stage D does): closure convergence, the one-hour RAE of the closed
  patch interiors against the same model's with true rings, the full-domain RAE after each hour against the
  solver, and the water volume after the last hour against the solver's.

    python -m floodlib.pipeline params/medium.yaml --only A   # or any run whose data is simulated
    python benchmarks/ring_blend.py outputs/medium                       # fractions 0, 0.25, 0.5, 1
    python benchmarks/ring_blend.py outputs/medium --fractions 0 0.5 --epochs 18 --jobs 2

Only the run's data and (when present) its stage-A weights are read; nothing is written to the run. On 2 CPU
cores Arch_03 trains on medium's 4,285 samples in about 35 s an epoch, so the default 10 epochs of four
fractions take about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from floodlib.evaluation.metrics import evaluate_dataset, summarise
from floodlib.evaluation.rollout import roll_out_plans, rollout_summary
from floodlib.models import create_model, list_models, load_model
from floodlib.runs import open_run, splits
from trials import add_worker_arguments, device_label, train_each

HELD_OUT = ("big_test", "test_projects")


def start_weights(run, arch: str) -> Path | None:
    """The run's stage-A model of ``arch``, which every fraction continues from, or None."""
    path = run.stage_dir("A") / "models" / arch / "model.pth"
    return path if path.exists() else None


def train_and_score(run_dir: str, arch: str, fraction: float, args: dict) -> dict:
    """One fraction: train, score per patch and rolled out (a worker process)."""
    from floodlib.training import fit

    torch.set_num_threads(args["threads"])
    run = open_run(run_dir)
    held_out = [s for s in HELD_OUT if s != "test_projects" or run.split_spec().test_projects]
    datasets = splits(run, ["big_train", "big_val", *held_out])
    torch.manual_seed(args["seed"])
    start = start_weights(run, arch)
    model = load_model(start) if start is not None else create_model(arch)
    device = "cuda" if args["accelerator"] in ("gpu", "cuda") else "cpu" if args["accelerator"] == "cpu" else "auto"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        result = fit(model, datasets["big_train"], datasets["big_val"], out_dir=out_dir, epochs=args["epochs"],
                     lr=args["lr"], batch_size=args["batch_size"], patience=args["epochs"], seed=args["seed"],
                     progress="none", accelerator=args["accelerator"], resume=False, ring_blend=fraction)
    seconds = time.perf_counter() - began
    best = min(result.history["val_loss"])
    row = {"fraction": fraction, "best_epoch": result.history["val_loss"].index(best) + 1,
           "val_rae": best / result.baseline_val_loss, "train_seconds": seconds}
    for split in held_out:
        row[split] = summarise(evaluate_dataset(result.model, datasets[split], device=device))["pooled_rae"]
    plans = [(split, path) for split in held_out for path in datasets[split].files]
    frame, _ = roll_out_plans(result.model, plans, start_s=args["start_min"] * 60, steps=args["hours"],
                              delta_t_s=run.sample_spec().delta_t_s, device=device, tolerance_m=args["tolerance_m"],
                              max_iterations=args["max_iterations"])
    summary = rollout_summary(frame, model=arch, max_iterations=args["max_iterations"])
    row["rollout"] = {key: summary[key] for key in (
        "plans", "steps", "converged_within_20_fraction", "converged_fraction", "median_passes",
        "closed_rae_interiors", "patch_rae_true_rings", "closed_over_true_rings", "pooled_rae_by_step",
        "volume_error_median_abs", "volume_error_by_project")}
    return row


def show(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def by_project(errors: dict) -> str:
    return " ".join(f"{project} {show(value, '+.0%')}" for project, value in errors.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder whose data is simulated (e.g. outputs/medium)")
    parser.add_argument("--arch", default="Arch_03", choices=list_models())
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-min", type=float, default=60.0, help="rollout start, min since each plan's start")
    parser.add_argument("--hours", type=int, default=3, help="rollout steps, one lead time (the samples' delta_t) each; fewer on plans too short to hold them")
    parser.add_argument("--tolerance-mm", type=float, default=1.0)
    parser.add_argument("--max-iterations", type=int, default=20)
    add_worker_arguments(parser, per="fraction")
    args = parser.parse_args(argv)
    if any(not 0 <= f <= 1 for f in args.fractions):
        parser.error("--fractions must lie between 0 and 1")
    if args.epochs < 1 or args.hours < 1:
        parser.error("--epochs and --hours must be positive")
    fractions = sorted(set(args.fractions))
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "start_min": args.start_min, "hours": args.hours, "tolerance_m": args.tolerance_mm / 1000,
                "max_iterations": args.max_iterations, "accelerator": args.accelerator, "threads": args.threads}
    run = open_run(args.run_dir)
    pool = splits(run, ["big_train"])["big_train"]
    start = start_weights(run, args.arch)
    device = device_label(args, per="fraction")
    print(f"floodlib ring-blend benchmark — {args.arch} on {run.profile.name}'s big_train ({len(pool)} samples), "
          f"{args.epochs} epochs of batches of {args.batch_size}, Adam lr {args.lr:g}, seed {args.seed}, from "
          f"{start.relative_to(run.run_dir) if start else 'a fresh initialisation'}; rollouts of {args.hours} step(s) "
          f"of {run.sample_spec().delta_t_s / 60:g} min from minute {args.start_min:g} (from 0, and fewer, where a plan "
          f"is too short); {device}", flush=True)
    began = time.perf_counter()
    rows = train_each(train_and_score, args.run_dir, args.arch, fractions, settings, jobs=args.jobs)
    held_out = [split for split in HELD_OUT if split in rows[0]]
    hours = list(rows[0]["rollout"]["pooled_rae_by_step"])
    header = (f"{'blend':>6}{'val RAE':>9}" + "".join(f"{split:>15}" for split in held_out)
              + f"{'converged':>11}{'closed':>8}{'true':>7}{'ratio':>7}"
              + "".join(f"{f'step {h}':>10}" for h in hours) + f"{'water':>7}  {'by project':<36}{'train s':>8}")
    print("\n(patch RAE with true rings on the held-out splits; rollout: steps converged within 20 passes, one-step "
          "RAE of the closed patch interiors and with true rings, full-domain RAE after each step over the plans that "
          "reach it; water: the median plan's |error| in water volume after its last step against the solver's, and "
          "each project's error, its plans' volumes added up)")
    print(header + "\n" + "-" * len(header))
    for row in rows:
        r = row["rollout"]
        print(f"{row['fraction']:>6g}{row['val_rae']:>9.3f}" + "".join(f"{row[split]:>15.3f}" for split in held_out)
              + f"{show(r['converged_within_20_fraction'], '.0%'):>11}{show(r['closed_rae_interiors']):>8}"
              + f"{show(r['patch_rae_true_rings']):>7}{show(r['closed_over_true_rings'], '.2f'):>7}"
              + "".join(f"{show(r['pooled_rae_by_step'][h]):>10}" for h in hours)
              + f"{show(r['volume_error_median_abs'], '.0%'):>7}  "
              + f"{by_project(r['volume_error_by_project']):<36}"
              + f"{row['train_seconds']:>8.0f}")
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "device": device, "settings": settings,
                                         "start_weights": str(start) if start else None, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
