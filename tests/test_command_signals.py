"""SIGINT and SIGTERM at any moment of data_prep, generate.py and metrics (issue 25, rows 2-5):
one line, exit 130 (SIGINT) or 143 (SIGTERM), no temporary file and no worker process left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, interrupted_at, processes_naming, run_cli
from legacy_fixture import FIXTURES

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def assert_stopped(code: int, err: str, sig) -> None:
    assert code == CODES[sig], err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last, err
    assert err.count("interrupted") == 1, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of faces that takes a 2-worker webp build a second or two."""
    root = tmp_path_factory.mktemp("photos")
    run_cli(["-m", "data_prep", "synth", str(root / "src"), "--count", "600", "--size", "128", "--seed", "3"])
    return root / "src"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_data_prep_stops_in_one_line_and_leaves_no_worker(photos, demo_lmdb, tmp_path, sig):
    commands = {
        "build": ["-m", "data_prep", "build", str(photos), str(tmp_path / "out.lmdb"), "--max-res", "128",
                  "--encoding", "webp", "--workers", "2"],
        "synth": ["-m", "data_prep", "synth", str(tmp_path / "faces"), "--count", "4000", "--size", "64",
                  "--workers", "2"],
        "verify": ["-m", "data_prep", "verify", str(demo_lmdb)],
    }
    for name, args in commands.items():
        code, _, err = interrupted_at(args, 0.6 if name != "verify" else 0.2, sig=sig)
        if code == 0 and name == "verify":
            continue  # the 64-image demo database can be verified before the signal lands
        assert_stopped(code, err, sig)
        time.sleep(0.2)
        assert processes_naming(str(tmp_path)) == [], name  # synth's workers were orphaned by SIGTERM
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_generate_and_metrics_stop_in_one_line_and_leave_no_temporary_file(demo_lmdb, tmp_path, sig):
    generate = [str(REPO / "generate.py"), str(FIXTURES / "training.pt"), "--out", str(tmp_path / "samples"),
                "--seeds", "0-20000", "--batch", "4"]
    code, _, err = interrupted_at(generate, 3.0, sig=sig)  # torch's import, the model, then PNG after PNG
    assert_stopped(code, err, sig)
    assert not list((tmp_path / "samples").glob(".*.tmp")), "a half-written PNG's temporary file"
    metrics = ["-m", "progan.metrics", "swd", "--real", str(demo_lmdb), "--fake", str(FIXTURES / "generator.pt"),
               "--resolution", "8", "--num", "64", "--batch-size", "1", "--no-log"]
    for delay in (0.3, 2.5):  # during torch's import (held, then answered); during the work
        code, _, err = interrupted_at(metrics, delay, sig=sig)
        if code != 0:  # 64 images can be done before the later signal lands
            assert_stopped(code, err, sig)


@pytest.mark.slow
def test_a_build_stops_cleanly_at_random_moments(photos, tmp_path):
    """The stress test of row 2 in small (bench/stress_signals.py runs 200): SIGINT or SIGTERM at
    random moments from the first line on, every one a clean stop or a finished build."""
    rng = random.Random(25)
    for trial in range(10):
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        out = tmp_path / f"out{trial}.lmdb"
        args = ["-m", "data_prep", "build", str(photos), str(out), "--max-res", "64", "--encoding", "webp",
                "--workers", "2"]
        code, _, err = interrupted_at(args, rng.uniform(0.0, 1.0), timeout=60, sig=sig)
        if code != 0:
            assert_stopped(code, err, sig)


def test_a_signal_python_swallows_still_stops_the_command(tmp_path):
    """A Ctrl-C that lands where Python ignores exceptions (a fork hook, a finalizer: "Exception
    ignored in ...") was lost and the build finished with 0: it is raised again at the next
    raise_if_stopped, and a command that finished all the same still exits as stopped."""
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys, time
        from progan.runtime.cli import run_command
        from progan.runtime.signals import raise_if_stopped

        class Finalized:
            def __del__(self):  # the handler's KeyboardInterrupt is printed as ignored, and lost
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)

        def main():
            Finalized()
            if sys.argv[1] == "checks":
                try:
                    raise_if_stopped()
                except KeyboardInterrupt:
                    print("stopped at the check", file=sys.stderr)
                    return 130
            return 0

        run_command(lambda: main, "command")
    """))
    for mode, said in (("checks", "stopped at the check"), ("finishes", "command: interrupted (after its work was done)")):
        done = subprocess.run([sys.executable, str(script), mode], cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 130, done.stderr
        assert done.stderr.strip().splitlines()[-1] == said, done.stderr
