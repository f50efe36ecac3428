"""The shape rule shared by the networks, the database and the metrics: which resolutions
exist, and the aspect ratios that give each level its width and height.

A ratio is written width:height, as cameras and screens say it (4:3 landscape, 3:4 portrait).
The base level (resolution 4) is w0 wide and h0 high with the long side 4; level R is
(w0 * R/4) wide and (h0 * R/4) high, so a level is still named by its long side and every
resolution flag and schedule table keeps its meaning. 1:1 is the square model of the paper.

No torch and nothing else of progan here, so data_prep workers and the database reader can use
it cheaply.
"""

from __future__ import annotations

import math

# ratio -> (w0, h0), the base block's width and height
ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (4, 4),
    "3:4": (3, 4),
    "4:3": (4, 3),
    "1:2": (2, 4),
    "2:1": (4, 2),
    "1:4": (1, 4),
    "4:1": (4, 1),
}
DEFAULT_ASPECT = "1:1"
ASPECT_RULE = f"one of {', '.join(ASPECTS)} (width:height)"
BASE = 4  # the long side of the base level


def parse_aspect(text: str) -> str:
    """'3:4' (or an equal ratio such as '6:8') -> its canonical name; ValueError (one line) else."""
    parts = str(text).strip().split(":")
    try:
        width, height = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a ratio W:H; use {ASPECT_RULE}") from None
    if width < 1 or height < 1:
        raise ValueError(f"{text!r} has a side below 1; use {ASPECT_RULE}")
    divisor = math.gcd(width, height)
    name = f"{width // divisor}:{height // divisor}"
    if name not in ASPECTS:
        raise ValueError(f"{text!r} is not a supported ratio; use {ASPECT_RULE}")
    return name


def level_size(aspect: str, resolution: int) -> tuple[int, int]:
    """(width, height) of the level named `resolution` (its long side, a power of two >= 4)."""
    w0, h0 = ASPECTS[aspect]
    return w0 * resolution // BASE, h0 * resolution // BASE


def aspect_of(width: int, height: int) -> str:
    """The supported ratio of an image width x height; ValueError (one line) if it has none."""
    return parse_aspect(f"{width}:{height}")


def describe_level(aspect: str, resolution: int) -> str:
    """'768x1024' (width x height) for logs and messages."""
    width, height = level_size(aspect, resolution)
    return f"{width}x{height}"


# The resolutions progan supports, for networks, schedules and datasets alike.
MIN_RESOLUTION = 4
MAX_RESOLUTION = 1024
RESOLUTION_RULE = f"a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}"


def is_valid_resolution(resolution: int) -> bool:
    """True for a supported resolution: RESOLUTION_RULE."""
    return MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution & (resolution - 1) == 0
