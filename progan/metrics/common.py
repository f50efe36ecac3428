"""Pieces shared by the metrics: the error type, image checks and seeded randomness."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

# Rows of every seeded random table are drawn in blocks of this many, each block from its own
# seed, so row i is the same whatever the batch size or number of processes that asks for it.
RANDOM_BLOCK = 1024


class MetricError(ValueError):
    """A metric that cannot be computed as asked; the message is one line for the user."""


def check_uint8_images(images: torch.Tensor, what: str = "images") -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise MetricError(f"{what} must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed for (seed, labels): each metric and image set gets an independent stream."""
    text = "\x1f".join(str(part) for part in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def labelled_generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU generator seeded from (seed, labels...), e.g. (seed, "swd-directions", level): the
    metrics' own streams, named by what they draw (training's are progan.train.seeds', by number)."""
    return torch.Generator().manual_seed(derive_seed(seed, *labels))


def seeded_rows(
    start: int, count: int, make_block: Callable[[torch.Generator, int], torch.Tensor], seed: int, *labels: object
) -> torch.Tensor:
    """Rows start..start+count-1 of an endless seeded table (on the CPU).

    Block b (rows b*RANDOM_BLOCK ...) is `make_block(generator, RANDOM_BLOCK)` with the generator
    seeded from (seed, labels, b), so a row does not depend on how the table is sliced.
    """
    if count <= 0:
        return make_block(labelled_generator(seed, *labels, 0), RANDOM_BLOCK)[:0]
    first_block, last_block = start // RANDOM_BLOCK, (start + count - 1) // RANDOM_BLOCK
    blocks = [make_block(labelled_generator(seed, *labels, b), RANDOM_BLOCK) for b in range(first_block, last_block + 1)]
    table = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    offset = start - first_block * RANDOM_BLOCK
    return table[offset:offset + count]


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0
