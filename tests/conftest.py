"""Shared fixtures: a tiny demo database built once per test session with the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], timeout: float = 300, env: dict | None = None, check: bool = True,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `python ARGS...` from the repo root; on unexpected failure show its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def demo_lmdb(tmp_path_factory) -> Path:
    """64 synthetic faces stored at 4..16."""
    root = tmp_path_factory.mktemp("demo_data")
    run_cli(["-m", "data_prep", "synth", str(root / "faces"), "--count", "64", "--size", "32", "--seed", "1"])
    run_cli(["-m", "data_prep", "build", str(root / "faces"), str(root / "faces.lmdb"), "--max-res", "16",
             "--workers", "1"])
    return root / "faces.lmdb"
