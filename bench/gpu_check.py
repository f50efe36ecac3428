"""The one prepared GPU check: the trainer's own step per resolution, against ceilings measured in the same run.

    python bench/gpu_check.py --out DIR             # on a GPU: everything below, about 6 minutes on an H100
    python bench/gpu_check.py --out DIR --tiny      # the same code path on a CPU in seconds (a test runs it)
    python bench/gpu_check.py --out DIR --paper     # no GPU: the roofline projection of the release schedule

GPU mode, in order (each part is timed and bounded; the table comes last; DIR/gpu_check.json and
DIR/gpu_check.txt are rewritten after every part and every measured row, so a crash or a timeout
late in the run keeps everything measured before it, and a part that fails is recorded with its
error while the others still run):
1. the CUDA-marked tests (`pytest -m cuda`);
2. ceilings: a bf16 (and tf32) 8192^3 matmul, and a 2 GiB device-to-device copy (bytes read + written);
3. per resolution 4..1024 at the paper's widths, for tf32 (fp32 with TF32 matmuls/convs) and bf16:
   a `Trainer` on a synthetic LMDB built here, stepped by `trainer_step` exactly as `Trainer.run`
   steps it (data, mirror, fade, penalty, both optimizers, EMA), at the paper's batch and at the
   largest batch that fits (doubling until out of memory or 85% of the card): s/kimg, img/s,
   achieved TFLOP/s (FLOPs of that very step from torch.utils.flop_counter) as a share of the
   measured bf16 matmul ceiling, the implied bytes/s as a share of the copy bandwidth at 512 and
   1024, peak memory, and host reads during the timed steps (Tensor.item/bool/tolist/numpy/cpu
   trapped, and CUDA's sync debug mode counting every synchronisation);
4. the release schedule's wall time projected from those per-phase rates;
5. bf16's error in the penalty and in D's and G's gradients against float64 on this device
   (bench/bench_precision.py), sampling img/s at the top resolution, and SWD's time on the device;
6. the user's own path on this device: `data_prep synth/build`, `train.py` with its defaults
   (paper nets, bf16) through one fade and into a second, SIGTERM there (exit 3 and a
   checkpoint), `--resume auto` through a third fade to the end (exit 0), `generate.py` writing a
   grid (exit 0);
7. torch.profiler over two steps at the top resolution: the kernels taking the most device time,
   and the convolutions by input shape (DIR/profile.txt);
8. the convolutions of each resolution's step counted on the meta device, and how many have a
   kernel larger than 4x4 (image-sized: PyTorch's own double backward; progan.nets.ops has none).

Paper mode needs no GPU: per phase of the release schedule (paper widths, 1024, 12M images), the
FLOPs of one step and the fewest bytes it must move (every convolution and matmul reading its
inputs once and writing its output once, plus the optimizers' and EMA's parameter traffic),
counted on the meta device, against an H100's ~790 TFLOP/s bf16 and ~3 TB/s: the floor of each
phase and of the whole schedule, so each measured row can be read as a fraction of it.

On a machine without lmdb (the GPU image has none): bring wheels and install them first, e.g.
`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from progan.runtime.errors import CommandLineError  # noqa: E402
from progan.runtime.cli import choose_device  # noqa: E402
from progan.nets.config import ModelConfig  # noqa: E402
from progan.train.schedule import KIMG, ScheduleConfig, state_at  # noqa: E402
from progan.train.config import TrainConfig, preset_defaults  # noqa: E402

H100_BF16_FLOPS = 790e12   # measured 8192^3 bf16 matmul on this workplace's Hopper cards
H100_BYTES_PER_S = 3.0e12  # HBM3, ~3 TB/s usable
PAPER_RESOLUTIONS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]


# --- the adapter: the ONE place that knows how the trainer takes a step ----------------------

def trainer_step(trainer) -> None:
    """One training step, made as `Trainer.run` makes it (re-point here when the step moves)."""
    trainer._enter_state(state_at(trainer.config.schedule, trainer.images_shown))
    trainer.train_step([0.0, 0.0])


# --- helpers ---------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HostReads:
    """Counts reads of tensor values to the host while active: the Tensor methods that force one
    (on every device), and on CUDA every synchronisation the sync debug mode reports."""

    METHODS = ("item", "__bool__", "tolist", "numpy", "cpu", "__float__", "__int__")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.count = 0
        self.where: dict[str, int] = {}

    def __enter__(self):
        self._saved = {name: getattr(torch.Tensor, name) for name in self.METHODS}
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, self._wrap(name, original))
        self._warnings = None
        if self.device.type == "cuda":
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            if tensor.device == self.device or self.device.type == "cpu":
                self.count += 1
                self.where[name] = self.where.get(name, 0) + 1
            return original(tensor, *args, **kwargs)
        return counted

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        if self._warnings is not None:
            torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in self._caught)
            self._warnings.__exit__(*exc)
            self.where["cuda_syncs"] = syncs
            self.count = max(self.count, syncs)
        return False


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from bench.bench_step import _NoModuleTracking  # its module tracker breaks autograd.grad (the penalty)

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return int(counter.get_total_flops())


def best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def ceilings(device: torch.device, tiny: bool) -> dict:
    """Matmul TFLOP/s (bf16 and fp32/tf32) and copy bandwidth, measured here and now."""
    n = 512 if tiny else 8192
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        reps = 2 if tiny else 10
        seconds = best_seconds(lambda: torch.mm(a, b), device, reps)
        out[f"matmul_{name}_tflops"] = 2 * n**3 / seconds / 1e12
        del a, b
    size = (8 << 20) if tiny else (1 << 30)
    src = torch.empty(size, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), device, 2 if tiny else 10)
    out["copy_bytes_per_s"] = 2 * size / seconds
    del src, dst
    return out


# --- data and trainers -----------------------------------------------------------------------

def make_data(folder: Path, max_res: int, count: int) -> Path:
    """A synthetic multi-resolution LMDB, built with the project's own CLI."""
    try:
        import lmdb  # noqa: F401
    except ImportError:
        raise CommandLineError("lmdb is not installed here; install it (on the GPU image: carried wheels, "
                               "see bench/gpu_check.py's docstring)") from None
    faces, db = folder / "faces", folder / "faces.lmdb"
    workers = str(max(1, min(8, os.cpu_count() or 1)))
    for args in (["synth", str(faces), "--count", str(count), "--size", str(max(16, max_res)), "--workers", workers],
                 ["build", str(faces), str(db), "--max-res", str(max_res), "--workers", workers]):
        proc = subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise CommandLineError(f"data_prep {args[0]} failed: {last}")
    return db


