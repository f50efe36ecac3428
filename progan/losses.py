"""WGAN-GP losses with the drift term, as the paper's code (loss.py: G_wgan_acgan, D_wgangp_acgan).

    L_D = mean(D(fake)) - mean(D(real))
          + lambda / target^2 * mean((||grad_x D(mix)|| - target)^2)      lambda 10, target 1
          + eps * mean(D(real)^2)                                          eps 0.001
    L_G = -mean(D(G(z)))

All return fp32 scalars (fp64 for fp64 inputs), also when D runs under autocast. The penalty takes the input gradient
with ``torch.autograd.grad(..., create_graph=True)`` and is then part of an ordinary
``loss.backward()``: the pattern that works under DistributedDataParallel.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from progan.layers import at_least_fp32  # losses in fp32 at least: fp16/bf16 widened, fp64 kept
from progan.ops import input_gradients_only

Critic = Callable[[Tensor, int, float], Tensor]  # (images, resolution, alpha) -> scores [N]


def critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Wasserstein critic loss mean(D(fake)) - mean(D(real)); D minimises it."""
    return at_least_fp32(fake_scores).mean() - at_least_fp32(real_scores).mean()


def drift_penalty(real_scores: Tensor, weight: float = 0.001) -> Tensor:
    """weight * mean(D(real)^2): keeps the critic's output from drifting far from 0."""
    return weight * at_least_fp32(real_scores).square().mean()


def generator_loss(fake_scores: Tensor) -> Tensor:
    """-mean(D(G(z))); G minimises it."""
    return -at_least_fp32(fake_scores).mean()


def gradient_penalty(
    discriminator: Critic,
    real: Tensor,
    fake: Tensor,
    resolution: int,
    alpha: float,
    weight: float = 10.0,
    target: float = 1.0,
    loss_scale: float | None = None,
    mix_weights: Tensor | None = None,
) -> Tensor:
    """weight / target^2 * mean over samples of (||grad_mix D(mix)||_2 - target)^2.

    mix = lerp(real, fake, u), u ~ U(0, 1) per sample: `mix_weights` [N] when given, else drawn
    from the global torch RNG on the data's device (so a seeded run is reproducible). real and fake are detached here: the
    penalty trains D only.

    fp16 with loss scaling (``loss_scale``, e.g. ``scaler.get_scale()``): the critic output is
    multiplied by loss_scale before the inner gradient, so small fp16 gradients do not flush to
    zero, and the gradient is divided by it afterwards, in fp32. Overflow contract: if the
    unscaled gradient is not finite, the returned penalty is not finite either (inf/nan, on
    purpose, never clamped); its backward then makes D's gradients non-finite, so
    ``GradScaler.step`` or the training loop's non-finite-gradient check skips the step (and the
    scaler backs off). Callers can also test ``torch.isfinite(penalty)`` directly.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {list(real.shape)} and fake {list(fake.shape)} differ")
    if loss_scale is not None and not isinstance(loss_scale, Tensor) and not loss_scale > 0:  # a Tensor: on the device, not read
        raise ValueError(f"gradient_penalty: loss_scale must be > 0 or None, got {loss_scale!r}")
    real, fake = real.detach(), fake.detach()
    if mix_weights is None:
        u = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)  # [N, 1, 1, 1]
    else:  # drawn by the caller: the trainer draws the global batch's weights from (seed, step)
        u = mix_weights.to(device=real.device, dtype=real.dtype).reshape(-1, 1, 1, 1)
    mix = torch.lerp(real, fake, u).requires_grad_(True)  # [N, C, H, W]
    scores = at_least_fp32(discriminator(mix, resolution, alpha))  # [N]
    out = scores.sum()  # sum, not mean: each sample's gradient is its own
    if loss_scale is not None:
        out = out * loss_scale
    with input_gradients_only():  # D's weight gradients come from the outer backward, not here
        (grad,) = torch.autograd.grad(out, mix, create_graph=True)  # [N, C, H, W]
    grad = at_least_fp32(grad)
    if loss_scale is not None:
        grad = grad / loss_scale
    # vector_norm's backward is 0 at a zero gradient, where sqrt(sum(x^2)) would give nan.
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)  # [N]
    return (weight / target**2) * (norms - target).square().mean()


def discriminator_loss(
    discriminator: Critic,
    real: Tensor,
    fake: Tensor,
    resolution: int,
    alpha: float,
    gp_weight: float = 10.0,
    gp_target: float = 1.0,
    drift_weight: float = 0.001,
    loss_scale: float | None = None,
    batch_real_fake: bool = True,
    mix_weights: Tensor | None = None,
    penalty_critic: Critic | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's full D loss on one minibatch; returns (loss, detached parts for logging).

    ``fake`` is detached (G is not trained by this loss) and brought to ``real``'s dtype (under
    autocast G may return bf16/fp16). Reals and fakes are scored as separate minibatches (each
    its own minibatch-stddev population, as the paper's code); with ``batch_real_fake`` in one
    pass, ``discriminator(cat([real, fake]), R, alpha, segments=2)``, which gives the same
    scores and is faster on CPU (bench/RESULTS.md). The mixes for the penalty always get their
    own pass, through ``penalty_critic`` when given (an eager twin sharing the parameters of a
    torch.compile'd critic: compiled graphs have no double backward).
    """
    fake = fake.detach().to(real.dtype)
    if batch_real_fake:
        scores = discriminator(torch.cat([real, fake]), resolution, alpha, segments=2)  # [2N]
        real_scores, fake_scores = scores.chunk(2)
    else:
        real_scores = discriminator(real, resolution, alpha)
        fake_scores = discriminator(fake, resolution, alpha)
    wasserstein = critic_loss(real_scores, fake_scores)
    drift = drift_penalty(real_scores, drift_weight)
    penalty = gradient_penalty(penalty_critic or discriminator, real, fake, resolution, alpha, gp_weight,
                               gp_target, loss_scale, mix_weights)
    loss = wasserstein + penalty + drift
    parts = {"critic": wasserstein.detach(), "gradient_penalty": penalty.detach(),
             "drift": drift.detach(), "real_score": at_least_fp32(real_scores.detach()).mean(),
             "fake_score": at_least_fp32(fake_scores.detach()).mean()}
    return loss, parts
