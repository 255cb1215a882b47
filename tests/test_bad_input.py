"""Bad input and faults answered clearly: each case asserts the error, that the message names the file,
field or value, and that nothing already saved is lost or changed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from floodlib.pipeline.runner import run_pipeline
from floodlib.runs import ProfileError, RunError, load_profile, read_summary, stage_state, stale_upstream

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links followed only at the top) by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and "data" not in path.relative_to(folder).parts[:1]}


def profile_with(run_copy: Path, tmp_path: Path, change) -> Path:
    """The run's own profile with ``change`` applied to its dictionary, as a new file."""
    raw = yaml.safe_load((run_copy / "params.yaml").read_text())
    change(raw)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- a run folder knows how it was made ----------------------------------------------------------------------

def test_the_unchanged_profile_finds_every_stage_complete(run_copy):
    profile = load_profile(run_copy / "params.yaml")
    assert [stage_state(run_copy, stage, profile)[0] for stage in "ABC"] == ["complete"] * 3


@pytest.mark.parametrize("change, stages", [
    (lambda raw: raw["A"].update(epochs=3), ["A"]),
    (lambda raw: raw["C"].update(lr=0.01), ["C"]),
    (lambda raw: raw["data"]["splits"].update(test_plans=1), ["A", "B", "C"]),
    (lambda raw: raw["data"]["samples"].update(delta_t_s=600), ["A", "B", "C"]),
])
def test_a_profile_changed_after_the_run_is_refused_and_nothing_is_touched(run_copy, tmp_path, change, stages):
    edited = profile_with(run_copy, tmp_path, change)
    profile = load_profile(edited)
    assert [stage for stage in "ABC" if stage_state(run_copy, stage, profile)[0] == "changed"] == stages
    before = snapshot(run_copy)
    with pytest.raises(ProfileError, match=f"run folder {run_copy} holds stage\\(s\\) {', '.join(stages)} made with "
                                           "other settings.*nothing was run or changed.*--force"):
        run_pipeline(edited, stages=["D"], run_dir=run_copy)
    assert snapshot(run_copy) == before  # params.yaml included: the folder still describes its results


def test_the_refusal_names_the_settings_that_differ_with_both_values(run_copy, tmp_path):
    edited = profile_with(run_copy, tmp_path, lambda raw: (raw["data"]["splits"].update(test_plans=1),
                                                           raw["A"].update(epochs=3)))
    recorded = load_profile(run_copy / "params.yaml").data.splits["test_plans"]
    profile = load_profile(edited)
    state, why = stage_state(run_copy, "A", profile)
    assert state == "changed"
    assert why == f"made with other settings: A.epochs: {load_profile(run_copy / 'params.yaml').A['epochs']} -> 3; " \
                  f"data.splits.test_plans: {recorded} -> 1"
    assert stage_state(run_copy, "B", profile)[1] == f"made with other settings: data.splits.test_plans: {recorded} -> 1"
    # The refusal names every changed stage's settings, each setting once with the stages it concerns.
    epochs = load_profile(run_copy / "params.yaml").A["epochs"]
    with pytest.raises(ProfileError, match=re.escape(
            f"holds stage(s) A, B, C made with other settings (the data section or their own) than this profile's "
            f"(A.epochs: {epochs} -> 3 (stage A); data.splits.test_plans: {recorded} -> 1 (stages A, B, C)); ")):
        run_pipeline(edited, stages=["D"], run_dir=run_copy)


def test_the_same_samples_written_otherwise_are_not_a_change(run_copy, tmp_path):
    """1200 or 1200.0, a default written out: the same SampleSpec, the same results."""
    def rewrite(raw):
        samples = raw["data"]["samples"]
        samples.update(delta_t_s=float(samples["delta_t_s"]), snapshot_every_s=0,
                       snapshot_times_s=[float(t) for t in samples["snapshot_times_s"]])

    profile = load_profile(profile_with(run_copy, tmp_path, rewrite))
    assert [stage_state(run_copy, stage, profile)[0] for stage in "ABC"] == ["complete"] * 3
    # ... while a list that changes is shown with both values
    other = load_profile(profile_with(run_copy, tmp_path, lambda raw: raw["A"].update(models=["Arch_02"])))
    state, why = stage_state(run_copy, "A", other)
    assert state == "changed" and '; A.models: ["Arch_02", "Arch_03", ' not in why and \
        why.startswith('made with other settings: A.models: ["Arch_02", "Arch_03", "Arch_04", ') and \
        why.endswith('-> ["Arch_02"]')


@pytest.mark.parametrize("change", [lambda raw: raw["data"].update(workers=7),
                                    lambda raw: raw["A"].update(progress="none"),
                                    lambda raw: raw["C"].update(progress="bar")])
