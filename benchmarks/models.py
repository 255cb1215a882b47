"""Training-step throughput, size and peak memory of every seed architecture: floodlib's defaults side by
side with the reference settings, in one run.

floodlib's defaults: float32, the matrix-product alternating-stride convolution, fused attention.
Reference settings: float64, the block-wise (unfold/permute) alternating-stride convolution and the
explicit (H*W) x (H*W) attention score matrix, raw terrain elevations — as the published reference runs.

A train step is forward, L1 loss on the depth change, backward and an Adam step. Throughput is the
median over several steps after a warm-up. Peak memory is measured in a fresh process per setting
(peak resident memory of that process above its size after start-up; on CUDA, peak allocated memory).

    python benchmarks/models.py            # the figures: batch 64, Arch_04 memory at batch 300 (~5 min)
    python benchmarks/models.py --quick    # a smoke run in under a minute (small batches)
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from floodlib.models import (
    PATCH_CELLS,
    TERRAIN_POINTS,
    create_downsampler,
    create_model,
    list_models,
    use_reference_layers,
)

TARGET_MODEL_RATIO = 3.0
TARGET_DOWNSAMPLER_RATIO = 8.0
TARGET_MEMORY_FRACTION = 0.25


@dataclass(frozen=True)
class Setting:
    name: str
    dtype: torch.dtype
    reference: bool


FLOODLIB = Setting("floodlib", torch.float32, reference=False)
REFERENCE = Setting("reference", torch.float64, reference=True)


def make_batch(batch: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Plausible inputs: terrain at survey elevations (m) with relief, depths up to a few metres."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 9, 9, generator=generator) * 2.0
    relief = F.interpolate(coarse, size=(TERRAIN_POINTS, TERRAIN_POINTS), mode="bicubic", align_corners=True)
    terrain = 380.0 + relief + 0.05 * torch.randn(batch, 1, TERRAIN_POINTS, TERRAIN_POINTS, generator=generator)
    depths = torch.rand(batch, 2, PATCH_CELLS, PATCH_CELLS, generator=generator) * 2.0
    depths[:, 0, 2:-2, 2:-2] = 0.0  # boundary ring only
    change = 0.1 * torch.randn(batch, 1, PATCH_CELLS, PATCH_CELLS, generator=generator)
    return [t.to(device=device, dtype=dtype) for t in (terrain, depths, change)]


def build(arch: str | None, setting: Setting, device: torch.device) -> torch.nn.Module:
    """The model (or the alternating downsampler alone when ``arch`` is None) in ``setting``."""
    torch.manual_seed(0)
    if arch is None:
        model = create_downsampler("alternating")
    else:
        model = create_model(arch, center_terrain=not setting.reference)
    use_reference_layers(model, setting.reference)
    return model.to(device=device, dtype=setting.dtype).train()


def train_step_fn(model: torch.nn.Module, arch: str | None, batch: int, setting: Setting, device: torch.device):
    terrain, depths, change = make_batch(batch, setting.dtype, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        prediction = model(terrain) if arch is None else model(terrain, depths)
        F.l1_loss(prediction, change).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def throughput(arch: str | None, setting: Setting, *, batch: int, warmup: int, steps: int, device: torch.device) -> float:
    """Median samples/s of a train step."""
    step = train_step_fn(build(arch, setting, device), arch, batch, setting, device)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def size_mb(model: torch.nn.Module) -> float:
    """Bytes of the float32 state dict as torch.save writes it, in MB."""
    buffer = io.BytesIO()
    torch.save(model.float().state_dict(), buffer)
    return buffer.tell() / 1e6


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _peak_memory_child(arch: str, setting: Setting, batch: int, threads: int, device_name: str, queue) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step = train_step_fn(build(arch, setting, device), arch, batch, setting, device)
        step()
        queue.put(torch.cuda.max_memory_allocated(device))
        return
    start = _rss_bytes()
    step = train_step_fn(build(arch, setting, device), arch, batch, setting, device)
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    queue.put(peak - start)


def peak_memory(arch: str, setting: Setting, *, batch: int, threads: int, device: torch.device) -> int:
    """Peak memory (bytes) of one train step, measured in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory_child, args=(arch, setting, batch, threads, str(device), queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"peak-memory measurement of {arch} ({setting.name}) exited with code {process.exitcode}")
    return queue.get()


