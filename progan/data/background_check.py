"""The check that runs beside training: every record of the levels a run will still read,
verified from its start, so damage in a level used hours later stops the run within minutes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from typing import Callable

from progan.data.environments import mapped_file, reading
from progan.data.format import DatasetError, FileCutShort
from progan.data.reader import damaged_record, dataset_aspect, read_checksum_table, read_metadata, read_record
from progan.data.scan_child import ScanPosition, crash_position, crash_reason, run_scan_child
from progan.runtime.errors import first_line
from progan.shapes import describe_level


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
        end = run_scan_child(["background", os.fspath(self.path), ",".join(map(str, self.resolutions)),
                               f"{self.share[0]},{self.share[1]}"], events.append,
                              new_session=True,  # a Ctrl-C at the terminal is the trainer's to handle, not its
                              on_start=self._child_started)
        result = next((event for event in events if "failure" in event), None)
        if self._stopping.is_set():
            return
        if result is None:  # it died: of SIGBUS on a file cut under it or in LMDB, or of something else
            try:
                level, index = crash_position(self.path, end, "the background check")
                resolution = self.resolutions[min(level, len(self.resolutions) - 1)]
                aspect = dataset_aspect(read_metadata(self.path))
                self.failure = (damaged_record(self.path, resolution, index, crash_reason(end), aspect) if index >= 0
                                else f"{self.path}: reading the checksum table of level "
                                     f"{describe_level(aspect, resolution)} {crash_reason(end)}")
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
