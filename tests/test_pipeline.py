"""The pipeline end to end: the tiny profile through papermill with a real Jupyter kernel, and its guards."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import floodlib
from floodlib.pipeline import ProfileError, load_profile, parameters_from_namespace
from floodlib.pipeline import stages, tuning
from floodlib.pipeline.runner import StageFailed, run_pipeline
from floodlib.training import load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"


def test_tiny_profile_runs_a_to_d_headless(tiny_run):
    run_dir = tiny_run
    assert (run_dir / "params.yaml").exists()
    assert load_profile(run_dir / "params.yaml").name == "tiny"
    for stage, notebook in (("A", "A_train"), ("B", "B_tune"), ("C", "C_train_big"), ("D", "D_evaluate")):
        folder = run_dir / stage
        assert (folder / "summary.json").exists()
        executed = json.loads((folder / f"{notebook}.ipynb").read_text())
        assert any(cell.get("outputs") for cell in executed["cells"] if cell["cell_type"] == "code")
        assert (folder / f"{notebook}.html").stat().st_size > 10_000
        figure = "learning_curves.png" if stage != "D" else "rae_boxplots_C.png"
        assert (folder / "figures" / figure).stat().st_size > 5_000
    # A's injected parameters name the run's own profile, the one it read, not the notebook's default
    injected = next("".join(cell["source"]) for cell in json.loads((run_dir / "A" / "A_train.ipynb").read_text())["cells"]
                    if "injected-parameters" in cell["metadata"].get("tags", []))
    assert f'profile = "{run_dir.resolve() / "params.yaml"}"' in injected
    a = json.loads((run_dir / "A" / "summary.json").read_text())
    assert sorted(row["arch"] for row in a["ranking"]) == ["Arch_02", "Arch_03", "Arch_04", "Arch_05", "Arch_07",
                                                            "Arch_08", "Arch_09"]
    losses = [row["best_val_loss"] for row in a["ranking"]]
    assert losses == sorted(losses)
    assert a["splits"]["small_train"]["samples"] > 0
    own = json.loads((run_dir / "A" / "models" / "Arch_02" / "summary.json").read_text())["settings"]
    other = json.loads((run_dir / "A" / "models" / "Arch_03" / "summary.json").read_text())["settings"]
    assert (own["epochs"], own["lr"]) == (2, 0.002) and (other["epochs"], other["lr"]) == (1, 0.001)
    b = json.loads((run_dir / "B" / "summary.json").read_text())
    assert b["tuned"]["arch"] == "Arch_04" and b["trials"] == {"COMPLETE": 2}
    assert b["beats_default"] == (b["tuned"]["best_val_loss"] < b["default_arch04_val_loss"])
    log = (run_dir / "pipeline.log").read_text()
    assert "stage A: done" in log and "stage C: done" in log and "stage D: done" in log
    assert f"on floodlib {floodlib.__version__}" in log and "torch threads)" in log  # the machine it ran on
    report = (run_dir / "D" / "D_evaluate.ipynb").read_text()
    assert "training, stage C: floodlib" in report and "inference, stage D: floodlib" in report
    assert a["environment"]["python"] == platform.python_version()
    trained_with = json.loads((run_dir / "A" / "models" / "Arch_02" / "summary.json").read_text())["environment"]
    assert [trained_with[key] for key in ("python", "torch", "cpu")] == [a["environment"][key] for key in
                                                                         ("python", "torch", "cpu")]
    assert f"python -m floodlib.viewer {run_dir}" in log


def test_the_run_folder_alone_rebuilds_every_model(tiny_run):
    c = json.loads((tiny_run / "C" / "summary.json").read_text())
    assert len(c["ranking"]) == 4
    run = stages.open_run(tiny_run)
    test = stages.splits(run, ["big_test"])["big_test"]
    sample = test[0]
    for row in c["ranking"]:
        model = load_model(tiny_run / "C" / row["model_path"])
        with torch.no_grad():
            prediction = model(sample.terrain[None], sample.depths[None])
        assert prediction.shape == (1, 1, 32, 32) and torch.isfinite(prediction).all()


@pytest.fixture
def own_tiny_run(tiny_run, tmp_path) -> Path:
    """A whole copy of the tiny run (its data linked) for a test that runs the pipeline again: the shared
    ``tiny_run`` stays as the pipeline made it, whatever order the tests run in."""
    copy = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, copy, ignore=lambda folder, names: ["data"] if Path(folder) == tiny_run else [])
    (copy / "data").symlink_to(tiny_run / "data", target_is_directory=True)
    return copy


def test_warm_start_continues_stage_c_from_the_weights_of_stages_a_and_b(own_tiny_run):
    from floodlib.runs import RunError
    from floodlib.runs.profile import StageC

    run = stages.open_run(own_tiny_run)
    splits = stages.splits(run, ["big_train", "big_val"])

    def stage_c(**settings):
        config = StageC(run_dir=str(own_tiny_run), models=["Arch_02", "Arch_04_tuned"], epochs=1, batch_size=16,
                        progress="none", **settings)
        entries = stages.choose_big_models(run, config)
        return {row["name"]: row for row in stages.train_stage_c(run, config, splits["big_train"], splits["big_val"], entries)}

    def largest_difference(one, other):
        one, other = load_model(one).state_dict(), load_model(other).state_dict()
        assert one.keys() == other.keys()
        return max(float((one[key] - other[key]).abs().max()) for key in one)

    sources = {"Arch_02": own_tiny_run / "A" / "models" / "Arch_02" / "model.pth",
               "Arch_04_tuned": own_tiny_run / "B" / "models" / "Arch_04_tuned" / "model.pth"}
    # With a vanishing learning rate a warm-started model ends where stage A (B) left it ...
    rows = stage_c(warm_start=True, lr=1e-12, per_model={"Arch_04_tuned": {"lr": 1e-12}})
    for name, source in sources.items():
        summary = json.loads((own_tiny_run / "C" / "models" / name / "summary.json").read_text())
        assert summary["warm_start_from"] == source.relative_to(own_tiny_run).as_posix()
        assert largest_difference(source, own_tiny_run / "C" / rows[name]["model_path"]) < 1e-8
    # ... and a fresh one (the default) ends at its initialisation, where stage A's training started from (the same
    # seed), not where it ended: the models are trained again, not taken as finished.
    stage_c(lr=1e-12, per_model={"Arch_04_tuned": {"lr": 1e-12}})
    for name, source in sources.items():
        summary = json.loads((own_tiny_run / "C" / "models" / name / "summary.json").read_text())
        assert "warm_start_from" not in summary
        assert largest_difference(source, own_tiny_run / "C" / "models" / name / "model.pth") > 1e-4
    # A model stage A never trained cannot be warm-started: refused before anything trains.
    a_summary = own_tiny_run / "A" / "summary.json"
    ranking = json.loads(a_summary.read_text())
    ranking["ranking"] = [row for row in ranking["ranking"] if row["name"] != "Arch_02"]
    a_summary.write_text(json.dumps(ranking))
    before = {p: p.stat().st_mtime_ns for p in (own_tiny_run / "C").rglob("*")}
    with pytest.raises(RunError, match=r"C.warm_start: stage A trained no Arch_02 .*A/summary.json.* add it to A.models"):
        stage_c(warm_start=True)
    assert {p: p.stat().st_mtime_ns for p in (own_tiny_run / "C").rglob("*")} == before


def test_a_rerun_skips_finished_stages(own_tiny_run):
    tiny_run = own_tiny_run
    # Stopped after B wrote its summary but before its HTML copy: the rerun makes the copy, and redoes nothing.
    (tiny_run / "B" / "B_tune.html").unlink()
    before = {p: p.stat().st_mtime_ns for p in tiny_run.glob("*/summary.json")}
    run_pipeline(TINY, outputs=tiny_run.parent)
    assert {p: p.stat().st_mtime_ns for p in tiny_run.glob("*/summary.json")} == before
    log = (tiny_run / "pipeline.log").read_text()
    assert log.count("complete already, skipped") == 4
    assert f"stage B: its HTML copy was missing, made now: {tiny_run / 'B' / 'B_tune.html'}" in log
    assert (tiny_run / "B" / "B_tune.html").stat().st_size > 10_000 and "its HTML copy" not in log.replace(
        "stage B: its HTML copy", "")


def test_force_redoes_a_stage_and_keeps_the_old_results(own_tiny_run):
    tiny_run = own_tiny_run
    old = json.loads((tiny_run / "C" / "summary.json").read_text())
    run_pipeline(TINY, outputs=tiny_run.parent, stages=["C"], force=True)
    kept = sorted(tiny_run.glob("C.replaced-*"))
    assert len(kept) == 1 and json.loads((kept[0] / "summary.json").read_text()) == old
    new = json.loads((tiny_run / "C" / "summary.json").read_text())
    assert [row["name"] for row in new["ranking"]] and (tiny_run / "C" / "C_train_big.ipynb").exists()
    log = (tiny_run / "pipeline.log").read_text()
    assert "--force, previous results kept in" in log
    assert "stage D is stale (made from earlier results of stage C): the next run without --only redoes it" in log
    # The next full run redoes D (made from the replaced C) and skips A, B and C.
    old_d = json.loads((tiny_run / "D" / "summary.json").read_text())
    run_pipeline(TINY, outputs=tiny_run.parent)
    log = (tiny_run / "pipeline.log").read_text().split("stages A, B, C, D")[-1]
    assert "stage D: made from earlier results of stage C, previous results kept in" in log
    assert log.count("complete already, skipped") == 3
    assert json.loads((sorted(tiny_run.glob("D.replaced-*"))[0] / "summary.json").read_text()) == old_d
    new_d = json.loads((tiny_run / "D" / "summary.json").read_text())
    assert new_d["upstream"]["C"] == hashlib.sha256((tiny_run / "C" / "summary.json").read_bytes()).hexdigest()
    assert stages.stale_upstream(tiny_run, "D") == []


def test_a_misspelt_profile_key_is_refused_before_anything_runs(tmp_path):
    profile = yaml.safe_load(TINY.read_text())
    profile["A"]["epoch"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"section A: unknown key 'epoch' \(value 3\)"):
        run_pipeline(path, outputs=tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()
    profile["A"] = {"epochs": "ten"}
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"section A: epochs = 'ten': Input should be a valid integer"):
        load_profile(path)
    profile["A"] = {"per_model": {"Arch_02": {"learning_rate": 0.1}}}
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"per_model\['Arch_02'\]: unknown setting 'learning_rate'"):
        load_profile(path)
    # A required key misspelt: one line, the key given and the one it resembles (not "Field required" first)
    profile = yaml.safe_load(TINY.read_text())
    profile["data"]["simulate"][1]["n_plan"] = profile["data"]["simulate"][1].pop("n_plans")
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value) == f"{path}: unknown key 'data.simulate.1.n_plan' (value 2); did you mean 'n_plans'?"
    # ... and one with a default, by the fields of where it was written; one resembling nothing is not guessed at
    profile = yaml.safe_load(TINY.read_text())
    profile["data"]["simulate"][0]["sed"] = 4
    profile["A"]["modles"] = ["Arch_02"]
    profile["data"]["simulate"][1]["zzqq"] = profile["data"]["simulate"][1].pop("n_plans")
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value).splitlines() == [
        f"{path}: unknown key 'data.simulate.0.sed' (value 4); did you mean 'seed'?",
        f"{path}: unknown key 'data.simulate.1.zzqq' (value 2)",
        f"{path}: data.simulate.1.n_plans: required, and not given"]
    del profile["data"]["simulate"][0]["sed"]
    profile["data"]["simulate"][1]["n_plans"] = profile["data"]["simulate"][1].pop("zzqq")
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"section A: unknown key 'modles' \(value \['Arch_02'\]\); did you mean 'models'\?"):
        load_profile(path)


@pytest.mark.parametrize(("valley", "pattern"), [
    ({"slop": 0.004}, r"unexpected keyword argument 'slop'; the fields are downstream_edge, slope, "),
    ({"slope": -1}, r"valley: ValleyParams.slope: -1 must be >= 0"),
])
def test_valley_parameters_are_checked_when_the_profile_loads(tmp_path, valley, pattern):
    profile = yaml.safe_load(TINY.read_text())
    profile["data"]["simulate"][0]["terrain"] = {"kind": "valley", "valley": valley}
    path = tmp_path / "valley.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"data\.simulate\.0\.terrain = .*" + pattern):
        run_pipeline(path, outputs=tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("section", "pattern"), [
    ({"precision": "bf16"}, r"section C: precision = 'bf16': Input should be 'auto', '32-true', 'bf16-mixed' or '16-mixed'"),
    ({"strategy": "ddp_spawn"}, r"section C: strategy = 'ddp_spawn': Input should be 'auto' or 'ddp'"),
    ({"devices": 0}, r"section C: devices = 0: Value error, devices=0 must be a positive number of devices or 'auto'"),
    ({"num_nodes": 2}, r"section C: .*num_nodes=2 with strategy='auto': training on several machines needs "
                       r"strategy: ddp .*floodlib.training.launch --serve RUN_DIR --node-rank K"),
    ({"num_nodes": 0}, r"section C: num_nodes = 0: Input should be greater than or equal to 1"),
])
def test_gpu_and_parallel_settings_are_checked_before_anything_runs(tmp_path, section, pattern):
    profile = yaml.safe_load(TINY.read_text())
    profile["C"].update(section)
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=pattern):
        run_pipeline(path, outputs=tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("data", "pattern"), [
    ({"splits": {"test_projects": ["valey_steep"]}},
     r"data.splits.test_projects: unknown project\(s\) \['valey_steep'\]; the projects are \['valley', 'valley_steep'\]"),
    ({"splits": {"test_projects": ["valley_steep", "valley"]}},
     r"data.splits.test_projects: \['valley_steep', 'valley'\] holds out every project; at least one must remain"),
    ({"splits": {"test_projects": "valley_steep"}},
     r"data.splits: SplitSpec.test_projects='valley_steep' must be a list of project names"),
    ({"splits": {"test_project": ["valley_steep"]}}, r"data.splits: unknown setting\(s\) \['test_project'\]; SplitSpec has \[.*'test_projects'"),
    ({"splits": {"small_project": "valey"}}, r"data.splits.small_project: unknown project 'valey'"),
    ({"samples": {"projects": {"valey": {"patch_stride_cells": 16}}}},
     r"data.samples.projects: unknown project\(s\) \['valey'\]; the projects are \['valley', 'valley_steep'\]"),
    ({"hecras": [{"file": "plans/muncie.p01.hdf"}], "splits": {"test_projects": ["muncie.p01"]}},
     r"unknown project\(s\) \['muncie.p01'\]; the projects are \['valley', 'valley_steep', 'muncie'\]"),
])
def test_held_out_projects_and_sampling_are_checked_when_the_profile_loads(tmp_path, data, pattern):
    profile = yaml.safe_load(TINY.read_text())
    for key, value in data.items():
        profile["data"][key] = {**profile["data"][key], **value} if isinstance(value, dict) else value
    path = tmp_path / "held_out.yaml"
    path.write_text(yaml.safe_dump(profile))
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "muncie.p01.hdf").write_bytes(b"")  # a path that exists; only its name counts here
    with pytest.raises(ProfileError, match=pattern):
        run_pipeline(path, outputs=tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda data: data["simulate"][0].update(n_plans=3),
     r"data.splits: project 'valley' has 3 plan\(s\); SplitSpec.test_plans=2 held out for testing needs at least 4 .*"
     r"\(the profile's projects: valley 3 plan\(s\), valley_steep 2 plan\(s\)\)"),
    (lambda data: data["splits"].update(test_plans=5),
     r"project 'valley' has 6 plan\(s\); SplitSpec.test_plans=5 held out for testing needs at least 7"),
    (lambda data: data["samples"].update(snapshot_times_s=[0, 1800]),
     r"data.simulate.0.duration_s = 2400: the samples of project 'valley' need plans of at least 3000 s \(the last "
     r"snapshot, 1800 s, plus delta_t_s = 1200 s, data.samples\); lengthen the plans or take earlier snapshots"),
    (lambda data: (data["samples"].pop("snapshot_times_s"), data["samples"].update(snapshot_every_s=600, delta_t_s=3000)),
     r"data.simulate.0.duration_s = 2400: the plans of project 'valley' end before the first sample's target"),
    (lambda data: data["simulate"][0].update(duration_s=2430),
     r"data.simulate.0.duration_s = 2430: not a whole number of the simulator's output interval \(60 s\)"),
    (lambda data: data["samples"].update(snapshot_times_s=[0, 1170]),
     r"data.samples.snapshot_times_s: 1170 s is not a multiple of the output interval \(60 s\) of simulated project "
     r"'valley', whose frames are the only times a sample can take"),
    (lambda data: data["samples"].update(projects={"valley_steep": {"snapshot_every_s": 90}}),
     r"data.samples.projects.valley_steep.snapshot_every_s: 90 s is not a multiple"),
])
def test_plans_too_few_or_too_short_are_refused_before_any_is_simulated(tmp_path, change, pattern):
    """Found when the profile loads, not after minutes of simulation."""
    profile = yaml.safe_load(TINY.read_text())
    change(profile["data"])
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=pattern):
        run_pipeline(path, outputs=tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


def test_a_path_from_home_in_a_profile_is_read_from_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "dems").mkdir(parents=True)
    (tmp_path / "home" / "dems" / "tile.tif").write_bytes(b"")  # only where it lies counts here
    profile = yaml.safe_load(TINY.read_text())
    profile["data"]["simulate"][0]["terrain"] = {"kind": "dem", "path": "~/dems/tile.tif"}
    path = tmp_path / "profiles" / "home.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(profile))
    loaded = load_profile(path)
    assert loaded.data.simulate[0].terrain.path == str(tmp_path / "home" / "dems" / "tile.tif")


@pytest.mark.parametrize("name", ["smoke", "medium", "paper", "tiny"])
def test_every_shipped_profile_loads_and_holds_a_project_out(name):
    data = load_profile(ROOT / "params" / f"{name}.yaml").data
    held_out = data.split_spec().test_projects
    assert held_out and set(held_out) < set(data.project_names())
    if name != "tiny":  # real terrain in training, fetched from a package registry on a user's clone
        fetched = [p for p in data.simulate if p.terrain.fetch is not None]
        assert fetched and not set(held_out) & {p.name for p in fetched}


def test_a_held_out_project_missing_from_the_data_is_refused_before_training(tmp_path):
    """A run whose data folder lacks a project the profile holds out (its folder was removed) stops at the splits,
    before a plan is read."""
    run = stages.open_run(tmp_path / "run", TINY)
    (run.data_dir / "valley").mkdir(parents=True)
    for k in range(6):
        (run.data_dir / "valley" / f"plan_{k:03d}.h5").touch()
    with pytest.raises(ProfileError, match=r"run/params.yaml: data.splits.test_projects: unknown project\(s\) "
                                           r"\['valley_steep'\]; the projects are \['valley'\]"):
        stages.splits(run)


def test_the_pipeline_refuses_to_run_as_one_of_several_launched_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ProfileError, match=r"one of 4 \(torchrun or SLURM\): start it with plain python"):
        run_pipeline(TINY, outputs=tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


def test_the_notebook_itself_refuses_an_unknown_parameter(tiny_run, tmp_path):
    import papermill

    output = tmp_path / "C.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(ROOT / "notebooks" / "C_train_big.ipynb"), str(output),
                                   parameters={"run_dir": str(tiny_run), "epoch": 2}, cwd=str(ROOT / "notebooks"),
                                   kernel_name="python3", progress_bar=False)
    assert "unknown parameter(s) ['epoch']" in str(info.value)
    assert json.loads((tiny_run / "C" / "summary.json").read_text())  # nothing of the run was touched


def test_parameters_from_namespace():
    import math as some_module

    namespace = {"run_dir": "x", "epochs": 3, "lr": 0.01, "math": some_module, "load_model": load_model,
                 "_private": 1, "In": []}
    assert parameters_from_namespace("C", namespace).epochs == 3
    with pytest.raises(ProfileError, match=r"unknown parameter\(s\) \['batchsize'\]"):
        parameters_from_namespace("C", {**namespace, "batchsize": 8})
    with pytest.raises(ProfileError, match=r"lr = -1.0: Input should be greater than 0"):
        parameters_from_namespace("C", {**namespace, "lr": -1.0})


def _run_sharing_data(tiny_run: Path, tmp_path: Path):
    """A fresh run folder with the tiny run's profile and (linked) data, and its Run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "data").symlink_to(tiny_run / "data", target_is_directory=True)
    (run_dir / "params.yaml").write_text((tiny_run / "params.yaml").read_text())
    return run_dir, stages.open_run(run_dir)


