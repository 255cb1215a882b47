"""Self-attention over the positions of a feature map (the reference's attention block)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from floodlib.models.reference import attention_scale, self_attention_materialised


class SelfAttention2d(nn.Module):
    """Self-attention over the H*W positions of a (B, C, H, W) map.

    Query, key and value are 1x1 convolutions C -> C'; scores are ``softmax(Q^T K / sqrt(C))`` over
    positions; the attended values are projected back C' -> C by a 1x1 convolution, scaled by a learned
    scalar ``gamma`` (initialised to 0, so the block starts as the identity) and added to the input.

    The scores are computed by :func:`torch.nn.functional.scaled_dot_product_attention`, which never
    materialises the (H*W) x (H*W) score matrix; set ``reference = True`` (or use
    :func:`floodlib.models.reference.use_reference_layers`) to compute it explicitly as the reference does.
    """

    def __init__(self, channels: int, inner_channels: int | None = None):
        super().__init__()
        inner = channels if inner_channels is None else inner_channels
        self.channels = channels
        self.inner_channels = inner
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, inner, kernel_size=1)
        self.project = nn.Conv2d(inner, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        scale = attention_scale(self.channels)
        if self.reference:
            query = self.query(x).flatten(2)  # (B, C', N)
            attended = self_attention_materialised(query, self.key(x).flatten(2), self.value(x).flatten(2), scale)
            attended = attended.reshape(batch, self.inner_channels, height, width)
            return x + self.gamma * self.project(attended)
        # Position-major (B, N, C) layout: the three 1x1 convolutions become one matrix product, and each
        # of query/key/value has unit stride along channels, which the fused attention kernel requires.
        positions = x.flatten(2).transpose(1, 2)
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight]).flatten(1)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        query, key, value = F.linear(positions, weight, bias).unsqueeze(1).split(self.inner_channels, dim=-1)
        attended = F.scaled_dot_product_attention(query, key, value, scale=scale).squeeze(1)  # (B, N, C')
        projected = F.linear(attended, self.project.weight.flatten(1), self.project.bias)  # (B, N, C)
        return x + self.gamma * projected.transpose(1, 2).reshape(batch, channels, height, width)
