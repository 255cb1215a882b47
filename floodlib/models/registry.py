"""Model registry: every architecture registers its network body by name; :func:`create_model` builds
the full model (terrain downsampler + body) from a name and keyword arguments alone, which is also how
a checkpoint rebuilds it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from floodlib.models.base import FloodModel
from floodlib.models.downsamplers import create_downsampler, resolve_downsampler_name
from floodlib.models.init import init_weights


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture: its seed name, descriptive aliases and the body's class."""

    name: str
    aliases: tuple[str, ...]
    body: type[nn.Module]
    description: str


_MODELS: dict[str, ModelEntry] = {}
_LOOKUP: dict[str, str] = {}  # lower-cased name or alias -> seed name


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
    """Seed names of the registered architectures, sorted (``["Arch_02", "Arch_03", ...]``)."""
    return sorted(_MODELS)


def model_aliases() -> dict[str, tuple[str, ...]]:
    """Descriptive aliases of each registered architecture, by seed name."""
    return {name: _MODELS[name].aliases for name in list_models()}


def resolve_model_name(name: str) -> str:
    """Seed name for a seed name or alias (case-insensitive); ValueError listing the valid names."""
    try:
        return _LOOKUP[str(name).lower()]
    except KeyError:
        valid = ", ".join(f"{n} ({', '.join(_MODELS[n].aliases)})" for n in list_models())
        raise ValueError(f"unknown model {name!r}; expected one of: {valid}") from None


def build_checked(cls: Callable[..., nn.Module], what: str, kwargs: dict[str, Any]) -> nn.Module:
    """``cls(**kwargs)``, with a ValueError naming the accepted keyword arguments when some are unknown."""
    signature = inspect.signature(cls)
    accepted = {
        p.name: p.default for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise ValueError(f"{what}: unknown keyword argument(s) {unknown}; accepted (with defaults): {listed}")
    return cls(**kwargs)


def create_model(
    name: str,
    *,
    downsampler: str = "alternating",
    downsampler_kwargs: dict[str, Any] | None = None,
    init: str | None = "xavier",
    center_terrain: bool = True,
    **kwargs: Any,
) -> FloodModel:
    """Build a registered architecture with its terrain downsampler.

    Parameters
    ----------
    name : seed name (``"Arch_04"``) or alias (``"nondownsampling_attention"``), see :func:`list_models`.
    downsampler : ``"alternating"``, ``"k11s10"`` or ``"cubic"``.
    downsampler_kwargs : keyword arguments of the downsampler (e.g. ``{"c1": 20, "c2": 40}``).
    init : weight initialisation, ``"xavier"`` (the seed's default), ``"kaiming"``, or None to keep
        PyTorch's defaults.
    center_terrain : subtract each patch's mean elevation before downsampling. Flow depends on relative
        elevation only, so this loses nothing and keeps activations small whatever the survey's datum;
        False feeds raw elevations as the reference does.
    **kwargs : the architecture's own keyword arguments (e.g. ``layers``, ``channels``, ``attentions``
        for Arch_04).

    Returns
    -------
    FloodModel mapping ``(terrain (B,1,321,321) m, depths (B,2,32,32) m)`` to the depth change
    ``(B,1,32,32)`` in m; ``model.config`` holds everything needed to rebuild it.
    """
    arch = resolve_model_name(name)
    downsampler = resolve_downsampler_name(downsampler)
    downsampler_kwargs = dict(downsampler_kwargs or {})
    body = build_checked(_MODELS[arch].body, f"model {arch!r}", kwargs)
    terrain_net = create_downsampler(downsampler, **downsampler_kwargs)
    config = {
        "arch": arch,
        "arch_kwargs": dict(kwargs),
        "downsampler": downsampler,
        "downsampler_kwargs": downsampler_kwargs,
        "center_terrain": bool(center_terrain),
    }
    model = FloodModel(body=body, downsampler=terrain_net, config=config)
    if init is not None:
        init_weights(model, init)
    # Softmax and tanh tails underflow into denormal floats on CPU, which run many times slower than
    # normal ones (Arch_04 with raw elevations: 4x); flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    return model
