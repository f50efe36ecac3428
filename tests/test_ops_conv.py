"""progan.nets.ops' convolutions against PyTorch's own (float64, every order of gradient), what they
change in the training step (nothing but rounding, no image-sized kernels), and fades that
cannot mix dtypes whatever autocast does to each op."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from progan import Discriminator, Generator, ModelConfig

from progan.nets import layers
from progan.nets.layers import EqualizedConv2d, EqualizedDownConv2d, EqualizedUpConv2d
from progan.train.losses import gradient_penalty
from progan.nets.ops import conv2d, conv_transpose2d, input_gradients_only

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

F64 = torch.float64

# (name, transposed, stride, padding, weight shape, input shape): every convolution the networks
# run (3x3, 1x1, the fused stride-2 down and up convolutions) on square and non-square maps,
# odd sizes included (a strided conv drops a row there: the input gradient must restore it).
GEOMETRIES = [
    ("3x3", False, 1, 1, (3, 2, 3, 3), (2, 2, 4, 5)),
    ("1x1", False, 1, 0, (3, 2, 1, 1), (2, 2, 4, 6)),
    ("down 4x4/2", False, 2, 1, (3, 2, 4, 4), (2, 2, 6, 4)),
    ("down 4x4/2 odd", False, 2, 1, (3, 2, 4, 4), (2, 2, 5, 7)),
    ("up 4x4/2 transposed", True, 2, 1, (2, 3, 4, 4), (2, 2, 3, 2)),
    ("3x3 transposed", True, 1, 1, (2, 3, 3, 3), (2, 2, 4, 3)),
]


def _functions(transposed, stride, padding):
    ours = (lambda x, w, b: conv_transpose2d(x, w, b, stride, padding)) if transposed else \
        (lambda x, w, b: conv2d(x, w, b, stride, padding))
    stock = (lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding)) if transposed else \
        (lambda x, w, b: F.conv2d(x, w, b, stride, padding))
    return ours, stock


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name,transposed,stride,padding,w_shape,x_shape", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_gradients_of_every_order_match_pytorch_in_float64(name, transposed, stride, padding, w_shape, x_shape, bias,
                                                           one_torch_thread):
    ours, stock = _functions(transposed, stride, padding)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(w_shape, dtype=F64, generator=g, requires_grad=True)
    b = torch.randn(w_shape[1] if transposed else w_shape[0], dtype=F64, generator=g, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)
    f = (lambda x, w, b: ours(x, w, b)) if bias else (lambda x, w: ours(x, w, None))
    assert gradcheck(f, inputs) and gradgradcheck(f, inputs)

    # The values of each order against PyTorch's own autograd (independent code): y, first
    # derivatives, and the penalty-like second and third orders.
    def orders(conv):
        y = conv(x, w, b)
        gy = torch.linspace(-1, 1, y.numel(), dtype=F64).reshape(y.shape)
        first = torch.autograd.grad((y * gy).sum(), inputs, create_graph=True)
        # (first-order gradients do not depend on the bias: higher orders are taken for x and w)
        second = torch.autograd.grad(sum(t.square().sum() for t in first), (x, w), create_graph=True)
        third = torch.autograd.grad(sum((t * t.detach().sin()).sum() for t in second), (x, w))
        return [y, *first, *second, *third]

    for got, want in zip(orders(ours), orders(stock)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


LAYERS = [
    ("3x3", lambda: EqualizedConv2d(2, 3, 3), (2, 2, 4, 5)),
    ("3x3 no bias", lambda: EqualizedConv2d(2, 3, 3, bias=False), (2, 2, 5, 4)),
    ("1x1 (toRGB/fromRGB)", lambda: EqualizedConv2d(4, 3, 1, gain=1.0), (2, 4, 4, 6)),
    ("up fused", lambda: EqualizedUpConv2d(2, 3, fused=True), (2, 2, 3, 2)),
    ("up unfused", lambda: EqualizedUpConv2d(2, 3, fused=False), (2, 2, 2, 3)),
    ("down fused", lambda: EqualizedDownConv2d(2, 3, fused=True), (2, 2, 6, 4)),
    ("down unfused", lambda: EqualizedDownConv2d(2, 3, fused=False), (2, 2, 4, 6)),
]


@pytest.mark.parametrize("name,make,x_shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_every_layer_kind_is_differentiable_twice_and_equals_the_stock_layer(name, make, x_shape, monkeypatch,
                                                                             one_torch_thread):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(x_shape, dtype=F64, requires_grad=True)
    params = tuple(layer.parameters())

    def run(x, *ps):
        return layer(x)

    assert gradcheck(run, (x, *params)) and gradgradcheck(run, (x, *params))

    def penalty_grads():  # the gradient penalty's pattern: ||d out / d x||, then its parameter gradients
        (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), params)

    ours = penalty_grads()
    monkeypatch.setattr(layers, "ops", SimpleNamespace(conv2d=F.conv2d, conv_transpose2d=F.conv_transpose2d))
    for got, want in zip(ours, penalty_grads()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_inference_and_no_grad_take_the_stock_op_with_identical_results():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 8, 8, generator=g), torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    with torch.no_grad():
        assert torch.equal(conv2d(x, w, b, 1, 1), F.conv2d(x, w, b, 1, 1))
    assert conv2d(x, w, b, 1, 1).grad_fn is None  # nothing requires grad: no graph, no Function


def test_input_gradients_only_skips_weight_and_bias_gradients_but_not_the_input_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    with input_gradients_only():
        gx, gw, gb = torch.autograd.grad(conv2d(x, w, b, 1, 1).sum(), (x, w, b), allow_unused=True)
    assert gw is None and gb is None
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w, b, 1, 1).sum(), x)[0])
    gx, gw, gb = torch.autograd.grad(conv2d(x, w, b, 1, 1).sum(), (x, w, b))  # outside: all three again
    assert gw is not None and gb is not None


def test_under_autocast_the_op_computes_in_the_autocast_dtype_and_returns_parameter_dtype_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 4, 4, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv2d(x, w, b, 2, 1)
        want = F.conv2d(x, w, b, 2, 1)
        assert y.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(y, want)
        (gx,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    (gx.square().sum()).backward()  # the penalty's outer backward, outside autocast
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


# --- the training step -----------------------------------------------------------------------

def test_trainer_step_in_fp32_equals_the_stock_convolutions_within_rounding(monkeypatch, one_torch_thread):
    from bench.bench_step import Variant, build, train_step

    def three_steps():
        s = build(ModelConfig.preset("small", 16), 8, "cpu", Variant())
        for _ in range(3):
            train_step(s, 16, 0.4)  # a fade: both paths, the penalty through both
        return [*s.G.parameters(), *s.D.parameters(), s.stats.sums]

    ours = three_steps()
    monkeypatch.setattr(layers, "ops", SimpleNamespace(conv2d=F.conv2d, conv_transpose2d=F.conv_transpose2d))
    stock = three_steps()
    # Adam divides each gradient by its own running size, so float rounding in a tiny gradient can
    # move a weight by up to ~1e-6 after 3 steps (1.8e-6 seen on an AVX-512 CPU); a wrong gradient
    # moves it by about the learning rate (2e-3), 200x more than this tolerance.
    for got, want in zip(ours, stock):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("preset,res,batch,alpha,aspect,device_kind", [
    ("paper", 64, 32, 1.0, "1:1", "cpu"), ("small", 32, 8, 0.5, "1:1", "cpu"), ("small", 32, 8, 1.0, "3:4", "cpu"),
    ("small", 32, 8, 0.5, "1:1", "cuda")])  # CUDA's kernel choices: NHWC from 8, unfused resampling below 128
def test_a_training_step_launches_no_image_sized_convolution_kernel(preset, res, batch, alpha, aspect, device_kind,
                                                                    monkeypatch):
    from bench import bench_step
    from bench.gpu_check import ConvolutionKernels
    from progan.train.device import apply_kernel_choices, kernel_choices

    def census():
        s = bench_step.build(ModelConfig.preset(preset, res, aspect), batch, "meta", bench_step.Variant(adam="foreach"))
        for net in (s.G, s.D):
            apply_kernel_choices(net, kernel_choices(device_kind))
        counter = ConvolutionKernels(limit=4)
        with counter:
            bench_step.train_step(s, res, alpha)
        return counter

    ours = census()
    assert ours.total > 40 and ours.image_sized == []
    # The census sees them where they are: PyTorch's own double backward (the penalty) runs
    # convolutions whose kernel is a feature map (issue 18: 9 of 70 at paper widths, 64x64).
    monkeypatch.setattr(layers, "ops", SimpleNamespace(conv2d=F.conv2d, conv_transpose2d=F.conv_transpose2d))
    stock = census()
    assert len(stock.image_sized) >= 7
    assert max(max(kernel[2:]) for _, kernel in stock.image_sized) >= res // 2  # kernels as large as the maps


# --- fades that cannot mix dtypes ------------------------------------------------------------

def _in_dtype(module, dtype):
    """Wrap a module so its output comes out in `dtype`: what an autocast policy may do to any op
    (CUDA's returns float32 from nearest upsampling where the convolutions give bf16)."""
    forward = module.forward
    module.forward = lambda *a, **k: forward(*a, **k).to(dtype)


@pytest.mark.parametrize("old_dtype,new_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
                         ids=["old-fp32", "new-fp32"])
def test_fades_in_G_and_D_blend_paths_of_different_dtypes_under_autocast(old_dtype, new_dtype, one_torch_thread):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", 16)
    G, D = Generator(cfg), Discriminator(cfg)
    _in_dtype(G.to_rgb["8"], old_dtype)   # G's old path: toRGB at 8, upsampled
    _in_dtype(G.to_rgb["16"], new_dtype)  # G's new path
    _in_dtype(D.from_rgb["8"], old_dtype)  # D's old path: the pooled image through fromRGB at 8
    _in_dtype(D.blocks["16"], new_dtype)   # D's new path
    z = torch.randn(4, cfg.latent_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fakes = G(z, 16, 0.3)
        assert fakes.dtype == torch.float32  # the wider of the two paths
        penalty = gradient_penalty(D, fakes.detach().float().flip(0), fakes.detach().float(), 16, 0.3)
    penalty.backward()
    assert torch.isfinite(penalty) and all(p.grad is not None for p in D.from_rgb["8"].parameters())


def test_resampling_in_float32_under_bf16_autocast_does_not_break_the_fade(monkeypatch, one_torch_thread):
    """The H200's crash, reproduced on the CPU: nearest upsampling returns float32 (CUDA
    autocast's policy) while the convolutions return bf16."""
    import progan.nets.networks as networks
    import progan.train.reals as reals

    def upsample_in_fp32(x):
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest")

    monkeypatch.setattr(networks, "upsample2x", upsample_in_fp32)
    monkeypatch.setattr(reals, "upsample2x", upsample_in_fp32)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", 8)
    G, D = Generator(cfg), Discriminator(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fakes = G(torch.randn(4, cfg.latent_size), 8, 0.5)
        real = reals.fade_reals(torch.rand(4, 3, 8, 8) * 2 - 1, 0.5)
        scores = D(torch.cat([real, fakes.float()]), 8, 0.5, segments=2)
    assert fakes.dtype == torch.float32 and torch.isfinite(scores.float()).all()


def test_the_penalty_computes_no_weight_gradient_inside_its_inner_gradient(monkeypatch, one_torch_thread):
    """The inner torch.autograd.grad asks for the images' gradient only; without
    input_gradients_only every convolution would also build a weight gradient there for nothing."""
    import progan.train.losses as losses
    from torch.utils._python_dispatch import TorchDispatchMode

    class WeightGradients(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution_backward.default and args[-1][1]:  # output_mask: weight
                WeightGradients.count += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", 16)
    D = Discriminator(cfg)
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)

    def inner_weight_gradients():
        WeightGradients.count = 0
        with WeightGradients():
            gradient_penalty(D, real, fake, 16, 1.0, mix_weights=torch.full((4,), 0.5))
        return WeightGradients.count

    assert inner_weight_gradients() == 0
    import contextlib
    monkeypatch.setattr(losses, "input_gradients_only", contextlib.nullcontext)
    assert inner_weight_gradients() == 6  # every convolution of D at 16x16: fromRGB, 2 + 2 in the blocks, 1 at 4x4
