"""The benchmark scripts run and print their tables (figures are read by people, not asserted here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_model_benchmark_prints_both_settings_side_by_side():
    result = subprocess.run(
        [sys.executable, "benchmarks/models.py", "--quick", "--models", "Arch_02", "--no-memory"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("Arch_02"))
    params, megabytes, fast, slow, ratio = re.match(
        r"Arch_02\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", row
    ).groups()
    assert params == "101,266"
    assert float(megabytes) > 0.4  # 101,266 float32 weights
    # The figures are printed to 0.1: the ratio lies within what the rounded samples-per-second allow.
    fast, slow, ratio = float(fast), float(slow), float(ratio)
    assert (fast - 0.05) / (slow + 0.05) - 0.05 <= ratio <= (fast + 0.05) / max(slow - 0.05, 1e-9) + 0.05
    assert any(line.startswith("alternating downsampler") for line in lines)
    # small batches: figures, but no verdict against targets set for other batches
    assert "BELOW TARGET" not in result.stdout and "reach their targets" not in result.stdout
    assert lines[-1] == "quick run: a smoke check of the benchmark, not a measurement against its targets"


def test_evaluation_benchmark_prints_one_pass_against_per_split(tiny_run):
    result = subprocess.run([sys.executable, "benchmarks/evaluation.py", "--run", str(tiny_run), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    row = next(line for line in result.stdout.splitlines() if line.startswith("evaluate every model"))
    fast, slow, ratio = map(float, re.search(r"([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", row).groups())
    assert fast > 0 and slow > 0 and abs(slow / fast - ratio) < 0.05 * ratio + 0.01


def test_gpu_benchmark_runs_on_cpu_and_prints_its_table():
    """The GPU benchmark's every section, on this CPU with tiny sizes (its figures mean something on a GPU)."""
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--archs", "Arch_09", "--plans", "2", "--epochs", "2", "--steps", "1",
         "--batch", "4"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    lines = result.stdout.splitlines()
    alone32, alone16, fitted, ratio, _ = re.match(
        r"Arch_09\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+(nan|[\d.]+)",
        next(line for line in lines if line.startswith("Arch_09"))).groups()
    fitted, alone16 = float(fitted.replace(",", "")), float(alone16.replace(",", ""))
    assert fitted > 0 and alone16 > 0 and float(alone32.replace(",", "")) > 0
    # The rates print as whole samples/s: the ratio agrees with them up to that rounding.
    assert (fitted - 0.5) / (alone16 + 0.5) - 0.01 <= float(ratio) <= (fitted + 0.5) / (alone16 - 0.5) + 0.01
    assert any(line.startswith("loader: BatchLoader (host)") for line in lines)
    assert any("interpolate" in line and "matrices" in line for line in lines)


def test_training_benchmark_prints_fit_beside_the_reference_and_bare_loops():
    result = subprocess.run([sys.executable, "benchmarks/training.py", "--quick", "--epochs", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    row = next(line for line in result.stdout.splitlines() if line.startswith("Arch_02"))
    reference, bare, fitted, vs_reference, vs_bare = map(float, re.match(
        r"Arch_02\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)x", row).groups())
    assert min(reference, bare, fitted) > 0
    assert abs(fitted / reference - vs_reference) < 0.05 * vs_reference + 0.1
    assert abs(fitted / bare - vs_bare) < 0.05 * vs_bare + 0.01


def test_data_scaling_benchmark_trains_nested_subsets_and_scores_the_held_out_splits(tiny_run, tmp_path):
    figures = tmp_path / "scaling.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/data_scaling.py", str(tiny_run), "--sizes", "4", "2", "--steps", "2",
         "--batch-size", "2", "--val-samples", "3", "--accelerator", "cpu", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    import json

    report = json.loads(figures.read_text())
    rows = report["rows"]
    assert [row["size"] for row in rows] == [2, 4]  # sorted, each trained
    # The same number of steps for every size: 2 steps of 2 are 2 epochs of 2 samples, 1 epoch of 4.
    assert [row["epochs"] for row in rows] == [2, 1]
    for row in rows:
        for split in ("big_test", "test_projects"):  # tiny holds a project out: both held-out splits scored
            assert row[split]["samples"] > 0 and 0 < row[split]["pooled_rae"] < 10
    table = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["2"], ["4"])]
    assert len(table) == 2
    assert all(abs(float(line[3]) - row["val_rae"]) <= 0.0005 + 1e-9 for line, row in zip(table, rows))
    assert "big_test: pooled RAE" in result.stdout and "test_projects: pooled RAE" in result.stdout


