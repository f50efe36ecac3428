"""Animated GIF and WebP files with Pillow (no ffmpeg), written atomically.

Both loop forever (loop=0) and show each frame for 1/fps seconds. GIF stores delays in
hundredths of a second, so its frame rate is rounded (30 fps plays at 1/0.03 s = 33.3 fps),
and browsers slow delays under 0.02 s to 0.1 s: GIF is limited to 50 fps here. GIF frames share
one 256-colour palette made from frames across the animation, so colours do not flicker from
frame to frame. WebP is 24-bit (lossy, `quality`) and keeps the exact frame rate.

Both encoders merge a frame identical to the one before into it (the total duration stays),
so an animation of a still scene has fewer frames than were given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from progan.runtime.fileio import atomic_output

FORMATS = ("gif", "webp")
MAX_GIF_FPS = 50.0
_PALETTE_SAMPLE_FRAMES = 16  # frames that pick the shared GIF palette


def frame_duration_ms(fps: float) -> int:
    """Milliseconds per frame as the files store them (GIF: whole hundredths of a second)."""
    return max(1, round(1000.0 / fps))


def check_animation_options(fmt: str, fps: float) -> None:
    """Raise ValueError (one line) for a format or frame rate that cannot be written well."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown animation format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if fmt == "gif" and fps > MAX_GIF_FPS:
        raise ValueError(f"GIF cannot play {fps:g} fps (its delays are in 1/100 s and browsers slow "
                         f"delays under 0.02 s); use --fps {MAX_GIF_FPS:g} or less, or --format webp")
    if fmt == "webp":
        from PIL import features

        if not features.check("webp"):
            raise ValueError("this Pillow was built without WebP support; use --format gif")


def write_animation(
    frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, fmt: str | None = None,
    quality: int = 90,
) -> int:
    """Write uint8 [H, W, 3] frames as a looping animation at `path`; return the frames given.

    `fmt` defaults to the file's suffix. The file appears only once complete (atomic rename).
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    check_animation_options(fmt, fps)
    pictures = [Image.fromarray(np.ascontiguousarray(frame)).convert("RGB") for frame in frames]
    if not pictures:
        raise ValueError("an animation needs at least one frame")
    if fmt == "gif":
        pictures = _with_shared_palette(pictures)
    options = dict(save_all=True, append_images=pictures[1:], loop=0, duration=frame_duration_ms(fps))
    if fmt == "gif":
        options.update(optimize=False, disposal=1)
    else:
        options.update(quality=quality, method=4)
    with atomic_output(path) as tmp:
        pictures[0].save(tmp, format=fmt.upper(), **options)
    return len(pictures)


def _with_shared_palette(pictures: list[Image.Image]) -> list[Image.Image]:
    """Quantize every frame to one palette drawn from frames spread over the animation."""
    step = max(1, len(pictures) // _PALETTE_SAMPLE_FRAMES)
    # Shrunk copies: the palette needs the colours, not every pixel (a 2048x2048 grid is slow).
    shrink = max(1, max(pictures[0].size) // 256)
    sample = [p.reduce(shrink) for p in pictures[::step][:_PALETTE_SAMPLE_FRAMES]]
    width, height = sample[0].size
    strip = Image.new("RGB", (width, height * len(sample)))
    for i, picture in enumerate(sample):
        strip.paste(picture, (0, i * height))
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    return [p.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for p in pictures]
