"""The training engine on real (small) data: learning, artifacts, kill-and-resume, early stopping, guards."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from floodlib.data.dataset import PatchDataset
from floodlib.models import create_model
from floodlib.training import (CheckpointError, NonFiniteLossError, analyse_convergence, fit, load_model,
                               no_change_loss, read_checkpoint)
from floodlib.training.fitting import PlateauSchedule, SurrogateModule, blend_rings

sys.path.insert(0, str(Path(__file__).parent))
from training_job import datasets  # noqa: E402

JOB = Path(__file__).parent / "training_job.py"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    torch.set_num_threads(2)
    return datasets(tmp_path_factory.mktemp("growing"))


def test_a_small_model_beats_the_no_change_baseline_and_saves_artifacts(splits, tmp_path):
    train, val = splits
    torch.manual_seed(0)
    model = create_model("Arch_02", downsampler="cubic", layers=4, channels=8)
    result = fit(model, train, val, out_dir=tmp_path, epochs=6, lr=3e-3, batch_size=8, progress="none")
    baseline = no_change_loss(val)
    truth = torch.stack([val[i].depth_change for i in range(len(val))])
    assert baseline == pytest.approx(float(truth.double().abs().mean()), rel=1e-9)
    assert result.baseline_val_loss == pytest.approx(baseline)
    assert min(result.history["val_loss"]) < 0.5 * baseline
    assert result.analysis["beats_baseline"] and result.analysis["epochs_run"] == 6
    # The saved model predicts exactly what the returned one does, rebuilt from the file alone.
    loaded = load_model(result.model_path, expected_arch="Arch_02")
    sample = val[0]
    with torch.no_grad():
        assert_array_equal(loaded(sample.terrain[None], sample.depths[None]).numpy(),
                           result.model(sample.terrain[None], sample.depths[None]).numpy())
    # Its recorded validation loss is the one of the best epoch, recomputed here.
    with torch.no_grad():
        predicted = torch.cat([loaded(torch.stack([val[i].terrain for i in range(len(val))]),
                                      torch.stack([val[i].depths for i in range(len(val))]))])
    recomputed = float((predicted - truth).abs().double().mean())
    checkpoint = read_checkpoint(result.model_path)
    assert checkpoint["best_val_loss"] == pytest.approx(recomputed, rel=1e-5)
    assert checkpoint["epoch"] == int(np.argmin(result.history["val_loss"])) + 1
    losses = torch.load(result.losses_path, weights_only=True)
    assert set(losses) == {"train_loss", "val_loss", "lr", "epoch_time_s", "baseline_val_loss"}
    assert_array_equal(losses["val_loss"].numpy(), result.history["val_loss"])
    summary = json.loads(result.summary_path.read_text())
    assert summary["arch"] == "Arch_02" and summary["val_samples"] == len(val)
    assert not (tmp_path / "checkpoints" / "Arch_02").exists()  # resume state removed once complete


def run_job(root: Path, epochs: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # With blended rings, whose random draws a resumed run must repeat too.
    return subprocess.Popen([sys.executable, str(JOB), str(root), str(epochs), "--ring-blend", "0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    epochs = 8
    whole = run_job(tmp_path / "whole", epochs)
    output, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, output

    root = tmp_path / "killed"
    job = run_job(root, epochs)
    for line in job.stdout:  # one line per finished epoch; kill the process as the 3rd one is being saved
        if f"epoch 3/{epochs}" in line:
            job.send_signal(signal.SIGKILL)
            break
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    assert not (root / "stage" / "losses" / "Arch_02" / "losses.pt").exists()  # it really was cut short

    resumed = run_job(root, epochs)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    summary = json.loads((root / "stage" / "models" / "Arch_02" / "summary.json").read_text())
    assert summary["resumed_from_epoch"] in (2, 3) and summary["settings"]["ring_blend"] == 0.5
    a = torch.load(tmp_path / "whole" / "stage" / "losses" / "Arch_02" / "losses.pt", weights_only=True)
    b = torch.load(root / "stage" / "losses" / "Arch_02" / "losses.pt", weights_only=True)
    for key in ("train_loss", "val_loss", "lr"):
        assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    assert a["lr"][-1] < a["lr"][0]  # the plateau schedule acted, and was resumed with its state
    weights_a = read_checkpoint(tmp_path / "whole" / "stage" / "models" / "Arch_02" / "model.pth")["state_dict"]
    weights_b = read_checkpoint(root / "stage" / "models" / "Arch_02" / "model.pth")["state_dict"]
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def test_blend_rings_moves_a_fraction_of_rings_toward_the_depth_at_n():
    generator = torch.Generator().manual_seed(0)
    ring_cells, size, count = 2, 32, 400
    later = torch.rand(count, size, size, generator=generator) + 1.0
    now = torch.rand(count, size, size, generator=generator)
    ring = later.clone()
    ring[:, ring_cells:-ring_cells, ring_cells:-ring_cells] = 0.0
    depths = torch.stack([ring, now], dim=1)
    on_ring = ring > 0

    assert torch.equal(blend_rings(depths, 0.0, ring_cells=ring_cells), depths)
    blended = blend_rings(depths, 0.25, ring_cells=ring_cells, generator=torch.Generator().manual_seed(1))
    assert torch.equal(blended, blend_rings(depths, 0.25, ring_cells=ring_cells,
                                            generator=torch.Generator().manual_seed(1)))
    assert torch.equal(blended[:, 1], now)  # the depth at n is never touched
    assert torch.equal(blended[:, 0][~on_ring], ring[~on_ring])  # nor the interior, which stays zero
    # Each ring cell lies between its two depths, at one weight per sample: w = (ring - new) / (ring - now).
    weight = (ring - blended[:, 0]) / (ring - now)
    weight = torch.where(on_ring, weight, torch.nan)
    per_sample = weight.flatten(1).nanmean(dim=1)
    assert torch.allclose(weight[on_ring], per_sample[:, None, None].expand_as(weight)[on_ring], atol=1e-5)
    assert (per_sample >= 0).all() and (per_sample < 1 + 1e-6).all()
    moved = per_sample > 1e-6
    assert 0.18 < moved.float().mean() < 0.32  # a quarter of the samples, within sampling error of 400
    assert 0.35 < per_sample[moved].mean() < 0.65  # uniform weights
    everything = blend_rings(depths, 1.0, ring_cells=ring_cells, generator=torch.Generator().manual_seed(2))
    assert (everything[:, 0][on_ring] < ring[on_ring]).float().mean() > 0.99


def test_ring_blend_trains_on_blended_rings_and_validates_on_true_ones(splits, tmp_path):
    train, val = splits
    histories = {}
    for blend in (0.0, 1.0):
        torch.manual_seed(0)
        model = create_model("Arch_02", downsampler="cubic", layers=3, channels=4)
        result = fit(model, train, val, out_dir=tmp_path / str(blend), epochs=2, lr=1e-3, batch_size=8,
                     progress="none", ring_blend=blend)
        histories[blend] = result.history
        summary = json.loads(result.summary_path.read_text())
        assert summary["settings"]["ring_blend"] == blend
        assert result.baseline_val_loss == pytest.approx(no_change_loss(val))
        # The best epoch's validation loss is the returned model's on the true rings, recomputed here.
        with torch.no_grad():
            predicted = result.model(torch.stack([val[i].terrain for i in range(len(val))]),
                                     torch.stack([val[i].depths for i in range(len(val))]))
        truth = torch.stack([val[i].depth_change for i in range(len(val))])
        assert min(result.history["val_loss"]) == pytest.approx(float((predicted - truth).abs().double().mean()), rel=1e-5)
    # Same initial weights and batches: only the rings of the training batches differ.
    assert histories[0.0]["train_loss"][0] != histories[1.0]["train_loss"][0]
    with pytest.raises(ValueError, match=r"ring_blend=1.5 must be a fraction of the training samples, from 0 to 1"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val,
            out_dir=tmp_path / "bad", epochs=1, lr=1e-3, batch_size=8, progress="none", ring_blend=1.5)
    assert not (tmp_path / "bad").exists()


def test_early_stopping_on_a_plateau(splits, tmp_path):
    train, val = splits
    model = create_model("Arch_02", downsampler="cubic", layers=3, channels=4)
    # A learning rate this small leaves the validation loss flat to within float noise: no improvement.
    result = fit(model, train, val, out_dir=tmp_path, epochs=50, lr=1e-12, batch_size=16, patience=2, progress="none")
    assert result.analysis["stopped_early"]
    assert len(result.history["val_loss"]) <= 2 + result.analysis["best_epoch"]
    assert len(result.history["val_loss"]) < 50


@pytest.mark.parametrize(("each_step", "message"), [
    (None, r"Arch_02: train loss is nan at epoch 1, batch 1\..*no epoch of this run completed; the finished model "
           r"that was there is kept in .*Arch_02\.replaced-"),
    # As on a GPU: the first bad batch is recorded on the device and reported before the epoch's validation.
    (False, r"Arch_02: train loss is not finite at epoch 1, batch 1\..*no epoch of this run completed; the finished "
            r"model that was there is kept in .*Arch_02\.replaced-"),
])
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_model(splits, tmp_path, monkeypatch,
                                                                                   each_step, message):
    train, val = splits
    model = create_model("Arch_02", downsampler="cubic", layers=3, channels=4)
    fit(model, train, val, out_dir=tmp_path, epochs=1, lr=1e-3, batch_size=8, progress="none")
    good = read_checkpoint(tmp_path / "models" / "Arch_02" / "model.pth")
    with torch.no_grad():
        model.body.net[0].weight.fill_(float("nan"))
    monkeypatch.setattr(SurrogateModule, "check_loss_each_step", each_step)
    with pytest.raises(NonFiniteLossError, match=message):
        fit(model, train, val, out_dir=tmp_path, epochs=3, lr=1e-3, batch_size=8, progress="none")
    (folder,) = (tmp_path / "models").glob("Arch_02.replaced-*")
    kept = read_checkpoint(folder / "model.pth")
    for key, value in good["state_dict"].items():
        assert torch.equal(kept["state_dict"][key], value)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(epochs=0), r"epochs=0 must be a positive integer"),
    (dict(lr=-1e-3), r"lr=-0.001 must be a positive learning rate"),
    (dict(batch_size=0), r"batch_size=0 must be a positive integer"),
    (dict(name="../elsewhere"), r"name='../elsewhere' must be a folder \(or sub-folder\) name inside out_dir"),
    (dict(seed=-1), r"seed=-1 must be a whole number from 0 to 2\*\*32 - 1"),
    (dict(progress="loud"), r"progress='loud'; expected one of \['auto', 'bar', 'epoch', 'none'\]"),
])
def test_bad_arguments_fail_before_any_work(splits, tmp_path, kwargs, pattern):
    train, val = splits
    settings = dict(out_dir=tmp_path, epochs=1, lr=1e-3, batch_size=8, progress="none") | kwargs
    with pytest.raises(ValueError, match=pattern):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, **settings)
    assert not any(tmp_path.iterdir())


def test_empty_split_or_not_a_patch_dataset_is_refused(splits, tmp_path):
    train, val = splits
    all_dry = PatchDataset(val.files, spec=dataclasses.replace(val.spec, dry_threshold_m=1e9), name="val")
    assert len(all_dry) == 0
    dropped = all_dry.summary.dry_dropped
    assert dropped > 0 and all_dry.summary.masked_dropped == 0
    with pytest.raises(ValueError, match=rf"the val split \('val'\) has no samples: every patch of its {len(val.files)} plan\(s\) was "
                                         rf"dropped: {dropped} dry \(no water at n nor n \+ dt\) and 0 reaching"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, all_dry, out_dir=tmp_path,
            epochs=1, progress="none")
    with pytest.raises(ValueError, match=r"the val split \('none'\) has no samples: it is a subset of split 'val' in "
                                         r"which no sample was chosen"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val.subset([], name="none"),
            out_dir=tmp_path, epochs=1, progress="none")
    with pytest.raises(TypeError, match="fit's val split must be a PatchDataset .* got Subset"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train,
            torch.utils.data.Subset(val, [0, 1]), out_dir=tmp_path, epochs=1, progress="none")
    assert not any(tmp_path.iterdir())


class PickledObject:
    """An object torch.save pickles by reference, which a weights-only load refuses."""


def test_checkpoint_errors(tmp_path, splits):
    with pytest.raises(CheckpointError, match="model.pth: model checkpoint does not exist"):
        load_model(tmp_path / "model.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="broken.pth: not a readable model checkpoint "
                                              r"\(not the zip archive torch.save writes; expected a model.pth"):
        load_model(broken)
    import h5py

    with h5py.File(tmp_path / "plan.h5", "w") as h5:
        h5["water_depth"] = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"plan.h5: not a readable model checkpoint \(an HDF5 file"):
        load_model(tmp_path / "plan.h5")
    torch.save({"state_dict": {}, "note": PickledObject()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError) as refused:  # refused, and no advice to unpickle it after all
        load_model(tmp_path / "pickled.pth")
    assert ("pickled.pth: not a readable model checkpoint (it holds objects other than tensors, numbers, strings and "
            "containers, which floodlib does not unpickle (Unsupported global: GLOBAL ") in str(refused.value)
    assert "PickledObject); expected a model.pth that floodlib saved)" in str(refused.value)
    assert "weights_only" not in str(refused.value)
    train, val = splits
    result = fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, out_dir=tmp_path,
                 epochs=1, batch_size=8, progress="none")
    with pytest.raises(CheckpointError, match=r"holds architecture 'Arch_02', expected 'Arch_05'"):
        load_model(result.model_path, expected_arch="Arch_05")
    # the names create_model takes: reference names and aliases
    assert load_model(result.model_path, expected_arch="nondownsampling_conv").arch == "Arch_02"
    with pytest.raises(CheckpointError, match=r"holds architecture 'Arch_02', expected 'Arch_05 \(classic_unet\)'"):
        load_model(result.model_path, expected_arch="classic_unet")
    with pytest.raises(CheckpointError, match=r"expected_arch: unknown model 'Arch_99'"):
        load_model(result.model_path, expected_arch="Arch_99")


def test_convergence_analysis_known_curves():
    falling = analyse_convergence([1.0, 0.8, 0.6, 0.5], [1.0, 0.8, 0.6, 0.5], baseline_val_loss=2.0, max_epochs=10)
    assert falling.val_still_falling and not falling.overfitting and falling.stopped_early  # 4 of 10 epochs
    assert falling.best_epoch == 4 and falling.skill == pytest.approx(0.75)
    over = analyse_convergence([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1.0, 0.6, 0.5, 0.55, 0.6, 0.7],
                               baseline_val_loss=0.4, max_epochs=6, window=4)
    assert over.overfitting and not over.val_still_falling and not over.beats_baseline and over.best_epoch == 3
    assert over.gap_trend_per_epoch > 0 and not over.stopped_early
    assert math.isclose(over.skill, 1 - 0.5 / 0.4)


def test_ctrl_c_stops_fit_with_a_message_and_a_resume_needs_the_same_settings(splits, tmp_path):
    """Ctrl-C (here raised after the 2nd epoch) stops fit with a KeyboardInterrupt that says how to go on;
    resuming with another learning rate is refused, naming it; with the same settings it continues."""
    from lightning.pytorch.callbacks import Callback

    train, val = splits

    class CtrlC(Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    settings = dict(out_dir=tmp_path, epochs=4, lr=3e-3, batch_size=8, progress="none")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt, match=r"Arch_02: training interrupted after \d complete epoch\(s\); calling "
                                                r"fit again with the same arguments resumes from .*last\.ckpt"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, callbacks=[CtrlC()], **settings)
    with pytest.raises(ValueError, match=r"holds an interrupted training with other settings \(lr 0\.003 there, 0\.01 now\)"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, **{**settings, "lr": 1e-2})
    with pytest.raises(ValueError, match=r"other settings \(config\.arch_kwargs \{'layers': 3, 'channels': 4\} there, "
                                         r"\{'layers': 3, 'channels': 8\} now\)"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=8), train, val, **settings)
    # other samples (a subset of the same split), or a learning-rate schedule it did not have
    fewer = train.subset(range(len(train) - 2), name=train.name)
    with pytest.raises(ValueError, match=rf"other settings \(train '{train.name}: {len(train)} samples of \d+ plans, "
                                         rf"[0-9a-f]{{12}}' there, '{train.name}: {len(train) - 2} samples of \d+ plans, "):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), fewer, val, **settings)
    with pytest.raises(ValueError, match=r"other settings \(plateau None there, \{'factor': 0.5"):
        fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, plateau=PlateauSchedule(),
            **settings)
    result = fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, **settings)
    summary = json.loads(result.summary_path.read_text())
    assert summary["resumed_from_epoch"] >= 1 and len(result.history["val_loss"]) == 4


def test_training_again_under_a_finished_models_name_keeps_the_finished_one(splits, tmp_path):
    """A new run's first epoch writes model.pth: the finished model it replaces is moved aside first, its
    weights, summary and losses together, so they never describe each other's files."""
    train, val = splits
    settings = dict(out_dir=tmp_path, epochs=1, batch_size=8, progress="none")
    torch.manual_seed(0)
    first = fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, lr=3e-3, **settings)
    before = {path.name: path.read_bytes() for path in (first.model_path, first.summary_path, first.losses_path)}
    second = fit(create_model("Arch_02", downsampler="cubic", layers=3, channels=4), train, val, lr=1e-3, **settings)
    assert second.model_path == first.model_path and second.model_path.read_bytes() != before["model.pth"]
    (kept,) = (tmp_path / "models").glob("Arch_02.replaced-*")
    assert {path.name: path.read_bytes() for path in kept.iterdir()} == before
    assert json.loads(second.summary_path.read_text())["settings"]["lr"] == 1e-3
