"""Files written by an earlier progan load unchanged, and a training run is bit-identical to the
one that wrote them (tests/legacy_fixture.py made tests/fixtures/legacy/ before the package was
reorganised; record.json names the commit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import progan
from legacy_fixture import FIXTURES, checkpoint_digest, latest_checkpoint, train_tiny_run
from progan.generator.checkpoints import load_checkpoint

RECORD = json.loads((FIXTURES / "record.json").read_text())
SEEDS = [0, 1, 2, 7]


def test_a_training_checkpoint_of_an_earlier_release_loads_and_samples():
    data = load_checkpoint(FIXTURES / "training.pt")  # checksums checked
    assert data["kind"] == "training" and data["images_shown"] == 200
    G, info = progan.load_generator(FIXTURES / "training.pt")
    assert (info.resolution, info.model_config.latent_size) == (8, 16)
    assert 0.0 < info.alpha < 1.0  # the run stopped inside the 8x8 fade
    images = progan.seeds_to_images(G, SEEDS, info.resolution, info.alpha)
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8 and images.std() > 0
    raw, _ = progan.load_generator(FIXTURES / "training.pt", ema=False)
    assert not np.array_equal(progan.seeds_to_images(raw, SEEDS, info.resolution, info.alpha), images)


@pytest.mark.parametrize("name", ["generator.pt", "generator.safetensors"])
def test_exports_of_an_earlier_release_load_and_draw_the_checkpoints_faces(name):
    reference, info = progan.load_generator(FIXTURES / "training.pt")
    G, export_info = progan.load_generator(FIXTURES / name)
    assert (export_info.resolution, export_info.alpha) == (info.resolution, info.alpha)
    assert export_info.model_config == info.model_config
    np.testing.assert_array_equal(progan.seeds_to_images(G, SEEDS, info.resolution, info.alpha),
                                  progan.seeds_to_images(reference, SEEDS, info.resolution, info.alpha))


@pytest.mark.slow
def test_a_training_run_is_bit_identical_to_the_earlier_releases(tmp_path):
    """Every tensor and counter of the run's checkpoint (wall-clock time, paths and the fresh
    database's fingerprint aside) is the same as the committed release's, to the bit; the one
    value a later issue changed on purpose (the final checkpoint's recorded alpha) is in the
    record's digest_note."""
    here = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if here != (RECORD["torch"], RECORD["cpu_capability"]):
        pytest.skip(f"the record was made with torch {RECORD['torch']} on {RECORD['cpu_capability']}; here "
                    f"{here[0]} on {here[1]} may round differently (rerun tests/legacy_fixture.py on the old commit)")
    run = train_tiny_run(tmp_path)
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == RECORD["checkpoint"]
    assert checkpoint_digest(checkpoint) == RECORD["digest"]
