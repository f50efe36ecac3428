"""Scans in a child process: a damaged page of LMDB's own B-tree can make LMDB read outside the
file during a lookup, a SIGBUS no process survives. The child writes where it is (ScanPosition,
16 bytes of a memfd it shares with its parent) before each read, so its death names the record;
it reports what it finds as JSON lines on its stdout.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

from progan.data.format import DatasetError, FileCutShort
from progan.data.lmdbfile import check_data_file


class ScanPosition:
    """Where a scan is, (level position, image index; -1: the level's table), written before each
    read into 16 bytes of a file its parent holds too: a child that dies of a signal inside LMDB
    has told which record killed it. Without a file (in-process scans) it records nothing."""

    def __init__(self, fd: int | None = None) -> None:
        self._map = mmap.mmap(fd, 16) if fd is not None else None

    @property
    def shared(self) -> bool:
        return self._map is not None

    def at(self, level: int, index: int) -> None:
        if self._map is not None:
            struct.pack_into("<qq", self._map, 0, level, index)


class ChildEnd(NamedTuple):
    returncode: int
    position: tuple[int, int]  # the last ScanPosition it wrote; (-1, -1) if none
    stderr: str


def child_env() -> dict:
    package_root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}


def run_scan_child(args: list[str], on_event: Callable[[dict], None], new_session: bool = False,
                    on_start: Callable[[subprocess.Popen], None] | None = None) -> ChildEnd:
    """Run `python -m progan.data.integrity ARGS... FD` with FD a shared ScanPosition, passing each
    JSON line it prints to `on_event` as it comes; the child is killed if `on_event` raises (or
    the caller is interrupted). `on_start(child)`: for a caller that may end it early."""
    with memory_file("progan-scan-position") as shared, memory_file("progan-scan-stderr") as errors:
        os.pwrite(shared.fileno(), struct.pack("<qq", -1, -1), 0)
        child = subprocess.Popen([sys.executable, "-m", "progan.data.integrity", *args, str(shared.fileno())],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
                                 pass_fds=(shared.fileno(),), env=child_env(), start_new_session=new_session)
        try:
            if on_start is not None:
                on_start(child)
            for line in child.stdout:
                try:
                    event = json.loads(line)
                except ValueError:  # not ours (a library's print): not an event
                    continue
                if isinstance(event, dict):
                    on_event(event)
            child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
        position = struct.unpack("<qq", os.pread(shared.fileno(), 16, 0))
        errors.seek(0)
        return ChildEnd(child.returncode, position, errors.read().decode(errors="replace"))


def memory_file(name: str):
    """A file in memory (Linux memfd), so that a scan still runs with the disk full; elsewhere a
    temporary file."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.fdopen(os.memfd_create(name), "w+b")
    return tempfile.TemporaryFile("w+b")


def raise_child_error(event: dict) -> None:
    """A child's {"error": line, "cut": bool}: raised here as the DatasetError it was there."""
    if "error" in event:
        raise (FileCutShort if event.get("cut") else DatasetError)(event["error"])


# How a read inside LMDB dies on a damaged page: outside the file (SIGBUS), outside the map
# (SIGSEGV), or one of LMDB's own assertions (SIGABRT). Any other signal came from outside
# (the OOM killer, a kill): no verdict on the database.
_READ_CRASHES = (signal.SIGBUS, signal.SIGSEGV, signal.SIGABRT)


def crash_position(path, end: ChildEnd, what: str) -> tuple[int, int]:
    """Where a child scan that ended without its result died reading. A file cut under it:
    FileCutShort. A death outside any read or by another signal, or an exit with an error:
    DatasetError saying so (one line)."""
    check_data_file(path)
    level, index = end.position
    if end.returncode >= 0 or level < 0 or -end.returncode not in _READ_CRASHES:
        told = end.stderr.strip().splitlines()
        why = f"killed by {_signal_name(-end.returncode)}" if end.returncode < 0 else f"exit {end.returncode}"
        raise DatasetError(f"{path}: {what} of the database did not finish ({why}{': ' + told[-1] if told else ''}); "
                           "run it again")
    return level, index


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def crash_reason(end: ChildEnd) -> str:
    return (f"crashed the reader ({_signal_name(-end.returncode)}: LMDB met a damaged page of its own index "
            "on the way to it)")


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)
