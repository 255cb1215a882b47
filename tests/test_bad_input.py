"""Bad input and faults answered clearly: each case asserts the error, that the message names the file,
field or value, and that nothing already saved is lost or changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from floodlib.pipeline.runner import run_pipeline
from floodlib.runs import ProfileError, RunError, load_profile, stage_state, stale_upstream

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


def test_a_default_spelled_out_is_not_a_change(run_copy, tmp_path):
    default_patience = load_profile(run_copy / "params.yaml")  # the tiny profile leaves C's patience at its default
    edited = profile_with(run_copy, tmp_path, lambda raw: raw["C"].update(patience=30))
    assert load_profile(edited).settings_digest("C") == default_patience.settings_digest("C")
    assert stage_state(run_copy, "C", load_profile(edited))[0] == "complete"


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
    with pytest.raises(ProfileError, match=f"{path}: not valid YAML .*key {key} appears twice in one mapping "
                                           f"\\({lines}\\); the first would be silently dropped"):
        load_profile(path)
