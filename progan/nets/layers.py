"""Building blocks of ProGAN's networks, each exact to the paper's release code.

Equalized learning rate: weights are stored N(0, 1) and multiplied at run time by
``gain / sqrt(fan_in)``, so Adam sees every layer at the same scale. Biases start at 0, unscaled.
All layers work in NCHW (and channels_last) and under ``torch.autocast``; every op supports
double backward, which the gradient penalty needs. The convolutions run through progan.nets.ops, whose
gradients of every order stay on ordinary convolution kernels (the penalty's double backward
through F.conv2d launches convolutions with image-sized kernels: 1% of a GPU's speed).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from progan.nets import ops

SQRT2 = math.sqrt(2.0)


# --- resampling -----------------------------------------------------------------------------

def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling. [N, C, H, W] -> [N, C, 2H, 2W]"""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: Tensor) -> Tensor:
    """2x2 box average. [N, C, H, W] -> [N, C, H/2, W/2]"""
    return F.avg_pool2d(x, kernel_size=2)


def fade(old: Tensor, new: Tensor, alpha: float) -> Tensor:
    """lerp(old, new, alpha) in the wider dtype of the two.

    Under autocast the two paths of a fade need not agree: CUDA runs nearest upsampling in
    float32 and convolutions in bf16/fp16, CPU both in bf16, and torch.lerp refuses mixed
    dtypes. Whatever each op returns, the blend runs in the more precise of the two.
    """
    dtype = torch.promote_types(old.dtype, new.dtype)
    return torch.lerp(old.to(dtype), new.to(dtype), alpha)


# --- equalized learning-rate layers ---------------------------------------------------------

class _Equalized(nn.Module):
    """Shared part: an N(0,1) weight with run-time scale gain/sqrt(fan_in), optional zero bias."""

    def __init__(self, weight_shape: tuple[int, ...], fan_in: int, gain: float, bias: int | None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(bias)) if bias else None
        self.gain = gain
        self.fan_in = fan_in
        self.scale = gain / math.sqrt(fan_in)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def effective_weight(self) -> Tensor:
        """The weight the layer actually applies (std gain/sqrt(fan_in) at init)."""
        return self.weight * self.scale

    def _scaled(self, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(x, weight) with the run-time scale applied to the smaller of the two.

        op(x * s, w) == op(x, w * s) for the linear ops here; the paper's code scales the weight,
        which costs a pass over a 2.4M-element 3x3 kernel where the 4x4 activations have 131k.
        """
        if self.scale == 1.0:  # folded into the weight (ONNX export): nothing to scale
            return x, weight
        if x.numel() < weight.numel():
            return x * self.scale, weight
        return x, weight * self.scale


class EqualizedLinear(_Equalized):
    """Dense layer with equalized learning rate. [N, in] -> [N, out]"""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True):
        super().__init__((out_features, in_features), in_features, gain, out_features if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(*self._scaled(x, self.weight), self.bias)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}, gain={self.gain:.4g}, bias={self.bias is not None}"


class EqualizedConv2d(_Equalized):
    """k x k convolution (odd k, 'same' padding) with equalized learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = SQRT2,
                 bias: bool = True):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__((out_channels, in_channels, kernel_size, kernel_size),
                         in_channels * kernel_size**2, gain, out_channels if bias else None)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:  # [N, Cin, H, W] -> [N, Cout, H, W]
        return ops.conv2d(*self._scaled(x, self.weight), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        fused = f", fused={self.fused}" if hasattr(self, "fused") else ""
        return f"{i}, {o}, kernel_size={k}, gain={self.gain:.4g}, bias={self.bias is not None}{fused}"


class EqualizedUpConv2d(EqualizedConv2d):
    """Nearest 2x upsample followed by a 3x3 conv. [N, Cin, H, W] -> [N, Cout, 2H, 2W]

    Same parameters as a 3x3 conv (fan_in 9*Cin). With ``fused`` it runs as one stride-2
    transposed 4x4 conv, as the paper's code does (fused_scale=True): the same function with
    16/36 of the FLOPs, faster on CPU from 8x8 inputs up.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float = SQRT2, bias: bool = True,
                 fused: bool = True):
        super().__init__(in_channels, out_channels, 3, gain, bias)
        self.fused = fused

    def fused_weight(self) -> Tensor:
        """[Cin, Cout, 4, 4] transposed-conv kernel equal to upsample-then-conv3x3 (unscaled)."""
        w = self.weight.flip(2, 3)  # transposed conv correlates with the flipped kernel
        w = F.pad(w, (1, 1, 1, 1))
        w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        return w.transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return ops.conv_transpose2d(*self._scaled(x, self.fused_weight()), self.bias, stride=2, padding=1)
        x, weight = self._scaled(x, self.weight)  # scale before upsampling: 4x fewer elements
        return ops.conv2d(upsample2x(x), weight, self.bias, padding=1)


class EqualizedDownConv2d(EqualizedConv2d):
    """3x3 conv followed by a 2x2 box average, bias added after. [N, Cin, H, W] -> [N, Cout, H/2, W/2]

    With ``fused`` it runs as one stride-2 4x4 conv, as the paper's code does (fused_scale=True):
    the same function with 16/36 of the FLOPs, faster on CPU from 16x16 inputs up.
    Note the order, conv -> pool -> bias (-> activation by the caller), is the release code's
    (fused_scale=True, its default); the paper's table lists the activation before the pooling.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float = SQRT2, bias: bool = True,
                 fused: bool = True):
        super().__init__(in_channels, out_channels, 3, gain, bias)
        self.fused = fused

    def fused_weight(self) -> Tensor:
        """[Cout, Cin, 4, 4] stride-2 kernel equal to conv3x3-then-avgpool2 (unscaled)."""
        w = F.pad(self.weight, (1, 1, 1, 1))
        return (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) * 0.25

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return ops.conv2d(*self._scaled(x, self.fused_weight()), self.bias, stride=2, padding=1)
        x = downsample2x(ops.conv2d(*self._scaled(x, self.weight), None, padding=1))
        return x if self.bias is None else x + self.bias.to(x.dtype).view(1, -1, 1, 1)  # autocast: keep x's dtype


