"""The model every architecture becomes: terrain downsampler + network body."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import nn

from floodlib.models.constants import DEPTH_CHANNELS, PATCH_CELLS, TERRAIN_POINTS


#: Config keys of the fixed scale factors, in the order terrain, depth, depth change.
SCALE_KEYS = ("terrain_scale", "depth_scale", "change_scale")

# Default scale factors (m), chosen so that what the networks take in and put out is of order one.
# Measured on the smoke profile's simulated data (params/smoke.yaml: procedural valley plans of 96x96
# cells, seed 7) over the 266 samples of big_train, big_val and big_test (272,384 cells; small_train and
# small_val alone, 158 samples, agree within 10 %):
#   depth at n        RMS 0.26 m, mean 0.07 m; 55 % of cells dry; 99th percentile 1.4 m, max 2.9 m;
#   depth change      RMS 0.29 m, mean |.| 0.09 m; 37 % of cells unchanged; 99th percentile of |.| 1.5 m,
#                     max 2.8 m; |.| > 0.25 m in 11 % of cells, > 1 m in 2 %;
#   centred terrain   RMS 1.26 m (each patch's own mean removed), 99th percentile of |.| 5.1 m, max 9.6 m.
# Each default is the power of two nearest the quantity's RMS, so the scaled RMS lies between 0.7 and 1.4
# and the scaling is exact in binary floating point (bf16 included). Centring alone brings the terrain to
# order one, hence 1. The change scale matters most where a body's output is of order one from the start:
# at initialisation Arch_08's SELU body puts out an RMS of 1.0-1.4, i.e. 4-5 times the target's spread in
# raw metres, and at lr 1e-3 its validation loss then rose to 4.7 times the no-change loss; scaled, it
# starts within the target's spread and stays near the no-change loss (benchmarks/normalisation.py).
# Arch_09 keeps 1.0 as its change scale (registry: its tanh output is bounded by the change scale).
DEFAULT_TERRAIN_SCALE = 1.0
DEFAULT_DEPTH_SCALE = 0.25
DEFAULT_CHANGE_SCALE = 0.25
#: New models subtract each patch's mean elevation before the downsampler (create_model's default).
DEFAULT_CENTER_TERRAIN = True
#: Config keys added after the first checkpoints were written, with the value that reproduces what a config
#: without them computed: no centring, scale factors of 1 (the networks saw raw metres).
ABSENT_KEY_VALUES = {"center_terrain": False, **{key: 1.0 for key in SCALE_KEYS}}


def check_scale(name: str, value: Any) -> float:
    """``value`` as a float; ValueError unless it is a positive, finite number."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive finite number (a scale factor in m; 1.0 = identity)")
    return float(value)


