"""generate.py timelapse: a run's sample grids as one labelled animation at the final size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_generate import assert_one_line_error, cli, read_frames
from test_training import TINY, train_cli

from progan.generator.images import save_png
from progan.train.setup import prepare_run
from progan.train.timelapse import find_snapshots

# TINY: 4x4 stable to 64 images, fade into 8x8 to 192, then 8x8 stable; grids of 8x8 cells.
STAGES = {32: (4, 1.0), 128: (8, 0.375), 256: (8, 1.0)}  # alpha of the step 112..127: (112 - 64) / 128


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


# The run of issue 19: the small preset at 16 with 500-image phases, a grid every 0.5 kimg, batch 32.
ISSUE_19 = ["--config", "small", "--resolution", "16", "--fade-kimg", "0.5", "--stable-kimg", "0.5",
            "--tick-kimg", "0.5", "--snapshot-ticks", "1", "--workers", "0"]
# What that run's train.py wrote: samples-<images>.png and the grid's size. Each tick follows a
# step that crossed a phase edge (480..511 in stable 4x4, 992..1023 late in the fade, ...), and
# its grid is drawn at that step's resolution and alpha.
ISSUE_19_GRIDS = {512: (32, 4, 1.0), 1024: (64, 8, 0.984), 1504: (64, 8, 1.0), 2016: (128, 16, 0.968),
                  2528: (128, 16, 1.0)}


@pytest.fixture
def issue_19_run(demo_lmdb, tmp_path):
    """A run folder with the config of issue 19's run and grey grids of the sizes it wrote."""
    from train import build_parser

    run = tmp_path / "issue19"
    run.mkdir()
    plan = prepare_run(vars(build_parser().parse_args(["--data", str(demo_lmdb), "--out", str(tmp_path / "x"), *ISSUE_19])))
    (run / "config.json").write_text(plan.config.to_json())
    for images, (size, _, _) in ISSUE_19_GRIDS.items():
        save_png(np.full((size, size, 3), 128, np.uint8), run / f"samples-{images:010d}.png")
    return run


def test_grids_drawn_just_past_a_phase_edge_belong_to_the_phase_that_drew_them(issue_19_run, tmp_path, capsys):
    """Issue 19: `timelapse` refused samples-0000000512.png (32x32) of a run train.py wrote."""
    snaps = find_snapshots(issue_19_run)
    assert [(s.images_shown, s.resolution) for s in snaps] == [(i, r) for i, (_, r, _) in ISSUE_19_GRIDS.items()]
    np.testing.assert_allclose([s.alpha for s in snaps], [a for _, _, a in ISSUE_19_GRIDS.values()], atol=1e-6)
    assert cli(capsys, "timelapse", issue_19_run, "--out", tmp_path / "growth.gif")[0] == 0


@pytest.mark.parametrize("size, form", [(64, "short"), (40, "short in two lines"), (512, "full")])
def test_the_caption_fits_small_frames_whole(issue_19_run, size, form):
    """Issue 19: at 64 px the caption was cut at the right edge ('2.53 kim'). Every line of
    every caption, measured with PIL's textbbox in the font it is drawn in, fits the frame."""
    from PIL import ImageDraw

    from progan.train.timelapse import _font, _pad, caption_lines, caption_right_edge, caption_style, timelapse_frames

    snaps = find_snapshots(issue_19_run)
    frames = list(timelapse_frames(snaps, size=size))
    assert frames[0].shape == (size, size, 3)
    chosen, font_size = caption_style(snaps, size, base_size=max(10, size // 40))
    assert chosen == form  # the most readable form that fits: full words when there is room
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for snap, frame in zip(snaps, frames):
        lines = caption_lines(snap, chosen)
        assert f"{snap.images_shown / 1000:.3g}" in "".join(lines)  # e.g. 2.53: the kimg is all there
        edges = [caption_right_edge(draw, line, _font(font_size), _pad(font_size)) for line in lines]
        assert max(edges) <= size, (lines, edges, font_size)
        # as drawn: the caption's black box is the one measured, and the grey cells show right of it
        box = int((frame[1] != 128).any(axis=1).argmin()) if (frame[1] == 128).all(axis=1).any() else size
        assert box == max(edges) and (frame[1, 0] == 0).all()
    if size == 64:  # one line, clear of the grid's lower rows
        assert font_size >= 7 and (frames[0][size // 4:] == 128).all()


@pytest.mark.slow
def test_timelapse_of_the_issue_19_run(demo_lmdb, tmp_path, capsys):
    """The exact flags of issue 19 through train.py (to 1.1 kimg: two grids past phase edges and a final one)."""
    from conftest import run_cli

    run = tmp_path / "run"
    proc = run_cli(["train.py", "--data", str(demo_lmdb), "--out", str(run), *ISSUE_19, "--total-kimg", "1.1",
                    "--log-with", "none"])
    with Image.open(run / "samples-0000000512.png") as grid:
        assert grid.size == (32, 32)  # drawn at 4x4: the step 480..511 was stable 4x4
    snaps = find_snapshots(run)
    assert [(s.images_shown, s.resolution) for s in snaps] == [(512, 4), (1024, 8), (1120, 8)]
    # the tick line before "phase 1: fade 8x8" reports the phase that ended, as the grid does
    lines = proc.stdout.splitlines()
    tick_1 = next(line for line in lines if line.startswith("tick 1 "))
    assert " res 4 " in tick_1 and "alpha 1.000" in tick_1, tick_1
    assert lines.index(tick_1) < next(i for i, line in enumerate(lines) if line.startswith("phase 1: fade"))
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [(s["images_shown"], s["resolution"], s["phase"]) for s in stats][:2] == [(512, 4, "stable"), (1024, 8, "fade")]
    assert cli(capsys, "timelapse", run, "--out", tmp_path / "growth.gif")[0] == 0


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
