"""Arch_03 — simplified UNet."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.registry import register_model

_ENCODER = (3, 32, 64, 128, 256, 256)


@register_model("Arch_03", aliases=("simplified_unet",))
class SimplifiedUNet(nn.Module):
    """Simplified UNet: five stride-2 4x4 convolutions down to 1x1 and five transposed ones back up,
    each decoder layer after the first taking the encoder map of its size alongside."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2))
            for c_in, c_out in zip(_ENCODER[:-1], _ENCODER[1:])
        )
        # Decoder: 256 -> 256, then (256+256) -> 128, (128+128) -> 64, (64+64) -> 32, (32+32) -> 1.
        ins = (256, 512, 256, 128, 64)
        outs = (256, 128, 64, 32, 1)
        self.decoder = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
                nn.LeakyReLU(0.01) if last else nn.ReLU(),
            )
            for c_in, c_out, last in zip(ins, outs, (False, False, False, False, True))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        x = self.decoder[0](x)
        for layer, skip in zip(self.decoder[1:], reversed(skips[:-1])):
            x = layer(torch.cat([x, skip], dim=1))
        return x
