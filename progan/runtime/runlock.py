"""One run per folder: an exclusive lock on the run folder itself, held for the life of the run.

The lock is an flock on the run folder's own directory (opened O_RDONLY|O_DIRECTORY), so it
lives exactly as long as the folder: deleting RUN/run.lock cannot defeat it, and the kernel
drops it when the holder exits for any reason (kill -9 included), so a lock left by a dead run
never blocks a resume. RUN/run.lock's text (PID, host, start time) only names the holder for
the refusal message; it is not the lock. Where a file system cannot flock a directory (some
NFS mounts lock only files opened for writing), the lock falls back to an flock on RUN/run.lock
itself, as before: one run per folder still holds, but deleting that file there defeats it.

In a multi-process run only the main process takes the lock, before anything is written; the
other processes learn its outcome through one broadcast, so every rank refuses alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from progan.runtime.diskspace import UNWRITABLE, WriteFailed, write_failed
from progan.runtime.elastic import leave_process_group
from progan.runtime.errors import CommandLineError

LOCK_NAME = "run.lock"


class RunFolderBusy(CommandLineError):
    """Another live process holds the run folder (or it cannot be locked); one line."""


class RunLock:
    """A held lock (a descriptor of the run folder, or of run.lock as a fallback); released by
    release() or by the process ending."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    __del__ = release  # a run that raised inside a longer-lived process (a notebook, tests) lets go too


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def acquire(run_dir: str | os.PathLike) -> RunLock:
    """Create `run_dir` if needed and lock it, or raise RunFolderBusy naming the holder."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in UNWRITABLE:  # as an existing folder that cannot be written: exit 4, not "busy"
            raise write_failed(exc, _existing_parent(run_dir), f"the run folder {run_dir}", None) from None
        raise RunFolderBusy(f"cannot lock the run folder {run_dir}: {exc.strerror or exc}") from None
    if not _flock(lock_fd, run_dir, path):  # this file system cannot lock a directory: lock run.lock
        os.close(lock_fd)
        try:
            lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunFolderBusy(f"cannot lock the run folder {run_dir}: {exc.strerror or exc}") from None
        if not _flock(lock_fd, run_dir, path):
            os.close(lock_fd)
            raise RunFolderBusy(f"cannot lock the run folder {run_dir}: its file system supports no flock "
                                f"(docs/reliability.md, 'One run per folder')") from None
    # The holder's record: written in place, never renamed (it may be the lock itself, above).
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, the run's first write reports it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        finally:
            os.close(fd)
    return RunLock(path, lock_fd)


# errno values of a file system that cannot flock this kind of descriptor (NFS: a read-only one)
_UNSUPPORTED = {errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


def _flock(fd: int, run_dir: Path, path: Path) -> bool:
    """Take an exclusive flock on `fd`: True when taken, False when the file system cannot flock it;
    RunFolderBusy (the descriptor closed) when another process holds it or the error is another."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderBusy(f"cannot lock the run folder {run_dir}: {exc.strerror or exc}") from None
        raise RunFolderBusy(f"{run_dir} is in use by another training run ({describe_holder(path)}); "
                            f"wait for it to end or stop it, or choose another --out") from None


def describe_holder(path: Path) -> str:
    """'PID 123 on host X since T' from a lock file, as far as it can be read."""
    try:
        holder = json.loads(path.read_text())
        return f"PID {holder['pid']} on host {holder['host']}, since {holder['started']}"
    except FileNotFoundError:
        return f"holder unknown: its {path.name} was deleted"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: its lock file is being written"


def lock_run_folder(run_dir: str | os.PathLike, cpu: bool) -> RunLock | None:
    """Take the run folder's lock on the main process and tell every process the outcome.

    Starts accelerate's process state (the process group, when there are several processes) so
    the refusal reaches all ranks; the Accelerator made afterwards joins that same state. Returns
    the lock on the main process, None on the others; raises RunFolderBusy on every process.
    """
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    lock, refusal = None, None
    if state.is_main_process:
        try:
            lock = acquire(run_dir)
        except (RunFolderBusy, WriteFailed) as exc:
            refusal = (type(exc).__name__, str(exc))
    refusal = share_from_main(refusal, state.num_processes)
    if refusal is not None:
        if state.num_processes > 1:  # leave the group together: a rank that exits while its peer still
            leave_process_group()  # holds the group can make gloo abort the peer
        kind, message = refusal
        raise (WriteFailed if kind == WriteFailed.__name__ else RunFolderBusy)(message)
    return lock


def share_from_main(value, num_processes: int):
    """The main process's `value` on every process (a collective: all processes must call it)."""
    if num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


# Temporary files progan's atomic writes leave behind when killed mid-write (fileio.atomic_output
# names them ".<final name>.<random>.tmp"); with paper-size models a checkpoint's is hundreds of MB.
STALE_TEMP_GLOB = ".*.tmp"


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the run folder's leftover temporary files; call only while holding the lock (no
    live writer of this folder exists then). Returns what was removed."""
    removed = []
    for path in sorted(Path(run_dir).glob(STALE_TEMP_GLOB)):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
