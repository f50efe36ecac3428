"""Training: exact resume (also after SIGTERM mid-fade), two processes == one, accumulation,
skipped non-finite steps, mixed precision, the fade of reals, and run-folder outputs."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, run_cli
from progan.generator import checkpoints
from progan.train.schedule import state_at
from progan.train.setup import prepare_run
from progan.train.loop import Trainer, _load_adam_state
from progan.train.reals import DataOrder, RealImages, fade_reals
from progan.train.step import step_inputs

# 16 images per step: 4x4 stable for 4 steps, fade into 8x8 over 8 steps, then stable 8x8.
TINY = ["--config", "small", "--resolution", "8", "--stable-kimg", "0.064", "--fade-kimg", "0.128",
        "--batch", "4:16,8:16", "--tick-kimg", "0.032", "--snapshot-ticks", "2", "--workers", "0"]


def train_cli(data, out, *extra, check=True, timeout=300):
    return run_cli(["train.py", "--data", str(data), "--out", str(out), *TINY, *extra], check=check, timeout=timeout)


def final_state(run_dir):
    return checkpoints.load_checkpoint(run_dir)


def assert_same_training_state(a, b):
    """Bit-for-bit: the networks and both optimizers' states."""
    assert a["images_shown"] == b["images_shown"]
    for key in ("generator", "discriminator", "generator_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    for key in ("optimizer_g", "optimizer_d"):
        for index, state in a[key]["state"].items():
            for field, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key]["state"][index][field]))