def check_inputs(terrain: torch.Tensor, depths: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Raise TypeError unless both are torch tensors (of ``dtype``, the model's weights', when given), and
    ValueError unless terrain is (B, 1, 321, 321) and depths (B, 2, 32, 32) with the same B."""
    for name, value in (("terrain", terrain), ("depths", depths)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} is a {type(value).__module__}.{type(value).__name__}; expected a torch.Tensor "
                            f"(e.g. torch.from_numpy(array).float())")
        if dtype is not None and value.dtype != dtype:
            raise TypeError(f"{name} is {value.dtype}, the model's weights {dtype}; convert it ({name}.to({dtype})) "
                            "or the model (model.to(dtype))")
    expected_terrain = (1, TERRAIN_POINTS, TERRAIN_POINTS)
    expected_depths = (DEPTH_CHANNELS, PATCH_CELLS, PATCH_CELLS)
    problems = []
    if terrain.dim() != 4 or tuple(terrain.shape[1:]) != expected_terrain:
        problems.append(f"terrain has shape {tuple(terrain.shape)}, expected (B, {', '.join(map(str, expected_terrain))})")
    if depths.dim() != 4 or tuple(depths.shape[1:]) != expected_depths:
        problems.append(
            f"depths has shape {tuple(depths.shape)}, expected (B, {', '.join(map(str, expected_depths))})"
            " = [boundary ring at n+1, depth at n]"
        )
    if not problems and terrain.shape[0] != depths.shape[0]:
        problems.append(f"terrain holds {terrain.shape[0]} samples but depths {depths.shape[0]}")
    if problems:
        raise ValueError("; ".join(problems))


class FloodModel(nn.Module):
    """Predicts the depth change of a patch over one output interval.

    ``forward(terrain, depths)``: terrain (B, 1, 321, 321) elevation in m, depths (B, 2, 32, 32) in m
    ([boundary ring of depth at n+1, depth at n]) -> depth change (B, 1, 32, 32) in m. The downsampled
    terrain is concatenated in front of the depth channels and passed to the body.

    Normalisation lives here, so that a checkpoint predicts correctly from raw data whoever feeds it:
    the (optionally centred) terrain is divided by ``config["terrain_scale"]`` before the downsampler, the
    depths by ``config["depth_scale"]`` before the body, and the body's output is multiplied by
    ``config["change_scale"]`` to give metres. The scales are plain floats, not parameters or buffers; a
    config without them (checkpoints written before they existed) means 1.0, the identity.

    ``config`` holds the architecture's name and keyword arguments, so
    ``create_model(config["arch"], ...)`` rebuilds the same network.
    """

    #: What the model was trained on, from the checkpoint (``{"delta_t_s": 3600.0, "cell_size_m": [10.0]}``);
    #: None for an untrained model or a checkpoint written before it was recorded. Not part of ``config``:
    #: the same network trained on other data is the same configuration.
    trained_on: dict[str, Any] | None = None

    def __init__(self, *, body: nn.Module, downsampler: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.downsampler = downsampler
        self.body = body
        self.config = config
        self.center_terrain = bool(config.get("center_terrain", ABSENT_KEY_VALUES["center_terrain"]))
        self.terrain_scale, self.depth_scale, self.change_scale = (
            check_scale(key, config.get(key, ABSENT_KEY_VALUES[key])) for key in SCALE_KEYS)

    @property
    def arch(self) -> str:
        return self.config["arch"]

    def terrain_features(self, terrain: torch.Tensor) -> torch.Tensor:
        """The downsampled terrain (B, 1, 32, 32) the body takes, from terrain (B, 1, 321, 321) in m.

        The terrain never changes during a flood, so full-domain prediction computes this once per patch
        and reuses it for every step and closure iteration (:meth:`predict_change`).
        """
        # The terrain path runs in float32 even under autocast: bf16 resolves an elevation of 380 m only
        # to 2 m, and on an H100 the alternating downsampler was no faster in bf16 (25,093 samples/s
        # against 27,642 in float32, forward and backward at batch 300).
        with torch.autocast(terrain.device.type, enabled=False):
            if self.center_terrain:
                terrain = terrain - terrain.mean(dim=(2, 3), keepdim=True)
            return self.downsampler(terrain / self.terrain_scale)

    def predict_change(self, features: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        """Depth change (B, 1, 32, 32) in m from :meth:`terrain_features` and depths (B, 2, 32, 32) in m."""
        # Dividing or multiplying by 1.0 is exact, so a checkpoint without scales predicts bit for bit as before.
        change = self.body(torch.cat([features, depths / self.depth_scale], dim=1))
        return change * self.change_scale

    def forward(self, terrain: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        check_inputs(terrain, depths, dtype=next(self.parameters()).dtype)
        return self.predict_change(self.terrain_features(terrain), depths)

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, downsampler={self.config['downsampler']!r}, "
                f"center_terrain={self.center_terrain}, terrain_scale={self.terrain_scale:g}, "
                f"depth_scale={self.depth_scale:g}, change_scale={self.change_scale:g}")
