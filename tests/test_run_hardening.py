"""Issue 19, the training run: no signal, full disk or damaged checkpoint gives a traceback, a
silent crash or training on damage.

Signals from the first line of train.py (real signals to a real subprocess, paused at a known
point of set-up by PROGAN_TEST_PAUSE), a second Ctrl-C that waits for the checkpoint, TensorBoard's
writer thread on a full disk, checksums that catch a flipped bit and a NaN written into a real
checkpoint, a run whose every step is non-finite, empty path flags, --mixed-precision on resume,
and a run lock that survives the deletion of run.lock.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, interrupted_at
from progan.generator import checkpoints
from progan.generator import export
from progan.generator import fileformat
from progan.runtime.errors import EXIT_PREEMPTED, EXIT_USAGE, EXIT_WRITE_FAILED
from progan.runtime.runlock import LOCK_NAME, RunFolderBusy, acquire
from progan.runtime.signals import PAUSE_ENV, Interrupted, StopSignals
from test_reliability import copy_run, hold_lock, small_tmpfs  # noqa: F401 (a fixture)
from test_training import (TINY, assert_same_training_state, final_state, make_trainer, reference_run,  # noqa: F401
                           run_main, train_cli)


def train_command(data, out, *extra) -> list[str]:
    return [sys.executable, "train.py", "--data", str(data), "--out", str(out), *TINY, *extra]


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before {path.name} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def no_traceback(*texts: str) -> bool:
    return not any("Traceback" in t or "Exception in thread" in t for t in texts)


# -- signals -------------------------------------------------------------------------------
def test_stop_signals_raise_during_setup_then_only_ask(tmp_path):
    stop = StopSignals()
    assert stop.install()
    try:
        with pytest.raises(Interrupted) as interrupted:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
        assert interrupted.value.signal_name == "SIGTERM" and stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while leaving: ignored, counted
        assert stop.repeats == 1
    finally:
        stop.uninstall()
    stop = StopSignals()
    stop.install()
    stop.training()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: no KeyboardInterrupt
        assert stop.requested and stop.signal_name == "SIGINT" and stop.repeats == 1
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_setup_is_one_line_and_blocks_no_rerun(demo_lmdb, tmp_path, sig):
    out, marker = tmp_path / "run", tmp_path / "paused"
    cmd = train_command(demo_lmdb, out, "--total-kimg", "0.032", "--log-with", "tensorboard")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PAUSE_ENV: f"setup:{marker}"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(marker, proc)  # set-up is paused with config.json, run.lock and tensorboard/ written
    assert (out / "config.json").exists() and (out / "tensorboard").is_dir()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stdout + stderr
    name = signal.Signals(sig).name
    assert stderr.strip() == (f"train.py: error: stopped by {name} during set-up, before training began: "
                              f"nothing to save yet, nothing lost; rerun the same command")
    assert no_traceback(stdout, stderr) and not list(out.glob("checkpoint-*"))
    rerun = train_cli(demo_lmdb, out, "--total-kimg", "0.032", "--log-with", "tensorboard")  # the same command
    assert "finished at 0.0 kimg" in rerun.stdout and final_state(out)["images_shown"] == 32


@pytest.mark.slow
def test_a_signal_at_the_first_line_of_main_writes_nothing(demo_lmdb, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: f"start:{marker}"}
    proc = subprocess.Popen(train_command(demo_lmdb, out), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED and len(stderr.strip().splitlines()) == 1, stdout + stderr
    assert "stopped by SIGTERM during set-up" in stderr and not out.exists()


@pytest.mark.slow
def test_a_second_ctrl_c_before_the_last_checkpoint_waits_for_it(demo_lmdb, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "stopping"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PAUSE_ENV: f"stopping:{marker}"}
    proc = subprocess.Popen(train_command(demo_lmdb, out, "--total-kimg", "100"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "stats.jsonl", proc)
        proc.send_signal(signal.SIGINT)
        wait_for(marker, proc)  # stopped, its last checkpoint not yet written
        proc.send_signal(signal.SIGINT)  # the impatient second Ctrl-C
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED and stderr.strip() == "", stdout + stderr
    assert "stopped by SIGINT at" in stdout and "(1 more signal(s) waited for it)" in stdout
    saved = final_state(out)
    assert saved["images_shown"] == json.loads((out / "latest.json").read_text())["images_shown"]


@pytest.mark.slow
def test_repeated_ctrl_c_waits_for_the_checkpoint_and_exits_3(demo_lmdb, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_command(demo_lmdb, out, "--total-kimg", "100"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "stats.jsonl", proc)
        for _ in range(6):  # the first stops the run; the others land while it stops and saves
            proc.send_signal(signal.SIGINT)
            time.sleep(0.03)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, stdout + stderr
    assert "stopped by SIGINT" in stdout and no_traceback(stdout, stderr) and stderr.strip() == ""
    saved = final_state(out)  # the checkpoint is whole, and it is the newest
    assert 0 < saved["images_shown"] < 100_000 and not list(out.glob(".*.tmp"))


# -- trackers on a full disk -----------------------------------------------------------------
def fail_tensorboard_writes_after(monkeypatch, calls: int) -> list:
    """TensorBoard's record writer (run by its background thread) hits ENOSPC after `calls` writes."""
    from tensorboard.summary.writer import record_writer

    real_write, done = record_writer.RecordWriter.write, []

    def write(self, data):
        done.append(len(data))
        if len(done) > calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    return done


