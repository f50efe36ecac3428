"""Multi-scale sliced Wasserstein distance (SWD), the paper's own metric (Karras et al. 2018, sec. 5).

The procedure follows the authors' `metrics/sliced_wasserstein.py`:

1. Laplacian pyramid of every uint8 image (as float32, values 0..255) from full resolution down
   to 16x16: `down` = 5x5 binomial blur ([1,4,6,4,1]/16 per axis, reflect padding) then every
   second pixel; `up` = zero insertion then the same blur times 4; level_l = G_l - up(G_{l+1}),
   the last level is the blurred image itself. Images of 16x16 or less give one level
   (8x8 is the smallest: a 7x7 patch must fit). Non-square images (progan.shapes) go down while
   the short side stays 16 or more, or are one level when it is below 16 (8 at least); levels
   keep their names (the long side): 3:4 at 64 gives 48x64 and 24x32 ("swd_x1e3_64", "_32"),
   not 12x16, whose short side is below 16; 3:4 at 16 is one level at 12x16.
2. From every level of every image, 128 random 7x7xC patches ("descriptors"), centres drawn
   uniformly from [3, size-3) on each axis.
3. Each image set's descriptors of a level are normalised per channel by that set's own mean
   and standard deviation (as the original code does).
4. 4 repeats x 128 random unit directions; both sets are projected, each projection is sorted
   and the distance is the mean absolute difference of the sorted projections, averaged over
   all 512 directions. Reported x 1e3 per level, and their average.

Deliberate differences from the original: the randomness (patch centres, directions) comes from
seeded torch generators, so a number is reproducible and independent of batch size and of the
number of processes; image i of the real and of the fake set get the same patch centres (the
original draws them independently; positions do not depend on content, so only the variance
drops, and a set's distance to itself is exactly 0); patches are laid out [C, dy, dx] (the
original's is transposed, which random directions cannot tell apart).

Cost: descriptors take 128 * 49C floats per image per level (~1.2 GB per level per side for
16384 RGB images); the work is dominated by the 2 x 512 sorts of 2M numbers per level.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from progan.shapes import DEFAULT_ASPECT, aspect_of, describe_level, level_size
from progan.metrics.common import MetricError, check_uint8_images, is_power_of_two, labelled_generator, seeded_rows

PATCH_SIZE = 7
PATCHES_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
SMALLEST_LEVEL = 16  # the pyramid goes down to 16x16
DEFAULT_NUM_IMAGES = 16384

_HALF = PATCH_SIZE // 2


def swd_resolutions(resolution: int, aspect: str = DEFAULT_ASPECT) -> list[int]:
    """The pyramid levels' sizes (named by the long side): resolution, resolution/2, ... while
    the short side is 16 or more (one level when it is below 16)."""
    short = min(level_size(aspect, resolution)) if is_power_of_two(resolution) and resolution >= 4 else 0
    if short < PATCH_SIZE + 1:
        if aspect == DEFAULT_ASPECT:
            raise MetricError(
                f"SWD needs a power-of-two resolution of at least {PATCH_SIZE + 1} (a {PATCH_SIZE}x{PATCH_SIZE} "
                f"patch must fit), got {resolution}")
        raise MetricError(f"SWD needs images with a short side of at least {PATCH_SIZE + 1} (a {PATCH_SIZE}x"
                          f"{PATCH_SIZE} patch must fit), got {describe_level(aspect, resolution)} at level {resolution}")
    sizes, size = [], resolution
    while min(level_size(aspect, size)) >= SMALLEST_LEVEL:
        sizes.append(size)
        size //= 2
    return sizes or [resolution]


# -- pyramid -----------------------------------------------------------------------------
# Both steps are written per axis with slices (a 5-tap filter is separable): five taps per axis
# instead of 25 per pixel, and only the outputs that are kept are computed.

def _down_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Binomial blur along `dim` with reflect padding, keeping every second sample."""
    n = x.shape[dim]
    x = torch.cat([x.narrow(dim, 2, 1), x.narrow(dim, 1, 1), x,
                   x.narrow(dim, n - 2, 1), x.narrow(dim, n - 3, 1)], dim).movedim(dim, -1)

    def tap(k: int) -> torch.Tensor:
        return x[..., k:k + n:2]

    out = (tap(0) + tap(4)).add_(tap(1) + tap(3), alpha=4.0).add_(tap(2), alpha=6.0).div_(16.0)
    return out.movedim(-1, dim)


