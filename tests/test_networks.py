"""ModelConfig, Generator and Discriminator: counts, shapes, fade semantics, determinism."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from progan import Discriminator, Generator, ModelConfig
from progan.nets.networks import count_parameters


def small(resolution: int) -> ModelConfig:
    return ModelConfig.preset("small", resolution)


# --- ModelConfig ------------------------------------------------------------------------------

def test_paper_channels_and_resolutions():
    cfg = ModelConfig()
    assert cfg.resolutions == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert [cfg.channels(r) for r in cfg.resolutions] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert (cfg.latent_size, cfg.fmap_base, cfg.fmap_max, cfg.mbstd_group_size) == (512, 8192, 512, 4)
    assert ModelConfig(resolution=4).resolutions == [4]


def test_small_preset_is_narrower_with_the_same_structure():
    cfg = ModelConfig.preset("small", 32)
    assert cfg.resolution == 32 and cfg.latent_size < 512 and cfg.fmap_max < 512
    assert ModelConfig.preset("paper", 256) == ModelConfig(resolution=256)
    with pytest.raises(ValueError, match="unknown ModelConfig preset 'huge'"):
        ModelConfig.preset("huge", 32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(resolution=48), "power of two in 4..1024"),
    (dict(resolution=2048), "power of two in 4..1024"),
    (dict(resolution=2), "power of two in 4..1024"),
    (dict(resolution=64.0), "must be an int"),
    (dict(num_channels=0), "num_channels must be >= 1"),
    (dict(latent_size=True), "must be an int"),
    (dict(mbstd_group_size=-1), "mbstd_group_size"),
    (dict(leaky_slope=1.5), "leaky_slope"),
    (dict(fmap_base=256), "leaves 0 channels at 1024x1024"),
])
def test_config_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    cfg = ModelConfig(resolution=128, num_channels=1, latent_size=64, fmap_base=1024, fmap_max=64,
                      mbstd_group_size=2, leaky_slope=0.1)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ModelConfig.from_dict({"resolution": 64}) == ModelConfig(resolution=64)
    assert "class_names" not in cfg.to_dict() and cfg.label_size == 0  # unconditional: the dict as before
    with pytest.raises(ValueError, match=r"unknown keys \['fmap_floor'\]"):
        ModelConfig.from_dict({"resolution": 64, "fmap_floor": 1})
    with pytest.raises(ValueError, match="must be a power of two"):
        ModelConfig.from_json('{"resolution": 100}')


def test_config_is_frozen_and_replace_revalidates():
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.resolution = 64
    assert dataclasses.replace(cfg, resolution=64).resolutions[-1] == 64
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, resolution=63)


# --- parameter counts and shapes -------------------------------------------------------------

def test_parameter_counts_match_the_paper_code_at_1024():
    with torch.device("meta"):  # counts only: no memory, no init cost
        G, D = Generator(ModelConfig()), Discriminator(ModelConfig())
    assert count_parameters(G) == 23_079_115
    assert count_parameters(D) == 23_087_249


def test_architecture_details_the_counts_imply():
    with torch.device("meta"):
        G, D = Generator(ModelConfig()), Discriminator(ModelConfig())
    first = G.blocks["4"]
    assert first.dense.weight.shape == (512 * 16, 512) and first.dense.bias is None
    assert first.bias.shape == (512,)  # one bias per channel
    assert D.blocks["4"].conv.weight.shape == (512, 513, 3, 3)  # + minibatch stddev channel
    assert D.blocks["4"].dense0.weight.shape == (512, 512 * 16)
    assert D.blocks["4"].dense1.weight.shape == (1, 512) and D.blocks["4"].dense1.bias.shape == (1,)  # score only
    assert G.to_rgb["1024"].weight.shape == (3, 16, 1, 1)
    assert D.from_rgb["1024"].conv.weight.shape == (16, 3, 1, 1)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_shapes_at_every_resolution_paper_widths_on_meta(alpha):
    cfg = ModelConfig()
    with torch.device("meta"):
        G, D = Generator(cfg), Discriminator(cfg)
        z = torch.randn(4, 512)
        for res in cfg.resolutions:
            a = 1.0 if res == 4 else alpha
            x = G(z, res, a)
            assert x.shape == (4, 3, res, res)
            assert D(x, res, a).shape == (4,)


@pytest.mark.slow
def test_shapes_and_values_at_every_resolution_small_preset():
    torch.manual_seed(0)
    cfg = small(1024)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(2, cfg.latent_size)
    with torch.no_grad():
        for res in cfg.resolutions:
            for alpha in ([1.0] if res == 4 else [0.0, 1.0]):
                x = G(z, res, alpha)
                assert x.shape == (2, 3, res, res) and torch.isfinite(x).all()
                s = D(x, res, alpha)
                assert s.shape == (2,) and torch.isfinite(s).all()


def test_generator_output_is_linear_not_tanh():
    torch.manual_seed(0)
    G = Generator(small(8))
    with torch.no_grad():
        G.to_rgb["8"].weight.mul_(50)
    x = G(torch.randn(4, G.latent_size), 8)
    assert x.abs().max() > 3


# --- fade-in semantics -------------------------------------------------------------------------

@pytest.mark.parametrize("res", [8, 16, 32])
def test_generator_alpha_zero_is_the_upsampled_previous_resolution(res):
    torch.manual_seed(0)
    G = Generator(small(32))
    z = torch.randn(4, G.latent_size)
    with torch.no_grad():
        previous = G(z, res // 2, 1.0)
        expected = previous.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        assert torch.equal(G(z, res, 0.0), expected)
        new = G(z, res, 1.0)
        torch.testing.assert_close(G(z, res, 0.3), expected + 0.3 * (new - expected))


@pytest.mark.parametrize("res", [8, 16, 32])
def test_discriminator_alpha_zero_sees_the_downsampled_image(res):
    torch.manual_seed(0)
    D = Discriminator(small(32))
    x = torch.randn(4, 3, res, res)
    pooled = F.avg_pool2d(x, 2)
    with torch.no_grad():
        assert torch.equal(D(x, res, 0.0), D(pooled, res // 2, 1.0))
        # mid-fade: the blend happens after block R, before the rest of the network
        old = D.from_rgb[str(res // 2)](pooled)
        new = D.blocks[str(res)](D.from_rgb[str(res)](x))
        h = old + 0.3 * (new - old)
        r = res // 2
        while r > 4:
            h = D.blocks[str(r)](h)
            r //= 2
        torch.testing.assert_close(D(x, res, 0.3), D.blocks["4"](h))


def grads_of(module):
    return [p.grad for p in module.parameters()]


def test_alpha_one_gives_the_old_path_no_gradient_and_mid_fade_does():
    torch.manual_seed(0)
    cfg = small(16)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(4, cfg.latent_size)
    for alpha, expect_grad in ((1.0, False), (0.5, True)):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        D(G(z, 16, alpha), 16, alpha).sum().backward()
        for old in (G.to_rgb["8"], D.from_rgb["8"]):
            got = [g is not None and bool(g.abs().sum() > 0) for g in grads_of(old)]
            assert all(got) if expect_grad else not any(got)
        # toRGB/fromRGB of resolutions other than R and R/2 are not used at all
        assert all(g is None for g in grads_of(G.to_rgb["4"]) + grads_of(D.from_rgb["4"]))


def test_unused_larger_blocks_get_no_gradient():
    torch.manual_seed(0)
    cfg = small(32)
    G, D = Generator(cfg), Discriminator(cfg)
    D(G(torch.randn(4, cfg.latent_size), 8, 0.5), 8, 0.5).sum().backward()
    for net in (G, D):
        for res in ("16", "32"):
            assert all(p.grad is None for p in net.blocks[res].parameters())


# --- validation -----------------------------------------------------------------------------------

def test_forward_validates_resolution_alpha_and_shapes():
    cfg = small(16)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(4, cfg.latent_size)
    with pytest.raises(ValueError, match=r"resolution must be one of \[4, 8, 16\], got 32"):
        G(z, 32)
    with pytest.raises(ValueError, match="resolution must be one of"):
        D(torch.randn(4, 3, 12, 12), 12)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
            G(z, 8, bad)
    with pytest.raises(ValueError, match="no smaller resolution to fade from"):
        G(z, 4, 0.5)
    with pytest.raises(ValueError, match=r"latents \[N, 64\]"):
        G(torch.randn(4, 65), 8)
    with pytest.raises(ValueError, match=r"images \[N, 3, 8, 8\]"):
        D(torch.randn(4, 3, 16, 16), 8)
    with pytest.raises(ValueError, match="not divisible by the group size 4"):
        D(torch.randn(6, 3, 8, 8), 8)
    assert D(torch.randn(2, 3, 8, 8), 8).shape == (2,)  # smaller than the group: one group
    assert G(z, 8, torch.tensor(0.25)).shape == (4, 3, 8, 8)  # 0-dim tensor alpha accepted


# --- determinism, precision, memory format -------------------------------------------------------

def test_same_seed_same_weights_and_outputs():
    def run():
        torch.manual_seed(123)
        cfg = small(16)
        G, D = Generator(cfg), Discriminator(cfg)
        z = torch.randn(4, cfg.latent_size)
        x = G(z, 16, 0.7)
        return G.state_dict(), D.state_dict(), x, D(x, 16, 0.7)
    a, b = run(), run()
    for sa, sb in ((a[0], b[0]), (a[1], b[1])):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    torch.manual_seed(124)
    assert not torch.equal(Generator(small(16)).state_dict()["blocks.4.dense.weight"],
                           a[0]["blocks.4.dense.weight"])


@pytest.mark.parametrize("res", [8, 16])  # unfused and fused resampling
def test_bf16_autocast_runs_close_to_fp32(res):
    torch.manual_seed(0)
    cfg = small(16)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(8, cfg.latent_size)
    with torch.no_grad():
        x32 = G(z, res, 0.5)
        s32 = D(x32, res, 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x16 = G(z, res, 0.5)
            s16 = D(x32, res, 0.5)
    assert x16.dtype == torch.bfloat16
    assert (x16.float() - x32).abs().mean() < 0.05 * x32.abs().mean()
    assert (s16.float() - s32).abs().max() < 0.05 * s32.abs().max() + 0.05


def test_discriminator_segments_score_stacked_minibatches_as_separate_calls():
    torch.manual_seed(0)
    D = Discriminator(small(16))
    real, fake = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16) * 0.5
    with torch.no_grad():
        stacked = D(torch.cat([real, fake]), 16, 0.5, segments=2)
        torch.testing.assert_close(stacked, torch.cat([D(real, 16, 0.5), D(fake, 16, 0.5)]),
                                   rtol=1e-5, atol=1e-5)
        # without segments the groups would straddle reals and fakes
        assert not torch.allclose(D(torch.cat([real, fake]), 16, 0.5), stacked, rtol=1e-5, atol=1e-5)


def test_memory_formats_do_not_change_results():
    # Blocks from CHANNELS_LAST_MIN_RES up run NHWC; forcing every block to NCHW must agree.
    torch.manual_seed(0)
    cfg = small(64)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(4, cfg.latent_size)
    with torch.no_grad():
        x = G(z, 64, 0.5)
        s = D(x, 64, 0.5)
        blocks = [b for group in (G.blocks, D.blocks, D.from_rgb) for b in group.values()
                  if hasattr(b, "memory_format")]
        assert any(b.memory_format == torch.channels_last for b in blocks)  # else nothing is compared
        for block in blocks:
            block.memory_format = torch.contiguous_format
        torch.testing.assert_close(G(z, 64, 0.5), x, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(D(x.contiguous(), 64, 0.5), s, rtol=1e-4, atol=1e-4)
