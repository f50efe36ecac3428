"""Generator EMA: the lerp formula, buffers copied, initialisation, mismatches rejected."""

import pytest
import torch
from torch import nn

from progan import Generator, ModelConfig
from progan.train.ema import copy_to_ema, make_ema, update_ema


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("count", torch.zeros(2))


def test_update_ema_is_the_lerp_formula_and_copies_buffers():
    torch.manual_seed(0)
    model, ema = WithBuffer(), WithBuffer()
    with torch.no_grad():
        model.count.fill_(7)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, beta=0.9)
    for e, b, m in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, b + 0.1 * (m.detach() - b))
        assert not torch.equal(e, m)
    assert torch.equal(ema.count, torch.full((2,), 7.0))


def test_update_ema_leaves_the_model_alone_and_builds_no_graph():
    torch.manual_seed(0)
    model, ema = WithBuffer(), WithBuffer()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    ema.requires_grad_(True)  # an in-place update outside no_grad raises on such leaves
    update_ema(ema, model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())


def test_default_beta_is_the_papers_and_repeated_updates_converge():
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 3), nn.Linear(3, 3)
    start = ema.weight.detach().clone()
    for _ in range(10):
        update_ema(ema, model)  # beta 0.999
    expected = model.weight + (start - model.weight) * 0.999**10
    torch.testing.assert_close(ema.weight, expected.detach())


def test_make_ema_and_copy_to_ema_on_a_generator():
    torch.manual_seed(0)
    G = Generator(ModelConfig.preset("small", 8))
    G_ema = make_ema(G)
    assert not G_ema.training and not any(p.requires_grad for p in G_ema.parameters())
    assert all(torch.equal(a, b) for a, b in zip(G_ema.parameters(), G.parameters()))
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    copy_to_ema(G_ema, G)
    assert all(torch.equal(a, b) for a, b in zip(G_ema.parameters(), G.parameters()))


def test_mismatched_models_and_bad_beta_are_rejected():
    with pytest.raises(ValueError, match="differ"):
        update_ema(nn.Linear(3, 3), nn.Linear(3, 4))
    with pytest.raises(ValueError, match="beta"):
        update_ema(nn.Linear(3, 3), nn.Linear(3, 3), beta=1.5)


def test_mixed_dtypes_fall_back_to_per_tensor_updates():
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 3), nn.Linear(3, 3).double()
    expected = ema.weight.detach() + 0.5 * (model.weight.detach().double() - ema.weight.detach())
    update_ema(ema, model, beta=0.5)
    torch.testing.assert_close(ema.weight.detach(), expected)
