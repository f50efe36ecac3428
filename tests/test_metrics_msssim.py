"""MS-SSIM against an independent float64 reference (MATLAB-style window, scipy convolution)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from conftest import upsampled_noise

from progan.metrics import MetricError, ms_ssim, ms_ssim_pairs

WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ref_window(size: int, sigma: float) -> np.ndarray:
    """MATLAB fspecial('gaussian', size, sigma), centred between pixels for even sizes."""
    coords = np.arange(size) - (size - 1) / 2.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    g = np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ref_ssim_cs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and CS of one pair of [C, H, W] float64 images at one scale."""
    size = min(11, a.shape[1], a.shape[2])
    window = ref_window(size, 1.5 * size / 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_maps, cs_maps = [], []
    for x, y in zip(a, b):
        def filt(img):
            return scipy.signal.convolve2d(img, window[::-1, ::-1], mode="valid")
        mu_x, mu_y = filt(x), filt(y)
        var_x = filt(x * x) - mu_x ** 2
        var_y = filt(y * y) - mu_y ** 2
        cov = filt(x * y) - mu_x * mu_y
        cs = (2 * cov + c2) / (var_x + var_y + c2)
        ssim_maps.append((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs)
        cs_maps.append(cs)
    return float(np.mean(ssim_maps)), float(np.mean(cs_maps))


def ref_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    value = 1.0
    for scale, weight in enumerate(WEIGHTS):
        ssim, cs = ref_ssim_cs(a, b)
        if scale < len(WEIGHTS) - 1:
            value *= max(cs, 0.0) ** weight
            a = (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) / 4
            b = (b[:, 0::2, 0::2] + b[:, 1::2, 0::2] + b[:, 0::2, 1::2] + b[:, 1::2, 1::2]) / 4
        else:
            value *= max(ssim, 0.0) ** weight
    return value


@pytest.mark.parametrize("resolution", [64, 32, 16])
def test_matches_float64_reference(resolution):
    a = upsampled_noise(4, resolution, seed=1, coarse=resolution // 8, fine=15)
    other = upsampled_noise(4, resolution, seed=3, coarse=resolution // 8, fine=15).float()
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(2))
    # Pairs: noisy copies, a half blend with another image, an unrelated image.
    b = torch.cat([a[:2] + 30 * noise[:2], 0.5 * (a[2:3] + other[2:3]), other[3:]])
    b = b.round().clamp(0, 255).to(torch.uint8)
    ours = ms_ssim_pairs(a, b).numpy()
    reference = np.array([ref_ms_ssim(x, y) for x, y in zip(a.numpy(), b.numpy())])
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=1e-6)
    assert ((0.05 < reference[:3]) & (reference[:3] < 0.99)).all(), reference  # not trivial cases


def test_identical_images_score_one():
    images = upsampled_noise(4, 32, seed=4, coarse=4, fine=15)
    assert ms_ssim_pairs(images, images.clone()).numpy() == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(images.repeat_interleave(2, dim=0)) == pytest.approx(1.0, abs=1e-6)


def test_independent_noise_scores_near_zero():
    g = torch.Generator().manual_seed(5)
    noise = torch.randint(0, 256, (16, 3, 128, 128), generator=g, dtype=torch.uint8)
    value = ms_ssim(noise)
    # Not exactly 0: K2 keeps the coarsest scales' contrast term above 0 (the closed form gives ~0.08).
    assert 0.0 <= value < 0.12


def test_pairs_are_consecutive_images():
    images = upsampled_noise(6, 32, seed=6, coarse=4, fine=15)
    expected = ms_ssim_pairs(images[0::2], images[1::2]).mean().item()
    assert ms_ssim(images, batch_size=4) == pytest.approx(expected, rel=1e-12)
    assert ms_ssim(images[:5]) == pytest.approx(ms_ssim_pairs(images[0:4:2], images[1:4:2]).mean().item())


def test_too_small_images_are_refused():
    tiny = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(MetricError, match="at least 16x16"):
        ms_ssim(tiny)
    with pytest.raises(MetricError, match="at least 2 images"):
        ms_ssim(upsampled_noise(1, 16, seed=0, coarse=2, fine=15))