def test_tensorboard_on_a_full_disk_mid_run_is_one_line_exit_4(demo_lmdb, tmp_path, capsys, monkeypatch,
                                                                 one_torch_thread):
    from progan.train import trackers

    fail_tensorboard_writes_after(monkeypatch, 5)  # the set-up's 5 writes pass, the first tick's fail
    monkeypatch.setattr(trackers, "thread_errors", [])
    out = tmp_path / "run"
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", out, *TINY, "--total-kimg", "0.256",
                         "--log-with", "tensorboard")
    assert code == EXIT_WRITE_FAILED and len(err.splitlines()) == 1, err
    assert err.startswith(f"train.py: error: no space left in {out} for the trackers' logs")
    assert "checkpoint" in err and no_traceback(run_main.stdout, err)
    assert trackers.thread_errors and isinstance(trackers.thread_errors[0], OSError)  # the thread failed, silently
    assert final_state(out)["images_shown"] < 256  # stopped early, with a checkpoint


def test_tensorboard_on_a_full_disk_at_setup_is_one_line_exit_4(demo_lmdb, tmp_path, capsys, monkeypatch):
    fail_tensorboard_writes_after(monkeypatch, 0)  # 0 B free: the first event fails
    out = tmp_path / "run"
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", out, *TINY, "--log-with", "tensorboard")
    time.sleep(0.2)  # the writer thread has long failed; anything it printed would be captured now
    err += capsys.readouterr().err
    assert code == EXIT_WRITE_FAILED and len(err.strip().splitlines()) == 1, err
    assert f"no space left in {out} for the trackers' logs" in err and no_traceback(run_main.stdout, err)
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.slow
def test_a_real_full_disk_at_setup_with_tensorboard(demo_lmdb, small_tmpfs):  # noqa: F811
    out = small_tmpfs / "run"
    out.mkdir()
    with open(small_tmpfs / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass
    for _ in range(3):  # the thread's traceback came in 2 of 3 trials
        proc = train_cli(demo_lmdb, out, "--total-kimg", "0.064", "--log-with", "tensorboard", check=False)
        assert proc.returncode == EXIT_WRITE_FAILED, proc.stdout + proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and f"no space left in {out}" in proc.stderr
        assert no_traceback(proc.stdout, proc.stderr)


# -- checkpoints that prove themselves ------------------------------------------------------
def tiny_state(images_shown: int = 64) -> dict:
    g = torch.Generator().manual_seed(images_shown)
    return {"images_shown": images_shown, "counters": {"step": 4, "training_seconds": 1.5},
            "generator": {"w": torch.randn(64, 64, generator=g), "b": torch.zeros(0)},
            "optimizer_g": {"state": {0: {"exp_avg": torch.randn(8, generator=g).bfloat16()}}}}


def overwrite_in_file(path: Path, tensor: torch.Tensor, change) -> None:
    """Change the stored bytes of `tensor` inside the checkpoint file itself (as a bad disk would)."""
    raw = path.read_bytes()
    stored = tensor.contiguous().numpy().tobytes()
    at = raw.find(stored)
    assert at > 0 and raw.find(stored, at + 1) < 0, "the tensor's bytes are not found once"
    path.write_bytes(raw[:at] + change(stored) + raw[at + len(stored):])


def flip_one_bit(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:]


def nan_first_value(data: bytes) -> bytes:
    return torch.tensor([float("nan")]).numpy().tobytes() + data[4:]


@pytest.mark.parametrize("change", [flip_one_bit, nan_first_value], ids=["bit", "nan"])
def test_a_changed_byte_in_a_checkpoint_is_caught(tmp_path, change):
    state = tiny_state()
    path = checkpoints.save_training_checkpoint(tmp_path, state)
    assert torch.equal(checkpoints.load_checkpoint(path)["generator"]["w"], state["generator"]["w"])
    overwrite_in_file(path, state["generator"]["w"], change)
    assert torch.load(path, weights_only=True)["images_shown"] == 64  # torch itself loads it silently
    with pytest.raises(fileformat.CheckpointError) as damaged:
        checkpoints.load_checkpoint(path)
    message = str(damaged.value)
    assert message == (f"{path} is damaged: generator/w does not match the checksum written with it "
                       f"(a flipped bit, a bad disk or an edit)")


def test_checksums_cover_every_value_and_old_files_still_load(tmp_path):
    state = tiny_state()
    sums = fileformat.checksums(state)
    assert set(sums) == {"images_shown", "counters/step", "counters/training_seconds", "generator/w",
                         "generator/b", "optimizer_g/state/0/exp_avg"}
    assert fileformat.checksums({**state, "images_shown": 65})["images_shown"] != sums["images_shown"]
    reshaped = {**state, "generator": {**state["generator"], "w": state["generator"]["w"].reshape(32, 128)}}
    assert fileformat.checksums(reshaped)["generator/w"] != sums["generator/w"]  # same bytes, other shape
    old = tmp_path / "checkpoint-0000000064.pt"  # a file from before checksums: loads, unchecked
    torch.save({"format": fileformat.FORMAT_NAME, "format_version": fileformat.FORMAT_VERSION,
                "kind": fileformat.TRAINING_KIND, **state}, old)
    assert fileformat.CHECKSUMS not in checkpoints.load_checkpoint(old)
    exported = export.export_generator(
        {"model_config": {}, "resolution": 4, "alpha": 1.0, "images_shown": 64,
         "generator_ema": state["generator"]}, tmp_path / "g.pt")
    overwrite_in_file(exported, state["generator"]["w"], flip_one_bit)  # exports are checked too
    with pytest.raises(fileformat.CheckpointError, match="generator_ema/w does not match"):
        checkpoints.load_checkpoint(exported)


@pytest.mark.slow
def test_resume_auto_falls_back_past_a_flipped_bit_and_an_explicit_path_is_refused(
        demo_lmdb, reference_run, tmp_path, capsys):
    out = copy_run(reference_run, tmp_path / "run")
    newest = out / "checkpoint-0000000256.pt"
    weight = checkpoints.load_checkpoint(newest)["discriminator"]
    name = max(weight, key=lambda k: weight[k].numel())  # a tensor large enough to be unique in the file
    overwrite_in_file(newest, weight[name], flip_one_bit)
    code, err = run_main(capsys, "--data", demo_lmdb, "--resume", newest, "--dry-run")
    assert code == EXIT_USAGE and len(err.splitlines()) == 1
    assert f"--resume: {newest} is damaged: discriminator/{name} does not match the checksum" in err
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--resume", "auto")
    assert "checkpoint-0000000256.pt is damaged" in proc.stdout and "resuming from checkpoint-0000000192.pt" in proc.stdout
    assert (out / "checkpoint-0000000256.pt.damaged").exists()
    assert_same_training_state(final_state(out), final_state(reference_run))  # 192 -> 256 redone exactly


# -- a run that only skips -------------------------------------------------------------------
def test_a_tick_of_only_non_finite_steps_stops_the_run_unsaved(demo_lmdb, tmp_path, monkeypatch, one_torch_thread):
    import progan.train.losses as losses
    from progan.train.loop import TrainingDiverged

    trainer = make_trainer(demo_lmdb, tmp_path / "run", "--total-kimg", "0.256")
    (tmp_path / "run").mkdir()
    real_critic_loss = losses.critic_loss
    monkeypatch.setattr(losses, "critic_loss", lambda r, f: real_critic_loss(r, f) * float("nan"))
    with pytest.raises(TrainingDiverged) as diverged:
        trainer.run()
    message = str(diverged.value)
    assert message.startswith("every D step of tick 1 (2 steps, to 0.032 kimg) was skipped as non-finite")
    assert "no checkpoint was written" in message and len(message.splitlines()) == 1
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # stopped without saving the damage


@pytest.mark.slow  # fp16 on a CPU: ~14 s
def test_with_fp16_a_falling_loss_scale_explains_skips_until_it_reaches_1(demo_lmdb, tmp_path, monkeypatch,
                                                                          one_torch_thread):
    import progan.train.losses as losses
    from progan.train.loop import TrainingDiverged

    trainer = make_trainer(demo_lmdb, tmp_path / "run", "--total-kimg", "0.256", "--mixed-precision", "fp16")
    (tmp_path / "run").mkdir()
    real_critic_loss = losses.critic_loss
    monkeypatch.setattr(losses, "critic_loss", lambda r, f: real_critic_loss(r, f) * float("nan"))
    with pytest.raises(TrainingDiverged, match="every D step of tick 7 "):
        trainer.run()  # 2^14 halves to 1 over 14 skipped steps: ticks 1-6 are the scale finding its level
    assert trainer.scale_d.value() == 1.0 and trainer.step == 14


@pytest.mark.slow
def test_a_checkpoint_with_nan_weights_is_set_aside_and_the_run_resumes_from_the_last_good_one(
        demo_lmdb, reference_run, tmp_path):
    """The hostile tester's case: a NaN in the weights (here written by a run, so its checksum is
    right) used to be trained on ('skipped 5/5' every tick, then exit 6 at best). Such weights are
    refused on load (issue 25, row 8), naming the tensor: --resume auto sets the file aside, as a
    damaged one, and resumes from the last good checkpoint; --resume PATH to it is one line, exit 2."""
    out = copy_run(reference_run, tmp_path / "run")
    state = checkpoints.load_checkpoint(out / "checkpoint-0000000256.pt")
    for tensor in state["generator"].values():
        tensor.fill_(float("nan"))
    for key in (fileformat.CHECKSUMS, fileformat.UNCHECKED, "format", "format_version", "kind"):
        state.pop(key, None)
    checkpoints.save_training_checkpoint(out, state)
    poisoned = (out / "checkpoint-0000000256.pt").read_bytes()
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--resume", out / "checkpoint-0000000256.pt", check=False)
    assert proc.returncode == EXIT_USAGE and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "generator/" in proc.stderr and "holds non-finite values" in proc.stderr
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.512", "--resume", "auto", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "holds non-finite values" in proc.stdout + proc.stderr and "resuming from checkpoint-0000000192.pt" in proc.stdout + proc.stderr
    assert (out / "checkpoint-0000000256.pt.damaged").read_bytes() == poisoned  # kept, never deleted
    assert final_state(out)["images_shown"] == 512


def checkpoint_files(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in [*run_dir.glob("checkpoint-*"), run_dir / "latest.json"]}


# -- flags -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--out", "--data", "--resume", "--config", "--inception"])
def test_an_empty_path_flag_is_refused(demo_lmdb, tmp_path, capsys, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)  # an empty --out used to train into the current folder
    args = {"--data": str(demo_lmdb), "--out": str(tmp_path / "run"), flag: ""}
    with pytest.raises(SystemExit) as exited:
        run_main(capsys, *[x for pair in args.items() for x in pair], *TINY)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == EXIT_USAGE and len(err.splitlines()) == 1
    assert f"argument {flag}: expected a path, got an empty value" in err
    assert list(tmp_path.iterdir()) == []


def test_an_empty_path_in_a_config_is_refused(demo_lmdb, tmp_path, capsys):
    from progan.train.config import TrainConfig

    run_main(capsys, "--data", demo_lmdb, "--out", tmp_path / "ref", *TINY, "--dry-run")
    config = json.loads(run_main.stdout.split("\n\nschedule:")[0])
    TrainConfig.from_dict(config)
    for field in ("out", "data"):
        with pytest.raises(ValueError, match=f"--{field} must be a path, not empty"):
            TrainConfig.from_dict({**config, field: ""})


@pytest.mark.slow
def test_mixed_precision_on_resume_is_refused_by_name(demo_lmdb, reference_run, tmp_path, capsys):
    assert json.loads((reference_run / "config.json").read_text())["mixed_precision"] == "no"  # auto on a CPU
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", reference_run, "--resume", "auto",
                         "--mixed-precision", "bf16", "--dry-run")
    assert code == EXIT_USAGE and len(err.splitlines()) == 1
    assert "was trained with other values of mixed_precision; leave those flags out to resume" in err
    for same in ("auto", "no"):  # auto resolves to this device's choice, the run's own: accepted
        code, err = run_main(capsys, "--data", demo_lmdb, "--out", reference_run, "--resume", "auto",
                             "--mixed-precision", same, "--device", "cpu", "--dry-run")
        assert code == 0, err
    other = tmp_path / "other"  # a run stopped before its first checkpoint: config.json only
    other.mkdir()
    shutil.copy(reference_run / "config.json", other / "config.json")
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", other, *TINY, "--device", "cpu", "--dry-run")
    assert code == 0, err  # the saved "no" is what auto resolves to: the same run
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", other, *TINY, "--mixed-precision", "bf16", "--dry-run")
    assert code == EXIT_USAGE and "other values of mixed_precision" in err


