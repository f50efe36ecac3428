"""generate.py and progan.generator.sampling / progan.generator.animation: seeds, grids, walks, export, bad input.

Checkpoints here hold randomly initialised tiny networks (16x16 model trained "to" 8x8, fading
in with alpha 0.5), saved with the real checkpoint writer. The CLI runs in-process through
generate.main (fast); two slow tests run it as a real subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import progan
from progan.generator import checkpoints
from progan.generator import fileformat
from progan.generator import sampling
from progan.generator.animation import write_animation
from progan.generator.fileformat import CheckpointError
from progan.generator.loading import load_generator
from progan.generator.export import export_file
from progan.nets.config import ModelConfig
from progan.nets.networks import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
TRAINED_RES, ALPHA, FINAL_RES = 8, 0.5, 16
CONFIG = ModelConfig(resolution=FINAL_RES, latent_size=32, fmap_base=64, fmap_max=32)


def _load_cli():
    spec = importlib.util.spec_from_file_location("generate_cli", REPO / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_cli = _load_cli()


def training_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    raw, ema = Generator(CONFIG), Generator(CONFIG)  # different weights, so --no-ema shows
    return dict(
        config={"seed": seed}, model_config=CONFIG.to_dict(), images_shown=12_345,
        resolution=TRAINED_RES, alpha=ALPHA, generator=raw.state_dict(),
        discriminator=Discriminator(CONFIG).state_dict(), generator_ema=ema.state_dict(),
        optimizer_g={}, optimizer_d={}, loss_scale_d=1.0, loss_scale_g=1.0, counters={},
        dataset_fingerprint="test",
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    checkpoints.save_training_checkpoint(folder, training_state())
    return folder


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    return export_file(run_dir, tmp_path_factory.mktemp("export") / "generator.pt")


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run generate.py's main in-process: (exit code, stdout, stderr)."""
    try:
        code = generate_cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result, *fragments):
    code, _, err = result
    lines = err.strip().splitlines()
    assert code != 0, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("generate.py"), err
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def read_frames(path: Path) -> list[np.ndarray]:
    frames = []
    with Image.open(path) as picture:
        for index in range(picture.n_frames):
            picture.seek(index)
            frames.append(np.asarray(picture.convert("RGB"), dtype=np.float64))
    return frames


# -- seeds ----------------------------------------------------------------------------------
def test_parse_seeds_accepts_lists_and_ranges():
    assert sampling.parse_seeds("0-3") == [0, 1, 2, 3]
    assert sampling.parse_seeds("3,7,42") == [3, 7, 42]
    assert sampling.parse_seeds(" 5 , 0-1,10") == [5, 0, 1, 10]
    assert sampling.parse_seeds(str(sampling.MAX_SEED)) == [sampling.MAX_SEED]


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "1,,2", "1;2", "1.5", "0-4294967296", "1,2,1",
                                  "0-99999999"])
def test_parse_seeds_rejects_malformed(text):
    with pytest.raises(ValueError, match="bad seed list"):
        sampling.parse_seeds(text)


def test_latent_of_a_seed_depends_on_that_seed_only():
    alone = sampling.latent_for_seed(7, 32)
    torch.manual_seed(123)  # the global RNG must not matter
    among_others = sampling.latents_for_seeds([1, 7, 9], 32)[1]
    assert torch.equal(alone, among_others)
    assert not torch.equal(alone, sampling.latent_for_seed(8, 32))


def test_seed_gives_the_same_image_at_any_batch_size(run_dir):
    generator, _ = load_generator(run_dir)
    latents = sampling.latents_for_seeds(range(7), CONFIG.latent_size)
    one_by_one = sampling.synthesize(generator, latents, TRAINED_RES, ALPHA, batch_size=1)
    all_at_once = sampling.synthesize(generator, latents, TRAINED_RES, ALPHA, batch_size=7)
    assert one_by_one.shape == (7, 3, TRAINED_RES, TRAINED_RES)
    torch.testing.assert_close(one_by_one, all_at_once, atol=1e-5, rtol=1e-5)
    assert one_by_one.std() > 0.1  # not a constant picture, so the comparison means something


