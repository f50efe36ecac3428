"""What checksums cost: reading with and without them, the trainer's start check, verify.

    .venv/bin/python bench/bench_integrity.py --images 500 --size 256

Writes a raw database of random pixels at levels 4..SIZE through progan's own writer (so it has
checksum tables), then prints:
  - decode path (`get_batch`, memory budget 0, main process), batches/s of 32 random images at
    a few resolutions, with each record's crc32 checked (as training reads) and unchecked;
  - `check_levels` (every key looked up, checksum tables, 16 sampled records per level) and
    `verify` (every record read, checksummed, decoded) over all levels, in microseconds per record.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progan.data import DatasetWriter, ImageRecord, MultiResolutionDataset, resolutions_between  # noqa: E402
from progan.integrity import check_levels, verify  # noqa: E402


def write_database(path: Path, images: int, resolutions: list[int]) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "progan_bench_integrity")
    args = parser.parse_args()

    resolutions = resolutions_between(4, args.size)
    db = args.work / "random.lmdb"
    args.work.mkdir(parents=True, exist_ok=True)
    write_database(db, args.images, resolutions)
    print(f"{args.images} images of random pixels, raw, levels 4..{args.size}\n")
    print(f"decode path, batches/s of {args.batch} random images, main process:")
    print("| res | crc32 checked | unchecked | checked / unchecked |")
    print("|---:|---:|---:|---:|")
    for res in [r for r in (8, 64, 256, 1024) if r <= args.size]:
        rates = []
        for checked in (True, False):
            dataset = MultiResolutionDataset(db, res, memory_budget_bytes=0)
            if not checked:
                dataset._checksum_info = None  # read as a database built before checksums
            rates.append(batches_per_second(dataset, args.batch))
        print(f"| {res} | {rates[0]:,.1f} | {rates[1]:,.1f} | {rates[0] / rates[1]:.2f} |")

    records = args.images * len(resolutions)
    start = time.perf_counter()
    check_levels(db, resolutions)
    check = time.perf_counter() - start
    start = time.perf_counter()
    report = verify(db)
    full = time.perf_counter() - start
    assert not report.bad
    print(f"\n| check over all {records} records | seconds | us per record |")
    print("|---|---:|---:|")
    print(f"| trainer's start check (`check_levels`) | {check:.3f} | {check / records * 1e6:.2f} |")
    print(f"| `verify` (every record read and decoded) | {full:.3f} | {full / records * 1e6:.2f} |")
    shutil.rmtree(db, ignore_errors=True)


if __name__ == "__main__":
    main()
