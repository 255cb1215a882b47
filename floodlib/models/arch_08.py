"""Arch_08 — modified UNet with ResNet blocks (no skip connections between encoder and decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from floodlib.models.registry import register_model


class ResidualBlock(nn.Module):
    """SELU(conv k3 s p1) -> conv k3 s1 p1, plus a 1x1 stride-s convolution of the input, then SELU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=1, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.selu(self.conv2(F.selu(self.conv1(x))) + self.shortcut(x))


class UpsampleBlock(nn.Module):
    """Bicubic x2 upsampling (align_corners=True), then a residual block halving the channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = ResidualBlock(channels, channels // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True))


@register_model("Arch_08", aliases=("resnet_unet",))
class ResNetUNet(nn.Module):
    """Modified UNet built of residual blocks: 32x32 -> 4x4 (120 channels) -> 32x32."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            ResidualBlock(3, 15, 1),
            ResidualBlock(15, 30, 2),
            ResidualBlock(30, 60, 2),
            ResidualBlock(60, 120, 2),
            UpsampleBlock(120),
            UpsampleBlock(60),
            UpsampleBlock(30),
            ResidualBlock(15, 15, 1),
            nn.Conv2d(15, 1, kernel_size=1),
            nn.LeakyReLU(0.01),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
