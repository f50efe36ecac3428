"""One read-only LMDB environment per (database, process), shared by every reader of it and
safe across fork().
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

import lmdb

from progan.data.format import DatasetError
from progan.data.lmdbfile import MappedFile, open_readonly
from progan.runtime.errors import first_line

# py-lmdb refuses to open one environment twice in a process, yet a trainer holds several
# levels (and reads metadata) of the same database at once, and the background check reads it
# from a thread: readers share one environment per (database, process), counted, and closed
# with its last user. The table is guarded by a lock (renewed in a forked child).
_SHARED_ENVS: dict[tuple[str, int], list] = {}  # (real path, pid) -> [environment, users, MappedFile]
_SHARED_LOCK = threading.Lock()
# Datasets released by the garbage collector. A finalizer can run at any allocation, also while
# this thread holds _SHARED_LOCK (a deadlock if it took the lock), so __del__ only queues its
# release here (deque.append takes no lock) and the next acquire or release carries it out.
_DEFERRED_RELEASES: collections.deque = collections.deque()


def _renew_shared_lock() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # a thread of the parent may have held it at fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_shared_lock)


def _shared_key(path) -> tuple[str, int]:
    return os.path.realpath(os.fspath(path)), os.getpid()


def acquire(path) -> tuple[lmdb.Environment, MappedFile]:
    with _SHARED_LOCK:
        _release_deferred()
        _close_inherited_envs()
        key = _shared_key(path)
        entry = _SHARED_ENVS.get(key)
        if entry is None:
            env, mapped = open_readonly(path)
            entry = _SHARED_ENVS[key] = [env, 0, mapped]
        entry[1] += 1
        return entry[0], entry[2]


def mapped_file(path) -> MappedFile | None:
    """The size guard of a database this process has open (None when it has not)."""
    entry = _SHARED_ENVS.get(_shared_key(path))
    return entry[2] if entry is not None else None


def _close_inherited_envs() -> None:
    """In a forked child, close the environments inherited from the parent.

    LMDB handles must not cross fork(), and py-lmdb would refuse to reopen a database this
    process seems to hold already. Closing read-only, lock-free handles touches only this
    process's copies of the mapping and file descriptors; the parent keeps its own.
    """
    pid = os.getpid()
    for key in [key for key in _SHARED_ENVS if key[1] != pid]:
        env, _, mapped = _SHARED_ENVS.pop(key)
        with contextlib.suppress(lmdb.Error):
            env.close()
        mapped.close()


def release(path) -> None:
    with _SHARED_LOCK:
        _release_deferred()
        _release_locked(path)


def _release_deferred() -> None:
    """Carry out the releases queued by finalizers (with _SHARED_LOCK held)."""
    while _DEFERRED_RELEASES:
        _release_locked(_DEFERRED_RELEASES.popleft())


def release_from_finalizer(path) -> None:
    """release() for a finalizer, which must never wait for the lock (see _DEFERRED_RELEASES):
    the release is queued, and carried out at once when the lock is free (the usual case: the
    database is closed right away)."""
    _DEFERRED_RELEASES.append(path)
    if _SHARED_LOCK.acquire(blocking=False):
        try:
            _release_deferred()
        finally:
            _SHARED_LOCK.release()


def _release_locked(path) -> None:
    key = _shared_key(path)
    entry = _SHARED_ENVS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _SHARED_ENVS[key]
        entry[0].close()
        entry[2].close()


@contextlib.contextmanager
def reading(path):
    """A read-only environment for a one-off read: a shared one if open, else a temporary one.
    The file's size is checked first (records read through it are checked each, read_record)."""
    env, mapped = acquire(path)
    try:
        mapped.check()
        yield env
    except lmdb.Error as error:  # a damaged page on the way to a record
        raise DatasetError(f"{path}: the database is damaged ({first_line(error)}); delete it and build it again") from None
    finally:
        release(path)
