"""Class-conditional models as the release builds them (issue 20, the model part): ModelConfig's
class names, G's label input, D's class logits, the AC-GAN loss terms and the training step."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from progan.generator.export import export_generator
from progan.generator.loading import load_generator
from progan.nets.config import ModelConfig
from progan.train.ema import make_ema
from progan.generator.safetensors_file import write_safetensors
from progan.train.gradsync import GradientSync, LossScale
from progan.train.losses import class_loss, discriminator_loss, generator_loss, gradient_penalty
from progan.nets.networks import Discriminator, Generator, count_parameters
from progan.train.step import StepModels, StepSettings, StepStats, class_weights, micro_slices, run_step, step_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES2 = ("dark", "bright")
NAMES10 = tuple(f"class{i}" for i in range(10))


def cond(resolution: int, names=NAMES2, aspect: str = "1:1") -> ModelConfig:
    return ModelConfig.preset("small", resolution, aspect=aspect, class_names=names)


def nets(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return Generator(cfg), Discriminator(cfg)


# --- ModelConfig ------------------------------------------------------------------------------

def test_unconditional_config_serialises_exactly_as_before():
    # The JSON of the small preset before class_names existed, written out by hand.
    before = ('{"aspect": "1:1", "fmap_base": 256, "fmap_max": 64, "fmap_min": 8, "latent_size": 64, '
              '"leaky_slope": 0.2, "mbstd_group_size": 4, "num_channels": 3, "resolution": 32}')
    cfg = ModelConfig.preset("small", 32)
    assert cfg.to_json() == before and "class_names" not in cfg.to_dict()
    assert cfg.label_size == 0 and not cfg.conditional and cfg.class_names == ()
    assert ModelConfig.from_json(before) == cfg  # an old file loads as unconditional


def test_conditional_config_round_trips_and_is_hashable():
    cfg = cond(16, NAMES10)
    assert cfg.label_size == 10 and cfg.conditional
    data = cfg.to_dict()
    assert data["class_names"] == list(NAMES10)  # plain JSON types
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(data))) == cfg
    assert isinstance(ModelConfig.from_dict(data).class_names, tuple)
    assert hash(cfg) == hash(ModelConfig.from_dict(data))
    assert dataclasses.replace(ModelConfig.preset("small", 16), class_names=list(NAMES10)) == cfg


@pytest.mark.parametrize("names,match", [
    (("cat",), "at least 2 classes"),
    (("cat", "dog", "cat"), r"distinct; \['cat'\] appear"),
    (("cat", ""), "non-empty class names"),
    (("cat", "  "), "non-empty class names"),
    (("cat", 3), "non-empty class names"),
    ("cat,dog", "non-empty class names"),
])
def test_bad_class_names_are_one_line_errors(names, match):
    with pytest.raises(ValueError, match=match) as info:
        ModelConfig(resolution=8, class_names=names)
    assert "ModelConfig.class_names" in str(info.value) and "\n" not in str(info.value)


def test_conditional_generator_round_trips_through_pt_and_safetensors_exports(tmp_path):
    cfg = cond(8, ("a", "b", "c"))
    G, _ = nets(cfg)
    state = {"model_config": cfg.to_dict(), "resolution": 8, "alpha": 0.25, "images_shown": 1234,
             "generator_ema": G.state_dict()}
    z, labels = torch.randn(4, cfg.latent_size), torch.tensor([0, 1, 2, 1])
    expected = G(z, 8, 0.25, labels=labels)
    for path in (export_generator(state, tmp_path / "g.pt"), write_safetensors(state, tmp_path / "g.safetensors")):
        loaded, info = load_generator(path)
        assert info.model_config == cfg and info.model_config.class_names == ("a", "b", "c")
        torch.testing.assert_close(loaded(z, 8, 0.25, labels=labels), expected, rtol=0, atol=0)


def test_conditional_config_round_trips_through_a_training_config_and_a_weights_only_load(tmp_path):
    from progan.train.config import TrainConfig, preset_defaults

    kwargs = preset_defaults("small", 8)
    config = TrainConfig(data="x.lmdb", out="run", **{**kwargs, "model": cond(8, NAMES10)})
    assert TrainConfig.from_json(config.to_json()) == config
    torch.save({"config": config.to_dict(), "model_config": config.model.to_dict()}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)  # as checkpoints are read
    assert ModelConfig.from_dict(loaded["model_config"]) == config.model
    assert TrainConfig.from_dict(loaded["config"]) == config


# --- parameter counts: the release's formula, written out ------------------------------------

def release_counts(fmap_base, fmap_max, fmap_min, latent, resolution, label_size, base=(4, 4), channels=3):
    """(G, D) parameter counts of the release's G_paper / D_paper, layer by layer (PAPER.md's
    table): equalized-LR weights plus biases; G's 4x4 dense layer has one bias per channel."""
    def nf(stage):  # release: min(fmap_base / 2**stage, fmap_max), here with the fmap_min floor
        return max(fmap_min, int(min(fmap_base / 2.0**stage, fmap_max)))

    positions = base[0] * base[1]
    levels = int(np.log2(resolution))  # 4x4 is level 2
    c4 = nf(1)
    g = (latent + label_size) * c4 * positions + c4     # dense (no bias) + per-channel bias
    g += 9 * c4 * c4 + c4 + c4 * channels + channels     # conv 3x3, toRGB
    d = (c4 + 1) * 9 * c4 + c4                           # conv over features + mbstd channel
    d += c4 * positions * nf(0) + nf(0)                  # dense0
    d += nf(0) * (1 + label_size) + (1 + label_size)     # dense1: score + class logits
    d += channels * c4 + c4                              # fromRGB at 4x4
    for level in range(3, levels + 1):
        cin, cout = nf(level - 2), nf(level - 1)
        g += 9 * cin * cout + cout + 9 * cout * cout + cout + cout * channels + channels
        d += channels * cout + cout + 9 * cout * cout + cout + 9 * cout * cin + cin
    return g, d