def test_settings_that_change_no_result_leave_the_run_complete(run_copy, tmp_path, change):
    """More simulation workers on another machine, or no progress bars in a batch job: the same results."""
    profile = load_profile(profile_with(run_copy, tmp_path, change))
    assert [stage_state(run_copy, stage, profile)[0] for stage in "ABC"] == ["complete"] * 3


def test_a_run_recorded_before_settings_were_split_from_non_results_stays_complete(run_copy):
    """Summaries written before: their digest covered data.workers and progress, and no record of the values."""
    from floodlib.runs.folder import SUMMARY_FILE

    profile = load_profile(run_copy / "params.yaml")
    path = run_copy / "C" / SUMMARY_FILE  # the last stage of the copy: no later summary records its digest
    raw = json.loads(path.read_text())
    raw.pop("settings_record")
    raw["settings"] = profile.settings_digest("C", with_non_results=True)
    path.write_text(json.dumps(raw))
    assert profile.settings_digest("C", with_non_results=True) != profile.settings_digest("C")
    assert [stage_state(run_copy, stage, profile)[0] for stage in "ABC"] == ["complete"] * 3
    # ... and one changed since is still found, without the values to name
    other = profile.model_copy(update={"C": {**profile.C, "epochs": 99}})
    assert stage_state(run_copy, "C", other) == (
        "changed", "made with other settings (data or C section of the profile; the stage was made before stages "
                   "recorded their settings, so which cannot be said, and data.workers and progress count too)")


def test_forcing_a_stage_over_changed_earlier_stages_is_refused(run_copy, tmp_path):
    # New splits, then `--only D --force`: D would score C's models on plans they trained on.
    edited = profile_with(run_copy, tmp_path, lambda raw: raw["data"]["splits"].update(test_plans=1))
    before = snapshot(run_copy)
    with pytest.raises(ProfileError, match=f"--force redoes stage D, but stage\\(s\\) A, B, C of run folder {run_copy}, "
                                           "whose results it uses, were made with other settings.*--only A --only B "
                                           "--only C --only D --force.*nothing was run or changed"):
        run_pipeline(edited, stages=["D"], force=True, run_dir=run_copy)
    assert snapshot(run_copy) == before


def test_stages_made_with_other_settings_stay_changed_after_an_earlier_stage_is_redone(run_copy, tmp_path):
    """New splits, A redone alone (`--only A --force`): B, C and D were made from the old A *and* with other
    settings. They are "changed", not merely stale, so `--only D` cannot score C's models on plans they trained
    on, with or without --force."""
    from floodlib.runs import Run, write_summary

    edited = profile_with(run_copy, tmp_path, lambda raw: raw["data"]["splits"].update(test_plans=1))
    profile = load_profile(edited)
    redone = read_summary(run_copy, "A")
    write_summary(Run(run_dir=run_copy, profile=profile), redone.model_copy(update={"splits": {"small_train": {}}}))
    assert stage_state(run_copy, "A", profile)[0] == "complete" and stale_upstream(run_copy, "C") == ["A"]
    assert [stage_state(run_copy, stage, profile)[0] for stage in "BC"] == ["changed", "changed"]
    before = snapshot(run_copy)
    with pytest.raises(ProfileError, match=r"holds stage\(s\) B, C made with other settings"):
        run_pipeline(edited, stages=["D"], run_dir=run_copy)
    with pytest.raises(ProfileError, match=r"--force redoes stage D, but stage\(s\) B, C of run folder"):
        run_pipeline(edited, stages=["D"], force=True, run_dir=run_copy)
    assert snapshot(run_copy) == before


def test_a_default_spelled_out_is_not_a_change(run_copy, tmp_path):
    default_patience = load_profile(run_copy / "params.yaml")  # the tiny profile leaves C's patience at its default
    edited = profile_with(run_copy, tmp_path, lambda raw: raw["C"].update(patience=30))
    assert load_profile(edited).settings_digest("C") == default_patience.settings_digest("C")
    assert stage_state(run_copy, "C", load_profile(edited))[0] == "complete"
    # ring_blend: 0 trains as runs made before the setting existed did, so it leaves them complete; 0.5 does not.
    for blend, state in ((0, "complete"), (0.5, "changed")):
        edited = profile_with(run_copy, tmp_path, lambda raw: raw["C"].update(ring_blend=blend))
        assert stage_state(run_copy, "C", load_profile(edited))[0] == state


