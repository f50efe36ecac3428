"""The progressive generator and discriminator (Karras et al. 2018), exact to the release code.

Every block for every resolution 4..cfg.resolution is built up front (ModuleDicts keyed by
str(resolution)); a forward at a lower resolution leaves the larger blocks unused, so they get
no gradient. ``alpha`` in [0, 1] is the weight of the newest block (1 = stable phase):

    G(z, R, alpha) = lerp(upsample2x(toRGB_{R/2}(x_{R/2})), toRGB_R(block_R(x_{R/2})), alpha)
    D(img, R, alpha) feeds lerp(fromRGB_{R/2}(avgpool2(img)), block_R(fromRGB_R(img)), alpha)
    into the blocks below R.

At alpha == 1 the old path is not computed at all (its weights get no gradient).

Where this differs from the paper's release code (tkarras/progressive_growing_of_gans), and why:
- Nothing in the function computed, except rounding: the equalized-LR scale goes on whichever
  of input and weight is smaller (layers.py), toRGB runs before the 2x upsampling of the old
  path (a 1x1 conv commutes with it), and the fused resampling convs are used from 16x16 up only
  (below that the separate upsample/pool + 3x3 conv is faster on CPU; same function).
- D's second conv in each block pools *before* its bias and activation. That is the release
  code (fused_scale=True, its default); the paper's Table 2 lists lrelu before the pooling.

Class-conditional models (cfg.class_names, K = cfg.label_size > 0) are the release's (G_paper,
D_paper with label_size > 0; loss.py G_wgan_acgan / D_wgangp_acgan), nothing more:
- G: the one-hot labels are concatenated to the latents, combo = [z, onehot] [N, latent + K],
  and the first PixelNorm and the 4x4 dense layer (gain sqrt(2)/4, fan-in latent + K) take the
  combo; every other layer is the unconditional one. ``G(z, R, alpha, labels=...)`` takes class
  indices (integer [N]) or one-hot/soft rows (float [N, K]); required for a conditional model,
  refused for an unconditional one.
- D: the last dense layer has 1 + K outputs: column 0 is the critic score, columns 1.. the class
  logits (an AC-GAN head). ``D(x, R, alpha)`` still returns the scores [N] (the gradient penalty
  and the G step's score use only them); ``D(..., with_class_logits=True)`` returns
  (scores [N], logits [N, K]).
With K = 0 every module, parameter shape and initial value is the unconditional model's.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from progan.nets.config import ModelConfig
from progan.nets.layers import (
    SQRT2,
    EqualizedConv2d,
    EqualizedDownConv2d,
    EqualizedLinear,
    EqualizedUpConv2d,
    MinibatchStddev,
    PixelNorm,
    downsample2x,
    fade,
    upsample2x,
)

# Blocks working at this resolution and above run their resampling conv in the fused form
# (same function, 16/36 of the FLOPs); fusing from 8x8 up measured slower.
# bench/bench_step.py --compare fused, numbers in bench/RESULTS.md.
FUSED_MIN_RES = 16
# Blocks at this resolution and above run channels_last (NHWC): oneDNN's convolutions and the
# per-pixel channel reductions (PixelNorm) are faster there, about 2x per iteration at 128 and
# 256 with narrow channels; at 32 it is a wash. bench/bench_step.py --compare channels_last,
# numbers in bench/RESULTS.md.
CHANNELS_LAST_MIN_RES = 32


def memory_format_for(res: int) -> torch.memory_format:
    return torch.channels_last if res >= CHANNELS_LAST_MIN_RES else torch.contiguous_format


def _lrelu(x: Tensor, slope: float) -> Tensor:
    # In place: x is always a fresh conv output, and leaky_relu's backward can use its result.
    return F.leaky_relu_(x, slope) if slope > 0 else F.relu_(x)


def check_phase(cfg: ModelConfig, resolution: int, alpha: float) -> float:
    """Validate (resolution, alpha) against cfg; return alpha as a python float."""
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) \
            or resolution not in cfg.resolutions:
        raise ValueError(f"resolution must be one of {cfg.resolutions}, got {resolution!r}")
    if isinstance(alpha, Tensor):
        alpha = alpha.item()  # accepted, but a python float avoids a sync and graph breaks
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1] (1 = stable phase), got {alpha!r}")
    if resolution == 4 and alpha != 1.0:
        raise ValueError(f"resolution 4 has no smaller resolution to fade from; alpha must be 1.0, got {alpha}")
    return float(alpha)


def one_hot_labels(labels: Tensor | None, cfg: ModelConfig, z: Tensor, check_values: bool = True) -> Tensor:
    """A conditional G's labels as float rows [N, K] in z's dtype: class indices (integer [N])
    become one-hot, float [N, K] rows (one-hot or soft) pass as they are. ValueError for a wrong
    shape, dtype or device, and with ``check_values`` for values out of range (a host read: the
    Generator checks them in eval mode only, so a training step never waits on the device; there
    an index out of range still fails in one_hot, on a GPU as a device-side assert)."""
    k, n = cfg.label_size, z.shape[0]
    if labels is None:
        raise ValueError(f"Generator: this model is class-conditional ({k} classes: {', '.join(cfg.class_names)}); "
                         f"pass labels=class indices [N] or one-hot rows [N, {k}]")
    if not isinstance(labels, Tensor):
        raise ValueError(f"Generator: labels must be a tensor (class indices [N] or one-hot rows [N, {k}]), "
                         f"got {type(labels).__name__}")
    if labels.device != z.device:
        raise ValueError(f"Generator: labels are on {labels.device} but the latents on {z.device}; "
                         f"move them to the same device")
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"Generator: labels must be integer class indices [N] or float rows [N, {k}], "
                         f"got dtype {labels.dtype}")
    if labels.is_floating_point():
        if tuple(labels.shape) != (n, k):
            raise ValueError(f"Generator: float labels must be one-hot/soft rows [N, K] = [{n}, {k}], "
                             f"got {list(labels.shape)}")
        if check_values and not bool(((labels >= 0) & (labels <= 1)).all()):
            raise ValueError("Generator: float labels must lie in [0, 1] (one-hot or soft class weights)")
        return labels.to(z.dtype)
    if tuple(labels.shape) != (n,):
        raise ValueError(f"Generator: class indices must be a 1-D integer tensor [N] = [{n}], got "
                         f"{list(labels.shape)}")
    if check_values and n and not (0 <= int(labels.min()) and int(labels.max()) < k):
        raise ValueError(f"Generator: class indices must be in 0..{k - 1}, got values from "
                         f"{int(labels.min())} to {int(labels.max())}")
    return F.one_hot(labels.long(), k).to(z.dtype)


# --- generator blocks ---------------------------------------------------------------------

class GeneratorInputBlock(nn.Module):
    """latent -> base block (4x4 square, w0 x h0 otherwise): PixelNorm(z), dense to C*h0*w0 (+ one
    bias per channel), conv3x3; each layer followed by lrelu and PixelNorm. [N, latent] -> [N, C, h0, w0]

    Conditional: z is the release's combo [latents, onehot labels], [N, latent + label_size];
    the PixelNorm normalises the combo as a whole, as the release's normalize_latents does."""

    def __init__(self, latent_size: int, channels: int, slope: float, base_size: tuple[int, int] = (4, 4),
                 label_size: int = 0):
        super().__init__()
        self.channels = channels
        self.slope = slope
        self.width, self.height = base_size
        self.pixel_norm = PixelNorm()
        # gain sqrt(2)/4 as the paper's code ("to match the original Theano implementation"); kept
        # for every shape, so a non-square model starts from the square one's weight scale.
        self.dense = EqualizedLinear(latent_size + label_size, channels * self.width * self.height,
                                     gain=SQRT2 / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))  # per channel, not per (C, H, W) unit
        self.conv = EqualizedConv2d(channels, channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(self.pixel_norm(z)).view(-1, self.channels, self.height, self.width)  # [N, C, h0, w0]
        x = self.pixel_norm(_lrelu(x + self.bias.view(1, -1, 1, 1).to(x.dtype), self.slope))
        return self.pixel_norm(_lrelu(self.conv(x), self.slope))


class GeneratorBlock(nn.Module):
    """Doubles the resolution: upsample+conv3x3, conv3x3, each followed by lrelu and PixelNorm.
    [N, Cin, H, W] -> [N, Cout, 2H, 2W]"""

    def __init__(self, in_channels: int, out_channels: int, slope: float, fused: bool,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.slope = slope
        self.memory_format = memory_format
        self.pixel_norm = PixelNorm()
        self.conv0 = EqualizedUpConv2d(in_channels, out_channels, fused=fused)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        x = self.pixel_norm(_lrelu(self.conv0(x), self.slope))
        return self.pixel_norm(_lrelu(self.conv1(x), self.slope))


def to_rgb(in_channels: int, num_channels: int) -> EqualizedConv2d:
    """1x1 conv to image channels, gain 1, linear output (no tanh, as the paper)."""
    return EqualizedConv2d(in_channels, num_channels, 1, gain=1.0)


class Generator(nn.Module):
    """G(z [N, latent], resolution, alpha) -> images [N, num_channels, H, W] with (W, H) =
    cfg.level_size(resolution) (R x R when square), linear output, about [-1, 1] once trained."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.latent_size = cfg.latent_size
        self.label_size = cfg.label_size
        slope = cfg.leaky_slope
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict()
        for res in cfg.resolutions:
            if res == 4:
                block = GeneratorInputBlock(cfg.latent_size, cfg.channels(4), slope, cfg.base_size, cfg.label_size)
            else:
                block = GeneratorBlock(cfg.channels(res // 2), cfg.channels(res), slope,
                                       fused=res >= FUSED_MIN_RES, memory_format=memory_format_for(res))
            self.blocks[str(res)] = block
            self.to_rgb[str(res)] = to_rgb(cfg.channels(res), cfg.num_channels)

    def forward(self, z: Tensor, resolution: int, alpha: float = 1.0, labels: Tensor | None = None) -> Tensor:
        """labels (conditional models only): class indices, integer [N], or one-hot/soft rows,
        float [N, K], on z's device. Their values are checked in eval mode (sampling); in
        training mode they come from the data and the step, and are not read back (no sync)."""
        alpha = check_phase(self.cfg, resolution, alpha)
        if z.dim() != 2 or z.shape[1] != self.latent_size:
            raise ValueError(f"Generator expects latents [N, {self.latent_size}], got {list(z.shape)}")
        if self.label_size:
            onehot = one_hot_labels(labels, self.cfg, z, check_values=not self.training)  # [N, K]
            z = torch.cat([z, onehot], dim=1)  # [N, latent + K], the release's combo_in
        elif labels is not None:
            raise ValueError("Generator: labels given to an unconditional model (its ModelConfig has no "
                             "class_names); call it without labels")
        x = self.blocks["4"](z)  # [N, C, h0, w0] (4x4 square)
        res = 4
        while res < resolution // 2:
            res *= 2
            x = self.blocks[str(res)](x)  # [N, C, res, res]
        if resolution == 4:
            return self.to_rgb["4"](x)
        new = self.to_rgb[str(resolution)](self.blocks[str(resolution)](x))  # [N, 3, H, W]
        if alpha == 1.0:
            return new
        # toRGB before upsampling: the same as after (1x1 conv), on 3 channels instead of C.
        old = upsample2x(self.to_rgb[str(resolution // 2)](x))  # [N, 3, H, W]
        return fade(old, new, alpha)


# --- discriminator blocks -----------------------------------------------------------------

class FromRGB(nn.Module):
    """1x1 conv from image channels, then lrelu. [N, num_channels, H, W] -> [N, C, H, W]"""

    def __init__(self, num_channels: int, out_channels: int, slope: float,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.slope = slope
        self.memory_format = memory_format
        self.conv = EqualizedConv2d(num_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return _lrelu(self.conv(x.contiguous(memory_format=self.memory_format)), self.slope)


class DiscriminatorBlock(nn.Module):
    """Halves the resolution: conv3x3 + lrelu, then conv3x3 + 2x2 average + bias + lrelu.
    [N, Cin, H, W] -> [N, Cout, H/2, W/2]"""

    def __init__(self, in_channels: int, out_channels: int, slope: float, fused: bool,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.slope = slope
        self.memory_format = memory_format
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedDownConv2d(in_channels, out_channels, fused=fused)

    def forward(self, x: Tensor) -> Tensor:
        x = _lrelu(self.conv0(x.contiguous(memory_format=self.memory_format)), self.slope)
        return _lrelu(self.conv1(x), self.slope)


class DiscriminatorOutputBlock(nn.Module):
    """base block -> score: minibatch stddev (+1 channel), conv3x3, dense to nf(0), dense to
    1 + label_size; lrelu after all but the last (gain 1). [N, C, h0, w0] -> scores [N], or with
    ``with_class_logits`` (scores [N], class logits [N, label_size]): the release's
    scores_out = x[:, :1], labels_out = x[:, 1:]."""

    def __init__(self, in_channels: int, hidden: int, mbstd_group_size: int, slope: float,
                 base_size: tuple[int, int] = (4, 4), label_size: int = 0):
        super().__init__()
        self.slope = slope
        # The paper's code skips the layer for group sizes <= 1 (a group of one has no spread).
        self.mbstd = MinibatchStddev(mbstd_group_size) if mbstd_group_size > 1 else nn.Identity()
        extra = 1 if mbstd_group_size > 1 else 0
        self.conv = EqualizedConv2d(in_channels + extra, in_channels, 3)
        self.dense0 = EqualizedLinear(in_channels * base_size[0] * base_size[1], hidden)
        self.dense1 = EqualizedLinear(hidden, 1 + label_size, gain=1.0)  # K = 0: the unconditional layer

    def forward(self, x: Tensor, segments: int = 1, with_class_logits: bool = False):
        if isinstance(self.mbstd, MinibatchStddev):
            x = self.mbstd(x, segments)  # [N, C+1, 4, 4]
        x = _lrelu(self.conv(x), self.slope)  # [N, C, 4, 4]
        x = _lrelu(self.dense0(x.flatten(1)), self.slope)  # [N, hidden]
        out = self.dense1(x)  # [N, 1 + K]
        if with_class_logits:
            return out[:, 0], out[:, 1:]  # [N], [N, K]
        return out[:, 0]  # [N]


class Discriminator(nn.Module):
    """D(images [N, num_channels, H, W], resolution R, alpha) -> critic scores [N], where
    (W, H) = cfg.level_size(R) (R x R when square); conditional models can also return their
    class logits (with_class_logits=True)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        slope = cfg.leaky_slope
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for res in cfg.resolutions:
            self.from_rgb[str(res)] = FromRGB(cfg.num_channels, cfg.channels(res), slope,
                                              memory_format_for(res))
            if res == 4:
                block = DiscriminatorOutputBlock(cfg.channels(4), cfg.stage_channels(0),
                                                 cfg.mbstd_group_size, slope, cfg.base_size, cfg.label_size)
            else:
                block = DiscriminatorBlock(cfg.channels(res), cfg.channels(res // 2), slope,
                                           fused=res >= FUSED_MIN_RES, memory_format=memory_format_for(res))
            self.blocks[str(res)] = block

    def forward(self, x: Tensor, resolution: int, alpha: float = 1.0, segments: int = 1,
                with_class_logits: bool = False):
        """``segments`` > 1: x is that many minibatches stacked along dim 0 (e.g. torch.cat([reals,
        fakes])), scored in one pass exactly as separate calls would (minibatch stddev groups stay
        within each); bigger batches run faster on CPU. ``with_class_logits`` (conditional models
        only): returns (scores [N], class logits [N, K]) instead of the scores."""
        if with_class_logits and not self.cfg.label_size:
            raise ValueError("Discriminator: with_class_logits needs a class-conditional model (its "
                             "ModelConfig has no class_names)")
        alpha = check_phase(self.cfg, resolution, alpha)
        width, height = self.cfg.level_size(resolution)
        expected = (self.cfg.num_channels, height, width)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Discriminator expects images [N, {', '.join(map(str, expected))}], "
                             f"got {list(x.shape)}")
        h = self.from_rgb[str(resolution)](x)  # [N, C, H, W]
        if resolution > 4:
            h = self.blocks[str(resolution)](h)  # [N, C', R/2, R/2]
            if alpha != 1.0:
                old = self.from_rgb[str(resolution // 2)](downsample2x(x))
                h = fade(old, h, alpha)
            res = resolution // 2
            while res > 4:
                h = self.blocks[str(res)](h)
                res //= 2
        return self.blocks["4"](h, segments, with_class_logits)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Generator", "Discriminator", "check_phase", "one_hot_labels", "count_parameters", "FUSED_MIN_RES",
           "CHANNELS_LAST_MIN_RES"]