# --- normalisation and statistics ------------------------------------------------------------

def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`'s type; a no-op context for None or fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 for statistics; fp32 and fp64 stay as they are."""
    return x.float() if x.element_size() < 4 else x


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps): unit mean square per pixel (dim 1)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # [N, C, ...] -> same
        # Statistics in fp32: eps=1e-8 underflows to 0 in fp16, and bf16 sums lose digits.
        mean_square = at_least_fp32(x).square().mean(dim=1, keepdim=True)  # [N, 1, ...]
        return x * torch.rsqrt(mean_square + self.eps).to(x.dtype)


class MinibatchStddev(nn.Module):
    """Appends one feature map: the stddev over a group of samples, averaged over C, H, W.

    As in the paper's code, groups are strided: with M = N / G groups, sample n belongs to group
    n % M. G = min(group_size, N); N must be divisible by G (ValueError otherwise: a silent
    fallback would change what D measures). ``segments`` > 1 treats x as that many minibatches
    stacked along dim 0 (e.g. reals then fakes) and never groups across them, so one pass over
    the stack equals separate passes. [N, C, H, W] -> [N, C+1, H, W]
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: Tensor, segments: int = 1) -> Tensor:
        total, c, h, w = x.shape
        if segments < 1 or total % segments:
            raise ValueError(f"minibatch stddev: batch {total} does not split into {segments} segments")
        n = total // segments
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(
                f"minibatch stddev: batch {n} is not divisible by the group size {g}; "
                f"use a batch that is a multiple of {g} (or change ModelConfig.mbstd_group_size)")
        m = n // g
        y = at_least_fp32(x).reshape(segments, g, m, c, h, w)  # [S, G, M, C, H, W]; fp32 as the paper's code
        # Biased variance over the group, written out: Tensor.var over a short leading dim is
        # ~15x slower on CPU.
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)  # [S, M, C, H, W]
        y = (y + self.eps).sqrt().mean(dim=(2, 3, 4))  # [S, M]
        # Sample n of a segment gets its group's value y[n % M].
        y = y.to(x.dtype).unsqueeze(1).expand(segments, g, m).reshape(total, 1, 1, 1)  # [N, 1, 1, 1]
        return torch.cat([x, y.expand(total, 1, h, w)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
