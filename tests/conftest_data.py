"""Helpers for the data pipeline tests: image files of every kind, hostile files, CLI runs.

Imported by tests/test_data_*.py (not a conftest.py: pytest does not load it by itself).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image

from data_prep.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m data_prep ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_subprocess(*args, env=None, **popen) -> subprocess.Popen:
    """`python -m data_prep ARGS` as a real child process (for kill tests)."""
    return subprocess.Popen(
        [sys.executable, "-m", "data_prep", *map(str, args)],
        cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **popen,
    )


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def solid(mode: str, size: tuple[int, int], colour) -> Image.Image:
    return Image.new(mode, size, colour)


def noise(size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def exif_rotated_jpeg(path: Path, orientation: int) -> Path:
    """A 128x64 JPEG, left half red and right half blue, tagged with an EXIF orientation."""
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[:, :64] = (255, 0, 0)
    pixels[:, 64:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(Image.fromarray(pixels), path, quality=95, exif=exif.tobytes())


def write_hostile_files(folder: Path) -> dict[str, str]:
    """One file of each kind a build must skip; returns {relative path: expected reason start}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    whole = jpeg_bytes(noise(64, 1), quality=90)
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.png").write_bytes(b"these are my notes, not a picture\n")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    (folder / "bomb.png").write_bytes(png_header_only(40000, 40000))
    save(noise(16, 2), folder / "tiny.png")
    os.mkfifo(folder / "pipe.jpg")
    return {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated or corrupt",
        "notes.png": "not an image",
        "dangling.jpg": "dangling symlink",
        "bomb.png": "too many pixels",
        "tiny.png": "too small",
        "pipe.jpg": "not a regular file",
    }


def all_records(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor())
    finally:
        env.close()