def make_trainer(data: Path, out: Path, preset: str, res: int, batch: int, precision: str,
                 device: torch.device, workers: int):
    """A Trainer whose schedule is at `res`'s stable phase with global batch `batch`."""
    from accelerate import Accelerator

    from progan.train.loop import Trainer
    from progan.train.setup import validate_setup

    defaults = preset_defaults(preset, res)
    sched = defaults["schedule"]
    defaults["schedule"] = dataclasses.replace(sched, batch={r: batch for r in sched.resolutions}, total_kimg=None)
    config = TrainConfig(data=str(data), out=str(out), mixed_precision="bf16" if precision == "bf16" else "no",
                         workers=workers, **defaults)
    validate_setup(config, 1)
    if device.type == "cuda":  # tf32 rows: TF32 matmuls and convs; bf16 rows run autocast anyway
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = True
    trainer = Trainer(config, Accelerator(cpu=device.type == "cpu"), log=lambda *a, **k: None)
    trainer.images_shown = config.schedule.phases()[-1].start_images  # the stable phase at res
    trainer._enter_state(state_at(config.schedule, trainer.images_shown))
    return trainer


def free_memory(device: torch.device) -> None:
    """Collect what was let go of and hand the cached blocks back before the next trainer."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_step(data, out, preset, res, batch, precision, device, steps, workers) -> dict:
    trainer = make_trainer(data, out, preset, res, batch, precision, device, workers)
    try:
        trainer_step(trainer)  # warm-up: cuDNN autotuning, allocator, loader start
        flops = count_flops(lambda: trainer_step(trainer))
        trainer_step(trainer)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with HostReads(device) as reads:
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer_step(trainer)
            sync(device)
            seconds = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        finite = bool(torch.isfinite(trainer._tick_sums).all())
    finally:
        trainer.reals = None  # the loader's workers
        del trainer
        free_memory(device)
    return {"resolution": res, "batch": batch, "precision": precision, "s_per_step": seconds,
            "img_per_s": batch / seconds, "s_per_kimg": seconds * KIMG / batch, "flops_per_step": flops,
            "tflops": flops / seconds / 1e12, "peak_bytes": peak, "host_reads_per_step": reads.count / steps,
            "host_reads": reads.where, "finite": finite}


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def step_rows(data, work, preset, resolutions, precisions, device, steps, workers, max_doublings,
              deadline, first_batch: int | None = None, rows: list[dict] | None = None, on_row=None) -> list[dict]:
    """Paper batch, then doubling while it fits (and leaves headroom): the largest batch is the last row.
    Rows are appended to `rows` as they are measured, and `on_row()` is called after each."""
    rows = [] if rows is None else rows
    total_mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    for precision in precisions:
        for res in resolutions:
            base = first_batch or preset_defaults(preset, res)["schedule"].batch_size(res)
            batch, fitted = base, None
            for doubling in range(max_doublings + 1):
                if doubling and time.monotonic() > deadline:
                    break
                row = None
                try:
                    row = measure_step(data, work / f"{precision}-{res}-{batch}", preset, res, batch, precision,
                                       device, steps, workers)
                except (RuntimeError, torch.OutOfMemoryError) as exc:
                    if not is_oom(exc):
                        raise
                if row is None:  # out of memory; freed here, once the traceback no longer holds the trainer
                    free_memory(device)
                    break
                row["kind"] = "paper batch" if batch == base else "larger"
                rows.append(row)
                fitted = row
                if on_row is not None:
                    on_row()
                print(f"  {precision} {res:4d}x{res:<4d} batch {batch:4d}: {row['s_per_kimg']:8.3f} s/kimg "
                      f"{row['tflops']:8.2f} TFLOP/s  host reads/step {row['host_reads_per_step']:.1f}", flush=True)
                if total_mem and row["peak_bytes"] * 2 > 0.85 * total_mem:
                    break  # the next doubling would not leave headroom
                batch *= 2
            if fitted is not None:
                fitted["largest_that_fits"] = True
                if on_row is not None:
                    on_row()
    return rows


# --- the schedule projections -----------------------------------------------------------------

def release_schedule(preset: str, top: int) -> ScheduleConfig:
    sched = preset_defaults(preset, top)["schedule"]
    return dataclasses.replace(sched, total_kimg=12000.0) if preset == "paper" else sched


def phase_images(sched: ScheduleConfig) -> list[tuple[str, int, int]]:
    """(kind, resolution, images) for every phase; the last one runs to total_images."""
    phases = sched.phases()
    out = []
    for i, p in enumerate(phases):
        end = sched.total_images if i == len(phases) - 1 else min(p.end_images, sched.total_images)
        if end > p.start_images:
            out.append((p.kind, p.resolution, end - p.start_images))
    return out


def project(rows: list[dict], sched: ScheduleConfig, precision: str) -> dict:
    """Wall time of the whole schedule from the measured s/kimg at the schedule's own batches
    (a fade is taken at its stable phase's rate: it runs the same networks plus a 2x-smaller path)."""
    rate = {r["resolution"]: r["s_per_kimg"] for r in rows
            if r["precision"] == precision and r["kind"] == "paper batch"}
    phases, total = [], 0.0
    for kind, res, images in phase_images(sched):
        if res not in rate:
            return {"precision": precision, "complete": False}
        seconds = rate[res] * images / KIMG
        total += seconds
        phases.append({"kind": kind, "resolution": res, "kimg": images / KIMG, "hours": seconds / 3600})
    return {"precision": precision, "complete": True, "hours": total / 3600, "phases": phases}


class _Bytes(TorchDispatchMode):
    """Fewest bytes of the convolutions and matmuls: each reads its inputs once and writes its outputs once."""

    OPS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "_convolution"}

    def __init__(self, act_bytes: int) -> None:
        super().__init__()
        self.act_bytes = act_bytes
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in self.OPS:
            tensors = [t for t in pytree.tree_leaves((args, out)) if isinstance(t, torch.Tensor)]
            self.total += sum(t.numel() * self.act_bytes for t in tensors)
        return out


