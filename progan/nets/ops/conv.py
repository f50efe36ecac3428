"""2D convolutions whose gradients of every order run on ordinary convolution kernels.

Why: the gradient penalty differentiates D's input gradient (``create_graph=True``). PyTorch's
own double backward of a convolution computes one of its terms as a convolution whose *kernel*
is a feature map (e.g. input [16, 4, 1024, 1024] with weight [16, 4, 1024, 1024]); cuDNN runs
that at about 1% of the card: 88% of a 1024x1024 training step on an H200 (issue 18).

Here every convolution is one autograd Function, and its backward is built from the same
Functions, so each order of derivative is again a forward convolution, a transposed one
(input gradient, "dgrad") or a weight gradient (``aten.convolution_backward`` with only the
weight output, "wgrad"). A kernel is always a weight or the gradient of one.

    y  = conv(x, w)                    the forward (or transposed) convolution
    dx = conv_T(dy, w)                 input gradient: the other kind of convolution, same weight
    dw = wgrad(dy, x)                  weight gradient, bilinear in (dy, x)
    d(wgrad) / d(dy) = conv(x, .)      and d(wgrad) / d(x) = conv_T(dy, .): again the two above

First-order backward (no ``create_graph``) makes the one fused ``convolution_backward`` call
PyTorch itself makes, so ordinary training steps run exactly the kernels they ran before.

Mixed precision: autocast would cast inside the Function's forward but not in its backward,
leaving the saved tensors and the incoming gradients in different dtypes. So the public
functions cast x, w and b to the autocast dtype themselves (as autocast does for a convolution:
float64 stays, everything else goes to the autocast dtype), and the Functions then run with
autocast off, in one dtype throughout, on any device.

The idea is stylegan2-ada-pytorch's ``conv2d_gradfix`` (for its R1 penalty); this is our own
implementation for the layers ProGAN uses: stride 1 or 2, groups 1, dilation 1, any padding,
non-square maps, with or without bias.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv2d", "conv_transpose2d", "input_gradients_only"]

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")
_state = threading.local()


@contextlib.contextmanager
def input_gradients_only():
    """Within it, the convolutions' backward computes no weight or bias gradient.

    For ``torch.autograd.grad(scores, images, create_graph=True)`` (the gradient penalty): the
    inner gradient is taken with respect to the images only, but a Function's backward cannot
    see which of its inputs this particular call needs, so it would also build the weight
    gradients (and their graph) for nothing. The weights still get the penalty's gradient
    through the outer ``backward()``, which runs outside this context.
    """
    saved = getattr(_state, "input_only", False)
    _state.input_only = True
    try:
        yield
    finally:
        _state.input_only = saved


@dataclass(frozen=True)
class _Geometry:
    """What a convolution does besides its operands: square stride and padding, as our layers use."""

    transposed: bool
    stride: int
    padding: int
    output_padding: tuple[int, int] = (0, 0)

    def run(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding)
        return F.conv2d(x, w, b, self.stride, self.padding)

    def input_gradient(self, x_shape: torch.Size, y_shape: torch.Size, w_shape: torch.Size) -> "_Geometry":
        """The geometry that maps dy back to dx: the other kind, same stride and padding."""
        if self.transposed:
            return _Geometry(False, self.stride, self.padding)
        # A strided convolution drops the last rows/columns that do not fill a whole step; the
        # transposed one restores x's exact size through output_padding.
        pad = tuple(int(x_shape[i]) - ((int(y_shape[i]) - 1) * self.stride - 2 * self.padding + int(w_shape[i]))
                    for i in (2, 3))
        return _Geometry(True, self.stride, self.padding, pad)

    def aten_args(self) -> tuple:
        """stride, padding, dilation, transposed, output_padding, groups for aten.convolution_backward."""
        return ([self.stride] * 2, [self.padding] * 2, [1, 1], self.transposed, list(self.output_padding), 1)


def _autocast_enabled(device_type: str) -> bool:
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def _autocast_off(device_type: str):
    return torch.autocast(device_type, enabled=False) if _autocast_enabled(device_type) else contextlib.nullcontext()


class _Convolution(torch.autograd.Function):
    """y = conv(x, w) + b (or the transposed convolution), differentiable to any order."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, geometry: _Geometry) -> Tensor:
        ctx.geometry = geometry
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w)
        with _autocast_off(x.device.type):
            return geometry.run(x, w, b)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w = ctx.saved_tensors
        g: _Geometry = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if getattr(_state, "input_only", False):
            need_w = need_b = False
        dx = dw = db = None
        with _autocast_off(dy.device.type):
            if not torch.is_grad_enabled():  # first order: PyTorch's own single fused call
                bias_sizes = [w.shape[1] if g.transposed else w.shape[0]] if need_b else None
                dx, dw, db = torch.ops.aten.convolution_backward(
                    dy, x, w, bias_sizes, *g.aten_args(), [need_x, need_w, need_b])
                return dx, dw, db if need_b else None, None
            if need_x:
                dx = _Convolution.apply(dy, w, None, g.input_gradient(x.shape, dy.shape, w.shape))
            if need_w:
                dw = _WeightGradient.apply(dy, x, w, g)
            if need_b:
                db = dy.sum(dim=(0, 2, 3))
        return dx, dw, db, None


