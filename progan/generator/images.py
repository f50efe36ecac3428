"""Image batches to pictures on disk: [-1, 1] tensors to uint8, grids, atomic PNG writes.

Shared by training (sample grids), sampling and `data_prep preview`. numpy and PIL only;
torch is imported lazily by `quantize` so data tools stay light.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from progan.runtime.fileio import atomic_output


def to_uint8(images) -> np.ndarray:
    """Map float images in [-1, 1], shape [N, C, H, W], to uint8 [N, H, W, C] (rounded, clipped)."""
    return quantize(images).cpu().permute(0, 2, 3, 1).contiguous().numpy()


def quantize(images):
    """Float images in [-1, 1], [N, C, H, W] -> uint8 tensor [N, C, H, W], round((x + 1) * 127.5)
    clipped to 0..255, on the images' own device. The one float-to-byte mapping of the project:
    saved pictures and the images the metrics see (quantised like the stored reals)."""
    import torch

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"expected a 4-D image tensor [N, C, H, W], got {_describe(images)}")
    scaled = (images.detach().to(torch.float32) + 1.0) * 127.5
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


def grid_shape(count: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """Rows and columns for `count` cells: near-square by default (cols >= rows)."""
    if count < 1:
        raise ValueError("a grid needs at least one image")
    if rows is not None and rows < 1 or cols is not None and cols < 1:
        raise ValueError(f"rows and cols must be positive, got rows={rows}, cols={cols}")
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(count))
    if cols is None:
        cols = math.ceil(count / rows)
    if rows is None:
        rows = math.ceil(count / cols)
    if rows * cols < count:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {count} images")
    return rows, cols


def make_grid(
    images: np.ndarray,
    rows: int | None = None,
    cols: int | None = None,
    padding: int = 0,
    pad_value: int = 0,
) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] row by row into one [H', W', C] picture.

    `padding` pixels of `pad_value` separate the cells and frame the grid; cells beyond N stay
    `pad_value`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    count, height, width, channels = images.shape
    rows, cols = grid_shape(count, rows, cols)
    step_y, step_x = height + padding, width + padding
    grid = np.full(
        (rows * step_y + padding, cols * step_x + padding, channels), pad_value, dtype=np.uint8
    )
    for i, image in enumerate(images):
        y = padding + (i // cols) * step_y
        x = padding + (i % cols) * step_x
        grid[y : y + height, x : x + width] = image
    return grid


def label_rows(grid: np.ndarray, names: list[str], max_font_size: int = 16) -> np.ndarray:
    """`grid` (uint8 [H, W, C], len(names) equal rows) with a black strip at its left holding each
    row's name in white, centred on the row, in Pillow's bundled font (as the timelapse captions);
    the font shrinks with the rows, down to 6 px."""
    from PIL import ImageDraw, ImageFont

    grid = np.asarray(grid)
    height, _, channels = grid.shape
    row_height = height // len(names)
    font = ImageFont.load_default(size=max(6, min(max_font_size, int(row_height * 0.4))))
    pad = max(2, font.size // 3) if hasattr(font, "size") else 2
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    strip_width = max(measure.textbbox((0, 0), name, font=font)[2] for name in names) + 2 * pad
    strip = Image.new("L", (strip_width, height), 0)
    draw = ImageDraw.Draw(strip)
    for row, name in enumerate(names):
        draw.text((pad, row * row_height + row_height // 2), name, fill=255, font=font, anchor="lm")
    text = np.asarray(strip)[:, :, None].repeat(channels, axis=2)
    if channels == 4:
        text[:, :, 3] = 255  # an opaque strip
    return np.concatenate([text, grid], axis=1)


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write uint8 [H, W, C] (C = 1, 3 or 4) or [H, W] as a PNG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"save_png expects uint8 [H, W, C], got {array.dtype} {array.shape}")
    if array.ndim == 3:
        if array.shape[2] == 1:
            array = array[:, :, 0]
        elif array.shape[2] not in (3, 4):
            raise ValueError(f"save_png expects 1, 3 or 4 channels, got {array.shape[2]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(np.ascontiguousarray(array))
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG")


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__
