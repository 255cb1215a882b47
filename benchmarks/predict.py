"""The surrogate's full-domain prediction against floodlib's own solver, on the same domain and the same
machine, side by side in one run: seconds per simulated hour, the accuracy of that hour, and their ratio.

For every size in ``--sizes`` one valley plan is simulated: the first plan of the smoke profile's valley
project (``--seed`` 7: its terrain seed and inflow hydrograph), on a square grid of that many 10 m cells
over 1 m terrain, with frames every ``gcd(--start-min, 60)`` minutes.

- **Solver** — floodlib's built-in simulator (landlab ``OverlandFlow``), single-threaded in a process of
  its own with OMP_NUM_THREADS=1 as the simulator runs its plans, twice on the same plan: to the start
  (``--start-min``) and to the start plus ``--hours``. Both runs take exactly the same time steps up to
  the start (the solver never steps past an output time, and the start is one), so the difference of
  their wall times is what the solver spends on the measured hours alone, without its set-up or the
  terrain's synthesis. The two runs' depths at the start are checked to be identical. The pair runs up to
  ``--solver-repeats`` times (3; fewer once a size's runs took a minute, so 512 x 512 runs once) and the
  fastest run of each length is kept, as the surrogate's fastest rollout is: a single pair at 96 x 96 gave
  1.0 to 1.8 s for the same hour on this shared machine.
- **Surrogate** — the model of ``--model`` (default: the smoke run's tuned Arch_04 from stage C, or from
  stage B when C did not keep it), rolled out with :func:`floodlib.predict.predict_plan` from the
  solver's depth at the start, one closed step of an hour per simulated hour, with the solver's depths on
  the domain's outer 2-cell ring at each hour's end as the boundary condition (what ``floodlib.predict``
  takes from a stored plan). Its terrain features are computed once per domain and reported on their
  own (the "ratio with features" charges them all to the measured hours); one untimed closure pass over
  a 32 x 32-cell corner warms the device up first. On CUDA the device is synchronised before every clock
  reading. Torch runs with the threads it takes by default; dry patches are not sent to the model, so
  the surrogate's cost follows the wet area while the solver's follows the whole grid.
- **Accuracy** — per hour, the full-domain RAE against the solver:
  sum |prediction - solver| / sum |solver - solver at the start| (the no-change prediction scores 1).

    python benchmarks/predict.py                          # 96 x 96 and 512 x 512 cells on CPU, ~5 minutes
    python benchmarks/predict.py --sizes 96                # the small domain alone, under a minute
    python benchmarks/predict.py --device cuda --json predict.json   # the surrogate on a GPU (solver on CPU)

A GPU node often lacks landlab (or should not spend its hours on a one-thread solver): record the solver's
runs on a CPU machine, then replay them beside the GPU. The record (HDF5, a few MB) holds the timings and
the depth frames; the 1 m terrain is rebuilt from the plan's seed and checked against the recorded one (its
SHA-256, or its cells within 1 mm where another numpy or CPU rounds the terrain's FFT differently). The
solver's figures are then those of the recording CPU, which the output names:

    python benchmarks/predict.py --save-solver solver.h5                             # on the CPU machine
    python benchmarks/predict.py --solver-from solver.h5 --device cuda --json gpu.json   # on the GPU node

The surrogate's rollout is timed ``--repeats`` times (3) and the fastest kept, and so is each of the
solver's two runs (``--solver-repeats``, 3) while a size's runs take under a minute in all; for 512 x 512
cells (5.12 km square, 28 times the cells of 96 x 96 at a similar number of time steps) the pair takes
about 1 and 2 minutes on one core, and runs once. The default run takes about 5 minutes.

Figures measured on 2 cores of an AMD EPYC (otherwise idle), float32, torch 2.13 on 2 threads, landlab
2.11, one hour from 60 min, 2026-12-07, with the tuned Arch_04 of that day's smoke run (6 layers, 16
channels, 3 attention blocks, alternating downsampler):

    cells      solver s/h  surrogate s/h  features s   ratio  with features  passes  patch preds   RAE
    96 x 96        1.37         0.100        0.084     13.72x      7.45x         2          46     0.953
    512 x 512     45.08         0.221        1.352    203.62x     28.65x         2          93     0.987

Five runs that day gave 11.4-16.1x at 96 x 96 (median 13.7x); the solver's hour there 1.37-1.77 s as the
fastest of three pairs, where single pairs had measured 1.0-2.2 s (and 9.1-13.5x over seven runs on
2026-11-28, with single pairs). ``--precision 32 bf16`` on the same CPU (AVX512-BF16): bf16 1.2-1.3x
slower than float32, the same passes and RAE. The medium profile's tuned Arch_04 (2 attention blocks;
``--model outputs/medium/C/models/Arch_04_tuned/model.pth --sizes 96``), 2026-11-27: 2.17 s against 0.15 s
(3 passes, 82 patch predictions), 14.2x, RAE 0.865. The surrogate's time is 80 % the attention blocks'
fused kernel (``scaled_dot_product_attention`` over 1,024 positions; 6x faster here than the explicit
scores).

On a GPU, 2026-11-28: one NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130) against those solver runs of the same
day on one core of the AMD EPYC (``--save-solver`` there, ``--solver-from`` on the GPU node), the same
model, tolerance and plans (terrain rebuilt bit for bit), network forwards replayed from CUDA graphs:

    precision  cells      solver s/h  surrogate s/h  features s     ratio  with features  graphs vs eager
    float32    96 x 96        1.21        0.010         0.105      121.3x       10.5x         2.47x
    float32    512 x 512     47.70        0.019         0.509     2545x         90.3x         1.54x
    bf16       96 x 96        1.21        0.006         0.169      210.7x        6.9x         3.44x
    bf16       512 x 512     47.70        0.010         0.492     4753x         95.0x         2.23x

The same closures, passes, patch predictions and RAE as on the CPU (0.953 and 0.987); the graphs' depths
differ from the eager forward's by at most 0.001 mm. The GPU target at 96 x 96 cells (>= 100x the solver
on CPU) is met, in float32 as in bf16. "features s" there includes capturing the graphs (one per batch
size, once per domain). Before the graphs, each kernel launched on its own, the same H100 took 0.019 s
(float32, 65x) and 0.022 s (bf16, 54x) at 96 x 96: the hour's 8 grid updates of a few patches each are
kernel launches, not arithmetic. The surrogate on that node's 16-core Xeon CPU took 0.049 s and 0.077 s
(24.8x and 623x the EPYC core's solver).

The same script on 2026-11-26 (another smoke run's tuned Arch_04 of the same shape,
on a machine of the same name that ran torch about twice as slowly and the solver faster) gave 1.64 s
against 0.32 s at 96 x 96 (3 passes, 59 patch predictions, 5.1x) and 73.9 s against 0.85 s at 512 x 512:
the ratio depends on the machine as much as on the model, so compare figures from one run only. With
other jobs on the 2 cores (load about 3) the surrogate's hour at 96 x 96 took 4.9 s (torch's two threads
wait on each other when another job holds a core) against the solver's 1.8 s: time it on an otherwise
idle machine.

At 96 x 96 cells the solver's hour is 1,928 time steps at about 1 ms each. At 512 x 512 the flood covers 2 %
of the domain after two hours, so the surrogate predicts only the wet patches while the solver steps every
cell. The same plan draw puts the inflow on the east edge there, 2.5 km from the channel and 68 m above it,
so the water runs down the 3 % valley wall: terrain the 96 x 96 training plans (960 m across, mostly
floodplain) never show, and the surrogate does no better than no change on it (RAE about 1.0). The smoke
model's RAE of 0.95 at 96 x 96 is its accuracy there too: fast, and barely better than no change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "outputs" / "smoke" / "C" / "models" / "Arch_04_tuned" / "model.pth"
# Stage C keeps the best four of A's ranking with Arch_04 replaced by B's tuned one, so a run's C may lack it;
# B always trains it (on the small split).
FALLBACK_MODEL = ROOT / "outputs" / "smoke" / "B" / "models" / "Arch_04_tuned" / "model.pth"
SMOKE_VALLEY_SEED = 7  # params/smoke.yaml: the valley project's seed
HOUR_S = 3600.0
TARGET_RATIO = {"cpu": 10.0, "cuda": 100.0}  # the issue's, at 96 x 96 cells; on a GPU against the solver on CPU
TARGET_SIZE = 96
PRECISION_NAMES = {"32": "float32", "bf16": "bf16"}
MIN_CELLS = 32  # one whole patch
RECORD_FORMAT = "floodlib predict benchmark solver runs 1"  # --save-solver's files
# What a recorded run keeps of its Simulation besides the arrays (the terrain is rebuilt, the depths stored).
RECORDED_FIELDS = ("project", "plan", "cell_size_m", "terrain_spacing_m", "output_interval_s", "source", "origin_x",
                   "origin_y", "crs", "event", "extra")
#: A size's solver pairs are repeated (--solver-repeats) until their runs have taken this long: at 96 x 96
#: cells the hour is a second or two, the difference of two runs that each vary by tenths of a second on a
#: shared machine; at 512 x 512 one pair takes minutes and varies by a few per cent.
SOLVER_BUDGET_S = 60.0
TERRAIN_TOLERANCE_M = 1e-3  # a rebuilt terrain's cells may differ from the recorded ones by rounding, not more


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def valley_plan(size: int, *, seed: int, start_s: float, end_s: float):
    """The first plan of the valley project of ``seed`` on ``size`` x ``size`` cells, frames at every
    multiple of ``gcd(start, 1 h)`` up to ``end_s`` (so the start and every hour after it are frames)."""
    from floodlib.data.simulate import ProjectSpec, plan_specs

    interval_s = 60.0 * math.gcd(int(round(start_s / 60)), int(HOUR_S / 60))
    project = ProjectSpec(name="valley", seed=seed, n_plans=1, rows=size, cols=size, duration_s=end_s,
                          output_interval_s=interval_s)
    return plan_specs(project)[0]


def solver_runs(spec, *, start_s: float, end_s: float, repeats: int = 1, budget_s: float = math.inf) -> dict:
    """Simulate ``spec`` to ``start_s`` and to ``end_s`` (in this process), timing each run: wall and CPU
    seconds. The pair is run up to ``repeats`` times, fewer once the runs so far took ``budget_s``; the
    fastest run of each length is kept (the solver is deterministic: every repeat takes the same steps)."""
    from floodlib.data.simulate import simulate_plan

    # Untimed: one simulated minute on 32 x 32 cells pays the solver's imports and first calls, which the
    # first timed run would otherwise carry alone.
    simulate_plan(dataclasses.replace(spec, rows=MIN_CELLS, cols=MIN_CELLS, duration_s=60.0, output_interval_s=60.0),
                  project="valley", plan="warm_up")
    start_frame = int(round(start_s / spec.output_interval_s))
    timings = {"to_start": [], "to_end": []}
    spent, identical = 0.0, True
    while not timings["to_end"] or (len(timings["to_end"]) < repeats and spent < budget_s):
        runs = {}
        for name, duration in (("to_start", start_s), ("to_end", end_s)):
            wall, cpu = time.perf_counter(), time.process_time()
            simulation = simulate_plan(dataclasses.replace(spec, duration_s=duration), project="valley", plan="plan_000")
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            runs[name] = simulation
            spent += timings[name][-1][0]
        short, long = runs["to_start"], runs["to_end"]
        identical &= bool(np.array_equal(short.water_depth[-1], long.water_depth[start_frame]))
    (short_s, short_cpu), (long_s, long_cpu) = (min(timings[name]) for name in ("to_start", "to_end"))
    steps = (long.extra["mass_balance"]["time_steps"], short.extra["mass_balance"]["time_steps"])
    return {
        "simulation": long,
        "start_frame": start_frame,
        "seconds_to_start": short_s,
        "seconds_to_end": long_s,
        "seconds": long_s - short_s,
        "cpu_seconds": long_cpu - short_cpu,
        "repeat_seconds": [[a[0], b[0]] for a, b in zip(timings["to_start"], timings["to_end"])],
        "time_steps": steps[0] - steps[1],
        "identical_start": identical,
        "mass_balance_relative_error": long.extra["mass_balance"]["relative_error"],
    }


def time_solver(spec, *, start_s: float, end_s: float, repeats: int, budget_s: float) -> dict:
    """:func:`solver_runs` in a process of its own started with OMP_NUM_THREADS=1, as the simulator's
    project runner starts its workers. Why not here: in this process the simulator's own one-thread setting
    does not keep OpenMP threads from spin-waiting on a busy machine (measured on 2 shared cores: the 2-hour
    96 x 96 plan took 42-81 s in-process, 8-12 s with OMP_NUM_THREADS=1 or OMP_WAIT_POLICY=PASSIVE), which
    would charge the solver for contention the pipeline's workers never have."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from floodlib.data.simulate.solver import environment_variables

    with environment_variables(OMP_NUM_THREADS="1"), \
            ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(solver_runs, spec, start_s=start_s, end_s=end_s, repeats=repeats, budget_s=budget_s).result()