def _up_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero insertion then blur x2 along `dim`, reflect padding, as its two output phases.

    With u[2i] = x[i], u[2i+1] = 0 and u reflected at both ends, even outputs are
    (x[i-1] + 6 x[i] + x[i+1]) / 8 and odd ones (x[i] + x[i+1]) / 2, where x[-1] = x[1]
    (u[-2] = u[2]) and x[n] = x[n-1] (u[2n] = u[2n-2]).
    """
    n = x.shape[dim]
    x = torch.cat([x.narrow(dim, 1, 1), x, x.narrow(dim, n - 1, 1)], dim).movedim(dim, -1)
    even = (x[..., 0:n] + x[..., 2:n + 2]).add_(x[..., 1:n + 1], alpha=6.0).div_(8.0)
    odd = (x[..., 1:n + 1] + x[..., 2:n + 2]).div_(2.0)
    return torch.stack([even, odd], dim=-1).flatten(-2).movedim(-1, dim)


def pyramid_down(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H/2, W/2]: 5x5 binomial blur (reflect padding), every second pixel."""
    return _down_axis(_down_axis(x, 2), 3)


def pyramid_up(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W]: zero insertion, then the blur with 4x gain (reflect padding)."""
    return _up_axis(_up_axis(x, 2), 3)


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """float32 Laplacian pyramid of uint8 (or 0..255 float) images, finest level first."""
    levels = [images.float()]
    for _ in range(1, num_levels):
        coarser = pyramid_down(levels[-1])
        levels[-1] = levels[-1] - pyramid_up(coarser)
        levels.append(coarser)
    return levels


# -- the seeded random state ----------------------------------------------------------------
def patch_centres(seed: int, level: int, size: int, start: int, count: int,
                  width: int | None = None) -> torch.Tensor:
    """int64 [count, 128, 2] (row, column) patch centres for images start..start+count-1 of
    size x size, or of `size` rows and `width` columns when width is given and differs.

    Both image sets use the same centres for the same image index (common random numbers):
    centres are independent of image content, so this changes no expectation, makes a set's
    distance to itself exactly 0 and lowers the variance of comparisons.
    """
    def block(generator: torch.Generator, rows: int) -> torch.Tensor:
        if width is None or width == size:  # square: one draw, as always (cached numbers stay valid)
            return torch.randint(_HALF, size - _HALF, (rows, PATCHES_PER_IMAGE, 2), generator=generator)
        ys = torch.randint(_HALF, size - _HALF, (rows, PATCHES_PER_IMAGE, 1), generator=generator)
        return torch.cat([ys, torch.randint(_HALF, width - _HALF, (rows, PATCHES_PER_IMAGE, 1), generator=generator)], 2)

    return seeded_rows(start, count, block, seed, "swd-patches", level)


def projection_directions(seed: int, level: int, dims: int) -> torch.Tensor:
    """float32 [DIR_REPEATS, dims, DIRS_PER_REPEAT] random unit directions (columns)."""
    dirs = torch.randn(DIR_REPEATS, dims, DIRS_PER_REPEAT, dtype=torch.float64,
                       generator=labelled_generator(seed, "swd-directions", level))
    return (dirs / dirs.norm(dim=1, keepdim=True)).float()


def extract_patches(level: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[B, C, S, S] level, [B, P, 2] centres -> [B * P, C * 7 * 7] descriptors (C, dy, dx order)."""
    batch, channels, height, width = level.shape
    centres = centres.to(level.device)
    # Flat index = (patch's top-left pixel in its image) + (offset of each of the C*7*7 samples).
    image_start = torch.arange(batch, device=level.device).view(batch, 1) * (channels * height * width)
    top_left = image_start + (centres[:, :, 0] - _HALF) * width + (centres[:, :, 1] - _HALF)  # [B, P]
    steps = torch.arange(PATCH_SIZE, device=level.device)
    offsets = (torch.arange(channels, device=level.device).view(-1, 1, 1) * (height * width)
               + steps.view(1, -1, 1) * width + steps.view(1, 1, -1)).reshape(-1)  # [C*49]
    index = top_left.reshape(-1, 1) + offsets
    return level.reshape(-1)[index]