def test_an_interrupted_search_continues(tiny_run, tmp_path):
    import optuna

    # A copy of the run with B's search started but cut short: one trial done, one left RUNNING by a kill.
    run_dir, run = _run_sharing_data(tiny_run, tmp_path)
    config = parameters_from_namespace("B", {**load_profile(run_dir / "params.yaml").B, "run_dir": str(run_dir),
                                             "trials": 1})
    data = stages.splits(run, ["small_train", "small_val"])
    first = tuning.tune_arch04(run, config, data["small_train"], data["small_val"])
    first_params = first.trials[0].params
    # The trial a killed process leaves behind, still marked RUNNING (asked outside optimize, which Optuna warns
    # of when the storage beats: here on purpose).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        first.ask()
    resumed = tuning.tune_arch04(run, config.model_copy(update={"trials": 3}), data["small_train"], data["small_val"])
    states = [t.state for t in resumed.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 3
    assert states[1] == optuna.trial.TrialState.FAIL
    assert resumed.trials[0].params == first_params  # the finished trial was kept, not rerun
    assert np.isfinite(resumed.best_value)
    # No trial leaves its resume checkpoint behind (finished ones remove theirs, the others have it removed), and
    # only finished trials keep weights, each with its summary.
    assert not (run_dir / "B" / "checkpoints").exists() or not any((run_dir / "B" / "checkpoints").rglob("*.ckpt"))
    kept = sorted(path.parent.name for path in (run_dir / "B" / "models" / "trials").glob("*/model.pth"))
    finished = [t for t in resumed.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert kept == [f"{t.number:03d}" for t in finished]
    assert all((run_dir / "B" / "models" / "trials" / name / "summary.json").exists() for name in kept)


def test_a_pruned_trial_leaves_neither_weights_nor_a_resume_checkpoint(tiny_run, tmp_path, monkeypatch):
    """Pruned after its first epoch (by the exception Optuna's pruning raises), a trial has written weights and
    a resume checkpoint; the search removes both, and the study keeps the trial as PRUNED."""
    import optuna
    from lightning.pytorch.callbacks import Callback

    run_dir, run = _run_sharing_data(tiny_run, tmp_path)
    config = parameters_from_namespace("B", {**load_profile(run_dir / "params.yaml").B, "run_dir": str(run_dir),
                                             "trials": 2, "trial_epochs": 3})
    seen = {}

    class PruneTheSecond(Callback):
        def __init__(self, trial):
            self.trial = trial

        def on_train_epoch_end(self, trainer, module):
            if self.trial.number == 1:
                folder = run_dir / "B"
                seen["weights"] = (folder / "models" / "trials" / "001" / "model.pth").exists()
                raise optuna.TrialPruned("pruned for the test")

    monkeypatch.setattr(tuning, "_OptunaPruning", PruneTheSecond)
    data = stages.splits(run, ["small_train", "small_val"])
    study = tuning.tune_arch04(run, config, data["small_train"], data["small_val"])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert seen["weights"]  # it had written its weights (its first epoch's checkpoint follows this callback)
    assert not (run_dir / "B" / "models" / "trials" / "001").exists()
    assert not (run_dir / "B" / "checkpoints" / "trials" / "001").exists()
    assert (run_dir / "B" / "models" / "trials" / "000" / "summary.json").exists()


def test_a_failing_stage_names_the_executed_notebook(tmp_path):
    profile = yaml.safe_load(TINY.read_text())
    # A HEC-RAS file that exists but is no HDF5: found when the profile loads, refused only when stage A reads it.
    (tmp_path / "broken.p01.hdf").write_bytes(b"not an HDF5 file")
    profile["data"]["hecras"] = [{"file": str(tmp_path / "broken.p01.hdf"), "project": "ras"}]
    profile["data"]["splits"]["test_projects"].append("ras")  # held out whole: one plan is enough
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(StageFailed) as info:
        run_pipeline(path, outputs=tmp_path / "outputs", stages=["A"])
    message = str(info.value)
    assert "stage A failed in cell" in message and "broken.p01.hdf" in message
    assert str(tmp_path / "outputs" / "tiny" / "A" / "A_train.ipynb") in message
    assert not (tmp_path / "outputs" / "tiny" / "A" / "summary.json").exists()


def test_a_dem_that_is_no_geotiff_is_refused_before_stage_a_starts(tmp_path):
    """Opened when the pipeline starts, not in A's kernel: the message names the profile the user wrote."""
    profile = yaml.safe_load(TINY.read_text())
    (tmp_path / "broken.tif").write_bytes(b"not a GeoTIFF")
    profile["data"]["simulate"][0]["terrain"] = {"kind": "dem", "path": str(tmp_path / "broken.tif")}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError) as info:
        run_pipeline(path, outputs=tmp_path / "outputs", stages=["A"])
    assert str(info.value).startswith(f"{path}: data.simulate.0.terrain: {tmp_path / 'broken.tif'}: file: is not a "
                                      "readable GeoTIFF")
    assert not (tmp_path / "outputs").exists()


SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared sample data not found at {SHARED}")
def test_a_profile_can_read_hecras_plans_into_the_run(tmp_path, monkeypatch):
    from floodlib.data import SimulationFileError, read_hecras, read_simulation

    plan = SHARED / "hecras" / "Muncie2DOnly_SI.p01.hdf"
    terrain = SHARED / "dem" / "pyhmt2d_muncie_subterrain_5m_deflate.tif"
    # The same results a second time under a plan name that is no file name: one file, not a folder "100yr".
    profile = {"name": "muncie", "data": {"hecras": [
        {"file": str(plan), "terrain": str(terrain)},
        {"file": str(plan), "terrain": str(terrain), "project": "events", "plan": "100yr/24h"}]}}
    path = tmp_path / "muncie.yaml"
    path.write_text(yaml.safe_dump(profile))
    run = stages.open_run(tmp_path / "run", path)
    data_dir = stages.prepare_data(run)
    files = sorted(data_dir.rglob("*.h5"))
    assert [f.relative_to(data_dir).as_posix() for f in files] == ["Muncie2DOnly_SI/2D Area Only.h5", "events/100yr%2F24h.h5"]
    stored, renamed = read_simulation(files[0]), read_simulation(files[1])
    expected = read_hecras(plan, terrain=terrain)
    np.testing.assert_array_equal(stored.water_depth, expected.water_depth)
    np.testing.assert_array_equal(renamed.water_depth, expected.water_depth)
    assert (renamed.project, renamed.plan) == ("events", "100yr/24h")
    # Muncie's 2D area holds no whole 32x32 block of its cells: no sample, and the error says why.
    from floodlib.data import PatchDataset, SampleSpec
    from floodlib.data.preview import preview_samples

    with pytest.raises(ValueError, match=r"split 'muncie' has no samples to preview: every patch of its 1 plan\(s\) "
                                         r"was dropped: 0 dry .* and [1-9]\d* reaching cells outside the model's area .*"
                                         r"blocks of patch_cells x patch_cells of its own cells, 32x32 by default"):
        preview_samples(PatchDataset([files[0]], name="muncie", spec=SampleSpec(snapshot_times_s=(0.0, 3600.0))))
    before = files[0].stat().st_mtime_ns
    with monkeypatch.context() as patch:  # already there: kept as it is, and not even read again
        patch.setattr("floodlib.data.hecras.read_hecras", lambda *a, **k: pytest.fail("a plan in the run was read again"))
        stages.prepare_data(run)
    assert files[0].stat().st_mtime_ns == before
    # The profile changed: the plan is read without the DEM now, and the renamed one is no longer listed. Both
    # files made before are moved out of data/ (so no split reads them) and kept beside it; the plan is read again.
    from floodlib.runs import write_profile

    old = {f.relative_to(data_dir).as_posix(): f.read_bytes() for f in files}
    del profile["data"]["hecras"][1]
    del profile["data"]["hecras"][0]["terrain"]
    path.write_text(yaml.safe_dump(profile))
    run = stages.open_run(write_profile(load_profile(path), run.run_dir).parent)
    assert stages.prepare_data(run) == data_dir
    assert [f.relative_to(data_dir).as_posix() for f in sorted(data_dir.rglob("*.h5"))] == ["Muncie2DOnly_SI/2D Area Only.h5"]
    np.testing.assert_array_equal(read_simulation(files[0]).terrain, read_hecras(plan).terrain)
    assert not np.array_equal(read_hecras(plan).terrain, expected.terrain)
    (kept,) = run.run_dir.glob("data.replaced-*")
    assert {f.relative_to(kept).as_posix(): f.read_bytes() for f in kept.rglob("*.h5")} == old
    # A HEC-RAS file that is not one stops the stage before anything is simulated, naming the profile entry.
    broken = tmp_path / "broken.p01.hdf"
    broken.write_bytes(b"not hdf5")
    profile["data"]["hecras"] = [{"file": str(broken)}]
    profile["data"]["simulate"] = [{"name": "valley", "n_plans": 3, "rows": 32, "cols": 32, "duration_s": 1200}]
    path.write_text(yaml.safe_dump(profile))
    fresh = stages.open_run(tmp_path / "fresh", path)
    with pytest.raises(SimulationFileError, match=r"params\.yaml: data\.hecras\.0: .*broken\.p01\.hdf"):
        stages.prepare_data(fresh)
    assert not any(fresh.data_dir.rglob("*.h5"))
    # A project name is a folder of the run: one that would leave data/ is refused when the profile is read.
    profile["data"] = {"hecras": [{"file": str(plan), "project": "../elsewhere"}]}
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"hecras\.0\.project.*'\.\./elsewhere' must be a folder name"):
        load_profile(path)
    # Two entries stored as the same plan of the same project (the same model's events, each Model.p01.hdf in a
    # folder of its own) would replace each other: refused when the profile is read, naming both.
    event = tmp_path / "event2" / plan.name
    event.parent.mkdir()
    shutil.copy(plan, event)
    profile["data"] = {"hecras": [{"file": str(plan)}, {"file": str(event), "units": "si"}]}
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"data\.hecras\.1 \(.*event2/Muncie2DOnly_SI\.p01\.hdf\) and data\.hecras\.0 "
                                           r"\(.*\) are both plan '2D Area Only' of project 'Muncie2DOnly_SI', so one "
                                           r"would replace the other in data/Muncie2DOnly_SI/; give one of them a `plan:`"):
        load_profile(path)
    profile["data"]["hecras"][1]["plan"] = "event 2"  # and units in either case, as read_hecras takes them
    path.write_text(yaml.safe_dump(profile))
    assert load_profile(path).data.hecras[1].units == "SI"
    # a project named after a file name that is no folder name, or after a simulated project
    spaced = tmp_path / "My Model.p01.hdf"
    shutil.copy(plan, spaced)
    profile["data"] = {"hecras": [{"file": str(spaced)}]}
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"data\.hecras\.0\.file = .*My Model\.p01\.hdf: the project name 'My Model' "
                                           r"taken from the file's name must be a folder name"):
        load_profile(path)
    profile["data"] = {"hecras": [{"file": str(spaced), "project": "valley"}],
                       "simulate": [{"name": "valley", "n_plans": 3, "rows": 32, "cols": 32, "duration_s": 1200}]}
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError, match=r"data\.hecras\.0: project 'valley' is also a simulated project"):
        load_profile(path)


