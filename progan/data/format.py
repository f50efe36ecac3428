"""The database format: its keys, record encodings, checksums, the image pyramid rule and the
errors every reader and writer raises. See progan/data/__init__.py for the layout of a database.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image

from progan.shapes import DEFAULT_ASPECT, RESOLUTION_RULE, is_valid_resolution, level_size

FORMAT_NAME = "progan-multires-lmdb"
FORMAT_VERSION = 1
CHANNELS = 3
PYRAMID_RULE = "2x2 box average of the stored level above, rounded half up"


META_KEY = b"meta"
STATE_KEY = b"build/state"
CHUNK_PREFIX = b"build/chunk/"
CHECKSUM = "crc32"
CHECKSUM_PREFIX = b"crc32/"
LABELS_KEY = b"labels"
LABEL_DTYPE = "<u4"  # one class index per image
# The most classes a database may name: a conditional model grows a weight row per class, and a
# label file naming class 4294967297 must be one line, not a 4-billion-name list.
MAX_CLASSES = 1 << 16


# name -> lossless. Numbers behind the default: bench/RESULTS.md, "Dataset build and reading".
ENCODINGS = {"raw": True, "png": True, "webp": True, "jpeg": False}
DEFAULT_ENCODING = "raw"


class DatasetError(ValueError):
    """A dataset path that cannot be used; the message is one line naming the path."""


class DatabaseWriteFailed(DatasetError):
    """A build could not write (disk full, I/O error); what it committed is kept."""


class FileCutShort(DatasetError):
    """data.mdb is shorter than its database needs (see MappedFile): no record can be trusted."""


class ImageRecord(NamedTuple):
    """One source image, encoded at every level of a build (ascending resolution)."""

    source: str  # path relative to the build's SOURCE folder
    levels: list[bytes]
    source_sha256: str  # of the source file's bytes
    label: int | None = None  # class index in a labelled build


def image_key(resolution: int, index: int) -> bytes:
    return b"%d-%08d" % (resolution, index)


def chunk_key(number: int) -> bytes:
    return CHUNK_PREFIX + b"%08d" % number


def checksum_key(resolution: int) -> bytes:
    return CHECKSUM_PREFIX + b"%d" % resolution


def record_checksum(data) -> int:
    """crc32 of a stored record's bytes (any buffer)."""
    return zlib.crc32(data)


def resolutions_between(min_res: int, max_res: int) -> list[int]:
    """Ascending powers of two from min_res to max_res inclusive."""
    for res in (min_res, max_res):
        if not is_valid_resolution(res):
            raise ValueError(f"resolution {res} is not {RESOLUTION_RULE}")
    if min_res > max_res:
        raise ValueError(f"min resolution {min_res} is above max resolution {max_res}")
    return [1 << n for n in range(min_res.bit_length() - 1, max_res.bit_length())]


def build_pyramid(top: Image.Image, min_res: int) -> list[Image.Image]:
    """All levels from `top` (RGB, square or of a supported aspect) down to the level whose long
    side is min_res, ascending resolution.

    Each level is made from the level above as stored (uint8), never from the original.
    """
    levels = [top]
    while max(levels[-1].size) > min_res:
        levels.append(levels[-1].reduce(2))  # (a + b + c + d + 2) >> 2 per channel
    return levels[::-1]


def encode_image(image: Image.Image, encoding: str) -> bytes:
    """Encode an RGB image for storage."""
    if encoding == "raw":
        return image.tobytes()
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif encoding == "webp":
        image.save(buffer, format="WEBP", lossless=True, quality=0, method=0)  # fastest lossless
    elif encoding == "jpeg":
        image.save(buffer, format="JPEG", quality=100, subsampling=0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    return buffer.getvalue()


def decode_image(data, encoding: str, resolution: int, aspect: str = DEFAULT_ASPECT) -> np.ndarray:
    """Decode one stored record to uint8 [H, W, 3] (R x R when square); ValueError if it is not that."""
    width, height = level_size(aspect, resolution)
    shape = (height, width, CHANNELS)
    if encoding == "raw":
        if len(data) != height * width * CHANNELS:
            raise ValueError(f"holds {len(data)} bytes, expected {height * width * CHANNELS}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    except Exception as error:  # PIL raises many types for bad data
        raise ValueError(f"cannot be decoded as {encoding}: {error}") from None
    if array.shape != shape:
        raise ValueError(f"decodes to shape {array.shape}, expected {shape}")
    return array


def canonical_json(value) -> bytes:
    """The one serialisation used for records: stable bytes for equal values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")
