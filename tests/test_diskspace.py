"""A full disk during `data_prep build`: one line naming the folder, the bytes needed and free,
said before the chunk is written when possible, and a rerun resumes to the same database."""

from __future__ import annotations

import errno
import shutil
import subprocess

import lmdb
import numpy as np
import pytest

import progan.data.writer
import progan.runtime.diskspace
from conftest_data import noise, run_cli, save
from progan.data.format import DatasetError
from progan.data.reader import dataset_fingerprint, read_metadata
from progan.runtime.diskspace import format_bytes, write_failure

CHUNK = {"PROGAN_BUILD_CHUNK_FILES": "4"}


@pytest.fixture
def source(tmp_path):
    for i in range(16):
        save(noise(32, i), tmp_path / "src" / f"{i:02d}.png")
    return tmp_path / "src"


def all_records(db) -> dict:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        records = dict(txn.cursor())
    env.close()
    return records


def build_args(source, out):
    return ("build", source, out, "--max-res", 32, "--workers", 1)


def fake_disk(monkeypatch, out, capacity: int) -> None:
    """A disk of `capacity` bytes holding only the database."""
    def free_bytes(folder):
        data = out / "data.mdb"
        return max(0, capacity - (data.stat().st_blocks * 512 if data.exists() else 0))

    monkeypatch.setattr(progan.runtime.diskspace, "free_bytes", free_bytes)


def test_build_stops_before_a_chunk_that_does_not_fit_and_resumes(source, tmp_path, capsys, monkeypatch):
    for name, value in CHUNK.items():
        monkeypatch.setenv(name, value)
    assert run_cli(capsys, *build_args(source, tmp_path / "clean.lmdb"))[0] == 0
    out = tmp_path / "out.lmdb"
    fake_disk(monkeypatch, out, 100_000)
    code, _, err = run_cli(capsys, *build_args(source, out))
    lines = err.strip().splitlines()
    assert code == 4 and "Traceback" not in err
    assert any(line.startswith(f"warning: {out}: the 16 images still to write need about ") for line in lines)
    assert lines[-1].startswith(f"data_prep build: error: {out}: disk full: the next chunk (4 images) needs about ")
    assert "free; free some space, then rerun the same command to resume (" in lines[-1]
    with pytest.raises(DatasetError, match="unfinished build"):
        read_metadata(out)
    kept = int(lines[-1].split("resume (")[1].split()[0])
    assert 1 <= kept < 4  # chunks committed before the disk filled are kept

    monkeypatch.undo()  # space freed
    for name, value in CHUNK.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_cli(capsys, *build_args(source, out))
    assert code == 0 and f"{4 * kept} of 16 files already done" in err
    assert all_records(out) == all_records(tmp_path / "clean.lmdb")


def test_a_commit_failing_on_a_full_disk_is_one_line_and_loses_nothing(source, tmp_path, capsys, monkeypatch):
    # What LMDB does when the disk fills mid-commit: "Input/output error" (a short write).
    for name, value in CHUNK.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out.lmdb"
    real_write = progan.data.writer.write_growing
    calls = []

    def failing_write(env, fill):
        calls.append(1)
        if len(calls) == 3:  # the build record, two chunks, then the disk is full
            raise lmdb.DiskError("mdb_txn_commit: Input/output error")
        real_write(env, fill)

    monkeypatch.setattr(progan.data.writer, "write_growing", failing_write)
    monkeypatch.setattr(progan.runtime.diskspace, "free_bytes", lambda folder: 0 if len(calls) >= 3 else 1 << 40)
    code, _, err = run_cli(capsys, *build_args(source, out))
    last = err.strip().splitlines()[-1]
    assert code == 4 and "Traceback" not in err
    assert last.startswith(f"data_prep build: error: {out}: disk full: the next chunk (4 images) needs about ")
    assert last.endswith(", 0 B free; free some space, then rerun the same command to resume "
                         "(1 chunks committed so far are kept)")
    monkeypatch.setattr(progan.data.writer, "write_growing", real_write)
    monkeypatch.setattr(progan.runtime.diskspace, "free_bytes", lambda folder: 1 << 40)
    code, _, err = run_cli(capsys, *build_args(source, out))
    assert code == 0 and "4 of 16 files already done" in err
    assert read_metadata(out)["count"] == 16


