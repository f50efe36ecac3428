"""`python -m data_prep`: building from real-world folders, hostile files, resume, tools."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from conftest_data import (
    REPO,
    all_records,
    exif_rotated_jpeg,
    noise,
    run_cli,
    run_cli_subprocess,
    save,
    solid,
    write_hostile_files,
)
import data_prep.build
from data_prep.build import STALL_MESSAGE
from progan.data.format import DatasetError, ImageRecord
from progan.data.writer import DatasetWriter
from progan.data.reader import MultiResolutionDataset, dataset_fingerprint, read_metadata
from progan.runtime.progress import Progress


def top_level(db: Path, index: int, res: int = 32) -> np.ndarray:
    """Stored image `index` at `res` as int [R, R, 3]."""
    return MultiResolutionDataset(db, res, memory_budget_bytes=0)[index].numpy().transpose(1, 2, 0).astype(int)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def wait_until_gone(text: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while processes_mentioning(text):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_colour(pixels: np.ndarray, colour, tolerance: int = 1) -> None:
    difference = np.abs(pixels.reshape(-1, 3) - np.array(colour)).max()
    assert difference <= tolerance, f"{pixels.reshape(-1, 3)[0]} is not {colour}"


# ----------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory) -> Path:
    """Every colour mode and format a photo folder holds, in several sizes and folders."""
    root = tmp_path_factory.mktemp("mixed")
    exact = noise(32, 7)
    save(exact, root / "a_exact.png")
    wide = np.zeros((64, 96, 3), np.uint8)
    wide[:, :16], wide[:, 16:80], wide[:, 80:] = (255, 0, 0), (0, 200, 0), (0, 0, 255)
    save(Image.fromarray(wide), root / "b_wide.png")
    save(Image.fromarray(wide.transpose(1, 0, 2).copy()), root / "c_tall.bmp")
    save(solid("L", (40, 40), 100), root / "grey" / "d_gray.jpg", quality=100)
    palette = Image.new("P", (48, 48), 0)
    palette.putpalette([10, 20, 200] + [0] * 765)
    save(palette, root / "grey" / "e_palette.png")
    transparent = Image.new("P", (48, 48), 0)
    transparent.putpalette([10, 20, 200] + [0] * 765)
    save(transparent, root / "f_palette_transparent.png", transparency=0)
    save(solid("RGBA", (40, 40), (0, 0, 0, 128)), root / "g_rgba_half.png")
    save(solid("LA", (40, 40), (0, 0)), root / "h_la_clear.png")
    save(solid("CMYK", (40, 40), (0, 255, 255, 0)), root / "i_cmyk.jpg", quality=100)
    save(Image.fromarray(np.full((40, 40), 0x8000, np.uint16)), root / "j_gray16.png")
    save(Image.fromarray(np.full((40, 40), 0xC0FF, np.uint16)), root / "k_gray16.tif")
    save(solid("RGB", (40, 40), (255, 0, 0)), root / "l_animated.gif", save_all=True,
         append_images=[solid("RGB", (40, 40), (0, 0, 255))], duration=100)
    save(solid("RGB", (40, 40), (0, 255, 0)), root / "m_pages.tiff", save_all=True,
         append_images=[solid("RGB", (40, 40), (255, 0, 0))])
    save(solid("RGB", (40, 40), (40, 50, 60)), root / "n_lossless.webp", lossless=True)
    save(solid("1", (40, 40), 1), root / "o_bilevel.png")
    exif_rotated_jpeg(root / "p_rotated.JPG", orientation=6)
    save(solid("RGB", (300, 200), (200, 120, 40)), root / "q_big.jpeg", quality=100)  # decoded at 1/2
    (root / "README.txt").write_text("not an image; ignored")
    (root / "grey" / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0")
    return root


@pytest.fixture(scope="module")
def mixed_db(mixed_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "mixed.lmdb"
    from data_prep.cli import main

    assert main(["build", str(mixed_source), str(out), "--max-res", "32", "--workers", "2"]) == 0
    return out


def test_sources_are_every_image_in_sorted_relative_order(mixed_db):
    metadata = read_metadata(mixed_db)
    assert metadata["sources"] == [
        "a_exact.png", "b_wide.png", "c_tall.bmp", "f_palette_transparent.png", "g_rgba_half.png",
        "grey/d_gray.jpg", "grey/e_palette.png", "h_la_clear.png", "i_cmyk.jpg", "j_gray16.png",
        "k_gray16.tif", "l_animated.gif", "m_pages.tiff", "n_lossless.webp", "o_bilevel.png",
        "p_rotated.JPG", "q_big.jpeg",
    ]
    assert metadata["count"] == 17 and metadata["skipped"] == []
    assert metadata["resolutions"] == [4, 8, 16, 32] and metadata["channels"] == 3


def test_every_mode_becomes_the_expected_rgb(mixed_db):
    index = {name: i for i, name in enumerate(read_metadata(mixed_db)["sources"])}
    np.testing.assert_array_equal(top_level(mixed_db, index["a_exact.png"]), np.asarray(noise(32, 7)))
    assert_colour(top_level(mixed_db, index["b_wide.png"])[:, 4:28], (0, 200, 0))  # centre crop
    assert_colour(top_level(mixed_db, index["c_tall.bmp"])[4:28], (0, 200, 0))
    assert_colour(top_level(mixed_db, index["grey/d_gray.jpg"]), (100, 100, 100))
    assert_colour(top_level(mixed_db, index["grey/e_palette.png"]), (10, 20, 200))
    assert_colour(top_level(mixed_db, index["f_palette_transparent.png"]), (255, 255, 255))  # on white
    assert_colour(top_level(mixed_db, index["g_rgba_half.png"]), (127, 127, 127))
    assert_colour(top_level(mixed_db, index["h_la_clear.png"]), (255, 255, 255))
    assert_colour(top_level(mixed_db, index["i_cmyk.jpg"]), (255, 0, 0), tolerance=2)
    assert_colour(top_level(mixed_db, index["j_gray16.png"]), (128, 128, 128), tolerance=0)  # high byte
    assert_colour(top_level(mixed_db, index["k_gray16.tif"]), (192, 192, 192), tolerance=0)
    assert_colour(top_level(mixed_db, index["l_animated.gif"]), (255, 0, 0))  # first frame
    assert_colour(top_level(mixed_db, index["m_pages.tiff"]), (0, 255, 0))  # first page
    assert_colour(top_level(mixed_db, index["n_lossless.webp"]), (40, 50, 60), tolerance=0)
    assert_colour(top_level(mixed_db, index["o_bilevel.png"]), (255, 255, 255), tolerance=0)
    assert_colour(top_level(mixed_db, index["q_big.jpeg"]), (200, 120, 40), tolerance=2)


def test_exif_orientation_is_applied(mixed_db):
    # Orientation 6 shows the 128x64 picture turned 90 degrees clockwise: red on top, blue below.
    rotated = top_level(mixed_db, read_metadata(mixed_db)["sources"].index("p_rotated.JPG"))
    assert rotated[:12, :, 0].mean() > 200 and rotated[:12, :, 2].mean() < 50
    assert rotated[20:, :, 2].mean() > 200 and rotated[20:, :, 0].mean() < 50


def test_lower_levels_are_box_averages_of_the_stored_level_above(mixed_db):
    for res in (16, 8, 4):
        above = MultiResolutionDataset(mixed_db, res * 2).get_batch(range(17)).numpy().astype(np.float64)
        mean = (above[..., 0::2, 0::2] + above[..., 0::2, 1::2] + above[..., 1::2, 0::2] + above[..., 1::2, 1::2]) / 4
        stored = MultiResolutionDataset(mixed_db, res).get_batch(range(17)).numpy()
        np.testing.assert_array_equal(stored, np.floor(mean + 0.5))


def test_identical_builds_are_identical(mixed_source, mixed_db, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "build", mixed_source, tmp_path / "again.lmdb", "--max-res", 32, "--workers", 1)
    assert code == 0
    assert all_records(tmp_path / "again.lmdb") == all_records(mixed_db)
    assert dataset_fingerprint(tmp_path / "again.lmdb") == dataset_fingerprint(mixed_db)


# ----------------------------------------------------------------------------- bad input


def test_hostile_files_are_skipped_with_reasons(tmp_path, capsys):
    source = tmp_path / "src"
    expected = write_hostile_files(source)
    save(noise(40, 3), source / "good.png")
    code, out, err = run_cli(capsys, "build", source, tmp_path / "out.lmdb", "--max-res", 32, "--workers", 2)
    assert code == 0
    metadata = read_metadata(tmp_path / "out.lmdb")
    assert metadata["sources"] == ["good.png"]
    reasons = {skip["path"]: skip["reason"] for skip in metadata["skipped"]}
    assert sorted(reasons) == sorted(expected)
    for path, start in expected.items():
        assert reasons[path].startswith(start), (path, reasons[path])
        assert f"skipped {path}: {start}" in err
    assert f"skipped {len(expected)} files" in out
    assert "Traceback" not in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_skip_lines_do_not_mangle_a_terminal_progress_bar():
    """Progress.write (used for "skipped ..." lines): clear the bar, print the line, redraw the bar."""
    terminal = _Terminal()
    with Progress(4, "build", stream=terminal) as progress:
        progress.update(2)
        start = len(terminal.getvalue())
        progress.write("skipped x.png: too small")
        written = terminal.getvalue()[start:]
    assert written.startswith("\r\033[Kskipped x.png: too small\n\r\033[Kbuild: [")
    assert "2/4 img" in written.split("\n")[1]
    log = io.StringIO()
    with Progress(4, "build", stream=log) as progress:
        progress.write("skipped x.png: too small")
    assert log.getvalue().splitlines()[0] == "skipped x.png: too small"  # no escape codes in a log


def test_nothing_usable_fails_with_one_line_and_leaves_nothing(tmp_path, capsys):
    source = tmp_path / "src"
    write_hostile_files(source)
    code, out, err = run_cli(capsys, "build", source, tmp_path / "out.lmdb", "--max-res", 32, "--workers", 2)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("data_prep build: error: ") and "no usable images" in last and "1 too small" in last
    assert not (tmp_path / "out.lmdb").exists()


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda p: p / "missing", "no such folder"),
        (lambda p: save(noise(8, 0), p / "file.png"), "must be a folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no image files found"),
    ],
)
def test_unusable_source_fails_with_one_line(tmp_path, capsys, make_source, message):
    code, out, err = run_cli(capsys, "build", make_source(tmp_path), tmp_path / "out.lmdb", "--max-res", 32)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out.lmdb").exists()


@pytest.mark.parametrize("flags", [["--max-res", "48"], ["--max-res", "2048"], ["--max-res", "32", "--min-res", "3"],
                                   ["--max-res", "32", "--workers", "0"], ["--max-res", "32", "--encoding", "gif"]])
def test_bad_flags_are_refused(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "build", tmp_path, tmp_path / "out.lmdb", *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # no usage block
    assert err.startswith("python -m data_prep build: error: argument") and "--help" in err


def test_output_that_is_not_a_dataset_is_refused(tmp_path, capsys):
    source = tmp_path / "src"
    save(noise(32, 0), source / "x.png")
    occupied = tmp_path / "occupied"
    save(noise(8, 0), occupied / "precious.png")
    code, _, err = run_cli(capsys, "build", source, occupied, "--max-res", 32)
    assert code == 2 and "not empty" in err
    assert (occupied / "precious.png").exists() and not (occupied / "data.mdb").exists()


# ----------------------------------------------------------------------------- options


def test_crop_none_skips_non_square_images(tmp_path, capsys):
    source = tmp_path / "src"
    save(noise(32, 0), source / "square.png")
    save(solid("RGB", (48, 32), (1, 2, 3)), source / "wide.png")
    code, _, _ = run_cli(capsys, "build", source, tmp_path / "out.lmdb", "--max-res", 32, "--crop", "none")
    assert code == 0
    metadata = read_metadata(tmp_path / "out.lmdb")
    assert metadata["sources"] == ["square.png"]
    assert metadata["skipped"][0]["reason"].startswith("not square: 48x32")


def test_upscale_keeps_small_images(tmp_path, capsys):
    source = tmp_path / "src"
    save(solid("RGB", (20, 24), (9, 99, 199)), source / "small.png")
    code, _, _ = run_cli(capsys, "build", source, tmp_path / "out.lmdb", "--max-res", 32, "--upscale")
    assert code == 0
    assert_colour(top_level(tmp_path / "out.lmdb", 0), (9, 99, 199))


def test_limit_counts_images_not_files(tmp_path, capsys):
    source = tmp_path / "src"
    for i in range(6):
        save(noise(32 if i != 1 else 8, i), source / f"{i}.png")  # 1.png is too small
    code, _, _ = run_cli(capsys, "build", source, tmp_path / "out.lmdb", "--max-res", 32, "--limit", 3)
    assert code == 0
    metadata = read_metadata(tmp_path / "out.lmdb")
    assert metadata["sources"] == ["0.png", "2.png", "3.png"]
    assert [skip["path"] for skip in metadata["skipped"]] == ["1.png"]


@pytest.mark.parametrize("encoding", ["png", "webp", "jpeg"])
def test_other_encodings_build_and_read(tmp_path, capsys, encoding):
    source = tmp_path / "src"
    save(noise(32, 4), source / "a.png")
    code, _, _ = run_cli(capsys, "build", source, tmp_path / "out.lmdb", "--max-res", 32, "--encoding", encoding)
    assert code == 0 and read_metadata(tmp_path / "out.lmdb")["encoding"] == encoding
    stored, original = top_level(tmp_path / "out.lmdb", 0), np.asarray(noise(32, 4)).astype(int)
    if encoding == "jpeg":
        assert np.abs(stored - original).mean() < 3
    else:
        np.testing.assert_array_equal(stored, original)


# ----------------------------------------------------------------------------- reruns and resume


def test_rerun_of_a_finished_build_does_nothing_and_other_options_are_refused(tmp_path, capsys, monkeypatch):
    source, out = tmp_path / "src", tmp_path / "out.lmdb"
    save(noise(32, 0), source / "a.png")
    assert run_cli(capsys, "build", source, out, "--max-res", 32)[0] == 0
    before = all_records(out)

    def no_workers(*args):
        raise AssertionError("started worker processes")

    monkeypatch.setattr(data_prep.build, "_worker_pool", no_workers)  # both answers are read-only
    code, stdout, _ = run_cli(capsys, "build", source, out, "--max-res", 32)
    assert code == 0 and "already complete" in stdout
    code, _, err = run_cli(capsys, "build", source, out, "--max-res", 16)
    assert code == 2 and "max_res: 32 recorded, 16 now" in err and "delete it or choose another OUT" in err
    save(noise(32, 1), source / "b.png")
    code, _, err = run_cli(capsys, "build", source, out, "--max-res", 32)
    assert code == 2 and "the files under SOURCE changed" in err
    assert all_records(out) == before


def test_unfinished_build_with_other_settings_is_refused(tmp_path, capsys):
    source, out = tmp_path / "src", tmp_path / "out.lmdb"
    save(noise(32, 0), source / "a.png")
    with DatasetWriter(out) as writer:
        writer.start({"resolutions": [4, 8], "encoding": "raw", "options": {"max_res": 8}})
    code, _, err = run_cli(capsys, "build", source, out, "--max-res", 32)
    assert code == 2 and "holds an unfinished build with different settings" in err
    with pytest.raises(DatasetError, match="unfinished build; rerun"):
        read_metadata(out)


def test_corrupt_build_record_is_a_one_line_error(tmp_path, capsys):
    source, out = tmp_path / "src", tmp_path / "out.lmdb"
    save(noise(32, 0), source / "a.png")
    with DatasetWriter(out) as writer:
        writer.start({"resolutions": [4, 8], "encoding": "raw", "options": {}})
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.put(b"build/state", b'{"plan": trunc')
    env.close()
    before = all_records(out)
    with pytest.raises(DatasetError, match="record build/state is corrupt"):
        DatasetWriter(out)
    code, _, err = run_cli(capsys, "build", source, out, "--max-res", 32)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out}: record build/state is corrupt (not JSON); delete {out}" in err
    assert all_records(out) == before


def test_second_writer_on_the_same_database_is_refused(tmp_path):
    second = f"from progan.data.writer import DatasetWriter; DatasetWriter({str(tmp_path / 'out.lmdb')!r})"
    with DatasetWriter(tmp_path / "out.lmdb"):
        result = subprocess.run([sys.executable, "-c", second], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "another build is writing this database" in result.stderr


def test_map_starts_small_and_grows(tmp_path):
    plan = {"resolutions": [64], "encoding": "raw", "options": {}}
    image = noise(64, 0).tobytes()
    with DatasetWriter(tmp_path / "out.lmdb", initial_map_size=64 << 10) as writer:
        writer.start(plan)
        for chunk in range(6):
            images = [ImageRecord(f"{chunk}-{i}", [image], "00" * 32) for i in range(4)]
            writer.commit_chunk(4 * (chunk + 1), images, [])
        map_size = writer.env.info()["map_size"]
        assert 24 * len(image) <= map_size <= 256 * len(image)
        writer.finish()
    dataset = MultiResolutionDataset(tmp_path / "out.lmdb", 64)
    assert len(dataset) == 24 and dataset[23].numpy().transpose(1, 2, 0).tobytes() == image


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_database(tmp_path, capsys):
    source = tmp_path / "src"
    for i in range(20):
        save(noise(32 + 8 * (i % 3), i), source / f"{i:02d}.png")
    (source / "broken.png").write_bytes(b"junk")
    args = ("build", source, tmp_path / "resumed.lmdb", "--max-res", 32, "--workers", 2)

    # Commits of 4 files each; the third commit hangs inside its write transaction.
    hook = {"PROGAN_BUILD_CHUNK_FILES": "4", "PROGAN_BUILD_STALL_AFTER_COMMITS": "2"}
    process = run_cli_subprocess(*args, env=hook)
    for line in process.stderr:
        if STALL_MESSAGE in line:
            break
    else:
        pytest.fail(f"the build never stalled: {process.communicate()}")
    os.kill(process.pid, signal.SIGKILL)  # only the main process, as `kill -9 PID` would
    assert wait_until_gone(str(source)), "worker processes outlived the killed build"
    process.communicate(timeout=30)  # orphaned workers would hold the pipes open
    with pytest.raises(DatasetError, match="unfinished build"):
        read_metadata(tmp_path / "resumed.lmdb")

    resumed = run_cli_subprocess(*args, env={"PROGAN_BUILD_CHUNK_FILES": "4"})
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resuming" in err and "8 of 21 files already done (8 images)" in err
    assert "build:" in err and "13/13 img" in err  # only the remaining files were processed

    assert run_cli(capsys, "build", source, tmp_path / "clean.lmdb", "--max-res", 32, "--workers", 2)[0] == 0
    clean, resumed_records = all_records(tmp_path / "clean.lmdb"), all_records(tmp_path / "resumed.lmdb")
    assert resumed_records == clean
    assert dataset_fingerprint(tmp_path / "resumed.lmdb") == dataset_fingerprint(tmp_path / "clean.lmdb")
    assert read_metadata(tmp_path / "clean.lmdb")["skipped"] == [{"path": "broken.png", "reason": "not an image"}]


# ----------------------------------------------------------------------------- info, verify, preview, synth


def test_info_prints_the_metadata(mixed_db, capsys):
    code, out, _ = run_cli(capsys, "info", mixed_db)
    assert code == 0 and json.loads(out) == read_metadata(mixed_db)
    code, out, _ = run_cli(capsys, "info", mixed_db, "--brief")
    assert code == 0 and json.loads(out)["sources"] == 17
    # Short lists on one line: a screenful, not one number per line.
    lines = out.splitlines()
    assert '  "resolutions": [4, 8, 16, 32],' in lines and '  "level_sizes": [[4, 4], [8, 8], [16, 16], [32, 32]],' in lines
    assert len(lines) <= 50 and max(map(len, lines)) <= 100


def test_rebuilding_a_square_database_as_another_aspect_names_it_1_1_as_info_does(tmp_path, capsys):
    source, out = tmp_path / "src", tmp_path / "out.lmdb"
    save(noise(32, 0), source / "a.png")
    assert run_cli(capsys, "build", source, out, "--max-res", 16)[0] == 0
    code, _, err = run_cli(capsys, "build", source, out, "--max-res", 16, "--aspect", "3:4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "(aspect: 1:1 recorded, 3:4 now)" in err and "None" not in err
    assert "to build it with the new settings delete it or choose another OUT" in err
    assert json.loads(run_cli(capsys, "info", out)[1])["aspect"] == "1:1"


def test_verify_accepts_a_good_database_and_names_a_bad_key(mixed_source, tmp_path, capsys):
    out = tmp_path / "out.lmdb"
    assert run_cli(capsys, "build", mixed_source, out, "--max-res", 16, "--limit", 3)[0] == 0
    code, stdout, _ = run_cli(capsys, "verify", out)
    assert code == 0 and "ok, 9 records" in stdout
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.put(b"8-00000001", b"\0" * 10)
    env.close()
    code, _, err = run_cli(capsys, "verify", out)
    assert code == 2 and "bad: level 8x8 image 1 (record 8-00000001): holds 10 bytes, expected 192" in err
    assert f"{out}: 1 bad record(s) of 9 (1 at 8x8), listed above" in err.strip().splitlines()[-1]


def test_tools_refuse_a_path_that_is_not_a_dataset(tmp_path, capsys):
    for command in (["info"], ["verify"], ["preview", "--res", "8", "--out", tmp_path / "g.png"]):
        code, _, err = run_cli(capsys, command[0], tmp_path / "nothing.lmdb", *command[1:])
        assert code == 2 and err.count("\n") == 1 and "no such file or folder" in err


def test_preview_writes_a_grid(mixed_db, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "preview", mixed_db, "--res", 16, "--out", tmp_path / "grid.png", "--count", 6)
    assert code == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 18 + 2, 3 * 18 + 2, 3)  # 2 rows x 3 columns of 16 px, 2 px padding
    first = MultiResolutionDataset(mixed_db, 16)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(grid[2:18, 2:18], first)
    code, _, err = run_cli(capsys, "preview", mixed_db, "--res", 64, "--out", tmp_path / "g.png")
    assert code == 2 and "available resolutions: 4, 8, 16, 32" in err


def test_synth_writes_face_files_that_build(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "synth", tmp_path / "faces", "--count", 5, "--size", 48, "--seed", 1, "--workers", 1)
    assert code == 0
    files = sorted(p.name for p in (tmp_path / "faces").iterdir())
    assert files == [f"face_{i:06d}.png" for i in range(5)]
    assert Image.open(tmp_path / "faces" / files[0]).size == (48, 48)
    code, _, _ = run_cli(capsys, "build", tmp_path / "faces", tmp_path / "faces.lmdb", "--max-res", 32)
    assert code == 0 and read_metadata(tmp_path / "faces.lmdb")["count"] == 5


def test_a_ctrl_c_at_any_moment_of_the_start_is_one_line(demo_lmdb):
    """SIGINT from its first line on (the imports of numpy, Pillow and lmdb take ~0.2 s): exit 130
    and one line, or a finished verify; never a KeyboardInterrupt traceback."""
    from conftest import interrupted_at

    codes = set()
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6):
        code, _, err = interrupted_at(["-m", "data_prep", "verify", str(demo_lmdb)], delay)
        assert "Traceback" not in err and code in (130, 0), (delay, code, err)
        if code == 130:
            assert "interrupted" in err.strip().splitlines()[-1], err
        codes.add(code)
    assert 130 in codes  # the handled case was met, not only the extremes
