"""Building blocks shared by several architectures and downsamplers: the stack of same-size convolutions of
Arch_02 and Arch_04, argument checks, and building a module from keyword arguments with a clear error."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from floodlib.models.attention import SelfAttention2d


def conv_stack(layers: int, channels: int, attention_after: tuple[int, ...] = ()) -> nn.Sequential:
    """conv 3->channels k3 p1, LReLU; (layers-2) x [conv channels->channels k3 p1, LReLU], each optionally
    followed by an attention block; conv channels->1 k3 p1, LReLU. Middle convolutions are numbered from 1."""

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        # In place: a convolution's backward needs its input, not its output, so one buffer serves both.
        return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.LeakyReLU(0.01, inplace=True)]

    modules = conv(3, channels)
    for number in range(1, layers - 1):
        modules += conv(channels, channels)
        modules += [SelfAttention2d(channels) for position in attention_after if position == number]
    modules += conv(channels, 1)
    return nn.Sequential(*modules)


def check_positive(owner: str, **values: int) -> None:
    """ValueError naming the first of ``values`` that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {name}={value!r} must be a positive integer")


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
