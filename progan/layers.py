"""Building blocks of ProGAN's networks, each exact to the paper's release code.

Equalized learning rate: weights are stored N(0, 1) and multiplied at run time by
``gain / sqrt(fan_in)``, so Adam sees every layer at the same scale. Biases start at 0, unscaled.
All layers work in NCHW (and channels_last) and under ``torch.autocast``; every op supports
double backward, which the gradient penalty needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)


# --- resampling -----------------------------------------------------------------------------

def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling. [N, C, H, W] -> [N, C, 2H, 2W]"""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: Tensor) -> Tensor:
    """2x2 box average. [N, C, H, W] -> [N, C, H/2, W/2]"""
    return F.avg_pool2d(x, kernel_size=2)


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


class EqualizedLinear(_Equalized):
    """Dense layer with equalized learning rate. [N, in] -> [N, out]"""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True):
        super().__init__((out_features, in_features), in_features, gain, out_features if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

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
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, gain={self.gain:.4g}, bias={self.bias is not None}"


class EqualizedUpConv2d(EqualizedConv2d):
    """Nearest 2x upsample followed by a 3x3 conv. [N, Cin, H, W] -> [N, Cout, 2H, 2W]

    Same parameters as a 3x3 conv (fan_in 9*Cin). From ``fused_min_res`` input size up it runs
    as one stride-2 transposed 4x4 conv, as the paper's code does (fused_scale=True): the same
    function with 16/36 of the FLOPs.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float = SQRT2, bias: bool = True,
                 fused_min_res: int = 0):
        super().__init__(in_channels, out_channels, 3, gain, bias)
        self.fused_min_res = fused_min_res

    def fused_weight(self) -> Tensor:
        """[Cin, Cout, 4, 4] transposed-conv kernel equal to upsample-then-conv3x3."""
        w = self.effective_weight().flip(2, 3)  # transposed conv correlates with the flipped kernel
        w = F.pad(w, (1, 1, 1, 1))
        w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        return w.transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] >= self.fused_min_res:
            return F.conv_transpose2d(x, self.fused_weight(), self.bias, stride=2, padding=1)
        return F.conv2d(upsample2x(x), self.effective_weight(), self.bias, padding=1)


class EqualizedDownConv2d(EqualizedConv2d):
    """3x3 conv followed by a 2x2 box average, bias added after. [N, Cin, H, W] -> [N, Cout, H/2, W/2]

    From ``fused_min_res`` input size up it runs as one stride-2 4x4 conv, as the paper's code
    does (fused_scale=True): the same function with 16/36 of the FLOPs.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float = SQRT2, bias: bool = True,
                 fused_min_res: int = 0):
        super().__init__(in_channels, out_channels, 3, gain, bias)
        self.fused_min_res = fused_min_res

    def fused_weight(self) -> Tensor:
        """[Cout, Cin, 4, 4] stride-2 kernel equal to conv3x3-then-avgpool2."""
        w = F.pad(self.effective_weight(), (1, 1, 1, 1))
        return (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) * 0.25

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] >= self.fused_min_res:
            return F.conv2d(x, self.fused_weight(), self.bias, stride=2, padding=1)
        x = downsample2x(F.conv2d(x, self.effective_weight(), None, padding=1))
        return x if self.bias is None else x + self.bias.view(1, -1, 1, 1)


# --- normalisation and statistics ------------------------------------------------------------

class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps): unit mean square per pixel (dim 1)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # [N, C, ...] -> same
        # Statistics in fp32: eps=1e-8 underflows to 0 in fp16, and bf16 sums lose digits.
        mean_square = x.float().square().mean(dim=1, keepdim=True)  # [N, 1, ...]
        return x * torch.rsqrt(mean_square + self.eps).to(x.dtype)


class MinibatchStddev(nn.Module):
    """Appends one feature map: the stddev over a group of samples, averaged over C, H, W.

    As in the paper's code, groups are strided: with M = N / G groups, sample n belongs to group
    n % M. G = min(group_size, N); N must be divisible by G (ValueError otherwise: a silent
    fallback would change what D measures). [N, C, H, W] -> [N, C+1, H, W]
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(
                f"minibatch stddev: batch {n} is not divisible by the group size {g}; "
                f"use a batch that is a multiple of {g} (or change ModelConfig.mbstd_group_size)")
        m = n // g
        y = x.float().reshape(g, m, c, h, w)  # [G, M, C, H, W]; fp32 as the paper's code
        y = y.var(dim=0, correction=0)  # [M, C, H, W] biased variance over the group
        y = (y + self.eps).sqrt().mean(dim=(1, 2, 3))  # [M]
        y = y.to(x.dtype).repeat(g)  # [N]: sample n gets its group's value y[n % M]
        y = y.view(n, 1, 1, 1).expand(n, 1, h, w)  # [N, 1, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
