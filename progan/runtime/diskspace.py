"""Disk space: a check before a large write, and one line a user can act on when a write fails.

A full disk shows up in many shapes: ENOSPC or EDQUOT from a plain write, "Input/output error"
from LMDB (a short write on a full disk), "basic_ios::clear: iostream error" or "unexpected pos"
from torch.save's C++ writer. Each writer states what it is about to write and about how big it
is; these helpers check the space first and turn a failure into one line naming the folder, the
bytes needed and the bytes free. They are called after an atomic write has removed its
temporary file, so nothing already written is touched.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from progan.runtime.errors import first_line

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_WORDS = ("no space left", "disk quota", "file too large")


# The errors of a place that takes no writes (read-only or full file system, no permission, an
# I/O error): exit 4 for every command, unlike a path that cannot be a folder (bad input, exit 2).
UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EIO}


class WriteFailed(Exception):
    """The run folder (or another output) could not be written: exit 4 for every command; the
    message is one line naming the folder."""


def format_bytes(n: float | None) -> str:
    """e.g. "512 B", "3.2 MiB", "1.4 GiB" (binary units, as `df -h` counts)."""
    if n is None:
        return "an unknown amount of space"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def state_nbytes(obj) -> int:
    """Bytes of all tensors in a (nested) state dict: about the size torch.save will write."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def is_disk_full(exc: BaseException, needed: int | None = None, free: int | None = None) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    if any(word in text for word in _DISK_FULL_WORDS):
        return True
    # torch.save's C++ writer reports a full disk only as a stream error.
    return needed is not None and free is not None and free < needed


def write_failed(exc: BaseException, folder: str | os.PathLike, what: str, needed: int | None,
                 free: int | None = None, retry: str = "rerun with --resume auto") -> WriteFailed:
    """The one-line error for a failed write of `what` (about `needed` bytes) into `folder`, which
    had `free` bytes before the write (measured now when not given); `retry` says what to do after."""
    folder = Path(folder)
    free = free_bytes(folder) if free is None else free
    amounts = f"{format_bytes(free)} free" if needed is None else f"needs about {format_bytes(needed)}, {format_bytes(free)} free"
    if is_disk_full(exc, needed, free):
        return WriteFailed(f"no space left in {folder} for {what} ({amounts}); free some space "
                           f"(or move the run), then {retry}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
    return WriteFailed(f"could not write {what} in {folder} ({reason}; {amounts}); "
                       f"fix the folder, then {retry}")


def low_space_warning(folder: str | os.PathLike, expected: int, saves: int = 2) -> str | None:
    """A warning when `folder` has room for fewer than `saves` more writes of `expected` bytes
    (a new checkpoint is written before an old one is pruned), else None."""
    free = free_bytes(folder)
    if free is None or expected <= 0 or free >= saves * expected:
        return None
    room = free // expected
    return (f"warning: {folder} has {format_bytes(free)} free, room for {room} more checkpoint(s) of "
            f"{format_bytes(expected)}; free some space before the run stops")


def check_room(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise WriteFailed (before anything is written) when `folder` has less than `needed` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise write_failed(OSError(errno.ENOSPC, "No space left on device"), folder, what, needed, free)


# -- dataset builds (data_prep): the message names the build's own remedy ------------------
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
    if is_disk_full(error, needed, free):
        return disk_full(folder, needed, free, what, remedy)
    left = f", {format_bytes(free)} free there" if free is not None else ""
    return f"{folder}: writing {what} failed ({first_line(error, None)}{left}); {remedy}"
