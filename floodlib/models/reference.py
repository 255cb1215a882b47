"""The reference's straightforward computations, kept as the baseline that benchmarks compare against.

These compute exactly the same functions as the fast layers in :mod:`floodlib.models.downsamplers` and
:mod:`floodlib.models.attention`, the way the published reference code does: the alternating-stride
convolution through unfold/permute copies of every 5x5 block, and self-attention through an explicit
(H*W) x (H*W) score matrix. Switch a model to them with :func:`use_reference_layers`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 5  # the alternating-stride convolution's block: hop 2 then 3


def alternating_stride_conv2d_blockwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Alternating-stride convolution computed block by block, as the reference does.

    Parameters
    ----------
    x : (B, C_in, H, W)
    weight : (C_out, C_in, 3, 3)
    bias : (C_out,) or None

    Returns
    -------
    (B, C_out, 2 * (H // 5), 2 * (W // 5))
    """
    batch, channels, height, width = x.shape
    rows, cols = height // BLOCK, width // BLOCK
    blocks = x[:, :, : rows * BLOCK, : cols * BLOCK].unfold(2, BLOCK, BLOCK).unfold(3, BLOCK, BLOCK)
    blocks = blocks.permute(0, 2, 3, 1, 4, 5).reshape(batch * rows * cols, channels, BLOCK, BLOCK)
    out = F.conv2d(blocks, weight, bias, stride=2)  # (B*rows*cols, C_out, 2, 2)
    out_channels = out.shape[1]
    out = out.reshape(batch, rows, cols, out_channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(batch, out_channels, 2 * rows, 2 * cols)


def self_attention_materialised(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention over positions with the full score matrix, as the reference computes it.

    ``query``, ``key``, ``value``: (B, C', N) for N = H*W positions. Returns (B, C', N):
    ``value @ softmax(query^T key * scale)^T``.
    """
    scores = torch.softmax(torch.bmm(query.transpose(1, 2), key) * scale, dim=-1)  # (B, N, N)
    return torch.bmm(value, scores.transpose(1, 2))


def use_reference_layers(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make every alternating-stride convolution, attention block and Arch_08 bicubic upsampling of
    ``model`` compute the reference's way (``enabled=True``) or floodlib's fast way (``enabled=False``).

    The parameters are untouched, so the function computed stays the same; only speed and memory
    change. Returns ``model`` for chaining.
    """
    for module in model.modules():
        # A layer with both computations says so with its ``reference`` flag (AlternatingStrideConv2d,
        # SelfAttention2d, BicubicUpsample2x); this module imports none of them, so every layer may import it.
        if isinstance(getattr(module, "reference", None), bool):
            module.reference = enabled
    return model


def attention_scale(channels: int) -> float:
    """The reference's score scale, 1 / sqrt(C)."""
    return 1.0 / math.sqrt(channels)