def test_the_written_out_formula_gives_the_papers_counts():
    assert release_counts(8192, 512, 0, 512, 1024, 0) == (23_079_115, 23_087_249)


@pytest.mark.parametrize("preset,resolution,aspect", [("paper", 1024, "1:1"), ("paper", 64, "3:4"),
                                                      ("small", 32, "1:1"), ("small", 16, "2:1")])
@pytest.mark.parametrize("k", [0, 2, 10])
def test_parameter_counts_equal_the_release_formula(preset, resolution, aspect, k):
    names = tuple(f"c{i}" for i in range(k))
    cfg = ModelConfig.preset(preset, resolution, aspect=aspect, class_names=names)
    with torch.device("meta"):
        G, D = Generator(cfg), Discriminator(cfg)
    base = {"1:1": (4, 4), "3:4": (3, 4), "2:1": (4, 2)}[aspect]
    expected = release_counts(cfg.fmap_base, cfg.fmap_max, cfg.fmap_min, cfg.latent_size, resolution, k, base)
    assert (count_parameters(G), count_parameters(D)) == expected
    plain = release_counts(cfg.fmap_base, cfg.fmap_max, cfg.fmap_min, cfg.latent_size, resolution, 0, base)
    c4, hidden = cfg.channels(4), cfg.stage_channels(0)
    assert expected[0] - plain[0] == k * c4 * base[0] * base[1]  # G: the dense layer's new inputs
    assert expected[1] - plain[1] == k * (hidden + 1)              # D: the new outputs, weights and biases


def test_conditional_models_keep_every_name_and_only_grow_the_two_dense_layers():
    plain, conditional = nets(ModelConfig.preset("small", 16)), nets(cond(16, NAMES10))
    grown = {"blocks.4.dense.weight", "blocks.4.dense1.weight", "blocks.4.dense1.bias"}
    for a, b in zip(plain, conditional):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)  # same names in the same order
        assert {k for k in sa if sa[k].shape != sb[k].shape} == grown & set(sa)


