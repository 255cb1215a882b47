"""Scale factors inside the model: metres in, metres out, whatever the networks see; stored in every
checkpoint; checkpoints written before they existed load with identity scales and predict as before."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from floodlib.models import create_model, list_models
from floodlib.models.base import (
    DEFAULT_CHANGE_SCALE,
    DEFAULT_DEPTH_SCALE,
    DEFAULT_TERRAIN_SCALE,
    SCALE_KEYS,
)
from floodlib.models.checkpoints import load_model, save_model

sys.path.insert(0, str(Path(__file__).parent))
from test_models import PARAMETER_COUNTS, n_params  # noqa: E402  (ARCHITECTURES.md's table, in one place)

SCALES = {"terrain_scale": 3.0, "depth_scale": 0.5, "change_scale": 0.125}
IDENTITY = {key: 1.0 for key in SCALE_KEYS}


def _inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    terrain = 380 + 0.05 * torch.randn(batch, 1, 321, 321, generator=generator).cumsum(-1)
    depths = 2 * torch.rand(batch, 2, 32, 32, generator=generator)
    return terrain, depths


def _small(**scales) -> torch.nn.Module:
    """A small model with a learnable downsampler, so the terrain path has weights too."""
    torch.manual_seed(0)
    return create_model("Arch_04", downsampler="k11s10", downsampler_kwargs={"c1": 4, "c2": 6},
                        layers=4, channels=8, attentions=1, **scales).eval()


def _unscaled_forward(model, terrain: torch.Tensor, depths: torch.Tensor, *, center: bool) -> torch.Tensor:
    """What FloodModel computed before scale factors existed, written out from its parts."""
    if center:
        terrain = terrain - terrain.mean(dim=(2, 3), keepdim=True)
    return model.body(torch.cat([model.downsampler(terrain), depths], dim=1))


def test_defaults_are_in_the_config_and_each_architecture_has_its_change_scale():
    for arch in list_models():
        config = create_model(arch, downsampler="cubic").config
        expected_change = 1.0 if arch == "Arch_09" else DEFAULT_CHANGE_SCALE  # Arch_09 keeps its +-1 m tanh bound
        assert {key: config[key] for key in SCALE_KEYS} == {
            "terrain_scale": DEFAULT_TERRAIN_SCALE, "depth_scale": DEFAULT_DEPTH_SCALE, "change_scale": expected_change}
        assert all(type(config[key]) is float for key in SCALE_KEYS)
    # Explicit values override the defaults, Arch_09's included; integers are stored as floats.
    config = create_model("Arch_09", downsampler="cubic", terrain_scale=2, depth_scale=0.5, change_scale=0.25).config
    assert {key: config[key] for key in SCALE_KEYS} == {"terrain_scale": 2.0, "depth_scale": 0.5, "change_scale": 0.25}
    assert type(config["terrain_scale"]) is float


@pytest.mark.parametrize("value", [0, -0.5, float("nan"), float("inf"), True, "0.25", None])
def test_a_scale_that_is_not_a_positive_finite_number_is_refused(value):
    with pytest.raises(ValueError, match=rf"depth_scale={value!r}: expected a positive finite number"):
        create_model("Arch_02", downsampler="cubic", layers=3, channels=4, depth_scale=value)


def test_scale_factors_survive_a_save_load_round_trip(tmp_path):
    terrain, depths = _inputs()
    for scales in ({}, SCALES):
        model = _small(**scales)
        path = save_model(model, tmp_path / "model.pth", epoch=3, best_val_loss=0.01)
        loaded = load_model(path)
        assert loaded.config == model.config
        assert (loaded.terrain_scale, loaded.depth_scale, loaded.change_scale) == \
            (model.terrain_scale, model.depth_scale, model.change_scale)
        with torch.no_grad():
            assert_array_equal(loaded(terrain, depths).numpy(), model(terrain, depths).numpy())
    assert (loaded.terrain_scale, loaded.depth_scale, loaded.change_scale) == (3.0, 0.5, 0.125)


@pytest.mark.parametrize("center", [True, False])
def test_scaled_model_equals_the_unscaled_network_fed_scaled_inputs(center):
    """Known answer: with scales (t, d, c), the model's output is c * body(downsampler(terrain / t), depths / d)
    of the same weights — and the forward takes and returns metres."""
    terrain, depths = _inputs(seed=1)
    scaled = _small(center_terrain=center, **SCALES)
    plain = _small(center_terrain=center, **IDENTITY)
    plain.load_state_dict(scaled.state_dict())
    # Centre before dividing, as the model does: 380 m / 3 minus its mean would cancel float32 digits.
    relief = terrain - terrain.mean(dim=(2, 3), keepdim=True) if center else terrain
    with torch.no_grad():
        got = scaled(terrain, depths)
        by_hand = SCALES["change_scale"] * _unscaled_forward(
            scaled, relief / SCALES["terrain_scale"], depths / SCALES["depth_scale"], center=False)
        through_plain_model = SCALES["change_scale"] * plain(relief / SCALES["terrain_scale"],
                                                             depths / SCALES["depth_scale"])
        unscaled = plain(terrain, depths)
    assert_allclose(got.numpy(), by_hand.numpy(), rtol=1e-6, atol=1e-9)
    # The plain model centres the centred relief again: a mean of ~1e-8 m, felt at float32 rounding level.
    assert_allclose(got.numpy(), through_plain_model.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got.numpy(), unscaled.numpy(), rtol=1e-2, atol=1e-5)  # the scales do change the output


def _old_format(model, path: Path, *, drop: tuple[str, ...]) -> Path:
    """Save ``model`` as floodlib wrote checkpoints before scale factors: the same file without the keys."""
    save_model(model, path, epoch=1, best_val_loss=0.02)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["config"] = {k: v for k, v in checkpoint["config"].items() if k not in drop}
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("drop,center", [(SCALE_KEYS, True), ((*SCALE_KEYS, "center_terrain"), False)],
                         ids=["without-scales", "without-scales-and-centring"])
def test_an_old_checkpoint_loads_with_identity_scales_and_predicts_as_before(tmp_path, drop, center):
    terrain, depths = _inputs(seed=2)
    trained = _small(center_terrain=center)  # its weights stand for those of an old run
    with torch.no_grad():
        before = _unscaled_forward(trained, terrain, depths, center=center)
    path = _old_format(trained, tmp_path / "old.pth", drop=drop)
    assert not set(drop) & set(torch.load(path, weights_only=True)["config"])
    loaded = load_model(path)
    assert {key: loaded.config[key] for key in SCALE_KEYS} == IDENTITY
    assert loaded.center_terrain is center
    with torch.no_grad():
        assert_array_equal(loaded(terrain, depths).numpy(), before.numpy())  # bit for bit: x / 1.0 is exact
        # The same weights under today's default scales predict something else: the defaulting matters.
        assert not np.allclose(trained(terrain, depths).numpy(), before.numpy(), rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize(("arch", "downsampler"), sorted(PARAMETER_COUNTS))
def test_scale_factors_add_no_parameters_or_buffers(arch, downsampler):
    scaled = create_model(arch, downsampler=downsampler, **SCALES)
    plain = create_model(arch, downsampler=downsampler, **IDENTITY)
    assert n_params(scaled) == n_params(plain) == PARAMETER_COUNTS[(arch, downsampler)]
    assert list(scaled.state_dict()) == list(plain.state_dict())
    assert [name for name, _ in scaled.named_buffers()] == [name for name, _ in plain.named_buffers()]


@pytest.mark.parametrize("arch", list_models())
def test_bf16_autocast_forward_with_scales(arch):
    """Under CPU bf16 autocast the scales apply as in float32 (powers of two are exact in bf16), and the
    terrain path still runs in float32."""
    terrain, depths = _inputs(seed=3)
    torch.manual_seed(0)
    quarter = create_model(arch, terrain_scale=2.0, depth_scale=0.25, change_scale=0.25).eval()
    unit_change = create_model(arch, terrain_scale=2.0, depth_scale=0.25, change_scale=1.0).eval()
    unit_change.load_state_dict(quarter.state_dict())
    seen = []
    quarter.downsampler.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.no_grad():
        reference = quarter(terrain, depths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = quarter(terrain, depths)
            low_unit = unit_change(terrain, depths)
    assert low.shape == (2, 1, 32, 32) and low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    assert seen == [(torch.float32, torch.float32)] * 2
    assert_array_equal(low.float().numpy(), 0.25 * low_unit.float().numpy())
    relative = float((low.float() - reference).norm() / reference.norm())
    assert relative < 0.08, f"{arch}: bf16 output {relative:.1%} away from float32"


def test_normalisation_benchmark_prints_both_settings_side_by_side(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "benchmarks/normalisation.py", "--quick", "--models", "Arch_02",
                             "--epochs", "1", "--data", str(tmp_path / "data")],
                            cwd=root, capture_output=True, text=True, timeout=600, check=True)
    row = next(line for line in result.stdout.splitlines() if line.startswith("Arch_02 "))
    numbers = re.findall(r"-?[\d.]+%?|-", row.split(maxsplit=1)[1])
    baseline = float(numbers[0])
    for best, skill in ((numbers[1], numbers[3]), (numbers[6], numbers[8])):  # raw metres, then scaled
        assert abs((1 - float(best) / baseline) * 100 - float(skill.rstrip("%"))) < 0.1
    assert sorted(p.name for p in (tmp_path / "data").rglob("*.h5")) == ["plan_000.h5", "plan_001.h5", "plan_002.h5"]
