"""Training with one common learning rate, with and without the models' scale factors, side by side.

Every architecture is trained twice by ``floodlib.training.fit`` on the same split, from the same seed,
with the same settings (Adam, one learning rate and batch size for all, 1e-3 and 16 by default as in the
smoke profile, L1 loss, no early stop):

- raw metres: ``terrain_scale = depth_scale = change_scale = 1`` — the networks see and produce metres,
  as before the scale factors existed (and as every checkpoint without them still does);
- scaled: ``create_model``'s default scale factors (see ``floodlib.models.base``).

Data: the smoke profile's simulated plans (``params/smoke.yaml``), the first 8 of its ``valley`` project:
plans 0-5 train and 6-7 validate, the ``small_train`` / ``small_val`` split that stage A trains on. The
plans are simulated into ``--data`` (kept there, and reused when already present) or a temporary folder.

Printed per architecture and setting: the best validation L1 loss and its epoch, the skill against the
no-change prediction (1 - loss / no-change loss), the first epoch whose validation loss is 5 % below
the no-change loss (when the model leaves the zero prediction), and the largest rise of the validation
loss over its best so far (instability); then every epoch's skill.

    python benchmarks/normalisation.py                  # all seven architectures, 6 epochs each
    python benchmarks/normalisation.py --data /tmp/nd   # keep the simulated plans for the next run
    python benchmarks/normalisation.py --lr 3e-4 --models Arch_07 Arch_08 --epochs 15
    python benchmarks/normalisation.py --quick          # Arch_02 and Arch_07 on three small plans

Time on 2 CPU cores: 5.4 minutes of training (Arch_05, 31 M parameters, takes half of it), plus about 3
minutes to simulate the plans when ``--data`` does not hold them yet; on cores shared 3-4 fold, 35 minutes.
Training on CPU is deterministic: a second run prints the same figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from floodlib.data.dataset import PatchDataset
from floodlib.data.samples import SampleSpec
from floodlib.data.simulate import simulate_project
from floodlib.models import create_model, list_models
from floodlib.models.base import SCALE_KEYS
from floodlib.pipeline.config import load_profile
from floodlib.pipeline.stages import project_spec
from floodlib.training import fit
from floodlib.training.fitting import NonFiniteLossError
from floodlib.training.monitor import no_change_loss

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"raw metres": {key: 1.0 for key in SCALE_KEYS}, "scaled": {}}
PROJECT = "valley"  # the profiles' procedural project, whose first plans make stage A's small split
LEFT_ZERO = 0.05  # skill at which a model counts as having left the zero prediction


@dataclass
class Outcome:
    """One training run: per-epoch validation losses (NaN from a non-finite loss on)."""

    val_loss: list[float]
    baseline: float
    seconds: float

    @property
    def skills(self) -> list[float]:
        return [1 - loss / self.baseline for loss in self.val_loss]

    def best(self) -> tuple[float, int]:
        finite = [(loss, epoch) for epoch, loss in enumerate(self.val_loss, 1) if math.isfinite(loss)]
        return min(finite) if finite else (math.nan, 0)

    def left_zero_at(self) -> int | None:
        return next((epoch for epoch, skill in enumerate(self.skills, 1) if skill >= LEFT_ZERO), None)

    def largest_rise(self) -> float:
        """Largest validation loss above its best so far, relative to that best (0: never rose)."""
        best, rise = math.inf, 0.0
        for loss in self.val_loss:
            if not math.isfinite(loss):
                return math.inf
            if loss > best:
                rise = max(rise, loss / best - 1)
            best = min(best, loss)
        return rise


def splits(profile: Path, data: Path, *, plans: int, train_plans: int) -> tuple[PatchDataset, PatchDataset]:
    """Train and validation splits of the first ``plans`` plans of the profile's ``valley`` project."""
    config = load_profile(profile)
    valley = next((p for p in config.data.simulate if p.name == PROJECT), None)
    if valley is None:
        raise SystemExit(f"{profile}: no simulated project named {PROJECT!r} (data.simulate)")
    project = project_spec(valley.model_copy(update={"n_plans": plans}))
    files = simulate_project(project, data, workers=config.data.workers, progress=False)
    values = dict(config.data.samples)
    if "snapshot_times_s" in values:
        values["snapshot_times_s"] = tuple(values["snapshot_times_s"])
    spec = SampleSpec(**values)
    return (PatchDataset(files[:train_plans], spec=spec, name="train"),
            PatchDataset(files[train_plans:], spec=spec, name="val"))


