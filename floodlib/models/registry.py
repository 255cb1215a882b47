"""Model registry: every architecture registers its network body by name; :func:`create_model` builds
the full model (terrain downsampler + body) from a name and keyword arguments alone, which is also how
a checkpoint rebuilds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from floodlib.models.base import (
    DEFAULT_CENTER_TERRAIN,
    DEFAULT_CHANGE_SCALE,
    DEFAULT_DEPTH_SCALE,
    DEFAULT_TERRAIN_SCALE,
    SCALE_KEYS,
    FloodModel,
    check_scale,
)
from floodlib.models.downsamplers import create_downsampler, resolve_downsampler_name
from floodlib.models.init import init_weights
from floodlib.models.layers import build_checked


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture: its reference name, descriptive aliases and the body's class."""

    name: str
    aliases: tuple[str, ...]
    body: type[nn.Module]
    description: str


_MODELS: dict[str, ModelEntry] = {}
_LOOKUP: dict[str, str] = {}  # lower-cased name or alias -> reference name

# Architectures whose default depth-change scale is not DEFAULT_CHANGE_SCALE. Arch_09's final tanh bounds
# its body's output to +-1, so the change scale is its bound in metres: 1.0 keeps the reference's +-1 m (which
# 2 % of the measured depth changes exceed), where the common 0.25 would clip 11 % of them.
_CHANGE_SCALES: dict[str, float] = {"Arch_09": 1.0}


def register_model(name: str, *, aliases: tuple[str, ...] = (), description: str = "") -> Callable:
    """Class decorator registering a network body (B, 3, 32, 32) -> (B, 1, 32, 32) under ``name``."""

    def decorate(body: type[nn.Module]) -> type[nn.Module]:
        for key in (name, *aliases):
            if key.lower() in _LOOKUP:
                raise ValueError(f"model name {key!r} is already registered for {_LOOKUP[key.lower()]}")
        _MODELS[name] = ModelEntry(name, tuple(aliases), body, description or (body.__doc__ or "").strip().split("\n")[0])
        for key in (name, *aliases):
            _LOOKUP[key.lower()] = name
        return body

    return decorate


def list_models() -> list[str]:
    """Reference names of the registered architectures, sorted (``["Arch_02", "Arch_03", ...]``)."""
    return sorted(_MODELS)


def model_aliases() -> dict[str, tuple[str, ...]]:
    """Descriptive aliases of each registered architecture, by reference name."""
    return {name: _MODELS[name].aliases for name in list_models()}


def resolve_model_name(name: str) -> str:
    """Reference name for a reference name or alias (case-insensitive); ValueError listing the valid names."""
    try:
        return _LOOKUP[str(name).lower()]
    except KeyError:
        valid = ", ".join(f"{n} ({', '.join(_MODELS[n].aliases)})" for n in list_models())
        raise ValueError(f"unknown model {name!r}; expected one of: {valid}") from None


def create_model(
    name: str,
    *,
    downsampler: str = "alternating",
    downsampler_kwargs: dict[str, Any] | None = None,
    init: str | None = "xavier",
    center_terrain: bool = DEFAULT_CENTER_TERRAIN,
    terrain_scale: float = DEFAULT_TERRAIN_SCALE,
    depth_scale: float = DEFAULT_DEPTH_SCALE,
    change_scale: float | None = None,
    **kwargs: Any,
) -> FloodModel:
    """Build a registered architecture with its terrain downsampler.

    Parameters
    ----------
    name : reference name (``"Arch_04"``) or alias (``"nondownsampling_attention"``), see :func:`list_models`.
    downsampler : ``"alternating"``, ``"k11s10"`` or ``"cubic"``.
    downsampler_kwargs : keyword arguments of the downsampler (e.g. ``{"c1": 20, "c2": 40}``).
    init : weight initialisation, ``"xavier"`` (the reference's default), ``"kaiming"``, or None to keep
        PyTorch's defaults.
    center_terrain : subtract each patch's mean elevation before downsampling. Flow depends on relative
        elevation only, so this loses nothing and keeps activations small whatever the survey's datum;
        False feeds raw elevations as the reference does.
    terrain_scale : the (centred) terrain is divided by this before the downsampler, m.
    depth_scale : the depths are divided by this before the body, m.
    change_scale : the body's output is multiplied by this to give the depth change in m; None: the
        architecture's default (DEFAULT_CHANGE_SCALE; 1.0 for Arch_09, whose tanh output then keeps the
        reference's +-1 m bound). The defaults and the statistics behind them are in
        :mod:`floodlib.models.base`; all three 1.0 give the reference's networks on raw metres.
    **kwargs : the architecture's own keyword arguments (e.g. ``layers``, ``channels``, ``attentions``
        for Arch_04).

    Returns
    -------
    FloodModel mapping ``(terrain (B,1,321,321) m, depths (B,2,32,32) m)`` to the depth change
    ``(B,1,32,32)`` in m; ``model.config`` holds everything needed to rebuild it.

    Notes
    -----
    Building a model turns on ``torch.set_flush_denormal(True)`` for the process (on CPUs that support it):
    floats below 1.2e-38 become 0, which spares the softmax and tanh tails the many-fold slowdown of
    denormal arithmetic and changes no result that matters — but it applies to all of the process's torch
    computations; ``torch.set_flush_denormal(False)`` after building restores IEEE behaviour.
    """
    arch = resolve_model_name(name)
    downsampler = resolve_downsampler_name(downsampler)
    downsampler_kwargs = dict(downsampler_kwargs or {})
    if change_scale is None:
        change_scale = _CHANGE_SCALES.get(arch, DEFAULT_CHANGE_SCALE)
    scales = {key: check_scale(key, value)
              for key, value in zip(SCALE_KEYS, (terrain_scale, depth_scale, change_scale), strict=True)}
    body = build_checked(_MODELS[arch].body, f"model {arch!r}", kwargs)
    terrain_net = create_downsampler(downsampler, **downsampler_kwargs)
    config = {
        "arch": arch,
        "arch_kwargs": dict(kwargs),
        "downsampler": downsampler,
        "downsampler_kwargs": downsampler_kwargs,
        "center_terrain": bool(center_terrain),
        **scales,
    }
    model = FloodModel(body=body, downsampler=terrain_net, config=config)
    if init is not None:
        init_weights(model, init)
    # Softmax and tanh tails underflow into denormal floats on CPU, which run many times slower than
    # normal ones (Arch_04 with raw elevations: 4x); flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    return model
