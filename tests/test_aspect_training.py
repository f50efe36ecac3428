"""Non-square end to end: build 3:4 and 4:3 databases, train, resume, refuse a mismatch, sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from data_prep.build import BuildConfig, build
from progan import Discriminator, Generator, ModelConfig
from progan.generator import checkpoints
from progan.generator.loading import load_generator
from progan.generator.sampling import seeds_to_images

# 16 images per step: 4 stable steps at level 4, 8 fading into level 8, then stable (as test_training).
TINY = ["--config", "small", "--resolution", "8", "--stable-kimg", "0.064", "--fade-kimg", "0.128",
        "--batch", "4:16,8:16", "--tick-kimg", "0.032", "--snapshot-ticks", "2", "--workers", "0"]


def photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """Smooth random photos of one size, plus one too small and one broken file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
        coarse.resize(size, Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
    Image.new("RGB", (5, 5)).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("aspect_train")
    out = {}
    for aspect, size, seed in (("3:4", (30, 44), 1), ("4:3", (50, 33), 2)):
        db = root / f"{aspect.replace(':', 'x')}.lmdb"
        build(BuildConfig(photos(root / aspect.replace(":", "x"), 32, size, seed), db, max_res=8,
                          workers=1, aspect=aspect))
        out[aspect] = db
    return out


def train(data: Path, out: Path, *extra: str, check: bool = True):
    return run_cli(["train.py", "--data", str(data), "--out", str(out), *TINY, *extra], check=check)


@pytest.mark.slow
def test_portrait_run_trains_resumes_refuses_a_landscape_database_and_samples(databases, tmp_path):
    run = tmp_path / "run"
    train(databases["3:4"], run, "--total-kimg", "0.128")
    midway = checkpoints.load_checkpoint(run)
    assert midway["model_config"]["aspect"] == "3:4" and midway["resolution"] == 8
    assert json.loads((run / "config.json").read_text())["model"]["aspect"] == "3:4"
    train(databases["3:4"], run, "--total-kimg", "0.256", "--resume", "auto")
    final = checkpoints.load_checkpoint(run)
    assert final["images_shown"] == 256 and final["alpha"] == 1.0
    assert final["generator"]["blocks.4.dense.weight"].shape[0] == 64 * 3 * 4  # channels x w0 x h0
    with Image.open(run / "samples-latest.png") as grid:
        assert grid.size == (8 * 6, 8 * 8)  # 8 x 8 samples of 6 wide x 8 high

    # Resuming on the landscape database: one line naming --data and both shapes; nothing written.
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    proc = train(databases["4:3"], run, "--total-kimg", "0.32", "--resume", "auto", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "--data" in lines[0] and "holds 4:3 images" in lines[0] and "model is 3:4" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before

    # A new run from this run's config file on the landscape database is refused the same way.
    proc = run_cli(["train.py", "--data", str(databases["4:3"]), "--out", str(tmp_path / "other"),
                    "--config", str(run / "config.json"), "--dry-run"], check=False)
    assert proc.returncode == 2 and "holds 4:3 images" in proc.stderr and not (tmp_path / "other").exists()

    # Sampling: PNGs, grids and walks at 6x8.
    generator, info = load_generator(run)
    assert info.model_config.aspect == "3:4"
    out = tmp_path / "samples"
    run_cli(["generate.py", str(run), "--out", str(out), "--seeds", "0,1"])
    with Image.open(out / "seed0001.png") as image:
        assert image.size == (6, 8)
        assert np.array_equal(np.asarray(image.convert("RGB")), seeds_to_images(generator, [1], 8)[0])
    run_cli(["generate.py", str(run), "--out", str(out / "grid"), "--grid", "2x3"])
    with Image.open(out / "grid" / "grid.png") as image:
        assert image.size == (3 * 6, 2 * 8)
    run_cli(["generate.py", str(run), "--out", str(out / "walk"), "--walk", "--frames", "3", "--smoothing", "0", "--seeds", "0"])
    with Image.open(out / "walk" / "walk-seed0000.gif") as image:
        assert image.size == (6, 8) and image.n_frames == 3
    run_cli(["generate.py", str(run), "--out", str(out / "low"), "--seeds", "0", "--resolution", "4"])
    with Image.open(out / "low" / "seed0000.png") as image:
        assert image.size == (3, 4)
    for level, why in (("12", "is not a level of this generator"), ("16", "is not a level of this generator")):
        proc = run_cli(["generate.py", str(run), "--out", str(out / "bad"), "--resolution", level], check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and f"--resolution {level} {why}" in lines[0]
        assert "choose one of 4 (3x4), 8 (6x8)" in lines[0] and not (out / "bad").exists()


def test_checkpoints_from_before_the_aspect_field_load_as_square(tmp_path):
    config = ModelConfig(resolution=8, latent_size=16, fmap_base=32, fmap_max=16)
    old_config = config.to_dict()
    del old_config["aspect"]
    torch.manual_seed(0)
    generator = Generator(config)
    checkpoints.save_training_checkpoint(tmp_path, dict(
        config={"seed": 0}, model_config=old_config, images_shown=1000, resolution=8, alpha=1.0,
        generator=generator.state_dict(), discriminator=Discriminator(config).state_dict(),
        generator_ema=generator.state_dict(), optimizer_g={}, optimizer_d={}, loss_scale_d=1.0,
        loss_scale_g=1.0, counters={}, dataset_fingerprint="test"))
    loaded, info = load_generator(tmp_path)
    assert info.model_config == config and info.model_config.base_size == (4, 4)
    assert seeds_to_images(loaded, [3], 8).shape == (1, 8, 8, 3)
    assert np.array_equal(seeds_to_images(loaded, [3], 8), seeds_to_images(generator, [3], 8))


def test_dry_run_takes_the_database_shape_and_names_it_in_errors(databases, tmp_path):
    proc = run_cli(["train.py", "--data", str(databases["4:3"]), "--out", str(tmp_path / "run"), "--config", "small",
                    "--dry-run"])
    assert '"aspect": "4:3"' in proc.stdout and not (tmp_path / "run").exists()
    proc = run_cli(["train.py", "--data", str(databases["4:3"]), "--out", str(tmp_path / "run"), "--config", "small",
                    "--resolution", "16", "--dry-run"], check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "above the database's largest level 8x6" in lines[0]