def test_write_failure_names_the_space_or_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(progan.runtime.diskspace, "free_bytes", lambda folder: 1_500_000)
    full = OSError(errno.ENOSPC, "No space left on device")
    assert write_failure(tmp_path, full, 1000, "the chunk", "rerun") == (
        f"{tmp_path}: disk full: the chunk needs about 1000 B, 1.4 MiB free; free some space, then rerun")
    other = lmdb.DiskError("mdb_txn_commit: Input/output error")
    assert write_failure(tmp_path, other, 1000, "the chunk", "rerun") == (
        f"{tmp_path}: writing the chunk failed (mdb_txn_commit: Input/output error, 1.4 MiB free there); rerun")
    assert write_failure(tmp_path, other, 2_000_000, "the chunk", "rerun").startswith(f"{tmp_path}: disk full:")
    assert [format_bytes(n) for n in (999, 1000, 2_500_000, 3e12)] == ["999 B", "1000 B", "2.4 MiB", "2794.0 GiB"]


def can_mount_tmpfs(folder) -> bool:
    folder.mkdir()
    if shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


@pytest.mark.slow
def test_real_full_disk_on_a_small_tmpfs(source, tmp_path, capsys, monkeypatch):
    disk = tmp_path / "disk"
    if not can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root")
    try:
        for name, value in CHUNK.items():
            monkeypatch.setenv(name, value)
        out = disk / "out.lmdb"
        # First without the check before each chunk: the commit itself meets the full disk.
        monkeypatch.setattr(progan.data.writer, "shortfall", lambda folder, needed: None)
        code, _, err = run_cli(capsys, *build_args(source, out))
        assert code == 4 and "Traceback" not in err
        assert f"{out}: disk full: the next chunk (4 images) needs about " in err.strip().splitlines()[-1]
        monkeypatch.undo()
        for name, value in CHUNK.items():
            monkeypatch.setenv(name, value)
        code, _, err = run_cli(capsys, *build_args(source, out))  # the check now refuses first
        assert code == 4 and f"{out}: disk full: the next chunk" in err.strip().splitlines()[-1]
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        code, _, err = run_cli(capsys, *build_args(source, out))
        assert code == 0 and "files already done" in err
        clean = tmp_path / "clean.lmdb"
        assert run_cli(capsys, *build_args(source, clean))[0] == 0
        assert all_records(out) == all_records(clean) and dataset_fingerprint(out) == dataset_fingerprint(clean)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_the_estimate_of_a_chunk_is_close_to_what_the_file_grows_by(tmp_path):
    # The check before each chunk is only useful if its estimate is near the real growth:
    # too low lets the commit fail, too high refuses builds that would fit.
    from progan.data.writer import DatasetWriter
    from progan.data.format import ImageRecord

    rng = np.random.default_rng(0)
    resolutions = [4, 8, 16, 32, 64]
    with DatasetWriter(tmp_path / "db.lmdb") as writer:
        writer.start({"resolutions": resolutions, "encoding": "raw"})
        for chunk in range(4):
            images = [ImageRecord(f"{chunk}-{i}", [rng.bytes(3 * r * r) for r in resolutions], "00" * 32)
                      for i in range(25)]
            estimate = writer.disk_bytes([len(d) for image in images for d in image.levels])
            before = (tmp_path / "db.lmdb" / "data.mdb").stat().st_size
            writer.commit_chunk(25 * (chunk + 1), images, [])
            grown = (tmp_path / "db.lmdb" / "data.mdb").stat().st_size - before
            assert grown <= estimate <= 1.3 * grown + 64 * 1024, (chunk, grown, estimate)