# --- generator -------------------------------------------------------------------------------

def test_generator_concatenates_onehot_labels_before_the_first_pixelnorm():
    """The release's combo_in: an unconditional G whose latent is [z, onehot] is the same function."""
    cfg = cond(16, NAMES10)
    G, _ = nets(cfg)
    twin = Generator(dataclasses.replace(cfg, class_names=(), latent_size=cfg.latent_size + 10))
    twin.load_state_dict(G.state_dict())  # same shapes: dense from latent + K inputs, fan-in latent + K
    z, labels = torch.randn(6, cfg.latent_size), torch.tensor([0, 3, 9, 3, 5, 1])
    combo = torch.cat([z, F.one_hot(labels, 10).float()], dim=1)
    for res, alpha in [(4, 1.0), (8, 0.4), (16, 1.0)]:
        torch.testing.assert_close(G(z, res, alpha, labels=labels), twin(combo, res, alpha), rtol=0, atol=0)
    # One-hot rows are the same input as indices; soft rows work; the label changes the image.
    out = G(z, 16, labels=labels)
    torch.testing.assert_close(G(z, 16, labels=F.one_hot(labels, 10).double()), out, rtol=0, atol=0)
    assert G(z, 16, labels=torch.full((6, 10), 0.1)).shape == out.shape
    changed = (G(z, 16, labels=(labels + 1) % 10) - out).abs().flatten(1).amax(dim=1)
    assert (changed > 1e-3).all()  # every sample's image depends on its label


@pytest.mark.parametrize("aspect,res,alpha", [("1:1", 4, 1.0), ("1:1", 8, 0.5), ("3:4", 16, 0.3),
                                              ("2:1", 8, 1.0), ("1:4", 16, 1.0)])
def test_conditional_shapes_at_resolutions_fades_and_shapes(aspect, res, alpha):
    cfg = cond(16, ("a", "b", "c"), aspect=aspect)
    G, D = nets(cfg)
    width, height = cfg.level_size(res)
    labels = torch.tensor([2, 0, 1, 1])
    images = G(torch.randn(4, cfg.latent_size), res, alpha, labels=labels)
    assert images.shape == (4, 3, height, width)
    scores = D(images, res, alpha)
    both = D(images, res, alpha, with_class_logits=True)
    assert scores.shape == (4,) and both[0].shape == (4,) and both[1].shape == (4, 3)
    torch.testing.assert_close(both[0], scores, rtol=0, atol=0)


@pytest.mark.parametrize("labels,match", [
    (None, r"class-conditional \(3 classes: a, b, c\); pass labels"),
    (torch.tensor([0, 1, 3, 0]), r"class indices must be in 0\.\.2, got values from 0 to 3"),
    (torch.tensor([0, -1, 2, 0]), r"in 0\.\.2"),
    (torch.tensor([[0], [1], [2], [0]]), r"1-D integer tensor \[N\] = \[4\], got \[4, 1\]"),
    (torch.tensor([0, 1, 2]), r"\[N\] = \[4\], got \[3\]"),
    (torch.zeros(4, 2), r"rows \[N, K\] = \[4, 3\], got \[4, 2\]"),
    (torch.full((4, 3), 2.0), r"in \[0, 1\]"),
    (torch.full((4, 3), float("nan")), r"in \[0, 1\]"),
    (torch.ones(4, dtype=torch.bool), "got dtype torch.bool"),
    ([0, 1, 2, 0], "must be a tensor"),
    (torch.zeros(4, dtype=torch.long, device="meta"), "labels are on meta but the latents on cpu"),
])
def test_bad_labels_are_one_line_value_errors(labels, match):
    G, _ = nets(cond(8, ("a", "b", "c")))
    G.eval()  # sampling: values are checked too
    with pytest.raises(ValueError, match=match) as info:
        G(torch.randn(4, G.cfg.latent_size), 8, labels=labels)
    assert "\n" not in str(info.value)


