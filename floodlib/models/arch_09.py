"""Arch_09 — encoder-decoder with large convolutions."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.registry import register_model


@register_model("Arch_09", aliases=("large_conv_encoder_decoder",))
class LargeConvEncoderDecoder(nn.Module):
    """Encoder-decoder of large kernels down to 2x2 (256 channels) and back.

    Its final tanh bounds the predicted depth change to (-1, 1) m per output interval.
    """

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, kernel_size=6), nn.PReLU(),  # -> 27x27
            nn.Conv2d(4, 32, kernel_size=6), nn.Tanh(),  # -> 22x22
            nn.Conv2d(32, 256, kernel_size=11, stride=11), nn.Tanh(),  # -> 2x2
            nn.ConvTranspose2d(256, 32, kernel_size=11, stride=11), nn.Tanh(),  # -> 22x22
            nn.ConvTranspose2d(32, 3, kernel_size=8, stride=1, padding=1), nn.Tanh(),  # -> 27x27
            nn.ConvTranspose2d(3, 1, kernel_size=6), nn.Tanh(),  # -> 32x32
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
