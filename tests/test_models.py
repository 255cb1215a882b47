"""The model zoo: every architecture with every downsampler, exactly the reference's structure."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose

from floodlib.models import (
    AlternatingDownsampler,
    SelfAttention2d,
    alternating_stride_conv2d,
    create_downsampler,
    create_model,
    init_weights,
    list_downsamplers,
    list_models,
    model_aliases,
    use_reference_layers,
)
from floodlib.models.arch_04 import attention_positions
from floodlib.models.reference import alternating_stride_conv2d_blockwise

SEED_MODELS = ["Arch_02", "Arch_03", "Arch_04", "Arch_05", "Arch_07", "Arch_08", "Arch_09"]

# ARCHITECTURES.md, "Parameter counts".
PARAMETER_COUNTS = {
    ("Arch_02", "alternating"): 101_266,
    ("Arch_03", "alternating"): 4_172_914,
    ("Arch_04", "alternating"): 109_716,
    ("Arch_04", "k11s10"): 105_436,
    ("Arch_04", "cubic"): 102_115,
    ("Arch_05", "alternating"): 31_039_346,
    ("Arch_07", "alternating"): 564_708,
    ("Arch_08", "alternating"): 417_027,
    ("Arch_09", "alternating"): 2_001_686,
}
DOWNSAMPLER_COUNTS = {"alternating": 7_601, "k11s10": 3_321, "cubic": 0}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sample_inputs(batch: int = 2, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    terrain = 300.0 + 3.0 * torch.rand(batch, 1, 321, 321, generator=generator, dtype=dtype)
    depths = torch.rand(batch, 2, 32, 32, generator=generator, dtype=dtype)
    return terrain, depths


def oracle_alternating_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The definition, literally: one k3 s2 convolution per non-overlapping 5x5 block."""
    rows, cols = x.shape[2] // 5, x.shape[3] // 5
    out = x.new_zeros(x.shape[0], weight.shape[0], 2 * rows, 2 * cols)
    for i in range(rows):
        for j in range(cols):
            block = x[:, :, 5 * i:5 * i + 5, 5 * j:5 * j + 5]
            out[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = F.conv2d(block, weight, bias, stride=2)
    return out


def test_registry_lists_the_seed_models():
    assert list_models() == SEED_MODELS
    assert list_downsamplers() == ["alternating", "k11s10", "cubic"]
    assert model_aliases()["Arch_04"] == ("nondownsampling_attention",)


@pytest.mark.parametrize("downsampler", ["alternating", "k11s10", "cubic"])
@pytest.mark.parametrize("arch", SEED_MODELS)
def test_forward_shape_finite_and_every_parameter_learns(arch, downsampler):
    torch.manual_seed(0)
    model = create_model(arch, downsampler=downsampler)
    for module in model.modules():  # gamma starts at 0, which would cut attention off from the loss
        if isinstance(module, SelfAttention2d):
            module.gamma.data.fill_(0.5)
    terrain, depths = sample_inputs()
    out = model(terrain, depths)
    assert out.shape == (2, 1, 32, 32)
    assert torch.isfinite(out).all()
    F.l1_loss(out, torch.full_like(out, 0.3)).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{arch}/{downsampler}: {name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"{arch}/{downsampler}: {name} got a zero gradient"


@pytest.mark.parametrize(("arch", "downsampler"), list(PARAMETER_COUNTS))
def test_parameter_counts_match_the_specification(arch, downsampler):
    assert n_params(create_model(arch, downsampler=downsampler)) == PARAMETER_COUNTS[(arch, downsampler)]


@pytest.mark.parametrize("name", ["alternating", "k11s10", "cubic"])
def test_downsampler_maps_terrain_to_the_patch_grid(name):
    downsampler = create_downsampler(name)
    assert n_params(downsampler) == DOWNSAMPLER_COUNTS[name]
    terrain, _ = sample_inputs(batch=3)
    out = downsampler(terrain)
    assert out.shape == (3, 1, 32, 32)
    assert torch.isfinite(out).all()


def test_k11s10_activations_are_selectable():
    assert n_params(create_downsampler("k11s10", activation="prelu")) == 3_321 + 3  # one slope each
    relu = create_downsampler("k11s10", activation="relu")
    assert (relu(sample_inputs()[0]) >= 0).all()
    with pytest.raises(ValueError, match=r"activation='gelu'.*\['lrelu', 'prelu', 'relu'\]"):
        create_downsampler("k11s10", activation="gelu")


def test_cubic_downsampler_is_bicubic_interpolation():
    terrain, _ = sample_inputs()
    expected = F.interpolate(terrain, size=(32, 32), mode="bicubic", align_corners=False)
    assert_allclose(create_downsampler("cubic")(terrain).numpy(), expected.numpy())


@pytest.mark.parametrize("shape", [(2, 3, 40, 35), (1, 20, 160, 160), (2, 4, 23, 17)])
def test_alternating_stride_conv_matches_the_blockwise_definition(shape):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(5, shape[1], 3, 3, generator=generator)
    bias = torch.randn(5, generator=generator)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    oracle_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = alternating_stride_conv2d(*leaves)
    expected = oracle_alternating_conv(*oracle_leaves)
    assert out.shape == expected.shape == (shape[0], 5, 2 * (shape[2] // 5), 2 * (shape[3] // 5))
    assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=generator)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for fast, slow in zip(leaves, oracle_leaves):
        scale = slow.grad.abs().max().item()
        assert_allclose(fast.grad.numpy(), slow.grad.numpy(), rtol=1e-5, atol=1e-5 * max(1.0, scale))
    # The reference's unfold/permute computation is the same function.
    blockwise = alternating_stride_conv2d_blockwise(x.double(), weight.double(), bias.double())
    expected64 = oracle_alternating_conv(x.double(), weight.double(), bias.double())
    assert_allclose(blockwise.numpy(), expected64.numpy(), rtol=1e-12, atol=1e-12)


def test_alternating_stride_conv_gradcheck_in_double():
    generator = torch.Generator().manual_seed(2)
    inputs = (
        torch.randn(2, 3, 12, 16, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(alternating_stride_conv2d, inputs)


@pytest.mark.parametrize("batch", [1, 9])  # 9 runs the CPU path in several chunks
def test_fused_alternating_downsampler_equals_its_layers(batch):
    torch.manual_seed(3)
    fast = AlternatingDownsampler().double()
    slow = AlternatingDownsampler().double()
    slow.load_state_dict(fast.state_dict())
    use_reference_layers(slow)
    terrain = sample_inputs(batch, dtype=torch.float64)[0] - 301.5
    out_fast, out_slow = fast(terrain), slow(terrain)
    assert_allclose(out_fast.detach().numpy(), out_slow.detach().numpy(), rtol=1e-10, atol=1e-12)
    out_fast.square().sum().backward()
    out_slow.square().sum().backward()
    for (name, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters()):
        assert_allclose(p_fast.grad.numpy(), p_slow.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_attention_matches_the_materialised_score_matrix():
    torch.manual_seed(4)
    fast = SelfAttention2d(16).double()
    fast.gamma.data.fill_(0.7)
    slow = SelfAttention2d(16).double()
    slow.load_state_dict(fast.state_dict())
    slow.reference = True
    x = torch.randn(3, 16, 8, 6, dtype=torch.float64)
    out_fast, out_slow = fast(x), slow(x)
    assert_allclose(out_fast.detach().numpy(), out_slow.detach().numpy(), rtol=1e-10, atol=1e-12)
    # Against the formula itself: softmax(Q^T K / sqrt(C)) over positions, V scores^T, projection, gamma.
    q, k, v = (layer(x).flatten(2) for layer in (slow.query, slow.key, slow.value))
    scores = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(16), dim=-1)
    by_hand = x + 0.7 * slow.project((v @ scores.transpose(1, 2)).reshape(3, 16, 8, 6))
    assert_allclose(out_fast.detach().numpy(), by_hand.detach().numpy(), rtol=1e-10, atol=1e-12)
    out_fast.sum().backward()
    out_slow.sum().backward()
    for (name, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters()):
        assert_allclose(p_fast.grad.numpy(), p_slow.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("arch", ["Arch_04", "Arch_07", "Arch_08"])
def test_reference_layers_compute_the_same_model(arch):
    model = create_model(arch).double()
    for module in model.modules():
        if isinstance(module, SelfAttention2d):
            module.gamma.data.fill_(0.3)
    terrain, depths = sample_inputs(dtype=torch.float64)
    fast = model(terrain, depths)
    slow = use_reference_layers(model)(terrain, depths)
    assert_allclose(fast.detach().numpy(), slow.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_arch04_attention_positions():
    assert attention_positions(12, 2) == (3, 7)
    assert attention_positions(12, 0) == ()
    assert attention_positions(6, 4) == (1, 2, 3, 4)
    model = create_model("Arch_04", layers=8, channels=16, attentions=3)
    layers = list(model.body.net)
    convs_seen, after = 0, []
    for layer in layers:
        if isinstance(layer, torch.nn.Conv2d):
            convs_seen += 1
        if isinstance(layer, SelfAttention2d):
            after.append(convs_seen - 1)  # middle convolutions are numbered from 1, after the first conv
    assert after == list(attention_positions(8, 3)) == [1, 3, 5]
    with pytest.raises(ValueError, match=r"attentions=11 must be an integer from 0 to layers-2=10"):
        create_model("Arch_04", attentions=11)


def test_aliases_build_the_same_architecture():
    for name, aliases in model_aliases().items():
        for alias in aliases:
            model = create_model(alias)
            assert model.arch == name
            assert n_params(model) == n_params(create_model(name))
    assert create_model("arch_04").arch == "Arch_04"


def test_unknown_names_and_arguments_list_the_valid_ones():
    with pytest.raises(ValueError) as info:
        create_model("Arch_06")
    message = str(info.value)
    assert "'Arch_06'" in message
    for name in SEED_MODELS:
        assert name in message
    assert "nondownsampling_attention" in message
    with pytest.raises(ValueError, match=re.escape("['alternating', 'k11s10', 'cubic']")):
        create_model("Arch_02", downsampler="bilinear")
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['layer'\].*layers=12"):
        create_model("Arch_04", layer=10)
    with pytest.raises(ValueError, match=r"downsampler 'alternating'.*\['c3'\].*c1=20, c2=40"):
        create_model("Arch_02", downsampler_kwargs={"c3": 5})
    with pytest.raises(ValueError, match="channels=0 must be a positive integer"):
        create_model("Arch_02", channels=0)


@pytest.mark.parametrize(
    ("terrain_shape", "depths_shape", "pattern"),
    [
        ((2, 1, 320, 320), (2, 2, 32, 32), r"terrain has shape \(2, 1, 320, 320\), expected \(B, 1, 321, 321\)"),
        ((2, 1, 321, 321), (2, 3, 32, 32), r"depths has shape \(2, 3, 32, 32\), expected \(B, 2, 32, 32\)"),
        ((1, 321, 321), (2, 2, 32, 32), r"terrain has shape \(1, 321, 321\)"),
        ((3, 1, 321, 321), (2, 2, 32, 32), r"terrain holds 3 samples but depths 2"),
    ],
)
def test_wrong_input_shapes_name_the_expected_ones(terrain_shape, depths_shape, pattern):
    model = create_model("Arch_02")
    with pytest.raises(ValueError, match=pattern):
        model(torch.zeros(terrain_shape), torch.zeros(depths_shape))


def test_initialisation_schemes():
    torch.manual_seed(5)
    xavier = create_model("Arch_04", downsampler="k11s10")
    conv = xavier.body.net[2]
    fan_in, fan_out = 32 * 9, 32 * 9
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # uniform(-b, b)
    assert (conv.bias == 0).all()
    # K11S10 keeps its own Kaiming-normal initialisation, whatever the model's scheme.
    first = xavier.downsampler.layers[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2.0 / (1 + 0.01**2)) / math.sqrt(121), rel=0.1)
    kaiming = create_model("Arch_04", init="kaiming")
    assert kaiming.body.net[2].weight.std().item() == pytest.approx(math.sqrt(2.0 / (1 + 0.01**2)) / math.sqrt(fan_in), rel=0.05)
    for module in kaiming.modules():
        if isinstance(module, SelfAttention2d):
            assert module.gamma.item() == 0.0
    with pytest.raises(ValueError, match=r"unknown initialisation 'normal'; expected one of \['xavier', 'kaiming'\]"):
        init_weights(xavier, "normal")


def test_terrain_centering_makes_predictions_independent_of_the_datum():
    terrain, depths = sample_inputs()
    centred = create_model("Arch_04", center_terrain=True).eval()
    with torch.no_grad():
        assert_allclose(centred(terrain, depths).numpy(), centred(terrain + 120.0, depths).numpy(), rtol=1e-4, atol=1e-6)
    raw = create_model("Arch_04", center_terrain=False).eval()
    with torch.no_grad():
        assert not np.allclose(raw(terrain, depths).numpy(), raw(terrain + 120.0, depths).numpy())


def test_config_rebuilds_the_same_model():
    model = create_model("Arch_04", downsampler="k11s10", downsampler_kwargs={"c1": 8, "c2": 12},
                         layers=6, channels=8, attentions=1)
    config = dict(model.config)
    rebuilt = create_model(
        config.pop("arch"),
        downsampler=config.pop("downsampler"),
        downsampler_kwargs=config.pop("downsampler_kwargs"),
        center_terrain=config.pop("center_terrain"),
        terrain_scale=config.pop("terrain_scale"),
        depth_scale=config.pop("depth_scale"),
        change_scale=config.pop("change_scale"),
        **config.pop("arch_kwargs"),
    )
    assert not config
    rebuilt.load_state_dict(model.state_dict())
    terrain, depths = sample_inputs()
    with torch.no_grad():
        assert_allclose(rebuilt(terrain, depths).numpy(), model(terrain, depths).numpy())


@pytest.mark.parametrize("downsampler", ["alternating", "k11s10", "cubic"])
def test_an_empty_batch_gives_an_empty_prediction(downsampler):
    model = create_model("Arch_02", downsampler=downsampler)
    out = model(torch.zeros(0, 1, 321, 321), torch.zeros(0, 2, 32, 32))
    assert out.shape == (0, 1, 32, 32)


def test_inputs_of_another_type_are_refused_with_what_to_do():
    import numpy as np

    model = create_model("Arch_02", downsampler="cubic")
    with pytest.raises(TypeError, match=r"terrain is a numpy.ndarray; expected a torch.Tensor \(e.g. torch.from_numpy"):
        model(np.zeros((1, 1, 321, 321), np.float32), torch.zeros(1, 2, 32, 32))
    with pytest.raises(TypeError, match=r"depths is torch.float64, the model's weights torch.float32; convert it"):
        model(torch.zeros(1, 1, 321, 321), torch.zeros(1, 2, 32, 32, dtype=torch.float64))


def test_the_k11s10_downsampler_keeps_its_kaiming_initialisation_whatever_the_models():
    import math

    # Kaiming normal for LeakyReLU(0.01) over 121 inputs: std sqrt(2 / (1 + 0.01^2)) / 11 = 0.1286
    expected = math.sqrt(2 / (1 + 0.01 ** 2)) / 11
    for init in (None, "xavier", "kaiming"):
        torch.manual_seed(0)
        weight = create_model("Arch_04", downsampler="k11s10", init=init).downsampler.layers[0].weight
        assert abs(weight.std().item() / expected - 1) < 0.15, init
