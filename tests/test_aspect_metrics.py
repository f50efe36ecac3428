"""SWD, MS-SSIM and evaluate_metrics on non-square images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TensorDataset
from test_metrics_swd import ref_pyramid

from progan import Generator, ModelConfig
from progan.metrics import MetricError, evaluate_metrics, sliced_wasserstein_distance
from progan.metrics.evaluate import unavailable_reason
from progan.metrics.msssim import ms_ssim_pairs
from progan.metrics.sources import DatasetSource, GeneratorSource
from progan.metrics.swd import extract_patches, patch_centres, projection_directions, swd_resolutions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noise_images(n: int, width: int, height: int, seed: int, fine: float = 10.0) -> torch.Tensor:
    """Smooth uint8 images [n, 3, height, width] with some pixel noise."""
    g = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 255, size=(height, width), mode="bilinear",
                           align_corners=False)
    images = images + fine * torch.randn(n, 3, height, width, generator=g)
    return images.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("resolution,aspect,levels", [
    (64, "3:4", [64, 32]),      # 48x64, 24x32; 12x16 has a short side below 16
    (16, "3:4", [16]),          # 12x16: one level
    (128, "2:1", [128, 64, 32]),
    (32, "1:4", [32]),          # 8x32: one level, the smallest that fits a 7x7 patch
    (64, "4:1", [64]),
    (64, "1:1", [64, 32, 16]),
])
def test_swd_levels_go_down_to_a_16_pixel_short_side(resolution, aspect, levels):
    assert swd_resolutions(resolution, aspect) == levels


def test_swd_refuses_a_short_side_below_8():
    with pytest.raises(MetricError, match="short side of at least 8 .*, got 6x8 at level 8"):
        swd_resolutions(8, "3:4")
    assert "got 4x16" in unavailable_reason("swd", 16, aspect="1:4")
    assert unavailable_reason("swd", 16, aspect="3:4") is None


def test_non_square_patch_centres_span_both_axes_and_square_ones_are_unchanged():
    centres = patch_centres(5, 0, 16, 0, 64, width=48)  # 16 rows, 48 columns
    rows, cols = centres[..., 0], centres[..., 1]
    assert rows.min() == 3 and rows.max() == 12 and cols.min() == 3 and cols.max() == 44
    assert torch.equal(patch_centres(5, 1, 16, 3, 7, width=16), patch_centres(5, 1, 16, 3, 7))


def test_patches_of_non_square_levels_are_the_pixels_around_their_centres():
    level = torch.arange(2 * 3 * 10 * 14, dtype=torch.float32).reshape(2, 3, 10, 14)  # H 10, W 14
    centres = torch.tensor([[[3, 3], [6, 10]], [[5, 4], [3, 9]]])
    patches = extract_patches(level, centres).reshape(2, 2, 3, 7, 7)
    for b in range(2):
        for p, (cy, cx) in enumerate(centres[b].tolist()):
            assert torch.equal(patches[b, p], level[b, :, cy - 3:cy + 4, cx - 3:cx + 4])


def test_non_square_swd_matches_a_float64_reference():
    real, fake = noise_images(4, 48, 64, seed=1), noise_images(4, 48, 64, seed=2)
    ours = sliced_wasserstein_distance(real, fake, seed=3, batch_size=3)
    sizes = [(64, 48, 64), (32, 24, 32)]  # (name, width, height)
    per_set = []
    for images in (real.numpy(), fake.numpy()):
        levels = [[], []]
        for i, image in enumerate(images):
            for lvl, band in enumerate(ref_pyramid(image, 2)):
                _, width, height = sizes[lvl]
                assert band.shape[1:] == (height, width)
                for cy, cx in patch_centres(3, lvl, height, i, 1, width=width)[0].numpy():
                    levels[lvl].append(band[:, cy - 3:cy + 4, cx - 3:cx + 4])
        normalised = []
        for patches in levels:
            desc = np.stack(patches)
            desc = (desc - desc.mean(axis=(0, 2, 3), keepdims=True)) / desc.std(axis=(0, 2, 3), keepdims=True)
            normalised.append(desc.reshape(len(desc), -1))
        per_set.append(normalised)
    for lvl, (name, _, _) in enumerate(sizes):
        dirs = projection_directions(3, lvl, per_set[0][lvl].shape[1]).double().numpy()
        expected = 1e3 * np.mean([np.mean(np.abs(np.sort(per_set[0][lvl] @ d, axis=0)
                                                  - np.sort(per_set[1][lvl] @ d, axis=0))) for d in dirs])
        assert ours[f"swd_x1e3_{name}"] == pytest.approx(expected, rel=2e-6)
    assert set(ours) == {"swd_x1e3_64", "swd_x1e3_32", "swd_x1e3_avg"}
    assert sliced_wasserstein_distance(real, real, seed=3)["swd_x1e3_avg"] == 0.0


def test_swd_of_images_of_no_supported_aspect_is_one_line():
    images = noise_images(2, 40, 32, seed=0)  # 5:4
    with pytest.raises(MetricError, match="SWD: images of 40x32: '40:32' is not a supported ratio"):
        sliced_wasserstein_distance(images, images)


def test_ms_ssim_on_non_square_images():
    a = noise_images(4, 24, 32, seed=1)
    b = (a.float() + 25 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 255).to(torch.uint8)
    assert torch.allclose(ms_ssim_pairs(a, a), torch.ones(4, dtype=torch.float64))
    scores = ms_ssim_pairs(a, b)  # a noisier copy: similar, not the same
    assert (scores < 0.99).all() and (scores > 0.5).all()
    # Transposing both images of a pair transposes every filter output: the same score.
    assert torch.allclose(ms_ssim_pairs(a.transpose(2, 3), b.transpose(2, 3)), scores, atol=1e-6)
    with pytest.raises(MetricError, match="at least 16x16 on the short side .*got 12x16"):
        ms_ssim_pairs(a[..., :16, :12], b[..., :16, :12])
    assert "got 12x16" in unavailable_reason("msssim", 16, aspect="3:4")


def test_evaluate_metrics_on_a_portrait_generator_and_a_mismatched_database(tmp_path):
    from data_prep.build import BuildConfig, build
    from PIL import Image

    torch.manual_seed(0)
    generator = Generator(ModelConfig.preset("small", 32, aspect="3:4")).eval()
    source = GeneratorSource(generator, 64, resolution=32, seed=1)
    assert source(0, 2).shape == (2, 3, 32, 24)
    reals = TensorDataset(noise_images(10, 24, 32, seed=4))
    result = evaluate_metrics(["swd", "msssim"], source, reals, 32, num_images=8, seed=1, batch_size=4,
                              progress=False, aspect="3:4")
    fakes, real_subset = source(0, 8), DatasetSource(reals, 8, seed=1, side="real")(0, 8)
    direct = sliced_wasserstein_distance(real_subset, fakes, seed=1)
    assert result["swd_x1e3_32"] == pytest.approx(direct["swd_x1e3_32"], rel=1e-5)
    assert result["msssim"] == pytest.approx(float(ms_ssim_pairs(fakes[0::2], fakes[1::2]).mean()), rel=1e-6)
    with pytest.raises(MetricError, match="expected 8 images of 32x32"):  # told square, given 24x32
        evaluate_metrics(["msssim"], source, None, 32, num_images=8, progress=False)

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(noise_images(1, 40, 30, seed=i)[0].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    db = tmp_path / "landscape.lmdb"
    build(BuildConfig(folder, db, max_res=32, workers=1, aspect="4:3"))
    with pytest.raises(MetricError, match="holds 4:3 images, the images compared are 3:4"):
        evaluate_metrics(["swd"], source, db, 32, num_images=8, progress=False, aspect="3:4")
    real_vs_real = evaluate_metrics(["swd"], DatasetSource(TensorDataset(noise_images(8, 32, 24, seed=9)), 8),
                                    db, 32, num_images=8, progress=False, aspect="4:3")
    assert real_vs_real["swd_x1e3_avg"] > 0


def test_metrics_cli_scores_a_portrait_checkpoint_against_a_portrait_database(tmp_path):
    import json

    from PIL import Image

    from conftest import run_cli
    from data_prep.build import BuildConfig, build
    from progan import Discriminator
    from progan.generator import checkpoints

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(noise_images(1, 30, 40, seed=i)[0].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    db = tmp_path / "portrait.lmdb"
    build(BuildConfig(folder, db, max_res=32, workers=1, aspect="3:4"))
    config = ModelConfig(resolution=32, latent_size=16, fmap_base=64, fmap_max=16, aspect="3:4")
    torch.manual_seed(0)
    generator = Generator(config)
    run = tmp_path / "run"
    run.mkdir()
    checkpoints.save_training_checkpoint(run, dict(
        config={"seed": 0}, model_config=config.to_dict(), images_shown=1000, resolution=32, alpha=1.0,
        generator=generator.state_dict(), discriminator=Discriminator(config).state_dict(),
        generator_ema=generator.state_dict(), optimizer_g={}, optimizer_d={}, loss_scale_d=1.0,
        loss_scale_g=1.0, counters={}, dataset_fingerprint="test"))
    proc = run_cli(["-m", "progan.metrics", "swd,msssim", "--real", str(db), "--fake", str(run), "--num", "8",
                    "--device", "cpu", "--no-log"])
    record = json.loads(proc.stdout)
    assert record["aspect"] == "3:4" and record["resolution"] == 32
    assert set(record) >= {"swd_x1e3_32", "swd_x1e3_avg", "msssim"} and "swd_x1e3_16" not in record
    # Level 16 is 12x16: too small for MS-SSIM's five scales, said in one line.
    proc = run_cli(["-m", "progan.metrics", "msssim", "--fake", str(run), "--num", "8", "--resolution", "16",
                    "--device", "cpu"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "got 12x16" in proc.stderr
