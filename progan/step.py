"""One training step: the critic's WGAN-GP step, the generator's step and the EMA update.

The trainer and every benchmark call `train_step`, so what is measured is what trains.

No host synchronisation: the random inputs are drawn on the device from a generator seeded with
(seed, step); the decision to skip a non-finite update is a device flag the fused optimizers
take (`found_inf`); losses and skip counts are summed on the device into `StepStats`, read once
per tick. A step therefore queues its work and returns without waiting for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from progan.ema import update_ema_in_use
from progan.gradsync import GradientSync, LossScale, step_unless_non_finite
from progan.layers import autocast
from progan.losses import discriminator_loss, generator_loss
from progan.precision import autocast_dtype
from progan.reals import fade_reals
from progan.seeds import STREAM_STEP, seeded_generator


@dataclass
class StepInputs:
    """The random inputs of one step for this process's slice of the global batch."""

    latents_d: torch.Tensor     # [n, latent]  for the fakes the critic sees
    mix_weights: torch.Tensor   # [n]          gradient-penalty interpolation weights
    flips: torch.Tensor         # [n] bool     mirror augmentation of the reals
    latents_g: torch.Tensor     # [n, latent]  for the generator step


def step_inputs(seed: int, step: int, global_batch: int, latent_size: int, part: slice,
                device: torch.device | str = "cpu") -> StepInputs:
    """Draw the step's random inputs for the whole global batch on `device` and keep this process's
    `part`. Every process draws the same global batch, so N processes see what one would."""
    gen = seeded_generator(seed, STREAM_STEP, step, device)
    latents_d = torch.randn(global_batch, latent_size, generator=gen, device=device)
    mix = torch.rand(global_batch, generator=gen, device=device)
    flips = torch.rand(global_batch, generator=gen, device=device) < 0.5
    latents_g = torch.randn(global_batch, latent_size, generator=gen, device=device)
    return StepInputs(latents_d[part], mix[part], flips[part], latents_g[part])


def micro_slices(n: int, max_batch: int | None) -> list[slice]:
    """Strided micro-batches of a local batch of n (whole minibatch-stddev groups each; see
    validate_setup); one slice when max_batch is None or >= n."""
    count = n // min(n, max_batch or n)
    return [slice(i, None, count) for i in range(count)]


@dataclass
class StepModels:
    """What a step changes: the networks, their optimizers and loss scales, and the gradient exchange."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scale_d: LossScale
    scale_g: LossScale
    sync: GradientSync
    D_penalty: torch.nn.Module | None = None  # an eager twin of a torch.compile'd D for the penalty


@dataclass(frozen=True)
class StepSettings:
    """The numbers of the objective (TrainConfig's) and the autocast dtype."""

    gp_weight: float = 10.0
    gp_target: float = 1.0
    drift_weight: float = 0.001
    ema_beta: float = 0.999
    mirror: bool = True
    autocast_dtype: torch.dtype | None = None
    batch_real_fake: bool = True  # reals and fakes in one D pass (bench/bench_step.py compares)

    @classmethod
    def from_config(cls, config) -> "StepSettings":
        if config.mixed_precision == "auto":
            raise ValueError("StepSettings needs a concrete --mixed-precision; resolve 'auto' first (progan.precision)")
        return cls(config.gp_weight, config.gp_target, config.drift_weight, config.ema_beta, config.mirror,
                   autocast_dtype(config.mixed_precision))


class StepStats:
    """Device-side sums over the steps of a tick: losses (weighted by micro-batch) and skips."""

    NAMES = ("loss_d", "wasserstein", "gradient_penalty", "score_real", "score_fake", "loss_g")

    def __init__(self, device: torch.device | str) -> None:
        self.sums = torch.zeros(len(self.NAMES), device=device)
        self.skipped = torch.zeros(2, dtype=torch.int64, device=device)  # [D, G], whole run
        self.steps = 0

    def reset_sums(self) -> None:
        self.sums.zero_()
        self.steps = 0


def train_step(m: StepModels, s: StepSettings, reals: torch.Tensor, inputs: StepInputs, resolution: int,
               alpha: float, micro: list[slice], stats: StepStats, flags: list[float] | None = None):
    """One D step then one G step then the EMA update, on this process's share of the batch.

    reals: uint8 [n, C, R, R] on the device. Returns the flags: as given with one process, else
    a device tensor of them summed over processes (see GradientSync.reduce).
    """
    device = reals.device
    x = reals.float().div_(127.5).sub_(1.0)
    if s.mirror:
        x = torch.where(inputs.flips[:, None, None, None], x.flip(3), x)
    x = fade_reals(x, alpha)
    weight = 1.0 / len(micro)

    # Critic: D(fake) - D(real) + lambda * penalty + drift.
    m.G.requires_grad_(False)
    m.D.requires_grad_(True)
    scale = m.scale_d.scale
    for part in micro:
        with torch.no_grad(), autocast(device, s.autocast_dtype):
            fakes = m.G(inputs.latents_d[part], resolution=resolution, alpha=alpha)
        with autocast(device, s.autocast_dtype):
            # Reals and fakes in one pass (each its own minibatch-stddev population).
            loss, parts = discriminator_loss(
                m.D, x[part], fakes, resolution, alpha, gp_weight=s.gp_weight, gp_target=s.gp_target,
                drift_weight=s.drift_weight, loss_scale=scale if m.scale_d.enabled else None,
                mix_weights=inputs.mix_weights[part], batch_real_fake=s.batch_real_fake,
                penalty_critic=m.D_penalty)
        (loss * (weight * scale)).backward()
        stats.sums[:5] += torch.stack([loss.detach(), parts["critic"], parts["gradient_penalty"],
                                       parts["real_score"], parts["fake_score"]]) * weight
    found_inf_d, flags = m.sync.reduce(list(m.D.parameters()), scale, flags)
    m.scale_d.update(found_inf_d)
    step_unless_non_finite(m.opt_d, found_inf_d)
    m.opt_d.zero_grad(set_to_none=True)

    # Generator: -D(G(z)).
    m.D.requires_grad_(False)
    m.G.requires_grad_(True)
    scale = m.scale_g.scale
    for part in micro:
        with autocast(device, s.autocast_dtype):
            scores = m.D(m.G(inputs.latents_g[part], resolution=resolution, alpha=alpha),
                         resolution=resolution, alpha=alpha)
        loss = generator_loss(scores.float())
        (loss * (weight * scale)).backward()
        stats.sums[5] += loss.detach() * weight
    found_inf_g, _ = m.sync.reduce(list(m.G.parameters()), scale)
    m.scale_g.update(found_inf_g)
    step_unless_non_finite(m.opt_g, found_inf_g)
    m.opt_g.zero_grad(set_to_none=True)
    m.D.requires_grad_(True)

    stats.skipped += torch.stack([found_inf_d, found_inf_g]).long()
    stats.steps += 1
    update_ema_in_use(m.G_ema, m.G, resolution, beta=s.ema_beta)
    return flags
