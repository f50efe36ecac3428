"""MS-SSIM between pairs of generated images: a diversity measure (lower = more varied).

Follows the paper's `metrics/ms_ssim.py` (itself TensorFlow's port of Wang et al. 2003): five
scales with weights [0.0448, 0.2856, 0.3001, 0.2363, 0.1333], Gaussian window 11x11 with
sigma 1.5, K1 0.01, K2 0.03, dynamic range 255, 'valid' filtering, 2x2 box downsampling between
scales; per pair prod(cs[0..3] ** w[0..3]) * ssim[4] ** w[4] (cs, ssim clipped at 0), averaged
over the pairs (images 2k, 2k+1).

Small images: like the original, at every scale the window is shrunk to min(11, height) with
sigma scaled by the same factor, so at 128x128 the coarsest scale (8x8) already uses an 8x8
window, and at 32x32 the scales 32..2 use windows 11, 11, 8, 4, 2. Below 16x16 the fifth scale
would be smaller than one pixel, so 16x16 is the smallest resolution accepted. Numbers at
small resolutions are not comparable with the paper's (128x128 and up). Non-square images are
scored the same way (the window fits the short side); their short side must be 16 or more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from progan.shapes import DEFAULT_ASPECT, level_size
from progan.metrics.common import MetricError, check_uint8_images

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
MAX_VALUE = 255.0
MIN_RESOLUTION = 2 ** (len(WEIGHTS) - 1)  # 16: the fifth scale is then 1x1
DEFAULT_NUM_IMAGES = 20000  # 10,000 pairs, as in the paper


def check_msssim_resolution(resolution: int, aspect: str = DEFAULT_ASPECT) -> None:
    check_msssim_size(*level_size(aspect, resolution))


def check_msssim_size(width: int, height: int) -> None:
    if min(width, height) < MIN_RESOLUTION:
        short = "" if width == height else " on the short side"
        raise MetricError(f"MS-SSIM needs images of at least {MIN_RESOLUTION}x{MIN_RESOLUTION}{short} "
                          f"({len(WEIGHTS)} scales), got {width}x{height}")


def gaussian_taps(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1-D taps of MATLAB's fspecial('gaussian') (half-pixel offsets for even sizes), summing to 1.

    The 2-D window exp(-(x^2 + y^2) / 2 sigma^2) / sum is the outer product of these.
    """
    offset = 0.5 if size % 2 == 0 else 0.0
    x = torch.arange(size, dtype=torch.float64) - size // 2 + offset
    taps = torch.exp(-x.square() / (2 * sigma * sigma))
    return (taps / taps.sum()).to(dtype)


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    channels, size = x.shape[1], taps.numel()
    x = F.conv2d(x, taps.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def _ssim_and_cs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair mean SSIM and contrast-structure term at one scale ([N] each)."""
    size = min(WINDOW_SIZE, a.shape[2], a.shape[3])
    taps = gaussian_taps(size, size * WINDOW_SIGMA / WINDOW_SIZE, a.dtype).to(a.device)
    channels = a.shape[1]
    # One grouped filter pass over the five maps the SSIM needs.
    moments = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1), taps)
    mu_a, mu_b, aa, bb, ab = moments.split(channels, dim=1)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    c1, c2 = (K1 * MAX_VALUE) ** 2, (K2 * MAX_VALUE) ** 2
    v1, v2 = 2.0 * cov + c2, var_a + var_b + c2
    ssim = ((2.0 * mu_a * mu_b + c1) * v1) / ((mu_a * mu_a + mu_b * mu_b + c1) * v2)
    return ssim.mean(dim=(1, 2, 3)), (v1 / v2).mean(dim=(1, 2, 3))


def ms_ssim_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair (a[i], b[i]) of uint8 images [N, C, H, W] -> float64 [N]."""
    check_uint8_images(a)
    check_uint8_images(b)
    if a.shape != b.shape:
        raise MetricError(f"MS-SSIM pairs must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    check_msssim_size(a.shape[3], a.shape[2])
    x, y = a.float(), b.float()  # float32 like the original
    cs_terms, ssim = [], None
    for scale in range(len(WEIGHTS)):
        ssim, cs = _ssim_and_cs(x, y)
        cs_terms.append(cs)
        if scale + 1 < len(WEIGHTS):
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64, device=a.device)
    cs_stack = torch.stack(cs_terms[:-1]).double().clamp_min(0.0)
    score = (cs_stack ** weights[:-1, None]).prod(dim=0) * ssim.double().clamp_min(0.0) ** weights[-1]
    return score


def ms_ssim(images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean MS-SSIM over the consecutive pairs (0, 1), (2, 3), ... of uint8 images [N, C, H, W]."""
    check_uint8_images(images)
    pairs = images.shape[0] // 2
    if pairs < 1:
        raise MetricError("MS-SSIM needs at least 2 images")
    images = images[:2 * pairs]
    step = 2 * max(1, batch_size // 2)
    scores = [ms_ssim_pairs(images[i:i + step:2], images[i + 1:i + step:2]) for i in range(0, 2 * pairs, step)]
    return float(torch.cat(scores).mean())
