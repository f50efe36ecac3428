"""evaluate_metrics: SWD, MS-SSIM and FID of a generator (or any image source), on 1..N processes.

Sharding: with `world_size` processes, metric m over `n` images gives every process the same
number of images, `per = ceil(n / world_size)` (rounded up to even for MS-SSIM's pairs);
process r produces global images r*per .. r*per+per-1 of the seeded sequence. Each process
computes the cheapest thing that can be combined, `all_gather` concatenates it in rank order,
the padding past image n is dropped, and every process then computes the same number:

- SWD: raw patch descriptors (per pyramid level) are gathered; normalisation, projections and
  sorting run on the whole set.
- MS-SSIM: per-pair scores are gathered and averaged.
- FID: the 2048-d Inception features are gathered; mu/sigma and the distance follow.

Because latents and patch centres are drawn per global image index, the result does not depend
on the number of processes or the batch size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from progan.data.reader import MultiResolutionDataset, dataset_fingerprint
from progan.metrics import cache, fid, msssim, swd
from progan.metrics.common import MetricError, check_uint8_images, labelled_generator
from progan.metrics.inception import load_inception
from progan.metrics.sources import DatasetSource, ImageSource
from progan.runtime.progress import Progress
from progan.shapes import DEFAULT_ASPECT, describe_level, level_size

METRICS = ("swd", "msssim", "fid")
DEFAULT_NUM_IMAGES = {"swd": swd.DEFAULT_NUM_IMAGES, "msssim": msssim.DEFAULT_NUM_IMAGES,
                      "fid": fid.DEFAULT_NUM_IMAGES}
# The metrics that read real images; MS-SSIM looks at generated images only.
METRICS_WITH_REALS = ("swd", "fid")
AllGather = Callable[[torch.Tensor], torch.Tensor]


# -- what can be computed -------------------------------------------------------------------
def parse_metric_names(text: str | Sequence[str]) -> list[str]:
    """'swd,msssim' or a list -> validated, de-duplicated names in the given order."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricError(f"unknown metric {unknown[0]!r} (choose from {', '.join(METRICS)})")
    return list(dict.fromkeys(names))


def unavailable_reason(name: str, resolution: int, *, inception_path: str | Path | None = None,
                       aspect: str = DEFAULT_ASPECT) -> str | None:
    """Why metric `name` cannot be computed at `resolution` of a model of `aspect` (None when it can).

    Training calls this each evaluation to skip metrics the current resolution is too small for.
    """
    try:
        if name == "swd":
            swd.swd_resolutions(resolution, aspect)
        elif name == "msssim":
            msssim.check_msssim_resolution(resolution, aspect)
        elif name == "fid":
            if inception_path is None:
                return ("FID unavailable: no Inception weights given (--inception PATH to "
                        "pt_inception-2015-12-05-6726825d.pth)")
            if not Path(inception_path).is_file():
                return f"FID unavailable: Inception weights file {inception_path} does not exist"
        else:
            return f"unknown metric {name!r} (choose from {', '.join(METRICS)})"
    except MetricError as exc:
        return str(exc)
    return None


