"""Derived seeds: every random draw of a run is a pure function of (run seed, stream, counter).

Streams keep independent uses apart (the step's random inputs, the data order, the sample grid),
so adding a draw to one never shifts another, and a resumed run redraws exactly what the
uninterrupted run drew.
"""

from __future__ import annotations

import torch

STREAM_STEP = 1   # latents, penalty mixing weights and mirror flips of step k
STREAM_DATA = 2   # the data order of epoch e
STREAM_GRID = 3   # the fixed latents of the sample grids


def derived_seed(seed: int, stream: int, counter: int) -> int:
    """A well-mixed 63-bit seed for (run seed, stream, counter): SplitMix64 of their combination."""
    x = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + counter * 0x94D049BB133111EB) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) & (2**63 - 1)


def seeded_generator(seed: int, stream: int, counter: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded from (seed, stream, counter). On the device, so draws need no
    copy from the host; the same seed gives the same numbers on the same kind of device."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, stream, counter))
