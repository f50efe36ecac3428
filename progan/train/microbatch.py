"""Micro-batches: which sizes keep D's minibatch-stddev statistic, and (--max-batch-per-device auto)
the largest of them that fits the device's memory.

A process's local batch is split into strided micro-batches whose gradients are accumulated.
D's minibatch-stddev layer groups the samples of the *global* batch (G = min(group size, batch),
sample n in group n % (N / G)); a micro-batch holds whole groups exactly when its size is a
multiple of G. Smaller micro-batches would silently compute a different statistic, so they are
refused.
"""

from __future__ import annotations

from typing import Callable

import torch


def stddev_group(group_size: int, global_batch: int) -> int:
    """The group D forms over the global batch (1: no minibatch-stddev layer)."""
    return min(group_size, global_batch) if group_size > 1 else 1


def micro_batch_problem(micro: int, global_batch: int, group_size: int, level: str) -> str | None:
    """None when micro-batches of `micro` keep D's statistic, else a one-line reason; `level` names the
    resolution in it (WxH, progan.shapes.describe_level)."""
    need = stddev_group(group_size, global_batch)
    if micro % need == 0:
        return None
    if micro < need:
        return (f"the per-device micro-batch {micro} at {level} is smaller than the "
                f"minibatch-stddev group {need} of the batch {global_batch}, so D would compute another "
                f"statistic; use --max-batch-per-device {need} or more, or fewer processes")
    return (f"the per-device batch {micro} at {level} is not divisible by the minibatch-stddev "
            f"group size {need}; use batch sizes (and --max-batch-per-device) that are multiples of {need}")


def candidates(local: int, need: int) -> list[int]:
    """Micro-batch sizes that split `local` evenly and keep whole groups of `need`, largest first."""
    return [m for m in range(local, 0, -1) if local % m == 0 and m % need == 0]


def largest_fitting(local: int, need: int, fits: Callable[[int], bool]) -> int:
    """The largest candidate micro-batch for which fits(m) is true; the smallest if none fits
    (the step then reports the device's out-of-memory error itself)."""
    options = candidates(local, need)
    for micro in options:
        if fits(micro):
            return micro
    return options[-1]


def cuda_fits(trial: Callable[[int], None], device: torch.device, headroom: float = 0.85) -> Callable[[int], bool]:
    """fits(m) for largest_fitting: run trial(m) and keep the peak under `headroom` of the device's
    memory (room for the allocator's fragmentation and what later steps add)."""
    total = torch.cuda.get_device_properties(device).total_memory

    def fits(micro: int) -> bool:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            trial(micro)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated(device) <= headroom * total

    return fits
