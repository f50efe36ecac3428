"""Damage in a database, found before hours of training are lost.

Every record's crc32 is stored at build time (progan.data, `crc32/{R}` tables). Three checks use
them: `verify` reads every record of every level and lists each bad one (`data_prep verify`);
`check_levels` is the trainer's cheap check at start: the key structure and count of each level
it will need, its checksum table, and a spread sample of records; `BackgroundCheck` reads every
record of the levels a run still needs, in a thread from the start of training, so damage in a
level used hours later stops the run minutes in. Reading during training checks each record's
checksum too (MultiResolutionDataset). Every read first checks that data.mdb is not shorter than
the database needs (progan.data.MappedFile): a cut file is one line, never SIGBUS.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import lmdb
import numpy as np

from progan.aspect import DEFAULT_ASPECT, describe_level
from progan.cli import first_line
from progan.data import (
    LABELS_KEY,
    DatasetError,
    FileCutShort,
    _reading,
    check_data_file,
    damaged_record,
    dataset_aspect,
    image_key,
    label_table_problem,
    read_checksum_table,
    mapped_file,
    read_metadata,
    read_record,
)

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


def verify(path, on_record: Callable[[], None] | None = None,
           on_bad: Callable[[BadRecord], None] | None = None) -> VerifyReport:
    """Read every record at every level: present, readable, matching its checksum, decoding to
    the right shape. Bad records are collected (and passed to `on_bad` as found), never raised;
    DatasetError only when the database cannot be opened or its metadata is unusable."""
    metadata = read_metadata(path)
    count, encoding, resolutions = metadata["count"], metadata["encoding"], metadata["resolutions"]
    checksums, aspect = metadata.get("checksums"), dataset_aspect(metadata)
    report = VerifyReport(records=0, checksums=checksums is not None)

    def found(bad: BadRecord) -> None:
        report.bad.append(bad)
        if on_bad is not None:
            on_bad(bad)

    with _reading(path) as env:  # a damaged page outside any record: DatasetError
        mapped = mapped_file(path)  # the file's size, checked before each read: FileCutShort
        txn = env.begin(buffers=True)
        try:
            for resolution in resolutions:
                try:
                    mapped.check()
                    table = read_checksum_table(txn, path, checksums, resolution, count)
                except FileCutShort:
                    raise
                except DatasetError:
                    found(BadRecord(resolution, None, "checksum table missing or damaged; "
                                                      "records checked by decoding only", aspect))
                    table, txn = None, _renew(env, txn)
                for index in range(count):
                    try:
                        read_record(txn, resolution, index, encoding, table, aspect, mapped)
                    except FileCutShort:
                        raise
                    except ValueError as error:
                        found(BadRecord(resolution, index, str(error), aspect))
                        txn = _renew(env, txn)  # LMDB invalidates a transaction that met a damaged page
                    report.records += 1
                    if on_record is not None:
                        on_record()
            expected = 1 + count * len(resolutions) + (len(resolutions) if checksums is not None else 0)
            if "classes" in metadata:  # the label table: checksum, one entry per image, each < K
                expected += 1
                mapped.check()
                try:
                    data = txn.get(LABELS_KEY)
                    report.labels_problem = label_table_problem(None if data is None else bytes(data), metadata)
                except lmdb.Error as error:
                    report.labels_problem = f"label table {LABELS_KEY.decode()} cannot be read ({first_line(error)})"
                    txn = _renew(env, txn)
            mapped.check()
            entries = txn.stat()["entries"]
        finally:
            txn.abort()
    if entries != expected:
        report.stray = f"holds {entries} records, expected {expected}"
    return report


def _renew(env, txn):
    txn.abort()
    return env.begin(buffers=True)


def check_levels(path, resolutions, samples: int = SAMPLE_RECORDS) -> None:
    """The trainer's check at start, cheap next to a training phase: for each level in
    `resolutions`, every key present (a lookup each: the pages that hold the structure), the
    checksum table intact, and `samples` records spread over the level
    read, checksummed and decoded. DatasetError (one line, naming the record and `verify`)."""
    metadata = read_metadata(path)
    count, encoding, checksums = metadata["count"], metadata["encoding"], metadata.get("checksums")
    aspect = dataset_aspect(metadata)
    with _reading(path) as env, env.begin(buffers=True) as txn:
        mapped = mapped_file(path)
        for resolution in resolutions:
            _check_keys(txn, path, resolution, count, aspect, mapped)
            mapped.check()
            table = read_checksum_table(txn, path, checksums, resolution, count)
            for index in np.unique(np.linspace(0, count - 1, min(samples, count)).round().astype(int)):
                try:
                    read_record(txn, resolution, int(index), encoding, table, aspect, mapped)
                except FileCutShort:
                    raise
                except ValueError as error:
                    raise DatasetError(damaged_record(path, resolution, int(index), str(error), aspect)) from None


def _check_keys(txn, path, resolution: int, count: int, aspect: str, mapped) -> None:
    """Every key of the level present: one B-tree lookup each, which reads the branch and leaf
    pages but not the pixels (LMDB hands back a pointer into the map). Lookups, not a cursor
    walk: LMDB's cursor asserts (aborts the process) on some damaged pages a lookup reports."""
    for index in range(count):
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
    (`python -m progan.integrity`, nice +10) watched by a thread that only waits on its pipe:
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
        target = self._watch if process else self._run
        self._thread = threading.Thread(target=target, name="progan-background-check", daemon=True)

    def start(self) -> "BackgroundCheck":
        if self.process:
            package_root = str(Path(__file__).resolve().parents[1])
            pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            self._child = subprocess.Popen(
                [sys.executable, "-m", "progan.integrity", os.fspath(self.path),
                 ",".join(map(str, self.resolutions)), f"{self.share[0]},{self.share[1]}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONPATH": pythonpath},
                start_new_session=True)  # a Ctrl-C at the terminal is the trainer's to handle, not its
        self._thread.start()
        return self

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
        out, err = self._child.communicate()
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = None
        if self._stopping.is_set():
            return
        if result is None:  # it died: of SIGBUS on a file cut under it, or of something else
            try:
                check_data_file(self.path)
                code = self._child.returncode
                why = f"signal {-code}" if code < 0 else f"exit {code}: {err.strip().splitlines()[-1] if err.strip() else ''}"
                self.failure = f"{self.path}: the background check of the database died ({why.rstrip(': ')})"
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
        with _reading(self.path) as env:
            mapped = mapped_file(self.path)
            txn = env.begin(buffers=True)
            try:
                tables = []
                for resolution in self.resolutions:
                    mapped.check()
                    tables.append(read_checksum_table(txn, self.path, checksums, resolution, count))
                prefetch = _Prefetch(mapped)
                for index in range(self.share[0], count, self.share[1]):
                    if self._stopped():
                        return
                    prefetch.ahead_of(index / count)
                    for resolution, table in zip(self.resolutions, tables):
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


def _child_main(argv: list[str]) -> int:
    """`python -m progan.integrity PATH LEVELS FIRST,STEP`: BackgroundCheck's child process. Prints
    one JSON line (failure, records, seconds, cpu_seconds); stops when its parent is gone."""
    path, levels, share = argv
    check = BackgroundCheck(path, [int(r) for r in levels.split(",") if r],
                            tuple(int(n) for n in share.split(",")), process=False)
    check._parent_pid = os.getppid()
    with contextlib.suppress(AttributeError, OSError):  # Linux: run only on CPU time nothing else wants
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    check._run()
    print(json.dumps({"failure": check.failure, "records": check.records, "seconds": check.seconds,
                      "cpu_seconds": check.cpu_seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
