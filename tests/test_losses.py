"""WGAN-GP losses: closed forms, finite differences in float64, loss scaling, autocast."""

import pytest
import torch

from progan import Discriminator, Generator, ModelConfig
from progan.train.losses import (
    critic_loss,
    discriminator_loss,
    drift_penalty,
    generator_loss,
    gradient_penalty,
)

TINY = ModelConfig(resolution=8, num_channels=2, latent_size=4, fmap_base=16, fmap_max=4,
                   mbstd_group_size=2)


def tiny_critic_and_batch(seed=0, batch=4):
    torch.manual_seed(seed)
    D = Discriminator(TINY).double()
    with torch.no_grad():  # non-zero biases so every term matters
        for name, p in D.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    real = torch.randn(batch, 2, 8, 8, dtype=torch.float64)
    fake = torch.randn(batch, 2, 8, 8, dtype=torch.float64)
    return D, real, fake


# --- the simple losses ---------------------------------------------------------------------------

def test_critic_generator_and_drift_values():
    real = torch.tensor([1.0, 3.0])
    fake = torch.tensor([-2.0, 0.0])
    assert critic_loss(real, fake).item() == pytest.approx(-1.0 - 2.0)
    assert generator_loss(fake).item() == pytest.approx(1.0)
    assert drift_penalty(real).item() == pytest.approx(0.001 * 5.0)
    assert drift_penalty(real, weight=0.5).item() == pytest.approx(2.5)
    low = real.to(torch.bfloat16)
    assert critic_loss(low, fake.to(torch.bfloat16)).dtype == torch.float32


# --- gradient penalty: closed form --------------------------------------------------------------

def linear_critic(w, b=0.7):
    def critic(x, resolution, alpha):
        return (x * w).flatten(1).sum(dim=1) + b  # [N]; gradient w for every sample
    return critic


@pytest.mark.parametrize("weight,target", [(10.0, 1.0), (3.0, 2.0)])
def test_penalty_of_a_linear_critic_is_the_closed_form(weight, target):
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    real, fake = torch.randn(2, 5, 3, 4, 4, dtype=torch.float64)
    penalty = gradient_penalty(linear_critic(w), real, fake, 4, 1.0, weight=weight, target=target)
    norm = w.detach().norm()
    expected = weight / target**2 * (norm - target) ** 2
    torch.testing.assert_close(penalty.detach(), expected)
    # and its gradient with respect to the critic's weights (the double-backward path)
    (grad_w,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad_w, weight / target**2 * 2 * (norm - target) * w.detach() / norm)


def test_penalty_is_zero_for_a_unit_gradient_critic():
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    w /= w.norm()
    real, fake = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)
    assert gradient_penalty(linear_critic(w), real, fake, 4, 1.0).item() == pytest.approx(0.0, abs=1e-20)


# --- gradient penalty: finite differences on a small D ----------------------------------------

