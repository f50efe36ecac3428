"""`data_prep build`: a folder of images -> one multi-resolution LMDB, resumably.

Worker processes decode, crop, resize, build the box pyramid and encode each file; the main
process writes their results in source order, committing one LMDB transaction per chunk of files
together with the progress record. A rerun of the same command after Ctrl-C or kill -9 carries on
after the last committed chunk and ends with the same database an uninterrupted build makes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import lmdb
import PIL

from data_prep.decode import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    RESIZE_FILTER,
    DecodeOptions,
    init_worker,
    process_file,
)
from data_prep.labels import LabelError, Labels, resolve_labels, skip_reason
from data_prep.sources import IMAGE_EXTENSIONS, find_image_files, listing_digest
from data_prep.transfer import TransferRing
from progan.data.format import (
    DEFAULT_ENCODING,
    ENCODINGS,
    DatabaseWriteFailed,
    DatasetError,
    ImageRecord,
    resolutions_between,
)
from progan.data.writer import DatasetWriter, read_build_records
from progan.runtime.diskspace import format_bytes, shortfall
from progan.runtime.progress import Progress
from progan.runtime.signals import raise_if_stopped, stop_signals_held
from progan.runtime.workers import stop_pool
from progan.shapes import DEFAULT_ASPECT, parse_aspect

CHUNK_BYTES = 64 << 20  # ~raw bytes of images per transaction: bounds memory and redo work
MAX_CHUNK_FILES = 1024
# Hidden test hooks: chunk size, and hanging inside the write transaction that follows the
# Nth commit of a run (so a test can kill the build mid-transaction).
CHUNK_FILES_ENV = "PROGAN_BUILD_CHUNK_FILES"
STALL_ENV = "PROGAN_BUILD_STALL_AFTER_COMMITS"
STALL_MESSAGE = "build: stalled inside a write transaction (test hook)"


class BuildError(Exception):
    """A build that cannot go on; the message is one line saying what to do."""


@dataclass
class BuildConfig:
    source: Path
    out: Path
    max_res: int
    min_res: int = 4
    workers: int = 0  # 0: all cores
    crop: str = "center"
    upscale: bool = False
    limit: int | None = None
    encoding: str = DEFAULT_ENCODING
    max_pixels: int = DEFAULT_MAX_PIXELS
    aspect: str = DEFAULT_ASPECT  # width:height, progan.shapes.ASPECTS
    labels: str | None = None  # None: unlabelled; "folders" or a JSON file (data_prep.labels)


@dataclass
class BuildReport:
    metadata: dict
    already_complete: bool = False
    seconds: float = 0.0
    unmatched_labels: list[str] = dataclasses.field(default_factory=list)  # label-file entries naming no file


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build(config: BuildConfig, log: TextIO | None = None) -> BuildReport:
    """Build (or resume, or confirm complete) config.out; raises BuildError with one line.

    Starts worker processes: call it under `if __name__ == "__main__":` in scripts.
    """
    log = log if log is not None else sys.stderr
    started = time.perf_counter()
    resolutions = _check_config(config)
    files, unreadable = _scan(config.source, log)
    labels = _resolve_labels(config, files, log)
    plan = _make_plan(config, resolutions, files, unreadable, labels)
    # Read-only first: a finished dataset, or a build with other settings, needs no workers.
    try:
        finished = _check_recorded(config.out, plan, *read_build_records(config.out))
    except DatasetError as error:
        raise BuildError(str(error)) from None
    unmatched = labels.unmatched if labels is not None else []
    if finished is not None:
        return BuildReport(finished, already_complete=True, seconds=time.perf_counter() - started,
                           unmatched_labels=unmatched)
    workers = config.workers or default_workers()
    in_flight = 2 * workers + 2  # files queued or being decoded: enough to keep every worker busy
    # Workers fork before the database is opened, so they hold no LMDB handle or lock.
    with _worker_pool(workers, in_flight, config.max_pixels, _pyramid_bytes(resolutions)) as (pool, ring), \
            _open_writer(config.out) as writer:
        report = _build_with(writer, config, plan, files, labels, pool, ring, in_flight, log)
    report.seconds, report.unmatched_labels = time.perf_counter() - started, unmatched
    return report


@contextlib.contextmanager
def _open_writer(out: Path):
    """The database writer, with LMDB failures turned into one-line BuildErrors."""
    try:
        writer = DatasetWriter(out)
    except (DatasetError, lmdb.Error) as error:
        raise BuildError(str(error)) from None
    except OSError as error:
        raise BuildError(f"{out}: cannot create the database ({error.strerror})") from None
    try:
        yield writer
    except lmdb.Error as error:  # disk full, I/O error: committed chunks stay valid
        raise DatabaseWriteFailed(
            f"{out}: database write failed ({error}); fix that and rerun the same command to resume"
        ) from None
    finally:
        writer.close()


def _check_recorded(out: Path, plan: dict, finished: dict | None, state: dict | None) -> dict | None:
    """The finished metadata if OUT already holds this build; BuildError if it holds a finished
    or unfinished build with other settings; None if the build is new or resumable."""
    if finished is not None:
        _check_same_plan(out, finished["build"], plan, finished=True)
    elif state is not None:
        _check_same_plan(out, state["plan"], plan, finished=False)
    return finished


def _build_with(
    writer: DatasetWriter, config: BuildConfig, plan: dict, files, labels: Labels | None, pool, ring,
    in_flight: int, log
) -> BuildReport:
    # Checked again under the writer's lock: another build may have got there since.
    finished = _check_recorded(config.out, plan, writer.finished_metadata, writer.state)
    if finished is not None:
        return BuildReport(finished, already_complete=True)
    if writer.state is None:
        writer.start(plan)
    resumed_at = writer.state["next_file"]
    if resumed_at:
        _say(log, f"resuming {config.out}: {resumed_at} of {len(files)} files already done "
                  f"({writer.state['next_index']} images)")
    _warn_if_short_of_space(config, writer, len(files) - resumed_at, log)
    _encode_remaining(config, files, labels, writer, pool, ring, in_flight, log)
    if writer.state["next_index"] == 0:
        skips = [skip for chunk in writer.chunk_records() for skip in chunk["skipped"]]
        writer.abandon()
        raise BuildError(f"{config.source}: no usable images; all {len(files)} files were skipped "
                         f"({skip_summary(skips)})")
    return BuildReport(writer.finish())


def _warn_if_short_of_space(config: BuildConfig, writer: DatasetWriter, files_left: int, log) -> None:
    """Say at the start, not hours in, when the images still to write may not fit the disk.
    Raw records are the bound (compressed ones are smaller); each chunk is checked again."""
    images = files_left if config.limit is None else min(files_left, config.limit - writer.state["next_index"])
    raw_sizes = [3 * res * res for res in writer.state["plan"]["resolutions"]]
    needed = writer.disk_bytes(raw_sizes, times=images)
    free = shortfall(config.out, needed)
    if free is not None:
        bound = "about" if config.encoding == "raw" else f"up to (less with {config.encoding})"
        _say(log, f"warning: {config.out}: the {images} images still to write need {bound} "
                  f"{format_bytes(needed)}, {format_bytes(free)} free there; the build stops when the "
                  "disk is full and a rerun resumes it")


def _check_config(config: BuildConfig) -> list[int]:
    try:
        resolutions = resolutions_between(config.min_res, config.max_res)
    except ValueError as error:
        raise BuildError(str(error)) from None
    if config.encoding not in ENCODINGS:
        raise BuildError(f"unknown encoding {config.encoding!r}; choose from {', '.join(ENCODINGS)}")
    try:
        config.aspect = parse_aspect(config.aspect)
    except ValueError as error:
        raise BuildError(f"--aspect {error}") from None
    if config.crop not in ("center", "none"):
        raise BuildError(f"unknown crop {config.crop!r}; choose center or none")
    if config.limit is not None and config.limit < 1:
        raise BuildError(f"--limit must be at least 1, got {config.limit}")
    if not config.source.exists():
        raise BuildError(f"{config.source}: no such folder (SOURCE)")
    if not config.source.is_dir():
        raise BuildError(f"{config.source}: SOURCE must be a folder of images")
    return resolutions


def _scan(source: Path, log: TextIO):
    files, unreadable = find_image_files(source)
    for line in unreadable:
        _say(log, f"cannot list folder {line}")
    if not files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise BuildError(f"{source}: no image files found (looked for {extensions}, any case)")
    return files, unreadable


def _resolve_labels(config: BuildConfig, files, log: TextIO) -> Labels | None:
    """Each file's class (None: an unlabelled build); one line per label-file entry naming no
    file under SOURCE. BuildError (one line) for an unusable --labels, before anything is written."""
    if config.labels is None:
        return None
    try:
        labels = resolve_labels(config.labels, [source.path for source in files])
    except LabelError as error:
        raise BuildError(str(error)) from None
    for name in labels.unmatched:
        _say(log, f"label file entry {name}: no such image under {config.source}; ignored")
    return labels


def _make_plan(config: BuildConfig, resolutions: list[int], files, unreadable, labels: Labels | None = None) -> dict:
    """Everything that decides the database contents; a resume must match it exactly."""
    plan = {
        "source": str(config.source.resolve()),
        "resolutions": resolutions,
        "encoding": config.encoding,
        "options": {
            "max_res": config.max_res,
            "min_res": config.min_res,
            "crop": config.crop,
            "upscale": config.upscale,
            "limit": config.limit,
            "max_pixels": config.max_pixels,
        },
        "resize_filter": RESIZE_FILTER,
        "alpha_background": list(ALPHA_BACKGROUND),
        "pillow": PIL.__version__,
        "source_files": len(files),
        "source_listing_sha256": listing_digest(files),
        "unreadable_folders": unreadable,
    }
    if config.aspect != DEFAULT_ASPECT:  # recorded only then: square builds made before --aspect still match
        plan["options"]["aspect"] = config.aspect
    if labels is not None:  # recorded only then: an unlabelled build is what it was before labels
        plan["labels"] = labels.plan
    return plan


def _check_same_plan(out: Path, recorded: dict, plan: dict, finished: bool) -> None:
    differences = _plan_differences(recorded, plan)
    if not differences:
        return
    if finished:
        what, remedy = "a finished dataset", ("to build it with the new settings delete it or choose another OUT; "
                                              "`python -m data_prep info` shows the recorded ones")
    else:
        what, remedy = "an unfinished build", "rerun with the recorded settings, or delete it or choose another OUT"
    raise BuildError(f"{out}: holds {what} with different settings ({'; '.join(differences)}); {remedy}")


def _plan_differences(recorded: dict, plan: dict) -> list[str]:
    flat_recorded, flat_plan = _flatten(recorded), _flatten(plan)
    differences = []
    for key in sorted(set(flat_recorded) | set(flat_plan)):
        before, now = flat_recorded.get(key), flat_plan.get(key)
        if before == now or key == "resolutions":  # resolutions follow from min_res and max_res
            continue
        if key in ("source_listing_sha256", "source_files"):
            if "the files under SOURCE changed" not in differences:
                differences.append("the files under SOURCE changed")
        elif key.startswith("labels."):  # the classes follow from the rest
            line = f"labels: {_describe_labels(recorded)} recorded, {_describe_labels(plan)} now"
            if key != "labels.classes" and line not in differences:
                differences.append(line)
        elif key == "options.aspect":  # recorded only when not square: no value means 1:1, as `info` says
            differences.append(f"aspect: {before or DEFAULT_ASPECT} recorded, {now or DEFAULT_ASPECT} now")
        else:
            differences.append(f"{key.split('.')[-1]}: {before} recorded, {now} now")
    return differences


def _describe_labels(plan: dict) -> str:
    labels = plan.get("labels")
    if labels is None:
        return "none"
    if labels["from"] == "folders":
        return "folders"
    return f"a label file (sha256 {labels['file_sha256'][:12]})"


def _flatten(plan: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in plan.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _encode_remaining(
    config: BuildConfig, files, labels: Labels | None, writer: DatasetWriter, pool, ring, in_flight: int,
    log: TextIO
) -> None:
    """Process the files after the last committed chunk."""
    limit = config.limit
    next_file, images_done = writer.state["next_file"], writer.state["next_index"]
    if next_file >= len(files) or (limit is not None and images_done >= limit):
        return
    options = DecodeOptions(
        config.max_res, config.min_res, config.crop, config.upscale, config.max_pixels, config.encoding,
        config.aspect,
    )
    chunk_files = _chunk_files(writer.state["plan"]["resolutions"])
    todo = len(files) - next_file
    total = todo if limit is None else min(todo, limit - images_done)
    no_label = skip_reason(config.labels) if labels is not None else None
    tasks = (  # a file without a label is not decoded: (position, None, reason)
        (position, None, no_label) if labels is not None and labels.of(files[position].path) is None
        else (position, os.path.join(config.source, files[position].path), options)
        for position in range(next_file, len(files))
    )
    images, skipped = [], []
    with Progress(total, "build", unit="img", stream=log) as progress, \
            _BackgroundCommitter(writer, _env_int(STALL_ENV), progress.write) as committer:
        results = _in_order(pool, ring, in_flight, tasks, files)
        for position, levels, reason, digest in results:
            source = files[position].path
            if reason is None:
                images.append(ImageRecord(source, levels, digest, labels.of(source) if labels else None))
            else:
                skipped.append((source, reason))
                progress.write(f"skipped {source}: {reason}")
            progress.update()
            end = position + 1
            limit_hit = limit is not None and images_done + len(images) >= limit
            if limit_hit or end == len(files) or end - next_file >= chunk_files:
                committer.commit(end, images, skipped)
                next_file, images_done = end, images_done + len(images)
                images, skipped = [], []
            if limit_hit:
                break


class _BackgroundCommitter:
    """Commits chunks on a writer thread, so decoding goes on while LMDB writes and fsyncs.

    At most one chunk waits while another is being written (back-pressure bounds memory). The
    thread owns every write transaction; an error there is re-raised in the caller.
    """

    def __init__(self, writer: DatasetWriter, stall_after: int | None, say: Callable[[str], None]) -> None:
        self.writer, self.stall_after, self.say = writer, stall_after, say
        self.queue = queue.Queue(maxsize=1)
        self.error = None
        self.commits = 0
        self.thread = threading.Thread(target=self._run, name="lmdb-writer", daemon=True)

    def __enter__(self) -> "_BackgroundCommitter":
        self.thread.start()
        return self

    def commit(self, end_file: int, images: list, skipped: list) -> None:
        self._raise_error()
        while self.thread.is_alive():
            try:
                self.queue.put((end_file, images, skipped), timeout=0.5)
                return
            except queue.Full:
                pass
        self._raise_error()

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:  # drop what is not written yet; the current commit completes
            with contextlib.suppress(queue.Empty):
                self.queue.get_nowait()
        self.queue.put(None)
        self.thread.join()
        if exc_type is None:
            self._raise_error()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            stalling = self.stall_after is not None and self.commits >= self.stall_after
            stall = _stall_forever(self.say) if stalling else None
            try:
                self.writer.commit_chunk(*item, before_commit=stall)
                self.commits += 1
            except BaseException as error:  # handed to the main thread
                self.error = error

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _in_order(pool: ProcessPoolExecutor, ring: TransferRing | None, in_flight: int, tasks, files):
    """(position, levels, skip reason, digest) of each task, in task order, with up to
    `in_flight` tasks submitted at a time (the ring, if any, has that many slots)."""
    pending = collections.deque()

    def next_result():
        raise_if_stopped()  # a Ctrl-C swallowed in a fork hook ("Exception ignored in ...") stops here
        position, slot, future = pending.popleft()
        try:
            position, levels, lengths, reason, digest = future.result()
        except BrokenProcessPool:
            raise BuildError(
                f"a worker process died while decoding files near {files[position].path} "
                "(out of memory? try fewer --workers or a lower --max-pixels); "
                "rerun the same command to resume"
            ) from None
        if slot is not None:
            if lengths is not None:
                levels = ring.load(slot, lengths)
            ring.release(slot)
        return position, levels, reason, digest

    try:
        for task in tasks:
            if task[1] is None:  # skipped without decoding; task[2] is the reason
                future = Future()
                future.set_result((task[0], None, None, task[2], None))
                pending.append((task[0], None, future))
            else:
                slot = ring.acquire() if ring is not None else None
                pending.append((task[0], slot, pool.submit(process_file, *task, slot)))
            if len(pending) >= in_flight:
                yield next_result()
        while pending:
            yield next_result()
    finally:
        for _, _, future in pending:
            future.cancel()


@contextlib.contextmanager
def _worker_pool(workers: int, in_flight: int, max_pixels: int, slot_bytes: int):
    """A started process pool and, where workers fork (Linux), a TransferRing they share with
    a slot for each of the `in_flight` tasks.

    Fork is used only on Linux, before any thread or database handle exists in this process;
    elsewhere workers are spawned and results come back through pipes.
    """
    if sys.platform.startswith("linux"):
        ring = TransferRing(in_flight, slot_bytes)
        context = multiprocessing.get_context("fork")
    else:
        ring, context = None, multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(max_pixels, ring))
    try:
        # The first task forks every worker. A signal raised inside fork's hooks is printed as
        # "Exception ignored" and lost (1 in 200 Ctrl-Cs): held, it is answered right after.
        with stop_signals_held():
            started = pool.submit(int)
        started.result()
        yield pool, ring
    except BaseException:
        stop_pool(pool)  # don't wait for in-flight work on Ctrl-C or errors
        raise
    else:
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if ring is not None:
            ring.close()


def _pyramid_bytes(resolutions: list[int]) -> int:
    return sum(3 * res * res for res in resolutions)


def _chunk_files(resolutions: list[int]) -> int:
    override = _env_int(CHUNK_FILES_ENV)
    if override:
        return override
    return max(1, min(MAX_CHUNK_FILES, CHUNK_BYTES // _pyramid_bytes(resolutions)))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _stall_forever(say: Callable[[str], None]):
    def stall():
        say(STALL_MESSAGE)
        while True:
            time.sleep(3600)

    return stall


def _say(log: TextIO, line: str) -> None:
    """One line to the log, outside any progress bar (during one: Progress.write)."""
    log.write(line + "\n")
    log.flush()


def skip_summary(skips: list[dict]) -> str:
    """e.g. "3 too small, 1 empty file" for a build's skip records (metadata["skipped"])."""
    counts = collections.Counter(skip["reason"].split(":")[0] for skip in skips)
    return ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
