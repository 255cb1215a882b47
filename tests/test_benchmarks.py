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
