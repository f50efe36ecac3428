"""Non-square models: aspect parsing, ModelConfig's base shape, G and D at every ratio."""

import json

import pytest
import torch

from progan import Discriminator, Generator, ModelConfig
from progan.shapes import ASPECTS, level_size, parse_aspect
from progan.train.losses import discriminator_loss
from progan.nets.networks import count_parameters

NON_SQUARE = [name for name in ASPECTS if name != "1:1"]


@pytest.mark.parametrize("text,name", [("1:1", "1:1"), ("3:4", "3:4"), (" 4:3 ", "4:3"), ("6:8", "3:4"),
                                       ("2:4", "1:2"), ("4:1", "4:1"), ("2:2", "1:1")])
def test_parse_aspect_accepts_supported_ratios_and_reduces(text, name):
    assert parse_aspect(text) == name


@pytest.mark.parametrize("text,match", [
    ("5:4", "'5:4' is not a supported ratio; use one of 1:1, 3:4, 4:3, 1:2, 2:1, 1:4, 4:1"),
    ("0:1", "'0:1' has a side below 1"),
    ("abc", "'abc' is not a ratio W:H"),
    ("3:4:5", "not a ratio W:H"),
    ("-3:-4", "has a side below 1"),
    ("", "not a ratio W:H"),
])
def test_parse_aspect_refuses_in_one_line(text, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_aspect(text)
    assert "\n" not in str(info.value)


def test_level_sizes_are_named_by_the_long_side():
    assert level_size("3:4", 1024) == (768, 1024)
    assert level_size("4:3", 1024) == (1024, 768)
    assert level_size("2:1", 1024) == (1024, 512)
    assert level_size("1:4", 4) == (1, 4) and level_size("1:4", 16) == (4, 16)
    assert level_size("1:1", 64) == (64, 64)


def test_model_config_aspect_default_round_trip_and_old_configs():
    cfg = ModelConfig.preset("small", 32, aspect="3:4")
    assert cfg.base_size == (3, 4) and cfg.level_size(32) == (24, 32)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["aspect"] == "3:4"
    old = ModelConfig().to_dict()
    del old["aspect"]  # a config saved before the field existed
    assert ModelConfig.from_dict(old).aspect == "1:1" and ModelConfig.from_dict(old).base_size == (4, 4)
    for bad in ("5:4", "3/4", 34, None):
        with pytest.raises(ValueError, match="ModelConfig.aspect must be one of 1:1, 3:4"):
            ModelConfig(aspect=bad)


def test_square_parameter_counts_unchanged_and_non_square_differ_only_in_the_dense_layers():
    with torch.device("meta"):
        square_g, square_d = Generator(ModelConfig()), Discriminator(ModelConfig())
        assert count_parameters(square_g) == 23_079_115 and count_parameters(square_d) == 23_087_249
        for name in NON_SQUARE:
            cfg = ModelConfig(aspect=name)
            w0, h0 = cfg.base_size
            fewer = 16 - w0 * h0  # base positions the dense layers no longer connect
            # G: latent 512 -> 512 channels per position; D: 512 channels per position -> nf(0) = 512
            assert count_parameters(Generator(cfg)) == 23_079_115 - fewer * 512 * 512
            assert count_parameters(Discriminator(cfg)) == 23_087_249 - fewer * 512 * 512


@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_generator_and_discriminator_shapes_at_every_level(aspect, one_torch_thread):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", 16, aspect=aspect)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(4, cfg.latent_size)
    for res in cfg.resolutions:
        width, height = cfg.level_size(res)
        for alpha in ([1.0] if res == 4 else [0.0, 0.5, 1.0]):
            images = G(z, res, alpha)
            assert images.shape == (4, 3, height, width)
            scores = D(images, res, alpha)
            assert scores.shape == (4,) and torch.isfinite(scores).all()
    if aspect != "1:1":  # the transposed shape is another model's input
        with pytest.raises(ValueError, match="Discriminator expects images"):
            D(torch.zeros(4, 3, 16 * cfg.base_size[0] // 4, 16 * cfg.base_size[1] // 4), 16)


def test_non_square_fade_is_the_lerp_of_the_old_and_new_paths(one_torch_thread):
    torch.manual_seed(1)
    cfg = ModelConfig.preset("small", 16, aspect="3:4")
    G = Generator(cfg)
    z = torch.randn(2, cfg.latent_size)
    old, new = G(z, 16, 0.0), G(z, 16, 1.0)
    # alpha 0 is the 8-level image (6x8) upsampled to 12x16
    assert torch.allclose(old, torch.nn.functional.interpolate(G(z, 8, 1.0), scale_factor=2.0), atol=1e-6)
    assert torch.allclose(G(z, 16, 0.25), torch.lerp(old, new, 0.25), atol=1e-5)


@pytest.mark.parametrize("aspect", ["3:4", "4:1"])
def test_full_d_loss_with_penalty_and_minibatch_stddev_on_non_square(aspect, one_torch_thread):
    torch.manual_seed(2)
    cfg = ModelConfig.preset("small", 8, aspect=aspect)
    G, D = Generator(cfg), Discriminator(cfg)
    width, height = cfg.level_size(8)
    real = torch.rand(4, 3, height, width) * 2 - 1
    fake = G(torch.randn(4, cfg.latent_size), 8, 0.5)
    loss, parts = discriminator_loss(D, real, fake, 8, 0.5)
    loss.backward()
    assert parts["gradient_penalty"] > 0 and torch.isfinite(loss)
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # minibatch stddev: one image changed changes every score of its group (batch 4, group 4)
    base = D(real, 8, 1.0)
    changed = real.clone()
    changed[0] += 0.5
    assert not torch.allclose(D(changed, 8, 1.0)[1:], base[1:])