def test_a_finished_model_is_kept_when_asked_again_as_it_was_trained_and_retrained_otherwise(run_copy):
    """A stage interrupted after some of its models: those are kept, also when their summary predates a setting
    added later (at its neutral value), and trained again when a setting asks for something else."""
    import json

    from floodlib.pipeline import stages
    from floodlib.runs import open_run
    from floodlib.runs.profile import validate_stage

    run = open_run(run_copy)
    entry = read_summary(run, "C").models[0].model_dump()
    summary_path = run_copy / "C" / "models" / entry["name"] / "summary.json"
    old = json.loads(summary_path.read_text())
    del old["settings"]["ring_blend"]  # as written before ring_blend existed
    summary_path.write_text(json.dumps(old))
    weights = run_copy / "C" / "models" / entry["name"] / "model.pth"
    before = weights.stat().st_mtime_ns
    data = stages.splits(run, ["big_train", "big_val"])
    config = validate_stage("C", run.profile.stage_parameters("C", run_copy), where="test")
    kept = stages.train_one(run, "C", config, data["big_train"], data["big_val"], **entry)
    assert kept == old and weights.stat().st_mtime_ns == before
    blended = config.model_copy(update={"ring_blend": 0.5})
    again = stages.train_one(run, "C", blended, data["big_train"], data["big_val"], **entry)
    assert again["settings"]["ring_blend"] == 0.5 and weights.stat().st_mtime_ns != before


@pytest.mark.parametrize("content, message", [
    (b"", "not valid JSON"),
    (b'{"stage": "A", "ranking": [', "not valid JSON"),
    (b'{"stage": "A"}', "ranking: Field required"),
    (b'{"stage": "B", "ranking": []}', "not stage A's summary"),
])
def test_a_corrupt_summary_is_not_complete_and_is_named(run_copy, content, message):
    (run_copy / "A" / "summary.json").write_bytes(content)
    state, why = stage_state(run_copy, "A")
    assert state == "invalid" and str(run_copy / "A" / "summary.json") in why and message in why
    with pytest.raises(RunError, match=message):
        stale_upstream(run_copy, "A")
    # B was made from A's earlier summary: stale now
    assert stage_state(run_copy, "B") == ("stale", "made from earlier results of stage A")


def test_a_missing_or_empty_notebooks_folder_is_an_error_before_anything_is_written(tmp_path):
    outputs = tmp_path / "outputs"
    with pytest.raises(ProfileError, match="--notebooks .*nope: not a folder of stage notebooks"):
        run_pipeline(ROOT / "params" / "tiny.yaml", outputs=outputs, notebooks=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="holds none of the stage notebooks"):
        run_pipeline(ROOT / "params" / "tiny.yaml", outputs=outputs, notebooks=tmp_path / "empty")
    done = subprocess.run([sys.executable, "-m", "floodlib.pipeline", str(ROOT / "params" / "tiny.yaml"), "--outputs",
                           str(outputs), "--notebooks", str(tmp_path / "nope")], capture_output=True, text=True)
    assert done.returncode == 1 and "not a folder of stage notebooks" in done.stderr
    assert not (outputs / "tiny" / "params.yaml").exists()


# -- weights and predictions that are not numbers ------------------------------------------------------------

def nan_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    import torch

    from floodlib.models import create_model, save_model

    model = create_model("Arch_02", downsampler="cubic")
    path = save_model(model, tmp_path / "model.pth")
    checkpoint = torch.load(path, weights_only=True)
    name = next(key for key, value in checkpoint["state_dict"].items() if value.is_floating_point())
    checkpoint["state_dict"][name][0] = float("nan")
    torch.save(checkpoint, path)
    return path, name


def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path):
    from floodlib.models import CheckpointError, load_model

    path, name = nan_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=f"{path}: 1 weight tensor\\(s\\) hold NaN or infinite values "
                                              f"\\(first: '{name}'\\)"):
        load_model(path)


def test_a_checkpoint_with_an_invalid_scale_is_a_checkpoint_error(tmp_path):
    import torch

    from floodlib.models import CheckpointError, create_model, load_model, save_model

    path = save_model(create_model("Arch_02", downsampler="cubic"), tmp_path / "model.pth")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["depth_scale"] = -1.0
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=f"{path}: its config cannot rebuild a model \\(depth_scale=-1.0"):
        load_model(path)


def test_weights_that_do_not_fit_their_config_are_one_line_naming_counts_and_a_first(tmp_path):
    """Not torch's listing of every missing and unexpected key (1.7 kB for a model of another width)."""
    import torch

    from floodlib.models import CheckpointError, create_model, load_model, save_model

    path = save_model(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), tmp_path / "model.pth")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["arch_kwargs"]["channels"] = 8  # the config now builds a wider model than the weights
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert message.startswith(f"{path}: weights do not fit architecture 'Arch_02' as its config builds it: ")
    assert re.search(r": \d+ of another shape \(first: [\w.]+ \(4, ", message) and "\n" not in message
    assert message.endswith("weight tensor(s); the file's weights and config disagree") and len(message) < 400
    checkpoint["config"]["arch_kwargs"].update(channels=4, layers=4)  # one layer more than the weights hold
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"weights do not fit architecture 'Arch_02' as its config builds it: "
                                              r"\d+ missing \(first: "):
        load_model(path)


