"""Where metric images come from: a generator or a dataset, addressed by global image index.

A source is any callable `(start, count) -> uint8 tensor [count, C, H, W]` that returns images
number start .. start+count-1 of one fixed, seeded sequence. Addressing by index (not "the next
n images") is what lets several processes each produce their shard and still evaluate exactly
the images one process would.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from progan.generator.images import quantize
from progan.metrics.common import MetricError, labelled_generator, seeded_rows

ImageSource = Callable[[int, int], torch.Tensor]


class BatchDataset(Protocol):
    def __len__(self) -> int: ...
    def get_batch(self, indices) -> torch.Tensor: ...


class GeneratorSource:
    """Image i is G(z_i), quantised to uint8, with z_i ~ N(0, I) row i of a seeded latent table.

    The same seed gives the same latents at every evaluation, which makes numbers logged during
    training comparable with each other. `generator(z, resolution=, alpha=)` must return images
    in about [-1, 1] at `generator_resolution`; when `resolution` is lower the images are
    box-averaged down to it in float before quantising (as the dataset tool makes its levels).
    """

    def __init__(self, generator: Callable[..., torch.Tensor], latent_size: int, *, resolution: int,
                 generator_resolution: int | None = None, alpha: float = 1.0, seed: int = 0,
                 device: torch.device | str = "cpu", class_frequencies=None, class_index: int | None = None) -> None:
        generator_resolution = generator_resolution or resolution
        if resolution > generator_resolution:
            raise MetricError(f"resolution {resolution} is above what the generator produces "
                              f"(resolution {generator_resolution})")
        if generator_resolution % resolution:
            raise MetricError(f"resolution {resolution} does not divide the generator's {generator_resolution}")
        self.generator, self.latent_size = generator, latent_size
        self.resolution, self.generator_resolution = resolution, generator_resolution
        self.alpha, self.seed, self.device = alpha, seed, torch.device(device)
        # Conditional generators: image i's class is drawn with the training set's class
        # frequencies (what the release reports), from its own seeded table; or one fixed class.
        self.class_weights = None if class_frequencies is None else torch.as_tensor(class_frequencies, dtype=torch.float64)
        self.class_index = class_index

    def labels(self, start: int, count: int) -> torch.Tensor | None:
        if self.class_index is not None:
            return torch.full((count,), self.class_index, dtype=torch.int64)
        if self.class_weights is None:
            return None
        weights = self.class_weights

        def block(generator: torch.Generator, rows: int) -> torch.Tensor:
            return torch.multinomial(weights, rows, replacement=True, generator=generator)

        return seeded_rows(start, count, block, self.seed, "labels")

    def latents(self, start: int, count: int) -> torch.Tensor:
        def block(generator: torch.Generator, rows: int) -> torch.Tensor:
            return torch.randn(rows, self.latent_size, generator=generator)

        return seeded_rows(start, count, block, self.seed, "latents")

    @torch.no_grad()
    def __call__(self, start: int, count: int) -> torch.Tensor:
        z = self.latents(start, count).to(self.device)
        labels = self.labels(start, count)
        extra = {} if labels is None else {"labels": labels.to(self.device)}
        images = self.generator(z, resolution=self.generator_resolution, alpha=self.alpha, **extra).float()
        factor = self.generator_resolution // self.resolution
        if factor > 1:
            images = F.avg_pool2d(images, factor)
        return quantize(images)


class DatasetSource:
    """A seeded random subset of `count` images of a dataset, in a seeded random order.

    `side` ("real", "fake") picks the stream, so one database compared with itself uses two
    different subsets. Indices past `count` wrap around (they only pad the last process's shard
    and are dropped after gathering).
    """

    def __init__(self, dataset: BatchDataset, count: int, *, seed: int = 0, side: str = "real",
                 allow_fewer: bool = False, name: str = "the dataset") -> None:
        available = len(dataset)
        if count > available and not allow_fewer:
            raise MetricError(f"{name} has {available} images at this resolution, fewer than the {count} "
                              f"the metric needs (lower --num)")
        self.count = min(count, available)
        if self.count < 1:
            raise MetricError(f"{name} has no images")
        self.dataset = dataset
        order = torch.randperm(available, generator=labelled_generator(seed, "subset", side))
        self.indices = order[:self.count]

    def __call__(self, start: int, count: int) -> torch.Tensor:
        positions = torch.arange(start, start + count) % self.count
        return self.dataset.get_batch(self.indices[positions].tolist())
