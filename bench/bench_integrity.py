"""What checksums cost: reading with and without them, the trainer's start check, verify, and
the background check during training.

    .venv/bin/python bench/bench_integrity.py --images 500 --size 256
    .venv/bin/python bench/bench_integrity.py --background --images 30000 --size 256 --keep

Writes a raw database of random pixels at levels 4..SIZE through progan's own writer (so it has
checksum tables), then prints:
  - decode path (`get_batch`, memory budget 0, main process), batches/s of 32 random images at
    a few resolutions, with each record's crc32 checked (as training reads) and unchecked;
  - `check_levels` (every key looked up, checksum tables, 16 sampled records per level) and
    `verify` (every record read, checksummed, decoded) over all levels, in microseconds per record.
With --background, instead:
  - the background check (progan.data.integrity.BackgroundCheck) over every level, from a cold page
    cache (the file's pages dropped with posix_fadvise) and a warm one: seconds, MB/s, and the
    time to find a damaged record, worst case (the last record of the top level);
  - the cost on the step: the trainer's full step (small preset, stable phase at --step-res)
    timed without the check and with it running, alternated A B A B.
Random pixels stand in for photos: a raw record's check reads the same bytes either way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progan.data.writer import DatasetWriter  # noqa: E402
from progan.data.format import ImageRecord, resolutions_between  # noqa: E402
from progan.data.reader import MultiResolutionDataset  # noqa: E402
from progan.data.background_check import BackgroundCheck  # noqa: E402
from progan.data.integrity import check_levels, verify  # noqa: E402


def write_database(path: Path, images: int, resolutions: list[int]) -> None:
    from progan.data.reader import read_metadata

    try:
        metadata = read_metadata(path)
        if metadata["count"] == images and metadata["resolutions"] == resolutions:
            return  # kept from an earlier run (--keep)
    except Exception:  # noqa: BLE001 - absent or other: write it
        pass
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    chunk = 100
    with DatasetWriter(path) as writer:
        writer.start({"resolutions": resolutions, "encoding": "raw"})
        for first in range(0, images, chunk):
            count = min(chunk, images - first)
            records = [ImageRecord(f"{first + i}", [rng.bytes(3 * r * r) for r in resolutions], "00" * 32)
                       for i in range(count)]
            writer.commit_chunk(first + count, records, [])
        writer.finish()


def batches_per_second(dataset: MultiResolutionDataset, batch: int, seconds: float = 1.0) -> float:
    rng = np.random.default_rng(0)
    dataset.get_batch(np.arange(min(batch, len(dataset))))  # opens the environment, reads the table
    count, start = 0, time.perf_counter()
    while count < 5 or time.perf_counter() - start < seconds:
        dataset.get_batch(rng.integers(0, len(dataset), batch))
        count += 1
    return count / (time.perf_counter() - start)


def drop_from_page_cache(db: Path) -> None:
    """Evict the database's pages from the page cache (this file only), so reads come from disk."""
    with open(db / "data.mdb", "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def background_table(db: Path, images: int, resolutions: list[int], process: bool) -> None:
    size = (db / "data.mdb").stat().st_size
    records = images * len(resolutions)
    where = "a child process" if process else "a thread of this process"
    print(f"background check over all {records:,} records ({size / 2**30:.2f} GiB), in {where}, nice +10:")
    print("| page cache | seconds | MB/s | records/s | CPU seconds of the check | worst-case time to find a damaged record |")
    print("|---|---:|---:|---:|---:|---:|")
    for cache in ("cold (dropped)", "warm"):
        if cache.startswith("cold"):
            drop_from_page_cache(db)
        check = BackgroundCheck(db, resolutions, process=process).start()
        check.join()
        assert check.failure is None and check.records == records, check.failure
        print(f"| {cache} | {check.seconds:.1f} | {size / check.seconds / 1e6:,.0f} | "
              f"{records / check.seconds:,.0f} | {check.cpu_seconds:.1f} | {check.seconds:.1f} s |", flush=True)


def step_overhead_table(db: Path, work: Path, resolutions: list[int], step_res: int, batch: int, steps: int,
                        rounds: int, process: bool) -> None:
    import torch
    from accelerate import Accelerator

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import stable_config

    import progan.train.loop as training

    config = stable_config(db, work / "run", "small", step_res, batch, workers=0)
    torch.manual_seed(0)
    trainer = training.Trainer(config, Accelerator(cpu=True), log=lambda *a: None)
    for _ in range(3):
        trainer.train_step([0.0, 0.0])

    def rate() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step([0.0, 0.0])
        return steps * batch / (time.perf_counter() - start)

    print(f"\ntraining step (small preset, {step_res}x{step_res} stable, batch {batch}, in-memory level, "
          f"{steps} steps a sample), images/s, check in {'a child process' if process else 'a thread'}:")
    print("| round | without the check | with the check running | change |")
    print("|---|---:|---:|---:|")
    pairs = []
    for round_ in range(rounds):
        alone = rate()
        drop_from_page_cache(db)  # the check reads from disk, as it does at the start of a real run
        check = BackgroundCheck(db, [r for r in resolutions if r >= step_res], process=process).start()
        running = rate()
        note = "" if not check.done else " (the check ended first)"
        check.stop()
        pairs.append((alone, running))
        print(f"| {round_ + 1} | {alone:.1f} | {running:.1f}{note} | {(running / alone - 1) * 100:+.1f}% |", flush=True)
    alone, running = (float(np.median([pair[i] for pair in pairs])) for i in (0, 1))
    print(f"| median | {alone:.1f} | {running:.1f} | {(running / alone - 1) * 100:+.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--background", action="store_true",
                        help="time the background check and its cost on the training step instead")
    parser.add_argument("--step-res", type=int, default=32, help="--background: resolution of the timed step")
    parser.add_argument("--steps", type=int, default=20, help="--background: steps per timed sample")
    parser.add_argument("--rounds", type=int, default=2, help="--background: A B rounds of the step timing (0: none)")
    parser.add_argument("--in-thread", action="store_true",
                        help="--background: run the check in a thread of this process (the default is a child process)")
    parser.add_argument("--keep", action="store_true", help="keep the database for the next run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "progan_bench_integrity")
    args = parser.parse_args()

    resolutions = resolutions_between(4, args.size)
    db = args.work / f"random-{args.images}-{args.size}.lmdb"
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_database(db, args.images, resolutions)
    print(f"{args.images} images of random pixels, raw, levels 4..{args.size} "
          f"(ready in {time.perf_counter() - start:.0f} s)\n")
    if args.background:
        background_table(db, args.images, resolutions, not args.in_thread)
        if args.rounds > 0:
            step_overhead_table(db, args.work, resolutions, args.step_res, args.batch, args.steps, args.rounds,
                                not args.in_thread)
    else:
        integrity_tables(db, args.images, resolutions, args.batch)
    if not args.keep:
        shutil.rmtree(db, ignore_errors=True)


def integrity_tables(db: Path, images: int, resolutions: list[int], batch_size: int) -> None:
    print(f"decode path, batches/s of {batch_size} random images, main process:")
    print("| res | crc32 checked | unchecked | checked / unchecked |")
    print("|---:|---:|---:|---:|")
    for res in [r for r in (8, 64, 256, 1024) if r <= resolutions[-1]]:
        rates = []
        for checked in (True, False):
            dataset = MultiResolutionDataset(db, res, memory_budget_bytes=0)
            if not checked:
                dataset._checksum_info = None  # read as a database built before checksums
            rates.append(batches_per_second(dataset, batch_size))
            dataset.close()
        print(f"| {res} | {rates[0]:,.1f} | {rates[1]:,.1f} | {rates[0] / rates[1]:.2f} |")

    records = images * len(resolutions)
    print(f"\n| check over all {records} records | where | seconds | us per record |")
    print("|---|---|---:|---:|")
    for isolated in (True, False):  # the default (a child process: survives a crash in LMDB), in-process
        where = "child process (default)" if isolated else "in-process"
        start = time.perf_counter()
        check_levels(db, resolutions, isolated=isolated)
        check = time.perf_counter() - start
        start = time.perf_counter()
        report = verify(db, isolated=isolated)
        full = time.perf_counter() - start
        assert not report.bad and report.records == records
        print(f"| trainer's start check (`check_levels`) | {where} | {check:.3f} | {check / records * 1e6:.2f} |")
        print(f"| `verify` (every record read and decoded) | {where} | {full:.3f} | {full / records * 1e6:.2f} |")

if __name__ == "__main__":
    main()
