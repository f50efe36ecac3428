"""The training step (progan.train.step) and what it stands on: no host reads in steady state, skips
decided on the device, the fp16 loss scale on the device, the EMA over the blocks in use,
micro-batches that keep D's minibatch-stddev statistic, and per-device kernel choices."""

from __future__ import annotations

import copy

import pytest
import torch

from progan.nets.config import ModelConfig
from progan.train.device import KERNEL_CHOICES, KernelChoices, apply_kernel_choices, kernel_choices
from progan.train.ema import make_ema, update_ema, update_ema_in_use
from progan.train.microbatch import candidates, largest_fitting, micro_batch_problem
from progan.train.gradsync import LaggedFlags, LossScale, step_unless_non_finite
from progan.nets.networks import Discriminator, Generator
from progan.train.schedule import state_at
from test_training import make_trainer

HOST_READS = ("item", "__bool__", "tolist", "numpy", "cpu", "__float__", "__int__")


class HostRead(AssertionError):
    pass


class HostReadTrap:
    """While on, any of HOST_READS on a tensor raises HostRead (each is a sync on a GPU)."""

    def __init__(self, monkeypatch) -> None:
        self.on = False
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def guarded(tensor, *args, _name=name, _original=original, **kwargs):
                if self.on:
                    raise HostRead(f"Tensor.{_name} called inside a training step")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, guarded)

    def off_inside(self, fn):
        """fn with the trap off: reading the data order and decoding reals are host work by design."""
        def call(*args, **kwargs):
            was, self.on = self.on, False
            try:
                return fn(*args, **kwargs)
            finally:
                self.on = was
        return call


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_steady_state_steps_read_nothing_to_the_host(demo_lmdb, tmp_path, monkeypatch, precision):
    trainer = make_trainer(demo_lmdb, tmp_path / "run", "--mixed-precision", precision)
    trainer.images_shown = 100  # mid-fade into 8x8: both paths, the reals' fade and the penalty
    trainer._enter_state(state_at(trainer.config.schedule, trainer.images_shown))
    trainer.train_step([0.0, 0.0])  # the first step builds the optimizers' state
    before = trainer.step
    trap = HostReadTrap(monkeypatch)
    trainer.reals.next = trap.off_inside(trainer.reals.next)
    trap.on = True
    for _ in range(3):
        trainer.train_step([0.0, 0.0])
    with pytest.raises(HostRead):  # the trap is live: the tick's read of the skip counts is caught
        trainer.skipped_d
    trap.on = False
    assert trainer.step == before + 3 and trainer.skipped_d == 0 and trainer.skipped_g == 0
    assert torch.isfinite(trainer.stats.sums).all() and trainer.stats.sums.abs().sum() > 0


def test_fused_adam_skips_on_the_device_flag():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    for p in params:
        p.grad = torch.ones(5)
    step_unless_non_finite(opt, torch.zeros(1))
    after_one = [p.detach().clone() for p in params]
    steps = [opt.state[p]["step"].clone() for p in params]
    for p in params:
        p.grad = torch.full((5,), float("nan"))
    step_unless_non_finite(opt, torch.ones(1))
    assert all(torch.equal(a, p) for a, p in zip(after_one, params))  # nothing applied
    assert all(torch.equal(s, opt.state[p]["step"]) for s, p in zip(steps, params))  # count undone
    for p in params:
        p.grad = torch.ones(5)
    step_unless_non_finite(opt, torch.zeros(1))
    assert all(not torch.equal(a, p) for a, p in zip(after_one, params))
    assert all(float(opt.state[p]["step"]) == 2.0 for p in params)


def test_loss_scale_updates_on_the_device():
    scale = LossScale(True, init_scale=8.0, growth_interval=2)
    scale.update(torch.ones(1))
    assert scale.value() == 4.0
    scale.update(torch.zeros(1))
    assert scale.value() == 4.0
    scale.update(torch.zeros(1))
    assert scale.value() == 8.0 and scale.state_dict()["good_steps"] == 0
    for _ in range(5):
        scale.update(torch.ones(1))
    assert scale.value() == 1.0  # never below 1
    restored = LossScale(True)
    restored.load_state_dict({"enabled": True, "scale": 32.0, "good_steps": 1})
    restored.update(torch.zeros(1))
    assert restored.state_dict() == {"enabled": True, "scale": 32.0, "good_steps": 2}
    disabled = LossScale(False)
    disabled.update(torch.ones(1))
    assert disabled.scale == 1.0


def test_lagged_flags_return_the_previous_steps_sums():
    flags = LaggedFlags(torch.device("cpu"))
    assert flags.push(torch.tensor([1.0, 0.0])) == [0.0, 0.0]
    assert flags.push(torch.tensor([0.0, 2.0])) == [1.0, 0.0]
    assert flags.read() == [0.0, 2.0]


