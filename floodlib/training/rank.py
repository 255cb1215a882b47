"""One rank of a data-parallel ``fit``, other than global rank 0: ``python -m floodlib.training.rank JOB.json``.

:func:`floodlib.training.launch.local_ranks` (this machine) and :func:`floodlib.training.launch.serve` (the
other machines) start it; the job file holds the initial weights, the splits and the ``fit`` settings.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from floodlib.data.locks import exit_with_parent
from floodlib.models.checkpoints import load_model
from floodlib.training.fitting import PlateauSchedule, fit
from floodlib.training.launch import ready_marker, split_from_description


def run_rank(job_path: str | Path) -> None:
    """One rank other than global rank 0 of a data-parallel ``fit`` started by :func:`local_ranks` or :func:`serve`."""
    exit_with_parent()  # rank 0's process killed: this rank ends too, instead of waiting on it
    job = json.loads(Path(job_path).read_text())
    model = load_model(job["model"])
    settings = dict(job["fit"])
    if settings.get("plateau") is not None:
        settings["plateau"] = PlateauSchedule(**settings["plateau"])
    train, val = split_from_description(job["train"]), split_from_description(job["val"])
    ready_marker(Path(job_path).parent, int(os.environ.get("NODE_RANK", 0)),
                  int(os.environ.get("LOCAL_RANK", 0))).write_text("")
    fit(model, train, val, **settings)



if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m floodlib.training.rank JOB.json (started by floodlib, one per rank)")
    run_rank(sys.argv[1])
