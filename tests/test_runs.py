"""The run folder's typed stage contract: summaries written and read back by floodlib.runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from floodlib.runs import (Run, RunError, StageASummary, StageBSummary, StageCSummary, load_profile, read_summary,
                           stale_upstream, write_summary)
from floodlib.runs.summaries import RankedModel

ROOT = Path(__file__).resolve().parents[1]
ROW = {"name": "Arch_02", "arch": "Arch_02", "best_val_loss": 0.02, "baseline_val_loss": 0.04, "skill": 0.5,
       "beats_baseline": True, "best_epoch": 3, "epochs_run": 5, "parameters": 101266, "seconds_per_epoch": 1.5,
       "model_path": "models/Arch_02/model.pth"}
TUNED = {"arch": "Arch_04", "arch_kwargs": {"layers": 6, "channels": 16, "attentions": 1}, "downsampler": "cubic",
         "downsampler_kwargs": {}, "lr": 0.001, "trial": 2, "trial_val_loss": 0.03, "best_val_loss": 0.025,
         "model_path": "models/Arch_04_tuned/model.pth"}


@pytest.fixture
def run(tmp_path) -> Run:
    return Run(run_dir=tmp_path, profile=load_profile(ROOT / "params" / "tiny.yaml"))


def test_a_summary_round_trips_and_records_the_summaries_it_was_made_from(run):
    a = StageASummary(ranking=[ROW], splits={"small_train": {"samples": 12}})
    path_a = write_summary(run, a)
    recorded = read_summary(run, "A")
    assert recorded == a.model_copy(update={"upstream": {}, "settings": run.profile.settings_digest("A"),
                                            "settings_record": run.profile.settings_record("A"),
                                            "environment": recorded.environment})
    # the settings themselves, results-bearing only: A's epochs and the splits, not the workers or progress
    assert recorded.settings_record["A"]["epochs"] == run.profile.A["epochs"]
    splits = recorded.settings_record["data"]["splits"]  # the SplitSpec the profile makes, defaults filled in
    assert {key: splits[key] for key in run.profile.data.splits} == run.profile.data.splits
    assert splits["small_project"] == ""
    assert "workers" not in recorded.settings_record["data"] and "progress" not in recorded.settings_record["A"]
    # what the stage ran with
    import platform

    import torch

    import floodlib
    from floodlib.environment import describe

    environment = recorded.environment
    assert environment["floodlib"] == floodlib.__version__ and environment["python"] == platform.python_version()
    assert environment["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert environment["torch_threads"] == torch.get_num_threads() and environment["cuda_devices"] == []
    assert describe(environment).startswith(f"floodlib {floodlib.__version__} (") and describe(environment).endswith(
        f"{environment['cpu_count']} cores ({torch.get_num_threads()} torch threads); no GPU")
    if (Path(floodlib.__file__).parents[1] / ".git").exists():
        assert len(environment["git_commit"].split("+")[0]) == 12  # this checkout's commit
    # a summary written before the environment was recorded reads back, with an empty one
    raw = json.loads(path_a.read_text())
    del raw["environment"]
    path_a.write_text(json.dumps(raw))
    assert read_summary(run, "A").environment == {}
    path_a = write_summary(run, a)
    b = StageBSummary(tuned=TUNED, default_arch04_val_loss=0.03, beats_default=True, trials={"COMPLETE": 2})
    write_summary(run, b)
    back = read_summary(run.run_dir, "B")  # a run folder's path does as well as the Run
    assert back.tuned.arch_kwargs == {"layers": 6, "channels": 16, "attentions": 1}
    assert back.upstream == {"A": hashlib.sha256(path_a.read_bytes()).hexdigest()}
    # The file is plain JSON with the fields by name, as before the types existed.
    raw = json.loads((run.run_dir / "B" / "summary.json").read_text())
    assert raw["stage"] == "B" and raw["tuned"]["model_path"] == TUNED["model_path"] and raw["beats_default"] is True
    write_summary(run, a.model_copy(update={"ranking": [RankedModel(**{**ROW, "best_val_loss": 0.01})]}))
    assert stale_upstream(run.run_dir, "B") == ["A"]


def test_a_summary_that_is_not_the_stages_is_an_error_naming_the_file_and_field(run):
    folder = run.run_dir / "C"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"stage": "C", "ranking": [ROW], "splits": {}}))
    with pytest.raises(RunError, match=r"C/summary.json: not stage C's summary \(models: Field required\)"):
        read_summary(run, "C")
    (folder / "summary.json").write_text(json.dumps({"stage": "C", "ranking": [{**ROW, "skill": "high"}],
                                                     "models": [], "splits": {}}))
    with pytest.raises(RunError, match=r"ranking\.0\.skill"):
        read_summary(run, "C")
    (folder / "summary.json").write_text('{"stage": "C", "ranking": [')
    with pytest.raises(RunError, match=r"C/summary.json: not valid JSON .*run stage C again with --force"):
        read_summary(run, "C")
    with pytest.raises(FileNotFoundError, match=r"D/summary.json: stage D has not completed"):
        read_summary(run, "D")
    with pytest.raises(ValueError, match="unknown stage 'E'"):
        read_summary(run, "E")


def test_write_summary_takes_only_a_typed_summary_and_a_ranking_is_never_empty(run):
    with pytest.raises(TypeError, match="stage summary"):
        write_summary(run, {"stage": "A", "ranking": [ROW], "splits": {}})
    with pytest.raises(ValueError, match="ranking"):
        StageCSummary(ranking=[], models=[], splits={})
    assert not (run.run_dir / "A").exists()


def test_a_ranked_model_comes_from_the_summary_fit_writes():
    summary = {"name": "Arch_02", "arch": "Arch_02", "parameters": 101266, "seconds_per_epoch": 1.5,
               "model_path": "models/Arch_02/model.pth",
               "analysis": {"best_val_loss": 0.02, "baseline_val_loss": 0.04, "skill": 0.5, "beats_baseline": True,
                            "best_epoch": 3, "epochs_run": 5, "converged": True}}
    assert RankedModel.from_training(summary).model_dump() == ROW


def test_a_dem_edited_in_place_makes_the_stages_made_from_it_changed(tmp_path):
    """The same path with other contents is other data: the stages are "changed", naming the DEM's checksum. A
    file only touched (same bytes, newer time) is not."""
    import os

    import numpy as np
    import rasterio
    import yaml
    from rasterio.transform import Affine

    from floodlib.runs import stage_state

    def write_dem(values):
        with rasterio.open(tmp_path / "dem.tif", "w", driver="GTiff", height=100, width=100, count=1, dtype="float32",
                           crs="EPSG:26915", transform=Affine(1.0, 0.0, 5000.0, 0.0, -1.0, 9000.0)) as out:
            out.write(np.full((100, 100), values, dtype=np.float32), 1)

    write_dem(380.0)
    profile_path = tmp_path / "dem.yaml"
    profile_path.write_text(yaml.safe_dump({"name": "dem", "data": {"simulate": [{
        "name": "tile", "n_plans": 1, "rows": 8, "cols": 8, "duration_s": 600,
        "terrain": {"kind": "dem", "path": "dem.tif"}}], "samples": {"patch_cells": 8}}}))
    run = Run(run_dir=tmp_path / "run", profile=load_profile(profile_path))
    write_summary(run, StageASummary(ranking=[ROW], splits={"small_train": {"samples": 12}}))
    recorded = read_summary(run.run_dir, "A").settings_record["data"]["simulate"][0]["terrain"]["sha256"]
    assert recorded == hashlib.sha256((tmp_path / "dem.tif").read_bytes()).hexdigest()
    assert stage_state(run.run_dir, "A", load_profile(profile_path)) == ("complete", "")
    later = (tmp_path / "dem.tif").stat().st_mtime_ns + 5_000_000_000
    os.utime(tmp_path / "dem.tif", ns=(later, later))
    assert stage_state(run.run_dir, "A", load_profile(profile_path)) == ("complete", "")
    # the same bytes elsewhere are the same data
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "dem.tif").write_bytes((tmp_path / "dem.tif").read_bytes())
    moved = tmp_path / "moved.yaml"
    moved.write_text(profile_path.read_text().replace("path: dem.tif", "path: copy/dem.tif"))
    assert load_profile(moved).data.simulate[0].terrain.path == str(tmp_path / "copy" / "dem.tif")
    assert stage_state(run.run_dir, "A", load_profile(moved)) == ("complete", "")
    write_dem(381.0)
    state, why = stage_state(run.run_dir, "A", load_profile(profile_path))
    assert state == "changed" and why.startswith(f"made with other settings: data.simulate[0].terrain.sha256: \"{recorded[:10]}")