def test_in_training_mode_shapes_are_checked_and_bad_values_still_fail():
    G, _ = nets(cond(8, ("a", "b", "c")))
    z = torch.randn(4, G.cfg.latent_size)
    with pytest.raises(ValueError, match=r"\[N\] = \[4\], got \[3\]"):
        G(z, 8, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="Class values must be smaller than num_classes"):
        G(z, 8, labels=torch.tensor([0, 1, 3, 0]))  # one_hot's own check, not ours (no host read)


def test_unconditional_models_refuse_labels_and_class_logits():
    G, D = nets(ModelConfig.preset("small", 8))
    with pytest.raises(ValueError, match="labels given to an unconditional model"):
        G(torch.randn(4, G.cfg.latent_size), 8, labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="with_class_logits needs a class-conditional model"):
        D(torch.randn(4, 3, 8, 8), 8, with_class_logits=True)


# --- discriminator ---------------------------------------------------------------------------

def test_class_logits_are_the_last_dense_layers_extra_outputs():
    """Independently: the logits are rows 1.. of dense1 (gain 1, fan-in hidden) on lrelu(dense0)."""
    cfg = cond(8, NAMES10)
    _, D = nets(cfg)
    block = D.blocks["4"]
    with torch.no_grad():
        block.dense1.bias.normal_()  # non-zero biases, so the test sees them
    seen = {}
    block.dense0.register_forward_hook(lambda mod, inp, out: seen.update(h=out.detach().double()))
    x = torch.randn(8, 3, 8, 8)
    scores, logits = D(x, 8, 0.7, with_class_logits=True)
    hidden = F.leaky_relu(seen["h"], 0.2)
    w, b = block.dense1.weight.detach().double(), block.dense1.bias.detach().double()
    out = hidden @ w.T / np.sqrt(w.shape[1]) + b  # [N, 11]
    # D computes in float32: compare at float32's tolerance (float64's failed on rounding alone)
    torch.testing.assert_close(scores, out[:, 0].float())
    torch.testing.assert_close(logits, out[:, 1:].float())


def test_segments_score_and_classify_stacked_minibatches_as_separate_calls():
    _, D = nets(cond(8))
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    scores, logits = D(torch.cat([a, b]), 8, segments=2, with_class_logits=True)
    sa, la = D(a, 8, with_class_logits=True)
    sb, lb = D(b, 8, with_class_logits=True)
    torch.testing.assert_close(scores, torch.cat([sa, sb]))
    torch.testing.assert_close(logits, torch.cat([la, lb]))


def score_only_twin(D: Discriminator) -> Discriminator:
    """An unconditional D with D's weights and only the score row of its last layer."""
    twin = Discriminator(dataclasses.replace(D.cfg, class_names=()))
    state = D.state_dict()
    state["blocks.4.dense1.weight"] = state["blocks.4.dense1.weight"][:1]
    state["blocks.4.dense1.bias"] = state["blocks.4.dense1.bias"][:1]
    twin.load_state_dict(state)
    return twin


def test_gradient_penalty_of_a_conditional_critic_is_the_formula_on_the_score_alone():
    _, D = nets(cond(8, NAMES10))
    twin = score_only_twin(D)
    real, fake, u = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8), torch.rand(8)
    penalty = gradient_penalty(D, real, fake, 8, 0.5, mix_weights=u)
    torch.testing.assert_close(penalty, gradient_penalty(twin, real, fake, 8, 0.5, mix_weights=u))
    torch.testing.assert_close(D(real, 8, 0.5), twin(real, 8, 0.5))
    penalty.backward()
    grad = D.blocks["4"].dense1.weight.grad
    assert grad[0].abs().sum() > 0 and torch.equal(grad[1:], torch.zeros_like(grad[1:]))  # no class rows


