"""Damage in a database: per-record checksums, `data_prep verify` listing every bad record, the
trainer's check at start and checked reads during training (progan.data.integrity, progan.data.reader)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import lmdb
import numpy as np
import pytest

from conftest import REPO, run_cli
from conftest_data import run_cli as run_data_prep
from progan.data.format import DatasetError, canonical_json, checksum_key, image_key
from progan.data.reader import MultiResolutionDataset, read_metadata
from progan.data.integrity import check_levels, verify
from progan.train.loop import DataOrder, RealImages

PAGE = 4096


def copy_db(db, tmp_path, name="copy.lmdb"):
    copy = tmp_path / name
    copy.mkdir()
    shutil.copy(db / "data.mdb", copy / "data.mdb")
    return copy


def stored(db, resolution, index) -> bytes:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(image_key(resolution, index))
    env.close()
    return value


def flip_pixel_byte(db, resolution, index) -> None:
    """Change one byte inside a record's stored pixels in data.mdb, as a bad disk sector would:
    LMDB's structure stays valid, only the bytes differ."""
    value = stored(db, resolution, index)
    data = bytearray((db / "data.mdb").read_bytes())
    offset = data.find(value)
    assert offset >= 0 and data.find(value, offset + 1) == -1, "record bytes not unique in the file"
    data[offset + len(value) // 2] ^= 0x01
    (db / "data.mdb").write_bytes(bytes(data))


def page_of(db, resolution, index) -> int:
    """The page of data.mdb holding a small (in-page) record's bytes."""
    return (db / "data.mdb").read_bytes().find(stored(db, resolution, index)) // PAGE


def overwrite_page(db, page: int, fill: bytes = b"\xa5") -> None:
    with open(db / "data.mdb", "r+b") as f:
        f.seek(page * PAGE)
        f.write(fill * PAGE)


# -- checksums at build time ----------------------------------------------------------------
def test_every_record_has_its_crc32_in_a_level_table(demo_lmdb):
    metadata = read_metadata(demo_lmdb)
    assert metadata["checksums"]["algorithm"] == "crc32"
    env = lmdb.open(str(demo_lmdb), readonly=True, lock=False)
    with env.begin() as txn:
        for resolution in metadata["resolutions"]:
            table = txn.get(checksum_key(resolution))
            assert zlib.crc32(table) == metadata["checksums"]["tables"][str(resolution)]
            crcs = np.frombuffer(table, "<u4")
            assert len(crcs) == metadata["count"] == 64
            assert all(crcs[i] == zlib.crc32(txn.get(image_key(resolution, i))) for i in range(64))
    env.close()


# -- verify ---------------------------------------------------------------------------------
def test_verify_lists_every_flipped_pixel_byte_by_level_and_index(demo_lmdb, tmp_path, capsys):
    db = copy_db(demo_lmdb, tmp_path)
    code, out, _ = run_data_prep(capsys, "verify", db)
    assert code == 0 and "ok, 192 records" in out and "checksums" in out and "no checksums" not in out
    flip_pixel_byte(db, 16, 5)
    flip_pixel_byte(db, 8, 40)
    # The flipped records still decode to the right shape: only the checksum can tell.
    assert len(stored(db, 16, 5)) == 16 * 16 * 3
    code, out, err = run_data_prep(capsys, "verify", db)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert "bad: level 16x16 image 5 (record 16-00000005): fails its crc32 checksum" in err
    assert "bad: level 8x8 image 40 (record 8-00000040): fails its crc32 checksum" in err
    assert sum(line.startswith("bad:") for line in lines) == 2
    assert lines[-1].startswith(f"data_prep verify: error: {db}: 2 bad record(s) of 192 (")
    assert "1 at 8x8" in lines[-1] and "1 at 16x16" in lines[-1]


def test_verify_lists_the_records_of_a_damaged_page_without_a_traceback(demo_lmdb, tmp_path, capsys):
    db = copy_db(demo_lmdb, tmp_path)
    overwrite_page(db, page_of(db, 8, 20))  # a leaf page of the 8x8 level
    code, _, err = run_data_prep(capsys, "verify", db)
    bad = [line for line in err.splitlines() if line.startswith("bad:")]
    assert code == 2 and "Traceback" not in err
    assert any("record 8-00000020" in line for line in bad)
    assert all("level 8x8" in line and "cannot be read" in line for line in bad)
    report = verify(db)  # the same through the API: collected, never raised
    assert [(b.resolution, b.index) for b in report.bad] == [(8, int(line.split("image ")[1].split()[0])) for line in bad]


def test_verify_of_4k_overwritten_mid_file(demo_lmdb, tmp_path, capsys):
    # The test: 4 KiB overwritten in the middle of data.mdb.
    db = copy_db(demo_lmdb, tmp_path)
    size = (db / "data.mdb").stat().st_size
    overwrite_page(db, size // 2 // PAGE, b"\x00")
    code, _, err = run_data_prep(capsys, "verify", db)
    assert code == 2 and "Traceback" not in err and "bad: level " in err
    assert len(err.strip().splitlines()[-1]) > 0 and "bad record(s)" in err.strip().splitlines()[-1]


def test_database_without_checksums_still_works_and_verify_says_so(demo_lmdb, tmp_path, capsys):
    db = copy_db(demo_lmdb, tmp_path)
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:  # what a build before checksums wrote
        metadata = json.loads(txn.get(b"meta"))
        for resolution in metadata.pop("checksums")["tables"]:
            txn.delete(checksum_key(int(resolution)))
        txn.put(b"meta", canonical_json(metadata))
    env.close()
    assert MultiResolutionDataset(db, 16, memory_budget_bytes=0)[3].shape == (3, 16, 16)
    check_levels(db, [4, 8, 16])
    code, out, _ = run_data_prep(capsys, "verify", db)
    assert code == 0 and "ok, 192 records" in out and "no checksums" in out
    # Without checksums a changed byte goes unseen, as before; a record of the wrong size does not.
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(image_key(8, 1), b"\0" * 10)
    env.close()
    code, _, err = run_data_prep(capsys, "verify", db)
    assert code == 2 and "record 8-00000001): holds 10 bytes, expected 192" in err


def test_damaged_checksum_table_is_reported(demo_lmdb, tmp_path, capsys):
    db = copy_db(demo_lmdb, tmp_path)
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(checksum_key(8), b"\0" * 256)
    env.close()
    code, _, err = run_data_prep(capsys, "verify", db)
    assert code == 2 and "bad: level 8x8: checksum table missing or damaged" in err
    with pytest.raises(DatasetError, match=r"checksum table crc32/8 is missing or damaged; run `python -m data_prep verify"):
        MultiResolutionDataset(db, 8, memory_budget_bytes=0)[0]


# -- reading and training -------------------------------------------------------------------
def test_reads_check_checksums_and_name_the_record(demo_lmdb, tmp_path):
    db = copy_db(demo_lmdb, tmp_path)
    flip_pixel_byte(db, 16, 5)
    expected = (rf"{db}: record 16-00000005 fails its crc32 checksum .*\(image 5 at 16x16\); "
                rf"run `python -m data_prep verify {db}` to list every bad record")
    assert MultiResolutionDataset(db, 16, memory_budget_bytes=0)[4].shape == (3, 16, 16)  # others read
    with pytest.raises(DatasetError, match=expected):
        MultiResolutionDataset(db, 16, memory_budget_bytes=0)[5]
    with pytest.raises(DatasetError, match=expected):
        MultiResolutionDataset(db, 16).preload()  # the in-memory path
    # A DataLoader worker's error arrives whole (one line), not as a worker traceback text.
    count = 64
    order = DataOrder(seed=0, num_images=count)
    streamed = RealImages(str(db), 16, order, 0, count, slice(None), workers=1, memory_budget=0)
    with pytest.raises(DatasetError, match=expected) as info:
        streamed.next()
    assert "\n" not in str(info.value)


def test_check_levels_finds_damage_in_the_levels_it_is_given(demo_lmdb, tmp_path):
    db = copy_db(demo_lmdb, tmp_path)
    check_levels(db, [4, 8, 16])
    flip_pixel_byte(db, 16, 0)  # index 0 is always in the sample
    check_levels(db, [4, 8])  # only the levels asked for are read
    with pytest.raises(DatasetError, match=r"record 16-00000000 fails its crc32 checksum"):
        check_levels(db, [4, 8, 16])
    db = copy_db(demo_lmdb, tmp_path, "page.lmdb")
    overwrite_page(db, page_of(db, 8, 30))
    with pytest.raises(DatasetError, match=rf"{db}: record 8-\d+ cannot be read .*at 8x8\); run `python -m data_prep verify {db}`"):
        check_levels(db, [8])
    env = lmdb.open(str(copy_db(demo_lmdb, tmp_path, "gap.lmdb")))
    with env.begin(write=True) as txn:
        txn.delete(image_key(4, 7))
    env.close()
    with pytest.raises(DatasetError, match=r"record 4-00000007 is missing \(image 7 at 4x4\)"):
        check_levels(tmp_path / "gap.lmdb", [4])


def run_main(capsys, *argv):
    from train import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def test_trainer_refuses_a_damaged_database_before_training(demo_lmdb, tmp_path, capsys):
    db = copy_db(demo_lmdb, tmp_path)
    overwrite_page(db, page_of(db, 8, 30))
    code, err = run_main(capsys, "--data", db, "--out", tmp_path / "run", "--config", "small",
                         "--resolution", "16", "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1 and "at 8x8)" in err and "data_prep verify" in err
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_training_stops_with_one_line_at_a_bad_record_it_reads(demo_lmdb, tmp_path):
    db = copy_db(demo_lmdb, tmp_path)
    flip_pixel_byte(db, 8, 1)  # not in the start check's sample: found when the 8x8 level is read
    tiny = ["--config", "small", "--resolution", "8", "--stable-kimg", "0.064", "--fade-kimg", "0.128",
            "--batch", "4:16,8:16", "--tick-kimg", "0.032", "--workers", "0"]
    proc = run_cli(["train.py", "--data", str(db), "--out", str(tmp_path / "run"), *tiny], check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # Whichever meets it first, the read or the background check (which adds where it stopped).
    assert err[-1].startswith(f"train.py: error: {db}: record 8-00000001 fails its crc32 checksum (its bytes changed "
                              f"since the build) (image 1 at 8x8); run `python -m data_prep verify {db}` to list every "
                              "bad record")


SWEEP = r'''
import contextlib, io, json, os, sys
import numpy as np
from data_prep.cli import main as data_prep
from progan.data.format import DatasetError
from progan.data.reader import MultiResolutionDataset
from progan.data.integrity import check_levels

good, work = sys.argv[1], sys.argv[2]
original = open(os.path.join(good, "data.mdb"), "rb").read()
levels = {r: MultiResolutionDataset(good, r).get_batch(np.arange(64)).numpy() for r in (4, 8, 16)}
rows = []
for page in range(len(original) // 4096):
    damaged = bytearray(original)
    # seeded: a failure names a page that fails again (random bytes in LMDB's own B-tree pages can, rarely,
    # make LMDB read past the file's end: a Bus error the README's reliability section owns up to)
    damaged[page * 4096:(page + 1) * 4096] = bytes([page * 37 % 256]) * 2048 + np.random.default_rng(page).bytes(2048)
    with open(os.path.join(work, "data.mdb"), "wb") as f:
        f.write(damaged)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = data_prep(["verify", work])
    try:
        check_levels(work, [4, 8, 16])
        start = "ok"
    except DatasetError as error:
        start = "refused" if "\n" not in str(error) else "multi-line"
    try:
        same = all(np.array_equal(MultiResolutionDataset(work, r).get_batch(np.arange(64)).numpy(), levels[r])
                   for r in (4, 8, 16))
        read = "same" if same else "different"
    except DatasetError as error:
        read = "stopped" if "\n" not in str(error) else "multi-line"
    rows.append([page, code, start, read, "Traceback" in err.getvalue()])
print(json.dumps(rows))
'''


@pytest.mark.slow
def test_every_damaged_page_is_found_or_harmless(demo_lmdb, tmp_path):
    # Fault injection over the whole file: each 4 KiB page in turn overwritten. In a separate
    # process, since a C-level abort in LMDB would end the test process itself.
    work = copy_db(demo_lmdb, tmp_path, "work.lmdb")
    (tmp_path / "sweep.py").write_text(SWEEP)
    proc = run_cli([str(tmp_path / "sweep.py"), str(demo_lmdb), str(work)], timeout=600)
    rows = json.loads(proc.stdout)
    assert len(rows) == (demo_lmdb / "data.mdb").stat().st_size // PAGE
    for page, code, start, read, traceback in rows:
        assert not traceback and code in (0, 2) and start != "multi-line" and read != "multi-line", page
        if code == 0:  # verify says ok only where every image still reads the same (an unused page)
            assert start == "ok" and read == "same", page
        else:  # found by verify; the trainer stops with one line at start or when it reads the level
            assert start == "refused" or read == "stopped", page
    assert sum(code == 2 for _, code, *_ in rows) >= len(rows) * 3 // 4


def point_index_outside_the_file(db, resolution, index) -> None:
    """Damage LMDB's own index as random bytes over a leaf page sometimes do (a sweep with other
    seeds found it): the page holding a record keeps its header, but each of its node offsets
    points 65,520 bytes on, past the end of the file. A key lookup that reaches the page then
    reads there: SIGBUS, inside LMDB, uncatchable in the process."""
    page = page_of(db, resolution, index)
    data = bytearray((db / "data.mdb").read_bytes())
    assert page * PAGE + 0xFFF0 > len(data), "the record's page must lie within 64 KiB of the file's end"
    lower = int.from_bytes(data[page * PAGE + 12:page * PAGE + 14], "little")  # header: pgno, pad, flags, lower, upper
    for node in range((lower - 16) // 2):
        data[page * PAGE + 16 + 2 * node:page * PAGE + 18 + 2 * node] = (0xFFF0).to_bytes(2, "little")
    (db / "data.mdb").write_bytes(bytes(data))


@pytest.mark.slow
def test_a_damaged_index_that_crashes_lmdb_is_one_line_from_every_command(demo_lmdb, tmp_path):
    db = copy_db(demo_lmdb, tmp_path)
    point_index_outside_the_file(db, 16, 63)
    # In-process, the read dies of a signal: why the scans run in child processes.
    proc = run_cli(["-c", f"from progan.data.integrity import verify; verify({str(db)!r}, isolated=False)"], check=False)
    assert proc.returncode < 0 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    crashed = r"crashed the reader \(SIG[A-Z]+: LMDB met a damaged page of its own index on the way to it\)"

    proc = run_cli(["-m", "data_prep", "verify", str(db)], check=False)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("verify:")]  # not the progress line
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert re.fullmatch(rf"bad: level 16x16 image (\d+) \(record 16-000000\1\): {crashed}; "
                        r"the rest of this level was not checked", lines[0]), lines[0]
    assert re.fullmatch(rf"data_prep verify: error: {re.escape(str(db))}: 1 bad record\(s\) of \d+ \(1 at 16x16\), "
                        r"listed above; .*", lines[1]), lines[1]
    report = verify(db)  # the API alike; the levels before the crash read whole
    assert [(bad.resolution, bad.reason.startswith("crashed the reader (SIG")) for bad in report.bad] == [(16, True)]
    assert 128 <= report.records < 192

    one_line = rf"{re.escape(str(db))}: record 16-\d+ {crashed} \(image \d+ at 16x16\); run `python -m data_prep verify"
    with pytest.raises(DatasetError, match=one_line):
        check_levels(db, [4, 8, 16])
    check_levels(db, [4, 8])  # the levels it is not on are fine
    for command in (["train.py", "--data", str(db), "--out", str(tmp_path / "run"), "--config", "small",
                     "--resolution", "16", "--dry-run"],
                    ["-m", "data_prep", "preview", str(db), "--res", "16", "--out", str(tmp_path / "grid.png")],
                    ["-m", "progan.metrics", "swd", "--real", str(db), "--fake", str(demo_lmdb), "--num", "16",
                     "--no-log"]):
        proc = run_cli(command, check=False)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and re.search(one_line, err[0]), (command, proc.stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "grid.png").exists()

    from progan.data.background_check import BackgroundCheck
    check = BackgroundCheck(db, [8, 16]).start()
    assert check.join(30) and re.match(one_line, check.failure) and "\n" not in check.failure, check.failure


def test_a_scan_killed_from_outside_is_no_verdict_on_the_database(demo_lmdb, monkeypatch):
    """Only the deaths a read inside LMDB can die (SIGBUS, SIGSEGV, SIGABRT) name a record as
    damaged; a child the OOM killer or a user kills says so and asks for a rerun."""
    import signal

    from progan.data import integrity

    scan = integrity.run_scan_child

    def killed_at_start(args, on_event, **options):
        return scan(args, on_event, on_start=lambda child: os.kill(child.pid, signal.SIGKILL))

    monkeypatch.setattr(integrity, "run_scan_child", killed_at_start)
    for check in (lambda: verify(demo_lmdb), lambda: check_levels(demo_lmdb, [4, 8, 16])):
        with pytest.raises(DatasetError, match=r"of the database did not finish \(killed by SIGKILL\); run it again$"):
            check()


def test_a_build_resumed_from_chunks_without_checksums_gets_its_tables(tmp_path):
    # A build interrupted under a progan without checksums, finished by this one: the chunk
    # records lack crc32 lists, so finish() reads those records back.
    from progan.data.writer import DatasetWriter
    from progan.data.format import ImageRecord, chunk_key

    rng = np.random.default_rng(0)
    images = [ImageRecord(f"{i}", [rng.bytes(48), rng.bytes(192)], "00" * 32) for i in range(6)]
    with DatasetWriter(tmp_path / "db.lmdb") as writer:
        writer.start({"resolutions": [4, 8], "encoding": "raw"})
        writer.commit_chunk(3, images[:3], [])
        with writer.env.begin(write=True) as txn:
            record = json.loads(txn.get(chunk_key(0)))
            del record["crc32"]
            txn.put(chunk_key(0), canonical_json(record))
        writer.commit_chunk(6, images[3:], [])
        writer.finish()
    report = verify(tmp_path / "db.lmdb")
    assert report.checksums and report.records == 12 and not report.bad and report.stray is None
    env = lmdb.open(str(tmp_path / "db.lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        table = np.frombuffer(txn.get(checksum_key(8)), "<u4")
    env.close()
    assert list(table) == [zlib.crc32(image.levels[1]) for image in images]


# -- a data file cut short ------------------------------------------------------------------
# Each case runs in a child process: were a read to touch the map past the end of the file, the
# process would die of SIGBUS (exit -7 here), which a test in this process could not report.
TRUNCATE = r'''
import contextlib, io, json, os, shutil, sys
import numpy as np
from data_prep.cli import main as data_prep
from progan.data.format import DatasetError
from progan.data.reader import MultiResolutionDataset
from progan.data.integrity import verify
sys.path.insert(0, os.getcwd())
from progan.metrics.cli import main as metrics
from train import main as train

good, work, faces = sys.argv[1], sys.argv[2], sys.argv[3]
sizes = [int(s) for s in sys.argv[4].split(",")]

def quiet(function, *args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = function([str(a) for a in args])
    return [code, err.getvalue().strip().splitlines()]

rows = {}
for size in sizes:
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    shutil.copy(os.path.join(good, "data.mdb"), os.path.join(work, "data.mdb"))
    os.truncate(os.path.join(work, "data.mdb"), size)
    rows[size] = {
        "info": quiet(data_prep, "info", work),
        "verify": quiet(data_prep, "verify", work),
        "preview": quiet(data_prep, "preview", work, "--res", 8, "--out", work + "-grid.png"),
        "build": quiet(data_prep, "build", faces, work, "--max-res", 16, "--workers", 1),
        "train": quiet(train, "--data", work, "--out", work + "-run", "--config", "small", "--dry-run"),
        "metrics": quiet(metrics, "swd", "--real", good, "--fake", work, "--num", 16, "--no-log"),
        "size_after": os.path.getsize(os.path.join(work, "data.mdb")),
    }

# Cut while open: a streamed level read after the cut, verify cut half-way through.
shutil.copy(os.path.join(good, "data.mdb"), os.path.join(work, "data.mdb"))
data_file = os.path.join(work, "data.mdb")
dataset = MultiResolutionDataset(work, 16, memory_budget_bytes=0)
first = dataset.get_batch(np.arange(8)).shape
os.truncate(data_file, os.path.getsize(data_file) // 2)
try:
    dataset.get_batch(np.arange(64))
    open_read = "read"
except DatasetError as error:
    open_read = str(error)
dataset.close()
shutil.copy(os.path.join(good, "data.mdb"), data_file)
seen = []
def cut_midway(records):
    seen.extend([1] * records)
    if len(seen) == 100:
        os.truncate(data_file, 3 * 4096)
try:
    verify(work, on_record=cut_midway, isolated=False)  # in-process: told of each record as it is read
    verify_cut = "finished"
except DatasetError as error:
    verify_cut = str(error)
print(json.dumps({"rows": rows, "first": list(first), "open_read": open_read, "verify_cut": verify_cut,
                  "verify_records": len(seen)}))
'''


def test_a_cut_file_is_one_line_from_every_command_at_any_size(demo_lmdb, tmp_path):
    full = (demo_lmdb / "data.mdb").stat().st_size
    sizes = sorted({0, 100, 4096, 8192, 100_000, 300_000, 500_000, full // 4, full // 2, full - 4096, full - 1}
                   - {s for s in (100_000, 300_000, 500_000) if s >= full})
    (tmp_path / "cut.py").write_text(TRUNCATE)
    faces = demo_lmdb.parent / "faces"
    proc = run_cli([str(tmp_path / "cut.py"), str(demo_lmdb), str(tmp_path / "cut.lmdb"), str(faces),
                    ",".join(map(str, sizes))], timeout=300)
    result = json.loads(proc.stdout)
    for size in sizes:
        row = result["rows"][str(size)]
        for command in ("info", "verify", "preview", "build", "train", "metrics"):
            code, err = row[command]
            assert code == 2 and len(err) == 1, (size, command, err)
            assert f"data.mdb is cut short ({size:,} of the " in err[0], (size, command, err)
        assert "copy it again, or delete it and build it again" in row["info"][1][0]
        assert row["size_after"] == size  # the build refused: nothing written over what is there
    assert result["first"] == [8, 3, 16, 16]
    assert "data.mdb is cut short (" in result["open_read"] and "\n" not in result["open_read"]
    assert "data.mdb is cut short (12,288 of the" in result["verify_cut"] and result["verify_records"] == 100


# -- the background check during training ---------------------------------------------------
def test_background_check_finds_a_record_the_start_check_does_not_sample(demo_lmdb, tmp_path):
    from progan.data.background_check import BackgroundCheck

    db = copy_db(demo_lmdb, tmp_path)
    flip_pixel_byte(db, 16, 5)  # not among the start check's 16 samples
    check_levels(db, [4, 8, 16])
    clean = BackgroundCheck(db, [4, 8]).start()
    assert clean.join(30) and clean.failure is None and clean.records == 128 and clean.done
    called = []
    check = BackgroundCheck(db, [4, 8, 16], on_failure=lambda: called.append(1)).start()
    assert check.join(30) and called == [1] and not check.done
    assert check.failure == (f"{db}: record 16-00000005 fails its crc32 checksum (its bytes changed since the build) "
                             f"(image 5 at 16x16); run `python -m data_prep verify {db}` to list every bad record")
    # Processes of a node split the records: the one holding odd indices finds image 5, the other does not.
    even, odd = BackgroundCheck(db, [16], share=(0, 2)).start(), BackgroundCheck(db, [16], share=(1, 2)).start()
    assert even.join(30) and odd.join(30)
    assert even.failure is None and even.records == 32 and "record 16-00000005" in odd.failure


def test_background_check_stops_on_a_file_cut_while_it_reads(demo_lmdb, tmp_path):
    from progan.data.background_check import BackgroundCheck

    db = copy_db(demo_lmdb, tmp_path)
    check = BackgroundCheck(db, [16])
    os.truncate(db / "data.mdb", (db / "data.mdb").stat().st_size // 2)
    check.start()
    assert check.join(30) and "data.mdb is cut short" in check.failure and check.records == 0


def test_a_loader_worker_reading_a_file_cut_under_it_stops_with_one_line(demo_lmdb, tmp_path):
    db = copy_db(demo_lmdb, tmp_path)
    order = DataOrder(seed=0, num_images=64)
    streamed = RealImages(str(db), 16, order, 0, 8, slice(None), workers=1, memory_budget=0)
    assert streamed.next().shape == (8, 3, 16, 16)
    os.truncate(db / "data.mdb", 5 * PAGE)
    with pytest.raises(DatasetError, match=r"data.mdb is cut short \(20,480 of the") as info:
        for _ in range(50):  # batches the worker read ahead before the cut come first
            streamed.next()
    assert "\n" not in str(info.value)


TINY_RUN = ["--config", "small", "--resolution", "16", "--batch", "4:16,8:16,16:16", "--tick-kimg", "0.032",
            "--workers", "0"]


@pytest.mark.slow
def test_training_stops_early_on_damage_in_a_later_level_found_by_the_background_check(demo_lmdb, tmp_path):
    from progan.generator.checkpoints import find_latest_checkpoint

    db = copy_db(demo_lmdb, tmp_path)
    flip_pixel_byte(db, 16, 5)  # the start check does not sample image 5; the 16x16 level starts at 1.536 kimg
    run = tmp_path / "run"
    proc = run_cli(["train.py", "--data", str(db), "--out", str(run), *TINY_RUN, "--stable-kimg", "0.512",
                    "--fade-kimg", "0.512"], check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert err[-1].startswith(
        f"train.py: error: {db}: record 16-00000005 fails its crc32 checksum (its bytes changed since the build) "
        f"(image 5 at 16x16); run `python -m data_prep verify {db}` to list every bad record (found by the "
        "background check; stopped at ")
    latest = find_latest_checkpoint(run)  # the work done is kept: rebuild the database, then --resume auto
    assert latest is not None and int(latest.stem.split("-")[1]) < 1536
    assert "res 16" not in proc.stdout and "16x16 from" not in proc.stdout


@pytest.mark.slow
def test_training_stops_with_one_line_when_its_database_is_cut_while_it_runs(demo_lmdb, tmp_path):
    db = copy_db(demo_lmdb, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", "--data", str(db), "--out", str(tmp_path / "run"), *TINY_RUN,
                             "--stable-kimg", "0.32", "--fade-kimg", "0.32"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the first tick: the 4x4 level is in memory, 8x8 and 16x16 are read later
        if line.startswith("tick 1"):
            os.truncate(db / "data.mdb", 300_000 if (db / "data.mdb").stat().st_size > 300_000 else 8 * PAGE)
            break
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert lines[-1].startswith(f"train.py: error: {db}: data.mdb is cut short (") and "bytes its database needs" in lines[-1]


@pytest.mark.slow
def test_damage_found_by_one_process_stops_both_with_one_line(demo_lmdb, tmp_path):
    # Two processes on a node check alternate records: image 5 is process 1's. Its finding stops
    # both at the same step (the stop flag rides the gradient all-reduce) and process 0 says it once.
    from progan.generator.checkpoints import find_latest_checkpoint

    db = copy_db(demo_lmdb, tmp_path)
    flip_pixel_byte(db, 16, 5)
    run = tmp_path / "run"
    launch = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", "127.0.0.1:0", str(REPO / "train.py")]
    proc = run_cli([*launch, "--data", str(db), "--out", str(run), *TINY_RUN, "--stable-kimg", "0.512",
                    "--fade-kimg", "0.512"], check=False, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exitcode  : 2" in output, output  # torchrun exits 1, a worker 2
    assert f'File "{REPO / "progan"}' not in output and f'File "{REPO / "train.py"}' not in output  # torchrun's own traceback only
    assert output.count("train.py: error: ") == 1, output
    assert f"{db}: record 16-00000005 fails its crc32 checksum" in output and "found by the background check" in output
    latest = find_latest_checkpoint(run)
    assert latest is not None and int(latest.stem.split("-")[1]) < 1536