def _tiny_model(**kw) -> ModelConfig:
    return ModelConfig(resolution=32, latent_size=16, fmap_base=64, fmap_max=16, **kw)


def test_ema_over_the_blocks_in_use_equals_the_full_update():
    torch.manual_seed(0)
    G = Generator(_tiny_model())
    full, partial = make_ema(G), make_ema(G)
    for resolution in (4, 8, 16):
        for _ in range(2):  # "training": every parameter a step at this resolution can reach
            with torch.no_grad():
                for key, block in G.blocks.items():
                    if int(key) <= resolution:
                        for p in block.parameters():
                            p.add_(torch.randn_like(p) * 0.1)
                for p in G.to_rgb[str(resolution)].parameters():
                    p.add_(torch.randn_like(p) * 0.1)
            update_ema(full, G, beta=0.9)
            update_ema_in_use(partial, G, resolution, beta=0.9)
            for (name, a), b in zip(full.state_dict().items(), partial.state_dict().values()):
                assert torch.equal(a, b), name
    # the 32x32 block was never touched: its EMA copy still equals its initial weights
    assert all(torch.equal(a, b) for a, b in zip(partial.blocks["32"].parameters(), G.blocks["32"].parameters()))
    with pytest.raises(ValueError, match="beta"):
        update_ema_in_use(partial, G, 8, beta=1.5)


def test_micro_batches_smaller_than_the_stddev_group_are_refused():
    assert micro_batch_problem(4, 4, 4, "1024x1024") is None
    assert micro_batch_problem(8, 64, 4, "1024x1024") is None
    problem = micro_batch_problem(2, 4, 4, "1024x1024")  # 1024x1024 at batch 4, --max-batch-per-device 2
    assert "smaller than the minibatch-stddev group 4" in problem and "\n" not in problem
    assert "at 1024x1024" in problem
    assert micro_batch_problem(1, 2, 4, "512x512") is not None  # batch 2: groups of 2
    assert micro_batch_problem(2, 2, 4, "512x512") is None
    assert "not divisible" in micro_batch_problem(6, 12, 4, "8x8")
    assert micro_batch_problem(3, 12, 1, "8x8") is None  # no minibatch-stddev layer
    assert "at 6x8 is not divisible" in micro_batch_problem(6, 12, 4, "6x8")  # a 3:4 level names its own shape


def test_auto_micro_batch_is_the_largest_that_fits_and_keeps_whole_groups():
    assert candidates(24, 4) == [24, 12, 8, 4]
    assert largest_fitting(24, 4, lambda m: m <= 10) == 8
    assert largest_fitting(24, 4, lambda m: False) == 4
    tried = []
    largest_fitting(16, 4, lambda m: tried.append(m) or m <= 8)
    assert tried == [16, 8]  # largest first, stops at the first fit


def test_micro_batching_with_whole_groups_matches_the_whole_batch_in_d():
    """The claim behind the refusal: strided micro-batches that are multiples of the group give D
    the same minibatch-stddev statistic per sample as the whole batch; smaller ones do not."""
    torch.manual_seed(0)
    D = Discriminator(_tiny_model(mbstd_group_size=4))
    x = torch.randn(16, 3, 8, 8)
    whole = D(x, 8)
    for count, same in ((2, True), (4, True), (8, False)):  # micro-batches of 8, 4, 2
        parts = [slice(i, None, count) for i in range(count)]
        split = torch.empty_like(whole)
        for part in parts:
            split[part] = D(x[part], 8)
        assert torch.allclose(split, whole, atol=1e-5) == same, count


