"""Stage B's search with several worker processes on one study, and the guard on its storage URL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from floodlib.data.store import write_simulation
from floodlib.pipeline import ProfileError, load_profile, parameters_from_namespace
from floodlib.pipeline import stages, tuning
from floodlib.pipeline.runner import run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from training_job import growing_flood_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"


def small_profile(**stage_b) -> dict:
    """A profile over four synthetic plans written straight into the run's data folder (no simulation): the
    smallest data the splits accept, two plans to train on, one to validate on."""
    return {
        "name": "workers",
        "data": {"samples": {"snapshot_times_s": [0, 600], "delta_t_s": 600},
                 "splits": {"small_plans": 3, "test_plans": 1, "val_fraction": 0.34}},
        "B": {"trials": 4, "trial_epochs": 1, "epochs": 1, "batch_size": 8, "layers": [3, 4], "channels": [8],
              "attentions": [0, 1], "downsamplers": ["cubic"], "progress": "none", **stage_b},
    }


@pytest.fixture
def small_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    profile = tmp_path / "workers.yaml"
    profile.write_text(yaml.safe_dump(small_profile(workers=2)))
    stages.open_run(run_dir, profile)
    for k in range(4):
        write_simulation(run_dir / "data" / "growing" / f"plan_{k:03d}.h5", growing_flood_plan(k, cells=40, frames=3))
    return run_dir


def test_two_worker_processes_share_one_sqlite_study(small_run):
    import optuna

    run = stages.open_run(small_run)
    config = parameters_from_namespace("B", {**run.profile.B, "run_dir": str(small_run)})
    assert config.workers == 2 and config.trials == 4 and config.study_storage == ""
    data = stages.splits(run, ["small_train", "small_val"])
    study = tuning.tune_arch04(run, config, data["small_train"], data["small_val"])

    # Read back from the database alone, as another process would.
    stored = optuna.load_study(study_name=tuning.STUDY_NAME, storage=f"sqlite:///{small_run / 'B' / 'study.db'}")
    trials = stored.get_trials()
    assert len(trials) == 4  # exactly the configured total across both workers, none failed or left running
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers  # both workers ran trials
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)  # in processes of their own
    assert np.isfinite(stored.best_value) and stored.best_trial.number in range(4)
    assert tuning.best_configuration(study)["trial"] == stored.best_trial.number
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert (small_run / "B" / "models" / "trials" / f"{t.number:03d}" / "model.pth").exists()
    assert not (small_run / "B" / "checkpoints").exists()  # each worker's marker and the emptied folders gone

    # An extra worker (the cluster command) joining a finished search runs nothing.
    assert tuning.run_tuning_worker(small_run) == 0
    assert len(stored.get_trials()) == 4


def test_a_bad_study_storage_is_refused_before_anything_runs(tmp_path):
    profile = yaml.safe_load(TINY.read_text())
    for value, message in (("postgres://user@db/optuna", r"unknown database scheme 'postgres' \(SQLAlchemy spells "
                                                          r"it 'postgresql://'\)"),
                           ("study.db", "not a database URL"),
                           ("sqlite:///study.db", "absolute path"),
                           ("sqlite://", "in-memory SQLite")):
        profile["B"]["study_storage"] = value
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(profile))
        with pytest.raises(ProfileError, match=rf"section B: study_storage = '{value}': .*{message}"):
            run_pipeline(path, outputs=tmp_path / "outputs")
        assert not (tmp_path / "outputs").exists()
    with pytest.raises(ProfileError, match=r"study_storage = 42: Input should be a valid string"):
        parameters_from_namespace("B", {"run_dir": "x", "study_storage": 42})
    with pytest.raises(ProfileError, match=r"workers = 0: Input should be greater than or equal to 1"):
        parameters_from_namespace("B", {"run_dir": "x", "workers": 0})
    profile["B"]["study_storage"] = "postgresql+psycopg2://user@db:5432/optuna"
    path.write_text(yaml.safe_dump(profile))
    assert load_profile(path).B["study_storage"].startswith("postgresql")  # a driver is needed only to connect
