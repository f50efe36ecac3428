"""Exponential moving average of the generator ("Gs" in the paper's code).

After every training step: ema = lerp(model, ema, beta) = ema + (1 - beta) * (model - ema) for
every parameter, and buffers are copied (the paper's code: beta 0.999, beta_nontrainable 0).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def _paired(ema_model: nn.Module, model: nn.Module, kind: str) -> tuple[list[Tensor], list[Tensor]]:
    dst = list(getattr(ema_model, kind)())
    src = list(getattr(model, kind)())
    if len(dst) != len(src) or any(d.shape != s.shape for d, s in zip(dst, src)):
        raise ValueError(f"update_ema: ema_model and model {kind} differ; build both from the same config")
    return dst, src


def _lerp_all(dst: list[Tensor], src: list[Tensor], weight: float) -> None:
    src = [s.detach() for s in src]
    if all(d.device == s.device and d.dtype == s.dtype for d, s in zip(dst, src)):
        torch._foreach_lerp_(dst, src, weight)  # one fused pass over all tensors
    else:
        for d, s in zip(dst, src):
            d.lerp_(s.to(d), weight)


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, beta: float = 0.999) -> None:
    """In place: lerp every parameter of ema_model toward model's by (1 - beta); copy buffers."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"update_ema: beta must be in [0, 1], got {beta}")
    _lerp_all(*_paired(ema_model, model, "parameters"), 1.0 - beta)
    for d, s in zip(*_paired(ema_model, model, "buffers")):
        d.copy_(s)


def _growing_parameters(generator: nn.Module, resolution: int) -> list[Tensor]:
    """The generator's parameters a step at `resolution` can change: the blocks up to it and every
    toRGB (the ones left behind keep converging on their last weights, as a full update does)."""
    params = [p for res, block in generator.blocks.items() if int(res) <= resolution for p in block.parameters()]
    return params + list(generator.to_rgb.parameters())


@torch.no_grad()
def update_ema_in_use(ema_model: nn.Module, model: nn.Module, resolution: int, beta: float = 0.999) -> None:
    """update_ema for a progressive Generator, over only what training at `resolution` can change.

    The same result as update_ema, bit for bit: blocks above `resolution` have never had a
    gradient, so the model's weights there are still their initial values, which the EMA copy
    holds exactly (it started as a copy and lerp(w, w, t) == w). The paper's code updates them
    every step to the same effect; skipping them saves most of the update at low resolutions.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"update_ema: beta must be in [0, 1], got {beta}")
    _lerp_all(_growing_parameters(ema_model, resolution), _growing_parameters(model, resolution), 1.0 - beta)
    for d, s in zip(*_paired(ema_model, model, "buffers")):
        d.copy_(s)


@torch.no_grad()
def copy_to_ema(ema_model: nn.Module, model: nn.Module) -> None:
    """Initialise (or reset) ema_model to an exact copy of model's parameters and buffers."""
    update_ema(ema_model, model, beta=0.0)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen deep copy of model (eval mode, requires_grad False) to pass to update_ema."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema
