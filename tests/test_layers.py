"""Layers against independent references: numpy, explicit formulas, float64."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from progan import Discriminator, Generator, ModelConfig
from progan.nets.layers import (
    EqualizedConv2d,
    EqualizedDownConv2d,
    EqualizedLinear,
    EqualizedUpConv2d,
    MinibatchStddev,
    PixelNorm,
    downsample2x,
    upsample2x,
)

SQRT2 = math.sqrt(2.0)


# --- equalized learning rate -----------------------------------------------------------------

def expected_gain(which: str, name: str) -> float:
    """The paper's gains, by where the layer sits (independent of the layers' own gain field)."""
    if name.startswith("to_rgb.") or name == "blocks.4.dense1":
        return 1.0  # toRGB, D's last dense layer
    if which == "G" and name == "blocks.4.dense":
        return SQRT2 / 4  # G's first dense layer
    return SQRT2


def equalized_layers(net):
    return [(name, m) for name, m in net.named_modules()
            if isinstance(m, (EqualizedConv2d, EqualizedLinear))]


@pytest.mark.parametrize("which", ["G", "D"])
def test_effective_weight_std_is_gain_over_sqrt_fan_in(which):
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=64, fmap_base=2048, fmap_max=256)  # every layer kind, cheap
    net = Generator(cfg) if which == "G" else Discriminator(cfg)
    layers = equalized_layers(net)
    assert len(layers) > 10
    gains = {expected_gain(which, name) for name, _ in layers}
    assert gains == ({1.0, SQRT2, SQRT2 / 4} if which == "G" else {1.0, SQRT2})
    for name, layer in layers:
        gain = expected_gain(which, name)
        fan_in = layer.weight[0].numel()  # C_in * k * k
        expected_std = gain / math.sqrt(fan_in)
        w = layer.effective_weight().detach()
        n = w.numel()
        # sample std of n normals has relative std ~ 1/sqrt(2n); allow 6 of those
        assert abs(w.std().item() / expected_std - 1) < 6 / math.sqrt(2 * n) + 1e-3, name
        assert abs(layer.weight.mean().item()) < 6 / math.sqrt(n), name  # stored N(0, 1)
        if layer.bias is not None:
            assert torch.count_nonzero(layer.bias) == 0, name


def test_layers_apply_the_effective_weight():
    torch.manual_seed(0)
    lin = EqualizedLinear(7, 5, gain=0.3)
    conv = EqualizedConv2d(3, 4, 3, gain=1.7)
    with torch.no_grad():
        lin.bias.normal_()
        conv.bias.normal_()
    for batch in (1, 64):  # the scale goes on input or weight depending on size; both must agree
        x = torch.randn(batch, 7, dtype=torch.float64)
        ref = x @ (lin.weight.double() * 0.3 / math.sqrt(7)).T + lin.bias.double()
        torch.testing.assert_close(lin.double()(x), ref)
        x = torch.randn(batch, 3, 6, 6, dtype=torch.float64)
        ref = F.conv2d(x, conv.weight.double() * 1.7 / math.sqrt(27), conv.bias.double(), padding=1)
        torch.testing.assert_close(conv.double()(x), ref)


@pytest.mark.parametrize("batch", [1, 64])
def test_up_conv_is_nearest_upsample_then_conv3x3(batch):
    torch.manual_seed(0)
    layer = EqualizedUpConv2d(5, 7).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(batch, 5, 4, 4, dtype=torch.float64)
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    ref = F.conv2d(up, layer.weight * SQRT2 / math.sqrt(45), layer.bias, padding=1)
    for fused in (True, False):
        layer.fused = fused
        torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 64])
def test_down_conv_is_conv3x3_then_box_average_then_bias(batch):
    torch.manual_seed(0)
    layer = EqualizedDownConv2d(5, 7).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(batch, 5, 8, 8, dtype=torch.float64)
    y = F.conv2d(x, layer.weight * SQRT2 / math.sqrt(45), padding=1)
    ref = y.reshape(batch, 7, 4, 2, 4, 2).mean(dim=(3, 5)) + layer.bias.view(1, -1, 1, 1)
    for fused in (True, False):
        layer.fused = fused
        torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_resampling_against_numpy():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 6))
    up = upsample2x(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(up, np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
    down = downsample2x(torch.from_numpy(x)).numpy()
    ref = (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 1::2]) / 4
    np.testing.assert_allclose(down, ref, rtol=1e-12)


# --- PixelNorm ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 16), (3, 8, 5, 7)])
def test_pixel_norm_gives_unit_mean_square_per_pixel(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * torch.rand(shape[0], *([1] * (len(shape) - 1))) * 20
    y = PixelNorm()(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones_like(y[:, 0]), rtol=1e-6, atol=0)
    # a per-pixel rescaling: direction unchanged
    ratio = y / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_pixel_norm_of_zero_is_zero():
    assert torch.count_nonzero(PixelNorm()(torch.zeros(2, 4, 3, 3))) == 0


def test_pixel_norm_in_fp16_computes_its_statistics_in_fp32():
    # x^2 ~ 1e-6 is subnormal in fp16 and eps = 1e-8 rounds to 0 there; a naive fp16
    # PixelNorm is off by ~4% here.
    torch.manual_seed(0)
    x = (torch.randn(4, 64, 3, 3) * 1e-3).to(torch.float16)
    x64 = x.double()
    ref = x64 * torch.rsqrt(x64.square().mean(dim=1, keepdim=True) + 1e-8)
    y = PixelNorm()(x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=1e-3)


# --- minibatch stddev ---------------------------------------------------------------------------

def mbstd_reference(x: np.ndarray, group_size: int) -> np.ndarray:
    """The paper's layer written with loops: group g = n % (N / G), population std + 1e-8."""
    n = x.shape[0]
    g = min(group_size, n)
    m = n // g
    stat = np.empty(m)
    for group in range(m):
        members = x[[i for i in range(n) if i % m == group]]  # [G, C, H, W]
        var = ((members - members.mean(axis=0)) ** 2).mean(axis=0)
        stat[group] = np.sqrt(var + 1e-8).mean()
    extra = np.empty((n, 1) + x.shape[2:])
    for i in range(n):
        extra[i] = stat[i % m]
    return np.concatenate([x, extra], axis=1)


