"""The benchmark scripts run and print their tables (figures are read by people, not asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    assert abs(float(fast) / float(slow) - float(ratio)) < 0.1
    assert any(line.startswith("alternating downsampler") for line in lines)


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
