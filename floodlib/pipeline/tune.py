"""Extra trial workers for a run's stage B search, e.g. on the machines of a cluster:

    python -m floodlib.pipeline.tune outputs/paper --workers 4

They join the study named by the run's ``params.yaml`` (section B, ``study_storage``) and run trials until it
holds ``trials`` finished ones, with those of stage B's own workers. See
:func:`floodlib.pipeline.tuning.run_tuning_worker`.
"""

from __future__ import annotations

import argparse
import sys

from floodlib.pipeline.config import ProfileError


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m floodlib.pipeline.tune",
                                     description="Run extra trial workers for a run's stage B Optuna search.")
    parser.add_argument("run_dir", help="the run folder (holds params.yaml and data/)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: must be at least 1")
    from floodlib.pipeline.tuning import run_tuning_worker

    try:
        ran = run_tuning_worker(args.run_dir, workers=args.workers)
    except (ProfileError, FileNotFoundError) as error:
        print(error, file=sys.stderr)
        return 2
    print(f"{ran} trial(s) run; the search of {args.run_dir} needs no more from this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
