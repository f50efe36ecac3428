#!/usr/bin/env python3
"""Training throughput: the whole step with its data loading, and how it scales over processes.

    python bench/bench_train.py                      # both tables, small preset, CPU
    python bench/bench_train.py --resolutions 4,8,16,32,64 --steps 20 --preset small
    python bench/bench_train.py --skip-scaling

Table 1, per resolution: images/s of the full training step (D step with penalty and drift,
G step, EMA) fed by the real loader from an LMDB, next to the same step fed one batch already
in memory; the difference is what loading costs.
Table 2: two CPU processes with one thread each (`accelerate launch --multi_gpu`, gloo) against
one process with two threads, same global batch, measured from the runs' own stats.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_dataset(root: Path, count: int, size: int, max_res: int) -> Path:
    faces, lmdb_path = root / "faces", root / "faces.lmdb"
    py = sys.executable
    subprocess.run([py, "-m", "data_prep", "synth", str(faces), "--count", str(count), "--size", str(size),
                    "--seed", "0"], cwd=REPO, check=True, capture_output=True)
    subprocess.run([py, "-m", "data_prep", "build", str(faces), str(lmdb_path), "--max-res", str(max_res)],
                   cwd=REPO, check=True, capture_output=True)
    return lmdb_path


def stable_config(data: Path, out: Path, preset: str, resolution: int, batch: int, workers: int, **extra):
    from progan.train.schedule import ScheduleConfig
    from progan.train.config import TrainConfig, preset_defaults
    from progan.train.precision import resolve_config

    defaults = preset_defaults(preset, resolution)
    schedule = ScheduleConfig(max_resolution=resolution, start_resolution=resolution, fade_kimg=1,
                              stable_kimg=1000, batch={resolution: batch}, lr={}, base_lr=0.001)
    config = TrainConfig(data=str(data), out=str(out), model=defaults["model"], schedule=schedule,
                         workers=workers, **extra)
    return resolve_config(config, "cpu")  # both benchmarks train on the CPU


def time_steps(trainer, steps: int, fixed_batch: bool) -> float:
    """Images/s over `steps` steps after 3 warm-up steps."""
    if fixed_batch:
        batch = trainer.reals.next()
        trainer.reals.next = lambda: batch  # the step alone: no loading at all
    for _ in range(3):
        trainer.train_step([0.0, 0.0])
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step([0.0, 0.0])
    return steps * trainer.state.batch_size / (time.perf_counter() - start)


def loader_table(data: Path, tmp: Path, preset: str, resolutions: list[int], batch: int, steps: int,
                 workers: int) -> list[str]:
    import torch
    from accelerate import Accelerator

    import progan.train.reals as reals
    import progan.train.loop as training

    accelerator = Accelerator(cpu=True)
    rows = [f"| resolution | batch | step alone (img/s) | from memory (img/s) | cost | streamed, {workers} workers (img/s) | cost |",
            "|---|---|---|---|---|---|---|"]
    budget = reals.DEFAULT_MEMORY_BUDGET
    for res in resolutions:
        rates = {}
        for mode in ("alone", "memory", "streamed"):
            # streamed: a memory budget of 0 forces the DataLoader path that large levels take
            reals.DEFAULT_MEMORY_BUDGET = 0 if mode == "streamed" else budget
            config = stable_config(data, tmp / f"run{res}{mode}", preset, res, batch, workers)
            torch.manual_seed(0)
            trainer = training.Trainer(config, accelerator, log=lambda *a: None)
            rates[mode] = time_steps(trainer, steps, fixed_batch=mode == "alone")
        reals.DEFAULT_MEMORY_BUDGET = budget
        cost = {m: (1 - rates[m] / rates["alone"]) * 100 for m in ("memory", "streamed")}
        rows.append(f"| {res} | {batch} | {rates['alone']:.1f} | {rates['memory']:.1f} | {cost['memory']:+.1f}% | "
                    f"{rates['streamed']:.1f} | {cost['streamed']:+.1f}% |")
        print(rows[-1], flush=True)
    return rows


def run_rate(cmd: list[str], env: dict, out: Path) -> float:
    subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, check=True, capture_output=True)
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    steady = stats[1:] or stats  # the first tick includes start-up
    return sum(s["images_per_s"] for s in steady) / len(steady)


def scaling_table(data: Path, tmp: Path, preset: str, resolutions: list[int], batch: int, kimg: float) -> list[str]:
    rows = ["| resolution | global batch | 1 process x 2 threads (img/s) | 2 processes x 1 thread (img/s) | speed-up |",
            "|---|---|---|---|---|"]
    for res in resolutions:
        config_file = tmp / f"scaling{res}.json"
        config = stable_config(data, tmp / "unused", preset, res, batch, workers=0, tick_kimg=kimg / 4,
                               snapshot_ticks=1000)
        config_file.write_text(config.to_json())
        common = ["train.py", "--config", str(config_file), "--data", str(data), "--total-kimg", str(kimg)]
        one = run_rate([sys.executable, *common, "--out", str(tmp / f"one{res}")],
                       {"OMP_NUM_THREADS": "2"}, tmp / f"one{res}")
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", "0"]
        two = run_rate([*launch, *common, "--out", str(tmp / f"two{res}")], {"OMP_NUM_THREADS": "1"},
                       tmp / f"two{res}")
        rows.append(f"| {res} | {batch} | {one:.1f} | {two:.1f} | {two / one:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=("small", "paper"))
    p.add_argument("--resolutions", default="4,8,16,32,64,128")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="loader processes for levels not held in memory")
    p.add_argument("--images", type=int, default=512, help="images in the benchmark database")
    p.add_argument("--scaling-resolutions", default="8,32")
    p.add_argument("--scaling-kimg", type=float, default=4.0)
    p.add_argument("--skip-scaling", action="store_true")
    args = p.parse_args()
    resolutions = [int(r) for r in args.resolutions.split(",")]
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = build_dataset(tmp, args.images, max(max(resolutions), 64), max(resolutions))
        print("\nTable 1: step with its loader vs the step alone")
        loader_table(data, tmp, args.preset, resolutions, args.batch, args.steps, args.workers)
        if not args.skip_scaling:
            print("\nTable 2: two processes x one thread vs one process x two threads")
            scaling_table(data, tmp, args.preset, [int(r) for r in args.scaling_resolutions.split(",")],
                          args.batch, args.scaling_kimg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
