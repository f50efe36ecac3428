"""A run's growth as one animation: its fixed-latent sample grids (`samples-<images>.png`) in
order, every frame upscaled (nearest) to the final grid's size, labelled with its resolution,
fade weight and kimg. Pillow only (progan/generator/animation.py writes the GIF or WebP). It reads
what the run folder records (runfolder.py: config.json's schedule, the grids' names and shape).

    python generate.py timelapse checkpoints/RUN --out growth.webp

The grids keep the same latents all run long, but hold 8x8 cells up to 256x256 and fewer above
(runfolder.sample_grid_side); each frame shows the cells of the final grid, so every cell is one
latent growing from 4x4 to the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from progan.generator.animation import check_animation_options, write_animation
from progan.train.config import TrainConfig
from progan.train.runfolder import CONFIG_FILE, SAMPLES_PATTERN, sample_grid_side
from progan.train.schedule import KIMG, state_at, tick_state

HOLD_LAST_SECONDS = 2.0  # the finished faces stay on screen before the loop starts again


class TimelapseError(ValueError):
    """A run folder or snapshot that cannot be used; one line for the user."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    images_shown: int
    resolution: int   # of each cell (its long side)
    alpha: float      # fade weight of that resolution when the grid was drawn
    side: int         # cells per row and column
    cell: tuple[int, int] = (0, 0)  # (width, height) of each cell: the level's shape

    @property
    def label(self) -> str:
        width, height = self.cell
        return f"{width}x{height}"


