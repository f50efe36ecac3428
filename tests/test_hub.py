"""torch.hub.load(REPO, "generator", source="local") gives a ready generator from any progan file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generate import ALPHA, CONFIG, REPO, TRAINED_RES, training_state

from progan.generator import checkpoints

from progan.generator import export
from progan.generator.fileformat import CheckpointError
from progan.generator.loading import load_generator
from progan.generator.sampling import seeds_to_images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    checkpoints.save_training_checkpoint(folder, training_state(seed=5))
    return folder


@pytest.mark.parametrize("suffix", [None, ".pt", ".safetensors"])
def test_hub_load_gives_the_generator_of_the_file(suffix, run_dir, tmp_path, one_torch_thread):
    path = run_dir if suffix is None else export.export_file(run_dir, tmp_path / f"g{suffix}")
    G = torch.hub.load(str(REPO), "generator", path=str(path), source="local", trust_repo=True)
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert (G.resolution, G.alpha, G.info.model_config) == (TRAINED_RES, ALPHA, CONFIG)
    reference, info = load_generator(run_dir)
    expected = seeds_to_images(reference, [3, 9], info.resolution, info.alpha)
    np.testing.assert_array_equal(G.sample([3, 9]), expected)
    latents = torch.randn(2, CONFIG.latent_size)
    torch.testing.assert_close(G(latents, G.resolution, G.alpha), reference(latents, info.resolution, info.alpha))


def test_hub_reports_a_bad_path_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        torch.hub.load(str(REPO), "generator", path=str(tmp_path), source="local", trust_repo=True)