def warm_up(model, terrain: np.ndarray, *, ratio: int, device: torch.device, precision: str) -> None:
    """One closure pass over the domain's top-left 32 x 32 cells: the device's one-off start-up costs
    (context, kernels, allocator) then fall outside the timed figures."""
    from floodlib.predict import DomainPredictor

    points = MIN_CELLS * ratio + 1
    corner = np.ascontiguousarray(terrain[:points, :points])
    predictor = DomainPredictor(model, corner, terrain_ratio=ratio, device=str(device), precision=precision,
                                max_iterations=1)
    depth = np.full((MIN_CELLS, MIN_CELLS), 0.1, dtype=np.float32)
    predictor.step(depth, np.full(depth.shape, np.nan, dtype=np.float32))
    synchronize(device)


def time_surrogate(model, simulation, *, start_s: float, hours: int, device: torch.device, precision: str,
                   tolerance_m: float, max_iterations: int, repeats: int) -> dict:
    """Build the predictor (its terrain features, timed) and roll out ``hours`` closed hours ``repeats``
    times; the fastest rollout's figures are kept. On CUDA, the same again without CUDA graphs."""
    from floodlib.predict import DomainPredictor, plan_start_frame, predict_plan

    depth_start = np.asarray(simulation.water_depth[plan_start_frame(simulation, start_s)], dtype=np.float32)

    def predictor(**options):
        return DomainPredictor(model, simulation.terrain, mask=np.isnan(depth_start),
                               terrain_ratio=simulation.terrain_ratio, device=str(device), precision=precision,
                               tolerance_m=tolerance_m, max_iterations=max_iterations, **options)

    def rollouts(chosen) -> tuple[object, list[float]]:
        """The fastest of ``repeats`` rollouts with ``chosen`` and the wall time of each."""
        best, walls = None, []
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            rollout = predict_plan(model, simulation, start_s=start_s, steps=hours, delta_t_s=HOUR_S, predictor=chosen)
            synchronize(device)
            walls.append(time.perf_counter() - started)
            if best is None or walls[-1] < min(walls[:-1]):
                best = rollout
        return best, walls

    warm_up(model, np.asarray(simulation.terrain), ratio=simulation.terrain_ratio, device=device, precision=precision)
    synchronize(device)
    started = time.perf_counter()
    built = predictor()
    synchronize(device)
    feature_s = time.perf_counter() - started
    best, walls = rollouts(built)
    figures = {"rollout": best, "feature_seconds": feature_s, "seconds": min(walls), "repeat_seconds": walls}
    if device.type == "cuda":
        # The same rollouts without CUDA graphs: what the graphs save, and that they change nothing.
        eager, eager_walls = rollouts(predictor(static_batches=False))
        figures["eager_seconds"] = min(eager_walls)
        figures["eager_max_difference_m"] = float(np.nanmax(np.abs(eager.depths - best.depths)))
    return figures


