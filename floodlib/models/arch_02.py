"""Arch_02 — non-downsampling convolutions."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.registry import register_model


def conv_stack(layers: int, channels: int, attention_after: tuple[int, ...] = ()) -> nn.Sequential:
    """conv 3->channels k3 p1, LReLU; (layers-2) x [conv channels->channels k3 p1, LReLU], each optionally
    followed by an attention block; conv channels->1 k3 p1, LReLU. Middle convolutions are numbered from 1."""
    from floodlib.models.attention import SelfAttention2d

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


@register_model("Arch_02", aliases=("nondownsampling_conv",))
class NonDownsamplingConv(nn.Module):
    """Non-downsampling convolutions: ``layers`` 3x3 convolutions of ``channels`` channels at 32x32."""

    def __init__(self, layers: int = 12, channels: int = 32):
        super().__init__()
        check_positive("Arch_02", layers=layers, channels=channels)
        if layers < 2:
            raise ValueError(f"Arch_02: layers={layers} must be at least 2 (first and last convolution)")
        self.net = conv_stack(layers, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
