"""Finding the source images of a build: a recursive walk, ordered by relative path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class SourceFile(NamedTuple):
    path: str  # relative to the source folder, "/"-separated
    size: int  # bytes; -1 when the file cannot be stat'ed (a dangling link, say)


def find_image_files(root: Path) -> tuple[list[SourceFile], list[str]]:
    """Image files under `root` (extension match, any case), sorted by relative path.

    Symlinked files are followed; symlinked folders are not (no loops). Returns the files and
    one line per folder that could not be listed.
    """
    files, unreadable = [], []

    def note_unreadable(error: OSError) -> None:
        where = os.path.relpath(error.filename, root) if error.filename else str(root)
        unreadable.append(f"{where}: {error.strerror}")

    for folder, _, names in os.walk(root, onerror=note_unreadable):
        for name in names:
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(folder, name)
            files.append(SourceFile(os.path.relpath(full, root).replace(os.sep, "/"), _size(full)))
    files.sort()
    return files, sorted(unreadable)


def listing_digest(files: list[SourceFile]) -> str:
    """sha256 of the names and sizes: recognises the same input when a build resumes."""
    digest = hashlib.sha256()
    for source in files:
        digest.update(source.path.encode("utf-8", "surrogateescape") + b"\0%d\n" % source.size)
    return digest.hexdigest()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1
