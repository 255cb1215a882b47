"""Data figures, side by side in one run: the built-in simulator (time of a 128x128-cell plan, mass balance
of every plan of a smoke-sized project), batches of the smoke data set's splits assembled at once
(``BatchLoader``, the path ``fit`` takes on CPU) against a DataLoader slicing and collating sample by
sample, patch extraction against a reference-style per-sample materialisation, and the Dataset's
delivery rate to a DataLoader.

    python benchmarks/data.py            # the figures (a few minutes)
    python benchmarks/data.py --quick    # a smoke run on smaller plans

Reference-style extraction (implemented here as the baseline, the way the published reference pipeline
does it): the whole depth series read as float64, a float64 copy of every terrain and depth patch,
90-degree turns by spline rotation (``scipy.ndimage.rotate``), every sample kept in a list and pickled.
floodlib: one pass over the snapshot frames builds an index; samples are sliced from the per-plan arrays
on demand (exact flips, float32), so nothing per sample is written to disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from floodlib.data.batches import BatchLoader, EpochOrder
from floodlib.data.dataset import PatchDataset, SplitSpec, discover_plans, split_plans
from floodlib.data.samples import INDEX_DTYPE, SampleSpec, cut_sample, index_plan
from floodlib.data.simulate import Hydrograph, PlanSpec, simulate_plan, simulate_project
from floodlib.data.store import Simulation, read_simulation, write_simulation
from floodlib.data.terrain import ValleyParams
from floodlib.pipeline.config import load_profile
from floodlib.pipeline.stages import project_spec

SMOKE_PROFILE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"

TARGET_EXTRACTION_SPEEDUP = 20.0
TARGET_BYTES_FRACTION = 0.25
TARGET_LOADER_RATE = 2000.0
TARGET_SIMULATION_S = 30.0
TARGET_BATCHED_VS_LOADER = 1.0


def synthetic_plan(cells: int, *, minutes: int = 280, seed: int = 0) -> Simulation:
    """A plan of ``cells`` x ``cells`` 10 m cells with 1 m terrain and a depth frame every 60 s: a flood
    wave spreading over a sloping valley (analytic, so extraction is timed without running the solver)."""
    rng = np.random.default_rng(seed)
    points = cells * 10 + 1
    y, x = np.mgrid[0:points, 0:points] / 10.0
    terrain = (100.0 + 0.002 * 10 * x + 0.5 * np.sin(y / 17.0) + 0.05 * rng.standard_normal((points, points)))
    rows = np.arange(cells)[:, None]
    cols = np.arange(cells)[None, :]
    frames = minutes + 1
    depth = np.empty((frames, cells, cells), dtype=np.float32)
    for t in range(frames):
        front = cells * (0.2 + 0.8 * t / frames)
        depth[t] = np.clip(1.5 * (1 - (cols / front)) + 0.3 * np.cos(rows / 9.0), 0, None) + 0.01 * (t % 7)
    return Simulation(project="bench", plan=f"plan_{cells}", terrain=terrain.astype(np.float32), water_depth=depth,
                      cell_size_m=10.0, terrain_spacing_m=1.0, output_interval_s=60.0, source="benchmark")


def reference_extraction(path: Path, spec: SampleSpec, out: Path) -> int:
    """The reference's way: float64 copies, spline rotations, a pickled list of per-sample arrays."""
    import h5py
    from scipy import ndimage

    with h5py.File(path, "r") as h5:
        depth_series = h5["water_depth"][()].astype(np.float64)  # the whole series, as float64
        terrain = h5["terrain"][()].astype(np.float64)
        interval = float(h5.attrs["output_interval_s"])
    size, ratio = spec.patch_cells, spec.terrain_ratio
    samples = []
    for k, time_s in enumerate(spec.snapshot_times_s):
        frame = int(round(time_s / interval))
        next_frame = int(round((time_s + spec.delta_t_s) / interval))
        start = size // 2 if k % 2 else 0
        cells = depth_series.shape[1]
        for row in range(start, cells - size + 1, size):
            for col in range(start, cells - size + 1, size):
                now = np.array(depth_series[frame, row:row + size, col:col + size], dtype=np.float64)
                later = np.array(depth_series[next_frame, row:row + size, col:col + size], dtype=np.float64)
                if now.sum() + later.sum() < spec.dry_threshold_m:
                    continue
                patch = np.array(terrain[row * ratio:(row + size) * ratio + 1, col * ratio:(col + size) * ratio + 1],
                                 dtype=np.float64)
                arrays = [patch, now, later]
                if k % 4 == 1:
                    arrays = [ndimage.rotate(np.flipud(a), 90, reshape=False, order=3) for a in arrays]
                elif k % 4 == 2:
                    arrays = [ndimage.rotate(np.fliplr(a), 180, reshape=False, order=3) for a in arrays]
                elif k % 4 == 3:
                    arrays = [np.fliplr(a).copy() for a in arrays]
                patch, now, later = arrays
                ring = later.copy()
                ring[spec.ring_cells:-spec.ring_cells, spec.ring_cells:-spec.ring_cells] = 0
                samples.append({"terrain": patch, "depths": np.stack([ring, now]), "target": later - now})
    with open(out, "wb") as handle:
        pickle.dump(samples, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return len(samples)


def floodlib_extraction(path: Path, spec: SampleSpec) -> int:
    """floodlib's way: index the plan, then slice every sample (what a training epoch does)."""
    simulation = read_simulation(path, memory_map=True)
    entries = index_plan(simulation, spec).entries
    terrain, depth = np.asarray(simulation.terrain), np.asarray(simulation.water_depth)
    for entry in entries:
        cut_sample(terrain, depth, entry, spec)
    return len(entries)


def best_of(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def loader_rate(dataset: PatchDataset, *, batch: int, workers: int, samples: int) -> float:
    """Samples/s a shuffled DataLoader delivers, over as many epochs as it takes to see ``samples``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0),
                                         persistent_workers=workers > 0)
    next(iter(loader))  # workers started, files opened
    seen, start = 0, time.perf_counter()
    while seen < samples:
        for item in loader:
            seen += len(item.depths)
            if seen >= samples:
                break
    return seen / (time.perf_counter() - start)


def simulator_figures(tmp: Path, *, quick: bool) -> tuple[bool, Path]:
    """Time one 128x128-cell, 280-minute plan; simulate a smoke-sized project and list every mass balance."""
    cells = 64 if quick else 128
    spec = PlanSpec(terrain=ValleyParams(), hydrograph=Hydrograph(peak_discharge_m3s=120.0, time_to_peak_s=2400.0,
                                                                   duration_s=9000.0),
                    rows=cells, cols=cells, terrain_seed=1)
    start = time.perf_counter()
    simulation = simulate_plan(spec, project="bench", plan="timed")
    seconds = time.perf_counter() - start
    minutes = (simulation.water_depth.shape[0] - 1) * simulation.output_interval_s / 60
    ok = cells < 128 or seconds <= TARGET_SIMULATION_S
    print(f"built-in simulator: one {cells}x{cells}-cell plan ({cells * 10 + 1}x{cells * 10 + 1} terrain), "
          f"{minutes:.0f} simulated minutes: {seconds:.1f} s (target <= {TARGET_SIMULATION_S:.0f} s for 128x128) "
          f"{verdict(ok)}; mass error {100 * simulation.extra['mass_balance']['relative_error']:+.2f} %")
    # The smoke profile's own data set (what `make run` simulates); --quick takes its first 4 plans.
    profile = load_profile(SMOKE_PROFILE)
    errors, seconds, described = [], 0.0, []
    for config in profile.data.simulate:
        project = project_spec(config, terrain_dir=tmp / "terrain")
        if quick:
            project = dataclasses.replace(project, n_plans=min(4, project.n_plans))
        start = time.perf_counter()
        paths = simulate_project(project, tmp / "projects", workers=profile.data.workers, progress=False)
        seconds += time.perf_counter() - start
        errors += [read_simulation(p, memory_map=True).extra["mass_balance"]["relative_error"] for p in paths]
        described.append(f"{project.name}: {project.n_plans} plans of {project.rows}x{project.cols} cells")
    worst = max(abs(e) for e in errors)
    print(f"the smoke data set ({'; '.join(described)}; {profile.data.workers} workers): {seconds:.1f} s; "
          f"mass errors {', '.join(f'{100 * e:+.2f}' for e in errors)} %")
    print(f"  worst |mass error| {100 * worst:.2f} % (target <= 1 %) {verdict(worst <= 0.01)}")
    return ok and worst <= 0.01, tmp / "projects"


def epoch_rate(loader, repeats: int = 3) -> float:
    """Samples/s over whole epochs (median of ``repeats``; a first epoch opens the files, untimed)."""
    for _ in loader:
        pass
    rates = []
    for _ in range(repeats):
        seen, start = 0, time.perf_counter()
        for batch in loader:
            seen += len(batch.depths)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def batched_figures(data_dir: Path, *, quick: bool) -> bool:
    """Each split of the smoke data set: BatchLoader (host placement, as fit on CPU) vs a DataLoader over
    the PatchDataset with the same sampler, at the smoke profile's batch sizes (16, and 8 for Arch_07 and
    Arch_08), the target's; and, for information, at the reference's 300, where both paths spend most of their
    time faulting in a fresh batch buffer of ~120 MB (a GPU run cuts such batches on the device, or into
    pinned host memory that PyTorch keeps allocated)."""
    profile = load_profile(SMOKE_PROFILE)
    plans = discover_plans(data_dir)
    if quick:  # 4 plans per project: too few for the profile's splits; one split of them all
        splits = {"all plans": [p for files in plans.values() for p in files]}
    else:
        splits = split_plans(plans, SplitSpec(**profile.data.splits))
        splits = {name: splits[name] for name in ("small_train", "small_val", "big_train", "big_test")}
    print("\nbatches of the smoke data set's splits, samples/s: assembled at once (BatchLoader) vs per sample "
          "+ collate (DataLoader, 0 workers)")
    ok = True
    for name, files in splits.items():
        dataset = PatchDataset(files, spec=SampleSpec(), name=name)
        for batch in (8, 16, 300):
            loader = epoch_rate(torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=EpochOrder(len(dataset))))
            batched = epoch_rate(BatchLoader(dataset, batch_size=batch, shuffle=True))
            ratio = batched / loader
            target = f"(target >= {TARGET_BATCHED_VS_LOADER:.1f}x) {verdict(ratio >= TARGET_BATCHED_VS_LOADER)}"
            if batch != 300:
                ok &= ratio >= TARGET_BATCHED_VS_LOADER
            print(f"  {name:12s} ({len(dataset):4d} samples) batch {batch:3d}: DataLoader {loader:7.0f}   "
                  f"BatchLoader {batched:7.0f}   ratio {ratio:5.2f}x {target if batch != 300 else '(no target)'}")
    return ok


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller plans: a smoke run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = 128 if args.quick else 256
    spec = SampleSpec()
    print(f"floodlib data benchmark — {os.cpu_count()} CPUs, torch threads {args.threads}")
    all_ok = True

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print()
        simulated_ok, projects = simulator_figures(tmp, quick=args.quick)
        all_ok &= simulated_ok
        all_ok &= batched_figures(projects, quick=args.quick)
        plan_path = write_simulation(tmp / "plan.h5", synthetic_plan(cells))
        pickle_path = tmp / "reference_samples.pkl"
        slow, n_slow = best_of(lambda: reference_extraction(plan_path, spec, pickle_path), 1)
        fast, n_fast = best_of(lambda: floodlib_extraction(plan_path, spec), 3)
        speedup = slow / fast
        reference_bytes = pickle_path.stat().st_size / n_slow
        index_bytes = INDEX_DTYPE.itemsize
        store_bytes = plan_path.stat().st_size / n_fast
        print(f"\npatch extraction, one {cells}x{cells}-cell plan ({n_fast} samples; reference kept {n_slow}):")
        print(f"  reference-style {slow:8.2f} s   floodlib {fast:8.3f} s   speed-up {speedup:6.1f}x "
              f"(target >= {TARGET_EXTRACTION_SPEEDUP:.0f}x) {verdict(speedup >= TARGET_EXTRACTION_SPEEDUP)}")
        fraction = index_bytes / reference_bytes
        print(f"  bytes on disk per sample: reference pickle {reference_bytes:,.0f}; floodlib sample index "
              f"{index_bytes} (ratio {fraction:.1e}, target <= {TARGET_BYTES_FRACTION}) "
              f"{verdict(fraction <= TARGET_BYTES_FRACTION)}")
        print(f"  (the plan's store file, which also holds every 60 s frame of the simulation, is "
              f"{store_bytes:,.0f} bytes per sample, {store_bytes / reference_bytes:.2f} of the pickle)")
        all_ok &= speedup >= TARGET_EXTRACTION_SPEEDUP and fraction <= TARGET_BYTES_FRACTION

        dataset = PatchDataset([plan_path], spec=spec, name="bench")
        print(f"\nDataset -> DataLoader, batch 64, shuffled ({len(dataset)} samples):")
        rates = {}
        for workers in (0, 2):
            rates[workers] = statistics.median(
                loader_rate(dataset, batch=64, workers=workers, samples=4096) for _ in range(3))
            print(f"  {workers} worker processes: {rates[workers]:8.0f} samples/s")
        best = max(rates, key=rates.get)
        ok = rates[best] >= TARGET_LOADER_RATE
        all_ok &= ok
        print(f"  best ({best} workers): {rates[best]:.0f} samples/s (target >= {TARGET_LOADER_RATE:.0f}) {verdict(ok)}")

    print("\nall figures reach their targets" if all_ok else "\nsome figures are below their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
