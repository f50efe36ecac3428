"""Checks that need a CUDA device; skipped without one. bench/gpu_check.py runs them first (`pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_precision_on_this_card_follows_its_bf16_support():
    from progan.precision import resolve_mixed_precision

    major, _ = torch.cuda.get_device_capability()
    assert resolve_mixed_precision("auto", "cuda") == ("bf16" if major >= 8 else "no")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_trainer_step_on_cuda_gives_finite_losses_and_moves_the_weights(demo_lmdb, tmp_path, precision):
    from bench.gpu_check import make_trainer, trainer_step

    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no native bf16 on this card")
    trainer = make_trainer(demo_lmdb, tmp_path / "run", "small", 16, 8, precision, torch.device("cuda"), 0)
    before = [p.detach().clone() for p in trainer.G.parameters()]
    for _ in range(3):
        trainer_step(trainer)
    torch.cuda.synchronize()
    assert trainer.G_ema is not None and next(trainer.G.parameters()).is_cuda
    assert torch.isfinite(trainer._tick_sums).all() and trainer._tick_sums.abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.G.parameters()))
    assert trainer.skipped_d + trainer.skipped_g == 0
