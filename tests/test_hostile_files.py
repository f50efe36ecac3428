"""Files a hostile week hands the product (issue 25): each is refused on open in one line naming
the file and the damage, before anything is written or trained on."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from conftest import tmpfs
from legacy_fixture import FIXTURES
from progan.generator import checkpoints
from progan.generator.fileformat import CheckpointError
from progan.generator.loading import load_generator
from progan.generator.safetensors_file import write_safetensors

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def a_run_with(tmp_path: Path, change) -> tuple[Path, dict]:
    """A run folder whose one checkpoint is the fixture's, changed by `change(state)` and saved by
    the real writer (so its checksums match the change: an edit, not a flipped bit)."""
    state = checkpoints.load_checkpoint(FIXTURES / "training.pt")
    state = {k: v for k, v in state.items() if k not in ("format", "format_version", "kind", "checksums")}
    change(state)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoints.save_training_checkpoint(run_dir, state)
    return run_dir, state


def first_tensor(state: dict, key: str) -> tuple[str, torch.Tensor]:
    name = next(n for n, t in state[key].items() if t.is_floating_point() and t.numel() > 1)
    return name, state[key][name]


# -- 8: non-finite weights -------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("generator_ema", float("nan")), ("generator", float("inf")),
                                        ("discriminator", float("nan"))])
def test_a_checkpoint_with_non_finite_weights_is_refused_by_name(tmp_path, key, value):
    def poison(state):
        name, tensor = first_tensor(state, key)
        tensor.view(-1)[3] = value

    run_dir, state = a_run_with(tmp_path, poison)
    name, _ = first_tensor(state, key)
    with pytest.raises(CheckpointError, match=rf"is damaged: {key}/{name} holds non-finite values"):
        checkpoints.load_checkpoint(run_dir)
    path, data, skipped = checkpoints.load_newest_readable(run_dir)  # --resume auto: not resumed from
    assert data is None and "non-finite" in skipped[0][1]


def test_generate_refuses_a_nan_generator_instead_of_drawing_black_images(tmp_path):
    run_dir, _ = a_run_with(tmp_path, lambda s: first_tensor(s, "generator_ema")[1].view(-1).__setitem__(0, float("nan")))
    done = run(REPO / "generate.py", run_dir, "--out", tmp_path / "samples", "--seeds", "0-3")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "holds non-finite values" in done.stderr and "generator_ema/" in done.stderr
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())


def test_a_safetensors_export_with_a_nan_is_refused(tmp_path):
    data = checkpoints.load_checkpoint(FIXTURES / "generator.safetensors")
    name, tensor = first_tensor(data, "generator_ema")
    tensor.view(-1)[0] = float("nan")
    write_safetensors(data, tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError, match=f"generator_ema/{name} holds non-finite values"):
        load_generator(tmp_path / "g.safetensors")


def test_finite_files_still_load():
    for name in ("training.pt", "generator.pt", "generator.safetensors"):
        G, _ = load_generator(FIXTURES / name)
        assert all(bool(torch.isfinite(p).all()) for p in G.parameters())


# -- 11: a raw pickle is one line ------------------------------------------------------------
def test_a_raw_pickle_in_place_of_a_checkpoint_is_one_line_and_never_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "ran"
    # protocol 4 and an OrderedDict: torch's loader warns (two lines) before it refuses
    (run_dir / "checkpoint-0000000064.pt").write_bytes(pickle.dumps(OrderedDict(a=1), protocol=4))
    done = run(REPO / "generate.py", "info", run_dir)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "not a readable checkpoint" in done.stderr and "Warning" not in done.stderr
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # os.system("touch ...")
    done = run(REPO / "generate.py", "info", evil)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "was refused" in done.stderr and not marker.exists()


# -- the manual's Python example on a CPU-only install ---------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine does not have")
def test_asking_for_a_gpu_without_one_is_one_line_and_auto_takes_the_cpu():
    from progan.runtime.errors import CommandLineError

    with pytest.raises(CommandLineError, match=r"^device='cuda': no CUDA device is available to this torch; "
                                               r"use device='cpu' or device='auto'$"):
        load_generator(FIXTURES / "generator.pt", device="cuda")  # was torch's AssertionError
    G, _ = load_generator(FIXTURES / "generator.pt", device="auto")
    assert next(G.parameters()).device.type == "cpu"
    with pytest.raises(CommandLineError, match="device='gpu0': not a device name"):
        load_generator(FIXTURES / "generator.pt", device="gpu0")


# -- 6: damaged metadata, everywhere ---------------------------------------------------------
def with_metadata(demo_lmdb: Path, tmp_path: Path, change) -> Path:
    """A copy of the demo database whose metadata record is `change(metadata)` (a hand edit)."""
    import lmdb

    db = tmp_path / "edited.lmdb"
    shutil.copytree(demo_lmdb, db)
    env = lmdb.open(str(db), map_size=64 << 20)
    with env.begin(write=True) as txn:
        metadata = json.loads(txn.get(b"meta"))
        change(metadata)
        txn.put(b"meta", json.dumps(metadata).encode())
    env.close()
    return db


def flipped_key(demo_lmdb: Path, tmp_path: Path) -> Path:
    """One bit of the metadata's "resolutions" key flipped in data.mdb itself (in every copy on its pages)."""
    db = tmp_path / "flipped.lmdb"
    shutil.copytree(demo_lmdb, db)
    raw = (db / "data.mdb").read_bytes()
    key = b'"resolutions"'
    assert key in raw
    (db / "data.mdb").write_bytes(raw.replace(key, b'"resolutionr"'))  # s ^ 0x01 = r, in every copy on the pages
    return db