def sigterm_after_ticks(data, out, ticks: int, *extra):
    """Start `train.py` (TINY) and send SIGTERM once stats.jsonl has `ticks` lines; (process, output)."""
    cmd = [sys.executable, "train.py", "--data", str(data), "--out", str(out), *TINY, *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    stats = out / "stats.jsonl"
    while time.monotonic() < deadline and not (stats.exists() and stats.read_text().count("\n") >= ticks):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    return proc, output


# -- pieces ---------------------------------------------------------------------------------
def test_data_order_is_a_fresh_permutation_each_epoch():
    order = DataOrder(seed=3, num_images=10)
    first, second = order.indices(0, 10), order.indices(10, 10)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    across = order.indices(7, 6)  # crosses the epoch edge
    assert list(across) == list(first[7:]) + list(second[:3])
    assert np.array_equal(DataOrder(seed=3, num_images=10).indices(13, 4), second[3:7])


def test_step_inputs_are_slices_of_the_global_batch():
    whole = step_inputs(seed=5, step=9, global_batch=8, latent_size=4, part=slice(None))
    part = step_inputs(seed=5, step=9, global_batch=8, latent_size=4, part=slice(1, None, 2))
    assert torch.equal(part.latents_d, whole.latents_d[1::2]) and torch.equal(part.flips, whole.flips[1::2])
    other = step_inputs(seed=5, step=10, global_batch=8, latent_size=4, part=slice(None))
    assert not torch.equal(other.latents_g, whole.latents_g)


def test_fade_reals_blends_with_the_stored_lower_level(demo_lmdb):
    from progan.data.reader import MultiResolutionDataset

    hi = MultiResolutionDataset(str(demo_lmdb), 16).get_batch(np.arange(8)).float() / 127.5 - 1
    lo = MultiResolutionDataset(str(demo_lmdb), 8).get_batch(np.arange(8)).float() / 127.5 - 1
    assert torch.equal(fade_reals(hi, 1.0), hi)
    faded = fade_reals(hi, 0.0)
    # The stored 8x8 level is the 16x16 level box-averaged (then rounded to uint8), so at alpha 0
    # the reals are exactly the lower level, upsampled, up to half a uint8 step.
    assert (faded - F.interpolate(lo, scale_factor=2, mode="nearest")).abs().max() <= 0.5 / 127.5 + 1e-6
    torch.testing.assert_close(fade_reals(hi, 0.25), 0.75 * faded + 0.25 * hi)


# -- in-process trainer ---------------------------------------------------------------------
def make_trainer(data, out, *extra, resume=False):
    from accelerate import Accelerator
    from train import build_parser

    args = vars(build_parser().parse_args(["--data", str(data), "--out", str(out), *TINY, *extra]))
    plan = prepare_run(args)
    return Trainer(plan.config, Accelerator(cpu=True), resume=plan.resume, log=lambda *a: None)


def test_gradient_accumulation_matches_the_whole_batch(demo_lmdb, tmp_path):
    whole = make_trainer(demo_lmdb, tmp_path / "a")
    split = make_trainer(demo_lmdb, tmp_path / "b", "--max-batch-per-device", "4")
    for trainer in (whole, split):
        # Plain SGD makes the update linear in the gradient, so the comparison sees the
        # accumulated gradients themselves. (Adam's first step is lr * sign(g): a float-rounding
        # difference in a gradient that is ~0 would flip a sign and hide what is tested.)
        trainer.opt_g = torch.optim.SGD(trainer.G.parameters(), lr=0.01)
        trainer.opt_d = torch.optim.SGD(trainer.D.parameters(), lr=0.01)
        for _ in range(3):
            trainer.train_step([0.0, 0.0])
    for (name, a), b in zip(whole.G.state_dict().items(), split.G.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(whole.D.state_dict().items(), split.D.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_non_finite_steps_are_skipped_and_counted(demo_lmdb, tmp_path, monkeypatch):
    import progan.train.losses as losses

    trainer = make_trainer(demo_lmdb, tmp_path / "run")
    trainer.train_step([0.0, 0.0])
    before_d = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    before_g = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    real_critic_loss = losses.critic_loss
    monkeypatch.setattr(losses, "critic_loss", lambda r, f: real_critic_loss(r, f) * float("nan"))
    trainer.train_step([0.0, 0.0])
    assert trainer.skipped_d == 1 and trainer.skipped_g == 0
    assert all(torch.equal(v, trainer.D.state_dict()[k]) for k, v in before_d.items())  # D untouched
    assert any(not torch.equal(v, trainer.G.state_dict()[k]) for k, v in before_g.items())  # G stepped
    assert all(torch.isfinite(v).all() for v in trainer.D.state_dict().values())


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_give_finite_losses(demo_lmdb, tmp_path, precision):
    trainer = make_trainer(demo_lmdb, tmp_path / precision, "--mixed-precision", precision)
    trainer.images_shown = 100  # mid-fade into 8x8: both paths and the penalty are exercised
    trainer._enter_state(state_at(trainer.config.schedule, trainer.images_shown))
    for _ in range(3):
        trainer.train_step([0.0, 0.0])
    sums = trainer._tick_sums
    assert torch.isfinite(sums).all() and sums.abs().sum() > 0
    assert trainer.skipped_d + trainer.skipped_g < 6
    assert all(torch.isfinite(p).all() for p in trainer.G.parameters())


# -- whole runs through the CLI -------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(demo_lmdb, tmp_path_factory):
    """An uninterrupted run of 16 steps: 4x4, the whole fade into 8x8, 4 stable 8x8 steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train_cli(demo_lmdb, out, "--total-kimg", "0.256")
    return out


@pytest.mark.slow
def test_run_folder_outputs(reference_run):
    config = json.loads((reference_run / "config.json").read_text())
    assert config["model"]["resolution"] == 8 and config["schedule"]["fade_kimg"] == 0.128
    stats = [json.loads(line) for line in (reference_run / "stats.jsonl").read_text().splitlines()]
    assert {s["kind"] for s in stats} == {"tick"}
    assert [s["images_shown"] for s in stats] == list(range(32, 257, 32))
    # a tick reports the phase of the step that ended there (schedule.tick_state): the tick at 64,
    # on the edge of the fade, follows the step 48..63 in stable 4x4
    assert [(s["resolution"], s["phase"]) for s in stats][:3] == [(4, "stable"), (4, "stable"), (8, "fade")]
    assert stats[2]["alpha"] == 0.125  # the step 80..95: (80 - 64) / 128
    assert all(np.isfinite([s["loss_d"], s["loss_g"]]).all() for s in stats)
    grid = reference_run / "samples-latest.png"
    from PIL import Image

    with Image.open(grid) as image:
        assert image.size == (8 * 8, 8 * 8)  # 8x8 grid of 8x8 samples at the final resolution
    data = final_state(reference_run)
    assert data["resolution"] == 8 and data["alpha"] == 1.0 and data["counters"]["step"] == 16


@pytest.mark.slow
def test_resume_mid_fade_continues_exactly(demo_lmdb, reference_run, tmp_path):
    out = tmp_path / "run"
    train_cli(demo_lmdb, out, "--total-kimg", "0.128")  # stops 4 steps into the 8-step fade
    midway = final_state(out)
    # The stage of the step that ended at 128 (the 4th fade step, alpha 3/8), as a periodic
    # checkpoint and the grid samples-128 record it; it was the next step's (alpha 1/2).
    assert state_at_checkpoint(midway) == (8, 0.375)
    train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--resume", "auto")
    assert_same_training_state(final_state(out), final_state(reference_run))
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["images_shown"] for s in stats] == list(range(32, 257, 32))  # no gap, no duplicate


def state_at_checkpoint(data):
    return data["resolution"], data["alpha"]


@pytest.mark.slow
def test_sigterm_saves_and_resume_is_exact(demo_lmdb, reference_run, tmp_path):
    out = tmp_path / "run"
    proc, output = sigterm_after_ticks(demo_lmdb, out, 2, "--total-kimg", "0.256")
    saved = final_state(out)
    if saved["images_shown"] < 256:  # the signal landed before the end, as intended
        assert "stopped by SIGTERM" in output and proc.returncode == 3, output  # 3: pre-empted
    else:
        assert proc.returncode == 0, output
    train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--resume", "auto")
    assert_same_training_state(final_state(out), final_state(reference_run))


@pytest.mark.slow
def test_two_processes_match_one(demo_lmdb, reference_run, tmp_path):
    out = tmp_path / "run"
    # `--multi_gpu` starts the processes (torchrun); with no GPU, progan runs them on the CPU
    # over gloo. (accelerate's own `--cpu` flag starts only one process unless MPI is set up.)
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    proc = run_cli([*launch, "train.py", "--data", str(demo_lmdb), "--out", str(out), *TINY,
                    "--total-kimg", "0.256"], timeout=400, env={"OMP_NUM_THREADS": "1"})
    assert "2 replicas identical" in proc.stdout + proc.stderr
    two, one = final_state(out), final_state(reference_run)
    assert two["images_shown"] == one["images_shown"] and two["counters"]["step"] == one["counters"]["step"]
    for key in ("generator", "discriminator"):
        a = torch.cat([t.flatten() for t in two[key].values()])
        b = torch.cat([t.flatten() for t in one[key].values()])
        # The two runs sum the same gradients in another order, and Adam's early steps are about
        # lr * sign(g): a gradient that is ~0 up to rounding can flip its step (2 * lr = 0.004
        # here), and a flipped step changes later gradients a little. So count the weights that
        # moved apart by more than half a step: 3-5% for the same computation (seen here), nearly
        # all of them when the data, latents or minibatch-stddev groups differ.
        moved_apart = ((a - b).abs() > 1e-3).float().mean().item()
        assert moved_apart < 0.15, f"{key}: {moved_apart:.1%} of the weights differ"
        assert ((a - b).norm() / b.norm()).item() < 5e-3
    # The 2-process run continues on 1 process (not bit-for-bit, but from the same state).
    resumed = train_cli(demo_lmdb, out, "--total-kimg", "0.32", "--resume", "auto")
    assert "resuming a 2-process run on 1 processes" in resumed.stdout
    assert final_state(out)["images_shown"] == 320 and final_state(out)["counters"]["world_size"] == 1


# -- bad input ------------------------------------------------------------------------------
def run_main(capsys, *argv):
    from train import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    run_main.stdout = captured.out
    return code, captured.err.strip()


def test_setup_errors_are_one_line(demo_lmdb, tmp_path, capsys, monkeypatch):
    base = ["--data", demo_lmdb, "--out", tmp_path / "run", "--config", "small", "--dry-run"]
    code, err = run_main(capsys, *base, "--resolution", "32")
    assert code == 2 and "above the database's largest level 16x16" in err and len(err.splitlines()) == 1
    code, err = run_main(capsys, *base, "--batch", "4:6")
    assert code == 2 and "minibatch-stddev group size 4" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = run_main(capsys, *base, "--batch", "4:12")
    assert code == 2 and "per-device batch 6" in err
    code, err = run_main(capsys, *base, "--batch", "4:9")
    assert code == 2 and "does not divide over 2 processes" in err
    monkeypatch.delenv("WORLD_SIZE")
    code, err = run_main(capsys, "--data", tmp_path / "missing.lmdb", "--out", tmp_path / "r", "--dry-run")
    assert code == 2 and "missing.lmdb" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, *base, "--mixed-precision", "fp8")
    assert exit_info.value.code == 2 and "--mixed-precision: invalid choice: 'fp8'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, *base, "--colour", "blue")
    assert exit_info.value.code == 2 and "unrecognized arguments: --colour" in capsys.readouterr().err


def test_dry_run_prints_config_and_schedule(demo_lmdb, tmp_path, capsys):
    code = run_main(capsys, "--data", demo_lmdb, "--out", tmp_path / "run", *TINY, "--dry-run")[0]
    assert code == 0 and not (tmp_path / "run").exists()  # a dry run writes nothing
    config = json.loads(run_main.stdout.split("\n\nschedule:")[0])
    assert config["schedule"]["batch"]["4"] == 16 and config["schedule"]["batch"]["8"] == 16
    assert config["model"]["resolution"] == 8 and config["model"]["latent_size"] == 64  # small preset
    assert "fade      8x8" in run_main.stdout and "total: 0.3 kimg" in run_main.stdout


def test_existing_run_folder_is_protected(demo_lmdb, reference_run, tmp_path, capsys):
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", reference_run, *TINY)
    assert code == 2 and "already holds a run" in err and "--resume auto" in err
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", reference_run, *TINY, "--resume", "auto",
                         "--fade-kimg", "1")
    assert code == 2 and "schedule.fade_kimg" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((reference_run / "config.json").read_text())
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", other, *TINY, "--seed", "7")
    assert code == 2 and "seed" in err


@pytest.mark.slow
def test_metrics_during_training(demo_lmdb, tmp_path):
    out = tmp_path / "run"
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--metrics", "SWD,msssim",  # upper case as a user may type it
                     "--metric-kimg", "0.128", "--metric-images", "64")
    lines = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    metrics = [line for line in lines if line["kind"] == "metrics"]
    assert [m["images_shown"] for m in metrics] == [128, 256]
    for m in metrics:  # at 8x8 SWD has one level; MS-SSIM needs 16x16 and is skipped
        assert m["resolution"] == 8 and m["swd_x1e3_8"] > 0 and m["swd_x1e3_avg"] == m["swd_x1e3_8"]
        assert "msssim" not in m
        assert m["mirror_reals"] is True  # trained with mirroring (the default): reals mirrored too
    assert "metrics swd_x1e3_8" in proc.stdout


def test_metric_flags_are_checked_before_training(demo_lmdb, tmp_path, capsys):
    base = ["--data", demo_lmdb, "--out", tmp_path / "run", *TINY, "--dry-run"]
    code, err = run_main(capsys, *base, "--metrics", "swd,inception_score", "--metric-kimg", "1")
    assert code == 2 and "inception_score" in err
    code, err = run_main(capsys, *base, "--metrics", "fid", "--metric-kimg", "1")
    assert code == 2 and "--inception" in err
    code, err = run_main(capsys, *base, "--metrics", "swd")
    assert code == 2 and "--metric-kimg" in err
    code, err = run_main(capsys, *base, "--metrics", "swd", "--metric-kimg", "1", "--metric-images", "1000")
    assert code == 2 and "holds 64" in err


def test_resumed_adam_keeps_this_devices_kernel_and_continues_the_same():
    # A checkpoint written with foreach Adam, loaded into the trainer's fused Adam: the state
    # must not switch the kernel back, and the next step must match the foreach optimizer's.
    torch.manual_seed(0)
    weights = torch.randn(4, 5)
    grads = [torch.randn(4, 5) for _ in range(3)]

    def adam(kind):
        param = torch.nn.Parameter(weights.clone())
        return param, torch.optim.Adam([param], lr=0.01, betas=(0.0, 0.99), **{kind: True})

    old_param, old = adam("foreach")
    for grad in grads[:2]:
        old_param.grad = grad.clone()
        old.step()
    new_param, new = adam("fused")
    with torch.no_grad():
        new_param.copy_(old_param)
    _load_adam_state(new, copy.deepcopy(old.state_dict()))  # as from disk: no shared moments
    assert new.param_groups[0]["fused"] is True and not new.param_groups[0]["foreach"]
    old_param.grad, new_param.grad = grads[2].clone(), grads[2].clone()
    old.step()
    new.step()
    torch.testing.assert_close(new_param, old_param, rtol=1e-6, atol=1e-7)
    assert float(new.state[new_param]["step"]) == 3.0


def test_streamed_reals_are_the_in_memory_reals(demo_lmdb):
    # The DataLoader path (level too big for memory) must serve exactly the batches the
    # in-memory path does: same order, same process slice, across an epoch boundary.
    from progan.data.reader import MultiResolutionDataset

    count = len(MultiResolutionDataset(str(demo_lmdb), 8))
    order = DataOrder(seed=3, num_images=count)
    kwargs = dict(order=order, start_images=count - 8, global_batch=12, part=slice(1, None, 2))
    in_memory = RealImages(str(demo_lmdb), 8, workers=0, memory_budget=1 << 30, **kwargs)
    streamed = RealImages(str(demo_lmdb), 8, workers=1, memory_budget=0, **kwargs)
    assert in_memory.dataset.in_memory and not streamed.dataset.in_memory
    for step in range(3):
        expected = MultiResolutionDataset(str(demo_lmdb), 8).get_batch(
            order.indices(count - 8 + 12 * step, 12)[1::2])
        a, b = in_memory.next(), streamed.next()
        assert a.shape == (6, 3, 8, 8) and torch.equal(a, expected) and torch.equal(b, expected)
