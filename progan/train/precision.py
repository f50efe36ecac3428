"""`--mixed-precision auto` (the default): which autocast dtype a device gets, and why.

The evidence is bench/bench_precision.py (bench/RESULTS.md, "Precision"): under bf16 autocast
WGAN-GP's penalty (through its double backward) stays within 0.6% of float64 and D's and G's
gradients within 5-22%, 4-20x below how much the same gradients change from one minibatch to
the next. So bf16 is used wherever the hardware runs it
natively on a GPU; fp16 stays opt-in (its narrow range needs the loss scale through the penalty's double
backward, and no card without bf16 was measured here).

    CUDA with native bf16 (compute capability 8.0+: A100, H100, RTX 30xx/40xx)  -> bf16
    CUDA without (V100, T4, ...)                                                 -> no (fp32)
    CPU                                                                          -> no (fp32)

On a CPU auto stays fp32 although bf16 is 1.3-1.9x faster where the CPU has native bf16
(AVX-512 BF16 / AMX, bench/RESULTS.md "Networks"): CPU runs are the demo, the tests and the
small checks, where the same command should compute the same numbers on every CPU (with or
without those instructions, where bf16 is emulated and slower). Pass `bf16` to take the speed.

An explicit `bf16` is refused only on a CUDA device without it (torch would emulate it there at
a fraction of fp32's speed); on a CPU without native bf16 it still runs, emulated (tests use
that), and `fp16` runs anywhere.
"""

from __future__ import annotations

import torch

from progan.train.config import MIXED_PRECISION_CHOICES, TrainConfig


def native_bf16(device: torch.device | str) -> bool:
    """True when `device` runs bf16 matmuls and convolutions in hardware, not emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8  # Ampere and later; torch emulates bf16 below that
    if device.type == "cpu":
        try:  # oneDNN's own check for AVX-512 BF16 / AMX (private API, hence the guard)
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_mixed_precision(requested: str, device: torch.device | str) -> str:
    """The concrete setting (no | fp16 | bf16) for `requested` on `device`; ValueError (one line)
    when the device cannot run the request."""
    device = torch.device(device)
    if requested not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {requested!r}")
    if requested == "auto":
        return "bf16" if device.type == "cuda" and native_bf16(device) else "no"
    if requested == "bf16" and device.type == "cuda" and not native_bf16(device):
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "this device"
        raise ValueError(f"--mixed-precision bf16: {name} has no native bf16 (needs compute capability 8.0+); "
                         f"use --mixed-precision auto, no or fp16")
    return requested


def resolve_config(config: TrainConfig, device: torch.device | str) -> TrainConfig:
    """`config` with --mixed-precision auto resolved to what `device` runs best: the run saves, a
    resume compares and the Trainer runs the concrete value (ValueError when the device cannot run it).
    The one place "auto" becomes a setting."""
    return config.replace(mixed_precision=resolve_mixed_precision(config.mixed_precision, device))


def autocast_dtype(setting: str) -> torch.dtype | None:
    """The autocast dtype of a concrete setting; None runs fp32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(setting)
