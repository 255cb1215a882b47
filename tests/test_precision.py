"""Mixed precision, exercised on CPU: what a GPU user trains under (bf16 autocast) must work everywhere.

Tolerances: bf16 keeps 8 significant bits (relative rounding 2**-8 = 0.4 %). One layer's output is then
within ~1 % of float32; through a 12-layer network at initialisation the outputs stay within 8 % (the
terrain path runs in float32 under autocast). Gradients also change wherever a rounded pre-activation
crosses a LeakyReLU's kink — at initialisation the outputs sit near zero, on the last LeakyReLU's kink,
where the slope is 1 on one side and 0.01 on the other — so whole-model gradients are compared by
direction: cosine similarity above 0.7 (0.96-1.0 for all but one of 42 seeded cases; 0.75 for that one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from floodlib.models import create_model, list_downsamplers, list_models
from floodlib.models.downsamplers import alternating_stride_conv2d
from floodlib.training import fit
from floodlib.training.fitting import resolve_precision

BF16 = torch.bfloat16

sys.path.insert(0, str(Path(__file__).parent))
from training_job import datasets  # noqa: E402


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return datasets(tmp_path_factory.mktemp("growing"))


def _inputs(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    terrain = 380 + 0.05 * torch.randn(batch, 1, 321, 321, generator=generator).cumsum(-1)
    depths = torch.rand(batch, 2, 32, 32, generator=generator)
    return terrain, depths


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def test_alternating_stride_convolution_under_autocast_matches_float32():
    """The hand-written Function computes in bf16 under autocast, and its gradients reach the float32
    parameters as float32 — within bf16 rounding of the float32 results."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 40, 45, generator=generator, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, generator=generator, requires_grad=True)
    bias = torch.randn(5, generator=generator, requires_grad=True)
    probe = torch.randn(3, 5, 16, 18, generator=generator)

    def run(autocast: bool):
        for tensor in (x, weight, bias):
            tensor.grad = None
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            out = alternating_stride_conv2d(x, weight, bias)
        (out.float() * probe).sum().backward()
        return out, x.grad.clone(), weight.grad.clone(), bias.grad.clone()

    out32, *grads32 = run(False)
    out16, *grads16 = run(True)
    assert out16.dtype == BF16 and out32.dtype == torch.float32
    assert _relative(out16, out32) < 1e-2
    for g16, g32 in zip(grads16, grads32):
        assert g16.dtype == torch.float32
        assert _relative(g16, g32) < 1e-2


@pytest.mark.parametrize("downsampler", list_downsamplers())
@pytest.mark.parametrize("arch", list_models())
def test_one_bf16_training_step_of_every_architecture(arch, downsampler):
    """Forward, L1 loss, backward and an Adam step under CPU bf16 autocast: float32 parameters with finite
    float32 gradients, outputs within 8 % of float32 and gradients pointing the same way."""
    torch.manual_seed(0)
    model = create_model(arch, downsampler=downsampler)
    terrain, depths = _inputs()
    target = 0.1 * torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    probe = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))

    def gradients(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            out = model(terrain, depths)
        (out.float() * probe).sum().backward()
        return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    out32, grad32 = gradients(False)
    out16, grad16 = gradients(True)
    assert out16.dtype == BF16
    assert _relative(out16, out32) < 0.08
    assert float(F.cosine_similarity(grad16, grad32, dim=0)) > 0.7

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=BF16):
        loss = F.l1_loss(model(terrain, depths).float(), target)
    loss.backward()
    for parameter in model.parameters():
        assert parameter.dtype == torch.float32
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32
        assert torch.isfinite(parameter.grad).all()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_precision_auto_is_bf16_on_cuda_and_float32_on_cpu():
    assert resolve_precision("auto", on_gpu=True) == "bf16-mixed"
    assert resolve_precision("auto", on_gpu=False) == "32-true"
    assert resolve_precision("bf16-mixed", on_gpu=False) == "bf16-mixed"
    with pytest.raises(ValueError, match=r"precision='bf16'.*expected one of"):
        resolve_precision("bf16", on_gpu=False)
    assert resolve_precision("16-mixed", on_gpu=True) == "16-mixed"
    with pytest.raises(ValueError, match=r"precision='16-mixed' \(float16 autocast\) needs a CUDA GPU; on a CPU use"):
        resolve_precision("16-mixed", on_gpu=False)


def test_fit_with_bf16_mixed_precision_on_cpu_is_close_to_float32(splits, tmp_path):
    """Two epochs of Arch_02 with bf16 autocast and with float32, from the same initial weights and batches:
    the per-epoch losses agree within 3 % and the trained models' predictions within 5 % (of the float32
    model's), and the summary records the precision used."""
    train, val = splits
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        model = create_model("Arch_02", layers=4)
        results[precision] = fit(model, train, val, out_dir=tmp_path / precision, epochs=2, lr=1e-3, batch_size=8,
                                 patience=5, progress="none", accelerator="cpu", precision=precision)
    full, mixed = results["32-true"], results["bf16-mixed"]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(mixed.history[key], full.history[key], rtol=0.03)
    assert mixed.history["val_loss"][-1] < mixed.baseline_val_loss
    batch = [val[i] for i in range(min(len(val), 8))]
    terrain = torch.stack([s.terrain for s in batch])
    depths = torch.stack([s.depths for s in batch])
    with torch.no_grad():
        assert _relative(mixed.model(terrain, depths), full.model(terrain, depths)) < 0.05
    assert json.loads(mixed.summary_path.read_text())["settings"]["precision"] == "bf16-mixed"
    assert json.loads(full.summary_path.read_text())["settings"]["precision"] == "32-true"