def hour_rae(predicted: np.ndarray, truth: np.ndarray, truth_start: np.ndarray) -> float:
    """sum |predicted - truth| / sum |truth - truth_start| over the cells inside the model's area."""
    inside = np.isfinite(truth) & np.isfinite(truth_start)
    error = np.abs(predicted[inside].astype(np.float64) - truth[inside]).sum()
    change = np.abs(truth[inside].astype(np.float64) - truth_start[inside]).sum()
    return float(error / change) if change > 0 else math.inf


def measured_span(args) -> tuple[float, float]:
    """The measured hours' start and end, s."""
    return args.start_min * 60.0, args.start_min * 60.0 + args.hours * HOUR_S


def solve(size: int, args) -> dict:
    """:func:`time_solver` on the benchmark's plan of ``size`` x ``size`` cells."""
    start_s, end_s = measured_span(args)
    print(f"{size} x {size} cells: solver ...", end=" ", flush=True)
    solver = time_solver(valley_plan(size, seed=args.seed, start_s=start_s, end_s=end_s), start_s=start_s, end_s=end_s,
                         repeats=args.solver_repeats, budget_s=SOLVER_BUDGET_S)
    pairs = len(solver["repeat_seconds"])
    print(f"{solver['seconds_to_start']:.1f} s to the start, {solver['seconds_to_end']:.1f} s to the end"
          + (f" (the fastest of {pairs} runs each)" if pairs > 1 else ""), flush=True)
    return solver


