"""GPU throughput of every architecture, side by side in one run (under 5 minutes on one GPU).

Per architecture (alternating downsampler, batch 300, train step = forward, L1, backward, Adam):

- model alone: samples/s of train steps on tensors already on the GPU, float32 and bf16 autocast;
- fit: samples/s of ``floodlib.training.fit`` (bf16, batches cut on the GPU) over an epoch of a synthetic
  split (a training pass and a small validation pass, counted as the training samples over the epoch's
  wall time), its ratio to the model alone in bf16 (the target is >= 0.8), and its peak GPU memory;
- loader: samples/s of the batches alone — floodlib's ``BatchLoader`` (device placement) against a
  ``DataLoader`` over the same ``PatchDataset`` (per-sample slicing and collation on the CPU).

Then Arch_08's train step with its bicubic upsampling computed by ``F.interpolate`` and by two matrix
products (float32 and bf16), the alternating downsampler alone in float32 and bf16, and, when the
pipeline's packages are installed and ``--profile`` names a run folder with its data already prepared,
each stage's wall time of that run.

    python benchmarks/gpu.py                               # figures of the models, fit and loaders
    python benchmarks/gpu.py --run-dir outputs/tiny        # ... and the stage times of that prepared run

Figures measured, newest first.

NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, Lightning 2.6.6, 2026-11-26 (terrain path in float32 under
autocast; 3,025 training samples):

    loader: BatchLoader (device) 544,783 samples/s; DataLoader per sample 4,773 samples/s; ratio 114.1x
    arch      alone fp32  alone bf16   fit bf16 fit/alone  peak GiB
    Arch_02       12,736      19,363     17,552      0.91      3.50
    Arch_03       23,244      24,116     21,587      0.90      3.68
    Arch_04        7,366      15,636     14,566      0.93      3.71
    Arch_05       10,193      13,743     12,772      0.93      4.18
    Arch_07       17,748      19,268     17,826      0.93      3.61
    Arch_08       16,399      17,239     15,892      0.92      3.71
    Arch_09       22,835      22,306     20,368      0.91      3.84
    Arch_08 train step: fp32 interpolate 3,155, matrices 16,387 (5.19x); bf16 3,188, 17,244 (5.41x)
    alternating downsampler alone: fp32 27,615, bf16 25,088 (0.91x): hence float32 under autocast
    fit Arch_02 with placement="host" (pinned, prefetched): 5,936 samples/s (device placement 15,738)

The same card, same day, with the downsampler in bf16 under autocast: fit/alone 0.89-0.92, Arch_02 alone
bf16 17,788; the tiny profile's stages (data prepared): A 34 s, B 24 s, C 24 s, D 40 s, 122 s in all.
Before this work (an H200): fit ran at 2,125-2,963 samples/s for every architecture, 11-67 % of the
model alone, and Arch_08's step at 3,230.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import synthetic_plan  # noqa: E402

from floodlib.data.batches import BatchLoader, EpochOrder  # noqa: E402
from floodlib.data.dataset import PatchDataset  # noqa: E402
from floodlib.data.samples import SampleSpec  # noqa: E402
from floodlib.data.store import write_simulation  # noqa: E402
from floodlib.models import create_model, list_models  # noqa: E402
from floodlib.training import fit  # noqa: E402

BATCH = 300
# A snapshot every 10 minutes over 128x128-cell plans: about 260 samples per plan from one simulation.
SPEC = SampleSpec(snapshot_times_s=tuple(float(t) for t in range(0, 13200, 600)), delta_t_s=3600.0)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_alone(arch: str, *, bf16: bool, steps: int, device: torch.device, configure=None) -> float:
    """Train steps per second x batch on random inputs already on the device."""
    torch.manual_seed(0)
    model = create_model(arch).to(device).train()
    if configure is not None:
        configure(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    terrain = 380 + torch.randn(BATCH, 1, 321, 321, device=device).cumsum(-1) * 0.05
    depths = torch.rand(BATCH, 2, 32, 32, device=device)
    target = 0.1 * torch.randn(BATCH, 1, 32, 32, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.l1_loss(model(terrain, depths).float(), target)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return steps * BATCH / (time.perf_counter() - start)


def make_split(folder: Path, plans: int) -> tuple[PatchDataset, PatchDataset]:
    files = []
    for k in range(plans):
        path = folder / f"plan_{k:02d}.h5"
        if not path.exists():
            write_simulation(path, synthetic_plan(128, seed=k))
        files.append(path)
    return (PatchDataset(files[:-1], spec=SPEC, name="bench_train", memory_map=False),
            PatchDataset(files[-1:], spec=SPEC, name="bench_val", memory_map=False))


def loader_rate(loader, limit: int | None = None) -> float:
    iterator = iter(loader)
    next(iterator)  # first batch: moves the split, untimed
    synchronize()
    count, start = 0, time.perf_counter()
    for k, batch in enumerate(iterator):
        count += len(batch.depths)
        if limit and k + 1 >= limit:
            break
    synchronize()
    return count / (time.perf_counter() - start)


def fit_rate(arch: str, train, val, out_dir: Path, *, epochs: int) -> tuple[float, float]:
    """(training samples per second of wall time, from the 2nd epoch on; peak GPU memory, GiB)."""
    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = fit(create_model(arch), train, val, out_dir=out_dir, epochs=epochs, lr=1e-4, batch_size=BATCH,
                 patience=epochs, progress="none", precision="auto", resume=False)
    times = result.history["epoch_time_s"][1:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return len(train) / statistics.median(times), peak


def stage_times(run_dir: Path, timeout: float) -> None:
    try:
        import papermill  # noqa: F401
    except ImportError:
        print("\nstage times: skipped (papermill is not installed here)")
        return
    params = run_dir / "params.yaml"
    if not params.exists():
        print(f"\nstage times: skipped ({params} does not exist)")
        return
    print(f"\nstage times of {run_dir} (data already prepared):", flush=True)
    started = time.perf_counter()
    log = run_dir / "pipeline.log"
    offset = log.stat().st_size if log.exists() else 0
    try:
        done = subprocess.run([sys.executable, "-m", "floodlib.pipeline", str(params), "--run-dir", str(run_dir)],
                              timeout=timeout, capture_output=True, text=True)
        print(done.stdout[-3000:], done.stderr[-3000:] if done.returncode else "", sep="\n")
    except subprocess.TimeoutExpired:
        print(f"  stopped after {timeout:.0f} s")
    if log.exists():
        print(log.read_text()[offset:])
    print(f"  whole pipeline: {time.perf_counter() - started:.1f} s")


def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="*", default=list_models())
    parser.add_argument("--plans", type=int, default=12, help="synthetic 128x128 plans (one of them validates)")
    parser.add_argument("--epochs", type=int, default=3, help="fit epochs per architecture (the first is warm-up)")
    parser.add_argument("--steps", type=int, default=20, help="timed model-alone steps")
    parser.add_argument("--run-dir", type=Path, help="a prepared run folder whose stages to time")
    parser.add_argument("--stage-timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--batch", type=int, default=300, help="batch size (300 as in the reference)")
    args = parser.parse_args()
    BATCH = args.batch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no GPU)"
    print(f"{card}; torch {torch.__version__}; batch {BATCH}", flush=True)
    figures: dict = {"card": card, "torch": torch.__version__, "archs": {}}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        train, val = make_split(folder / "data", args.plans)
        print(f"synthetic split: {len(train)} training and {len(val)} validation samples", flush=True)
        device_loader = BatchLoader(train, batch_size=BATCH, device=device, shuffle=True)
        # The batches cut on the device are the DataLoader's samples, exactly.
        indices = device_loader.batch_indices()[0][:64]
        cut = device_loader.split.batch(indices.to(device))
        for field, values in zip(cut._fields, cut):
            expected = torch.stack([getattr(train[int(i)], field) for i in indices])
            if not torch.equal(values.cpu(), expected):
                raise SystemExit(f"batches cut on {device} differ from PatchDataset in {field}")
        loader_device = loader_rate(device_loader)
        per_sample = torch.utils.data.DataLoader(train, batch_size=BATCH, sampler=EpochOrder(len(train)))
        loader_host = loader_rate(per_sample, limit=4)
        print(f"loader: BatchLoader ({device_loader.placement}) {loader_device:,.0f} samples/s; "
              f"DataLoader per sample {loader_host:,.0f} samples/s; ratio {loader_device / loader_host:.1f}x\n",
              flush=True)
        figures["loader"] = {"batch_loader": loader_device, "dataloader": loader_host,
                             "placement": device_loader.placement}

        header = f"{'arch':8s} {'alone fp32':>11s} {'alone bf16':>11s} {'fit bf16':>10s} {'fit/alone':>9s} {'peak GiB':>9s}"
        print(header + "\n" + "-" * len(header), flush=True)
        for arch in args.archs:
            fp32 = model_alone(arch, bf16=False, steps=args.steps, device=device)
            bf16 = model_alone(arch, bf16=True, steps=args.steps, device=device)
            rate, peak = fit_rate(arch, train, val, folder / "fit", epochs=args.epochs)
            figures["archs"][arch] = {"alone_fp32": fp32, "alone_bf16": bf16, "fit": rate, "peak_gib": peak}
            print(f"{arch:8s} {fp32:11,.0f} {bf16:11,.0f} {rate:10,.0f} {rate / bf16:9.2f} {peak:9.2f}", flush=True)

        def interpolate(model):
            for module in model.modules():
                if hasattr(module, "reference") and type(module).__name__ == "BicubicUpsample2x":
                    module.reference = True

        print("\nArch_08 train step, samples/s: F.interpolate vs matrix products", flush=True)
        arch08 = {}
        for bf16 in (False, True):
            old = model_alone("Arch_08", bf16=bf16, steps=args.steps, device=device, configure=interpolate)
            new = model_alone("Arch_08", bf16=bf16, steps=args.steps, device=device)
            arch08["bf16" if bf16 else "fp32"] = {"interpolate": old, "matrices": new}
            print(f"  {'bf16' if bf16 else 'fp32'}: interpolate {old:,.0f}  matrices {new:,.0f}  ratio {new / old:.2f}x",
                  flush=True)
        figures["arch08"] = arch08

        print("\nalternating downsampler alone (forward + backward), samples/s:", flush=True)
        downsampler = create_model("Arch_02").downsampler.to(device)
        terrain = torch.randn(BATCH, 1, 321, 321, device=device, requires_grad=False)
        rates = {}
        for bf16 in (False, True):
            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = downsampler(terrain)
                out.float().sum().backward()
            for _ in range(3):
                step()
            synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronize()
            rates["bf16" if bf16 else "fp32"] = args.steps * BATCH / (time.perf_counter() - start)
        print(f"  fp32 {rates['fp32']:,.0f}  bf16 {rates['bf16']:,.0f}  ratio {rates['bf16'] / rates['fp32']:.2f}x")
        figures["downsampler"] = rates

    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.run_dir:
        stage_times(args.run_dir, args.stage_timeout)


if __name__ == "__main__":
    main()
