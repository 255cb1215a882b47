"""Arch_05 — classic UNet."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.registry import register_model


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.LeakyReLU(0.01),
        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1),
        nn.LeakyReLU(0.01),
    )


@register_model("Arch_05", aliases=("classic_unet",))
class ClassicUNet(nn.Module):
    """Classic UNet: four levels of two 3x3 convolutions and 2x2 max-pooling (64..512 channels), a
    1024-channel bottleneck, and a mirrored decoder with skip connections."""

    def __init__(self):
        super().__init__()
        widths = (64, 128, 256, 512)
        self.down = nn.ModuleList(double_conv(c_in, c_out) for c_in, c_out in zip((3, *widths[:-1]), widths))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(512, 1024)
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, kernel_size=2, stride=2) for c in reversed(widths))
        self.merge = nn.ModuleList(double_conv(2 * c, c) for c in reversed(widths))
        self.head = nn.Sequential(nn.Conv2d(64, 1, kernel_size=1), nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
