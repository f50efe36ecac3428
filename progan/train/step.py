"""One training step: the critic's WGAN-GP step, the generator's step and the EMA update.

The trainer and every benchmark call `run_step`, so what is measured is what trains.

No host synchronisation: the random inputs are drawn on the device from a generator seeded with
(seed, step); the decision to skip a non-finite update is a device flag the fused optimizers
take (`found_inf`); losses and skip counts are summed on the device into `StepStats`, read once
per tick. A step therefore queues its work and returns without waiting for the device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from progan.train.ema import update_ema_in_use
from progan.train.gradsync import GradientSync, LossScale, step_unless_non_finite
from progan.nets.layers import autocast
from progan.train.losses import check_cond_weight, class_loss, discriminator_loss, generator_loss
from progan.train.precision import autocast_dtype
from progan.train.reals import fade_reals
from progan.train.seeds import STREAM_STEP, seeded_generator


@dataclass
class StepInputs:
    """The random inputs of one step for this process's slice of the global batch."""

    latents_d: torch.Tensor     # [n, latent]  for the fakes the critic sees
    mix_weights: torch.Tensor   # [n]          gradient-penalty interpolation weights
    flips: torch.Tensor         # [n] bool     mirror augmentation of the reals
    latents_g: torch.Tensor     # [n, latent]  for the generator step
    labels_g: torch.Tensor | None = None  # [n] int64  classes of the generator step's fakes (conditional)