@pytest.mark.slow
def test_config_on_resume_names_the_runs_own_config_or_is_refused(demo_lmdb, reference_run, tmp_path, capsys):
    """--config on a resume was ignored without a word (issue 25, row 7): another preset or file is
    refused by name, the run's own config (a preset with the same flags, its config.json) resumes."""
    base = ["--data", demo_lmdb, "--out", reference_run, "--resume", "auto", "--device", "cpu", "--dry-run"]
    code, err = run_main(capsys, *base, "--config", "paper")
    assert code == EXIT_USAGE and len(err.splitlines()) == 1, err
    assert err.startswith("train.py: error: --config paper: the run at ") and "was trained with another config (" in err
    assert "leave --config out to resume, or start a new --out" in err
    other = json.loads((reference_run / "config.json").read_text())
    other["schedule"]["fade_kimg"] *= 2
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, err = run_main(capsys, *base, "--config", tmp_path / "other.json")
    assert code == EXIT_USAGE and "(schedule.fade_kimg differ)" in err, err
    for same in (["--config", reference_run / "config.json"], TINY):  # its own file; the preset and flags it had
        code, err = run_main(capsys, *base, *same)
        assert code == 0, err


# -- the run lock ----------------------------------------------------------------------------
def test_deleting_run_lock_does_not_defeat_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        (run_dir / LOCK_NAME).unlink()  # the hostile tester's rm RUN/run.lock
        with pytest.raises(RunFolderBusy) as refused:
            acquire(run_dir)
        assert "in use by another training run (holder unknown: its run.lock was deleted)" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire(run_dir).release()  # the holder died: the folder is free again