class ValLosses(Callback):
    """Keeps each epoch's validation loss, so that a run that diverges still reports its epochs so far."""

    def __init__(self):
        self.val_loss: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.val_loss = list(pl_module.history["val_loss"])


def train(arch: str, scales: dict[str, float], train_split, val_split, *, epochs: int, lr: float, batch: int,
          seed: int, out_dir: Path) -> Outcome:
    torch.manual_seed(seed)
    model = create_model(arch, **scales)
    record = ValLosses()
    start = time.perf_counter()
    try:
        result = fit(model, train_split, val_split, out_dir=out_dir, epochs=epochs, lr=lr, batch_size=batch,
                     patience=epochs, seed=seed, progress="none", resume=False, callbacks=[record])
        baseline = result.baseline_val_loss
    except NonFiniteLossError:
        baseline = no_change_loss(val_split)
    val_loss = record.val_loss + [math.nan] * (epochs - len(record.val_loss))
    return Outcome(val_loss, baseline, time.perf_counter() - start)


def cells(outcome: Outcome) -> str:
    loss, epoch = outcome.best()
    left = outcome.left_zero_at()
    rise = outcome.largest_rise()
    return (f"{loss:>9.4f}{'(' + str(epoch) + ')':>5}{1 - loss / outcome.baseline:>7.1%}"
            f"{(str(left) if left else '-'):>6}{rise:>7.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Arch_02 and Arch_07, the tiny profile's plans")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--data", type=Path, default=None, help="folder for the simulated plans (reused)")
    parser.add_argument("--epochs", type=int, default=None, help="default 6 (2 with --quick)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models or (["Arch_02", "Arch_07"] if args.quick else list_models())
    epochs = args.epochs or (2 if args.quick else 6)
    profile, plans, train_plans = (ROOT / "params" / "tiny.yaml", 3, 2) if args.quick \
        else (ROOT / "params" / "smoke.yaml", 8, 6)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_split, val_split = splits(profile, args.data or tmp / "data", plans=plans, train_plans=train_plans)
        print(f"floodlib normalisation benchmark — {profile.name}'s plans: {len(train_split)} training and "
              f"{len(val_split)} validation samples; Adam lr {args.lr:g}, batch {args.batch}, {epochs} epochs, "
              f"seed {args.seed}, {args.threads} threads")
        defaults = create_model("Arch_02", downsampler="cubic", layers=3, channels=4).config
        arch_09 = create_model("Arch_09", downsampler="cubic").config
        print("scaled: " + ", ".join(f"{key}={defaults[key]:g}" for key in SCALE_KEYS)
              + f" (Arch_09: change_scale={arch_09['change_scale']:g}); raw metres: all 1\n")
        columns = f"{'best val':>9}{'(ep)':>5}{'skill':>7}{'left0':>6}{'rise':>7}"
        header = f"{'model':<9}{'no-change':>10}   {'raw metres':<34}   {'scaled':<34}"
        print(header)
        print(f"{'':<9}{'val loss':>10}   {columns}   {columns}")
        print("-" * len(header))
        curves = []
        for arch in models:
            outcomes = {name: train(arch, scales, train_split, val_split, epochs=epochs, lr=args.lr, batch=args.batch,
                                    seed=args.seed, out_dir=tmp / "runs" / name.replace(" ", "_"))
                        for name, scales in SETTINGS.items()}
            baseline = outcomes["scaled"].baseline
            print(f"{arch:<9}{baseline:>10.4f}   {cells(outcomes['raw metres'])}   {cells(outcomes['scaled'])}",
                  flush=True)
            for name, outcome in outcomes.items():
                curves.append(f"{arch:<9}{name:<12}" + " ".join(f"{s:>6.1%}" for s in outcome.skills)
                              + f"   ({outcome.seconds:.0f} s)")
    print(f"\nbest val: lowest validation L1 loss (m) and its epoch; skill: 1 - best / no-change loss; left0: first "
          f"epoch with skill >= {LEFT_ZERO:.0%} ('-': never); rise: largest validation loss above its best so far")
    print("\nskill per epoch")
    print("\n".join(curves))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
