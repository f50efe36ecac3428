"""Speed of the metrics on this machine, with extrapolation to the paper's image counts.

    .venv/bin/python bench/bench_metrics.py [--swd-images 2048] [--resolution 128]
        [--msssim-pairs 500] [--fid-images 32] [--batch-size 64] [--device cpu]

Prints a markdown table. SWD is measured on --swd-images per side (two independent sets of
synthetic images) and extrapolated to 16384 per side: descriptors, normalisation and
projections scale linearly, sorting as n log n. MS-SSIM is extrapolated to 10,000 pairs; FID's
Inception to 2 x 50,000 images (reals are cached after the first evaluation, halving that).
--batch-size is the images per batch of every phase (SWD descriptors, MS-SSIM, Inception).
No number here is asserted anywhere; the machine's load average, this process's CPU time and
peak RSS are printed with the table.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from progan.metrics import fid, msssim, swd
from progan.metrics.inception import FEATURE_DIMS, FIDInceptionV3

PAPER_SWD_IMAGES = 16384
PAPER_MSSSIM_PAIRS = 10000
PAPER_FID_IMAGES = 50000


def synthetic_images(n: int, resolution: int, seed: int) -> torch.Tensor:
    """Smooth random images with some fine noise (uint8), generated in slices to bound memory."""
    out = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, 256):
        m = min(256, n - i)
        coarse = torch.rand(m, 3, resolution // 8, resolution // 8, generator=g) * 255
        fine = torch.randn(m, 3, resolution, resolution, generator=g) * 10
        out[i:i + m] = (F.interpolate(coarse, size=resolution, mode="bilinear", align_corners=False) + fine
                        ).round().clamp(0, 255).to(torch.uint8)
    return out


class Timer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def wrap(self, module, name: str, label: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            with self(label):
                return original(*args, **kwargs)
        setattr(module, name, timed)


def bench_swd(n: int, resolution: int, device: torch.device, batch: int) -> list[tuple[str, float, float]]:
    timer = Timer()
    timer.wrap(swd, "_project", "project")
    timer.wrap(swd, "_sort_rows_", "sort")
    sets = []
    for seed in (1, 2):
        images = synthetic_images(n, resolution, seed)
        descriptors = swd.DescriptorSet(resolution, 0, n, seed=0, device=device)
        with timer("descriptors"):
            for i in range(0, n, batch):
                descriptors.add(images[i:i + batch])
        with timer("normalise"):
            levels = [swd.normalize_descriptors(level, 3) for level in descriptors.levels]
        sets.append(levels)
        del images
    with timer("distance"):
        result = swd.swd_from_descriptors(sets[0], sets[1], swd.swd_resolutions(resolution), seed=0, device=device)
    linear = PAPER_SWD_IMAGES / n
    rows_now, rows_paper = n * swd.PATCHES_PER_IMAGE, PAPER_SWD_IMAGES * swd.PATCHES_PER_IMAGE
    n_log_n = linear * math.log2(rows_paper) / math.log2(rows_now)
    other = timer.totals["distance"] - timer.totals["project"] - timer.totals["sort"]
    phases = [
        ("SWD descriptors (pyramid + patches), 2 sets", timer.totals["descriptors"], linear),
        ("SWD normalisation, 2 sets", timer.totals["normalise"], linear),
        ("SWD projections (512 dirs/level)", timer.totals["project"], linear),
        ("SWD sorting", timer.totals["sort"], n_log_n),
        ("SWD rest (differences, sums)", other, linear),
    ]
    rows = [(name, seconds, seconds * factor) for name, seconds, factor in phases]
    rows.append((f"**SWD total, {resolution}x{resolution}, {n} vs {PAPER_SWD_IMAGES} per side**",
                 sum(r[1] for r in rows), sum(r[2] for r in rows)))
    print(f"SWD x1e3 of the two synthetic sets: {result}")
    return rows


def bench_msssim(pairs: int, resolution: int, device: torch.device, batch: int) -> list[tuple[str, float, float]]:
    images = synthetic_images(2 * pairs, resolution, seed=3).to(device)
    msssim.ms_ssim(images[:8])  # warm-up
    start = time.perf_counter()
    msssim.ms_ssim(images, batch_size=batch)
    seconds = time.perf_counter() - start
    return [(f"MS-SSIM, {resolution}x{resolution}, {pairs} vs {PAPER_MSSSIM_PAIRS} pairs", seconds,
             seconds * PAPER_MSSSIM_PAIRS / pairs)]


def bench_fid(n: int, resolution: int, device: torch.device, batch: int) -> list[tuple[str, float, float]]:
    model = FIDInceptionV3().eval().to(device)
    images = synthetic_images(n, resolution, seed=4)
    with torch.no_grad():
        model(images[:2].to(device))  # warm-up
        start = time.perf_counter()
        for i in range(0, n, batch):
            model(images[i:i + batch].to(device))
        seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(4096, FEATURE_DIMS)) for _ in range(2)]
    stats = [fid.feature_statistics(f) for f in features]
    start = time.perf_counter()
    fid.frechet_distance(*stats[0], *stats[1])
    distance_seconds = time.perf_counter() - start
    return [
        (f"FID Inception features, {n} vs 2x{PAPER_FID_IMAGES} images", seconds, seconds * 2 * PAPER_FID_IMAGES / n),
        ("FID Frechet distance (2048-d, scipy)", distance_seconds, distance_seconds),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--swd-images", type=int, default=2048)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--msssim-pairs", type=int, default=500)
    p.add_argument("--fid-images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="images per batch in every phase (default 64)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = bench_swd(args.swd_images, args.resolution, device, args.batch_size)
    rows += bench_msssim(args.msssim_pairs, args.resolution, device, args.batch_size)
    rows += bench_fid(args.fid_images, args.resolution, device, args.batch_size)
    load_after = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\ndevice {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    print(f"this process: user CPU {usage.ru_utime:.0f} s, system CPU {usage.ru_stime:.0f} s, "
          f"wall {time.perf_counter() - started:.0f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB")
    side = swd.descriptor_bytes(PAPER_SWD_IMAGES, args.resolution) / 2**30
    print(f"SWD descriptors take {side:.1f} GiB per side at {PAPER_SWD_IMAGES} images (float32); an "
          f"evaluation without cached reals holds both sides, {2 * side:.1f} GiB\n")
    print("| phase | measured (s) | extrapolated to the paper's counts (s) |")
    print("|---|---:|---:|")
    for name, measured, extrapolated in rows:
        print(f"| {name} | {measured:.1f} | {extrapolated:.0f} ({extrapolated / 60:.1f} min) |")


if __name__ == "__main__":
    main()