def test_non_finite_predictions_are_never_scored(tiny_run):
    import torch

    from floodlib.evaluation import evaluate_dataset
    from floodlib.models import create_model
    from floodlib.runs import open_run, splits

    model = create_model("Arch_02", downsampler="cubic")
    with torch.no_grad():
        next(model.body.parameters()).fill_(float("nan"))
    dataset = splits(open_run(tiny_run), ["big_test"])["big_test"]
    with pytest.raises(ValueError, match="model Arch_02 predicted NaN or infinite depth changes .* cannot be scored"):
        evaluate_dataset(model, dataset, device="cpu")


# -- a GPU asked for where there is none ---------------------------------------------------------------------

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_one_is_a_clear_error_everywhere(tmp_path):
    import numpy as np

    from floodlib.evaluation import resolve_device
    from floodlib.models import create_model
    from floodlib.predict import DomainPredictor, PredictError
    from floodlib.training import fit

    with pytest.raises(ValueError, match="device 'cuda': this torch .* sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(PredictError, match="device 'cuda:1': this torch .* sees no CUDA device"):
        DomainPredictor(create_model("Arch_02"), np.zeros((321, 321), np.float32), device="cuda:1")
    with pytest.raises(ValueError, match="accelerator='gpu', but this torch .* sees no CUDA device"):
        fit(create_model("Arch_02"), [], [], out_dir=tmp_path, accelerator="gpu")


# -- profiles --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, lines", [
    ("name: x\nA: {epochs: 1}\nA: {epochs: 2}\n", "'A'", "lines 2 and 3"),
    ("name: x\ndata:\n  workers: 1\n  workers: 2\n", "'workers'", "lines 3 and 4"),
])
def test_a_key_given_twice_in_a_profile_is_refused(tmp_path, text, key, lines):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=f"{path}: not valid YAML: line \\d+, column \\d+: key {key} appears twice "
                                           f"in one mapping \\({lines}\\); the first would be silently dropped$"):
        load_profile(path)


