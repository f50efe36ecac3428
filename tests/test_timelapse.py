"""generate.py timelapse: a run's sample grids as one labelled animation at the final size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_generate import assert_one_line_error, cli, read_frames
from test_training import TINY, train_cli

from progan.images import save_png
from progan.setup_run import prepare_run
from progan.timelapse import find_snapshots

# TINY: 4x4 stable to 64 images, fade into 8x8 to 192, then 8x8 stable; grids of 8x8 cells.
STAGES = {32: (4, 1.0), 128: (8, 0.5), 256: (8, 1.0)}


def cell_colour(index: int, resolution: int) -> tuple[int, int, int]:
    return (index * 4, 255 - index * 4, resolution * 20)


@pytest.fixture
def fake_run(demo_lmdb, tmp_path):
    """A run folder with the config of TINY and flat-coloured grids: cell i of the grid at
    resolution r is cell_colour(i, r), so each cell's latent is known in every frame."""
    run = tmp_path / "run"
    run.mkdir()
    from train import build_parser

    plan = prepare_run(vars(build_parser().parse_args(["--data", str(demo_lmdb), "--out", str(tmp_path / "x"), *TINY])))
    (run / "config.json").write_text(plan.config.to_json())
    for images, (res, _) in STAGES.items():
        grid = np.zeros((8 * res, 8 * res, 3), np.uint8)
        for i in range(64):
            grid[(i // 8) * res:(i // 8 + 1) * res, (i % 8) * res:(i % 8 + 1) * res] = cell_colour(i, res)
        save_png(grid, run / f"samples-{images:010d}.png")
    save_png(grid, run / "samples-latest.png")  # not a snapshot: skipped
    return run


def test_snapshots_know_their_stage(fake_run):
    snaps = find_snapshots(fake_run)
    assert [s.images_shown for s in snaps] == list(STAGES)
    assert [s.resolution for s in snaps] == [r for r, _ in STAGES.values()]
    np.testing.assert_allclose([s.alpha for s in snaps], [a for _, a in STAGES.values()], atol=0.01)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_every_frame_is_the_final_size_with_each_latent_in_its_cell(fake_run, tmp_path, capsys, fmt):
    out = tmp_path / f"growth.{fmt}"
    code, stdout, err = cli(capsys, "timelapse", fake_run, "--out", out, "--fps", "5")
    assert code == 0 and "3 snapshots" in stdout, err
    frames = read_frames(out)
    assert len(frames) == 3  # the held last frame is one long frame
    if fmt == "gif":  # (Pillow reads no per-frame duration back from WebP)
        with Image.open(out) as picture:
            picture.seek(2)
            assert picture.info["duration"] == 2000  # held for 2 s
    for frame, (res, _) in zip(frames, STAGES.values()):
        assert frame.shape == (64, 64, 3)  # the final grid: 8x8 cells of 8x8
        for i in range(24, 64):  # rows 3..7: clear of the label
            cell = frame[(i // 8) * 8:(i // 8 + 1) * 8, (i % 8) * 8:(i % 8 + 1) * 8]
            tolerance = 1 if fmt == "gif" else 12  # GIF palette / lossy WebP
            assert np.abs(cell - np.array(cell_colour(i, res))).max() <= tolerance * 3, (res, i)
    label = frames[0][:6, :20]  # white text on black: both extremes appear
    assert label.min() < 40 and label.max() > 200


def test_size_sets_the_frame_size(fake_run, tmp_path, capsys):
    assert cli(capsys, "timelapse", fake_run, "--out", tmp_path / "g.gif", "--size", "128")[0] == 0
    assert read_frames(tmp_path / "g.gif")[0].shape == (128, 128, 3)


def test_bad_input_is_one_line_and_writes_nothing(fake_run, tmp_path, capsys):
    out = tmp_path / "out" / "g.gif"
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli(capsys, "timelapse", tmp_path / "missing", "--out", out), "is not a run folder")
    assert_one_line_error(cli(capsys, "timelapse", tmp_path / "empty", "--out", out), "has no config.json")
    assert_one_line_error(cli(capsys, "timelapse", fake_run, "--out", tmp_path / "g.mp4"), "end the file name in .gif or .webp")
    assert_one_line_error(cli(capsys, "timelapse", fake_run, "--out", out, "--fps", "60"), "--format webp")
    (fake_run / "samples-0000000160.png").write_bytes(b"not a png")
    assert_one_line_error(cli(capsys, "timelapse", fake_run, "--out", out), "samples-0000000160.png is not a readable image")
    save_png(np.zeros((10, 10, 3), np.uint8), fake_run / "samples-0000000160.png")
    assert_one_line_error(cli(capsys, "timelapse", fake_run, "--out", out), "is 10x10, not a sample grid")
    for name in [p.name for p in fake_run.glob("samples-*.png")]:
        (fake_run / name).unlink()
    assert_one_line_error(cli(capsys, "timelapse", fake_run, "--out", out), "holds no sample grids")
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.mp4").exists()


@pytest.mark.slow
def test_timelapse_of_a_real_run(demo_lmdb, tmp_path, capsys):
    run = tmp_path / "run"
    train_cli(demo_lmdb, run, "--total-kimg", "0.256", "--log-with", "none")
    snaps = find_snapshots(run)
    assert [(s.images_shown, s.resolution) for s in snaps] == [(64, 4), (128, 8), (192, 8), (256, 8)]
    assert cli(capsys, "timelapse", run, "--out", tmp_path / "growth.gif")[0] == 0
    frames = read_frames(tmp_path / "growth.gif")
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)
    with Image.open(run / "samples-latest.png") as final:
        # the last frame is the final grid, below the label, up to the GIF palette's dithering
        error = np.abs(frames[-1][24:] - np.asarray(final.convert("RGB"), dtype=float)[24:]).mean()
        assert error < 16 and error < np.abs(frames[-1][24:] - frames[0][24:]).mean() / 2


def test_a_portrait_run_keeps_its_cells_and_its_ratio(fake_run, tmp_path, capsys):
    """A 3:4 run's grids hold 3r x 4r cells (width x height); frames keep that ratio, --size sets the long side."""
    import json

    config = json.loads((fake_run / "config.json").read_text())
    config["model"]["aspect"] = "3:4"
    (fake_run / "config.json").write_text(json.dumps(config))
    for path in fake_run.glob("samples-*.png"):
        path.unlink()
    for images, (res, _) in STAGES.items():
        w, h = 3 * res // 4, res
        grid = np.zeros((8 * h, 8 * w, 3), np.uint8)
        for i in range(64):
            grid[(i // 8) * h:(i // 8 + 1) * h, (i % 8) * w:(i % 8 + 1) * w] = cell_colour(i, res)
        save_png(grid, fake_run / f"samples-{images:010d}.png")
    snaps = find_snapshots(fake_run)
    assert [(s.resolution, s.cell) for s in snaps] == [(4, (3, 4)), (8, (6, 8)), (8, (6, 8))]
    out = tmp_path / "growth.gif"
    assert cli(capsys, "timelapse", fake_run, "--out", out)[0] == 0
    frames = read_frames(out)
    assert all(frame.shape == (64, 48, 3) for frame in frames)  # 8x8 cells of 6 wide x 8 high
    for frame, (res, _) in zip(frames, STAGES.values()):
        for i in range(24, 64):
            cell = frame[(i // 8) * 8:(i // 8 + 1) * 8, (i % 8) * 6:(i % 8 + 1) * 6]
            assert np.abs(cell - np.array(cell_colour(i, res))).max() <= 3, (res, i)
    assert cli(capsys, "timelapse", fake_run, "--out", tmp_path / "big.gif", "--size", "128")[0] == 0
    assert read_frames(tmp_path / "big.gif")[0].shape == (128, 96, 3)
