"""Per-device settings for training: backend switches and the kernel choices of the networks.

The networks compute the same function either way; these only pick how (memory format, fused
resampling convs, TF32 tensor cores, cuDNN's autotuned algorithms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from progan.nets.networks import CHANNELS_LAST_MIN_RES, FUSED_MIN_RES, DiscriminatorBlock, FromRGB, GeneratorBlock


@dataclass(frozen=True)
class KernelChoices:
    fused_min_res: int          # resampling convs run fused (one stride-2 conv) from this resolution up
    channels_last_min_res: int  # blocks run NHWC from this resolution up
    source: str                 # where the numbers come from


KERNEL_CHOICES = {
    # Measured: bench/bench_step.py --compare fused / channels_last, bench/RESULTS.md ("Networks").
    "cpu": KernelChoices(FUSED_MIN_RES, CHANNELS_LAST_MIN_RES, "measured on an AVX-512 CPU"),
    # PROVISIONAL, not measured: cuDNN's tensor-core convolutions want NHWC, so channels_last from
    # the first conv block; fused resampling from 128 up, as NVIDIA's later GPU code chose
    # (StyleGAN's fused_scale='auto'). To be replaced by bench/gpu_check.py's measurements.
    "cuda": KernelChoices(128, 8, "provisional (not yet measured on a GPU)"),
}


def kernel_choices(device_type: str) -> KernelChoices:
    """The choices for a device kind; devices not measured get the CPU's (the networks' defaults)."""
    return KERNEL_CHOICES.get(device_type, KERNEL_CHOICES["cpu"])


def apply_kernel_choices(module: nn.Module, choices: KernelChoices) -> None:
    """Set the memory format and fused flags of a Generator's or Discriminator's blocks in place
    (the same function is computed; the parameters are untouched)."""
    for kind in ("blocks", "from_rgb"):
        for key, block in getattr(module, kind, {}).items():
            res = int(key)
            if isinstance(block, (GeneratorBlock, DiscriminatorBlock, FromRGB)):
                block.memory_format = (torch.channels_last if res >= choices.channels_last_min_res
                                       else torch.contiguous_format)
            if isinstance(block, GeneratorBlock):
                block.conv0.fused = res >= choices.fused_min_res
            elif isinstance(block, DiscriminatorBlock):
                block.conv1.fused = res >= choices.fused_min_res


def configure_backends(device: torch.device, tf32: bool = True) -> None:
    """Backend switches for training on `device`: cuDNN autotuning (the shapes repeat every step of
    a phase, so the search pays off at once) and TF32 for fp32 matmuls and convolutions (tensor
    cores, ~10 mantissa bits; the WGAN-GP losses are summed in fp32 regardless). No-op on the CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
