"""Arch_08 — modified UNet with ResNet blocks (no skip connections between encoder and decoder).

The decoder's bicubic x2 upsampling (``align_corners=True``) is computed as two small matrix products,
``M_h @ x @ M_w^T``: the interpolation is separable and linear, so each axis is a fixed (2n, n) matrix
whose entries are PyTorch's own bicubic weights. This is the same function as
``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)`` up to floating-point rounding,
with no parameters or buffers added, but its backward pass is a matrix product instead of the
interpolation's scatter-add (atomics on GPU), which made Arch_08 train several times slower than
networks of its size. Set ``reference = True`` on a :class:`BicubicUpsample2x` to interpolate instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from floodlib.models.registry import register_model

# One matrix per (n, device, dtype): a few KB each, built on first use. A plain dict rather than a
# buffer, so that state_dict keys and the parameter count stay those of the reference's checkpoints.
_UPSAMPLE_MATRICES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def bicubic_upsample_matrix(
    n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The matrix of bicubic x2 upsampling with ``align_corners=True`` along one axis of length ``n``.

    Taken from PyTorch itself: the identity basis, shaped (n, 1, n, 1), interpolated to (2n, 1) in
    float64 (the width 1 -> 1 is the identity), so the entries are ``F.interpolate``'s own weights,
    then cast to ``dtype``. Cached per (n, device, dtype); the result must not be modified in place.

    Parameters
    ----------
    n : int
        Length of the axis before upsampling.
    device, dtype
        Where and in which precision the matrix is wanted.

    Returns
    -------
    torch.Tensor
        (2n, n): ``M @ v`` upsamples a length-n vector ``v`` to length 2n.
    """
    device = torch.device(device)
    key = (n, device, dtype)
    matrix = _UPSAMPLE_MATRICES.get(key)
    if matrix is None:
        # A first call under inference_mode would otherwise cache an inference tensor, which autograd
        # refuses to save for a later training step's backward; autocast must not lower the float64.
        with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
            basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
            columns = F.interpolate(basis, size=(2 * n, 1), mode="bicubic", align_corners=True)  # (n, 1, 2n, 1)
            matrix = columns[:, 0, :, 0].T.to(device=device, dtype=dtype).contiguous()
        _UPSAMPLE_MATRICES[key] = matrix
    return matrix


def bicubic_upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bicubic x2 upsampling with ``align_corners=True`` as two matrix products over the last two axes.

    Equal to ``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)`` within
    floating-point rounding, forward and backward.

    Parameters
    ----------
    x : torch.Tensor
        (..., H, W), typically (B, C, H, W).

    Returns
    -------
    torch.Tensor
        (..., 2H, 2W), of ``x``'s dtype.
    """
    height, width = x.shape[-2:]
    # The matrices follow x's dtype: under autocast x is already bf16/fp16 after a convolution, and a
    # float32 matrix would either mismatch (outside autocast) or be recast on every call.
    rows = bicubic_upsample_matrix(height, x.device, x.dtype)  # (2H, H)
    cols = bicubic_upsample_matrix(width, x.device, x.dtype)  # (2W, W)
    return torch.matmul(torch.matmul(rows, x), cols.T)


class BicubicUpsample2x(nn.Module):
    """Bicubic x2 upsampling with ``align_corners=True``: (B, C, H, W) -> (B, C, 2H, 2W).

    Computed by :func:`bicubic_upsample2x` (matrix products); ``reference = True`` computes it with
    ``F.interpolate`` as the reference does (same result, slower to train, above all on GPU). No parameters.
    """

    def __init__(self):
        super().__init__()
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)
        return bicubic_upsample2x(x)


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
    """Bicubic x2 upsampling (align_corners=True), then a residual block halving the channels:
    (B, C, H, W) -> (B, C // 2, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.upsample = BicubicUpsample2x()
        self.block = ResidualBlock(channels, channels // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.upsample(x))


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