def test_a_profile_that_is_not_yaml_is_told_in_one_line_with_where(tmp_path):
    """PyYAML's own message spans lines and names '<unicode string>'; the profile's names the file."""
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata:\n  simulate:\n    - name: valley\n      n_plans: 6\n     seed: [3\n")
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(error.value) == (f"{path}: not valid YAML: line 6, column 6: expected <block end>, but found "
                                "'<block mapping start>' (while parsing a block collection at line 4)")


# -- profiles: every setting checked before anything starts ---------------------------------------------------

def _smoke_with(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    change(raw)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _drop_fetch(raw, path):
    terrain = raw["data"]["simulate"][1]["terrain"]
    terrain.pop("fetch")
    terrain["path"] = path


@pytest.mark.parametrize("change, message", [
    (lambda r: r["B"].update(layers=[14, 6]), r"section B: layers = \[14, 6\]: expected \[low, high\] with 2 <= low <= high"),
    (lambda r: r["B"].update(layers=[0, 6]), r"section B: layers = \[0, 6\]: expected"),
    (lambda r: r["B"].update(attentions=[-1, 2]), r"section B: attentions = \[-1, 2\]: expected \[low, high\] with 0 <= low"),
    (lambda r: r["B"].update(layers=[3, 8], attentions=[2, 3]),
     r"attentions = \[2, 3\] with layers = \[3, 8\]: Arch_04 fits at most layers - 2 = 1 attention"),
    (lambda r: r["B"].update(lr_range=[0.01, 0.001]), r"section B: lr_range = \[0.01, 0.001\]: expected \[low, high\] with 0 < low"),
    (lambda r: r["B"].update(lr_range=[-0.01, 0.001]), r"section B: lr_range = \[-0.01, 0.001\]"),
    (lambda r: r["B"].update(layers=[3]), r"section B: layers = \[3\]: expected a pair \[low, high\]"),
    (lambda r: r["data"]["simulate"][0].update(peak_discharge_m3s=[5, 10, 20]),
     r"data.simulate.0.peak_discharge_m3s = \[5, 10, 20\]: expected a pair \[low, high\]"),
    (lambda r: r["B"].update(channels=[]), r"section B: channels = \[\]: .*one or more positive channel counts"),
    (lambda r: r["B"].update(channels=[0, 16]), r"section B: channels = \[0, 16\]"),
    (lambda r: r["B"].update(downsamplers=["bilinear"]), r"section B: downsamplers = \['bilinear'\]: .*unknown downsampler 'bilinear'"),
    (lambda r: r["B"].update(downsamplers=[]), r"section B: downsamplers = \[\]: .*at least one downsampler"),
    (lambda r: r.update(D={"test_split": "big_tset"}), r"D.test_split: unknown split\(s\) \['big_tset'\]; this profile's data makes \[.*'big_test'"),
    (lambda r: r.update(D={"splits": ["big_test", "valley_tset"]}), r"D.splits: unknown split\(s\) \['valley_tset'\]"),
    (lambda r: r.update(D={"context_splits": "test"}), r"section D: context_splits = 'test': Input should be 'held_out' or 'all'"),
    (lambda r: r["A"].update(models=["Arch_02", "Arch_03"]), r"A.models = \['Arch_02', 'Arch_03'\]: stage B tunes Arch_04 .* add Arch_04"),
    (lambda r: r["C"].update(models=["Arch_99"]), r"section C: models = \['Arch_99'\]: .*unknown model 'Arch_99'"),
    (lambda r: _drop_fetch(r, "/nonexistent/dem.tif"), r"data.simulate.1.terrain.path = /nonexistent/dem.tif: no such file; expected a GeoTIFF"),
    (lambda r: r["data"].update(hecras=[{"file": "/nonexistent/plan.p01.hdf"}]),
     r"data.hecras.0.file = /nonexistent/plan.p01.hdf: no such file; expected a HEC-RAS plan results file"),
    (lambda r: r["data"]["simulate"].append(dict(r["data"]["simulate"][0])),
     r"data.simulate: project name\(s\) \['valley'\] given more than once"),
    (lambda r: r["data"]["simulate"][0].update(name="valleys/2026"),
     r"data.simulate.0.name = 'valleys/2026': Value error, 'valleys/2026' must be a folder name of letters, digits"),
    (lambda r: r["data"]["simulate"][0].update(terrain={"kind": "valley", "valley": {"slop": 0.01}}),
     r"data.simulate.0.terrain = .*valley: .*'slop'"),
    (lambda r: r["data"]["simulate"][1]["terrain"].update(row_offset=100),
     r"data.simulate.1.terrain = .*row_offset=100, col_offset=0: each plan of a project draws its own window of the "
     r"DEM, so a project takes no offset; to simulate one area, crop the DEM to it first \(gdal_translate -srcwin "),
    (lambda r: r["data"]["simulate"][1].update(cols=16),
     r"data.simulate.1.cols = 16: a grid narrower than one patch \(data.samples.patch_cells = 32\) gives no samples; "
     r"expected rows and cols >= 32$"),
    (lambda r: r["data"]["samples"].update(stride_cells=0), r"data.samples: unknown setting\(s\) \['stride_cells'\]; SampleSpec has \[.*'patch_stride_cells'"),
    (lambda r: r["data"]["splits"].update(test_plans=-1), r"data.splits: SplitSpec.test_plans=-1 must be a positive integer"),
    (lambda r: r["data"]["samples"]["projects"]["minnesota"].update(snapshot_every_s="ten"),
     r"data.samples: SampleSpec.projects\['minnesota'\]: SampleSpec.snapshot_every_s='ten' must be a number of "
     r"seconds >= 0 \(0: off\)"),
    (lambda r: _drop_fetch(r, "/tmp"), r"data.simulate.1.terrain.path = /tmp: a folder; expected a GeoTIFF DEM"),
    (lambda r: r["data"]["splits"].update(test_projects=["valley_stepe"]), r"data.splits.test_projects: unknown project\(s\) \['valley_stepe'\]"),
    (lambda r: r["A"].update(preview_count=0), r"section A: preview_count = 0: Input should be greater than or equal to 1"),
    (lambda r: r["C"].update(ring_blend=1.5), r"section C: ring_blend = 1.5: Input should be less than or equal to 1"),
    (lambda r: r["C"]["per_model"].update(Arch_03={"ring_blend": -0.5}),
     r"section C: per_model = .*per_model\['Arch_03'\].ring_blend = -0.5: Input should be greater than or equal to 0"),
    (lambda r: r["A"]["per_model"].update(Arch_08={"lr": 3e-4, "batch_size": 8.5}),
     r"section A: per_model = .*per_model\['Arch_08'\].batch_size = 8.5: Input should be a valid integer"),
    (lambda r: (r["A"].update(models=["Arch_02", "Arch_04"]), r["C"].update(models=["Arch_02", "Arch_05"], warm_start=True)),
     r"C.warm_start = true and C.models = \['Arch_02', 'Arch_05'\]: \['Arch_05'\] not in A.models"),
    (lambda r: r["C"].update(warm_start=True, downsampler="cubic"),
     r"C.warm_start = true with C.downsampler = 'cubic' but A.downsampler = 'alternating'"),
], ids=["B-layers-reversed", "B-layers-zero", "B-attentions-negative", "B-attentions-beyond-layers", "B-lr-reversed",
        "B-lr-negative", "B-layers-one", "discharge-three", "B-channels-empty", "B-channels-zero", "B-downsampler-unknown", "B-downsamplers-empty",
        "D-test-split-unknown", "D-splits-unknown", "D-context-splits-unknown", "A-without-Arch_04", "C-model-unknown", "DEM-missing",
        "HEC-RAS-missing", "project-twice", "project-name-a-path", "valley-field-unknown", "DEM-offset",
        "grid-below-a-patch", "samples-bad", "splits-bad", "samples-every-not-a-number",
        "DEM-a-folder", "test-project-unknown",
        "A-no-previews", "C-ring-blend-above-1", "C-per-model-ring-blend-negative", "A-per-model-batch-fraction", "C-warm-start-without-A-weights", "C-warm-start-other-downsampler"])
def test_a_bad_setting_is_refused_when_the_profile_is_read_before_anything_runs(tmp_path, change, message):
    path = _smoke_with(tmp_path, change)
    outputs = tmp_path / "outputs"
    with pytest.raises(ProfileError, match=f"(?s)^{re.escape(str(path))}: .*{message}"):
        run_pipeline(path, outputs=outputs)
    assert not outputs.exists()  # nothing was started, not even the run folder


@pytest.mark.parametrize("pixel, nodata_columns, message", [
    (2.0, None, r"dem.tif: pixel width: 2.0 m; the built-in simulator needs a DEM at 1 m"),
    (1.0, slice(150, 160), r"dem.tif: elevation: no window of 321x321 points \(the 32x32-cell grid of project "
                           r"'minnesota'\) lies wholly on data"),
], ids=["two-metre-pixels", "no-window-on-data"])
def test_a_dem_that_cannot_serve_is_refused_before_stage_a_naming_the_profile(tmp_path, pixel, nodata_columns,
                                                                               message):
    """Opened and drawn when the pipeline starts, as stage A would: refused before A's kernel starts, naming the
    profile the user wrote (not the run's copy of it)."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    values = np.full((400, 400), 380.0, dtype=np.float32)
    if nodata_columns is not None:
        values[:, nodata_columns] = -9999.0
    dem = tmp_path / "dem.tif"
    with rasterio.open(dem, "w", driver="GTiff", height=400, width=400, count=1, dtype="float32", crs="EPSG:26915",
                       transform=Affine(pixel, 0.0, 5000.0, 0.0, -pixel, 9000.0), nodata=-9999.0) as out:
        out.write(values, 1)
    path = _smoke_with(tmp_path, lambda raw: _drop_fetch(raw, str(dem)))
    outputs = tmp_path / "outputs"
    with pytest.raises(ProfileError, match=f"^{re.escape(str(path))}: data.simulate.1.terrain: {re.escape(str(tmp_path))}/"
                                           f"{message}"):
        run_pipeline(path, outputs=outputs)
    assert not outputs.exists()


def test_the_split_names_a_profile_can_name_are_the_ones_its_data_makes(tiny_run):
    from floodlib.runs import open_run

    run = open_run(tiny_run)
    profile = load_profile(tiny_run / "params.yaml")
    from floodlib.data.dataset import discover_plans, split_plans

    plans = split_plans(discover_plans(run.data_dir), profile.data.split_spec())
    assert "test_projects" in plans  # the tiny profile holds a project out
    assert sorted(profile.data.split_spec().split_names(profile.data.project_names())) == sorted(plans)


# -- one process per run folder and per model; processes that end with what started them -----------------------

def _pipeline(run_dir: Path, *extra: str) -> subprocess.Popen:
    # Ctrl-C as in a terminal: a shell without job control starts its background commands with SIGINT ignored,
    # and a test suite started that way would pass the ignored signal on to the pipeline.
    return subprocess.Popen([sys.executable, "-m", "floodlib.pipeline", str(ROOT / "params" / "tiny.yaml"),
                             "--run-dir", str(run_dir), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _stage_a_running(run_dir: Path) -> bool:
    log = run_dir / "pipeline.log"
    return log.exists() and "stage A: running" in log.read_text()


def test_a_second_pipeline_on_a_busy_run_folder_is_refused_and_a_killed_one_takes_its_workers_with_it(tmp_path):
    import psutil

    run_dir = tmp_path / "run"
    first = _pipeline(run_dir)
    try:
        _wait_for(lambda: _stage_a_running(run_dir), "stage A to start")
        # Stage A's kernel simulates the data with two worker processes: wait until they run.
        _wait_for(lambda: len(psutil.Process(first.pid).children(recursive=True)) >= 3, "the simulation workers")
        before = snapshot(run_dir)
        second = _pipeline(run_dir)
        _, error = second.communicate(timeout=120)
        assert second.returncode == 1
        assert f"{run_dir}: the run folder is in use by process {first.pid} on " in error, error
        assert "Traceback" not in error
        family = psutil.Process(first.pid).children(recursive=True)
        assert snapshot(run_dir)["pipeline.log"] == before["pipeline.log"]  # the refused run wrote nothing
    finally:
        first.kill()
        first.wait(timeout=60)
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, f"still running after the pipeline was killed: {[p.info for p in alive]}"
    # The lock died with its holder: the next run may start (refusing here only for its stale stage A).
    from floodlib.data.locks import hold_folder

    with hold_folder(run_dir, what="run folder"):
        pass


@pytest.mark.parametrize(("sent", "status", "happened", "by"), [
    (signal.SIGINT, 130, "interrupted", "Ctrl-C"),
    (signal.SIGTERM, 143, "terminated", "SIGTERM"),  # kill, or a batch scheduler's time limit
], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_pipeline_with_one_line_logs_it_and_ends_its_kernel(tmp_path, sent, status,
                                                                                        happened, by):
    import psutil

    run_dir = tmp_path / "run"
    process = _pipeline(run_dir)
    # Once stage A's first plan is simulated, its kernel is running the notebook's cells.
    _wait_for(lambda: any((run_dir / "data").rglob("*.h5")), "stage A's kernel to simulate a plan")
    family = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sent)
    _, error = process.communicate(timeout=120)
    assert process.returncode == status
    assert error.strip().splitlines() == [
        f"floodlib pipeline: {happened} during stage A; completed stages are kept in {run_dir}, and the same "
        f"command continues from stage A (log: {run_dir / 'pipeline.log'})"]
    assert f"stage A: {happened} ({by}) after " in (run_dir / "pipeline.log").read_text()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"still running after the pipeline stopped: {alive}"


def test_a_killed_simulation_leaves_no_worker_writing(tmp_path):
    import psutil

    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from floodlib.data.simulate import ProjectSpec, simulate_project\n"
              "simulate_project(ProjectSpec(name='valley', seed=3, n_plans=4, rows=96, cols=96, duration_s=36000),"
              f" {str(tmp_path / 'data')!r}, workers=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for(lambda: len(psutil.Process(parent.pid).children(recursive=True)) >= 2, "two workers", 60)
        workers = psutil.Process(parent.pid).children(recursive=True)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
    assert not list((tmp_path / "data").rglob("*.h5"))  # no plan finished, and none is written after the kill


def test_two_trainings_of_one_model_in_one_folder_are_refused(tmp_path):
    from floodlib.data.locks import FolderBusyError

    holder = subprocess.Popen([sys.executable, "-c", (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from floodlib.data.locks import hold_folder\n"
        f"with hold_folder({str(tmp_path / 'stage' / 'models' / 'Arch_02')!r}, what='training of Arch_02'):\n"
        "    print('held', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sys.path.insert(0, str(Path(__file__).parent))
        from training_job import datasets

        from floodlib.models import create_model
        from floodlib.training import fit

        train, val = datasets(tmp_path / "job")
        with pytest.raises(FolderBusyError, match=f"models/Arch_02: the training of Arch_02 is in use by process "
                                                  f"{holder.pid} on "):
            fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val,
                out_dir=tmp_path / "stage", epochs=1, batch_size=8, progress="none")
        assert not (tmp_path / "stage" / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)


# -- training's own files ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_splits(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from training_job import datasets

    return datasets(tmp_path_factory.mktemp("growing"))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short"], ids=["empty", "truncated"])
def test_a_damaged_resume_checkpoint_is_named_with_the_way_out(small_splits, tmp_path, content):
    from floodlib.models import CheckpointError, create_model
    from floodlib.training import fit

    last = tmp_path / "checkpoints" / "Arch_02" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(content)
    train, val = small_splits
    with pytest.raises(CheckpointError, match=f"{re.escape(str(last))}: the resume checkpoint of an interrupted "
                                              f"training cannot be read .* mv '{re.escape(str(last))}' "):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, out_dir=tmp_path,
            epochs=1, batch_size=8, progress="none")
    assert last.read_bytes() == content and not (tmp_path / "models" / "Arch_02").exists()


def test_a_loss_that_is_nan_from_the_start_does_not_claim_saved_weights(small_splits, tmp_path):
    import torch

    from floodlib.models import create_model
    from floodlib.training import NonFiniteLossError, fit

    model = create_model("Arch_02", downsampler="cubic", layers=3, channels=4)
    with torch.no_grad():
        model.body.net[0].weight.fill_(float("nan"))
    train, val = small_splits
    with pytest.raises(NonFiniteLossError, match="Training stopped; no epoch completed, so no weights were saved"):
        fit(model, train, val, out_dir=tmp_path, epochs=2, batch_size=8, progress="none")
    assert not (tmp_path / "models" / "Arch_02" / "model.pth").exists()


# -- writes: a full disk named, the previous file kept; the modes any new file gets ----------------------------

FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as a full disk with ENOSPC
sys.path.insert(0, {root!r})
import numpy as np
from floodlib.data.store import WriteError
from floodlib.models import create_model, save_model
from floodlib.data.store import atomic_json, write_simulation
sys.path.insert(0, {tests!r})
from training_job import growing_flood_plan
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    {call}
except WriteError as error:
    print(error)
"""


@pytest.mark.parametrize("call, name", [
    ("save_model(create_model('Arch_02'), sys.argv[1])", "model.pth"),
    ("write_simulation(sys.argv[1], growing_flood_plan(0))", "plan.h5"),
    ("atomic_json({'x': 'y' * 100000}, sys.argv[1])", "summary.json"),
], ids=["checkpoint", "store", "json"])
def test_a_full_disk_is_named_and_the_previous_file_kept(tmp_path, call, name):
    target = tmp_path / name
    target.write_bytes(b"the previous result")
    script = FULL_DISK.format(root=str(ROOT), tests=str(Path(__file__).parent), call=call)
    done = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{target}: could not be written: ") and "MB free on its file system" in done.stdout
    assert "the previous file is intact" in done.stdout
    assert target.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_written_files_get_the_umask_mode_not_a_private_one(tmp_path):
    from floodlib.data.store import atomic_json

    previous = os.umask(0o022)
    try:
        path = atomic_json({"a": 1}, tmp_path / "summary.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- the viewer serves where it says, and leaves nothing behind ------------------------------------------------

def test_the_viewer_refuses_a_busy_port_instead_of_moving_to_another(tmp_path):
    (tmp_path / "params.yaml").write_text("name: x\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "floodlib.viewer", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is not free" in done.stderr and "--port 0" in done.stderr
    assert "at http://" not in done.stdout


def test_the_viewer_stopped_by_sigterm_removes_its_temporary_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.yaml").write_text("name: x\n")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "floodlib.viewer", str(run), "--port", "0"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=dict(os.environ, TMPDIR=str(temporary)))
    announced = process.stdout.readline()
    assert re.search(r"at http://127\.0\.0\.1:\d+/", announced) and ":0/" not in announced
    assert [p.name for p in temporary.iterdir() if p.name.startswith("floodlib-viewer-")]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not [p.name for p in temporary.iterdir() if p.name.startswith("floodlib-viewer-")]


def test_a_preview_of_no_samples_is_a_clear_error(tmp_path):
    from floodlib.data.preview import preview_samples

    sys.path.insert(0, str(Path(__file__).parent))
    from training_job import datasets

    train, _ = datasets(tmp_path)
    with pytest.raises(ValueError, match="preview_samples: n=0; a figure needs at least one sample"):
        preview_samples(train, n=0)


def test_an_interrupted_stage_is_continued_in_its_folder_and_its_search_goes_on(run_copy):
    """Stage B cut short (no summary yet; its study and trained models there): the same command continues it in
    its folder — the study's finished trials count toward its total, none is run again — and --force would
    start it afresh."""
    import optuna

    summary = run_copy / "B" / "summary.json"
    summary.unlink()
    storage = f"sqlite:///{run_copy / 'B' / 'study.db'}"
    before = [(t.number, t.datetime_start) for t in optuna.load_study(study_name="Arch_04", storage=storage).trials]
    assert before
    run_pipeline(run_copy / "params.yaml", stages=["B"], run_dir=run_copy)
    log = (run_copy / "pipeline.log").read_text()
    assert "stage B: not complete, continued in its folder (--force starts it afresh)" in log
    assert not list(run_copy.glob("B.replaced-*")) and summary.exists()
    after = optuna.load_study(study_name="Arch_04", storage=storage).trials
    assert [(t.number, t.datetime_start) for t in after] == before  # enough trials already: none was run again