def arch08_upsampling_step_times(*, batch: int, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of an Arch_08 train step (floodlib settings) with its decoder's bicubic x2
    upsampling computed by ``F.interpolate`` (the reference's way) and by matrix products (floodlib's).

    Both models hold the same weights and see the same (``batch``, ...) inputs; their steps alternate so
    that changing load on the machine affects both alike. Returns (interpolate, matrix products).
    """
    from floodlib.models.arch_08 import BicubicUpsample2x

    step_fns = []
    for interpolate in (True, False):
        model = build("Arch_08", FLOODLIB, device)
        for module in model.modules():
            if isinstance(module, BicubicUpsample2x):
                module.reference = interpolate
        step_fns.append(train_step_fn(model, "Arch_08", batch, FLOODLIB, device))
    times: list[list[float]] = [[], []]
    for index in range(warmup + steps):
        for step, recorded in zip(step_fns, times):
            start = time.perf_counter()
            step()
            if index >= warmup:
                recorded.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def verdict(ok: bool, quick: bool) -> str:
    """The figure against its target; none for a quick run, whose small batches are not what targets are set for."""
    if quick:
        return ""
    return "ok" if ok else "BELOW TARGET"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches and few steps: a smoke run under a minute")
    parser.add_argument("--batch", type=int, default=64, help="train-step batch size (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--memory-batch", type=int, default=300, help="batch of the Arch_04 peak-memory check (default 300)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory check")
    parser.add_argument("--models", nargs="*", default=None, help="architectures to run (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.memory_batch = 8, 2, 1, 32

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = args.models or list_models()
    print(f"floodlib model benchmark — train step (forward, L1 backward, Adam step), batch {args.batch}, "
          f"{args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print("floodlib = float32, fast layers; reference = float64, block-wise downsampler, materialised attention")
    if args.quick:
        print("(quick run: small batches; the figures below are a smoke check, not the targets' measurement)")
    header = f"{'model':<26}{'params':>12}{'MB':>8}{'floodlib/s':>12}{'reference/s':>13}{'ratio':>8}  target"
    print(header)
    print("-" * len(header))

    all_ok = True
    rows = [(name, name) for name in models] + [("alternating downsampler", None)]
    for label, arch in rows:
        model = build(arch, FLOODLIB, torch.device("cpu"))
        params = sum(p.numel() for p in model.parameters())
        megabytes = size_mb(model)
        fast = throughput(arch, FLOODLIB, batch=args.batch, warmup=args.warmup, steps=args.steps, device=device)
        slow = throughput(arch, REFERENCE, batch=args.batch, warmup=args.warmup, steps=max(1, args.steps // 2), device=device)
        ratio = fast / slow
        target = TARGET_DOWNSAMPLER_RATIO if arch is None else TARGET_MODEL_RATIO
        all_ok &= ratio >= target
        print(f"{label:<26}{params:>12,}{megabytes:>8.2f}{fast:>12.1f}{slow:>13.1f}{ratio:>7.1f}x  "
              f">= {target:.0f}x {verdict(ratio >= target, args.quick)}", flush=True)

    if "Arch_08" in models:
        interpolate, matrix = arch08_upsampling_step_times(batch=args.batch, warmup=args.warmup, steps=args.steps,
                                                           device=device)
        print(f"\nArch_08 train step (floodlib settings, batch {args.batch}), decoder bicubic x2 upsampling by "
              "F.interpolate (the reference's way) vs by matrix products:")
        print(f"{'':<26}{'interpolate ms':>16}{'matrix ms':>11}{'ratio':>8}")
        print(f"{'Arch_08 upsampling':<26}{interpolate * 1e3:>16.1f}{matrix * 1e3:>11.1f}"
              f"{interpolate / matrix:>7.2f}x", flush=True)

    if not args.no_memory and "Arch_04" in models:
        fast = peak_memory("Arch_04", FLOODLIB, batch=args.memory_batch, threads=args.threads, device=device)
        slow = peak_memory("Arch_04", REFERENCE, batch=args.memory_batch, threads=args.threads, device=device)
        fraction = fast / slow
        all_ok &= fraction <= TARGET_MEMORY_FRACTION
        print(f"\nArch_04 peak memory of a train step at batch {args.memory_batch}: floodlib {fast / 2**30:.2f} GiB, "
              f"reference {slow / 2**30:.2f} GiB, ratio {fraction:.3f} "
              f"(target <= {TARGET_MEMORY_FRACTION}) {verdict(fraction <= TARGET_MEMORY_FRACTION, args.quick)}")
    if args.quick:  # small batches measure other things than the targets are set for: no verdict on them
        print("\nquick run: a smoke check of the benchmark, not a measurement against its targets")
    else:
        print("\nall figures reach their targets" if all_ok else "\nsome figures are below their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
