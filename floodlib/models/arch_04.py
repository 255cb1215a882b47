"""Arch_04 — non-downsampling convolutions with self-attention."""

from __future__ import annotations

import torch
from torch import nn

from floodlib.models.layers import check_positive, conv_stack
from floodlib.models.registry import register_model


def attention_positions(layers: int, attentions: int) -> tuple[int, ...]:
    """Middle convolutions (numbered from 1) followed by an attention block: floor((i+1)(L-1)/(A+1))."""
    return tuple((i + 1) * (layers - 1) // (attentions + 1) for i in range(attentions))


@register_model("Arch_04", aliases=("nondownsampling_attention",))
class NonDownsamplingAttention(nn.Module):
    """Non-downsampling convolutions with self-attention: Arch_02 with ``attentions`` attention blocks
    spread evenly between its middle convolutions (after the 3rd and 7th for the defaults)."""

    def __init__(self, layers: int = 12, channels: int = 32, attentions: int = 2):
        super().__init__()
        check_positive("Arch_04", layers=layers, channels=channels)
        if not isinstance(attentions, int) or not 0 <= attentions <= layers - 2:
            raise ValueError(
                f"Arch_04: attentions={attentions!r} must be an integer from 0 to layers-2={layers - 2} "
                "(one attention block at most after each middle convolution)"
            )
        self.attention_after = attention_positions(layers, attentions)
        self.net = conv_stack(layers, channels, self.attention_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