# --- losses ----------------------------------------------------------------------------------

def np_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean softmax cross entropy in float64; targets are class probabilities [N, K]."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(targets * log_softmax).sum(axis=1).mean())


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_loss_against_numpy(scale, dtype):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(16, 5, generator=gen) * scale).to(dtype)
    labels = torch.randint(0, 5, (16,), generator=gen)
    onehot = np.eye(5)[labels.numpy()]
    expected = np_cross_entropy(logits.double().numpy(), onehot)
    got = class_loss(logits, labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert class_loss(logits, F.one_hot(labels, 5).float()).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    soft = torch.softmax(torch.randn(16, 5, generator=gen), dim=1)
    assert class_loss(logits, soft).item() == pytest.approx(
        np_cross_entropy(logits.double().numpy(), soft.double().numpy()), rel=1e-6, abs=1e-5)
    assert class_loss(logits.double(), labels).dtype == torch.float64  # fp64 kept, as the other losses


@pytest.mark.parametrize("logits,labels,match", [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"logits must be \[N, K\]"),
    (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), r"class indices \(integer \[N\] = \[4\]\)"),
    (torch.zeros(4, 3), torch.zeros(4, 2), r"probabilities \[N, K\] = \[4, 3\]"),
    (torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool), "class indices"),
])
def test_class_loss_rejects_bad_shapes(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        class_loss(logits, labels)


@pytest.mark.parametrize("batch_real_fake", [True, False])
@pytest.mark.parametrize("cond_weight", [1.0, 0.25])
def test_discriminator_loss_adds_the_weighted_class_terms(batch_real_fake, cond_weight):
    _, D = nets(cond(8, ("a", "b", "c")))
    real, fake, u = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8), torch.rand(8)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1])
    kw = dict(mix_weights=u, batch_real_fake=batch_real_fake)
    plain, plain_parts = discriminator_loss(D, real, fake, 8, 1.0, **kw)
    loss, parts = discriminator_loss(D, real, fake, 8, 1.0, real_labels=labels, cond_weight=cond_weight, **kw)
    onehot = np.eye(3)[labels.numpy()]
    real_logits = D(real, 8, with_class_logits=True)[1].detach().numpy()  # separate minibatches
    fake_logits = D(fake, 8, with_class_logits=True)[1].detach().numpy()
    term = cond_weight * (np_cross_entropy(real_logits, onehot) + np_cross_entropy(fake_logits, onehot))
    assert parts["class_loss"].item() == pytest.approx(term, rel=1e-5)
    assert loss.item() == pytest.approx(plain.item() + term, rel=1e-5)
    assert not parts["class_loss"].requires_grad
    for name in plain_parts:
        torch.testing.assert_close(parts[name], plain_parts[name])
    assert "class_loss" not in plain_parts
    loss.backward()
    assert D.blocks["4"].dense1.weight.grad[1:].abs().sum() > 0  # the class head trains


def test_generator_loss_adds_the_weighted_class_term():
    scores, logits, labels = torch.randn(8), torch.randn(8, 4), torch.randint(0, 4, (8,))
    ce = np_cross_entropy(logits.numpy(), np.eye(4)[labels.numpy()])
    assert generator_loss(scores).item() == pytest.approx(-scores.mean().item())
    assert generator_loss(scores, logits, labels, cond_weight=0.5).item() == pytest.approx(
        -scores.mean().item() + 0.5 * ce, rel=1e-6)
    with pytest.raises(ValueError, match="fake_logits and labels together"):
        generator_loss(scores, logits)
    for bad in (-1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="cond_weight must be a finite number >= 0"):
            generator_loss(scores, logits, labels, cond_weight=bad)


# --- the step --------------------------------------------------------------------------------