def _notebook_parameters(notebook: Path) -> dict:
    """The values the notebook's ``parameters`` cell defines when run on its own (e.g. in JupyterLab)."""
    import nbformat

    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(compile(cell.source, str(notebook), "exec"), namespace)
    return {name: value for name, value in namespace.items() if not name.startswith("__")}


@pytest.mark.parametrize("stage", ["A", "B", "C", "D"])
def test_each_notebook_declares_exactly_its_stage_parameters_with_the_same_defaults(stage):
    from floodlib.pipeline.config import NOTEBOOKS, STAGES

    declared = _notebook_parameters(ROOT / "notebooks" / NOTEBOOKS[stage])
    fields = STAGES[stage].model_fields
    assert sorted(declared) == sorted(fields)
    for name, field in fields.items():
        if field.is_required():  # run_dir: the pipeline always passes it
            continue
        default = field.get_default(call_default_factory=True)
        value = declared[name]
        as_list = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
        assert as_list(value) == as_list(default), f"{NOTEBOOKS[stage]}: {name} = {value!r}, config.py: {default!r}"


def test_the_committed_notebooks_are_valid_nbformat_with_cell_ids():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert all(cell.get("id") for cell in notebook.cells), f"{path.name}: a cell has no id"
        assert len({cell.id for cell in notebook.cells}) == len(notebook.cells), f"{path.name}: repeated cell ids"


def test_data_files_a_stage_set_aside_are_named_for_the_log(tmp_path):
    from floodlib.data.store import set_aside
    from floodlib.pipeline.runner import set_aside_files, set_aside_report

    data = tmp_path / "data"
    for name in ("valley/plan_000.h5", "valley/plan_001.h5", "old/plan_000.h5"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"a plan")
    before = set_aside_files(tmp_path)
    kept = set_aside([data / "valley" / "plan_001.h5", data / "old" / "plan_000.h5"], data)
    (line,) = set_aside_report(tmp_path, before, stage="A")
    assert line == (f"stage A set aside 2 data file(s) made otherwise than the profile says (other settings, or a "
                    f"project or plan it no longer lists) in {kept}: old/plan_000.h5, valley/plan_001.h5")
    assert set_aside_report(tmp_path, set_aside_files(tmp_path), stage="A") == []  # nothing new since
