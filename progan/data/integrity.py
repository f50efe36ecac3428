"""Damage in a database, found before hours of training are lost.

Every record's crc32 is stored at build time (progan.data.writer, `crc32/{R}` tables). Three checks use
them: `verify` reads every record of every level and lists each bad one (`data_prep verify`);
`check_levels` is the trainer's cheap check at start: the key structure and count of each level
it will need, its checksum table, and a spread sample of records; `BackgroundCheck` reads every
record of the levels a run still needs, from the start of training, so damage in a level used
hours later stops the run minutes in. Reading during training checks each record's checksum too
(MultiResolutionDataset). Every read first checks that data.mdb is not shorter than the database
needs (progan.data.lmdbfile.MappedFile): a cut file is one line, never SIGBUS.

All three scans run in a child process (`python -m progan.data.integrity`, progan.data.scan_child):
a damaged page of LMDB's own B-tree can make LMDB read outside the file during a lookup, a SIGBUS
no process survives. The child writes where it is (ScanPosition) before each read, so its death
names the record. BackgroundCheck lives in progan.data.background_check; its child runs here too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import lmdb
import numpy as np

from progan.data.background_check import BackgroundCheck
from progan.data.environments import mapped_file, reading
from progan.data.format import LABELS_KEY, DatasetError, FileCutShort, image_key
from progan.data.reader import (damaged_record, dataset_aspect, label_table_problem, read_checksum_table, read_metadata,
                                read_record)
from progan.data.scan_child import ScanPosition, crash_position, crash_reason, emit, raise_child_error, run_scan_child
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
            raise_child_error(event)

    if not isolated:
        _verify_scan(path, metadata, 0, handle, ScanPosition())
        return report
    first = 0
    while not finished:
        told_before = report.records
        end = run_scan_child(["verify", os.fspath(path), str(first)], handle)
        if finished:
            break
        level, index = crash_position(path, end, "verify")
        read = (min(level, len(resolutions)) - first) * metadata["count"] + max(index, 0)
        handle({"records": max(0, read - (report.records - told_before))})  # read before the crash, not yet told
        if level >= len(resolutions):  # in the final count of the records
            report.stray = f"its records could not be counted ({crash_reason(end)})"
            break
        handle({"bad": [resolutions[level], index, f"{crash_reason(end)}; the rest of this level was not checked"]})
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
    end = run_scan_child(["start", os.fspath(path), ",".join(map(str, resolutions)), str(samples)], events.append)
    for event in events:
        raise_child_error(event)
    if end.returncode == 0 and {"done": True} in events:
        return
    level, index = crash_position(path, end, "the start check")
    resolution = resolutions[min(level, len(resolutions) - 1)]
    aspect = dataset_aspect(read_metadata(path))
    if index < 0:
        raise DatasetError(f"{path}: reading the checksum table of level {describe_level(aspect, resolution)} "
                           f"{crash_reason(end)}; run `python -m data_prep verify {path}` and rebuild the database")
    raise DatasetError(damaged_record(path, resolution, index, crash_reason(end), aspect))


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


# ----------------------------------------------------------------------------- the child's side

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
            _verify_scan(path, read_metadata(path), int(first), emit, position)
        elif mode == "start":
            path, levels, samples = args
            _check_levels_scan(path, [int(r) for r in levels.split(",") if r], int(samples), position)
            emit({"done": True})
        elif mode == "background":
            path, levels, share = args
            check = BackgroundCheck(path, [int(r) for r in levels.split(",") if r],
                                    tuple(int(n) for n in share.split(",")), process=False)
            check._parent_pid, check._position = os.getppid(), position
            with contextlib.suppress(AttributeError, OSError):  # Linux: run only on CPU time nothing else wants
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            check._run()
            emit({"failure": check.failure, "records": check.records, "seconds": check.seconds,
                   "cpu_seconds": check.cpu_seconds})
        else:
            raise SystemExit(f"progan.data.integrity: unknown mode {mode!r}")
    except DatasetError as error:
        emit({"error": str(error), "cut": isinstance(error, FileCutShort)})
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