class ConvolutionKernels(TorchDispatchMode):
    """Counts the convolutions a step launches and those whose kernel is larger than `limit`
    (height or width): on a GPU each such call is an implicit GEMM over an image-sized kernel,
    the cost of PyTorch's own double backward through a convolution (issue 18). Works on the
    meta device, so the census of a 1024 step is free."""

    FORWARD = {"convolution", "_convolution", "cudnn_convolution", "cudnn_convolution_transpose",
               "mkldnn_convolution", "convolution_overrideable", "_slow_conv2d_forward",
               "slow_conv_transpose2d"}

    def __init__(self, limit: int = 4) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0
        self.image_sized: list[tuple[list[int], list[int]]] = []  # (input shape, kernel shape)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.FORWARD:
            x, w = args[0], args[1]
            self.total += 1
            if max(w.shape[2:]) > self.limit:
                self.image_sized.append((list(x.shape), list(w.shape)))
        return func(*args, **(kwargs or {}))


def convolution_census(preset: str, res: int, batch: int, alpha: float = 1.0, limit: int = 4) -> ConvolutionKernels:
    """The convolutions of one training step (bench_step's, the trainer's own step) on the meta device."""
    from bench.bench_step import Variant, build, train_step

    v = Variant(adam="foreach")
    setup = build(ModelConfig.preset(preset, res), batch, "meta", v)
    census = ConvolutionKernels(limit)
    with census:
        train_step(setup, res, alpha)
    return census