def test_penalty_value_matches_finite_difference_input_gradients():
    D, real, fake = tiny_critic_and_batch()
    torch.manual_seed(7)
    penalty = gradient_penalty(D, real, fake, 8, 0.5)
    torch.manual_seed(7)  # the same u the penalty drew from the global RNG
    u = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    mix = real + u * (fake - real)
    # Central differences of sum(D(mix)) for every input element. All 2 * mix.numel() perturbed
    # minibatches go through D in one pass as separate segments (minibatch stddev never mixes
    # segments; tests/test_layers.py checks that this equals separate calls).
    h = 1e-6
    n = mix.numel()
    eye = torch.eye(n, dtype=torch.float64).view(n, *mix.shape)  # [n, N, C, H, W]
    perturbed = torch.cat([mix + h * eye, mix - h * eye])  # [2n, N, C, H, W]
    with torch.no_grad():
        sums = D(perturbed.flatten(0, 1), 8, 0.5, segments=2 * n).view(2 * n, -1).sum(dim=1)
    fd = ((sums[:n] - sums[n:]) / (2 * h)).view_as(mix)
    assert fd.abs().max() > 1e-3  # not trivially zero
    expected = 10.0 * ((fd.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    torch.testing.assert_close(penalty.detach(), expected, rtol=1e-6, atol=1e-9)


# batch 2: most layers apply the equalized-LR scale to their input; batch 16: to their weight
@pytest.mark.parametrize("batch", [2, 16])
def test_penalty_parameter_gradient_matches_finite_differences(batch):
    D, real, fake = tiny_critic_and_batch(seed=1, batch=batch)
    params = list(D.parameters())

    def penalty():
        torch.manual_seed(11)
        return gradient_penalty(D, real, fake, 8, 0.5)

    # allow_unused: the last bias shifts every score equally and has no effect on the penalty
    grads = torch.autograd.grad(penalty(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    gen = torch.Generator().manual_seed(3)
    h = 1e-6
    for _ in range(3):  # directional derivatives along random directions through all parameters
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        analytic = sum((g * v).sum() for g, v in zip(grads, direction))
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(v, alpha=h)
        plus = penalty().detach()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(v, alpha=-2 * h)
        minus = penalty().detach()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(v, alpha=h)
        numeric = (plus - minus) / (2 * h)
        assert abs(numeric.item()) > 1e-4
        torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


# --- contract details ---------------------------------------------------------------------------

def test_penalty_trains_only_d_and_draws_u_from_the_global_rng():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", 8)
    G, D = Generator(cfg), Discriminator(cfg)
    real = torch.randn(4, 3, 8, 8)
    fake = G(torch.randn(4, cfg.latent_size), 8, 0.5)  # attached to G's graph
    torch.manual_seed(1)
    p1 = gradient_penalty(D, real, fake, 8, 0.5)
    p1.backward()
    assert all(p.grad is None for p in G.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    torch.manual_seed(1)
    assert gradient_penalty(D, real, fake, 8, 0.5).item() == p1.item()
    torch.manual_seed(2)
    assert gradient_penalty(D, real, fake, 8, 0.5).item() != p1.item()


def test_penalty_argument_errors():
    D, real, fake = tiny_critic_and_batch()
    with pytest.raises(ValueError, match="differ"):
        gradient_penalty(D, real, fake[:2], 8, 1.0)
    with pytest.raises(ValueError, match="loss_scale"):
        gradient_penalty(D, real, fake, 8, 1.0, loss_scale=0.0)


@pytest.mark.parametrize("batch_real_fake", [True, False])
def test_discriminator_loss_is_the_sum_of_its_parts(batch_real_fake):
    D, real, fake = tiny_critic_and_batch()
    torch.manual_seed(5)
    loss, parts = discriminator_loss(D, real, fake, 8, 0.5, batch_real_fake=batch_real_fake)
    real_scores, fake_scores = D(real, 8, 0.5), D(fake, 8, 0.5)  # separate calls
    torch.manual_seed(5)
    expected = (fake_scores.mean() - real_scores.mean() + gradient_penalty(D, real, fake, 8, 0.5)
                + 0.001 * (real_scores ** 2).mean())
    torch.testing.assert_close(loss.detach(), expected.detach())
    torch.testing.assert_close(loss.detach(), parts["critic"] + parts["gradient_penalty"] + parts["drift"])


# --- loss scaling and autocast -------------------------------------------------------------------

def small_critic_and_batch():
    torch.manual_seed(0)
    D = Discriminator(ModelConfig.preset("small", 8))
    return D, torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)


def penalty_and_grads(D, real, fake, dtype=None, loss_scale=None):
    D.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        penalty = gradient_penalty(D, real, fake, 8, 0.5, loss_scale=loss_scale)
    penalty.backward()
    return penalty.detach(), [p.grad for p in D.parameters() if p.grad is not None]


def test_loss_scale_is_undone_exactly_in_fp32():
    D, real, fake = small_critic_and_batch()
    p_ref, g_ref = penalty_and_grads(D, real, fake)
    p_scaled, g_scaled = penalty_and_grads(D, real, fake, loss_scale=2.0**12)
    torch.testing.assert_close(p_scaled, p_ref, rtol=1e-5, atol=0)
    for a, b in zip(g_scaled, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_penalty_is_close_to_fp32():
    D, real, fake = small_critic_and_batch()
    p_ref, g_ref = penalty_and_grads(D, real, fake)
    p_bf16, g_bf16 = penalty_and_grads(D, real, fake, dtype=torch.bfloat16)
    assert p_bf16.dtype == torch.float32
    torch.testing.assert_close(p_bf16, p_ref, rtol=0.05, atol=0)
    assert len(g_bf16) == len(g_ref) and all(torch.isfinite(g).all() for g in g_bf16)
    flat_ref, flat_bf16 = torch.cat([g.flatten() for g in g_ref]), torch.cat([g.flatten() for g in g_bf16])
    assert torch.nn.functional.cosine_similarity(flat_ref, flat_bf16, dim=0) > 0.98


def test_fp16_with_loss_scale_matches_and_overflow_gives_a_non_finite_penalty():
    D, real, fake = small_critic_and_batch()
    p_ref, _ = penalty_and_grads(D, real, fake)
    p_fp16, g_fp16 = penalty_and_grads(D, real, fake, dtype=torch.float16, loss_scale=2.0**8)
    torch.testing.assert_close(p_fp16, p_ref, rtol=0.02, atol=0)
    assert all(torch.isfinite(g).all() for g in g_fp16)
    # 2**40 overflows fp16's range inside the inner gradient: the contract is a non-finite
    # penalty whose backward leaves non-finite D gradients, so the step is skipped.
    p_over, g_over = penalty_and_grads(D, real, fake, dtype=torch.float16, loss_scale=2.0**40)
    assert not torch.isfinite(p_over)
    assert not all(torch.isfinite(g).all() for g in g_over)
