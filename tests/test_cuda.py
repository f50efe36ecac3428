"""Checks that need a CUDA device; skipped without one. bench/gpu_check.py runs them first (`pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_precision_on_this_card_follows_its_bf16_support():
    from progan.train.precision import resolve_mixed_precision

    major, _ = torch.cuda.get_device_capability()
    assert resolve_mixed_precision("auto", "cuda") == ("bf16" if major >= 8 else "no")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_trainer_step_on_cuda_gives_finite_losses_and_moves_the_weights(demo_lmdb, tmp_path, precision):
    from bench.gpu_check import make_trainer, trainer_step

    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no native bf16 on this card")
    trainer = make_trainer(demo_lmdb, tmp_path / "run", "small", 16, 8, precision, torch.device("cuda"), 0)
    before = [p.detach().clone() for p in trainer.G.parameters()]
    for _ in range(3):
        trainer_step(trainer)
    torch.cuda.synchronize()
    assert trainer.G_ema is not None and next(trainer.G.parameters()).is_cuda
    assert torch.isfinite(trainer._tick_sums).all() and trainer._tick_sums.abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.G.parameters()))
    assert trainer.skipped_d + trainer.skipped_g == 0


@pytest.mark.parametrize("transposed,stride,w_shape,x_shape", [
    (False, 1, (8, 4, 3, 3), (2, 4, 9, 7)), (False, 2, (8, 4, 4, 4), (2, 4, 8, 6)), (True, 2, (4, 8, 4, 4), (2, 4, 3, 5))])
def test_progan_ops_on_cuda_match_pytorch_to_the_second_order_in_float64(transposed, stride, w_shape, x_shape):
    import torch.nn.functional as F
    from torch.autograd import gradgradcheck

    from progan.nets.ops import conv2d, conv_transpose2d

    kw = dict(device="cuda", dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(x_shape, **kw), torch.randn(w_shape, **kw), torch.randn(w_shape[1 if transposed else 0], **kw)
    ours = (lambda x, w, b: conv_transpose2d(x, w, b, stride, 1)) if transposed else (lambda x, w, b: conv2d(x, w, b, stride, 1))
    stock = (lambda x, w, b: F.conv_transpose2d(x, w, b, stride, 1)) if transposed else (lambda x, w, b: F.conv2d(x, w, b, stride, 1))
    assert gradgradcheck(ours, (x, w, b))

    def penalty_grads(conv):
        (gx,) = torch.autograd.grad(conv(x, w, b).square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (x, w))

    for got, want in zip(penalty_grads(ours), penalty_grads(stock)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_no_cudnn_convolution_of_a_penalty_step_has_an_image_sized_kernel(precision):
    """What the H200 profile showed (88% of a 1024 step in convolutions whose kernel was a feature
    map), checked where it happened: cuDNN's own calls, with their input shapes."""
    from torch.profiler import ProfilerActivity, profile

    from bench.bench_step import Variant, build, train_step
    import bench.bench_step as bench_step
    from progan.nets.config import ModelConfig
    from progan.train.device import apply_kernel_choices, kernel_choices

    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no native bf16 on this card")
    saved = bench_step.AUTOCAST_DTYPE
    bench_step.AUTOCAST_DTYPE = torch.bfloat16 if precision == "bf16" else torch.float16
    try:
        s = build(ModelConfig.preset("small", 64), 8, "cuda", Variant())
        for net in (s.G, s.D):
            apply_kernel_choices(net, kernel_choices("cuda"))
        train_step(s, 64, 0.5)  # warm-up; a fade: both paths and the reals' fade under autocast
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            train_step(s, 64, 0.5)
            torch.cuda.synchronize()
    finally:
        bench_step.AUTOCAST_DTYPE = saved
    convs = [e for e in prof.events() if e.name in ("aten::cudnn_convolution", "aten::cudnn_convolution_transpose")]
    assert len(convs) > 20
    kernels = [e.input_shapes[1] for e in convs if len(e.input_shapes) > 1 and len(e.input_shapes[1]) == 4]
    assert kernels and max(max(k[2:]) for k in kernels) <= 4, sorted(kernels, key=lambda k: -max(k[2:]))[:3]
    assert torch.isfinite(s.stats.sums).all()