# -- descriptor sets -----------------------------------------------------------------------
class DescriptorSet:
    """Raw descriptors of images first_index .. first_index+count-1 of one image set, per level."""

    def __init__(self, resolution: int, first_index: int, count: int, *, seed: int,
                 channels: int = 3, device: torch.device | str = "cpu", aspect: str = DEFAULT_ASPECT) -> None:
        self.sizes = swd_resolutions(resolution, aspect)
        self.resolution, self.count, self.channels = resolution, count, channels
        self.width, self.height = level_size(aspect, resolution)
        dims = channels * PATCH_SIZE * PATCH_SIZE
        self.centres = [patch_centres(seed, level, level_size(aspect, size)[1], first_index, count,
                                      width=level_size(aspect, size)[0])
                        for level, size in enumerate(self.sizes)]
        # Preallocated on the CPU: concatenating batches would briefly need twice the memory.
        self.levels = [torch.empty(count * PATCHES_PER_IMAGE, dims) for _ in self.sizes]
        self.device = torch.device(device)
        self.filled = 0

    def add(self, images: torch.Tensor) -> None:
        """Add the next batch of uint8 images [B, C, H, W] (in index order)."""
        check_uint8_images(images)
        batch = images.shape[0]
        if images.shape[1:] != (self.channels, self.height, self.width):
            raise MetricError(f"SWD expected images [N, {self.channels}, {self.height}, {self.width}], "
                              f"got {tuple(images.shape)}")
        if self.filled + batch > self.count:
            raise MetricError(f"SWD was given more than the {self.count} images it was set up for")
        pyramid = laplacian_pyramid(images.to(self.device), len(self.sizes))
        rows = slice(self.filled * PATCHES_PER_IMAGE, (self.filled + batch) * PATCHES_PER_IMAGE)
        for level, centres, out in zip(pyramid, self.centres, self.levels):
            out[rows] = extract_patches(level, centres[self.filled:self.filled + batch]).cpu()
        self.filled += batch


def normalize_descriptors(desc: torch.Tensor, channels: int, chunk_rows: int = 1 << 15) -> torch.Tensor:
    """Per-channel (mean, std) normalisation of a [M, C*49] float32 set, in place.

    Chunk statistics (one fused float32 pass each) are merged in float64 with Chan et al.'s
    pairwise formula: as exact as numpy's two-pass std, in two passes over the data instead of
    three. A channel with zero spread (a constant image set) is only centred.
    """
    rows = desc.shape[0]
    view = desc.view(rows, channels, -1)
    count = 0
    mean = torch.zeros(channels, dtype=torch.float64, device=desc.device)
    m2 = torch.zeros(channels, dtype=torch.float64, device=desc.device)  # sum of squared deviations
    for i in range(0, rows, chunk_rows):
        chunk = view[i:i + chunk_rows]
        n = chunk.shape[0] * chunk.shape[2]
        var_c, mean_c = torch.var_mean(chunk, dim=(0, 2), correction=0)
        delta = mean_c.double() - mean
        total = count + n
        mean += delta * (n / total)
        m2 += var_c.double() * n + delta.square() * (count * n / total)
        count = total
    std = (m2 / count).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    mean32, std32 = mean.float().view(1, -1, 1), std.float().view(1, -1, 1)
    for i in range(0, rows, chunk_rows):
        view[i:i + chunk_rows].sub_(mean32).div_(std32)
    return desc