class _WeightGradient(torch.autograd.Function):
    """dw = wgrad(dy, x) of a convolution of the given geometry; w gives only the shape and
    layout. Bilinear in (dy, x), so its own gradients are the two convolutions of that geometry."""

    @staticmethod
    def forward(ctx, dy: Tensor, x: Tensor, w: Tensor, geometry: _Geometry) -> Tensor:
        ctx.geometry = geometry
        ctx.save_for_backward(dy, x)
        with _autocast_off(dy.device.type):
            _, dw, _ = torch.ops.aten.convolution_backward(
                dy, x, w, None, *geometry.aten_args(), [False, True, False])
        return dw

    @staticmethod
    def backward(ctx, ddw: Tensor):
        dy, x = ctx.saved_tensors
        g: _Geometry = ctx.geometry
        need_dy, need_x = ctx.needs_input_grad[:2]
        d_dy = d_x = None
        with _autocast_off(ddw.device.type):
            if need_dy:  # <ddw, wgrad(dy, x)> = <dy, conv(x, ddw)>
                d_dy = _Convolution.apply(x, ddw, None, g)
            if need_x:  # = <x, conv_T(dy, ddw)>
                d_x = _Convolution.apply(dy, ddw, None, g.input_gradient(x.shape, dy.shape, ddw.shape))
        return d_dy, d_x, None, None


def _needs_graph(*tensors: Tensor | None) -> bool:
    if not torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # inference, export and compiled graphs (first order only) take the stock op
    return any(t is not None and t.requires_grad for t in tensors)


def _autocast_operands(x: Tensor, w: Tensor, b: Tensor | None):
    """Cast as autocast casts a convolution's operands, so the Function sees one dtype."""
    device_type = x.device.type
    if _autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if x.dtype != torch.float64 and w.dtype != torch.float64:
            return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)
    dtype = torch.promote_types(x.dtype, w.dtype)
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)


def _convolve(x: Tensor, w: Tensor, b: Tensor | None, geometry: _Geometry) -> Tensor:
    if not _needs_graph(x, w, b):
        return geometry.run(x, w, b)
    return _Convolution.apply(*_autocast_operands(x, w, b), geometry)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0) -> Tensor:
    """F.conv2d (groups 1, dilation 1) with gradients of every order on ordinary kernels.
    x [N, Cin, H, W], weight [Cout, Cin, kh, kw] -> [N, Cout, H', W']"""
    return _convolve(x, weight, bias, _Geometry(False, stride, padding))


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0,
                     output_padding: int = 0) -> Tensor:
    """F.conv_transpose2d (groups 1, dilation 1) with gradients of every order on ordinary kernels.
    x [N, Cin, H, W], weight [Cin, Cout, kh, kw] -> [N, Cout, H', W']"""
    return _convolve(x, weight, bias, _Geometry(True, stride, padding, (output_padding, output_padding)))