def test_step_inputs_keep_the_unconditional_draws_and_add_labels_last():
    plain = step_inputs(7, 3, 16, 8, slice(None))
    with_labels = step_inputs(7, 3, 16, 8, slice(None), class_frequencies=[3, 1])
    for name in ("latents_d", "mix_weights", "flips", "latents_g"):
        assert torch.equal(getattr(plain, name), getattr(with_labels, name))
    assert plain.labels_g is None
    labels = with_labels.labels_g
    assert labels.dtype == torch.int64 and labels.shape == (16,) and set(labels.tolist()) <= {0, 1}
    # Reproducible from (seed, step) alone; a process's part is its slice of the global draw.
    torch.testing.assert_close(step_inputs(7, 3, 16, 8, slice(1, None, 2), class_frequencies=[3, 1]).labels_g,
                               labels[1::2], rtol=0, atol=0)
    assert torch.equal(step_inputs(7, 3, 16, 8, slice(None), class_frequencies=class_weights([3, 1])).labels_g, labels)
    # The release draws with the training set's class frequencies.
    big = step_inputs(0, 0, 20000, 1, slice(None), class_frequencies=(3, 1, 0)).labels_g
    assert (big == 2).sum() == 0 and abs((big == 0).float().mean().item() - 0.75) < 0.02


@pytest.mark.parametrize("bad", [[1.0], [1, -1], [0, 0], [1, float("nan")], [[1, 2]], "ab", [True, False]])
def test_bad_class_frequencies_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="class_frequencies must be the training set's count"):
        step_inputs(0, 0, 4, 8, slice(None), class_frequencies=bad)


def step_models(cfg: ModelConfig, seed: int = 0, lr: float = 1e-3, fused: bool = False) -> StepModels:
    G, D = nets(cfg, seed)
    kw = dict(lr=lr, betas=(0.0, 0.99), eps=1e-8, fused=fused or None)
    return StepModels(G, D, make_ema(G), torch.optim.Adam(G.parameters(), **kw), torch.optim.Adam(D.parameters(), **kw),
                      LossScale(False), LossScale(False), GradientSync(1))


def test_train_step_feeds_the_reals_labels_to_the_critics_fakes_per_micro_batch():
    cfg = cond(8, ("a", "b", "c"))
    m = step_models(cfg)
    seen = []
    m.G.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["labels"].clone()), with_kwargs=True)
    reals = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    real_labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2])
    inputs = step_inputs(0, 0, 8, cfg.latent_size, slice(None), class_frequencies=[1, 1, 1])
    stats = StepStats("cpu")
    micro = micro_slices(8, 4)
    run_step(m, StepSettings(mirror=True), reals, inputs, 8, 1.0, micro, stats, real_labels=real_labels)
    assert len(micro) == 2 and len(seen) == 4
    for got, part in zip(seen[:2], micro):  # D step: the reals' labels, strided like the images
        assert torch.equal(got, real_labels[part])
    for got, part in zip(seen[2:], micro):  # G step: the drawn labels
        assert torch.equal(got, inputs.labels_g[part])
    assert (stats.class_sums > 0).all() and torch.isfinite(stats.sums).all()


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_conditional_steps_read_nothing_to_the_host(monkeypatch, precision):
    """As the unconditional step (tests/test_step.py): no value goes to the host, so a step on a
    GPU never waits; the labels are neither checked nor counted by reading them."""
    cfg = cond(8, ("a", "b", "c"))
    m = step_models(cfg, fused=True)  # fused Adam skips non-finite steps on the device
    settings, stats = StepSettings(autocast_dtype=precision), StepStats("cpu")
    weights = class_weights([5, 3, 2])  # checked once, outside the steps
    reals = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    real_labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2])
    run_step(m, settings, reals, step_inputs(0, 0, 8, cfg.latent_size, slice(None), class_frequencies=weights),
               8, 0.5, micro_slices(8, 4), stats, real_labels=real_labels)  # builds the optimizer state
    for name in ("item", "__bool__", "tolist", "numpy", "__float__", "__int__"):
        def trap(*args, _name=name, **kwargs):
            raise AssertionError(f"Tensor.{_name} called inside a conditional training step")
        monkeypatch.setattr(torch.Tensor, name, trap)
    for step in (1, 2):
        inputs = step_inputs(0, step, 8, cfg.latent_size, slice(None), class_frequencies=weights)
        run_step(m, settings, reals, inputs, 8, 0.5, micro_slices(8, 4), stats, real_labels=real_labels)
    monkeypatch.undo()
    assert stats.steps == 3 and torch.isfinite(stats.sums).all() and torch.isfinite(stats.class_sums).all()
    assert stats.skipped.sum() == 0 and (stats.class_sums > 0).all()


