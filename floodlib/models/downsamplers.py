"""Terrain downsamplers: 1 m terrain under a patch (B, 1, 321, 321) -> one (B, 1, 32, 32) channel.

Three are provided, as in the reference: ``alternating`` (learnable, the default), ``k11s10`` (learnable)
and ``cubic`` (bicubic interpolation, no parameters). Build one by name with :func:`create_downsampler`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from floodlib.models.constants import PATCH_CELLS
from floodlib.models.init import init_weights
from floodlib.models.layers import build_checked
from floodlib.models.reference import BLOCK, alternating_stride_conv2d_blockwise

# Offsets of the 3x3 window inside a 5x5 block: hop 2, then 3 to the next block.
_OFFSETS = (0, 2)

def _block_windows(h_nhwc: torch.Tensor) -> torch.Tensor:
    """Strided view (B, n, m, 2, 2, 3, 3, C) of a (B, H, W, C) map: for block (i, j) and offset (a, b),
    the 3x3 window at rows 5i+2a.., columns 5j+2b.. (windows of one block overlap in row/column 2)."""
    batch, height, width, channels = h_nhwc.shape
    s_b, s_h, s_w, s_c = h_nhwc.stride()
    return h_nhwc.as_strided(
        (batch, height // BLOCK, width // BLOCK, 2, 2, 3, 3, channels),
        (s_b, BLOCK * s_h, BLOCK * s_w, 2 * s_h, 2 * s_w, s_h, s_w, s_c),
        h_nhwc.storage_offset(),
    )


class _AlternatingStrideConvRows(torch.autograd.Function):
    """Alternating-stride convolution as one matrix product over gathered 3x3 windows.

    Returns a (B * n * m * 4, C_out) matrix whose rows are ordered (B, i, j, a, b): the output for
    block (i, j) and offset (a, b), i.e. output pixel (2i + a, 2j + b). The backward pass scatters the
    window gradients back with four strided additions instead of autograd's generic as_strided backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # free when x is channels-last already
        channels = x_nhwc.shape[-1]
        windows = _block_windows(x_nhwc).reshape(-1, 9 * channels)
        kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * channels)  # (C_out, (r, s, C_in))
        rows = windows @ kernel.t() if bias is None else torch.addmm(bias, windows, kernel.t())
        # Keep the input, not the 1.8x larger windows: gathering them again costs less than holding them.
        ctx.save_for_backward(x_nhwc, kernel)
        ctx.has_bias = bias is not None
        return rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: torch.Tensor):
        x_nhwc, kernel = ctx.saved_tensors
        grad_rows = grad_rows.to(kernel.dtype)
        batch, height, width, channels = x_nhwc.shape
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_windows = (grad_rows @ kernel).view(batch, height // BLOCK, width // BLOCK, 2, 2, 3, 3, channels)
            grad_x = grad_rows.new_zeros(batch, height, width, channels)
            blocks = grad_x[:, : height // BLOCK * BLOCK, : width // BLOCK * BLOCK].view(
                batch, height // BLOCK, BLOCK, width // BLOCK, BLOCK, channels
            )
            for a, row in enumerate(_OFFSETS):
                for b, col in enumerate(_OFFSETS):
                    blocks[:, :, row:row + 3, :, col:col + 3, :] += grad_windows[:, :, :, a, b].permute(0, 1, 3, 2, 4, 5)
            grad_x = grad_x.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            windows = _block_windows(x_nhwc).reshape(-1, 9 * channels)
            grad_weight = (grad_rows.t() @ windows).view(-1, 3, 3, channels).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def alternating_stride_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The alternating-stride convolution as a (B * n * m * 4, C_out) matrix, rows ordered (B, i, j, a, b)
    with n, m = H // 5, W // 5: the layout the alternating downsampler consumes without reshuffling.

    Under autocast it computes in the autocast dtype, as ``nn.Conv2d`` would: the operands are cast before
    the hand-written Function (so autograd casts the gradients back to the parameters' dtype), and autocast
    is off inside it, so its forward and backward products see operands of one dtype.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _AlternatingStrideConvRows.apply(
                x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return _AlternatingStrideConvRows.apply(x, weight, bias)


def alternating_stride_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 convolution evaluated at input rows ``5i + 2a`` and columns ``5j + 2b`` (a, b in {0, 1}), the
    result for (i, j, a, b) written to output pixel (2i + a, 2j + b) — the reference's alternating stride 2, 3.

    Computed as one dense matrix product over the gathered 3x3 windows (36 multiply-adds per output and
    input channel, no unfold/permute of 5x5 blocks), with a hand-written scatter for the backward pass.

    Parameters
    ----------
    x : (B, C_in, H, W)
    weight : (C_out, C_in, 3, 3)
    bias : (C_out,) or None

    Returns
    -------
    (B, C_out, 2 * (H // 5), 2 * (W // 5))
    """
    batch, _, height, width = x.shape
    n, m = height // BLOCK, width // BLOCK
    if batch == 0:  # an empty batch: an empty result of the right shape (no rows to reshape)
        return x.new_zeros((0, weight.shape[0], 2 * n, 2 * m))
    rows = alternating_stride_rows(x, weight, bias).view(batch, n, m, 2, 2, -1)
    return rows.permute(0, 5, 1, 3, 2, 4).reshape(batch, -1, 2 * n, 2 * m)


class AlternatingStrideConv2d(nn.Conv2d):
    """A 3x3 convolution applied with strides alternating 2 and 3 (hop 5 per 2 outputs).

    Holds exactly the parameters of ``nn.Conv2d(in_channels, out_channels, 3)``. The input is split into
    non-overlapping 5x5 blocks and each block gives 2x2 outputs, so (H, W) -> (2*(H//5), 2*(W//5)).
    ``reference = True`` computes it block by block as the reference does (same result, slower).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=3, bias=bias)
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return alternating_stride_conv2d_blockwise(x, self.weight, self.bias)
        return alternating_stride_conv2d(x, self.weight, self.bias)


# On CPU the downsampler runs over the batch in chunks whose largest activation stays below this many
# bytes: glibc returns bigger blocks to the OS on free, so every step would page-fault them in afresh
# (measured: 1.3x faster training steps at batch 64 on 2 cores).
_CPU_CHUNK_BYTES = 8 * 2**20


def _as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` with channels-last strides; a view without copying when it has one channel."""
    if x.shape[1] == 1 and x.is_contiguous():
        batch, _, height, width = x.shape
        return x.as_strided(x.shape, (height * width, 1, width, 1), x.storage_offset())
    return x.to(memory_format=torch.channels_last)


class AlternatingDownsampler(nn.Module):
    """The reference's learnable terrain downsampler (7,601 parameters with the defaults).

    conv 1->c1 k3 s2, LReLU: 321 -> 160; alternating-stride conv c1->c2, LReLU: 160 -> 64;
    conv c2->1 k2 s2, LReLU: 64 -> 32.

    The last convolution reads exactly the 2x2 outputs that one 5x5 block of the alternating-stride
    convolution produces, so it is applied to those rows directly, never building the 64x64 map.
    """

    def __init__(self, c1: int = 20, c2: int = 40):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, stride=2),
            nn.LeakyReLU(0.01),
            AlternatingStrideConv2d(c1, c2),
            nn.LeakyReLU(0.01),
            nn.Conv2d(c2, 1, kernel_size=2, stride=2),
            nn.LeakyReLU(0.01),
        )

    def forward(self, terrain: torch.Tensor) -> torch.Tensor:
        if self.layers[2].reference or terrain.shape[0] == 0:  # the fused path has no rows to reshape when empty
            return self.layers(terrain)
        if terrain.device.type != "cpu":
            return self._fused(terrain)
        first = self.layers[0]
        per_sample = first.out_channels * ((terrain.shape[-2] - 1) // 2) * ((terrain.shape[-1] - 1) // 2)
        chunk = max(1, _CPU_CHUNK_BYTES // (per_sample * terrain.element_size()))
        if terrain.shape[0] <= chunk:
            return self._fused(terrain)
        return torch.cat([self._fused(part) for part in terrain.split(chunk)])

    def _fused(self, terrain: torch.Tensor) -> torch.Tensor:
        first, _, alternating, _, last, _ = self.layers
        batch = terrain.shape[0]
        # Channels-last input and kernel make the convolution write channels-last (pixel-major) output,
        # which the window gather reads as whole pixels without a transposing copy.
        channels_last = torch.channels_last
        # (With one channel both layouts count as contiguous; only explicit channels-last strides select
        # the channels-last kernel.)
        hidden = F.conv2d(
            _as_channels_last(terrain),
            first.weight.to(memory_format=channels_last),
            first.bias,
            stride=first.stride,
        )
        hidden = F.leaky_relu(hidden, 0.01, inplace=True)
        # In place: the row matrix is needed by nothing but this activation, whose backward uses its output.
        rows = F.leaky_relu(alternating_stride_rows(hidden, alternating.weight, alternating.bias), 0.01, inplace=True)
        n, m = hidden.shape[-2] // BLOCK, hidden.shape[-1] // BLOCK
        # last.weight (1, c2, a, b) -> ((a, b, c2), 1), matching the rows' (a, b) order per block.
        kernel = last.weight[0].permute(1, 2, 0).reshape(-1, 1)
        out = torch.addmm(last.bias, rows.view(batch * n * m, -1), kernel)
        return F.leaky_relu(out, 0.01).view(batch, 1, n, m)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "lrelu": lambda: nn.LeakyReLU(0.01),
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
}


class K11S10Downsampler(nn.Module):
    """Learnable downsampler of one 11x11 stride-10 convolution and two 1x1 convolutions
    (3,321 parameters with the defaults), an activation after each; Kaiming-normal initialisation.

    conv 1->c1 k11 s10: 321 -> 32; conv 1x1 c1->c2; conv 1x1 c2->1.
    """

    #: This downsampler keeps its own (Kaiming-normal) initialisation whatever scheme the model uses.
    init_scheme = "kaiming"

    def __init__(self, c1: int = 20, c2: int = 40, activation: str = "lrelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"K11S10 downsampler: activation={activation!r} is not known; expected one of {sorted(_ACTIVATIONS)}"
            )
        make = _ACTIVATIONS[activation]
        self.layers = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=11, stride=10),
            make(),
            nn.Conv2d(c1, c2, kernel_size=1),
            make(),
            nn.Conv2d(c2, 1, kernel_size=1),
            make(),
        )
        init_weights(self, self.init_scheme)  # its own, also in a model built with init=None

    def forward(self, terrain: torch.Tensor) -> torch.Tensor:
        return self.layers(terrain)


class CubicDownsampler(nn.Module):
    """Bicubic interpolation of the terrain to 32x32 (``align_corners=False``); no parameters."""

    def __init__(self, size: int = PATCH_CELLS):
        super().__init__()
        self.size = size

    def forward(self, terrain: torch.Tensor) -> torch.Tensor:
        return F.interpolate(terrain, size=(self.size, self.size), mode="bicubic", align_corners=False)


DOWNSAMPLERS: dict[str, type[nn.Module]] = {
    "alternating": AlternatingDownsampler,
    "k11s10": K11S10Downsampler,
    "cubic": CubicDownsampler,
}


def list_downsamplers() -> list[str]:
    """Names accepted by :func:`create_downsampler` and ``create_model(..., downsampler=...)``."""
    return list(DOWNSAMPLERS)


def resolve_downsampler_name(name: str) -> str:
    """Canonical downsampler name for ``name`` (case-insensitive); ValueError listing the valid names."""
    key = str(name).lower()
    if key not in DOWNSAMPLERS:
        raise ValueError(f"unknown terrain downsampler {name!r}; expected one of {list_downsamplers()}")
    return key


def create_downsampler(name: str, **kwargs) -> nn.Module:
    """Build the terrain downsampler ``name`` (see :func:`list_downsamplers`) with its keyword arguments."""
    return build_checked(DOWNSAMPLERS[resolve_downsampler_name(name)], f"downsampler {name!r}", kwargs)
