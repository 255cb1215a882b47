"""Arch_02 — non-downsampling convolutions."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.layers import check_positive, conv_stack
from floodlib.models.registry import register_model


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
