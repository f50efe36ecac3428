"""Week-long runs: one run per folder (a lock that dies with its holder), resume past a damaged
newest checkpoint, a full disk as one line with nothing lost, exit codes a scheduler can act on,
stale temporary files cleared, long messages shortened at a word boundary."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tmpfs
from progan.generator import checkpoints
from progan.runtime.errors import EXIT_PREEMPTED, EXIT_USAGE, EXIT_WRITE_FAILED, SHORTENED, VERBOSE_ENV, first_line, shorten
from progan.runtime.diskspace import WriteFailed
from progan.runtime.runlock import LOCK_NAME, RunFolderBusy, acquire, remove_stale_temp_files
from test_training import TINY, assert_same_training_state, final_state, reference_run, run_main, train_cli  # noqa: F401


# -- long messages ---------------------------------------------------------------------------
def test_long_messages_are_shortened_at_a_word_boundary(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    words = " ".join(f"word{i:03d}" for i in range(60))  # 479 characters of 7-letter words
    short = shorten(words, 160)
    kept = short[: -len(SHORTENED)]
    assert short.endswith(SHORTENED) and len(kept) <= 160
    assert words.startswith(kept) and words[len(kept)] == " "  # cut between words, never inside one
    assert kept.split()[-1] == "word019"
    assert first_line(RuntimeError(words + "\nsecond line")) == short
    assert shorten("fits", 160) == "fits"
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert first_line(RuntimeError(words + "\nsecond line")) == words  # the full first line


# -- one run per folder ------------------------------------------------------------------------
def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process (as a live training run would) holding `run_dir`'s lock."""
    code = ("import sys, time; from progan.runtime.runlock import acquire; lock = acquire(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunFolderBusy) as refused:
            acquire(run_dir)
        assert f"PID {holder.pid} on host " in str(refused.value) and len(str(refused.value).splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = acquire(run_dir)  # the holder was killed: its lock went with it
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    (to / LOCK_NAME).unlink(missing_ok=True)
    return to


@pytest.mark.slow
def test_second_launch_on_a_live_run_folder_is_refused_and_writes_nothing(demo_lmdb, reference_run, tmp_path, capsys):
    out = copy_run(reference_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
    holder = hold_lock(out)
    try:
        # The case that used to rewrite config.json and prune the live run's checkpoints.
        code, err = run_main(capsys, "--data", demo_lmdb, "--out", out, *TINY, "--resume", "auto",
                             "--total-kimg", "0.6", "--keep-checkpoints", "1")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert code == EXIT_USAGE and len(err.splitlines()) == 1
    assert f"in use by another training run (PID {holder.pid} on host" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
    assert after == before  # nothing written, nothing pruned


@pytest.mark.slow
def test_two_real_launches_on_one_folder(demo_lmdb, tmp_path):
    """A second launch while the first trains is refused; the first goes on, its log undoubled.
    The first is given far more work than the test waits for and stopped by SIGTERM, so the second
    always meets it running, however fast the machine."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--data", str(demo_lmdb), "--out", str(out), *TINY, "--total-kimg", "100"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "stats.jsonl").exists():
            time.sleep(0.05)
        second = train_cli(demo_lmdb, out, "--total-kimg", "100", "--resume", "auto", check=False)
        assert first.poll() is None, "the first run ended before the second launch"
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == EXIT_PREEMPTED, output
    assert second.returncode == EXIT_USAGE and f"PID {first.pid}" in second.stderr
    shown = [json.loads(line)["images_shown"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert shown == sorted(set(shown)) and len(shown) >= 1  # one writer: no doubled or interleaved lines


# -- resume that never stalls --------------------------------------------------------------
@pytest.mark.slow
def test_resume_auto_falls_back_past_a_truncated_newest_checkpoint(demo_lmdb, reference_run, tmp_path):
    out = copy_run(reference_run, tmp_path / "run")
    newest = checkpoints.find_latest_checkpoint(out)
    assert newest.name == "checkpoint-0000000256.pt"
    half = newest.stat().st_size // 2
    newest.write_bytes(newest.read_bytes()[:half])  # a kill mid-copy, a bad disk
    # What kill -9 mid-write leaves behind (fileio.atomic_output's names).
    stale = [out / ".checkpoint-0000000320.pt.k2j4x9.tmp", out / ".latest.json.a8b1.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--resume", "auto")
    assert "checkpoint-0000000256.pt is not a readable checkpoint" in proc.stdout
    assert "resuming from checkpoint-0000000192.pt instead" in proc.stdout
    assert "removed 2 temporary file(s)" in proc.stdout and not any(p.exists() for p in stale)
    kept = out / "checkpoint-0000000256.pt.damaged"
    assert kept.stat().st_size == half  # moved aside, not deleted
    assert_same_training_state(final_state(out), final_state(reference_run))  # 192 -> 256 redone exactly


def test_resume_auto_with_no_readable_checkpoint_is_one_line(demo_lmdb, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-0000000064.pt").write_bytes(b"not a checkpoint")
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", out, *TINY, "--resume", "auto")
    assert code == EXIT_USAGE and "no checkpoint in" in err and "checkpoint-0000000064.pt" in err
    assert len(err.splitlines()) == 1 and (out / "checkpoint-0000000064.pt").exists()


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "checkpoint-0000000064.pt", tmp_path / "latest.json", tmp_path / LOCK_NAME]
    stale = [tmp_path / ".checkpoint-0000000128.pt.x1y2.tmp", tmp_path / ".samples-latest.png.q.tmp"]
    for path in keep + stale:
        path.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# -- full disk ---------------------------------------------------------------------------------
def test_full_disk_at_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    import torch

    import progan.runtime.diskspace as diskspace

    state = {"images_shown": 64, "generator": {"w": torch.zeros(1000)}}
    first = checkpoints.save_training_checkpoint(tmp_path, state)
    pointer = (tmp_path / "latest.json").read_text()

    def full_disk_save(obj, path):  # what torch.save's C++ writer raises on ENOSPC
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs 4288")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1500, 1500))
    with pytest.raises(WriteFailed) as failed:
        checkpoints.save_training_checkpoint(tmp_path, {**state, "images_shown": 128})
    message = str(failed.value)
    assert message.startswith(f"no space left in {tmp_path} for checkpoint checkpoint-0000000128.pt")
    assert "needs about 3.9 KiB, 1.5 KiB free" in message and len(message.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, "latest.json"]  # no temp file left
    assert (tmp_path / "latest.json").read_text() == pointer and checkpoints.load_checkpoint(first)["images_shown"] == 64

    def enospc_save(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", enospc_save)
    with pytest.raises(WriteFailed, match="no space left in"):
        checkpoints.save_training_checkpoint(tmp_path, {**state, "images_shown": 192})


def test_low_space_warning_counts_checkpoints_that_still_fit(tmp_path, monkeypatch):
    import progan.runtime.diskspace as diskspace

    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 0, 15 * 2**20))
    assert diskspace.low_space_warning(tmp_path, 5 * 2**20) is None  # room for 3
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 0, 6 * 2**20))
    warning = diskspace.low_space_warning(tmp_path, 5 * 2**20)
    assert "6.0 MiB free, room for 1 more checkpoint(s) of 5.0 MiB" in warning


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MiB file system (room for one checkpoint of the tiny run); root only."""
    with tmpfs(tmp_path / "small", "8m") as mount:
        yield mount


@pytest.mark.slow
def test_full_disk_in_a_real_run(demo_lmdb, small_tmpfs):
    out = small_tmpfs / "run"
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.256", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == EXIT_WRITE_FAILED, proc.stdout + proc.stderr
    assert err.startswith(f"train.py: error: no space left in {out} for checkpoint") and len(err.splitlines()) == 1
    needed, free = map(float, re.search(r"needs about ([\d.]+) MiB, ([\d.]+) MiB free", err).groups())
    assert needed == 4.7 and 3 < free < needed  # 8 MiB less the first (4x4) checkpoint and the grids
    assert "room for 0 more checkpoint(s)" in proc.stdout or "room for 1 more checkpoint(s)" in proc.stdout
    saved = final_state(out)  # the first checkpoint is intact and latest.json points at it
    assert saved["images_shown"] == 64 and not list(out.glob(".*.tmp"))
    # A disk full to the last byte: the resume's first write fails, in one line, losing nothing.
    with open(small_tmpfs / "filler", "wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
    proc = train_cli(demo_lmdb, out, "--total-kimg", "0.256", "--resume", "auto", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == EXIT_WRITE_FAILED and len(err.splitlines()) == 1, proc.stdout + proc.stderr
    assert f"no space left in {out}" in err and "0 B free" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME} == before


# -- exit codes ----------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_exits_with_the_preempted_code(demo_lmdb, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--data", str(demo_lmdb), "--out", str(out), *TINY, "--total-kimg", "10"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "stats.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, output
    assert "stopped by SIGTERM" in output and final_state(out)["images_shown"] < 10_000


def test_a_failed_stats_write_stops_the_run_with_a_checkpoint(demo_lmdb, tmp_path, monkeypatch, one_torch_thread):
    import progan.train.loop as training
    from test_training import make_trainer

    def full_disk(path, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    trainer = make_trainer(demo_lmdb, tmp_path / "run", "--total-kimg", "0.128")
    monkeypatch.setattr(training, "append_jsonl", full_disk)
    with pytest.raises(WriteFailed) as failed:
        trainer.run()
    message = str(failed.value)
    assert message.startswith(f"no space left in {tmp_path / 'run'} for stats.jsonl")
    # The first tick (32 images) failed to log; the run stopped one step later and saved it all.
    assert "stopped at 0.048 kimg, checkpoint" in message and len(message.splitlines()) == 1
    assert final_state(tmp_path / "run")["images_shown"] == 48


def test_unwritable_run_folder_is_one_line(demo_lmdb, tmp_path, capsys, monkeypatch):
    import progan.runtime.fileio as fileio

    def no_rename(src, dst):
        raise OSError(errno.EIO, "Input/output error", str(dst))

    monkeypatch.setattr(fileio.os, "replace", no_rename)  # config.json, the first write of a run
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", tmp_path / "run", *TINY)
    assert code == EXIT_WRITE_FAILED and len(err.splitlines()) == 1
    assert f"could not write config.json in {tmp_path / 'run'} (Input/output error" in err and "free" in err
    assert not (tmp_path / "run" / "config.json").exists() and not list((tmp_path / "run").glob(".*.tmp"))


def test_a_failed_run_in_process_lets_go_of_its_folder(demo_lmdb, tmp_path, capsys, monkeypatch):
    import progan.runtime.fileio as fileio

    real_replace = fileio.os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    code, _ = run_main(capsys, "--data", demo_lmdb, "--out", tmp_path / "run", *TINY)
    assert code == EXIT_WRITE_FAILED
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    acquire(tmp_path / "run").release()  # not refused: the failed run released its lock
