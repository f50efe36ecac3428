"""WGAN-GP losses with the drift term, as the paper's code (loss.py: G_wgan_acgan, D_wgangp_acgan).

    L_D = mean(D(fake)) - mean(D(real))
          + lambda / target^2 * mean((||grad_x D(mix)|| - target)^2)      lambda 10, target 1
          + eps * mean(D(real)^2)                                          eps 0.001
    L_G = -mean(D(G(z)))

Class-conditional models (the release's AC-GAN terms, softmax cross entropy CE per sample,
averaged like the other terms, cond_weight 1 by default):

    L_D += cond_weight * (CE(real_labels, D_logits(real)) + CE(real_labels, D_logits(fake)))
    L_G += cond_weight * CE(labels, D_logits(G(z, labels)))

where the critic's fakes are generated with the reals' labels, and G's labels are drawn with
the training set's class frequencies (progan.train.step.step_inputs).

All return fp32 scalars (fp64 for fp64 inputs), also when D runs under autocast. The penalty takes the input gradient
with ``torch.autograd.grad(..., create_graph=True)`` and is then part of an ordinary
``loss.backward()``: the pattern that works under DistributedDataParallel.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from progan.nets.layers import at_least_fp32  # losses in fp32 at least: fp16/bf16 widened, fp64 kept
from progan.nets.ops import input_gradients_only

Critic = Callable[[Tensor, int, float], Tensor]  # (images, resolution, alpha) -> scores [N]


def critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Wasserstein critic loss mean(D(fake)) - mean(D(real)); D minimises it."""
    return at_least_fp32(fake_scores).mean() - at_least_fp32(real_scores).mean()


def drift_penalty(real_scores: Tensor, weight: float = 0.001) -> Tensor:
    """weight * mean(D(real)^2): keeps the critic's output from drifting far from 0."""
    return weight * at_least_fp32(real_scores).square().mean()


def class_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross entropy of class logits [N, K] against labels: class indices (integer
    [N]) or class probabilities (float [N, K], e.g. one-hot). In fp32 at least, whatever the
    logits' dtype (log-softmax subtracts the max first, so large logits are exact)."""
    if logits.dim() != 2:
        raise ValueError(f"class_loss: logits must be [N, K], got {list(logits.shape)}")
    n, k = logits.shape
    if labels.is_floating_point():
        if tuple(labels.shape) != (n, k):
            raise ValueError(f"class_loss: float labels must be class probabilities [N, K] = [{n}, {k}], "
                             f"got {list(labels.shape)}")
    elif labels.dtype == torch.bool or tuple(labels.shape) != (n,):
        raise ValueError(f"class_loss: labels must be class indices (integer [N] = [{n}]) or "
                         f"probabilities [N, K], got {labels.dtype} {list(labels.shape)}")
    logits = at_least_fp32(logits)
    return F.cross_entropy(logits, labels.to(logits.dtype) if labels.is_floating_point() else labels.long())


def check_cond_weight(cond_weight: float) -> float:
    if isinstance(cond_weight, bool) or not isinstance(cond_weight, numbers.Real) \
            or not math.isfinite(cond_weight) or cond_weight < 0:
        raise ValueError(f"cond_weight must be a finite number >= 0 (the release uses 1.0), got {cond_weight!r}")
    return float(cond_weight)


def generator_loss(fake_scores: Tensor, fake_logits: Tensor | None = None, labels: Tensor | None = None,
                   cond_weight: float = 1.0) -> Tensor:
    """-mean(D(G(z))); G minimises it. Conditional (fake_logits and the labels G was given):
    + cond_weight * class_loss(fake_logits, labels), the release's G_wgan_acgan."""
    loss = -at_least_fp32(fake_scores).mean()
    if (fake_logits is None) != (labels is None):
        raise ValueError("generator_loss: pass fake_logits and labels together (conditional) or neither")
    if fake_logits is not None:
        loss = loss + check_cond_weight(cond_weight) * class_loss(fake_logits, labels)
    return loss


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
    real_labels: Tensor | None = None,
    cond_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's full D loss on one minibatch; returns (loss, detached parts for logging).

    ``fake`` is detached (G is not trained by this loss) and brought to ``real``'s dtype (under
    autocast G may return bf16/fp16). Reals and fakes are scored as separate minibatches (each
    its own minibatch-stddev population, as the paper's code); with ``batch_real_fake`` in one
    pass, ``discriminator(cat([real, fake]), R, alpha, segments=2)``, which gives the same
    scores and is faster on CPU (bench/RESULTS.md). The mixes for the penalty always get their
    own pass, through ``penalty_critic`` when given (an eager twin sharing the parameters of a
    torch.compile'd critic: compiled graphs have no double backward).

    Conditional (``real_labels``, class indices [N]; the fakes must have been generated with
    these same labels, as the release does): the critic is asked for its class logits too and
    ``cond_weight * (class_loss(real) + class_loss(fake))`` is added; that term is
    ``parts["class_loss"]``. The penalty uses the scores only.
    """
    fake = fake.detach().to(real.dtype)
    conditional = real_labels is not None
    if conditional:
        cond_weight = check_cond_weight(cond_weight)
        extra = {"with_class_logits": True}
    else:
        extra = {}
    if batch_real_fake:
        out = discriminator(torch.cat([real, fake]), resolution, alpha, segments=2, **extra)  # [2N] (, [2N, K])
        if conditional:
            real_scores, fake_scores = out[0].chunk(2)
            real_logits, fake_logits = out[1].chunk(2)
        else:
            real_scores, fake_scores = out.chunk(2)
    else:
        real_out = discriminator(real, resolution, alpha, **extra)
        fake_out = discriminator(fake, resolution, alpha, **extra)
        if conditional:
            (real_scores, real_logits), (fake_scores, fake_logits) = real_out, fake_out
        else:
            real_scores, fake_scores = real_out, fake_out
    wasserstein = critic_loss(real_scores, fake_scores)
    drift = drift_penalty(real_scores, drift_weight)
    penalty = gradient_penalty(penalty_critic or discriminator, real, fake, resolution, alpha, gp_weight,
                               gp_target, loss_scale, mix_weights)
    loss = wasserstein + penalty + drift
    parts = {"critic": wasserstein.detach(), "gradient_penalty": penalty.detach(),
             "drift": drift.detach(), "real_score": at_least_fp32(real_scores.detach()).mean(),
             "fake_score": at_least_fp32(fake_scores.detach()).mean()}
    if conditional:
        labels = real_labels.to(real.device)
        term = cond_weight * (class_loss(real_logits, labels) + class_loss(fake_logits, labels))
        loss = loss + term
        parts["class_loss"] = term.detach()
    return loss, parts
