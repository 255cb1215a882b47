"""Stage D's cost on a finished run: the whole evaluation notebook against its target, and the one pass
over every plan that stage D makes against evaluating each split on its own, side by side in one run.

    python benchmarks/evaluation.py                      # outputs/smoke (run `make run` first)
    python benchmarks/evaluation.py --run outputs/paper  # another run folder
    python benchmarks/evaluation.py --quick              # skip the notebook, time the library only

The notebook is run on a copy of the run's stage folders (its data linked), so the run itself is untouched.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_STAGE_D_S = 180.0


def copy_run(run_dir: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    (target / "data").symlink_to(run_dir.resolve() / "data", target_is_directory=True)
    shutil.copy(run_dir / "params.yaml", target / "params.yaml")
    for stage in ("A", "B", "C"):
        shutil.copytree(run_dir / stage, target / stage, ignore=shutil.ignore_patterns("*.ipynb", "*.html", "trials"))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(ROOT / "outputs" / "smoke"), help="a run folder with stages A-C done")
    parser.add_argument("--quick", action="store_true", help="time the library only, not the notebook")
    args = parser.parse_args()
    run_dir = Path(args.run)
    if not (run_dir / "C" / "summary.json").exists():
        print(f"{run_dir}: no finished stage C; run `make run` (or the pipeline on this profile) first", file=sys.stderr)
        return 1

    from floodlib.evaluation import evaluate_dataset, evaluate_models, run_models
    from floodlib.pipeline import stages

    run = stages.open_run(run_dir)
    models = run_models(run_dir, ["C"], context=["A", "B"])
    datasets = stages.splits(run)
    samples = sum(len(d) for d in datasets.values())
    start = time.perf_counter()
    evaluate_models(models, datasets, device="cpu", log=None)
    one_pass = time.perf_counter() - start
    start = time.perf_counter()
    for entry in models:
        for dataset in datasets.values():
            evaluate_dataset(entry.model, dataset, device="cpu")
    per_split = time.perf_counter() - start

    print(f"run {run_dir}: {len(models)} models, {len(datasets)} splits, {samples} split samples")
    print(f"{'':44s}{'floodlib':>12s}{'per split':>12s}{'ratio':>9s}")
    print(f"{'evaluate every model on every split (s)':44s}{one_pass:12.1f}{per_split:12.1f}{per_split / one_pass:8.2f}x")
    if not args.quick:
        with tempfile.TemporaryDirectory() as folder:
            copy = copy_run(run_dir, Path(folder) / "run")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "floodlib.pipeline", str(copy / "params.yaml"), "--run-dir",
                            str(copy), "--only", "D"], check=True, capture_output=True, text=True)
            stage_d = time.perf_counter() - start
        print(f"{'':44s}{'floodlib':>12s}{'target':>12s}{'ratio':>9s}")
        print(f"{'stage D notebook, whole (s)':44s}{stage_d:12.1f}{TARGET_STAGE_D_S:12.1f}"
              f"{stage_d / TARGET_STAGE_D_S:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