def test_save_export_load_round_trip_gives_identical_images(run_dir, exported, tmp_path):
    seeds = [0, 5, 11]
    from_run, info_run = progan.load_generator(run_dir)  # the package's public entry point
    from_export, info_export = load_generator(exported)
    # A second round trip: exporting the export changes nothing.
    from_reexport, _ = load_generator(export_file(exported, tmp_path / "again.pt"))
    assert (info_export.resolution, info_export.alpha, info_export.images_shown) == (TRAINED_RES, ALPHA, 12_345)
    images = [sampling.seeds_to_images(g, seeds, info_run.resolution, info_run.alpha)
              for g in (from_run, from_export, from_reexport)]
    assert images[0].shape == (3, TRAINED_RES, TRAINED_RES, 3) and images[0].dtype == np.uint8
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[0], images[2])


def test_export_holds_the_ema_weights_alone(run_dir, exported):
    data = checkpoints.load_checkpoint(exported)
    assert data["kind"] == "generator"
    assert not {"generator", "discriminator", "optimizer_g", "optimizer_d"} & set(data)
    ema_bytes = sum(t.numel() * t.element_size() for t in data["generator_ema"].values())
    assert exported.stat().st_size < ema_bytes * 1.05 + 64 * 1024
    assert exported.stat().st_size < checkpoints.find_latest_checkpoint(run_dir).stat().st_size


# -- resolution -----------------------------------------------------------------------------
def test_sampling_stage_defaults_to_where_training_stood(run_dir):
    _, info = load_generator(run_dir)
    assert sampling.sampling_stage(info) == (TRAINED_RES, ALPHA)
    assert sampling.sampling_stage(info, TRAINED_RES) == (TRAINED_RES, ALPHA)
    assert sampling.sampling_stage(info, 4) == (4, 1.0)  # a finished stage: stable output
    with pytest.raises(ValueError, match="above"):
        sampling.sampling_stage(info, FINAL_RES)
    with pytest.raises(ValueError, match="choose one of 4, 8"):
        sampling.sampling_stage(info, 6)


