"""Dataset build and read throughput; prints markdown tables for bench/RESULTS.md.

    .venv/bin/python bench/bench_data.py --images 300 --size 1024 --workers 2
    # the same with the databases on tmpfs, to leave the disk out of the build rows:
    .venv/bin/python bench/bench_data.py --encodings raw --skip-read --db-dir /dev/shm

Build: `data_prep build` at levels 4..SIZE for every encoding, beside two references measured in
the same run on the same files:
  (a) floor: worker processes only decode each JPEG once (Image.open + load), nothing else;
  (b) common approach: decode, resize every level separately from the original with Lanczos,
      store JPEG quality 100 (as many public ProGAN/StyleGAN prepare scripts do), written by
      the main process in transactions of 64 images (the ports' single transaction needs their
      fixed 1 TiB map; here the map starts small and grows).
Reading: batches/s of MultiResolutionDataset at 8, 64 and 256 px, served from memory by
get_batch, and decoded record by record by get_batch in this process (0 workers) or in 2
DataLoader workers that each decode whole batches (as progan.train.loop does), beside a CPU stand-in
training step (forward+backward of a tiny conv net on the same batch; the real consumer is the
GPU step of bench/bench_step.py). Every build row also reports CPU time per image over this
process and all its workers, which stays meaningful when other jobs share the machine.
The photos are synthetic 1024x1024 JPEGs (quality 90): drawn faces upscaled, with photo-like
low-frequency texture and grain, so they compress like photographs rather than like cartoons.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lmdb
import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.build import BuildConfig, build  # noqa: E402
from data_prep.synth import draw_face, face_rng  # noqa: E402
from progan.data.format import ENCODINGS, DEFAULT_ENCODING, image_key
from progan.data.writer import INITIAL_MAP_SIZE, write_growing
from progan.data.reader import MultiResolutionDataset
from progan.runtime.fileio import atomic_output  # noqa: E402
from progan.train.reals import BatchReader  # noqa: E402


# ----------------------------------------------------------------------------- photos


def make_photo(args) -> None:
    index, size, path = args
    rng = np.random.default_rng([7, index])
    face = draw_face(face_rng(7, index), 256).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(face).astype(np.float32)
    texture = rng.normal(0, 30, (size // 16, size // 16)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture, "F").resize((size, size), Image.Resampling.BICUBIC))
    pixels += texture[:, :, None] + rng.normal(0, 4, pixels.shape).astype(np.float32)
    # Atomic, so a killed run leaves no half-written photo for the next run to reuse.
    with atomic_output(path) as tmp:
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)


def ensure_photos(folder: Path, count: int, size: int, workers: int) -> list[Path]:
    """The photos of an earlier run with the same --images and --size are reused."""
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(count)]
    missing = [(i, size, p) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"drawing {len(missing)} photos in {folder} ...", file=sys.stderr)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(make_photo, missing, chunksize=4))
    return paths


# ----------------------------------------------------------------------------- references


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (waited-for) children: robust to other load."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(run, count: int):
    """(images/s by the wall clock, CPU ms per image, run's result) of `run()`."""
    cpu, start = cpu_seconds(), time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    return count / wall, (cpu_seconds() - cpu) / count * 1000, result


def decode_only(path: str) -> None:
    with Image.open(path) as image:
        image.load()


def common_approach(args) -> list[bytes]:
    path, resolutions = args
    with Image.open(path) as image:
        image = image.convert("RGB")
        out = []
        for res in resolutions:
            buffer = io.BytesIO()
            image.resize((res, res), Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=100)
            out.append(buffer.getvalue())
    return out


def pool(workers: int) -> ProcessPoolExecutor:
    # fork, as the build uses on Linux: the workers are our children, so their CPU time counts
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def floor_run(paths: list[Path], workers: int) -> None:
    with pool(workers) as executor:
        list(executor.map(decode_only, map(str, paths), chunksize=4))


def common_approach_run(paths: list[Path], size: int, workers: int, out: Path) -> int:
    resolutions = [1 << n for n in range(2, size.bit_length())]
    # Public ports reserve a fixed 1 TiB map; this one starts small and grows when full, so
    # only the writes differ from theirs, committed every 64 images.
    env = lmdb.open(str(out), map_size=INITIAL_MAP_SIZE, readahead=False)
    pending: list[tuple[bytes, bytes]] = []

    def flush() -> None:
        write_growing(env, lambda txn: [txn.put(key, data) for key, data in pending])
        pending.clear()

    with pool(workers) as executor:
        tasks = [(str(p), resolutions) for p in paths]
        for index, levels in enumerate(executor.map(common_approach, tasks, chunksize=1)):
            pending.extend((image_key(res, index), data) for res, data in zip(resolutions, levels))
            if len(pending) >= 64 * len(resolutions):
                flush()
        flush()
    env.close()
    return (out / "data.mdb").stat().st_size


def build_run(source: Path, out: Path, size: int, workers: int, encoding: str) -> int:
    config = BuildConfig(source=source, out=out, max_res=size, workers=workers, encoding=encoding)
    with open(os.devnull, "w") as quiet:
        build(config, log=quiet)
    return (out / "data.mdb").stat().st_size


# ----------------------------------------------------------------------------- reading


def time_batches(next_batch, min_seconds: float = 1.5, min_batches: int = 5) -> float:
    next_batch()  # warm-up: opening, loading a level into memory, starting workers
    count, start = 0, time.perf_counter()
    while count < min_batches or time.perf_counter() - start < min_seconds:
        next_batch()
        count += 1
    return count / (time.perf_counter() - start)


def random_batches(count: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    while True:
        yield rng.integers(0, count, batch).tolist()


def decoded_rate(db: Path, res: int, batch: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    dataset = MultiResolutionDataset(db, res, memory_budget_bytes=0)
    if workers == 0:
        batches = random_batches(len(dataset), batch)
        return time_batches(lambda: dataset.get_batch(next(batches)))
    loader = DataLoader(BatchReader(dataset), batch_sampler=random_batches(len(dataset), batch),
                        collate_fn=lambda b: b, num_workers=workers, prefetch_factor=4)
    iterator = iter(loader)
    rate = time_batches(lambda: next(iterator))
    del iterator
    return rate


def read_rows(db: Path, encoding: str, batch: int, resolutions: list[int], step_rates: dict) -> list[str]:
    rows = []
    for res in resolutions:
        memory = MultiResolutionDataset(db, res)
        batches = random_batches(len(memory), batch)
        in_memory = time_batches(lambda: memory.get_batch(next(batches))) if memory.in_memory else float("nan")
        decoded = [decoded_rate(db, res, batch, workers) for workers in (0, 2)]
        rows.append(
            f"| {encoding} | {res} | {batch} | {in_memory:,.0f} | {decoded[0]:,.1f} | {decoded[1]:,.1f} | "
            f"{step_rates[res]:,.1f} |"
        )
    return rows


def stand_in_step(res: int, batch: int):
    """Forward+backward of a tiny conv net on one uint8 batch, as the trainer would feed it."""
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.LeakyReLU(0.2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 1),
    )
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)

    def step():
        net.zero_grad()
        net(images.float() / 127.5 - 1).mean().backward()

    return step


# ----------------------------------------------------------------------------- main


def build_table(args, photos: Path, paths: list[Path], dbs: dict) -> str:
    n = len(paths)
    rows = ["| build | images/s | ratio to (a) | ratio to (b) | CPU ms/image, all processes | GB per 1000 images |",
            "|---|---:|---:|---:|---:|---:|"]
    floor, floor_cpu, _ = measured(lambda: floor_run(paths, args.workers), n)
    rows.append(f"| (a) floor: decode each JPEG once | {floor:.1f} | 1.00 | - | {floor_cpu:.1f} | - |")
    reference_out = args.work / "reference.lmdb"
    shutil.rmtree(reference_out, ignore_errors=True)
    reference, reference_cpu, size = measured(
        lambda: common_approach_run(paths, args.size, args.workers, reference_out), n)
    rows.append(f"| (b) common: Lanczos per level from the original + JPEG q100 [lossy] | {reference:.1f} | "
                f"{reference / floor:.2f} | 1.00 | {reference_cpu:.1f} | {size / n * 1000 / 1e9:.2f} |")
    shutil.rmtree(reference_out, ignore_errors=True)
    for encoding, out in dbs.items():
        shutil.rmtree(out, ignore_errors=True)
        rate, cpu, size = measured(lambda: build_run(photos, out, args.size, args.workers, encoding), n)
        label = f"`build --encoding {encoding}`" + (" (default)" if encoding == DEFAULT_ENCODING else "")
        label += "" if ENCODINGS[encoding] else " [lossy]"
        rows.append(f"| {label} | {rate:.1f} | {rate / floor:.2f} | {rate / reference:.2f} | {cpu:.1f} | "
                    f"{size / n * 1000 / 1e9:.2f} |")
    return "\n".join(rows)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encodings", default=",".join(ENCODINGS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "progan_bench_data")
    parser.add_argument("--skip-build", action="store_true", help="reuse the databases of an earlier run")
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--db-dir", type=Path, default=None,
                        help="where the databases go (default: --work); e.g. /dev/shm to leave the disk out")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.workers)
    photos = args.work / f"photos_{args.images}_{args.size}"
    paths = ensure_photos(photos, args.images, args.size, args.workers)
    print(f"{args.images} JPEG photos of {args.size}x{args.size} "
          f"({sum(p.stat().st_size for p in paths) / len(paths) / 1e3:.0f} KB each), "
          f"levels 4..{args.size}, {args.workers} workers, {os.cpu_count()} cores, "
          f"Pillow {PIL.__version__}\n")

    db_dir = args.db_dir or args.work
    dbs = {e: db_dir / f"{e}.lmdb" for e in args.encodings.split(",")}
    if not args.skip_build:
        print(build_table(args, photos, paths, dbs) + "\n")

    if not args.skip_read:
        resolutions = [r for r in (8, 64, 256) if r <= args.size]
        step_rates = {res: time_batches(stand_in_step(res, args.batch)) for res in resolutions}
        print(f"reading, batches of {args.batch} random images, batches/s:")
        print("| encoding | res | batch | get_batch from memory | decode, 0 workers | "
              "decode, DataLoader 2 workers | CPU stand-in training step |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for encoding, db in dbs.items():
            print("\n".join(read_rows(db, encoding, args.batch, resolutions, step_rates)))


if __name__ == "__main__":
    main()
