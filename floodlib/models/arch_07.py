"""Arch_07 — encoder-decoder with self-attention."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.attention import SelfAttention2d
from floodlib.models.registry import register_model


def _with_lrelu(*layers: nn.Module) -> list[nn.Module]:
    return [m for layer in layers for m in (layer, nn.LeakyReLU(0.01))]


@register_model("Arch_07", aliases=("encoder_decoder_attention",))
class EncoderDecoderAttention(nn.Module):
    """Encoder-decoder with self-attention at its 4x4 bottleneck; no skip connections."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(*_with_lrelu(
            nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1),
            nn.Conv2d(32, 48, kernel_size=5, stride=1, padding=2),
            nn.Conv2d(48, 64, kernel_size=5, stride=2, padding=2),
            nn.Conv2d(64, 96, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(96, 128, kernel_size=3, stride=2, padding=1),
        ))  # -> (128, 4, 4)
        self.attention = SelfAttention2d(128)
        self.decoder = nn.Sequential(*_with_lrelu(
            nn.ConvTranspose2d(128, 69, kernel_size=3, stride=2, padding=1),  # -> 7x7
            nn.ConvTranspose2d(69, 64, kernel_size=3, stride=2, padding=0),  # -> 15x15
            nn.ConvTranspose2d(64, 48, kernel_size=4, stride=2, padding=0),  # -> 32x32
            nn.ConvTranspose2d(48, 32, kernel_size=5, stride=1, padding=2),
            nn.ConvTranspose2d(32, 6, kernel_size=3, stride=1, padding=1),
            nn.ConvTranspose2d(6, 1, kernel_size=1),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.attention(self.encoder(x)))
