"""Arch_08's bicubic upsampling by matrix products: the same function as F.interpolate, the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose

from floodlib.models import create_model
from floodlib.models.arch_08 import (
    _UPSAMPLE_MATRICES,
    BicubicUpsample2x,
    bicubic_upsample2x,
    bicubic_upsample_matrix,
)

# ARCHITECTURES.md, "Parameter counts": Arch_08 with the alternating downsampler.
ARCH08_PARAMETERS = 417_027


def interpolate2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)


def set_reference_upsampling(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, BicubicUpsample2x):
            module.reference = enabled
    return model


def sample_inputs(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    terrain = 300.0 + 3.0 * torch.rand(batch, 1, 321, 321, generator=generator)
    depths = torch.rand(batch, 2, 32, 32, generator=generator)
    return terrain, depths


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 5, 8, 8), (1, 4, 16, 16), (3, 2, 5, 11), (2, 1, 1, 3)])
def test_matrix_upsampling_equals_interpolate_forward_and_gradient(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator, requires_grad=True)
    upstream = torch.randn(*shape[:2], 2 * shape[2], 2 * shape[3], generator=generator)
    out = bicubic_upsample2x(x)
    out.backward(upstream)
    assert out.shape == upstream.shape and out.dtype == torch.float32
    # The exact values: F.interpolate itself in float64. Its float32 kernel rounds worse than the matrix
    # products (measured up to 6e-6 against 5e-7 here), so it is compared with a tolerance of its own.
    x64 = x.detach().double().requires_grad_(True)
    out64 = interpolate2x(x64)
    out64.backward(upstream.double())
    assert_allclose(out.detach().numpy(), out64.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert_allclose(x.grad.numpy(), x64.grad.numpy(), rtol=1e-5, atol=1e-6)
    x32 = x.detach().clone().requires_grad_(True)
    out32 = interpolate2x(x32)
    out32.backward(upstream)
    assert_allclose(out.detach().numpy(), out32.detach().numpy(), rtol=1e-5, atol=2e-5)
    assert_allclose(x.grad.numpy(), x32.grad.numpy(), rtol=1e-5, atol=2e-5)


def test_matrix_is_pytorchs_weights_in_float64():
    # In float64 the separable products leave only the last bits of rounding against the kernel.
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    assert_allclose(bicubic_upsample2x(x).numpy(), interpolate2x(x).numpy(), rtol=1e-12, atol=1e-14)
    matrix = bicubic_upsample_matrix(4, dtype=torch.float64)
    assert matrix.shape == (8, 4)
    assert_allclose(matrix.sum(dim=1).numpy(), 1.0, rtol=0, atol=1e-14)  # interpolation keeps constants
    assert bicubic_upsample_matrix(4, dtype=torch.float64) is matrix  # cached
    assert not matrix.requires_grad


def test_matrix_built_under_inference_mode_still_trains():
    _UPSAMPLE_MATRICES.clear()
    with torch.inference_mode():
        bicubic_upsample2x(torch.randn(1, 1, 4, 4))
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    bicubic_upsample2x(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_whole_model_is_the_same_with_reference_upsampling(seed):
    torch.manual_seed(seed)
    model = create_model("Arch_08").eval()
    terrain, depths = sample_inputs(seed=seed)
    fast = model(terrain, depths)
    slow = set_reference_upsampling(model, True)(terrain, depths)
    assert all(m.reference for m in model.modules() if isinstance(m, BicubicUpsample2x))
    # Either way differs from the float64 model by up to ~5e-5 (elevations near 300 m enter the first
    # convolutions), so float32 rounding allows that much between the two ways.
    assert_allclose(fast.detach().numpy(), slow.detach().numpy(), rtol=1e-5, atol=5e-5)
    model.double()
    slow64 = model(terrain.double(), depths.double())
    fast64 = set_reference_upsampling(model, False)(terrain.double(), depths.double())
    assert_allclose(fast64.detach().numpy(), slow64.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_whole_model_reference_upsampling_gives_the_same_gradients():
    torch.manual_seed(9)
    fast = create_model("Arch_08").double()
    slow = set_reference_upsampling(create_model("Arch_08").double(), True)
    slow.load_state_dict(fast.state_dict())
    terrain, depths = (t.double() for t in sample_inputs(seed=1))
    fast(terrain, depths).square().mean().backward()
    slow(terrain, depths).square().mean().backward()
    for (name, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters()):
        assert_allclose(p_fast.grad.numpy(), p_slow.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_parameter_count_and_state_dict_keys_unchanged():
    model = create_model("Arch_08")
    assert sum(p.numel() for p in model.parameters()) == ARCH08_PARAMETERS
    # The reference's body keys: checkpoints saved before the upsampling became a module must load strictly.
    keys = list(model.body.state_dict())
    decoder = [f"net.{i}.block.{conv}.{kind}" for i in (4, 5, 6) for conv in ("conv1", "conv2", "shortcut")
               for kind in ("weight", "bias")]
    encoder = [f"net.{i}.{conv}.{kind}" for i in (0, 1, 2, 3, 7) for conv in ("conv1", "conv2", "shortcut")
               for kind in ("weight", "bias")]
    assert sorted(keys) == sorted(encoder + decoder + ["net.8.weight", "net.8.bias"])
    assert not list(model.buffers())
    # A state dict saved before the change (same keys) loads strictly, into either way of computing.
    set_reference_upsampling(model, True).load_state_dict(create_model("Arch_08").state_dict(), strict=True)


def test_forward_backward_under_cpu_bf16_autocast_is_finite():
    torch.manual_seed(10)
    model = create_model("Arch_08")
    terrain, depths = sample_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = model(terrain, depths)
        loss = F.l1_loss(prediction.float(), torch.zeros_like(prediction, dtype=torch.float32))
    loss.backward()
    assert prediction.shape == (2, 1, 32, 32)
    assert torch.isfinite(prediction.float()).all()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
