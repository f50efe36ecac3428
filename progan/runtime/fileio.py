"""Atomic file writes: a reader (or a crash) never sees a half-written file (or half a log line).

Every file the project writes goes to a temporary name in the same folder and is renamed over
the destination only once it is complete and flushed; rename is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds.

    The caller writes the whole file to the yielded path. On any exception the temporary file
    is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _DEFAULT_FILE_MODE)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append `record` to a JSON-lines log as one complete line (one write, flushed and synced).

    Appending is not a rename, but a single write of a whole line is what keeps a concurrent
    reader or a crash from seeing half a record.
    """
    line = json.dumps(record, sort_keys=False) + "\n"
    path = Path(path)
    size = path.stat().st_size if path.exists() else None
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError:  # a full disk: no part of the line stays, nor an empty file that was not there
        with contextlib.suppress(OSError):
            now = path.stat().st_size
            # Only what this write can have added: a line another process appended meanwhile stays.
            if now <= (size or 0) + len(line.encode()):
                if size is None:
                    path.unlink()
                else:
                    os.truncate(path, size)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform, and not essential.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