# -- walks ----------------------------------------------------------------------------------
def test_walk_latents_loop_and_keep_the_expected_norm():
    frames, latent_size = 60, 32
    walk = sampling.walk_latents(3, frames, latent_size, smoothing=0.5, fps=10)
    assert walk.shape == (frames, latent_size)
    torch.testing.assert_close(walk.norm(dim=1), torch.full((frames,), latent_size**0.5))
    steps = (walk[1:] - walk[:-1]).norm(dim=1)
    wrap_step = (walk[0] - walk[-1]).norm()
    assert wrap_step < 2 * steps.max()              # the end leads back to the start ...
    assert wrap_step < 0.5 * (walk[0] - walk[frames // 2]).norm()  # ... unlike any far frame
    assert torch.equal(walk, sampling.walk_latents(3, frames, latent_size, smoothing=0.5, fps=10))
    assert not torch.equal(walk, sampling.walk_latents(4, frames, latent_size, smoothing=0.5, fps=10))


def test_walk_without_smoothing_jumps():
    walk = sampling.walk_latents(0, 40, 32, smoothing=0.0, fps=10)
    smooth = sampling.walk_latents(0, 40, 32, smoothing=0.5, fps=10)
    jump = lambda w: (w[1:] - w[:-1]).norm(dim=1).mean()  # noqa: E731
    assert jump(walk) > 3 * jump(smooth)


# -- CLI: images, grids, walks --------------------------------------------------------------
def test_cli_writes_one_png_per_seed(run_dir, tmp_path, capsys):
    code, out, err = cli(capsys, run_dir, "--out", tmp_path / "out", "--seeds", "3,7,42", "--batch", "2")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seed0003.png", "seed0007.png", "seed0042.png"]
    generator, _ = load_generator(run_dir)
    expected = sampling.seeds_to_images(generator, [3, 7, 42], TRAINED_RES, ALPHA)
    for image, seed in zip(expected, [3, 7, 42]):
        np.testing.assert_array_equal(read_png(tmp_path / "out" / f"seed{seed:04d}.png"), image)
    assert "img/s" in err


def test_cli_num_and_seed_mean_consecutive_seeds(run_dir, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--num", "3", "--seed", "9998")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed10000.png", "seed9998.png", "seed9999.png"]


def test_cli_grid_takes_the_first_seeds(run_dir, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--grid", "2x3", "--seeds", "0-9")
    assert code == 0, err
    assert "first 6 of 10 seeds" in err
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    grid = read_png(tmp_path / "grid.png")
    assert grid.shape == (2 * TRAINED_RES, 3 * TRAINED_RES, 3)
    generator, _ = load_generator(run_dir)
    cells = sampling.seeds_to_images(generator, range(6), TRAINED_RES, ALPHA)
    np.testing.assert_array_equal(grid[TRAINED_RES:, 2 * TRAINED_RES:], cells[5])  # row 1, column 2


def test_cli_resolution_below_the_trained_one(run_dir, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--seeds", "1", "--resolution", "4")
    assert code == 0, err
    generator, _ = load_generator(run_dir)
    expected = sampling.seeds_to_images(generator, [1], 4, 1.0)[0]
    np.testing.assert_array_equal(read_png(tmp_path / "seed0001.png"), expected)


def test_cli_bf16_is_close_to_fp32(run_dir, tmp_path, capsys):
    assert cli(capsys, run_dir, "--out", tmp_path / "fp32", "--seeds", "0-3")[0] == 0
    assert cli(capsys, run_dir, "--out", tmp_path / "bf16", "--seeds", "0-3", "--precision", "bf16")[0] == 0
    for seed in range(4):
        fp32 = read_png(tmp_path / "fp32" / f"seed{seed:04d}.png").astype(int)
        bf16 = read_png(tmp_path / "bf16" / f"seed{seed:04d}.png").astype(int)
        assert np.abs(fp32 - bf16).mean() < 4  # levels of 255: the same picture, slightly rounded


def test_cli_no_ema_uses_the_raw_generator(run_dir, tmp_path, capsys):
    assert cli(capsys, run_dir, "--out", tmp_path / "ema", "--seeds", "0")[0] == 0
    assert cli(capsys, run_dir, "--out", tmp_path / "raw", "--seeds", "0", "--no-ema")[0] == 0
    raw, _ = load_generator(run_dir, ema=False)
    np.testing.assert_array_equal(read_png(tmp_path / "raw" / "seed0000.png"),
                                  sampling.seeds_to_images(raw, [0], TRAINED_RES, ALPHA)[0])
    assert not np.array_equal(read_png(tmp_path / "raw" / "seed0000.png"), read_png(tmp_path / "ema" / "seed0000.png"))


def test_cli_walk_gif_has_the_frames_size_timing_and_loops(run_dir, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--walk", "--frames", "24", "--fps", "10",
                       "--smoothing", "0.3", "--seed", "5")
    assert code == 0, err
    path = tmp_path / "walk-seed0005.gif"
    with Image.open(path) as picture:
        assert picture.n_frames == 24
        assert picture.size == (TRAINED_RES, TRAINED_RES)
        assert picture.info["loop"] == 0 and picture.info["duration"] == 100
    frames = read_frames(path)
    wrap = np.abs(frames[0] - frames[-1]).mean()
    far = np.mean([np.abs(frames[0] - frames[i]).mean() for i in range(8, 17)])
    assert wrap < 0.5 * far


def test_cli_walk_grid_webp(run_dir, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--walk", "--grid", "2x2", "--frames", "12",
                       "--fps", "12", "--smoothing", "0.2", "--format", "webp", "--seeds", "0-3", "--batch", "5")
    assert code == 0, err
    assert "barely move" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["walk-grid.webp"]
    with Image.open(tmp_path / "walk-grid.webp") as picture:
        assert picture.n_frames == 12
        assert picture.size == (2 * TRAINED_RES, 2 * TRAINED_RES)
        picture.seek(5)
        picture.load()
        assert picture.info["loop"] == 0 and picture.info["duration"] == 83  # 1000/12 ms


def test_cli_warns_when_smoothing_freezes_a_short_walk(run_dir, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--walk", "--frames", "8", "--fps", "10")
    assert code == 0 and "barely move" in err


def test_walk_grid_cells_are_the_single_walks(run_dir):
    generator, _ = load_generator(run_dir)
    options = dict(frames=5, resolution=TRAINED_RES, alpha=ALPHA, smoothing=0.2, fps=10, batch_size=3)
    grid_frames = list(sampling.walk_frames(generator, [4, 9], rows=1, cols=2, **options))
    single = list(sampling.walk_frames(generator, [9], **options))
    assert len(grid_frames) == 5 and grid_frames[0].shape == (TRAINED_RES, 2 * TRAINED_RES, 3)
    for framed, alone in zip(grid_frames, single):
        np.testing.assert_allclose(framed[:, TRAINED_RES:], alone, atol=1)


def test_cli_export_then_sample_from_the_export(run_dir, tmp_path, capsys):
    code, out, err = cli(capsys, "export", run_dir, tmp_path / "sub" / "g.pt")
    assert code == 0, err
    assert "MiB" in out
    assert cli(capsys, tmp_path / "sub" / "g.pt", "--out", tmp_path / "a", "--seeds", "2")[0] == 0
    assert cli(capsys, run_dir, "--out", tmp_path / "b", "--seeds", "2")[0] == 0
    np.testing.assert_array_equal(read_png(tmp_path / "a" / "seed0002.png"), read_png(tmp_path / "b" / "seed0002.png"))


# -- bad input ------------------------------------------------------------------------------
class RunsCodeOnLoad:
    """Unpickling this calls os.system: what a malicious 'checkpoint' would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def pickled_calls(path: Path) -> set[str]:
    """The callables a pickle (bare, or torch.save's zip) would import and call when loaded,
    found by reading its opcodes: nothing is executed."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    else:
        data = path.read_bytes()
    names, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":  # protocol <= 3: "module name"
            names.add(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":  # protocol 4+: the two strings pushed before it
            names.add(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return names


@pytest.fixture(params=["torch.save", "pickle.dump"])
def crafted_checkpoint(request, tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    payload = {"format": fileformat.FORMAT_NAME, "format_version": fileformat.FORMAT_VERSION,
               "kind": "generator", "generator_ema": RunsCodeOnLoad(marker)}
    path = tmp_path / "evil.pt"
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch.load's own protocol
    return path, marker


def test_crafted_checkpoint_is_refused_and_its_code_never_runs(crafted_checkpoint, tmp_path, capsys):
    path, marker = crafted_checkpoint
    with pytest.raises(CheckpointError, match="refused"):
        load_generator(path)
    assert_one_line_error(cli(capsys, path, "--out", tmp_path / "out", "--seeds", "0"), "refused")
    assert_one_line_error(cli(capsys, "export", path, tmp_path / "g.pt"), "refused")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.pt").exists()
    # Control, read statically (never unpickled): the file really would call os.system.
    assert pickled_calls(path) & {"posix.system", "os.system", "nt.system"}


@pytest.fixture(scope="module")
def bad_checkpoints(run_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = checkpoints.find_latest_checkpoint(run_dir)
    data = torch.load(good, weights_only=True)
    data.pop("checksums")  # the edited files below, as a tool that keeps no checksums writes them
    (root / "empty_run").mkdir()
    (root / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "notes.txt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    torch.save({**data, "format_version": 99}, root / "future.pt")
    torch.save({**data, "generator_ema": {"nonsense": torch.zeros(1)}}, root / "mismatched.pt")
    (root / "garbage.pt").write_bytes(b"hi")  # the weights-only unpickler raises KeyError on it
    torch.save({k: v for k, v in data.items() if k != "resolution"}, root / "incomplete.pt")
    torch.save({**data, "resolution": 64}, root / "impossible.pt")
    return {
        "missing": (root / "does-not-exist", "does not exist"),
        "empty_run": (root / "empty_run", "holds no checkpoint"),
        "truncated": (root / "truncated.pt", "truncated.pt"),
        "text": (root / "notes.txt", "notes.txt"),
        "foreign": (root / "foreign.pt", "not a progan checkpoint"),
        "future": (root / "future.pt", "format version 99"),
        "mismatched": (root / "mismatched.pt", "holds no usable EMA generator"),
        "garbage": (root / "garbage.pt", "not a readable checkpoint"),
        "incomplete": (root / "incomplete.pt", "holds no usable EMA generator"),
        "impossible": (root / "impossible.pt", "impossible stage"),
    }


@pytest.mark.parametrize("case", ["missing", "empty_run", "truncated", "text", "foreign", "future", "mismatched",
                                  "garbage", "incomplete", "impossible"])
def test_unusable_checkpoint_is_one_line_and_writes_nothing(case, bad_checkpoints, tmp_path, capsys):
    path, fragment = bad_checkpoints[case]
    assert_one_line_error(cli(capsys, path, "--out", tmp_path / "out", "--seeds", "0"), fragment)
    assert not (tmp_path / "out").exists()
    assert_one_line_error(cli(capsys, "export", path, tmp_path / "g.pt"), fragment)  # export checks alike
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["--resolution", str(FINAL_RES)], "above the 8x8"),
    (["--resolution", "12"], "choose one of 4, 8"),
    (["--seeds", "1-"], "bad seed list"),
    (["--seeds", "a,b"], "bad seed list"),
    (["--seeds", "0", "--seed", "3"], "--seed goes with --num"),
    (["--seeds", "0", "--num", "3"], "not allowed with"),
    (["--num", "0"], "at least one seed"),
    (["--grid", "2x2", "--seeds", "0-2"], "needs 4 seeds, got 3"),
    (["--grid", "2by2"], "bad grid"),
    (["--batch", "0"], "--batch"),
    (["--walk", "--fps", "60"], "--format webp"),
    (["--walk", "--frames", "0"], "--frames"),
    (["--walk", "--smoothing", "-1"], "--smoothing"),
    (["--walk", "--format", "mp4"], "invalid choice"),
])
def test_bad_options_are_one_line_and_write_nothing(args, fragment, run_dir, tmp_path, capsys):
    assert_one_line_error(cli(capsys, run_dir, "--out", tmp_path / "out", *args), fragment)
    assert not (tmp_path / "out").exists()


def test_no_ema_on_an_export_is_a_clear_error(exported, tmp_path, capsys):
    assert_one_line_error(cli(capsys, exported, "--out", tmp_path / "out", "--no-ema"), "EMA weights only")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_cuda_without_a_gpu_is_a_clear_error(run_dir, tmp_path, capsys):
    assert_one_line_error(cli(capsys, run_dir, "--out", tmp_path, "--device", "cuda"), "no CUDA device")


def test_unwritable_output_is_one_line(run_dir, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(cli(capsys, run_dir, "--out", a_file, "--seeds", "0"), "is a file")
    assert_one_line_error(cli(capsys, run_dir, "--out", a_file / "sub", "--seeds", "0"), "not writable")
    assert_one_line_error(cli(capsys, "export", run_dir, a_file / "g.pt"), "cannot write")
    assert_one_line_error(cli(capsys, "export", run_dir, tmp_path), "is a folder")
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that permissions stop")
def test_read_only_output_folder_is_one_line(run_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = cli(capsys, run_dir, "--out", locked, "--seeds", "0")
        assert_one_line_error(result, "could not write --out", "Permission denied")
        assert result[0] == 4  # a place that takes no writes: exit 4, as for train.py and data_prep
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_export_refuses_to_overwrite_its_source(run_dir, capsys):
    source = checkpoints.find_latest_checkpoint(run_dir)
    before = source.read_bytes()
    assert_one_line_error(cli(capsys, "export", source, source), "being exported")
    assert source.read_bytes() == before


def test_animation_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "walk.gif"
    target.write_bytes(b"previous")
    frames = [np.full((4, 4, 3), v, np.uint8) for v in (0, 100, 200)]

    def fail_half_way(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"GIF89a partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_half_way)
    with pytest.raises(OSError):
        write_animation(frames, target, fps=10)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["walk.gif"]


# -- as a real command ----------------------------------------------------------------------
def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_command_line_end_to_end(run_dir, tmp_path):
    done = _run(run_dir, "--out", tmp_path, "--grid", "2x2", "--device", "auto")
    assert done.returncode == 0, done.stderr
    assert read_png(tmp_path / "grid.png").shape == (2 * TRAINED_RES, 2 * TRAINED_RES, 3)
    help_text = _run("--help").stdout
    assert all(f"    {name} " in help_text or f"    {name}\n" in help_text
               for name in ("sample", "export", "timelapse", "info")), help_text  # the subcommands, listed
    assert "--walk" in _run("sample", "--help").stdout
    explicit = _run("sample", run_dir, "--out", tmp_path / "explicit", "--grid", "2x2")  # the default, named
    assert explicit.returncode == 0, explicit.stderr
    assert (tmp_path / "explicit" / "grid.png").read_bytes() == (tmp_path / "grid.png").read_bytes()


@pytest.mark.slow
def test_command_line_bad_input_has_no_traceback(bad_checkpoints, tmp_path):
    for path, fragment in (bad_checkpoints["truncated"], bad_checkpoints["missing"]):
        done = _run(path, "--out", tmp_path / "out")
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
