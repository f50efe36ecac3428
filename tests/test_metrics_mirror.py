"""Reals for metrics are mirrored (a seeded random half) when the run trained with mirroring, as the release evaluates."""

from __future__ import annotations

import torch

from conftest import TensorDataset
from progan.metrics import DatasetSource, evaluate_metrics
from progan.metrics.evaluate import _MirroredHalf


def lopsided(count: int, res: int = 16) -> torch.Tensor:
    """Images bright on the left, dark on the right (with noise): a flip is plainly visible."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (count, 3, res, res), dtype=torch.uint8, generator=gen)
    images[..., : res // 2] += 180
    return images


class Fingerprinted(TensorDataset):
    def fingerprint(self):
        return "lopsided"


def test_mirrored_half_flips_a_seeded_half_the_same_way_in_every_shard():
    images = lopsided(40)
    source = _MirroredHalf(DatasetSource(TensorDataset(images), 40, seed=5), seed=5)
    whole = source(0, 40)
    assert torch.equal(whole, torch.cat([source(0, 13), source(13, 27)]))  # shards agree
    plain = DatasetSource(TensorDataset(images), 40, seed=5)(0, 40)
    flipped = [not torch.equal(a, b) for a, b in zip(whole, plain)]
    assert 10 <= sum(flipped) <= 30
    assert all(torch.equal(a, b.flip(2)) for a, b, f in zip(whole, plain, flipped) if f)


def test_swd_against_mirrored_reals_matches_a_generator_that_learned_mirrored_data(tmp_path):
    count = 64
    reals = Fingerprinted(lopsided(count))
    # A perfect generator of a mirror-augmented dataset: the reals, each flipped with probability 1/2.
    gen = torch.Generator().manual_seed(9)
    flips = torch.rand(count, generator=gen) < 0.5
    fakes = torch.where(flips[:, None, None, None], reals.images.flip(3), reals.images)
    fake_source = DatasetSource(TensorDataset(fakes), count, seed=1, side="fake")
    args = dict(num_images=count, seed=2, batch_size=16, progress=False, cache_dir=tmp_path / "cache")
    plain = evaluate_metrics("swd", fake_source, reals, 16, **args)
    mirrored = evaluate_metrics("swd", fake_source, reals, 16, mirror_reals=True, **args)
    # The cache keeps the two apart (else the second call would reuse the first's reals).
    assert mirrored["swd_x1e3_avg"] < 0.5 * plain["swd_x1e3_avg"]
    assert evaluate_metrics("swd", fake_source, reals, 16, **args) == plain


def test_metrics_cli_mirrors_by_default_only_runs_that_trained_with_mirroring(tmp_path):
    from progan.metrics.cli import _trained_with_mirror

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text('{"mirror": true}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"mirror": false}')
    assert _trained_with_mirror(tmp_path / "a")
    assert not _trained_with_mirror(tmp_path / "b")
    assert not _trained_with_mirror(tmp_path / "missing") and not _trained_with_mirror(None)


def test_a_training_metric_line_records_mirror_reals_only_when_reals_were_read(demo_lmdb, tmp_path, monkeypatch):
    """stats.jsonl's metric lines: MS-SSIM alone reads no reals, so its line says nothing about them."""
    import json

    import progan.train.loop
    from progan.train.schedule import state_at
    from test_training import make_trainer

    monkeypatch.setattr(progan.train.loop, "evaluate_metrics", lambda names, *a, **k: {n: 0.5 for n in names})
    for metrics, recorded in (("msssim", False), ("swd,msssim", True)):
        out = tmp_path / metrics
        out.mkdir()  # train.py makes it; the trainer alone does not
        trainer = make_trainer(demo_lmdb, out, "--resolution", "16", "--metrics", metrics, "--metric-kimg", "1",
                               "--metric-images", "16")
        trainer.state = state_at(trainer.config.schedule, trainer.config.schedule.total_images)  # stable 16x16
        trainer.evaluate_metrics()
        line = json.loads((out / "stats.jsonl").read_text().splitlines()[-1])
        assert line["kind"] == "metrics" and line["msssim"] == 0.5
        assert ("mirror_reals" in line) == recorded and line.get("mirror_reals", True) is True
