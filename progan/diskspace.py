"""Disk space: a check before a large write, and one line when a write fails.

A full disk shows up in many shapes: ENOSPC or EDQUOT from a plain write, "Input/output error"
from LMDB (a short write on a full disk), iostream errors from torch. Each writer states what it
is about to write and about how big it is; these helpers check the space first and turn a
failure into one line naming the folder, the bytes needed and the bytes free.
"""

from __future__ import annotations

import errno
import os
import shutil

from progan.cli import first_line


def free_bytes(folder) -> int | None:
    """Bytes free to this user on the file system holding `folder` (None if it cannot be asked)."""
    try:
        return shutil.disk_usage(os.fspath(folder)).free
    except OSError:
        return None


def format_bytes(size: float) -> str:
    """e.g. "512 B", "3.2 MB", "1.4 GB" (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def shortfall(folder, needed: int) -> int | None:
    """The bytes free in `folder` when they are fewer than `needed`, else None."""
    free = free_bytes(folder)
    return free if free is not None and free < needed else None


def disk_full(folder, needed: int, free: int | None, what: str, remedy: str) -> str:
    """The one line for a write that does not fit."""
    left = format_bytes(free) if free is not None else "unknown"
    return (f"{folder}: disk full: {what} needs about {format_bytes(needed)}, {left} free; "
            f"free some space, then {remedy}")


def write_failure(folder, error: BaseException, needed: int, what: str, remedy: str) -> str:
    """One line for a failed write of about `needed` bytes: "disk full" when the error or the
    space left says so, else the error itself, with the space left either way."""
    free = free_bytes(folder)
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed):
        return disk_full(folder, needed, free, what, remedy)
    left = f", {format_bytes(free)} free there" if free is not None else ""
    return f"{folder}: writing {what} failed ({first_line(error, None)}{left}); {remedy}"