def roofline(preset: str, top: int, peak_flops: float, peak_bytes: float) -> dict:
    """Per phase of the release schedule: FLOPs and fewest bytes per step (meta device), the floor."""
    from bench.bench_step import Variant, build, run_step

    sched = release_schedule(preset, top)
    per_res = {}
    for res in sched.resolutions:
        cfg = ModelConfig.preset(preset, res)
        batch = sched.batch_size(res)
        v = Variant(adam="foreach")
        setup = build(cfg, batch, "meta", v)
        flops = count_flops(lambda: run_step(setup, res, v))
        setup = build(cfg, batch, "meta", v)
        counter = _Bytes(act_bytes=2)  # bf16 activations and weight copies under autocast
        with counter:
            run_step(setup, res, v)
        census = convolution_census(preset, res, batch)
        params = sum(p.numel() for p in setup.G.parameters()) + sum(p.numel() for p in setup.D.parameters())
        # Adam per parameter: read p, g, m, v and write p, m, v (fp32); EMA: read G and Gs, write Gs.
        state = 7 * 4 * params + 3 * 4 * sum(p.numel() for p in setup.G.parameters())
        total_bytes = counter.total + state
        floor = max(flops / peak_flops, total_bytes / peak_bytes)
        per_res[res] = {"batch": batch, "flops_per_step": flops, "bytes_per_step": total_bytes,
                        "flop_s": flops / peak_flops, "byte_s": total_bytes / peak_bytes,
                        "bound": "compute" if flops / peak_flops >= total_bytes / peak_bytes else "memory",
                        "floor_s_per_kimg": floor * KIMG / batch, "convs": census.total,
                        "image_sized_convs": len(census.image_sized)}
    phases, total = [], 0.0
    for kind, res, images in phase_images(sched):
        hours = per_res[res]["floor_s_per_kimg"] * images / KIMG / 3600
        total += hours
        phases.append({"kind": kind, "resolution": res, "kimg": images / KIMG, "floor_hours": hours})
    return {"preset": preset, "resolution": top, "total_kimg": sched.total_images / KIMG,
            "peak_flops": peak_flops, "peak_bytes_per_s": peak_bytes, "per_resolution": per_res,
            "phases": phases, "floor_hours": total}


# --- sampling and SWD ---------------------------------------------------------------------------

def sampling_rate(data, work, preset, res, precision, device, batch) -> float:
    from progan.nets.layers import autocast

    trainer = make_trainer(data, work / "sampling", preset, res, 4, precision, device, 0)
    G = trainer.G_ema
    z = torch.randn(batch, trainer.config.model.latent_size, device=device)

    def sample():
        with torch.no_grad(), autocast(device, torch.bfloat16 if precision == "bf16" else None):
            G(z, resolution=res, alpha=1.0)

    seconds = best_seconds(sample, device, 3)
    del trainer
    return batch / seconds


def swd_seconds(device: torch.device, count: int, res: int) -> float:
    from progan.metrics.swd import sliced_wasserstein_distance

    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (count, 3, res, res), dtype=torch.uint8, generator=gen).to(device)
    fake = torch.randint(0, 256, (count, 3, res, res), dtype=torch.uint8, generator=gen).to(device)
    sync(device)
    t0 = time.perf_counter()
    sliced_wasserstein_distance(real, fake, device=device, batch_size=256)
    sync(device)
    return time.perf_counter() - t0


def precision_error(device: torch.device, tiny: bool) -> list[dict]:
    """bench/bench_precision.py on this device: bf16's error in the penalty and gradients vs float64."""
    from bench.bench_precision import run_case

    cases = [("small", 8)] if tiny else [("small", 32), ("paper", 32), ("paper", 128)]
    rows = []
    for preset, res in cases:
        rows += run_case(preset, res, 4, ["fp32", "bf16"], device, seed=0)
    return rows


