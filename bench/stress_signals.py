"""Stop signals at random moments: the stress test of issue 25, row 2.

    .venv/bin/python bench/stress_signals.py --trials 200 --signal SIGINT
    .venv/bin/python bench/stress_signals.py --trials 50 --signal SIGTERM --command synth

Makes a folder of demo faces, then runs the command `--trials` times and sends the signal at a
random moment from its first line on (uniform in 0..--within seconds; the moment is read from
/proc, as tests/conftest.interrupted_at does). Prints a table of the outcomes: a clean stop is
exit 130 (SIGINT) or 143 (SIGTERM) with one "interrupted" line and no traceback; a build that
finished before the signal is exit 0; anything else (a traceback, "Exception ignored", another
code, a hang past --timeout, a worker process left alive) is listed with its stderr.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import _blocks_sigint, processes_naming  # noqa: E402


def outcome(code: int | None, err: str, sig: int, leftovers: list[str]) -> str:
    if code is None:
        return "HANG"
    if leftovers:
        return "workers left alive"
    if "Traceback" in err or "Exception ignored" in err:
        return f"exit {code}, traceback"
    if code == 0:
        return "finished first (exit 0)"
    lines = [line for line in err.strip().splitlines() if "interrupted" in line or "error" in line]
    if code == 128 + sig and len(lines) == 1 and "interrupted" in lines[0]:
        return f"clean stop (exit {code})"
    return f"exit {code}, {len(lines)} message lines"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--signal", choices=("SIGINT", "SIGTERM"), default="SIGINT")
    p.add_argument("--command", choices=("build", "synth", "verify"), default="build")
    p.add_argument("--within", type=float, default=1.2, help="latest moment, in seconds after the first line")
    p.add_argument("--images", type=int, default=1500, help="faces in the source folder (128x128)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    sig = getattr(signal, args.signal)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="stress_signals_"))
    try:
        subprocess.run([sys.executable, "-m", "data_prep", "synth", str(work / "src"), "--count", str(args.images),
                        "--size", "128", "--seed", "0"], cwd=REPO, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "data_prep", "build", str(work / "src"), str(work / "good.lmdb"),
                        "--max-res", "128"], cwd=REPO, check=True, capture_output=True)
        counts, bad = collections.Counter(), []
        for trial in range(args.trials):
            out = work / f"out{trial % 4}"
            shutil.rmtree(out, ignore_errors=True)
            command = {"build": ["build", str(work / "src"), str(out), "--max-res", "128", "--encoding", "webp",
                                 "--workers", "2"],
                       "synth": ["synth", str(out), "--count", "3000", "--size", "64", "--workers", "2"],
                       "verify": ["verify", str(work / "good.lmdb")]}[args.command]
            proc = subprocess.Popen([sys.executable, "-m", "data_prep", *command], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while not _blocks_sigint(proc.pid) and proc.poll() is None:
                time.sleep(0.001)
            delay = rng.uniform(0.0, args.within)
            time.sleep(delay)
            proc.send_signal(sig)
            try:
                _, err = proc.communicate(timeout=args.timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                code = None
            time.sleep(0.05)
            result = outcome(code, err, sig, processes_naming(str(out)))
            counts[result] += 1
            if not result.startswith(("clean stop", "finished first")):
                bad.append((trial, round(delay, 3), result, err.strip()[-400:]))
        print(f"| {args.command}, {args.signal} at 0..{args.within} s | trials |\n|---|---|")
        for result, count in counts.most_common():
            print(f"| {result} | {count} |")
        for trial, delay, result, err in bad:
            print(f"\ntrial {trial} at {delay} s: {result}\n{err}")
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
