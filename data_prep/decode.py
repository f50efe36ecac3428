"""Source file -> RGB image (square, or of --aspect) -> encoded pyramid. Runs in the build's worker processes.

Everything a photo folder holds is accepted: EXIF orientation is applied; grayscale, palette,
CMYK, 16-bit and float images become 8-bit RGB; transparency (RGBA, LA, palette with a
transparent colour) is composited on white; animated and multi-page files give their first
frame. A file that cannot be used raises `Skip` with a one-line reason; nothing else escapes.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from progan.data.format import build_pyramid, encode_image
from progan.runtime.signals import quiet_worker
from progan.shapes import ASPECTS, DEFAULT_ASPECT, level_size

ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white
DEFAULT_MAX_PIXELS = 150_000_000  # a decompression-bomb cap, ~12000x12000
RESIZE_FILTER = "lanczos"

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {  # EXIF orientation -> the transpose that shows the picture upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class Skip(Exception):
    """A source file that cannot be used; str(skip) is the one-line reason."""


@dataclass(frozen=True)
class DecodeOptions:
    resolution: int  # the top level
    min_res: int
    crop: str  # "center" or "none"
    upscale: bool
    max_pixels: int
    encoding: str
    aspect: str = DEFAULT_ASPECT  # width:height of every level (progan.shapes)


_RING = None  # this worker's view of the parent's TransferRing, when there is one


def init_worker(max_pixels: int, ring=None) -> None:
    """Worker process set-up: stop signals are the parent's to handle; die with the parent."""
    global _RING
    quiet_worker()
    _RING = ring
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own check, behind ours in `open_checked`
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def process_file(position: int, path: str, options: DecodeOptions, slot: int | None = None):
    """Decode, crop, resize, build the pyramid and encode one file.

    Returns (position, levels, level_lengths, skip reason, source sha256). When `slot` names
    a slot of the shared TransferRing and the encoded levels fit, they are written there and
    only their lengths come back (levels is None): far cheaper than pickling megabytes
    through a pipe.
    """
    try:
        data = read_source(path)
        digest = hashlib.sha256(data).hexdigest()
        top = load_square(data, options)
        levels = [encode_image(level, options.encoding) for level in build_pyramid(top, options.min_res)]
    except Skip as skip:
        return position, None, None, str(skip), None
    except MemoryError:
        return position, None, None, "out of memory while decoding", None
    except Exception as error:  # a bad file must never stop the build
        return position, None, None, f"cannot decode: {type(error).__name__}: {error}", None
    if slot is not None and _RING is not None and _RING.store(slot, levels):
        return position, None, [len(level) for level in levels], None, digest
    return position, levels, None, None, digest


def read_source(path: str) -> bytes:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise Skip("dangling symlink" if os.path.islink(path) else "vanished during the build") from None
    except OSError as error:
        raise Skip(f"unreadable: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Skip("not a regular file")
    if info.st_size == 0:
        raise Skip("empty file")
    try:
        with open(path, "rb") as source:
            return source.read()
    except OSError as error:
        raise Skip(f"unreadable: {error.strerror}") from None


def load_square(data: bytes, options: DecodeOptions) -> Image.Image:
    """The source cropped to the aspect (a square by default) and resized to the top level, as RGB."""
    image = open_checked(data, options.max_pixels)
    orientation = exif_orientation(image)
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    check_geometry(width, height, options)
    shrink_while_decoding(image, (width, height), level_size(options.aspect, options.resolution))
    try:
        image.load()
    except Exception as error:
        raise Skip(f"truncated or corrupt: {error}") from None
    if orientation in _ORIENTATION_TRANSPOSE:
        image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
    return crop_and_resize(to_rgb(image), options.resolution, options.aspect)


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Skip("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Skip(f"too many pixels: over --max-pixels {max_pixels} (decompression bomb?)") from None
    except Exception as error:
        raise Skip(f"truncated or corrupt: {type(error).__name__}: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise Skip(
            f"too many pixels: {width}x{height} is over --max-pixels {max_pixels} (decompression bomb?)"
        )
    return image


def exif_orientation(image: Image.Image) -> int:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF must not cost the picture
        return 1
    return orientation if orientation in _ORIENTATION_TRANSPOSE else 1


def check_geometry(width: int, height: int, options: DecodeOptions) -> None:
    w0, h0 = ASPECTS[options.aspect]
    square = options.aspect == DEFAULT_ASPECT
    if options.crop == "none" and width * h0 != height * w0:
        kept = "square images" if square else f"images at --aspect {options.aspect}"
        raise Skip(f"not {'square' if square else options.aspect}: {width}x{height} (--crop none keeps only {kept})")
    # The centred crop of the aspect is at least the top level iff both sides are.
    top_width, top_height = level_size(options.aspect, options.resolution)
    if (width < top_width or height < top_height) and not options.upscale:
        below = f"shorter side below {options.resolution}" if square else f"below {top_width}x{top_height}"
        raise Skip(f"too small: {width}x{height}, {below} (--upscale keeps it)")


def shrink_while_decoding(image: Image.Image, size: tuple[int, int], target: tuple[int, int]) -> None:
    """Let libjpeg decode big JPEGs at 1/2, 1/4 or 1/8 scale, keeping >= 2x the target size
    (width, height) on both sides; `size` is the upright (width, height)."""
    if image.format != "JPEG":
        return
    factor = 8
    while factor > 1 and (size[0] // factor < 2 * target[0] or size[1] // factor < 2 * target[1]):
        factor //= 2
    if factor > 1:
        image.draft(None, (image.width // factor, image.height // factor))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL opens."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_GRAY_MODES:
        # Keep the high byte, as PIL itself does for 16-bit RGB.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def crop_and_resize(image: Image.Image, resolution: int, aspect: str = DEFAULT_ASPECT) -> Image.Image:
    """The largest centred crop of the aspect (a square by default; a no-op for images already at
    it), resized to the top level with Lanczos (antialiased)."""
    width, height = image.size
    w0, h0 = ASPECTS[aspect]
    if width * h0 >= height * w0:  # wider than the aspect: keep the full height
        crop_width, crop_height = height * w0 // h0, height
    else:
        crop_width, crop_height = width, width * h0 // w0
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    box = (left, top, left + crop_width, top + crop_height)
    target = level_size(aspect, resolution)
    if (crop_width, crop_height) == target:
        return image if (width, height) == target else image.crop(box)
    return image.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
