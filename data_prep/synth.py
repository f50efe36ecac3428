"""`data_prep synth`: procedurally drawn face-like pictures, so demos and tests need no download.

Each picture is a centred, frontal, high-contrast cartoon face: shoulders, neck, hair (short or
long) behind an elliptical head, a fringe, ears, eyebrows, two eyes with irises, a nose and a
mouth. Skin, hair, eye, clothing and background colours vary, as do feature placement and size,
with a small pose jitter (rotation, shift, scale). The layout stays consistent so a GAN trained
at 32x32 for a few minutes produces recognisable faces.

Image i depends only on (seed, i): a larger --count extends a smaller one.
"""

from __future__ import annotations

import colorsys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from progan.fileio import atomic_output

SKIN_TONES = [(255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 38)]
HAIR_COLOURS = [(20, 16, 16), (55, 35, 22), (105, 65, 35), (215, 180, 105), (160, 70, 30), (175, 175, 170)]
IRIS_COLOURS = [(70, 40, 20), (40, 90, 160), (50, 110, 60), (90, 90, 95)]
FORMATS = {"png": "PNG", "jpg": "JPEG"}


def face_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def draw_face(rng: np.random.Generator, size: int) -> Image.Image:
    """One RGB face picture of size x size."""
    supersample = max(2, min(4, 256 // size))  # draw large, shrink: smooth edges at any size
    canvas = size * supersample
    skin = _skin_colour(rng)
    background = _background(rng, canvas, skin)
    pad = canvas // 4  # the face layer overhangs the picture so rotation never exposes its edges
    layer = Image.new("RGBA", (canvas + 2 * pad, canvas + 2 * pad), (0, 0, 0, 0))
    _draw_features(ImageDraw.Draw(layer), rng, canvas, pad, skin)
    angle = rng.uniform(-8, 8)  # pose jitter
    shift = tuple(int(v) for v in rng.uniform(-0.035, 0.035, 2) * canvas)
    layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR, translate=shift)
    background.alpha_composite(layer.crop((pad, pad, pad + canvas, pad + canvas)))
    return background.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def _draw_features(draw: ImageDraw.ImageDraw, rng: np.random.Generator, canvas: int, pad: int, skin) -> None:
    """Draws in unit coordinates: (0, 0) top left and (1, 1) bottom right of the picture."""

    def point(x, y):
        return (pad + canvas * x, pad + canvas * y)

    def box(cx, cy, rx, ry):
        return [*point(cx - rx, cy - ry), *point(cx + rx, cy + ry)]

    scale = rng.uniform(0.9, 1.08)
    head_rx, head_ry = 0.25 * scale * rng.uniform(0.93, 1.07), 0.31 * scale
    cy = 0.48
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    hair = _jitter(rng, hair, 12)
    clothes = tuple(int(v) for v in rng.integers(20, 235, 3))
    darker_skin = _scaled(skin, 0.78)

    draw.ellipse(box(0.5, 1.1, 0.45, 0.3), fill=clothes)  # shoulders
    draw.rectangle(box(0.5, 0.86, 0.095 * scale, 0.14), fill=_scaled(skin, 0.88))  # neck
    if rng.random() < 0.5:  # long hair falls behind the shoulders
        draw.rounded_rectangle(box(0.5, cy + 0.12, head_rx * 1.22, head_ry * 1.12), radius=canvas * 0.16, fill=hair)
    else:
        draw.ellipse(box(0.5, cy - 0.035, head_rx * 1.1, head_ry * 1.0), fill=hair)
    for side in (-1, 1):  # ears
        draw.ellipse(box(0.5 + side * head_rx * 0.97, cy + 0.02, 0.035, 0.06), fill=darker_skin)
    draw.ellipse(box(0.5, cy, head_rx, head_ry), fill=skin)
    hairline = rng.uniform(12, 32)  # degrees above the head's centre line: fringe depth
    fringe = _arc_points(0.5, cy, head_rx * 1.03, head_ry * 1.03, 180 + hairline, 360 - hairline)
    draw.polygon([point(*p) for p in fringe], fill=hair)

    eye_y = cy + rng.uniform(-0.02, 0.015)
    eye_dx = head_rx * rng.uniform(0.36, 0.44)
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    gaze = rng.uniform(-0.006, 0.006)
    brow = _scaled(hair, 0.7)
    for side in (-1, 1):
        ex = 0.5 + side * eye_dx
        brow_ends = [point(ex - 0.045, eye_y - 0.055), point(ex + 0.045, eye_y - 0.06 + side * 0.004)]
        draw.line(brow_ends, fill=brow, width=max(1, int(canvas * 0.016)))
        draw.ellipse(box(ex, eye_y, 0.047, 0.027), fill=(250, 250, 250))
        draw.ellipse(box(ex + gaze, eye_y, 0.022, 0.022), fill=iris)
        draw.ellipse(box(ex + gaze, eye_y, 0.011, 0.011), fill=(10, 10, 10))

    nose_y = eye_y + rng.uniform(0.1, 0.13)
    nose_w = rng.uniform(0.025, 0.04)
    draw.polygon([point(0.5, eye_y + 0.03), point(0.5 - nose_w, nose_y), point(0.5 + nose_w, nose_y)], fill=darker_skin)

    mouth_y = nose_y + rng.uniform(0.06, 0.08)
    mouth_w, mouth_h = rng.uniform(0.055, 0.09), rng.uniform(0.02, 0.045)
    lips = _mix(skin, (150, 25, 35), 0.75)
    smile = _arc_points(0.5, mouth_y - mouth_h * 0.5, mouth_w, mouth_h, 0, 180)
    draw.polygon([point(*p) for p in smile], fill=lips)


def _arc_points(cx, cy, rx, ry, start: float, end: float, steps: int = 48):
    """An ellipse's arc from `start` to `end` degrees (clockwise from 3 o'clock, y down) as a
    closed polygon: a chord. (Pillow's own chord misdraws some fractional angles.)"""
    angles = np.radians(np.linspace(start, end, steps))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


def _skin_colour(rng: np.random.Generator):
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(tone)
    colour = _mix(SKIN_TONES[low], SKIN_TONES[min(low + 1, len(SKIN_TONES) - 1)], tone - low)
    return _jitter(rng, colour, 8)


def _background(rng: np.random.Generator, canvas: int, skin) -> Image.Image:
    """A vertical two-colour gradient whose brightness stands well apart from the skin."""
    skin_lightness = colorsys.rgb_to_hls(*(c / 255 for c in skin))[1]
    far = 0.2 if skin_lightness > 0.5 else 0.78  # dark behind light skin, light behind dark
    lightness = float(np.clip(far + rng.uniform(-0.15, 0.15), 0.05, 0.95))
    top = colorsys.hls_to_rgb(rng.uniform(0, 1), lightness, rng.uniform(0.2, 0.8))
    bottom = colorsys.hls_to_rgb(rng.uniform(0, 1), lightness, rng.uniform(0.2, 0.8))
    t = np.linspace(0, 1, canvas)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    pixels = np.broadcast_to(rows * 255, (canvas, canvas, 3)).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert("RGBA")


def _mix(a, b, t: float):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _scaled(colour, factor: float):
    return tuple(int(min(255, round(c * factor))) for c in colour)


def _jitter(rng: np.random.Generator, colour, amount: int):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def face_filename(index: int, file_format: str) -> str:
    return f"face_{index:06d}.{file_format}"


def write_face(out_dir: Path, index: int, size: int, seed: int, file_format: str) -> None:
    picture = draw_face(face_rng(seed, index), size)
    path = out_dir / face_filename(index, file_format)
    options = {"quality": 95} if file_format == "jpg" else {"compress_level": 1}
    with atomic_output(path) as tmp:
        picture.save(tmp, format=FORMATS[file_format], **options)


def _write_range(out_dir: Path, start: int, stop: int, size: int, seed: int, file_format: str) -> int:
    for index in range(start, stop):
        write_face(out_dir, index, size, seed, file_format)
    return stop - start


def synth(
    out_dir: Path, count: int, size: int, seed: int, file_format: str = "png", workers: int = 1, progress=None
) -> None:
    """Write `count` faces as out_dir/face_NNNNNN.<format>, in parallel for large counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = 64
    ranges = [(start, min(start + batch, count)) for start in range(0, count, batch)]
    if workers <= 1 or len(ranges) <= 1:
        for start, stop in ranges:
            _write_range(out_dir, start, stop, size, seed, file_format)
            if progress is not None:
                progress.update(stop - start)
        return
    with ProcessPoolExecutor(min(workers, len(ranges))) as pool:
        futures = [pool.submit(_write_range, out_dir, start, stop, size, seed, file_format) for start, stop in ranges]
        for future in futures:
            done = future.result()
            if progress is not None:
                progress.update(done)