def find_snapshots(run_dir: str | os.PathLike) -> list[Snapshot]:
    """The run's sample grids in training order, each with the stage it was drawn at."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TimelapseError(f"{run_dir} is not a run folder (give the folder train.py --out wrote)")
    try:
        config = TrainConfig.from_json((run_dir / CONFIG_FILE).read_text())
        schedule, model = config.schedule, config.model
    except FileNotFoundError:
        raise TimelapseError(f"{run_dir} has no {CONFIG_FILE}; give the folder train.py --out wrote") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise TimelapseError(f"{run_dir / CONFIG_FILE} is not a readable training config ({exc})") from None
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := SAMPLES_PATTERN.match(p.name)))
    if not found:
        raise TimelapseError(f"{run_dir} holds no sample grids (samples-<images>.png); train longer or "
                             f"with fewer --snapshot-ticks")
    snapshots = []
    for images_shown, path in found:
        width, height = _size(path)
        # A grid shows the stage of the step that ended at its image count (schedule.tick_state,
        # the trainer's own rule). Final grids of runs trained before that rule were drawn at the
        # stage of the step after it (state_at), so that is accepted too.
        for st in (tick_state(schedule, images_shown), state_at(schedule, images_shown)):
            side = sample_grid_side(st.resolution)
            cell = model.level_size(st.resolution)  # (width, height)
            if (width, height) == (side * cell[0], side * cell[1]):
                snapshots.append(Snapshot(path, images_shown, st.resolution, st.alpha, side, cell))
                break
        else:
            raise TimelapseError(f"{path} is {width}x{height}, not a sample grid of this run's schedule at "
                                 f"{images_shown / KIMG:g} kimg; move it out of the run folder")
    return snapshots


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as picture:
            return picture.size
    except (OSError, ValueError) as exc:
        raise TimelapseError(f"{path} is not a readable image ({exc}); move it out of the run folder") from None


def timelapse_frames(snapshots: list[Snapshot], size: int | None = None) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] frames: each snapshot's first side_f x side_f cells (the final grid's
    latents), upscaled nearest to the final grid's size (or to `size` on the long side), labelled."""
    final = snapshots[-1]
    side = final.side
    width, height = side * final.cell[0], side * final.cell[1]
    if size is not None:  # the long side; the other keeps the model's ratio
        width, height = (size, round(size * height / width)) if width >= height else (round(size * width / height), size)
    form, font_size = caption_style(snapshots, width, base_size=max(10, max(width, height) // 40))
    font = _font(font_size)
    for snap in snapshots:
        with Image.open(snap.path) as picture:
            grid = np.asarray(picture.convert("RGB"))
        w, h = snap.cell
        cells = [grid[(i // snap.side) * h:(i // snap.side + 1) * h, (i % snap.side) * w:(i % snap.side + 1) * w]
                 for i in range(side * side)]
        rows = [np.concatenate(cells[row * side:(row + 1) * side], axis=1) for row in range(side)]
        frame = Image.fromarray(np.concatenate(rows, axis=0)).resize((width, height), Image.Resampling.NEAREST)
        yield np.asarray(_label(frame, caption_lines(snap, form), font, _pad(font_size)))


# -- captions ---------------------------------------------------------------------------------
# From the most to the least readable; the first that fits every frame's width is used for all
# of them (one font size all animation long). "a" is alpha and "k" kimg in the short forms.
CAPTION_FORMS = ("full", "short", "short in two lines", "short in three lines")
MIN_FONT_SIZE = 6


def caption_lines(snap: Snapshot, form: str = "full") -> list[str]:
    """The caption of a frame, e.g. ['16x16  alpha 0.97  2.02 kimg'] or ['16x16', 'a0.97', '2.02k']."""
    kimg = snap.images_shown / KIMG
    kimg_text = f"{kimg:.1f}" if kimg >= 10 else f"{kimg:.3g}"
    if form == "full":
        return [f"{snap.label}  alpha {snap.alpha:.2f}  {kimg_text} kimg"]
    short = [snap.label, f"a{snap.alpha:.2f}", f"{kimg_text}k"]
    return {"short": [" ".join(short)], "short in two lines": [" ".join(short[:2]), short[2]],
            "short in three lines": short}[form]


def caption_style(snapshots: list[Snapshot], width: int, base_size: int) -> tuple[str, int]:
    """(form, font size) of the captions: the first form of CAPTION_FORMS whose every line, at
    the largest size from `base_size` down to MIN_FONT_SIZE, fits `width` pixels with its padding
    (measured with PIL's textbbox). A frame too narrow for any (under ~20 px) gets the last form
    at the smallest size, cut at the edge."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for form in CAPTION_FORMS:
        # the longest lines first: a size that does not fit usually fails on the first one
        lines = sorted({line for snap in snapshots for line in caption_lines(snap, form)}, key=len, reverse=True)
        for font_size in range(base_size, MIN_FONT_SIZE - 1, -1):
            font = _font(font_size)
            if all(caption_right_edge(draw, line, font, _pad(font_size)) <= width for line in lines):
                return form, font_size
    return CAPTION_FORMS[-1], MIN_FONT_SIZE


def caption_right_edge(draw: ImageDraw.ImageDraw, line: str, font, pad: int) -> int:
    """The x just right of a caption line's black box: the text's right edge plus the padding."""
    return draw.textbbox((pad, pad), line, font=font)[2] + pad


def _font(size: int):
    return ImageFont.load_default(size=size)  # Pillow's bundled font (FreeType); without it, its bitmap font


def _pad(font_size: int) -> int:
    return max(1, font_size // 4)


def _label(frame: Image.Image, lines: list[str], font, pad: int) -> Image.Image:
    draw = ImageDraw.Draw(frame)
    text = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font, spacing=pad)
    draw.rectangle((0, 0, right + pad - 1, bottom + pad - 1), fill=(0, 0, 0))
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font, spacing=pad)
    return frame


def write_timelapse(run_dir: str | os.PathLike, out_path: str | os.PathLike, fps: float = 10.0,
                    size: int | None = None) -> tuple[Path, int]:
    """Write the run's timelapse to `out_path` (.gif or .webp, atomically); (path, snapshots used)."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lower().lstrip(".")
    if fmt not in ("gif", "webp"):
        raise TimelapseError(f"--out {out_path}: end the file name in .gif or .webp")
    check_animation_options(fmt, fps)
    if size is not None and size < 16:
        raise TimelapseError(f"--size must be at least 16 pixels, got {size}")
    snapshots = find_snapshots(run_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_animation(_hold_last(timelapse_frames(snapshots, size), round(HOLD_LAST_SECONDS * fps)),
                    out_path, fps=fps, fmt=fmt)
    return out_path, len(snapshots)


def _hold_last(frames: Iterator[np.ndarray], times: int) -> Iterator[np.ndarray]:
    """The frames, the last one `times` times: encoders merge the repeats into one longer frame."""
    frame = None
    for frame in frames:
        yield frame
    for _ in range(max(0, times - 1)):
        yield frame