DAMAGE = {
    "count a string": (lambda m: m.update(count="64"), "'count' is \"64\", not a number of images"),
    "an unknown aspect": (lambda m: m.update(aspect="5:7"), "'aspect' is \"5:7\", not one of 1:1"),
    "resolutions gone": (lambda m: m.pop("resolutions"), "'resolutions' is missing, not a list of resolutions"),
    "a resolution of 12": (lambda m: m.update(resolutions=[4, 8, 12]), "'resolutions' is [4, 8, 12], not a list"),
    "no checksum table": (lambda m: m["checksums"]["tables"].pop("8"), "'checksums' is "),
    "an unknown encoding": (lambda m: m.update(encoding="bmp"), "'encoding' is \"bmp\", not one of raw"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_metadata_is_one_line_on_open(demo_lmdb, tmp_path, damage):
    from progan.data.format import DatasetError
    from progan.data.reader import MultiResolutionDataset, read_metadata

    change, message = DAMAGE[damage]
    db = with_metadata(demo_lmdb, tmp_path, change)
    for open_it in (read_metadata, lambda p: MultiResolutionDataset(p, 4)):
        with pytest.raises(DatasetError) as caught:
            open_it(db)
        assert str(caught.value).startswith(f"{db}: metadata damaged: {message}"), str(caught.value)


@pytest.mark.slow
def test_every_command_says_the_metadata_is_damaged_in_one_line(demo_lmdb, tmp_path):
    """verify, info, preview, train.py and metrics: exit 2 and one line (were KeyError and
    TypeError tracebacks, exit 1, and `info` said nothing at all)."""
    dbs = {"flipped": flipped_key(demo_lmdb, tmp_path), "edited": with_metadata(demo_lmdb, tmp_path, DAMAGE["count a string"][0])}
    for db in dbs.values():
        commands = [("-m", "data_prep", "verify", db), ("-m", "data_prep", "info", db),
                    ("-m", "data_prep", "preview", db, "--res", "8", "--out", tmp_path / "p.png"),
                    (REPO / "train.py", "--data", db, "--out", tmp_path / "run", "--config", "small", "--dry-run"),
                    ("-m", "progan.metrics", "swd", "--real", db, "--fake", FIXTURES / "generator.pt", "--num", "16")]
        for command in commands:
            done = run(*command)
            assert done.returncode == 2, (command, done.stdout, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1 and "metadata damaged: " in done.stderr, (command, done.stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "p.png").exists()


# -- 15: small things said wrong -------------------------------------------------------------
def test_a_stray_file_as_a_database_is_not_an_lmdb_database(tmp_path, capsys):
    from data_prep.cli import main as data_prep
    from progan.data.format import DatasetError
    from progan.data.reader import read_metadata

    stray = tmp_path / "notlmdb.txt"
    stray.write_bytes(b"hello!")  # was: "data.mdb is cut short (6 of the 8,192 bytes ...)"
    with pytest.raises(DatasetError, match=r"notlmdb.txt: not an LMDB database \(a progan database is the folder"):
        read_metadata(stray)
    assert data_prep(["verify", str(stray)]) == 2
    assert "not an LMDB database" in capsys.readouterr().err


def test_an_empty_labels_flag_is_named_as_typed(tmp_path, capsys):
    from data_prep.cli import main as data_prep

    assert data_prep(["synth", str(tmp_path / "src"), "--count", "4", "--size", "16"]) == 0
    capsys.readouterr()
    for spec, said in (("", "--labels '': empty"), ("./missing.json", "--labels ./missing.json: cannot read it")):
        assert data_prep(["build", str(tmp_path / "src"), str(tmp_path / "out.lmdb"), "--max-res", "8",
                          "--labels", spec]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err  # Path("") printed as "--labels ."
    assert not (tmp_path / "out.lmdb").exists()


# -- 13: the database replaced under a running trainer ----------------------------------------
@pytest.mark.slow
def test_a_database_rebuilt_under_a_run_is_named_as_replaced(demo_lmdb, tmp_path):
    import time

    from progan.runtime.signals import PAUSE_ENV

    db, paused = tmp_path / "db.lmdb", tmp_path / "paused"
    shutil.copytree(demo_lmdb, db)
    tiny = ["--config", "small", "--resolution", "8", "--stable-kimg", "0.032", "--fade-kimg", "0.032",
            "--batch", "4:16,8:16", "--tick-kimg", "0.032", "--workers", "0", "--log-with", "none"]
    proc = subprocess.Popen([sys.executable, REPO / "train.py", "--data", db, "--out", tmp_path / "run", *tiny],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, PAUSE_ENV: f"phase:{paused}"})
    deadline = time.monotonic() + 120
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.exists(), proc.communicate()
    shutil.rmtree(db)  # deleted and built again, with more images, while the trainer waits at a phase change
    done = run("-m", "data_prep", "synth", tmp_path / "more", "--count", "80", "--size", "16", "--seed", "5")
    assert done.returncode == 0, done.stderr
    assert run("-m", "data_prep", "build", tmp_path / "more", db, "--max-res", "8").returncode == 0
    paused.unlink()  # go on
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "the database was replaced during the run (fingerprint " in err, err
    # was: "checksum table crc32/16 is missing or damaged; run verify" (and verify then said ok)


# -- 14: --out on a read-only file system ----------------------------------------------------
@pytest.fixture
def read_only_mount(tmp_path):
    """A real read-only tmpfs holding one folder, `existing` (root only)."""
    with tmpfs(tmp_path / "ro", "4m", prepare=lambda mount: (mount / "existing").mkdir(), read_only=True) as mount:
        yield mount


@pytest.mark.slow
def test_a_read_only_out_is_exit_4_whether_the_folder_exists_or_not(demo_lmdb, read_only_mount):
    from progan.runtime.errors import EXIT_WRITE_FAILED

    for out in (read_only_mount / "new" / "run", read_only_mount / "existing"):
        done = run(REPO / "train.py", "--data", demo_lmdb, "--out", out, "--config", "small", "--resolution", "8",
                   "--total-kimg", "0.032", "--log-with", "none")
        assert done.returncode == EXIT_WRITE_FAILED, (out, done.stderr)  # a new folder was 2, "cannot lock"
        assert len(done.stderr.strip().splitlines()) == 1 and "Read-only file system" in done.stderr, done.stderr


# -- 12: generate.py, exports and metrics on a disk that takes no writes ---------------------------
@pytest.fixture
def read_only_run(tmp_path):
    """A run folder (the fixture's checkpoint) on a real tmpfs remounted read-only (root only)."""
    def prepare(mount: Path) -> None:
        (mount / "run").mkdir()
        shutil.copy(FIXTURES / "training.pt", mount / "run" / "checkpoint-0000000200.pt")

    with tmpfs(tmp_path / "ro", "4m", prepare=prepare, read_only=True) as mount:
        yield mount / "run"


@pytest.mark.slow
def test_outputs_that_cannot_be_written_are_exit_4_naming_the_place(demo_lmdb, read_only_run):
    from progan.runtime.errors import EXIT_WRITE_FAILED

    mount = read_only_run.parent
    commands = {
        "samples": (REPO / "generate.py", read_only_run, "--out", mount / "samples", "--seeds", "0-3"),
        "export": (REPO / "generate.py", "export", read_only_run, mount / "g.safetensors"),
        "metrics.jsonl": ("-m", "progan.metrics", "swd", "--real", demo_lmdb, "--fake", read_only_run,
                          "--resolution", "8", "--num", "16"),
    }
    for what, command in commands.items():
        done = run(*command)
        assert done.returncode == EXIT_WRITE_FAILED, (what, done.stderr)  # were 2, and metrics' said no path
        last = done.stderr.strip().splitlines()[-1]  # after metrics' progress lines
        assert done.stderr.count("error:") == 1 and "error: could not write" in last, done.stderr
        assert "Read-only file system" in last and str(mount) in last and last.endswith("then rerun it"), last
    assert json.loads(done.stdout)["metric"] == "swd"  # the result is printed before the log's write fails
    assert sorted(p.name for p in mount.iterdir()) == ["run"] and not (read_only_run / "metrics.jsonl").exists()


def test_a_failed_log_line_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    import os as os_module

    from progan.runtime import fileio

    log = tmp_path / "metrics.jsonl"
    fileio.append_jsonl(log, {"a": 1})
    before = log.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full_disk)
    for path in (log, tmp_path / "new.jsonl"):
        with pytest.raises(OSError):
            fileio.append_jsonl(path, {"b": 2})
    monkeypatch.setattr(fileio.os, "fsync", os_module.fsync)
    assert log.read_bytes() == before and not (tmp_path / "new.jsonl").exists()  # was: a new empty file left


# -- 9: exports carry checksums --------------------------------------------------------------
def flip_in_file(path: Path, data: bytes, offset: int, bit: int) -> None:
    raw = path.read_bytes()
    at = raw.index(data) + offset
    path.write_bytes(raw[:at] + bytes([raw[at] ^ bit]) + raw[at + 1:])


def test_a_flipped_bit_in_a_safetensors_export_is_refused(tmp_path, capsys):
    from progan.generator.export import export_file

    path = export_file(FIXTURES / "training.pt", tmp_path / "g.safetensors")
    G, info = load_generator(path)
    assert info.checked
    name, tensor = first_tensor(dict(generator_ema=G.state_dict()), "generator_ema")
    flip_in_file(path, tensor.numpy().tobytes(), 3, 0x40)  # an exponent bit of the first float
    with pytest.raises(CheckpointError, match=rf"is damaged: generator_ema/{re.escape(name)} does not match the checksum"):
        load_generator(path)
    done = run(REPO / "generate.py", path, "--out", tmp_path / "samples", "--seeds", "0")
    assert done.returncode == 2 and "does not match the checksum" in done.stderr, done.stderr


def test_a_flipped_bit_in_an_onnx_export_is_refused(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from progan.generator.export import export_file
    from progan.generator.onnx_file import onnx_session, verify_onnx
    import onnx

    path = export_file(FIXTURES / "training.pt", tmp_path / "g.onnx")
    assert verify_onnx(path)
    weight = max(onnx.load(str(path)).graph.initializer, key=lambda i: numpy_helper.to_array(i).size)
    flip_in_file(path, numpy_helper.to_array(weight).tobytes(), 7, 0x40)
    with pytest.raises(CheckpointError, match=rf"initializers/{re.escape(weight.name)} does not match the checksum"):
        onnx_session(path)


def test_an_export_from_before_checksums_loads_with_a_note(tmp_path):
    _, info = load_generator(FIXTURES / "generator.safetensors")  # written at dd09d66: no checksums
    assert not info.checked
    done = run(REPO / "generate.py", FIXTURES / "generator.safetensors", "--out", tmp_path / "s", "--seeds", "0")
    assert done.returncode == 0, done.stderr
    assert "note: " in done.stderr and "carries no checksums" in done.stderr and "loaded unchecked" in done.stderr


def test_a_failed_log_line_never_cuts_a_line_another_process_appended(tmp_path, monkeypatch):
    from progan.runtime import fileio

    log = tmp_path / "metrics.jsonl"
    fileio.append_jsonl(log, {"a": 1})

    def other_process_appends_then_disk_full(fd):
        with open(log, "a") as other:  # a second metrics run's line lands between our write and its sync
            other.write(json.dumps({"other": 2}) + "\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", other_process_appends_then_disk_full)
    with pytest.raises(OSError):
        fileio.append_jsonl(log, {"b": 3})
    assert '{"other": 2}' in log.read_text() and log.read_text().startswith('{"a": 1}\n')