def test_without_directory_locks_the_lock_falls_back_to_run_lock(tmp_path, monkeypatch):
    import progan.runtime.runlock as runlock

    real_flock = runlock.fcntl.flock

    def nfs_flock(fd, operation):  # NFS: a descriptor opened read-only cannot take an exclusive lock
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, operation)

    monkeypatch.setattr(runlock.fcntl, "flock", nfs_flock)
    lock = acquire(tmp_path / "run")
    try:
        assert os.path.samestat(os.fstat(lock._fd), os.stat(tmp_path / "run" / LOCK_NAME))
        with pytest.raises(RunFolderBusy, match=f"PID {os.getpid()} on host"):
            acquire(tmp_path / "run")  # flock conflicts between descriptors, even in one process
    finally:
        lock.release()


@pytest.mark.slow
def test_a_second_launch_after_run_lock_was_deleted_is_refused(demo_lmdb, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_command(demo_lmdb, out, "--total-kimg", "100"), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(out / "stats.jsonl", first)
        (out / LOCK_NAME).unlink()
        second = train_cli(demo_lmdb, out, "--total-kimg", "100", "--resume", "auto", check=False)
        assert first.poll() is None, "the first run ended before the second launch"
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == EXIT_USAGE and "in use by another training run" in second.stderr, second.stderr
    assert first.returncode == EXIT_PREEMPTED, output


@pytest.mark.slow
def test_a_ctrl_c_while_torch_imports_is_one_line(demo_lmdb, tmp_path):
    """SIGINT at moments spread over train.py's start, from its first line (torch's import takes
    ~1 s, and a KeyboardInterrupt raised in there can abort the process: "terminate called after
    throwing ... pybind11::error_already_set"): one line and exit 3, never a traceback, also not
    from the exit's clean-up."""
    for number, delay in enumerate((0.0, 0.1, 0.4, 0.8, 1.3)):
        out = tmp_path / f"run{number}"
        code, stdout, err = interrupted_at(["train.py", "--data", str(demo_lmdb), "--out", str(out), *TINY], delay)
        assert "Traceback" not in err and "terminate" not in err and code == EXIT_PREEMPTED, (delay, code, err)
        # in set-up: one line on stderr; in training (a fast machine): the log's last line
        said = err.strip().splitlines() or stdout.strip().splitlines()[-1:]
        assert len(said) == 1 and "stopped by SIGINT" in said[0], (delay, stdout, err)