@pytest.mark.parametrize("n,group_size", [(8, 4), (12, 4), (4, 4), (2, 4), (6, 3), (1, 4), (16, 2)])
def test_minibatch_stddev_matches_numpy_reference(n, group_size):
    rng = np.random.default_rng(n * 10 + group_size)
    # per-sample offsets make the groups' statistics differ, so wrong grouping shows
    x = rng.standard_normal((n, 3, 4, 4)) * rng.uniform(0.1, 3.0, size=(n, 1, 1, 1))
    out = MinibatchStddev(group_size)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, mbstd_reference(x, group_size), rtol=1e-10, atol=1e-12)


def test_minibatch_stddev_groups_are_strided_not_consecutive():
    # Samples 0,1 identical and 2,3 identical: consecutive groups of 2 would give std 0 (1e-4);
    # the paper's strided groups pair 0 with 2 and 1 with 3.
    x = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64).view(4, 1, 1, 1)
    extra = MinibatchStddev(2)(x)[:, 1].flatten()
    torch.testing.assert_close(extra, torch.full((4,), math.sqrt(1.0 + 1e-8), dtype=torch.float64))


def test_minibatch_stddev_segments_equal_separate_calls():
    torch.manual_seed(0)
    a, b = torch.randn(8, 5, 4, 4), torch.randn(8, 5, 4, 4) * 3
    layer = MinibatchStddev(4)
    stacked = layer(torch.cat([a, b]), segments=2)
    torch.testing.assert_close(stacked, torch.cat([layer(a), layer(b)]))
    assert not torch.allclose(layer(torch.cat([a, b])), stacked)


def test_minibatch_stddev_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible by the group size 4"):
        MinibatchStddev(4)(torch.randn(6, 2, 4, 4))
    with pytest.raises(ValueError, match="segments"):
        MinibatchStddev(4)(torch.randn(6, 2, 4, 4), segments=4)


def test_minibatch_stddev_keeps_low_precision_dtype():
    x = torch.randn(8, 4, 4, 4, dtype=torch.bfloat16)
    out = MinibatchStddev(4)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (8, 5, 4, 4)
    ref = mbstd_reference(x.double().numpy(), 4)[:, 4]
    np.testing.assert_allclose(out[:, 4].double().numpy(), ref, rtol=1e-2)