# --- the user's path: train.py through fades, SIGTERM, resume, generate.py ---------------------

def _run_logged(cmd: list[str], log: list[str], timeout: float, stop_when=None) -> dict:
    """Run `python CMD...` from the repository root, keeping its output lines in `log`; with
    `stop_when(line)`, send SIGTERM once it returns True. Returns the exit code and the time."""
    import signal
    import threading

    log.append("+ " + " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    timer = threading.Timer(timeout, proc.kill)  # a hung command cannot eat the rest of the lease
    timer.start()
    signalled = False
    try:
        for line in proc.stdout:
            log.append(line.rstrip())
            if stop_when is not None and not signalled and stop_when(line):
                proc.send_signal(signal.SIGTERM)
                signalled = True
        code = proc.wait()
    finally:
        timer.cancel()
    return {"returncode": code, "seconds": time.monotonic() - t0, "signalled": signalled}


def user_path(work: Path, tiny: bool, device: torch.device, timeout: float) -> dict:
    """The README's commands on this device, with the defaults (paper nets, --mixed-precision
    auto): SIGTERM one tick into the second fade, then --resume auto through the fade after it,
    then generate.py. Tiny (the CPU dry run): the small preset to 16x16, one fade before the
    signal and one after it."""
    import re

    deadline = time.monotonic() + timeout
    left = lambda: max(5.0, deadline - time.monotonic())  # noqa: E731
    log: list[str] = []
    out: dict = {"log": log, "ok": False}
    faces, db, run, samples = work / "faces", work / "faces.lmdb", work / "run", work / "samples"
    # Phases with fade = stable = F: 1 fade 8, 2 stable 8, 3 fade 16, 4 stable 16, 5 fade 32, ...
    res, count, fade_kimg, tick_kimg = (16, 64, 0.125, 0.0625) if tiny else (32, 512, 4, 1)
    stop_in_phase, resume_into_phase = (1, 3) if tiny else (3, 5)
    workers = "1" if tiny else "4"
    for step, cmd in (("synth", ["-m", "data_prep", "synth", str(faces), "--count", str(count), "--size", str(res),
                                 "--seed", "0", "--workers", workers]),
                      ("build", ["-m", "data_prep", "build", str(faces), str(db), "--max-res", str(res),
                                 "--workers", workers])):
        out[step] = _run_logged(cmd, log, left())
        if out[step]["returncode"]:
            return out
    train = ["train.py", "--data", str(db), "--out", str(run), "--resolution", str(res), "--fade-kimg", str(fade_kimg),
             "--stable-kimg", str(fade_kimg), "--tick-kimg", str(tick_kimg), "--snapshot-ticks", "2",
             "--workers", "0" if tiny else "4", "--device", device.type, "--log-with", "none"]
    if tiny:
        train += ["--config", "small"]
    phases_seen: list[int] = []
    ticks_after = [0]

    def fade_running(line: str) -> bool:  # SIGTERM one tick into phase `stop_in_phase`
        m = re.match(r"phase (\d+):", line)
        if m:
            phases_seen.append(int(m.group(1)))
        elif phases_seen and max(phases_seen) >= stop_in_phase and line.startswith("tick"):
            ticks_after[0] += 1
        return ticks_after[0] >= 1

    out["first_leg"] = _run_logged(train, log, left(), stop_when=fade_running)
    out["first_leg"]["phases_seen"] = list(phases_seen)
    out["first_leg"]["checkpoint_written"] = any(line.startswith("stopped by SIGTERM") and "checkpoint" in line
                                                 for line in log)
    total = (resume_into_phase + 0.5) * fade_kimg  # half-way into that fade
    resume = ["train.py", "--out", str(run), "--resume", "auto", "--total-kimg", str(total), "--device", device.type,
              "--log-with", "none"]
    start = len(log)
    out["resume"] = _run_logged(resume, log, left())
    out["resume"]["phases_seen"] = [int(m.group(1)) for line in log[start:] if (m := re.match(r"phase (\d+):", line))]
    out["generate"] = _run_logged(["generate.py", str(run), "--out", str(samples), "--seeds", "0-15", "--grid", "4x4",
                                   "--device", device.type], log, left())
    grid = samples / "grid.png"
    out["grid_bytes"] = grid.stat().st_size if grid.exists() else 0
    out["expected_phases"] = {"signal_in": stop_in_phase, "resume_into": resume_into_phase}
    out["ok"] = (out["first_leg"]["returncode"] == 3 and out["first_leg"]["checkpoint_written"]
                 and max(out["first_leg"]["phases_seen"] or [0]) >= stop_in_phase
                 and out["resume"]["returncode"] == 0 and resume_into_phase in out["resume"]["phases_seen"]
                 and out["generate"]["returncode"] == 0 and out["grid_bytes"] > 0)
    return out


# --- where the device time goes ----------------------------------------------------------------

def profile_step(data, work, preset, res, batch, precision, device, workers, top: int = 15) -> dict:
    """torch.profiler over two trainer steps: the top kernels by self device time, and the
    convolutions grouped by input shape (what the H200 profile of issue 18 showed)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(data, work / "profile", preset, res, batch, precision, device, workers)
    try:
        for _ in range(2):
            trainer_step(trainer)  # warm-up, cuDNN autotuning
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as prof:
            t0 = time.perf_counter()
            for _ in range(2):
                trainer_step(trainer)
            sync(device)
            seconds = (time.perf_counter() - t0) / 2
    finally:
        trainer.reals = None  # the loader's workers
        del trainer
        free_memory(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=70)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=top,
                                                                 max_name_column_width=40, max_shapes_column_width=90)
    return {"resolution": res, "batch": batch, "precision": precision, "s_per_step": seconds,
            "top_kernels": kernels, "by_input_shape": by_shape}


# --- CUDA tests ---------------------------------------------------------------------------------

def cuda_tests(timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"summary": f"timed out after {timeout:.0f} s", "returncode": None}
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    return {"summary": lines[-1] if lines else proc.stderr.strip()[-200:], "returncode": proc.returncode}


# --- output -------------------------------------------------------------------------------------

def format_tables(result: dict) -> str:
    lines = []
    env = result["environment"]
    lines.append(f"device: {env['device_name']}; torch {env['torch']}; mode {result['mode']}")
    if "cuda_tests" in result:
        lines.append(f"CUDA-marked tests: {result['cuda_tests']['summary']}")
    if "ceilings" in result:
        c = result["ceilings"]
        lines.append(f"ceilings: bf16 matmul {c['matmul_bf16_tflops']:.1f} TFLOP/s, fp32/tf32 matmul "
                     f"{c['matmul_fp32_tflops']:.1f} TFLOP/s, copy {c['copy_bytes_per_s'] / 1e9:.0f} GB/s")
    if result.get("precision_error"):
        from bench.bench_precision import table

        lines += ["", "error against float64 (bench/bench_precision.py on this device):", table(result["precision_error"])]
    if "sampling_img_per_s" in result:
        lines.append(f"sampling at {result['sampling_resolution']}: {result['sampling_img_per_s']:.0f} img/s")
    if "swd_seconds" in result:
        lines.append(f"SWD of {result['swd_images']} images at {result['swd_resolution']}: {result['swd_seconds']:.2f} s")
    if "user_path" in result:
        u = result["user_path"]
        legs = ", ".join(f"{name} exit {u[name]['returncode']} ({u[name]['seconds']:.0f} s)"
                         for name in ("first_leg", "resume", "generate") if name in u)
        lines.append(f"user path (train.py through fades, SIGTERM, --resume auto, generate.py): "
                     f"{'OK' if u['ok'] else 'FAILED'}; {legs}")
        if not u["ok"]:
            lines += ["  " + line for line in u["log"][-15:]]
    if "profile" in result:
        q = result["profile"]
        lines += ["", f"profile: {q['precision']} {q['resolution']}x{q['resolution']} batch {q['batch']}, "
                  f"{1000 * q['s_per_step']:.1f} ms/step (top kernels in profile.txt)"]
    for name, error in result.get("errors", {}).items():
        lines.append(f"section {name} FAILED: {error.strip().splitlines()[-1]}")
    if "roofline" in result:
        r = result["roofline"]
        lines += ["", f"roofline, {r['preset']} widths, release schedule ({r['total_kimg']:.0f} kimg) at "
                  f"{r['peak_flops'] / 1e12:.0f} TFLOP/s and {r['peak_bytes_per_s'] / 1e12:.1f} TB/s:",
                  "| res | batch | GFLOP/step | MB/step (fewest) | bound | floor s/kimg | image-sized conv kernels "
                  "| phase floors (h) |",
                  "|---:|---:|---:|---:|---|---:|---:|---|"]
        for res, q in r["per_resolution"].items():
            floors = ", ".join(f"{p['kind']} {p['floor_hours']:.3f}" for p in r["phases"] if p["resolution"] == res)
            lines.append(f"| {res} | {q['batch']} | {q['flops_per_step'] / 1e9:.1f} | {q['bytes_per_step'] / 1e6:.1f} "
                         f"| {q['bound']} | {q['floor_s_per_kimg']:.4f} | {q['image_sized_convs']} of {q['convs']} "
                         f"| {floors} |")
        lines.append(f"floor of the whole schedule: {r['floor_hours']:.2f} h")
    for p in result.get("projections", []):
        if p["complete"]:
            parts = ", ".join(f"{q['kind'][0]}{q['resolution']} {q['hours']:.2f}" for q in p["phases"])
            lines.append(f"projected schedule ({p['precision']}): {p['hours']:.1f} h  [{parts}]")
    # The main table last: the reply of a remote run shows the end of the output.
    if result.get("steps") and "ceilings" in result:
        ceiling = result["ceilings"]["matmul_bf16_tflops"]
        bw = result["ceilings"]["copy_bytes_per_s"]
        roof = result.get("roofline", {}).get("per_resolution", {})
        lines += ["", "| prec | res | batch | kind | s/kimg | img/s | TFLOP/s | % bf16 ceiling | % bandwidth (floor bytes) "
                  "| % of roofline floor | peak GiB | host reads/step |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["steps"]:
            floor_bytes = roof.get(r["resolution"], {}).get("bytes_per_step")
            share_bw = share_floor = ""
            if floor_bytes and r["batch"] == roof[r["resolution"]]["batch"]:
                share_bw = f"{100 * floor_bytes / r['s_per_step'] / bw:.1f}"
                share_floor = f"{100 * roof[r['resolution']]['floor_s_per_kimg'] / r['s_per_kimg']:.1f}"
            kind = r["kind"] + (" (largest)" if r.get("largest_that_fits") else "")
            lines.append(f"| {r['precision']} | {r['resolution']} | {r['batch']} | {kind} | {r['s_per_kimg']:.3f} "
                         f"| {r['img_per_s']:.0f} | {r['tflops']:.2f} | {100 * r['tflops'] / ceiling:.1f} | {share_bw} | {share_floor} "
                         f"| {r['peak_bytes'] / 2**30:.2f} | {r['host_reads_per_step']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.txt and profile.txt")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="small preset, 4..16, a few steps: the CPU dry run")
    mode.add_argument("--paper", action="store_true", help="roofline projection only (no GPU needed)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--resolutions", type=int, nargs="+", help="default: 4..1024 (tiny: 4 8 16)")
    p.add_argument("--precisions", nargs="+", choices=["tf32", "bf16"], default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10, tiny 2)")
    p.add_argument("--max-doublings", type=int, default=None, help="batch doublings past the paper's (default 4, tiny 1)")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="the whole run's target: larger batches are searched only while the parts after them "
                        "still fit (default 330)")
    p.add_argument("--skip-tests", action="store_true", help="do not run the CUDA-marked tests")
    p.add_argument("--skip-user-path", action="store_true", help="do not run train.py/generate.py on the device")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_FLOPS / 1e12)
    p.add_argument("--peak-tbps", type=float, default=H100_BYTES_PER_S / 1e12)
    args = p.parse_args(argv)
    try:
        return run(args)
    except CommandLineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class Report:
    """The result dict, written (JSON and tables) after every part and every row: a crash, a
    timeout or a lost lease late in the run keeps everything measured before it."""

    def __init__(self, out: Path, result: dict) -> None:
        self.out, self.result = out, result
        self.started = time.monotonic()

    def save(self) -> None:
        from progan.runtime.fileio import atomic_write_text

        self.result["seconds"] = time.monotonic() - self.started
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "gpu_check.json", json.dumps(self.result, indent=2, default=str) + "\n")
        try:
            tables = format_tables(self.result)
        except Exception as exc:  # a half-filled result must never cost the JSON above
            tables = f"(tables not drawn: {type(exc).__name__}: {exc}; the numbers are in gpu_check.json)"
        atomic_write_text(self.out / "gpu_check.txt", tables + "\n")

    @contextlib.contextmanager
    def part(self, name: str):
        """One bounded part: its time and any error are recorded, then the others still run."""
        import traceback

        t0 = time.monotonic()
        print(f"[{t0 - self.started:5.0f} s] {name}", flush=True)
        try:
            yield
        except Exception as exc:  # recorded and shown; the remaining parts still measure
            self.result.setdefault("errors", {})[name] = "".join(traceback.format_exception(exc))[-4000:]
            print(f"  {name} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}",
                  flush=True)
        finally:
            self.result.setdefault("part_seconds", {})[name] = time.monotonic() - t0
            self.save()


# Seconds the parts after the batch search need on an H100/H200 (measured there): the user's
# path ~60, profile ~15, sampling, precision and SWD ~20, the meta-device roofline ~30.
RESERVE_AFTER_STEPS_S = 150.0


def run(args) -> int:
    from progan.runtime.fileio import atomic_write_text

    out = Path(args.out)
    device = choose_device(args.device)
    preset = "small" if args.tiny else "paper"
    top_default = 16 if args.tiny else 1024
    result: dict = {"mode": "paper" if args.paper else "tiny" if args.tiny else "full",
                    "environment": {"torch": torch.__version__, "device": str(device),
                                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                    "cuda": torch.version.cuda}}
    peak_flops, peak_bytes = args.peak_tflops * 1e12, args.peak_tbps * 1e12
    if not args.paper and device.type == "cpu" and not args.tiny:
        raise CommandLineError("no CUDA device: use --tiny for the CPU dry run or --paper for the projection")
    report = Report(out, result)
    start = report.started
    if not args.paper:
        if device.type == "cuda" and not args.skip_tests:
            with report.part("cuda_tests"):
                result["cuda_tests"] = cuda_tests(timeout=90)
        with report.part("ceilings"):
            result["ceilings"] = ceilings(device, args.tiny)
        resolutions = args.resolutions or ([4, 8, 16] if args.tiny else PAPER_RESOLUTIONS)
        precisions = args.precisions or (["bf16"] if args.tiny else ["tf32", "bf16"])
        if device.type == "cpu":
            precisions = [p if p != "tf32" else "fp32" for p in precisions]
        steps = args.steps or (2 if args.tiny else 10)
        doublings = args.max_doublings if args.max_doublings is not None else (1 if args.tiny else 4)
        top = max(resolutions)
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            work = Path(tmp)
            data = None
            with report.part("data"):
                data = make_data(work, top, 32 if args.tiny else 64)
            if data is not None:
                result["steps"] = []
                with report.part("steps"):
                    reserve = 0.0 if args.tiny else RESERVE_AFTER_STEPS_S
                    step_rows(data, work, preset, resolutions, precisions, device, steps, 0 if args.tiny else 4,
                              doublings, start + args.budget_s - reserve, first_batch=8 if args.tiny else None,
                              rows=result["steps"], on_row=report.save)
                sched = release_schedule(preset, top)
                result["projections"] = [project(result["steps"], sched, prec) for prec in precisions]
            if not args.skip_user_path:
                with report.part("user_path"):
                    result["user_path"] = user_path(work / "user", args.tiny, device, timeout=240 if args.tiny else 150)
            if data is not None:
                with report.part("profile"):
                    prof_batch = 8 if args.tiny else preset_defaults(preset, top)["schedule"].batch_size(top)
                    q = profile_step(data, work, preset, top, prof_batch, precisions[-1], device, 0)
                    out.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(out / "profile.txt", f"{q['precision']} {top}x{top} batch {prof_batch}: "
                                      f"{1000 * q['s_per_step']:.1f} ms/step\n\n{q['top_kernels']}\n\n{q['by_input_shape']}\n")
                    result["profile"] = q
                with report.part("sampling"):
                    result["sampling_resolution"] = top
                    result["sampling_img_per_s"] = sampling_rate(data, work, preset, top, precisions[-1], device,
                                                                 8 if args.tiny else 32)
        with report.part("precision"):
            result["precision_error"] = precision_error(device, args.tiny)
        with report.part("swd"):
            result["swd_images"], result["swd_resolution"] = (64, 16) if args.tiny else (2048, 256)
            result["swd_seconds"] = swd_seconds(device, result["swd_images"], result["swd_resolution"])
        if device.type == "cuda" and "ceilings" in result:
            peak_flops = result["ceilings"]["matmul_bf16_tflops"] * 1e12
            peak_bytes = result["ceilings"]["copy_bytes_per_s"]
        top_default = top
    with report.part("roofline"):
        result["roofline"] = roofline(preset, top_default, peak_flops, peak_bytes)
    report.save()
    print(format_tables(result))
    print(f"({result['seconds']:.0f} s; full numbers in {out / 'gpu_check.json'})")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