class RecordError(ValueError):
    """A file of recorded solver runs (``--solver-from``) that cannot stand in for the solver's runs here."""


def save_solver_runs(path: Path, runs: dict[int, dict], args) -> None:
    """Write the solver's runs of every size to ``path`` (HDF5, atomically) for ``--solver-from``: their
    timings, the plan's depth frames (compressed) and what the terrain must be rebuilt to — its SHA-256 and
    its cell elevations — but not the 1 m terrain itself (105 MB at 512 x 512 cells), which the plan's spec
    and seed rebuild exactly."""
    import h5py
    import landlab

    from floodlib.data.store import atomic_write
    from floodlib.data.terrain import cell_elevation
    from floodlib.environment import environment

    def write(temporary: str) -> None:
        with h5py.File(temporary, "w") as h5:
            h5.attrs.update({"format": RECORD_FORMAT, "seed": args.seed, "start_min": args.start_min,
                             "hours": args.hours, "landlab": landlab.__version__,
                             "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                             "environment": json.dumps(environment())})
            for size, solver in sorted(runs.items()):
                simulation = solver["simulation"]
                group = h5.create_group(str(size))
                group.create_dataset("water_depth", data=np.asarray(simulation.water_depth, dtype=np.float32),
                                     compression="gzip", shuffle=True)
                group.create_dataset("cell_elevation",
                                     data=cell_elevation(simulation.terrain).astype(np.float32))
                meta = {name: getattr(simulation, name) for name in RECORDED_FIELDS}
                figures = {key: value for key, value in solver.items() if key != "simulation"}
                group.attrs.update({"simulation": json.dumps(meta), "solver": json.dumps(figures),
                                    "terrain_sha256": terrain_digest(simulation.terrain)})

    atomic_write(path, write)


def terrain_digest(terrain: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(terrain, dtype=np.float32).tobytes()).hexdigest()


def read_solver_runs(path: Path, args) -> tuple[dict[int, dict], dict]:
    """The solver's runs recorded in ``path`` by ``--save-solver`` for every size of ``args.sizes``, each
    with its plan rebuilt as a :class:`Simulation` (the terrain made again from the plan's spec and checked
    against the recorded one), and the file's description of where they ran. RecordError names what does not
    match this run's arguments or floodlib's plan."""
    import h5py

    from floodlib.data.store import Simulation
    from floodlib.data.terrain import cell_elevation, make_terrain

    start_s, end_s = measured_span(args)
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise RecordError(f"{path}: cannot be read as solver runs recorded by --save-solver ({error})") from None
    with h5:
        attrs = dict(h5.attrs)
        if attrs.get("format") != RECORD_FORMAT:
            raise RecordError(f"{path}: format: {attrs.get('format')!r}; expected {RECORD_FORMAT!r}, a file "
                              "written by this script's --save-solver")
        for name in ("seed", "start_min", "hours"):
            if int(attrs[name]) != getattr(args, name):
                raise RecordError(f"{path}: {name}: {int(attrs[name])} recorded, but --{name.replace('_', '-')} "
                                  f"{getattr(args, name)} asked; pass --{name.replace('_', '-')} {int(attrs[name])} "
                                  "or record the runs again")
        missing = sorted(set(args.sizes) - {int(size) for size in h5})
        if missing:
            raise RecordError(f"{path}: no runs of {', '.join(map(str, missing))} cells a side; it holds "
                              f"{', '.join(sorted(h5, key=int)) or 'none'} (pass those to --sizes)")
        runs = {}
        for size in sorted(set(args.sizes)):
            group = h5[str(size)]
            spec = valley_plan(size, seed=args.seed, start_s=start_s, end_s=end_s)
            meta = json.loads(group.attrs["simulation"])
            if json.dumps(meta["extra"].get("plan_spec"), sort_keys=True) != json.dumps(spec.to_dict(), sort_keys=True):
                raise RecordError(f"{path}: {size}/plan_spec: the recorded plan is not the one this floodlib makes for "
                                  f"seed {args.seed}; record the runs again with this floodlib")
            print(f"{size} x {size} cells: terrain ...", end=" ", flush=True)
            terrain = make_terrain(spec.terrain, rows=spec.rows, cols=spec.cols, seed=spec.terrain_seed).elevation
            if terrain_digest(terrain) == group.attrs["terrain_sha256"]:
                print("rebuilt, identical to the solver's", flush=True)
            else:  # another numpy, scipy or CPU may round the terrain's FFT differently in the last bit
                gap = float(np.max(np.abs(cell_elevation(terrain) - group["cell_elevation"][()])))
                if not gap <= TERRAIN_TOLERANCE_M:
                    raise RecordError(f"{path}: {size}/cell_elevation: the rebuilt terrain's cells lie up to "
                                      f"{gap:.3g} m from the solver's; expected within {TERRAIN_TOLERANCE_M * 1000:g} mm")
                print(f"rebuilt, its cells within {gap * 1000:.2g} mm of the solver's (not bit for bit)", flush=True)
            solver = json.loads(group.attrs["solver"])
            solver["simulation"] = Simulation(terrain=terrain, water_depth=group["water_depth"][()], **meta)
            runs[size] = solver
    described = json.loads(attrs["environment"])
    return runs, {"cpu": described.get("cpu", "?"), "landlab": str(attrs["landlab"]),
                  "recorded": str(attrs["recorded"]), "environment": described}


def measure(size: int, model, args, device: torch.device, solver: dict, precision: str) -> dict:
    start_s, end_s = measured_span(args)
    spec = valley_plan(size, seed=args.seed, start_s=start_s, end_s=end_s)
    solver = dict(solver)
    simulation, frame0 = solver.pop("simulation"), solver.pop("start_frame")
    print(f"{size} x {size} cells: surrogate ({PRECISION_NAMES[precision]}) ...", end=" ", flush=True)
    surrogate = time_surrogate(model, simulation, start_s=start_s, hours=args.hours, device=device,
                               precision=precision, tolerance_m=args.tolerance_mm / 1000.0,
                               max_iterations=args.max_iterations, repeats=args.repeats)
    rollout = surrogate.pop("rollout")
    print(f"{surrogate['seconds']:.1f} s", flush=True)
    per_frame = int(round(HOUR_S / simulation.output_interval_s))
    truth_start = np.asarray(simulation.water_depth[frame0])
    hours = []
    for k, step in enumerate(rollout.steps):
        truth = np.asarray(simulation.water_depth[frame0 + (k + 1) * per_frame])
        hours.append({
            "hour": k + 1,
            "seconds": step.seconds,
            "closure_passes": len(step.residuals),
            "converged": bool(step.converged),
            "last_ring_change_m": float(step.residuals[-1]),
            "relaxation": float(step.relaxation),
            "patches_predicted": int(step.patches_predicted),
            "rae": hour_rae(rollout.depths[k + 1], truth, truth_start),
            "wet_fraction": float(np.mean(truth > 1e-3)),
        })
    solver_per_hour = solver["seconds"] / args.hours
    surrogate_per_hour = surrogate["seconds"] / args.hours
    with_features = (surrogate["seconds"] + surrogate["feature_seconds"]) / args.hours
    return {
        "size": size,
        "precision": precision,
        "rows": size,
        "cols": size,
        "plan": spec.to_dict(),
        "start_s": start_s,
        "hours": args.hours,
        "solver": {**solver, "seconds_per_hour": solver_per_hour},
        "surrogate": {**surrogate, "seconds_per_hour": surrogate_per_hour,
                      "seconds_per_hour_with_features": with_features, "per_hour": hours},
        "ratio": solver_per_hour / surrogate_per_hour,
        "ratio_with_features": solver_per_hour / with_features,
    }


def print_table(rows: list[dict], device_type: str) -> None:
    several = len({row["precision"] for row in rows}) > 1
    label = lambda row: f"{row['size']} x {row['size']}" + (f" {PRECISION_NAMES[row['precision']]}" if several else "")
    width = max(9, *(len(label(row)) for row in rows))
    header = (f"{'cells':>{width}} {'solver s/h':>11} {'surrogate s/h':>14} {'features s':>11} {'ratio':>8} "
              f"{'with features':>14} {'passes':>7} {'patch preds':>12} {'RAE':>6} {'wet %':>6}")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        hours = row["surrogate"]["per_hour"]
        passes = np.mean([hour["closure_passes"] for hour in hours])
        patches = np.mean([hour["patches_predicted"] for hour in hours])
        print(f"{label(row):>{width}} {row['solver']['seconds_per_hour']:11.2f} "
              f"{row['surrogate']['seconds_per_hour']:14.3f} "
              f"{row['surrogate']['feature_seconds']:11.3f} {row['ratio']:7.2f}x {row['ratio_with_features']:13.2f}x "
              f"{passes:7.3g} {patches:12,.0f} {hours[-1]['rae']:6.3f} {100 * hours[-1]['wet_fraction']:6.1f}")
    if len(rows[0]["surrogate"]["per_hour"]) > 1:
        print("(passes and patch predictions: means per hour; RAE and wet cells: the last hour)")
    print()
    sizes_told = set()
    for row in rows:
        solver = row["solver"]
        if row["size"] not in sizes_told:
            sizes_told.add(row["size"])
            print(f"{row['size']} x {row['size']}: solver {solver['time_steps']:,} time steps in the measured hour(s), "
                  f"CPU time {solver['cpu_seconds']:.2f} s ({solver['seconds_to_start']:.1f} s to the start, "
                  f"{solver['seconds_to_end']:.1f} s to the end"
                  + (", the fastest of " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in solver["repeat_seconds"])
                     if len(solver.get("repeat_seconds", ())) > 1 else "") + "; "
                  f"start depths of both runs {'identical' if solver['identical_start'] else 'DIFFERENT'}; mass "
                  f"balance {solver['mass_balance_relative_error']:+.3%})")
            if solver["seconds"] <= 0:
                print("  the solver's two runs differ by no time: the machine's load drowned the measured hours; rerun")
        print(f"{label(row)}: surrogate rollouts " + ", ".join(f"{s:.3f}" for s in row["surrogate"]["repeat_seconds"])
              + " s")
        if "eager_seconds" in row["surrogate"]:
            eager = row["surrogate"]["eager_seconds"]
            print(f"  without CUDA graphs (each kernel launched on its own): {eager:.3f} s, so the graphs' rollout is "
                  f"{eager / row['surrogate']['seconds']:.2f}x faster; their depths differ by at most "
                  f"{1000 * row['surrogate']['eager_max_difference_m']:.3g} mm")
        for hour in row["surrogate"]["per_hour"]:
            state = "converged" if hour["converged"] else "NOT converged"
            if hour["relaxation"] < 1:
                state += f", damped to {hour['relaxation']:.2g}"
            print(f"  hour {hour['hour']}: {hour['seconds']:.3f} s, {hour['closure_passes']} closure pass(es) "
                  f"({state}, last ring change {1000 * hour['last_ring_change_m']:.3g} mm), "
                  f"{hour['patches_predicted']:,} patch predictions, RAE {hour['rae']:.3f}, "
                  f"{100 * hour['wet_fraction']:.1f} % of cells wet")
    target = TARGET_RATIO[device_type]
    at_target = [row for row in rows if row["size"] == TARGET_SIZE]
    if not at_target:
        print(f"\ntarget at {TARGET_SIZE} x {TARGET_SIZE} cells on {device_type.upper()}: >= {target:g}x the solver on "
              f"CPU -> not measured (add {TARGET_SIZE} to --sizes)")
    for row in at_target:
        print(f"\ntarget at {TARGET_SIZE} x {TARGET_SIZE} cells on {device_type.upper()}"
              + (f" in {PRECISION_NAMES[row['precision']]}" if several else "")
              + f": >= {target:g}x the solver on CPU -> {row['ratio']:.2f}x (with features "
              f"{row['ratio_with_features']:.2f}x): {'met' if row['ratio'] >= target else 'NOT met'}", end="")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Solver seconds per hour: (wall time of a run to the start plus --hours) "
                                            "minus (wall time of a run to the start), divided by --hours; each the "
                                            "fastest of --solver-repeats runs.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 512],
                        help="square domains, cells a side (default 96 512)")
    parser.add_argument("--model", type=Path,
                        help=f"a model checkpoint (default: {DEFAULT_MODEL.relative_to(ROOT)}, written by `make run`; "
                             f"{FALLBACK_MODEL.relative_to(ROOT)} when stage C did not keep the tuned Arch_04)")
    parser.add_argument("--start-min", type=int, default=60, help="the measured hours start here, minutes (default 60)")
    parser.add_argument("--hours", type=int, default=1, help="simulated hours measured (default 1)")
    parser.add_argument("--seed", type=int, default=SMOKE_VALLEY_SEED,
                        help=f"the valley project's seed (default {SMOKE_VALLEY_SEED}, the smoke profile's)")
    parser.add_argument("--device", default="cpu", help="where the surrogate runs: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=tuple(PRECISION_NAMES), nargs="+", default=["32"],
                        help="the network body's precision, or several side by side (default 32; on the 2-core EPYC "
                             "below, with AVX512-BF16, bf16 was 1.2-1.3x slower than float32)")
    parser.add_argument("--tolerance-mm", type=float, default=1.0, help="closure stops below this ring change (1 mm)")
    parser.add_argument("--max-iterations", type=int, default=20, help="closure passes per hour at most (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="surrogate rollouts timed; the fastest is kept (3)")
    parser.add_argument("--solver-repeats", type=int, default=3,
                        help="the solver's pair of runs is timed up to this many times, the fastest run of each kept "
                             f"(default 3; no more once a size's runs took {SOLVER_BUDGET_S:g} s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--save-solver", type=Path, metavar="FILE.h5",
                        help="also write the solver's runs (timings and depths) to this file, for --solver-from")
    parser.add_argument("--solver-from", type=Path, metavar="FILE.h5",
                        help="take the solver's runs from a file of --save-solver instead of running the solver "
                             "(a machine without landlab, e.g. a GPU node: the solver's figures stay those of the "
                             "CPU that recorded them)")
    args = parser.parse_args(argv)
    if args.save_solver and args.solver_from:
        parser.error("--save-solver and --solver-from: the runs are either made here and saved, or read")

    if min(args.sizes) < MIN_CELLS:
        parser.error(f"--sizes {' '.join(map(str, args.sizes))}: a domain needs at least {MIN_CELLS} cells a side "
                     "(one whole patch)")
    if min(args.start_min, args.hours, args.repeats, args.solver_repeats) < 1:
        parser.error("--start-min, --hours, --repeats and --solver-repeats must be >= 1 (the solver's hour is the difference of a run "
                     "to the start and a run past it)")
    if args.model is None:
        args.model = FALLBACK_MODEL if not DEFAULT_MODEL.exists() and FALLBACK_MODEL.exists() else DEFAULT_MODEL
    if not args.model.exists():
        print(f"error: {args.model}: no such model checkpoint. `make run` trains the smoke profile and writes "
              f"stage C's tuned Arch_04 to {DEFAULT_MODEL.relative_to(ROOT)}; or pass --model PATH to another "
              "model.pth", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this torch build sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    if device.type not in TARGET_RATIO:
        print(f"error: --device {args.device}: expected cpu or cuda[:N]", file=sys.stderr)
        return 2

    recorded, solver_machine = {}, None
    if args.solver_from is not None:
        try:
            recorded, solver_machine = read_solver_runs(args.solver_from, args)
        except RecordError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        landlab_version = solver_machine["landlab"]
    else:
        import landlab

        landlab_version = landlab.__version__

    from floodlib.models.checkpoints import CheckpointError, load_model

    try:
        model = load_model(args.model, device=device)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    learnt = (model.trained_on or {}).get("delta_t_s")
    if learnt is not None and abs(learnt - HOUR_S) > 1e-6:
        # The figures are of speed: an hour's closed step costs the same whichever lead time the weights learnt.
        print(f"note: {args.model} learnt to predict {learnt / 60:g} min ahead; it is stepped an hour for the "
              "timings, so the RAE below means nothing")
        model.trained_on = None
    from floodlib.environment import cpu_name

    processor = cpu_name()
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else processor
    threads = torch.get_num_threads()
    solver_cpu = solver_machine["cpu"] if solver_machine else processor
    print("floodlib full-domain prediction benchmark: the surrogate against floodlib's solver, same plan, "
          + (f"the solver's runs recorded on {solver_machine['recorded']} ({args.solver_from})" if solver_machine
             else "same machine"))
    print(f"CPU: {processor} ({platform.machine()}, {os.cpu_count()} logical cores)")
    print(f"solver: landlab {landlab_version} OverlandFlow on CPU, 1 thread (a process of its own with "
          "OMP_NUM_THREADS=1, as the simulator runs its plans)"
          + (f", on {solver_cpu} ({solver_machine['environment'].get('cpu_count', '?')} logical cores)"
             if solver_machine else ""))
    print(f"surrogate: {model.arch} from {args.model} on {device} ({accelerator}), precision {' and '.join(map(PRECISION_NAMES.get, args.precision))}, "
          f"torch {torch.__version__} with {threads} CPU threads (its default); closure tolerance "
          f"{args.tolerance_mm:g} mm, at most {args.max_iterations} passes")
    print(f"plan: the valley project of seed {args.seed} (first plan), {args.hours} simulated hour(s) from "
          f"{args.start_min} min; solver s/h = (run to {args.start_min + 60 * args.hours} min - run to "
          f"{args.start_min} min) / {args.hours}; RAE = sum|surrogate - solver| / sum|solver - solver at the start|",
          flush=True)

    from floodlib.data.simulate import SimulationFailedError

    rows, runs = [], {}
    for size in sorted(set(args.sizes)):
        try:
            runs[size] = recorded[size] if recorded else solve(size, args)
        except SimulationFailedError as error:  # one size's plan failing its mass balance leaves the others
            print(f"\n{size} x {size} cells skipped: the solver failed: {error}", flush=True)
            continue
        rows.extend(measure(size, model, args, device, runs[size], precision) for precision in args.precision)
    if not rows:
        print("error: no size was measured; try another --seed or --start-min", file=sys.stderr)
        return 1
    print_table(rows, device.type)
    if args.save_solver:
        save_solver_runs(args.save_solver, runs, args)
        print(f"the solver's runs written to {args.save_solver} (--solver-from reads them)")
    if args.json:
        from floodlib.data.store import atomic_json

        atomic_json({"cpu": processor, "device": str(device), "device_name": accelerator,
                     "precisions": args.precision, "torch": torch.__version__, "landlab": landlab_version,
                     "solver_cpu": solver_cpu, "solver_recorded": solver_machine["recorded"] if solver_machine else None,
                     "solver_threads": 1, "surrogate_threads": threads, "model": str(args.model), "arch": model.arch,
                     "seed": args.seed, "start_min": args.start_min, "hours": args.hours,
                     "tolerance_mm": args.tolerance_mm, "max_iterations": args.max_iterations,
                     "solver_timing": "wall time of a run to the start plus the hours minus that of a run to the start, "
                                      "each the fastest of the size's repeat_seconds",
                     "sizes": rows}, args.json)
        print(f"figures written to {args.json}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
