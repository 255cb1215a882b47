"""Epoch throughput of floodlib's ``fit`` (Lightning) against a reference-style loop and a bare PyTorch
loop, side by side in one run, on the same split of a plan in the simulation store.

- reference-style: every sample pre-materialised as float64 tensors in memory (what unpickling the
  reference's DataLoader files gives), float64 model with the block-wise downsampler and materialised
  attention, plain loop;
- bare PyTorch: floodlib's defaults (float32, fast layers, PatchDataset sliced on the fly), a hand-written
  loop with the same optimiser, loss, batch size and validation pass as ``fit``;
- fit: ``floodlib.training.fit`` with those settings.

An epoch is one training pass and one validation pass; throughput counts both passes' samples.

    python benchmarks/training.py            # Arch_04 and Arch_05 (several minutes)
    python benchmarks/training.py --quick    # Arch_02 on a smaller split
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import synthetic_plan  # noqa: E402

from floodlib.data.dataset import PatchDataset  # noqa: E402
from floodlib.data.samples import SampleSpec  # noqa: E402
from floodlib.data.store import write_simulation  # noqa: E402
from floodlib.models import create_model, use_reference_layers  # noqa: E402
from floodlib.training import fit  # noqa: E402
from floodlib.data.batches import EpochOrder  # noqa: E402

TARGET_VS_REFERENCE = 3.0
TARGET_OVERHEAD = 0.10


def reference_epoch_time(arch: str, train, val, *, batch: int, lr: float) -> float:
    """One epoch the reference's way (float64, pre-materialised samples, reference layers)."""
    def materialise(dataset):
        samples = [dataset[i] for i in range(len(dataset))]
        return TensorDataset(*(torch.stack([getattr(s, f) for s in samples]).double()
                               for f in ("terrain", "depths", "depth_change")))

    train_set, val_set = materialise(train), materialise(val)
    torch.manual_seed(0)
    model = use_reference_layers(create_model(arch, center_terrain=False)).double().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    warm_up = train_set[:2]
    F.l1_loss(model(warm_up[0], warm_up[1]), warm_up[2]).backward()  # first-call set-up, untimed
    optimizer.zero_grad()
    start = time.perf_counter()
    for terrain, depths, change in DataLoader(train_set, batch_size=batch, shuffle=True):
        optimizer.zero_grad()
        F.l1_loss(model(terrain, depths), change).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for terrain, depths, change in DataLoader(val_set, batch_size=batch):
            F.l1_loss(model(terrain, depths), change)
    return time.perf_counter() - start


def bare_epoch_times(arch: str, train, val, *, batch: int, lr: float, epochs: int) -> list[float]:
    """Epochs of a hand-written float32 loop over the same lazily sliced data."""
    torch.manual_seed(0)
    model = create_model(arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = EpochOrder(len(train), seed=0)
    train_loader = DataLoader(train, batch_size=batch, sampler=sampler)
    val_loader = DataLoader(val, batch_size=batch)
    times = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        model.train()
        for sample in train_loader:
            optimizer.zero_grad()
            loss = F.l1_loss(model(sample.terrain, sample.depths), sample.depth_change)
            loss.backward()
            optimizer.step()
            float(loss.detach())
        model.eval()
        with torch.no_grad():
            for sample in val_loader:
                float(F.l1_loss(model(sample.terrain, sample.depths), sample.depth_change))
        times.append(time.perf_counter() - start)
    return times


def fit_epoch_times(arch: str, train, val, *, batch: int, lr: float, epochs: int, out_dir: Path) -> list[float]:
    torch.manual_seed(0)
    result = fit(create_model(arch), train, val, out_dir=out_dir, epochs=epochs, lr=lr, batch_size=batch,
                 patience=epochs, progress="none")
    return result.history["epoch_time_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of fit and of the bare loop (median taken)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models or (["Arch_02"] if args.quick else ["Arch_04", "Arch_05"])
    n_train, n_val = (64, 32) if args.quick else (160, 64)
    lr = 1e-4
    print(f"floodlib training benchmark — epoch = train + validation pass, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}")
    all_ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = write_simulation(tmp / "plan.h5", synthetic_plan(256))
        dataset = PatchDataset([plan], spec=SampleSpec(), name="bench")
        if len(dataset) < n_train + n_val:
            raise SystemExit(f"the benchmark plan holds {len(dataset)} samples, fewer than {n_train + n_val}")
        train, val = dataset.subset(range(n_train), "train"), dataset.subset(range(n_train, n_train + n_val), "val")
        samples = n_train + n_val
        print(f"split: {n_train} training and {n_val} validation samples of one 256x256-cell plan\n")
        header = f"{'model':<10}{'reference/s':>13}{'bare loop/s':>13}{'fit/s':>9}{'fit vs ref':>12}{'fit vs bare':>13}"
        print(header)
        print("-" * len(header))
        for arch in models:
            reference = samples / reference_epoch_time(arch, train, val, batch=args.batch, lr=lr)
            bare = samples / statistics.median(bare_epoch_times(arch, train, val, batch=args.batch, lr=lr,
                                                                epochs=args.epochs))
            engine = samples / statistics.median(fit_epoch_times(arch, train, val, batch=args.batch, lr=lr,
                                                                 epochs=args.epochs, out_dir=tmp / arch))
            vs_reference, vs_bare = engine / reference, engine / bare
            ok = vs_reference >= TARGET_VS_REFERENCE and vs_bare >= 1 - TARGET_OVERHEAD
            all_ok &= ok
            print(f"{arch:<10}{reference:>13.1f}{bare:>13.1f}{engine:>9.1f}{vs_reference:>11.1f}x{vs_bare:>12.2f}x"
                  f"  {'ok' if ok else 'BELOW TARGET'}", flush=True)
    print(f"\ntargets: fit >= {TARGET_VS_REFERENCE:.0f}x the reference-style loop, and >= {1 - TARGET_OVERHEAD:.2f}x "
          "the bare loop (engine overhead within 10 %)")
    print("all figures reach their targets" if all_ok else "some figures are below their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
