"""Feeding real images: which images each step sees, read from the LMDB, and faded like the networks.

The data order is a seeded permutation per epoch indexed by images shown, so a resumed run
reads exactly the images the uninterrupted run would have; each process reads only its
strided share of every global batch.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from progan.data.reader import DEFAULT_MEMORY_BUDGET, MultiResolutionDataset
from progan.data.format import DatasetError
from progan.data.lmdbfile import check_data_file
from progan.nets.layers import downsample2x, fade, upsample2x
from progan.train.seeds import STREAM_DATA, seeded_generator


class DataOrder:
    """Which image indices the global batch starting at `images_shown` holds.

    Epoch e is a seeded permutation of the dataset; image number k of the run is entry
    k % N of epoch k // N. Stateless apart from a one-epoch cache.
    """

    def __init__(self, seed: int, num_images: int) -> None:
        self.seed = seed
        self.num_images = num_images
        self._epoch = -1
        self._permutation = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            gen = seeded_generator(self.seed, STREAM_DATA, epoch)
            self._permutation = torch.randperm(self.num_images, generator=gen).numpy()
            self._epoch = epoch
        return self._permutation

    def indices(self, images_shown: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            epoch, offset = divmod(images_shown + filled, self.num_images)
            take = min(count - filled, self.num_images - offset)
            out[filled : filled + take] = self.permutation(epoch)[offset : offset + take]
            filled += take
        return out


class BatchReader(torch.utils.data.Dataset):
    """Lets a DataLoader hand whole index lists to `get_batch` (decoded in its workers)."""

    def __init__(self, dataset: MultiResolutionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        try:
            return self.dataset.get_batch(indices)
        except DatasetError as error:  # handed back whole: a worker's raise becomes a traceback text
            return error

    def __getitem__(self, index):
        return self.dataset[index]


class _IndexBatches(torch.utils.data.Sampler):
    """This process's index lists for consecutive steps of one phase (fixed batch size)."""

    def __init__(self, order: DataOrder, start_images: int, global_batch: int, part: slice) -> None:
        self.order, self.start, self.global_batch, self.part = order, start_images, global_batch, part

    def __iter__(self):
        images = self.start
        while True:
            yield self.order.indices(images, self.global_batch)[self.part].tolist()
            images += self.global_batch

    def __len__(self) -> int:  # pragma: no cover - infinite; DataLoader only asks for len() in repr
        return 2**62


class RealImages:
    """Local batches of uint8 reals for one phase: from memory when the level fits, else a DataLoader."""

    def __init__(self, data_path: str, resolution: int, order: DataOrder, start_images: int,
                 global_batch: int, part: slice, workers: int, memory_budget: int) -> None:
        self.dataset = MultiResolutionDataset(data_path, resolution, memory_budget_bytes=memory_budget)
        index_batches = _IndexBatches(order, start_images, global_batch, part)
        if self.dataset.in_memory:
            self._batches = map(self.dataset.get_batch, index_batches)
        else:
            self._batches = iter(torch.utils.data.DataLoader(
                BatchReader(self.dataset),
                batch_sampler=index_batches,
                collate_fn=_identity,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                prefetch_factor=4 if workers > 0 else None,
                persistent_workers=False,
            ))

    def next(self) -> torch.Tensor:
        """uint8 [n, C, H, W] for the next step."""
        try:
            batch = next(self._batches)
        except RuntimeError:  # a loader worker died: of SIGBUS when the file was cut mid-read
            check_data_file(self.dataset.path)
            raise
        if isinstance(batch, DatasetError):  # a damaged record, read in a loader worker
            raise batch
        return batch


def _identity(batch):
    return batch


def fade_reals(reals: torch.Tensor, alpha: float) -> torch.Tensor:
    """During a fade, blend reals with their 2x-blurred version as the networks blend: lerp(up(down(x)), x, alpha)."""
    if alpha >= 1.0:
        return reals
    blurred = upsample2x(downsample2x(reals))
    return fade(blurred, reals, alpha)


def memory_budget_per_process() -> int:
    """The node's budget for in-memory levels shared by its processes: each holds its own copy.
    Counted per node (LOCAL_WORLD_SIZE), so every node of a multi-node run gets the whole budget."""
    return DEFAULT_MEMORY_BUDGET // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