def test_data_scaling_benchmark_refuses_sizes_the_pool_cannot_give(tiny_run):
    result = subprocess.run([sys.executable, "benchmarks/data_scaling.py", str(tiny_run), "--sizes", "100000"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "fewer than 100000" in result.stderr and "patch_stride_cells" in result.stderr


def test_ring_blend_benchmark_trains_each_fraction_from_stage_a_and_scores_patches_and_rollouts(tiny_run, tmp_path):
    import json

    figures = tmp_path / "blend.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/ring_blend.py", str(tiny_run), "--arch", "Arch_02", "--fractions", "1", "0",
         "--epochs", "1", "--start-min", "0", "--hours", "1", "--accelerator", "cpu", "--jobs", "2", "--threads", "1",
         "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(figures.read_text())
    assert report["start_weights"] == str(tiny_run / "A" / "models" / "Arch_02" / "model.pth")
    rows = report["rows"]
    assert [row["fraction"] for row in rows] == [0.0, 1.0]  # sorted, each trained
    from floodlib.runs import open_run, splits

    held_out = splits(open_run(tiny_run), ["big_test", "test_projects"])
    plans = sum(len(split.files) for split in held_out.values())  # every held-out plan, one 1-hour step each
    assert plans > 0
    for row in rows:
        for split in ("big_test", "test_projects"):
            assert 0 < row[split] < 10
        rollout = row["rollout"]
        assert rollout["plans"] == plans and rollout["steps"] == plans
        assert 0 <= rollout["converged_within_20_fraction"] <= 1 and list(rollout["pooled_rae_by_step"]) == ["1"]
    # Same start, same batches (each fraction in its own process): they differ only in the rings they trained on.
    assert rows[0]["val_rae"] != rows[1]["val_rae"]
    table = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert len(table) == 2 and float(table[0][1]) == pytest.approx(rows[0]["val_rae"], abs=5e-4)


def test_predict_benchmark_times_the_surrogate_against_the_solver_with_its_accuracy(tiny_run, tmp_path):
    """One simulated hour of a 32 x 32-cell valley by the solver and by the tiny run's tuned Arch_04 (trained
    for 20 minutes ahead; the benchmark steps an hour, which is all its speed figures need)."""
    import json
    import math

    model = tiny_run / "C" / "models" / "Arch_04_tuned" / "model.pth"
    if not model.exists():  # tiny's stage C keeps its best four; stage B always trains the tuned Arch_04
        model = tiny_run / "B" / "models" / "Arch_04_tuned" / "model.pth"
    figures, record = tmp_path / "predict.json", tmp_path / "solver.h5"
    result = subprocess.run(
        [sys.executable, "benchmarks/predict.py", "--sizes", "32", "--start-min", "10", "--model", str(model),
         "--json", str(figures), "--save-solver", str(record)], cwd=ROOT, capture_output=True, text=True, timeout=600,
        check=True)
    report = json.loads(figures.read_text())
    assert report["solver_cpu"] == report["cpu"] and report["solver_recorded"] is None
    assert report["arch"] == "Arch_04" and report["solver_threads"] == 1 and report["surrogate_threads"] >= 1
    (row,) = report["sizes"]
    assert (row["size"], row["hours"], row["start_s"]) == (32, 1, 600.0)
    solver, surrogate = row["solver"], row["surrogate"]
    # The solver's hour is the difference of its two runs, which took the same steps up to the start.
    assert solver["identical_start"] and solver["time_steps"] > 0
    assert 0 < solver["seconds_to_start"] < solver["seconds_to_end"]
    assert abs(solver["seconds_per_hour"] - (solver["seconds_to_end"] - solver["seconds_to_start"])) < 1e-9
    # The pair of runs is repeated (3 by default, well within the time budget on 32 x 32 cells): the fastest
    # run of each length is kept.
    assert len(solver["repeat_seconds"]) == 3
    assert solver["seconds_to_start"] == min(pair[0] for pair in solver["repeat_seconds"])
    assert solver["seconds_to_end"] == min(pair[1] for pair in solver["repeat_seconds"])
    assert report["precisions"] == ["32"] and row["precision"] == "32"
    assert surrogate["feature_seconds"] > 0 and surrogate["seconds_per_hour"] > 0
    assert abs(surrogate["seconds_per_hour_with_features"]
               - (surrogate["seconds_per_hour"] + surrogate["feature_seconds"])) < 1e-9
    assert math.isclose(row["ratio"], solver["seconds_per_hour"] / surrogate["seconds_per_hour"], rel_tol=1e-9)
    assert math.isclose(row["ratio_with_features"],
                        solver["seconds_per_hour"] / surrogate["seconds_per_hour_with_features"], rel_tol=1e-9)
    (hour,) = surrogate["per_hour"]
    assert 1 <= hour["closure_passes"] <= report["max_iterations"] and hour["patches_predicted"] >= 1
    assert 0 < hour["seconds"] <= surrogate["seconds_per_hour"]
    assert math.isfinite(hour["rae"]) and hour["rae"] >= 0 and 0 < hour["wet_fraction"] <= 1
    assert "learnt to predict 20 min ahead; it is stepped an hour for the timings" in result.stdout
    # The printed row carries the same figures, side by side.
    table_row = re.compile(r"\s*32 x 32\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)x")
    match = next(filter(None, map(table_row.match, result.stdout.splitlines())))
    solver_s, surrogate_s, _, ratio, with_features = map(float, match.groups())
    assert abs(solver_s - solver["seconds_per_hour"]) <= 0.005 + 1e-9
    assert abs(surrogate_s - surrogate["seconds_per_hour"]) <= 0.005 + 1e-9
    assert abs(ratio - row["ratio"]) <= 0.005 + 1e-9
    assert abs(with_features - row["ratio_with_features"]) <= 0.005 + 1e-9
    assert "1 thread" in result.stdout and f"{report['surrogate_threads']} CPU threads" in result.stdout

    # On a machine without landlab (a GPU node) the recorded runs stand in for the solver's: the same plan,
    # its terrain rebuilt bit for bit, the same depths, hence the same solver figures and the same accuracy.
    no_landlab = tmp_path / "no_landlab"
    (no_landlab / "landlab").mkdir(parents=True)
    (no_landlab / "landlab" / "__init__.py").write_text("raise ImportError('landlab is not installed here')\n")
    replayed_figures = tmp_path / "replayed.json"
    replayed = subprocess.run(
        [sys.executable, "benchmarks/predict.py", "--sizes", "32", "--start-min", "10", "--model", str(model),
         "--repeats", "1", "--precision", "32", "bf16", "--json", str(replayed_figures), "--solver-from", str(record)],
        cwd=ROOT,
        capture_output=True, text=True, timeout=300, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(no_landlab), os.environ.get("PYTHONPATH")]))})
    assert "32 x 32 cells: terrain ... rebuilt, identical to the solver's" in replayed.stdout
    again = json.loads(replayed_figures.read_text())
    assert again["solver_recorded"] and again["landlab"] == report["landlab"] and again["solver_cpu"] == report["cpu"]
    # Both precisions side by side, each against the same solver runs: one row, one verdict each.
    row_again, row_bf16 = again["sizes"]
    assert (row_again["precision"], row_bf16["precision"]) == ("32", "bf16") and again["precisions"] == ["32", "bf16"]
    assert row_again["solver"] == row_bf16["solver"] == solver
    assert row_again["surrogate"]["per_hour"][0]["rae"] == pytest.approx(hour["rae"], rel=1e-5)
    assert row_bf16["surrogate"]["per_hour"][0]["rae"] == pytest.approx(hour["rae"], abs=0.05)
    assert re.search(r"^\s*32 x 32 float32\s+[\d.]+", replayed.stdout, re.M)
    assert re.search(r"^\s*32 x 32 bf16\s+[\d.]+", replayed.stdout, re.M)
    assert replayed.stdout.count("time steps in the measured hour(s)") == 1  # the solver's runs, told once
    # A record of another plan is refused, naming the file, the field and both values.
    refused = subprocess.run(
        [sys.executable, "benchmarks/predict.py", "--sizes", "32", "--start-min", "20", "--model", str(model),
         "--solver-from", str(record)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"error: {record}: start_min: 10 recorded, but --start-min 20 asked; pass "
                                      "--start-min 10 or record the runs again")
    refused = subprocess.run(
        [sys.executable, "benchmarks/predict.py", "--sizes", "32", "48", "--start-min", "10", "--model", str(model),
         "--solver-from", str(record)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no runs of 48 cells a side; it holds 32" in refused.stderr


def test_predict_benchmark_names_a_missing_model_and_the_command_that_makes_it(tmp_path):
    missing = tmp_path / "no_run" / "model.pth"
    result = subprocess.run([sys.executable, "benchmarks/predict.py", "--sizes", "32", "--model", str(missing)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert str(missing) in result.stderr and "make run" in result.stderr
