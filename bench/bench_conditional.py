"""A conditional model against an unconditional one of the same budget, on the K-class demo faces.

For each seed, trains both with the real CLI (`train.py`, small preset, the same schedule; the
conditional run is the default on a labelled database, the other `--conditional off`), then
measures SWD against the database with `python -m progan.metrics` (a conditional model's fakes
take classes drawn with the database's class frequencies, as the release reports). Prints one
row per run and the mean and spread (max - min over seeds) of each kind.

    .venv/bin/python bench/bench_conditional.py                       # 3 classes, seeds 0 1 2, ~5 min on 2 cores
    .venv/bin/python bench/bench_conditional.py --seeds 0 1 --kimg 8  # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:3])} failed ({proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
    return proc.stdout


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--count", type=int, default=960, help="demo faces (default 960)")
    p.add_argument("--resolution", type=int, default=8)
    p.add_argument("--kimg", type=float, default=16.0, help="training length of every run (default 16)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_conditional_") as tmp:
        work = Path(tmp)
        run(["-m", "data_prep", "synth", str(work / "faces"), "--count", str(args.count), "--size", "32",
             "--seed", "0", "--classes", str(args.classes)])
        db = work / "faces.lmdb"
        run(["-m", "data_prep", "build", str(work / "faces"), str(db), "--max-res", str(args.resolution),
             "--labels", "folders"])
        phase = args.kimg / 4  # stable 4x4, fade, then stable at the top for the rest
        print(f"# {args.classes} classes, {args.count} demo faces at {args.resolution}x{args.resolution}, "
              f"small preset, {args.kimg:g} kimg per run, SWD on {args.count} images (x1e3, average over levels)\n")
        print("| seed | model | SWD avg | train s |")
        print("|---:|---|---:|---:|")
        results: dict[str, list[float]] = {"conditional": [], "unconditional": []}
        for seed in args.seeds:
            for kind in results:
                out = work / f"{kind}-{seed}"
                t0 = time.monotonic()
                run(["train.py", "--data", str(db), "--out", str(out), "--config", "small", "--resolution",
                     str(args.resolution), "--stable-kimg", str(phase), "--fade-kimg", str(phase),
                     "--total-kimg", str(args.kimg), "--tick-kimg", str(phase), "--snapshot-ticks", "100",
                     "--workers", "0", "--seed", str(seed), "--log-with", "none",
                     *(["--conditional", "off"] if kind == "unconditional" else [])])
                seconds = time.monotonic() - t0
                record = json.loads(run(["-m", "progan.metrics", "swd", "--real", str(db), "--fake", str(out),
                                         "--num", str(args.count), "--no-log"]))
                results[kind].append(record["swd_x1e3_avg"])
                print(f"| {seed} | {kind} | {record['swd_x1e3_avg']:.1f} | {seconds:.0f} |", flush=True)
        print()
        for kind, values in results.items():
            print(f"{kind}: mean {statistics.mean(values):.1f}, spread {max(values) - min(values):.1f} "
                  f"over {len(values)} seeds")


if __name__ == "__main__":
    main()
