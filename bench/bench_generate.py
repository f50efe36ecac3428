"""Sampling throughput, peak memory and export size; prints markdown for bench/RESULTS.md.

    .venv/bin/python bench/bench_generate.py                   # CPU: 256 and 1024, batch 1 and 8
    .venv/bin/python bench/bench_generate.py --device cuda     # a GPU too, fp32 and bf16
    .venv/bin/python bench/bench_generate.py --runtime torch --runtime onnxruntime --batch 1   # ONNX next to PyTorch

Networks are the paper's widths (ModelConfig.preset("paper", R)) with random weights; speed
does not depend on the weights. Each configuration runs in a fresh subprocess so that its peak
resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which covers everything the
process touched: Python, torch, weights, activations) is its own; "model RSS" is the same
figure just after building the generator, before any sampling. On a GPU, peak memory is
`torch.cuda.max_memory_allocated`. Timing is `progan.generator.sampling.seeds_to_images` (latents from
seeds, forward passes, conversion to uint8) after one warm-up batch, repeated until at least
`--seconds` and two batches; PNG writing is not included. With `--runtime onnxruntime` the
generator is first exported with `progan.generator.onnx_file.write_onnx` (that time is the "ONNX export"
figure) and timed through `progan.generator.onnx_file.onnx_images` on an onnxruntime CPU session with as
many threads as torch uses (same seeds, latents and uint8 conversion).

Export: a paper-size 1024 training checkpoint (G, G_ema, D, both Adam states) is written with
the real checkpoint writer, exported with `progan.generator.export.export_file`, and the export's size is
compared with the bytes of the EMA weights alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from progan.nets.config import ModelConfig  # noqa: E402
from progan.nets.networks import Discriminator, Generator  # noqa: E402

RESOLUTIONS = (256, 1024)
BATCHES = (1, 8)
MIB = 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux reports KiB


# -- one configuration, in its own process ---------------------------------------------------
def measure(resolution: int, batch: int, device: str, precision: str, min_seconds: float,
            runtime: str = "torch") -> dict:
    from progan.generator.sampling import seeds_to_images

    generator = Generator(ModelConfig.preset("paper", resolution)).eval().requires_grad_(False).to(device)
    export_s = None
    if runtime == "onnxruntime":
        session, export_s = _onnx_session(generator, resolution)
        latent_size = generator.latent_size
        del generator  # only the session runs
    model_rss = peak_rss_mib()
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if runtime == "onnxruntime":
        from progan.generator.onnx_file import onnx_images

        run = lambda first: onnx_images(session, range(first, first + batch), latent_size)  # noqa: E731
    else:
        run = lambda first: seeds_to_images(generator, range(first, first + batch), resolution,  # noqa: E731
                                            batch_size=batch, autocast_dtype=autocast_dtype)
    run(0)  # warm-up: allocator, kernels, lazy init
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches, start = 0, time.perf_counter()
    while batches < 2 or time.perf_counter() - start < min_seconds:
        run(batch * (batches + 1))
        batches += 1
    elapsed = time.perf_counter() - start
    return {
        "resolution": resolution, "batch": batch, "device": device, "precision": precision,
        "images_per_s": batches * batch / elapsed, "s_per_batch": elapsed / batches,
        "peak_rss_mib": peak_rss_mib(), "model_rss_mib": model_rss,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / MIB if device == "cuda" else None,
        "threads": torch.get_num_threads(), "runtime": runtime, "export_s": export_s,
    }


def _onnx_session(generator: torch.nn.Module, resolution: int):
    """(onnxruntime session of `generator` at its final stage, seconds the export took)."""
    from progan.generator.onnx_file import onnx_session, write_onnx

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = write_onnx(generator, resolution, 1.0, Path(folder) / "g.onnx")
        seconds = time.perf_counter() - start
        return onnx_session(path, threads=torch.get_num_threads()), seconds


def measure_in_subprocess(resolution, batch, device, precision, min_seconds, runtime="torch") -> dict:
    command = [sys.executable, __file__, "--worker",
               json.dumps([resolution, batch, device, precision, min_seconds, runtime])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- export size -----------------------------------------------------------------------------
def export_sizes(resolution: int = 1024) -> dict:
    from progan.generator import checkpoints
    from progan.generator.export import export_file

    config = ModelConfig.preset("paper", resolution)
    generator, generator_ema, discriminator = Generator(config), Generator(config), Discriminator(config)
    state = {
        "config": {}, "model_config": config.to_dict(), "images_shown": 0, "resolution": resolution,
        "alpha": 1.0, "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
        "generator_ema": generator_ema.state_dict(), "optimizer_g": _adam_state(generator),
        "optimizer_d": _adam_state(discriminator), "loss_scale_d": 1.0, "loss_scale_g": 1.0, "counters": {},
        "dataset_fingerprint": "bench",
    }
    ema_bytes = sum(t.numel() * t.element_size() for t in generator_ema.state_dict().values())
    with tempfile.TemporaryDirectory() as folder:
        training_file = checkpoints.save_training_checkpoint(folder, state)
        exported = export_file(folder, Path(folder) / "generator.pt")
        return {"resolution": resolution, "ema_mib": ema_bytes / MIB,
                "training_mib": training_file.stat().st_size / MIB, "export_mib": exported.stat().st_size / MIB}


def _adam_state(module: torch.nn.Module) -> dict:
    """A real Adam state dict (step, exp_avg, exp_avg_sq per parameter) without training."""
    optimizer = torch.optim.Adam(module.parameters(), betas=(0.0, 0.99))
    for parameter in module.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    return optimizer.state_dict()


# -- report ----------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = ["| runtime | device | precision | resolution | batch | images/s | s/batch | peak RSS MiB | model RSS MiB "
             "| GPU peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gpu = f"{r['gpu_peak_mib']:.0f}" if r["gpu_peak_mib"] is not None else "-"
        lines.append(f"| {r['runtime']} | {r['device']} ({r['threads']} threads) | {r['precision']} | {r['resolution']} "
                     f"| {r['batch']} | {r['images_per_s']:.2f} | {r['s_per_batch']:.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['model_rss_mib']:.0f} | {gpu} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), action="append",
                        help="cpu (default); give --device cuda as well to add a GPU")
    parser.add_argument("--seconds", type=float, default=10.0, help="time each configuration at least this long")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"), action="append",
                        help="torch (default); give --runtime onnxruntime too for ONNX rows (CPU only)")
    parser.add_argument("--resolution", type=int, action="append", help=f"only these (default {RESOLUTIONS})")
    parser.add_argument("--batch", type=int, action="append", help=f"only these (default {BATCHES})")
    parser.add_argument("--no-export", dest="export", action="store_false", help="skip the export-size check")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*json.loads(args.worker))))
        return 0
    rows = []
    for runtime in args.runtime or ["torch"]:
        for device in ["cpu"] if runtime == "onnxruntime" else args.device or ["cpu"]:
            for precision in (("fp32", "bf16") if device == "cuda" else ("fp32",)):
                for resolution in args.resolution or RESOLUTIONS:
                    for batch in args.batch or BATCHES:
                        rows.append(measure_in_subprocess(resolution, batch, device, precision, args.seconds, runtime))
                        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print(table(rows))
    exports = {r["resolution"]: r["export_s"] for r in rows if r["export_s"] is not None}
    for resolution, seconds in sorted(exports.items()):
        print(f"\nONNX export at {resolution} (write_onnx: trace, convert, save, onnx.checker): {seconds:.1f} s")
    if args.export:
        sizes = export_sizes()
        print(f"\nExport at {sizes['resolution']} (paper widths): training checkpoint {sizes['training_mib']:.1f} MiB, "
              f"export {sizes['export_mib']:.1f} MiB, EMA weights alone {sizes['ema_mib']:.1f} MiB "
              f"(export/EMA = {sizes['export_mib'] / sizes['ema_mib']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
