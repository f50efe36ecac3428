"""Damage in a database, found before hours of training are lost.

Every record's crc32 is stored at build time (progan.data.writer, `crc32/{R}` tables). Three checks use
them: `verify` reads every record of every level and lists each bad one (`data_prep verify`);
`check_levels` is the trainer's cheap check at start: the key structure and count of each level
it will need, its checksum table, and a spread sample of records; `BackgroundCheck` reads every
record of the levels a run still needs, from the start of training, so damage in a level used
hours later stops the run minutes in. Reading during training checks each record's checksum too
(MultiResolutionDataset). Every read first checks that data.mdb is not shorter than the database
needs (progan.data.lmdbfile.MappedFile): a cut file is one line, never SIGBUS.

All three scans run in a child process (`python -m progan.data.integrity`): a damaged page of LMDB's
own B-tree can make LMDB read outside the file during a lookup, a SIGBUS no process survives.
The child writes where it is (ScanPosition) before each read, so its death names the record.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import lmdb
import numpy as np

from progan.data.environments import mapped_file, reading
from progan.data.format import LABELS_KEY, DatasetError, FileCutShort, image_key
from progan.data.lmdbfile import check_data_file
from progan.data.reader import (damaged_record, dataset_aspect, label_table_problem, read_checksum_table, read_metadata,
                                read_record)
from progan.runtime.errors import first_line
from progan.shapes import DEFAULT_ASPECT, describe_level

SAMPLE_RECORDS = 16  # per level, checked by the trainer at start


class BadRecord(NamedTuple):
    resolution: int
    index: int | None  # None: the level as a whole (its checksum table)
    reason: str
    aspect: str = DEFAULT_ASPECT

    def describe(self) -> str:
        res = describe_level(self.aspect, self.resolution)
        if self.index is None:
            return f"level {res}: {self.reason}"
        return f"level {res} image {self.index} (record {image_key(self.resolution, self.index).decode()}): {self.reason}"


@dataclass
class VerifyReport:
    records: int  # records read
    checksums: bool  # whether the database has them (older builds do not)
    bad: list[BadRecord] = field(default_factory=list)
    stray: str | None = None  # a record count that does not add up
    labels_problem: str | None = None  # what is wrong with the label table of a labelled database


def verify(path, on_record: Callable[[int], None] | None = None,
           on_bad: Callable[[BadRecord], None] | None = None, isolated: bool = True) -> VerifyReport:
    """Read every record at every level: present, readable, matching its checksum, decoding to
    the right shape. Bad records are collected (and passed to `on_bad` as found), never raised;
    `on_record(n)` counts records as they are read. DatasetError only when the database cannot be
    opened or its metadata is unusable (FileCutShort for a cut file).

    `isolated` (the default): the reading runs in a child process, so that a damaged page of
    LMDB's own index, which can make LMDB read outside the file (SIGBUS, uncatchable in-process),
    costs a child, not the caller: that record is listed as bad, and the scan goes on from the
    next level in a new child."""
    metadata = read_metadata(path)
    resolutions, aspect = metadata["resolutions"], dataset_aspect(metadata)
    report = VerifyReport(records=0, checksums=metadata.get("checksums") is not None)
    finished = []

    def handle(event: dict) -> None:
        if "records" in event:
            report.records += event["records"]
            if on_record is not None:
                on_record(event["records"])
        elif "bad" in event:
            bad = BadRecord(*event["bad"], aspect)
            report.bad.append(bad)
            if on_bad is not None:
                on_bad(bad)
        elif "done" in event:
            report.stray, report.labels_problem = event["done"]["stray"], event["done"]["labels_problem"]
            finished.append(True)
        else:
            _raise_child_error(event)

    if not isolated:
        _verify_scan(path, metadata, 0, handle, ScanPosition())
        return report
    first = 0
    while not finished:
        told_before = report.records
        end = _run_scan_child(["verify", os.fspath(path), str(first)], handle)
        if finished:
            break
        level, index = _crash_position(path, end, "verify")
        read = (min(level, len(resolutions)) - first) * metadata["count"] + max(index, 0)
        handle({"records": max(0, read - (report.records - told_before))})  # read before the crash, not yet told
        if level >= len(resolutions):  # in the final count of the records
            report.stray = f"its records could not be counted ({_crash_reason(end)})"
            break
        handle({"bad": [resolutions[level], index, f"{_crash_reason(end)}; the rest of this level was not checked"]})
        first = level + 1
    return report


def _verify_scan(path, metadata: dict, first_level: int, emit: Callable[[dict], None], position: "ScanPosition") -> None:
    """verify's reading from level position `first_level` on, told through `emit` as events:
    {"records": n}, {"bad": [resolution, index, reason]}, then {"done": {stray, labels_problem}}."""
    count, encoding, resolutions = metadata["count"], metadata["encoding"], metadata["resolutions"]
    checksums, aspect = metadata.get("checksums"), dataset_aspect(metadata)
    records = _RecordCounter(emit, gap=0.1 if position.shared else 0.0)  # in-process: each record
    stray = labels_problem = None

    with reading(path) as env:  # a damaged page outside any record: DatasetError
        mapped = mapped_file(path)  # the file's size, checked before each read: FileCutShort
        txn = env.begin(buffers=True)
        try:
            for level in range(first_level, len(resolutions)):
                resolution = resolutions[level]
                position.at(level, -1)
                try:
                    mapped.check()
                    table = read_checksum_table(txn, path, checksums, resolution, count)
                except FileCutShort:
                    raise
                except DatasetError:
                    emit({"bad": [resolution, None, "checksum table missing or damaged; records checked by decoding only"]})
                    table, txn = None, _renew(env, txn)
                for index in range(count):
                    position.at(level, index)
                    try:
                        read_record(txn, resolution, index, encoding, table, aspect, mapped)
                    except FileCutShort:
                        raise
                    except ValueError as error:
                        emit({"bad": [resolution, index, str(error)]})
                        txn = _renew(env, txn)  # LMDB invalidates a transaction that met a damaged page
                    records.add()
            records.flush()
            position.at(len(resolutions), -1)
            expected = 1 + count * len(resolutions) + (len(resolutions) if checksums is not None else 0)
            if "classes" in metadata:  # the label table: checksum, one entry per image, each < K
                expected += 1
                mapped.check()
                try:
                    data = txn.get(LABELS_KEY)
                    labels_problem = label_table_problem(None if data is None else bytes(data), metadata)
                except lmdb.Error as error:
                    labels_problem = f"label table {LABELS_KEY.decode()} cannot be read ({first_line(error)})"
                    txn = _renew(env, txn)
            mapped.check()
            entries = txn.stat()["entries"]
        finally:
            txn.abort()
    if entries != expected:
        stray = f"holds {entries} records, expected {expected}"
    emit({"done": {"stray": stray, "labels_problem": labels_problem}})


class _RecordCounter:
    """Records read, told in batches (at most ~10 events a second through a child's pipe)."""

    def __init__(self, emit: Callable[[dict], None], gap: float = 0.1) -> None:
        self.emit, self.gap, self.pending, self.last = emit, gap, 0, time.perf_counter()

    def add(self) -> None:
        self.pending += 1
        now = time.perf_counter()
        if now - self.last >= self.gap:
            self.last = now
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.emit({"records": self.pending})
            self.pending = 0


def _renew(env, txn):
    txn.abort()
    return env.begin(buffers=True)


def check_levels(path, resolutions, samples: int = SAMPLE_RECORDS, isolated: bool = True) -> None:
    """The trainer's check at start, cheap next to a training phase: for each level in
    `resolutions`, every key present (a lookup each: the pages that hold the structure), the
    checksum table intact, and `samples` records spread over the level
    read, checksummed and decoded. DatasetError (one line, naming the record and `verify`).
    `isolated` (the default): in a child process, as verify, so that LMDB meeting a damaged page
    of its own index (SIGBUS) is this one line too. The training reads the same keys afterwards,
    so a database this check passes does not crash it that way."""
    resolutions = [int(r) for r in resolutions]
    if not isolated:
        _check_levels_scan(path, resolutions, samples, ScanPosition())
        return
    events = []
    end = _run_scan_child(["start", os.fspath(path), ",".join(map(str, resolutions)), str(samples)], events.append)
    for event in events:
        _raise_child_error(event)
    if end.returncode == 0 and {"done": True} in events:
        return
    level, index = _crash_position(path, end, "the start check")
    resolution = resolutions[min(level, len(resolutions) - 1)]
    aspect = dataset_aspect(read_metadata(path))
    if index < 0:
        raise DatasetError(f"{path}: reading the checksum table of level {describe_level(aspect, resolution)} "
                           f"{_crash_reason(end)}; run `python -m data_prep verify {path}` and rebuild the database")
    raise DatasetError(damaged_record(path, resolution, index, _crash_reason(end), aspect))


def _check_levels_scan(path, resolutions: list[int], samples: int, position: "ScanPosition") -> None:
    metadata = read_metadata(path)
    count, encoding, checksums = metadata["count"], metadata["encoding"], metadata.get("checksums")
    aspect = dataset_aspect(metadata)
    with reading(path) as env, env.begin(buffers=True) as txn:
        mapped = mapped_file(path)
        for level, resolution in enumerate(resolutions):
            _check_keys(txn, path, resolution, count, aspect, mapped, lambda index: position.at(level, index))
            position.at(level, -1)
            mapped.check()
            table = read_checksum_table(txn, path, checksums, resolution, count)
            for index in np.unique(np.linspace(0, count - 1, min(samples, count)).round().astype(int)):
                position.at(level, int(index))
                try:
                    read_record(txn, resolution, int(index), encoding, table, aspect, mapped)
                except FileCutShort:
                    raise
                except ValueError as error:
                    raise DatasetError(damaged_record(path, resolution, int(index), str(error), aspect)) from None


def _check_keys(txn, path, resolution: int, count: int, aspect: str, mapped, at: Callable[[int], None]) -> None:
    """Every key of the level present: one B-tree lookup each, which reads the branch and leaf
    pages but not the pixels (LMDB hands back a pointer into the map). Lookups, not a cursor
    walk: LMDB's cursor asserts (aborts the process) on some damaged pages a lookup reports."""
    for index in range(count):
        at(index)
        if index % 64 == 0:  # the file's size, every 64 lookups (~50 us): the start check stays cheap
            mapped.check()
        try:
            found = txn.get(image_key(resolution, index)) is not None
        except lmdb.Error as error:
            raise DatasetError(damaged_record(path, resolution, index, f"cannot be read ({first_line(error)})", aspect)) from None
        if not found:
            raise DatasetError(damaged_record(path, resolution, index, "is missing", aspect))


# ----------------------------------------------------------------------------- during training


class BackgroundCheck:
    """Every record of the levels a run will still read, verified from the start of training, so
    damage in a level used hours later stops the run within minutes.

    The trainer's start check (`check_levels`) stays: it is cheap and stops a run before anything
    is written. This one reads, checksums and decodes every record of `resolutions`, image by
    image in the file's own order at disk speed (see `_check`). By default in a child process
    (`python -m progan.data.integrity`, nice +10) watched by a thread that only waits on its pipe:
    a thread doing the reading would hold the trainer's GIL for each record's Python (a step's
    Python then waits on it, convoy-style: -40 to -70% on the step while it ran, on 2 cores) and
    share its memory map's lock; the child shares neither, and its death (a SIGBUS in the last
    microseconds' window of a cut file) is reported, not fatal. `process=False` runs it in the
    thread itself (benchmarks compare). It draws no random numbers and writes nothing the step
    reads, so training computes exactly what it computes without it. With several processes
    on a node, each checks every `share[1]`-th image from `share[0]` (each node checks its own
    copy of the database whole).

    The first problem found is kept in `failure` (the one line a damaged read gives) and
    `on_failure()` is called from the watching thread (the trainer turns it into its stop request,
    so every process stops together, after a checkpoint). `stop()` ends the check early.
    """

    def __init__(self, path, resolutions, share: tuple[int, int] = (0, 1),
                 on_failure: Callable[[], None] | None = None, process: bool = True) -> None:
        self.path = path
        self.resolutions = list(resolutions)
        self.share = share
        self.on_failure = on_failure
        self.process = process
        self.failure: str | None = None
        self.records = 0  # records checked (with process=True: known at the end)
        self.seconds: float | None = None  # how long the whole check took, once done
        self.cpu_seconds: float | None = None  # the CPU time the check took, once ended
        self._stopping = threading.Event()
        self._child: subprocess.Popen | None = None
        self._parent_pid: int | None = None  # in the child: stop when this process is gone
        self._position = ScanPosition()  # in the child: the parent's, naming a record that crashes it
        target = self._watch if process else self._run
        self._thread = threading.Thread(target=target, name="progan-background-check", daemon=True)

    def start(self) -> "BackgroundCheck":
        self._thread.start()
        return self

    def _child_started(self, child: subprocess.Popen) -> None:
        self._child = child
        if self._stopping.is_set():  # stop() came first
            with contextlib.suppress(OSError):
                child.terminate()

    def stop(self) -> None:
        self._stopping.set()
        if self._child is not None and self._child.poll() is None:
            with contextlib.suppress(OSError):
                self._child.terminate()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the check to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.seconds is not None

    def _watch(self) -> None:
        """The trainer's side: wait for the child's one JSON line (or its death)."""
        events = []
        end = _run_scan_child(["background", os.fspath(self.path), ",".join(map(str, self.resolutions)),
                               f"{self.share[0]},{self.share[1]}"], events.append,
                              new_session=True,  # a Ctrl-C at the terminal is the trainer's to handle, not its
                              on_start=self._child_started)
        result = next((event for event in events if "failure" in event), None)
        if self._stopping.is_set():
            return
        if result is None:  # it died: of SIGBUS on a file cut under it or in LMDB, or of something else
            try:
                level, index = _crash_position(self.path, end, "the background check")
                resolution = self.resolutions[min(level, len(self.resolutions) - 1)]
                aspect = dataset_aspect(read_metadata(self.path))
                self.failure = (damaged_record(self.path, resolution, index, _crash_reason(end), aspect) if index >= 0
                                else f"{self.path}: reading the checksum table of level "
                                     f"{describe_level(aspect, resolution)} {_crash_reason(end)}")
            except DatasetError as error:
                self.failure = str(error)
        else:
            self.failure, self.records = result["failure"], result["records"]
            self.seconds, self.cpu_seconds = result["seconds"], result["cpu_seconds"]
        if self.failure is not None and self.on_failure is not None:
            self.on_failure()

    def _run(self) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        _lower_thread_priority()
        try:
            self._check()
        except DatasetError as error:  # the file cut short, the table or metadata damaged
            self.failure = str(error)
        except Exception as error:  # noqa: BLE001 - any surprise is the database's, said in one line
            self.failure = f"{self.path}: the background check of the database failed ({first_line(error)})"
        self.cpu_seconds = time.thread_time() - cpu  # this thread's CPU time, user and system
        if self.failure is None and not self._stopping.is_set():
            self.seconds = time.perf_counter() - started
        if self.failure is not None and not self._stopping.is_set() and self.on_failure is not None:
            self.on_failure()

    def _stopped(self) -> bool:
        return self._stopping.is_set() or (self._parent_pid is not None and os.getppid() != self._parent_pid)

    def _check(self) -> None:
        """Every record of the share, image by image (each image at every level): a build commits
        an image's levels together, so this order goes through data.mdb from start to end, while
        level by level would go through it once per level. LMDB maps the file without readahead
        and a read touches the whole record (one 4 KiB page fault after another), so the file
        ahead of the check is read into the page cache in large reads, which brings the check
        to disk speed."""
        metadata = read_metadata(self.path)
        count, encoding, checksums = metadata["count"], metadata["encoding"], metadata.get("checksums")
        aspect = dataset_aspect(metadata)
        with reading(self.path) as env:
            mapped = mapped_file(self.path)
            txn = env.begin(buffers=True)
            try:
                tables = []
                for level, resolution in enumerate(self.resolutions):
                    self._position.at(level, -1)
                    mapped.check()
                    tables.append(read_checksum_table(txn, self.path, checksums, resolution, count))
                prefetch = _Prefetch(mapped)
                for index in range(self.share[0], count, self.share[1]):
                    if self._stopped():
                        return
                    prefetch.ahead_of(index / count)
                    for level, (resolution, table) in enumerate(zip(self.resolutions, tables)):
                        self._position.at(level, index)
                        try:
                            read_record(txn, resolution, index, encoding, table, aspect, mapped)
                        except FileCutShort:
                            raise
                        except ValueError as error:
                            self.failure = damaged_record(self.path, resolution, index, str(error), aspect)
                            return
                        self.records += 1
            finally:
                txn.abort()


class _Prefetch:
    """Reads data.mdb ahead of a reader going through it from start to end, `window` bytes at a
    time, `ahead` bytes past where the reader is (a fraction of the file)."""

    def __init__(self, mapped, window: int = 16 << 20, ahead: int = 64 << 20) -> None:
        self.mapped, self.ahead = mapped, ahead
        self.buffer = bytearray(window)
        self.size = mapped.needed
        self.done = 0  # bytes read so far

    def ahead_of(self, fraction: float) -> None:
        target = min(self.size, int(fraction * self.size) + self.ahead)
        while self.done < target:
            self.mapped.read_ahead(self.done, self.buffer)
            self.done += len(self.buffer)


def _lower_thread_priority(niceness: int = 10) -> None:
    """Let the training threads win the CPU: on Linux a thread has its own nice value."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def node_share() -> tuple[int, int]:
    """(this process's place, processes) on its node, from the launcher's environment."""
    local_size = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(int(os.environ.get("LOCAL_RANK", "0")), local_size - 1), local_size


def first_failure(failure: str | None, world_size: int) -> str | None:
    """The first process's failure among all processes' (a collective when world_size > 1)."""
    if world_size == 1:
        return failure
    import torch.distributed

    failures = [None] * world_size
    torch.distributed.all_gather_object(failures, failure)
    return next((f for f in failures if f is not None), None)


def check_during_training(trainer) -> BackgroundCheck:
    """Start the BackgroundCheck of the levels the trainer will read from where it stands; a
    failure becomes its stop request (the existing flag every process agrees on at a step)."""

    def stop_training() -> None:
        trainer.stop.signal_name = "a damaged database (background check)"
        trainer.stop.requested = True

    config = trainer.config
    resolutions = [r for r in config.schedule.resolutions if r >= trainer.state.resolution]
    return BackgroundCheck(config.data, resolutions, node_share(), stop_training).start()


# ----------------------------------------------------------------------------- scans in a child


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


class _ChildEnd(NamedTuple):
    returncode: int
    position: tuple[int, int]  # the last ScanPosition it wrote; (-1, -1) if none
    stderr: str


def _child_env() -> dict:
    package_root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}


def _run_scan_child(args: list[str], on_event: Callable[[dict], None], new_session: bool = False,
                    on_start: Callable[[subprocess.Popen], None] | None = None) -> _ChildEnd:
    """Run `python -m progan.data.integrity ARGS... FD` with FD a shared ScanPosition, passing each
    JSON line it prints to `on_event` as it comes; the child is killed if `on_event` raises (or
    the caller is interrupted). `on_start(child)`: for a caller that may end it early."""
    with _memory_file("progan-scan-position") as shared, _memory_file("progan-scan-stderr") as errors:
        os.pwrite(shared.fileno(), struct.pack("<qq", -1, -1), 0)
        child = subprocess.Popen([sys.executable, "-m", "progan.data.integrity", *args, str(shared.fileno())],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
                                 pass_fds=(shared.fileno(),), env=_child_env(), start_new_session=new_session)
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
        return _ChildEnd(child.returncode, position, errors.read().decode(errors="replace"))


def _memory_file(name: str):
    """A file in memory (Linux memfd), so that a scan still runs with the disk full; elsewhere a
    temporary file."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.fdopen(os.memfd_create(name), "w+b")
    return tempfile.TemporaryFile("w+b")


def _raise_child_error(event: dict) -> None:
    """A child's {"error": line, "cut": bool}: raised here as the DatasetError it was there."""
    if "error" in event:
        raise (FileCutShort if event.get("cut") else DatasetError)(event["error"])


# How a read inside LMDB dies on a damaged page: outside the file (SIGBUS), outside the map
# (SIGSEGV), or one of LMDB's own assertions (SIGABRT). Any other signal came from outside
# (the OOM killer, a kill): no verdict on the database.
_READ_CRASHES = (signal.SIGBUS, signal.SIGSEGV, signal.SIGABRT)


def _crash_position(path, end: _ChildEnd, what: str) -> tuple[int, int]:
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


def _crash_reason(end: _ChildEnd) -> str:
    return (f"crashed the reader ({_signal_name(-end.returncode)}: LMDB met a damaged page of its own index "
            "on the way to it)")


def _emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def _child_main(argv: list[str]) -> int:
    """`python -m progan.data.integrity MODE ARGS... FD`, a scan in a child process (FD: a ScanPosition's
    file): `verify PATH FIRST_LEVEL`, `start PATH LEVELS SAMPLES`, `background PATH LEVELS FIRST,STEP`
    (BackgroundCheck's: one JSON line (failure, records, seconds, cpu_seconds); stops when its
    parent is gone). Prints JSON lines; a DatasetError is {"error": line, "cut": bool}."""
    mode, *args, fd = argv
    position = ScanPosition(int(fd))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it ends this child
    try:
        if mode == "verify":
            path, first = args
            _verify_scan(path, read_metadata(path), int(first), _emit, position)
        elif mode == "start":
            path, levels, samples = args
            _check_levels_scan(path, [int(r) for r in levels.split(",") if r], int(samples), position)
            _emit({"done": True})
        elif mode == "background":
            path, levels, share = args
            check = BackgroundCheck(path, [int(r) for r in levels.split(",") if r],
                                    tuple(int(n) for n in share.split(",")), process=False)
            check._parent_pid, check._position = os.getppid(), position
            with contextlib.suppress(AttributeError, OSError):  # Linux: run only on CPU time nothing else wants
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            check._run()
            _emit({"failure": check.failure, "records": check.records, "seconds": check.seconds,
                   "cpu_seconds": check.cpu_seconds})
        else:
            raise SystemExit(f"progan.data.integrity: unknown mode {mode!r}")
    except DatasetError as error:
        _emit({"error": str(error), "cut": isinstance(error, FileCutShort)})
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
