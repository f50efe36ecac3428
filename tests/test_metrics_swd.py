"""SWD against an independent float64 numpy implementation, and its basic behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from conftest import upsampled_noise

from progan.metrics import MetricError, sliced_wasserstein_distance
from progan.metrics.swd import (
    DescriptorSet,
    laplacian_pyramid,
    patch_centres,
    projection_directions,
    pyramid_up,
    swd_resolutions,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the reference: the paper's procedure written plainly in float64 -------------------------
BINOMIAL_5x5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def ref_blur(image: np.ndarray, gain: float) -> np.ndarray:
    """One [H, W] channel, 'mirror' boundary = reflection without repeating the edge pixel."""
    return scipy.ndimage.convolve(image, BINOMIAL_5x5 * gain, mode="mirror")


def ref_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """[C, H, W] float64 -> Laplacian levels, finest first (last = low-pass residual)."""
    pyramid = [image.astype(np.float64)]
    for _ in range(1, levels):
        finer = pyramid[-1]
        coarser = np.stack([ref_blur(ch, 1.0)[::2, ::2] for ch in finer])
        up = np.zeros_like(finer)
        up[:, ::2, ::2] = coarser
        up = np.stack([ref_blur(ch, 4.0) for ch in up])
        pyramid[-1] = finer - up
        pyramid.append(coarser)
    return pyramid


def ref_swd(real: np.ndarray, fake: np.ndarray, seed: int) -> dict[str, float]:
    n, channels, resolution, _ = real.shape
    sizes, size = [], resolution
    while size >= 16:
        sizes.append(size)
        size //= 2
    sizes = sizes or [resolution]
    per_set = []
    for images in (real, fake):
        levels = [[] for _ in sizes]
        for i in range(n):
            for lvl, level in enumerate(ref_pyramid(images[i], len(sizes))):
                centres = patch_centres(seed, lvl, sizes[lvl], i, 1)[0].numpy()
                for cy, cx in centres:
                    levels[lvl].append(level[:, cy - 3:cy + 4, cx - 3:cx + 4])
        normalised = []
        for patches in levels:
            desc = np.stack(patches)  # [M, C, 7, 7]
            desc = (desc - desc.mean(axis=(0, 2, 3), keepdims=True)) / desc.std(axis=(0, 2, 3), keepdims=True)
            normalised.append(desc.reshape(len(desc), -1))
        per_set.append(normalised)
    result = {}
    for lvl, size in enumerate(sizes):
        dirs = projection_directions(seed, lvl, per_set[0][lvl].shape[1]).double().numpy()
        repeats = []
        for d in dirs:  # [D, 128] per repeat
            a = np.sort(per_set[0][lvl] @ d, axis=0)
            b = np.sort(per_set[1][lvl] @ d, axis=0)
            repeats.append(np.mean(np.abs(a - b)))
        result[f"swd_x1e3_{size}"] = 1e3 * np.mean(repeats)
    result["swd_x1e3_avg"] = np.mean(list(result.values()))
    return result


# -- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution, channels", [(32, 3), (8, 1)])
def test_swd_matches_float64_reference(resolution, channels):
    real = upsampled_noise(5, resolution, seed=1, coarse=resolution // 4, fine=12, channels=channels)
    fake = upsampled_noise(5, resolution, seed=2, coarse=resolution // 4, fine=12, channels=channels)
    ours = sliced_wasserstein_distance(real, fake, seed=3, batch_size=2)
    reference = ref_swd(real.numpy(), fake.numpy(), seed=3)
    assert list(ours) == list(reference)
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], rel=2e-6), key
    assert ours["swd_x1e3_avg"] > 1.0  # different sets: far from 0


def test_pyramid_matches_reference_and_reconstructs():
    images = upsampled_noise(2, 32, seed=4, coarse=8, fine=12)
    ours = laplacian_pyramid(images, 2)
    ref = [np.stack(level) for level in zip(*[ref_pyramid(img, 2) for img in images.numpy()])]
    for mine, theirs in zip(ours, ref):
        np.testing.assert_allclose(mine.numpy(), theirs, atol=1e-3)
    # The band-pass levels add back up to the images: coarsest, then upsample and add each finer band.
    levels = laplacian_pyramid(images, 3)
    assert [tuple(level.shape[-2:]) for level in levels] == [(32, 32), (16, 16), (8, 8)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + pyramid_up(rebuilt)
    torch.testing.assert_close(rebuilt, images.float(), atol=1e-3, rtol=0)


def test_levels_go_down_to_16_and_small_images_have_one():
    assert swd_resolutions(128) == [128, 64, 32, 16]
    assert swd_resolutions(16) == [16]
    assert swd_resolutions(8) == [8]
    with pytest.raises(MetricError, match="at least 8"):
        swd_resolutions(4)


def test_a_set_against_itself_is_zero():
    images = upsampled_noise(6, 32, seed=5, coarse=8, fine=12)
    result = sliced_wasserstein_distance(images, images.clone())
    assert all(value == 0.0 for value in result.values())


@pytest.mark.parametrize("kind", ["blur", "noise"])
def test_swd_grows_monotonically_with_degradation(kind):
    images = upsampled_noise(24, 32, seed=6, coarse=8, fine=12)
    values = []
    for strength in range(4):
        x = images.float()
        if kind == "blur" and strength:
            taps = torch.tensor([1.0, 2.0, 1.0]) / 4
            for _ in range(2 ** strength):  # repeated binomial blur
                x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"),
                             torch.outer(taps, taps).expand(3, 1, 3, 3), groups=3)
        if kind == "noise":
            x = x + 20.0 * strength * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        degraded = x.round().clamp(0, 255).to(torch.uint8)
        values.append(sliced_wasserstein_distance(images, degraded, seed=0)["swd_x1e3_avg"])
    assert values[0] == 0.0
    assert all(later > earlier for earlier, later in zip(values, values[1:])), values


def test_result_does_not_depend_on_batching_or_sharding():
    real, fake = upsampled_noise(6, 16, seed=8, coarse=4, fine=12), upsampled_noise(6, 16, seed=9, coarse=4, fine=12)
    whole = sliced_wasserstein_distance(real, fake, batch_size=6)
    assert sliced_wasserstein_distance(real, fake, batch_size=4) == whole
    # Two shards (images 0..3 and 4..5) hold exactly the rows of the whole set.
    full = DescriptorSet(16, 0, 6, seed=0)
    full.add(fake)
    first, second = DescriptorSet(16, 0, 4, seed=0), DescriptorSet(16, 4, 2, seed=0)
    first.add(fake[:4])
    second.add(fake[4:])
    assert torch.equal(torch.cat([first.levels[0], second.levels[0]]), full.levels[0])


def test_bad_inputs_are_refused():
    a = upsampled_noise(4, 16, seed=1, coarse=4, fine=12)
    with pytest.raises(MetricError, match="equally many"):
        sliced_wasserstein_distance(a, a[:3])
    with pytest.raises(MetricError, match="uint8"):
        sliced_wasserstein_distance(a.float(), a.float())