def test_train_step_refuses_labels_it_cannot_use():
    cfg = cond(8)
    m = step_models(cfg)
    reals = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    plain_inputs = step_inputs(0, 0, 4, cfg.latent_size, slice(None))
    with pytest.raises(ValueError, match=r"inputs\.labels_g is None"):
        run_step(m, StepSettings(), reals, plain_inputs, 8, 1.0, [slice(None)], StepStats("cpu"),
                   real_labels=torch.zeros(4, dtype=torch.long))
    inputs = step_inputs(0, 0, 4, cfg.latent_size, slice(None), class_frequencies=[1, 1])
    with pytest.raises(ValueError, match=r"real_labels must be class indices \[n\] = \[4\]"):
        run_step(m, StepSettings(), reals, inputs, 8, 1.0, [slice(None)], StepStats("cpu"),
                   real_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="this model is class-conditional"):  # no labels for a conditional G
        run_step(m, StepSettings(), reals, plain_inputs, 8, 1.0, [slice(None)], StepStats("cpu"))


def test_unconditional_step_leaves_the_class_sums_at_zero():
    cfg = ModelConfig.preset("small", 8)
    m = step_models(cfg)
    stats = StepStats("cpu")
    run_step(m, StepSettings(), torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
               step_inputs(0, 0, 4, cfg.latent_size, slice(None)), 8, 1.0, [slice(None)], stats)
    assert stats.sums.abs().sum() > 0 and torch.equal(stats.class_sums, torch.zeros(2))
    assert StepStats.NAMES == ("loss_d", "wasserstein", "gradient_penalty", "score_real", "score_fake", "loss_g")


def toy_reals(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: dark 8x8 images, class 1: bright ones, with noise and a random stripe each."""
    labels = torch.randint(0, 2, (n,), generator=gen)
    level = torch.where(labels == 1, 190.0, 60.0).view(n, 1, 1, 1)
    images = level + 25 * torch.randn(n, 3, 8, 8, generator=gen)
    return images.clamp(0, 255).round().to(torch.uint8), labels


def test_training_steps_teach_the_critic_the_classes_of_reals():
    cfg = cond(8)
    m = step_models(cfg, seed=1, lr=1e-3)  # the paper's learning rate
    settings, stats, batch = StepSettings(), StepStats("cpu"), 16
    gen = torch.Generator().manual_seed(2)
    test_images, test_labels = toy_reals(256, gen)
    x = test_images.float() / 127.5 - 1

    def accuracy() -> float:
        with torch.no_grad():
            return (m.D(x, 8, with_class_logits=True)[1].argmax(1) == test_labels).float().mean().item()

    seen = [accuracy()]
    for step in range(40):
        reals, labels = toy_reals(batch, gen)
        inputs = step_inputs(0, step, batch, cfg.latent_size, slice(None), class_frequencies=[1, 1])
        run_step(m, settings, reals, inputs, 8, 1.0, [slice(None)], stats, real_labels=labels)
        if step in (29, 39):
            seen.append(accuracy())
    assert torch.isfinite(stats.sums).all() and stats.class_sums[0] > 0
    assert seen[0] < 0.7 and min(seen[1:]) > 0.9, seen  # chance is 0.5