def class_weights(class_frequencies: torch.Tensor | Sequence[float],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The training set's class counts or frequencies as float32 weights [K] on `device`; ValueError
    unless 1-D with at least 2 entries, finite, >= 0 and not all 0. Call it once and pass its
    result to every step_inputs: the check reads the values (a device sync for a device tensor)."""
    if isinstance(class_frequencies, torch.Tensor):
        values = class_frequencies.detach().cpu().tolist() if class_frequencies.dim() == 1 else None
    else:
        values = list(class_frequencies) if isinstance(class_frequencies, Sequence) else None
    ok = values is not None and len(values) >= 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values)
    if not ok or not sum(values) > 0:
        raise ValueError(f"class_frequencies must be the training set's count (or frequency) of each class: "
                         f"at least 2 finite numbers >= 0, not all 0; got {class_frequencies!r}")
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def step_inputs(seed: int, step: int, global_batch: int, latent_size: int, part: slice,
                device: torch.device | str = "cpu",
                class_frequencies: torch.Tensor | Sequence[float] | None = None) -> StepInputs:
    """Draw the step's random inputs for the whole global batch on `device` and keep this process's
    `part`. Every process draws the same global batch, so N processes see what one would.

    Conditional models: `class_frequencies` [K] (counts or frequencies; None = unconditional)
    gives the generator step's labels, drawn with those frequencies as the release's
    get_random_labels_tf, after every other draw (an unconditional run's numbers stay the same).
    A tensor is used as is, with no host read (make it once with class_weights, which checks it);
    a sequence of numbers is checked here."""
    gen = seeded_generator(seed, STREAM_STEP, step, device)
    latents_d = torch.randn(global_batch, latent_size, generator=gen, device=device)
    mix = torch.rand(global_batch, generator=gen, device=device)
    flips = torch.rand(global_batch, generator=gen, device=device) < 0.5
    latents_g = torch.randn(global_batch, latent_size, generator=gen, device=device)
    labels_g = None
    if class_frequencies is not None:
        if isinstance(class_frequencies, torch.Tensor):
            weights = class_frequencies.to(device=device, dtype=torch.float32)
        else:
            weights = class_weights(class_frequencies, device)
        labels_g = torch.multinomial(weights, global_batch, replacement=True, generator=gen)[part]  # [n] int64
    return StepInputs(latents_d[part], mix[part], flips[part], latents_g[part], labels_g)


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
    cond_weight: float = 1.0      # weight of the class terms of conditional models (the release's 1.0)

    @classmethod
    def from_config(cls, config) -> "StepSettings":
        if config.mixed_precision == "auto":
            raise ValueError("StepSettings needs a concrete --mixed-precision; resolve 'auto' first (progan.train.precision)")
        return cls(config.gp_weight, config.gp_target, config.drift_weight, config.ema_beta, config.mirror,
                   autocast_dtype(config.mixed_precision), cond_weight=config.cond_weight)


class StepStats:
    """Device-side sums over the steps of a tick: losses (weighted by micro-batch) and skips."""

    NAMES = ("loss_d", "wasserstein", "gradient_penalty", "score_real", "score_fake", "loss_g")
    # Conditional models: the class terms as added to each loss (included in loss_d / loss_g).
    # Apart from `sums`, whose layout the trainer's tick unpacks.
    CLASS_NAMES = ("class_loss_d", "class_loss_g")

    def __init__(self, device: torch.device | str) -> None:
        self.sums = torch.zeros(len(self.NAMES), device=device)
        self.class_sums = torch.zeros(len(self.CLASS_NAMES), device=device)
        self.skipped = torch.zeros(2, dtype=torch.int64, device=device)  # [D, G], whole run
        self.steps = 0

    def reset_sums(self) -> None:
        self.sums.zero_()
        self.class_sums.zero_()
        self.steps = 0


def run_step(m: StepModels, s: StepSettings, reals: torch.Tensor, inputs: StepInputs, resolution: int,
               alpha: float, micro: list[slice], stats: StepStats, flags: list[float] | None = None,
               real_labels: torch.Tensor | None = None):
    """One D step then one G step then the EMA update, on this process's share of the batch.

    reals: uint8 [n, C, H, W] on the device. Returns the flags: as given with one process, else
    a device tensor of them summed over processes (see GradientSync.reduce).

    Conditional models: real_labels, the reals' class indices (int64 [n] on the device), and
    inputs.labels_g (step_inputs with class_frequencies). As the release, the critic's fakes are
    generated with the reals' labels; mirroring keeps a label; micro-batches slice the labels
    as they slice the images.
    """
    device = reals.device
    conditional = real_labels is not None
    if conditional:
        if inputs.labels_g is None:
            raise ValueError("run_step: real_labels given but inputs.labels_g is None; draw the step's "
                             "inputs with step_inputs(..., class_frequencies=...)")
        if tuple(real_labels.shape) != (reals.shape[0],):
            raise ValueError(f"run_step: real_labels must be class indices [n] = [{reals.shape[0]}], "
                             f"got {list(real_labels.shape)}")
        check_cond_weight(s.cond_weight)
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
        labels = {"labels": real_labels[part]} if conditional else {}  # the fakes take the reals' labels
        with torch.no_grad(), autocast(device, s.autocast_dtype):
            fakes = m.G(inputs.latents_d[part], resolution=resolution, alpha=alpha, **labels)
        with autocast(device, s.autocast_dtype):
            # Reals and fakes in one pass (each its own minibatch-stddev population).
            loss, parts = discriminator_loss(
                m.D, x[part], fakes, resolution, alpha, gp_weight=s.gp_weight, gp_target=s.gp_target,
                drift_weight=s.drift_weight, loss_scale=scale if m.scale_d.enabled else None,
                mix_weights=inputs.mix_weights[part], batch_real_fake=s.batch_real_fake,
                penalty_critic=m.D_penalty, real_labels=labels.get("labels"), cond_weight=s.cond_weight)
        (loss * (weight * scale)).backward()
        stats.sums[:5] += torch.stack([loss.detach(), parts["critic"], parts["gradient_penalty"],
                                       parts["real_score"], parts["fake_score"]]) * weight
        if conditional:
            stats.class_sums[0] += parts["class_loss"] * weight
    found_inf_d, flags = m.sync.reduce(list(m.D.parameters()), scale, flags)
    m.scale_d.update(found_inf_d)
    step_unless_non_finite(m.opt_d, found_inf_d)
    m.opt_d.zero_grad(set_to_none=True)

    # Generator: -D(G(z)).
    m.D.requires_grad_(False)
    m.G.requires_grad_(True)
    scale = m.scale_g.scale
    for part in micro:
        if conditional:
            labels_g = inputs.labels_g[part]
            with autocast(device, s.autocast_dtype):
                scores, logits = m.D(m.G(inputs.latents_g[part], resolution=resolution, alpha=alpha, labels=labels_g),
                                     resolution=resolution, alpha=alpha, with_class_logits=True)
            term = s.cond_weight * class_loss(logits, labels_g)  # generator_loss's term, kept for the stats
            loss = generator_loss(scores.float()) + term
            stats.class_sums[1] += term.detach() * weight
        else:
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
