"""`data_prep synth`: procedurally drawn face-like pictures, so demos and tests need no download.

Each picture is a centred, frontal, high-contrast cartoon face: shoulders, neck, hair (short or
long) behind an elliptical head, a fringe, ears, eyebrows, two eyes with irises, a nose and a
mouth. Skin, hair, eye, clothing and background colours vary, as do feature placement and size,
with a small pose jitter (rotation, shift, scale). The layout stays consistent so a GAN trained
at 32x32 for a few minutes produces recognisable faces.

Image i depends only on (seed, i): a larger --count extends a smaller one.

With --classes K (2..10), picture i is of class i % K and is written to class_{c:02d}/: the same
face, drawn from the same random numbers, whose background hue is centred on class c's hue
(c / K of the colour wheel, within +-0.25 / K, saturation 0.5..0.8), so the mean background hue
tells the classes apart and `build --labels folders` gives a K-class database. Without --classes
the output is what it always was.
"""

from __future__ import annotations

import colorsys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from progan.runtime.fileio import atomic_output
from progan.runtime.signals import quiet_worker, raise_if_stopped, stop_signals_held
from progan.runtime.workers import stop_pool

SKIN_TONES = [(255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 38)]
HAIR_COLOURS = [(20, 16, 16), (55, 35, 22), (105, 65, 35), (215, 180, 105), (160, 70, 30), (175, 175, 170)]
IRIS_COLOURS = [(70, 40, 20), (40, 90, 160), (50, 110, 60), (90, 90, 95)]
FORMATS = {"png": "PNG", "jpg": "JPEG"}
MAX_CLASSES = 10


def face_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def class_hue(label: int, classes: int) -> float:
    """The centre of class `label`'s background hue, in [0, 1)."""
    return label / classes


def class_folder(label: int) -> str:
    return f"class_{label:02d}"


def draw_face(rng: np.random.Generator, size: int, label: int | None = None, classes: int = 0) -> Image.Image:
    """One RGB face picture of size x size; with `classes`, its background hue is class `label`'s."""
    supersample = max(2, min(4, 256 // size))  # draw large, shrink: smooth edges at any size
    canvas = size * supersample
    skin = _skin_colour(rng)
    hue = class_hue(label, classes) if classes else None
    background = _background(rng, canvas, skin, hue, classes)
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


def _background(rng: np.random.Generator, canvas: int, skin, hue: float | None = None, classes: int = 0) -> Image.Image:
    """A vertical two-colour gradient whose brightness stands well apart from the skin; with
    `hue`, both colours' hues lie within +-0.25/classes of it. The same random numbers are drawn
    either way, so the rest of the face is the same."""
    skin_lightness = colorsys.rgb_to_hls(*(c / 255 for c in skin))[1]
    far = 0.2 if skin_lightness > 0.5 else 0.78  # dark behind light skin, light behind dark
    lightness = float(np.clip(far + rng.uniform(-0.15, 0.15), 0.05, 0.95))

    def colour():
        drawn_hue, saturation = rng.uniform(0, 1), rng.uniform(0.2, 0.8)
        if hue is not None:  # the class's hue; saturated enough for the hue to show
            drawn_hue = (hue + (drawn_hue - 0.5) * 0.5 / classes) % 1.0
            saturation = 0.5 + (saturation - 0.2) * 0.5
        return colorsys.hls_to_rgb(drawn_hue, lightness, saturation)

    top = colour()
    bottom = colour()
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


def face_path(out_dir: Path, index: int, file_format: str, classes: int = 0) -> Path:
    """Where picture `index` goes: out_dir/face_N.<format>, or out_dir/class_CC/face_N.<format>."""
    folder = out_dir / class_folder(index % classes) if classes else out_dir
    return folder / face_filename(index, file_format)


def write_face(out_dir: Path, index: int, size: int, seed: int, file_format: str, classes: int = 0) -> None:
    label = index % classes if classes else None
    picture = draw_face(face_rng(seed, index), size, label, classes)
    path = face_path(out_dir, index, file_format, classes)
    options = {"quality": 95} if file_format == "jpg" else {"compress_level": 1}
    with atomic_output(path) as tmp:
        picture.save(tmp, format=FORMATS[file_format], **options)


def _write_range(out_dir: Path, start: int, stop: int, size: int, seed: int, file_format: str,
                 classes: int = 0) -> int:
    for index in range(start, stop):
        write_face(out_dir, index, size, seed, file_format, classes)
    return stop - start


def synth(
    out_dir: Path, count: int, size: int, seed: int, file_format: str = "png", workers: int = 1, progress=None,
    classes: int = 0,
) -> None:
    """Write `count` faces as out_dir/face_NNNNNN.<format> (with `classes` K: picture i of class
    i % K in out_dir/class_CC/), in parallel for large counts."""
    if classes and not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be 2..{MAX_CLASSES}, got {classes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for label in range(min(classes, count)):
        (out_dir / class_folder(label)).mkdir(exist_ok=True)
    batch = 64
    ranges = [(start, min(start + batch, count)) for start in range(0, count, batch)]
    if workers <= 1 or len(ranges) <= 1:
        for start, stop in ranges:
            _write_range(out_dir, start, stop, size, seed, file_format, classes)
            if progress is not None:
                progress.update(stop - start)
        return
    pool = ProcessPoolExecutor(min(workers, len(ranges)), initializer=quiet_worker)
    try:
        with stop_signals_held():  # the first submit forks the workers: a signal in fork's hooks would be lost
            futures = [pool.submit(_write_range, out_dir, start, stop, size, seed, file_format, classes)
                       for start, stop in ranges]
        for future in futures:
            raise_if_stopped()
            done = future.result()
            if progress is not None:
                progress.update(done)
    except BaseException:  # Ctrl-C, SIGTERM or an error: end the workers now, not after their work
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