def test_setup_refuses_a_smaller_micro_batch_also_on_resume(demo_lmdb, tmp_path, capsys):
    from train import main

    base = ["--data", str(demo_lmdb), "--config", "small", "--resolution", "8", "--stable-kimg", "0.008",
            "--fade-kimg", "0.008", "--batch", "4:4,8:4", "--workers", "0"]
    assert main([*base, "--out", str(tmp_path / "a"), "--max-batch-per-device", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-batch-per-device 4 or more" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists()
    run = tmp_path / "b"
    assert main([*base, "--out", str(run), "--total-kimg", "0.008"]) == 0
    capsys.readouterr()
    config_before = (run / "config.json").read_bytes()
    assert main(["--out", str(run), "--data", str(demo_lmdb), "--resume", "auto", "--max-batch-per-device", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "smaller than the minibatch-stddev group 4" in err and len(err.splitlines()) == 1
    assert (run / "config.json").read_bytes() == config_before
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--out", str(tmp_path / "c"), "--max-batch-per-device", bad])
        assert exit_info.value.code == 2
        assert "--max-batch-per-device" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_auto_on_the_cpu_means_no_limit(demo_lmdb, tmp_path):
    trainer = make_trainer(demo_lmdb, tmp_path / "run", "--max-batch-per-device", "auto")
    assert trainer.config.max_batch_per_device == "auto" and trainer.micro_batch is None


def test_the_auto_trial_pass_leaves_weights_grads_and_rng_alone(demo_lmdb, tmp_path):
    trainer = make_trainer(demo_lmdb, tmp_path / "run")
    before = {k: v.clone() for k, v in {**trainer.G.state_dict(), **trainer.D.state_dict()}.items()}
    rng = torch.get_rng_state()
    trainer._trial_pass(trainer.state, 8)
    after = {**trainer.G.state_dict(), **trainer.D.state_dict()}
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(p.grad is None for p in [*trainer.G.parameters(), *trainer.D.parameters()])
    assert torch.equal(rng, torch.get_rng_state())


def test_kernel_choices_per_device_kind_keep_the_function():
    assert kernel_choices("cpu") == KERNEL_CHOICES["cpu"] and kernel_choices("mps") == KERNEL_CHOICES["cpu"]
    assert "provisional" in kernel_choices("cuda").source
    torch.manual_seed(0)
    cfg = _tiny_model()
    G, D = Generator(cfg), Discriminator(cfg)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    every = KernelChoices(fused_min_res=8, channels_last_min_res=4, source="test")
    apply_kernel_choices(G2, every)
    apply_kernel_choices(D2, every)
    assert G2.blocks["8"].conv0.fused and not G.blocks["8"].conv0.fused
    assert D2.blocks["8"].conv1.fused and D2.from_rgb["4"].memory_format == torch.channels_last
    z = torch.randn(4, 16)
    images = G(z, 32)
    torch.testing.assert_close(G2(z, 32), images, rtol=1e-3, atol=1e-4)  # rounding only
    torch.testing.assert_close(D2(images, 32), D(images, 32), rtol=1e-3, atol=1e-4)


def test_backends_autotune_and_tf32_flag():
    from train import build_parser
    from progan.train.device import configure_backends

    assert vars(build_parser().parse_args(["--no-tf32"]))["tf32"] is False
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.benchmark = cudnn.allow_tf32 = matmul.allow_tf32 = False
        configure_backends(torch.device("cpu"))
        assert not cudnn.benchmark  # the CPU is left alone
        configure_backends(torch.device("cuda"), tf32=True)
        assert cudnn.benchmark and cudnn.allow_tf32 and matmul.allow_tf32
        configure_backends(torch.device("cuda"), tf32=False)
        assert cudnn.benchmark and not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def _cuda_trainer(data, out, *extra):
    """A Trainer on the GPU (make_trainer pins the CPU)."""
    from accelerate import Accelerator

    from progan.train.setup import prepare_run
    from progan.train.loop import Trainer
    from test_training import TINY
    from train import build_parser

    args = vars(build_parser().parse_args(["--data", str(data), "--out", str(out), *TINY, *extra]))
    return Trainer(prepare_run(args).config, Accelerator(), log=lambda *a: None)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_cuda_steady_state_steps_do_not_synchronise(demo_lmdb, tmp_path, precision):
    trainer = _cuda_trainer(demo_lmdb, tmp_path / "run", "--mixed-precision", precision)
    assert trainer.device.type == "cuda" and torch.backends.cudnn.benchmark
    trainer.images_shown = 100  # mid-fade: both paths, the reals' fade, the penalty
    trainer._enter_state(state_at(trainer.config.schedule, trainer.images_shown))
    trainer.train_step([0.0, 0.0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step([0.0, 0.0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.skipped_d + trainer.skipped_g < 8 and torch.isfinite(trainer.stats.sums).all()


@pytest.mark.cuda
def test_cuda_auto_micro_batch_and_lagged_flags(demo_lmdb, tmp_path):
    trainer = _cuda_trainer(demo_lmdb, tmp_path / "run", "--max-batch-per-device", "auto")
    local = trainer.state.batch_size
    assert trainer.micro_batch is not None and local % trainer.micro_batch == 0
    assert trainer.micro_batch % min(trainer.config.model.mbstd_group_size, local) == 0
    flags = LaggedFlags(torch.device("cuda"))
    assert flags.push(torch.tensor([1.0, 0.0], device="cuda")) == [0.0, 0.0]
    assert flags.push(torch.tensor([0.0, 0.0], device="cuda")) == [1.0, 0.0]