# -- the distance ---------------------------------------------------------------------------
def _sort_rows_(x: torch.Tensor) -> torch.Tensor:
    """Sort each row of a [K, M] tensor (in place on the CPU)."""
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    # numpy sorts in place (no second [K, M] buffer) and releases the GIL, so row blocks sort in
    # parallel threads.
    rows = x.numpy()
    workers = max(1, min(torch.get_num_threads(), rows.shape[0]))
    if workers == 1 or rows.size < (1 << 20):  # small: threads cost more than they save
        rows.sort(axis=1)
        return x
    blocks = np.array_split(np.arange(rows.shape[0]), workers)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda block: rows[block[0]:block[-1] + 1].sort(axis=1), blocks))
    return x


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor, *,
                       device: torch.device | str = "cpu", dirs_per_chunk: int = 64,
                       rows_per_chunk: int = 1 << 18) -> float:
    """Mean |sorted(a @ d) - sorted(b @ d)| over all rows and directions d (float64 result).

    a, b: [M, D] normalised descriptor sets (CPU tensors, may be memory-mapped);
    directions: [repeats, D, K]. Directions are processed a chunk at a time to bound memory.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise MetricError(f"SWD needs two descriptor sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    device = torch.device(device)
    dirs = directions.permute(1, 0, 2).reshape(directions.shape[1], -1)  # [D, repeats*K]
    total, num_dirs, rows = 0.0, dirs.shape[1], a.shape[0]
    for first in range(0, num_dirs, dirs_per_chunk):
        chunk = dirs[:, first:first + dirs_per_chunk].to(device)
        projected_a = _sort_rows_(_project(a, chunk, device, rows_per_chunk))
        projected_b = _sort_rows_(_project(b, chunk, device, rows_per_chunk))
        total += float(projected_a.sub_(projected_b).abs_().sum(dtype=torch.float64))
        del projected_a, projected_b
    return total / (num_dirs * rows)


def _project(desc: torch.Tensor, dirs: torch.Tensor, device: torch.device, rows_per_chunk: int) -> torch.Tensor:
    """[K, M] = dirs.T @ desc.T, streaming the rows of desc to the device."""
    if desc.device == device:
        return dirs.T @ desc.T
    out = torch.empty(dirs.shape[1], desc.shape[0], device=device)
    for i in range(0, desc.shape[0], rows_per_chunk):
        out[:, i:i + rows_per_chunk] = dirs.T @ desc[i:i + rows_per_chunk].to(device, non_blocking=True).T
    return out


def swd_from_descriptors(real_levels: list[torch.Tensor], fake_levels: list[torch.Tensor], sizes: list[int], *,
                         seed: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """SWD x 1e3 per level and averaged, from normalised descriptor sets (one per level)."""
    result = {}
    for level, (size, real, fake) in enumerate(zip(sizes, real_levels, fake_levels)):
        dirs = projection_directions(seed, level, real.shape[1])
        result[f"swd_x1e3_{size}"] = 1e3 * sliced_wasserstein(real, fake, dirs, device=device)
    result["swd_x1e3_avg"] = float(np.mean(list(result.values())))
    return result


def sliced_wasserstein_distance(real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0,
                                batch_size: int = 64, device: torch.device | str = "cpu") -> dict[str, float]:
    """SWD between two equally large uint8 image sets [N, C, H, W] (square or of a supported
    aspect), all in memory (small sets, tests).

    Larger sets go through `progan.metrics.evaluate_metrics`, which streams them.
    """
    check_uint8_images(real, "real images")
    check_uint8_images(fake, "fake images")
    if real.shape != fake.shape:
        raise MetricError(f"SWD needs equally many images of one size, got {tuple(real.shape)} and {tuple(fake.shape)}")
    count, channels, height, width = real.shape
    try:
        aspect = aspect_of(width, height)
    except ValueError as exc:
        raise MetricError(f"SWD: images of {width}x{height}: {exc}") from None
    resolution = max(width, height)
    sets = []
    for images in (real, fake):
        descriptors = DescriptorSet(resolution, 0, count, seed=seed, channels=channels, device=device, aspect=aspect)
        for i in range(0, count, batch_size):
            descriptors.add(images[i:i + batch_size])
        sets.append([normalize_descriptors(level, channels) for level in descriptors.levels])
    return swd_from_descriptors(sets[0], sets[1], swd_resolutions(resolution, aspect), seed=seed, device=device)


def descriptor_bytes(num_images: int, resolution: int, channels: int = 3, aspect: str = DEFAULT_ASPECT) -> int:
    """Memory one side's descriptors take (float32), for messages and planning."""
    levels = len(swd_resolutions(resolution, aspect))
    return levels * num_images * PATCHES_PER_IMAGE * channels * PATCH_SIZE ** 2 * 4
