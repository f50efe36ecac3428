"""Shared fixtures and helpers: a tiny demo database built once per test session with the real
CLI, running the CLI, one torch thread, small synthetic image sets."""

from __future__ import annotations

import contextlib
import os
import shutil
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


def interrupted_at(args: list[str], delay: float, timeout: float = 120, sig=None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python ARGS...` sent SIGINT (or `sig`) `delay` seconds after
    its first line blocked the stop signals (progan.runtime.signals.hold_stop_signals; read from
    /proc). Before that line only Python's own start-up runs (tens of ms), where no program can
    answer a Ctrl-C."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _blocks_sigint(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=timeout)
            raise AssertionError(f"{args}: never blocked SIGINT (exit {proc.returncode})\n{err}")
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT if sig is None else sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@contextlib.contextmanager
def tmpfs(mount: Path, size: str, prepare=None, read_only: bool = False):
    """A real tmpfs of `size` at `mount` (root only: else the test is skipped); `prepare(mount)`
    fills it, then it is remounted read-only if asked; unmounted after."""
    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        if prepare is not None:
            prepare(mount)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a test's own folder): orphans."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def _blocks_sigint(pid: int) -> bool:
    """Whether the process's main thread has SIGINT (signal 2: bit 1) in its blocked mask."""
    try:
        with open(f"/proc/{pid}/status") as status:
            blocked = next(line for line in status if line.startswith("SigBlk:"))
    except (OSError, StopIteration):
        return False
    return bool(int(blocked.split()[1], 16) & 0b10)


@pytest.fixture(scope="session")
def demo_lmdb(tmp_path_factory) -> Path:
    """64 synthetic faces stored at 4..16."""
    root = tmp_path_factory.mktemp("demo_data")
    run_cli(["-m", "data_prep", "synth", str(root / "faces"), "--count", "64", "--size", "32", "--seed", "1"])
    run_cli(["-m", "data_prep", "build", str(root / "faces"), str(root / "faces.lmdb"), "--max-res", "16",
             "--workers", "1"])
    return root / "faces.lmdb"


@pytest.fixture
def one_torch_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core machine they only lose."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TensorDataset:
    """The dataset interface the metrics read (len, get_batch) over a uint8 tensor [N, C, R, R]."""

    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices):
        import torch

        return self.images[torch.as_tensor(indices, dtype=torch.long)]


def upsampled_noise(n: int, resolution: int, seed: int, *, coarse: int, fine: float = 0.0, channels: int = 3):
    """Natural-ish uint8 images [n, C, R, R]: uniform noise of coarse x coarse pixels, bilinearly
    upsampled to `resolution`, plus Gaussian noise of std `fine` grey levels (none when 0)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, coarse, coarse, generator=g) * 255
    images = F.interpolate(images, size=resolution, mode="bilinear", align_corners=False)
    if fine:
        images = images + fine * torch.randn(n, channels, resolution, resolution, generator=g)
    return images.round().clamp(0, 255).to(torch.uint8)


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda are skipped on machines without a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