# -- the run's plumbing ---------------------------------------------------------------------
@dataclass
class _Run:
    fake: ImageSource
    real: object  # a dataset with __len__/get_batch, or None
    real_name: str
    resolution: int
    rank: int
    world_size: int
    all_gather: AllGather | None
    cache_dir: Path | None
    dataset_id: str | None
    seed: int
    device: torch.device
    batch_size: int
    progress: bool
    aspect: str = DEFAULT_ASPECT
    mirror_reals: bool = False

    def shard(self, count: int, even: bool = False) -> tuple[int, int]:
        per = math.ceil(count / self.world_size)
        if even:
            per += per % 2
        return self.rank * per, per

    def gather(self, tensor: torch.Tensor, keep_rows: int) -> torch.Tensor:
        """Rank-ordered concatenation of every process's `tensor`, cut to the first keep_rows rows."""
        if self.world_size == 1:
            return tensor[:keep_rows]
        gathered = self.all_gather(tensor.to(self.device).contiguous())
        return gathered[:keep_rows]

    def all_agree(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        return bool(self.all_gather(torch.tensor([int(flag)], device=self.device)).min())

    def batches(self, source: ImageSource, start: int, count: int, desc: str, batch_size: int | None = None
                ) -> Iterator[torch.Tensor]:
        batch_size = batch_size or self.batch_size
        show = self.progress and self.rank == 0
        with Progress(count * self.world_size, desc) if show else contextlib.nullcontext() as bar:
            for first in range(start, start + count, batch_size):
                n = min(batch_size, start + count - first)
                images = source(first, n)
                check_uint8_images(images, desc)
                width, height = level_size(self.aspect, self.resolution)
                if images.shape[0] != n or tuple(images.shape[2:]) != (height, width):
                    raise MetricError(f"{desc}: expected {n} images of {width}x{height}, "
                                      f"got {tuple(images.shape)}")
                yield images
                if bar is not None:
                    bar.update(n * self.world_size)

    def real_source(self, count: int, metric: str, allow_fewer: bool = False) -> DatasetSource:
        if self.real is None:
            raise MetricError(f"{metric} needs real images (--real DATA.lmdb)")
        source = DatasetSource(self.real, count, seed=self.seed, side="real", allow_fewer=allow_fewer,
                               name=self.real_name)
        return _MirroredHalf(source, self.seed) if self.mirror_reals else source

    def real_key(self, key: dict) -> dict:
        """A cache key for real statistics; mirrored reals are other statistics (old keys stay valid)."""
        return {**key, "mirror_reals": True} if self.mirror_reals else key


class _MirroredHalf:
    """Reals as a run trained with mirroring saw them, as the release's evaluation does: a seeded
    random half flipped horizontally (position i of the subset flips or not, on every process)."""

    def __init__(self, source: DatasetSource, seed: int) -> None:

        self.source, self.count = source, source.count
        self.flip = torch.rand(source.count, generator=labelled_generator(seed, "mirror", "real")) < 0.5

    def __call__(self, start: int, count: int) -> torch.Tensor:
        images = self.source(start, count)
        flip = self.flip[torch.arange(start, start + count) % self.count]
        return torch.where(flip[:, None, None, None], images.flip(3), images)


# -- SWD ------------------------------------------------------------------------------------
def _swd_descriptors(run: _Run, source: ImageSource, side: str, count: int) -> list[torch.Tensor]:
    start, per = run.shard(count)
    descriptors = None
    for images in run.batches(source, start, per, f"SWD {side} images"):
        if descriptors is None:
            descriptors = swd.DescriptorSet(run.resolution, start, per, seed=run.seed,
                                            channels=images.shape[1], device=run.device, aspect=run.aspect)
        descriptors.add(images)
    levels = []
    for level in descriptors.levels:
        full = run.gather(level, count * swd.PATCHES_PER_IMAGE).cpu()
        levels.append(swd.normalize_descriptors(full, descriptors.channels))
    return levels


def _evaluate_swd(run: _Run, count: int) -> dict[str, float]:
    sizes = swd.swd_resolutions(run.resolution, run.aspect)
    real_source = run.real_source(count, "SWD")
    key = run.real_key({"dataset": run.dataset_id, "resolution": run.resolution, "images": count, "seed": run.seed,
                        "patch_size": swd.PATCH_SIZE, "patches_per_image": swd.PATCHES_PER_IMAGE, "levels": sizes})
    if run.aspect != DEFAULT_ASPECT:  # square keys as before, so existing caches stay valid
        key["aspect"] = run.aspect
    real = None
    if run.cache_dir is not None and run.dataset_id is not None:
        real = cache.load_swd_descriptors(run.cache_dir, key, sizes)
    if not run.all_agree(real is not None):
        real = _swd_descriptors(run, real_source, "real", count)
        if run.rank == 0 and run.cache_dir is not None and run.dataset_id is not None:
            cache.save_swd_descriptors(run.cache_dir, key, sizes, real)
    fake = _swd_descriptors(run, run.fake, "fake", count)
    return swd.swd_from_descriptors(real, fake, sizes, seed=run.seed, device=run.device)


# -- MS-SSIM --------------------------------------------------------------------------------
def _evaluate_msssim(run: _Run, count: int) -> dict[str, float]:
    pairs = count // 2
    if pairs < 1:
        raise MetricError("MS-SSIM needs at least 2 images")
    start, per = run.shard(2 * pairs, even=True)
    batch = run.batch_size + run.batch_size % 2  # pairs never straddle batches
    scores = [msssim.ms_ssim_pairs(images[0::2], images[1::2])
              for images in run.batches(run.fake, start, per, "MS-SSIM images", batch)]
    all_scores = run.gather(torch.cat(scores), pairs)
    return {"msssim": float(all_scores.double().mean())}


# -- FID ------------------------------------------------------------------------------------
_INCEPTION_CACHE: dict[tuple, tuple] = {}


def load_inception_once(path: str | Path, verify: bool = True, device: torch.device | str = "cpu"):
    """(model, sha256) of the FID Inception, loaded once per process (training evaluates often)."""
    stat = Path(path).stat() if Path(path).is_file() else None
    key = (str(Path(path).resolve()), stat and stat.st_size, stat and stat.st_mtime_ns, verify, str(device))
    if key not in _INCEPTION_CACHE:
        _INCEPTION_CACHE.clear()
        _INCEPTION_CACHE[key] = load_inception(path, verify=verify, device=device)
    return _INCEPTION_CACHE[key]


def _fid_features(run: _Run, model, source: ImageSource, count: int, desc: str) -> torch.Tensor:
    start, per = run.shard(count)
    with torch.no_grad():
        features = torch.cat([model(images).float().cpu() for images in run.batches(source, start, per, desc)])
    return run.gather(features, count).cpu()


def _evaluate_fid(run: _Run, count: int, inception_path, verify: bool) -> dict[str, float]:
    reason = unavailable_reason("fid", run.resolution, inception_path=inception_path)
    if reason:
        raise MetricError(reason)
    model, sha256 = load_inception_once(inception_path, verify, run.device)
    # FID's statistics need no equal counts: a database smaller than n (CelebA-HQ: 30k) is used whole.
    real_source = run.real_source(count, "FID", allow_fewer=True)
    key = run.real_key({"dataset": run.dataset_id, "resolution": run.resolution, "images": real_source.count,
                        "seed": run.seed, "inception_sha256": sha256})
    stats = None
    if run.cache_dir is not None and run.dataset_id is not None:
        stats = cache.load_fid_stats(run.cache_dir, key)
    if not run.all_agree(stats is not None):
        stats = fid.feature_statistics(_fid_features(run, model, real_source, real_source.count, "FID real images"))
        if run.rank == 0 and run.cache_dir is not None and run.dataset_id is not None:
            cache.save_fid_stats(run.cache_dir, key, *stats)
    fake_features = _fid_features(run, model, run.fake, count, "FID fake images")
    return {"fid": fid.fid_from_features(fake_features, *stats)}


# -- the entry point ------------------------------------------------------------------------
def evaluate_metrics(
    names: str | Sequence[str],
    fake: ImageSource,
    real,
    resolution: int,
    num_images: int | Mapping[str, int] | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    all_gather: AllGather | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    inception_path: str | Path | None = None,
    verify_inception: bool = True,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    aspect: str = DEFAULT_ASPECT,
    mirror_reals: bool = False,
) -> dict[str, float]:
    """Compute metrics `names` ("swd", "msssim", "fid") of the images `fake` produces.

    fake: `(start, count) -> uint8 [count, C, H, W]`, images start.. of a fixed sequence
        (`GeneratorSource` wraps a generator; `DatasetSource` a dataset).
    real: the real images at `resolution`: a `MultiResolutionDataset` (its database is read at
        `resolution` and without mirroring, the caller's object left as it is), an LMDB path, any object with __len__ and
        get_batch(indices) -> uint8 [N, C, H, W] (cached only if it has a `fingerprint`), or None
        (enough for MS-SSIM, which looks at generated images only).
    num_images: images per metric, or a {metric: images} dict; None (or a metric left out of
        the dict) = the paper's counts (SWD 16384, MS-SSIM 20000 = 10k pairs, FID 50000). SWD
        takes that many reals (the database must have them); FID uses min(num_images, database
        size) reals.
    rank, world_size, all_gather: for several processes. Every process calls this with the same
        arguments; `all_gather(t)` must return the concatenation along dim 0 of `t` from ranks
        0..world_size-1 (all of the same shape), e.g. `accelerate.Accelerator.gather`. Tensors
        are moved to `device` before gathering. Every process returns the same dict.
    cache_dir: where real statistics are cached (None: not cached). Keys hold the dataset
        fingerprint, resolution, image count, seed and options.
    seed: picks latents (through the source), real subsets, patches and projections.
    inception_path, verify_inception: FID's weights (see progan.metrics.inception).
    aspect: width:height of the images (progan.shapes); level `resolution` is its long side.
        Non-square images: SWD's pyramid stops at a 16-pixel short side, MS-SSIM needs a short
        side of 16, FID's Inception resizes every image to 299x299 as it does square ones.
    mirror_reals: flip a seeded random half of the reals, as the release evaluates a run that
        trained with mirror augmentation (SWD and FID then compare like with like).

    Returns {"swd_x1e3_<size>": ..., "swd_x1e3_avg": ..., "msssim": ..., "fid": ...} for the
    metrics asked for. Raises MetricError (one-line message) when a metric cannot be computed.
    """
    names = parse_metric_names(names)
    for name in names:
        reason = unavailable_reason(name, resolution, inception_path=inception_path, aspect=aspect)
        if reason:
            raise MetricError(reason)
    if world_size > 1 and all_gather is None:
        raise MetricError("evaluate_metrics with world_size > 1 needs all_gather")
    if not 0 <= rank < world_size:
        raise MetricError(f"rank {rank} is not in 0..{world_size - 1}")
    counts = {name: metric_count(num_images, name) for name in names}
    for count in counts.values():
        if count < 1:
            raise MetricError(f"the number of images must be at least 1, got {count}")
    real_dataset, real_name, dataset_id = _open_real(real, resolution) if real is not None else (None, "", None)
    real_aspect = getattr(real_dataset, "aspect", aspect)
    if real_aspect != aspect:
        raise MetricError(f"{real_name} holds {real_aspect} images, the images compared are {aspect}; "
                          f"compare with a {aspect} database")
    if "swd" in names and real_dataset is not None:  # fail before any work, not after other metrics
        swd_count = counts["swd"]
        if len(real_dataset) < swd_count:
            raise MetricError(f"{real_name} has {len(real_dataset)} images at {describe_level(aspect, resolution)}, fewer "
                              f"than the {swd_count} SWD compares (lower --num)")
    run = _Run(fake=fake, real=real_dataset, real_name=real_name, resolution=resolution, rank=rank,
               world_size=world_size, all_gather=all_gather, cache_dir=Path(cache_dir) if cache_dir else None,
               dataset_id=dataset_id, seed=seed, device=torch.device(device), batch_size=max(1, batch_size),
               progress=progress, aspect=aspect, mirror_reals=mirror_reals)
    results: dict[str, float] = {}
    for name in names:
        count = counts[name]
        if name == "swd":
            results.update(_evaluate_swd(run, count))
        elif name == "msssim":
            results.update(_evaluate_msssim(run, count))
        else:
            results.update(_evaluate_fid(run, count, inception_path, verify_inception))
    return results


def metric_count(num_images: int | Mapping[str, int] | None, name: str) -> int:
    """Images metric `name` evaluates: num_images (an int or a {metric: images} dict) or the paper's count."""
    count = num_images.get(name) if isinstance(num_images, Mapping) else num_images
    return DEFAULT_NUM_IMAGES[name] if count is None else int(count)


def _open_real(real, resolution: int) -> tuple[object, str, str | None]:
    """(dataset, its name for messages, its fingerprint or None) for a dataset object or LMDB path."""
    if isinstance(real, (str, Path)) or getattr(real, "path", None) is not None:

        path = Path(real if isinstance(real, (str, Path)) else real.path)
        # Always a reader of our own, never mirrored (a training dataset flips at random, and metrics
        # must see the images as stored); progan.data.environments shares the LMDB environment with any open one.
        dataset = MultiResolutionDataset(path, resolution)
        return dataset, str(path), dataset_fingerprint(path)
    # Any other object with __len__ and get_batch (tests, custom data); cached only if it names itself.
    fingerprint = getattr(real, "fingerprint", None)
    return real, "the real dataset", fingerprint() if callable(fingerprint) else fingerprint
