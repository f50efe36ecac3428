"""Benchmark one full ProGAN training iteration per resolution and print a markdown table.

One iteration = D step (G forward without grad; D on reals and fakes; gradient penalty with
create_graph; drift; backward; Adam) + G step (G forward, D forward, backward into G only;
Adam) + generator EMA update. Adam lr 1e-3, betas (0, 0.99), eps 1e-8 as the paper.

Achieved GFLOP/s counts the FLOPs of one iteration with torch.utils.flop_counter (on the meta
device, free) and divides by the measured time; "unfused-graph GFLOP/s" divides the FLOPs of
the same iteration without the fused resampling convs (what a port with separate upsample/pool
and 3x3 convs executes) by the same time, for comparison with such ports. Beside them the
machine's own ceilings, measured just before and after each row's timings (the better is kept):
a 4096^2 fp32 matmul, and a 3x3 convolution forward + both gradients at the dominant shape of
that resolution ([batch, C(R), R, R] -> C(R), the better of NCHW and channels_last).

    .venv/bin/python bench/bench_step.py                        # paper + small, 4..256, batch 16
    .venv/bin/python bench/bench_step.py --presets small --resolutions 4 8 16 --iters 5
    .venv/bin/python bench/bench_step.py --compare channels_last   # A/B one option, interleaved
    .venv/bin/python bench/bench_step.py --presets small --resolutions 32 --aspects 1:1 3:4  # non-square rows
    python bench/bench_step.py --device cuda --precision bf16 --resolutions 64 128 256 512 1024

On a GPU the timings synchronize the device; bf16 runs the networks under torch.autocast (as the
trainer's --mixed-precision bf16) and the ceilings are then measured in bf16 too.

Timings on a shared machine are noisy: every variant is timed interleaved with the others and
the table shows the median and the best iteration; GFLOP/s use the best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progan.nets import networks  # noqa: E402

from progan.nets import layers  # noqa: E402
from progan.shapes import ASPECTS  # noqa: E402
from progan.nets.config import ModelConfig  # noqa: E402
from progan.train import step as progan_step  # noqa: E402
from progan.train.ema import make_ema  # noqa: E402
from progan.train.gradsync import GradientSync, LossScale  # noqa: E402
from progan.nets.networks import Discriminator, Generator  # noqa: E402
from progan.train.step import StepInputs, StepModels, StepSettings, StepStats, step_inputs  # noqa: E402


# --- device and precision ------------------------------------------------------------------

DEVICE = torch.device("cpu")
AUTOCAST_DTYPE: torch.dtype | None = None  # None: fp32


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def autocast():
    return layers.autocast(DEVICE, AUTOCAST_DTYPE)


# --- the training iteration ---------------------------------------------------------------

def train_step(s: "Setup", resolution: int, alpha: float, batch_real_fake: bool = True) -> None:
    """The trainer's own step (progan.train.step.run_step): D step with penalty and drift, G step, EMA,
    with its random inputs drawn on the device for step s.count, mirroring and fade included.

    D_penalty: the critic for the gradient penalty when D is compiled (compiled graphs have no
    double backward); the eager module sharing D's parameters.
    """
    n = s.real.shape[0]
    if s.real.device.type == "meta":  # FLOP counting: no generator on the meta device
        z = torch.empty(n, s.G.latent_size, device="meta")
        inputs = StepInputs(z, torch.empty(n, device="meta"), torch.empty(n, dtype=torch.bool, device="meta"), z)
    else:
        inputs = step_inputs(0, s.count, n, s.G.latent_size, slice(None), s.real.device,
                             class_frequencies=s.class_frequencies)
    if s.real_labels is not None and s.real.device.type == "meta":
        inputs.labels_g = s.real_labels
    models = StepModels(s.G_fwd, s.D_fwd, s.G_ema, s.opt_g, s.opt_d, LossScale(False), LossScale(False),
                        GradientSync(1), D_penalty=s.D if s.D_fwd is not s.D else None)
    settings = StepSettings(autocast_dtype=AUTOCAST_DTYPE, batch_real_fake=batch_real_fake)
    progan_step.run_step(models, settings, s.real, inputs, resolution, alpha, [slice(None)], s.stats,
                           real_labels=s.real_labels)
    s.count += 1


# --- variants (the options that were tried; defaults are what the library keeps) ----------------

@dataclass(frozen=True)
class Variant:
    name: str = "default"
    channels_last_min_res: int = networks.CHANNELS_LAST_MIN_RES  # blocks from here up: NHWC
    fused_min_res: int = networks.FUSED_MIN_RES
    inplace_act: bool = True
    adam: str = "fused"  # or "foreach"
    batch_real_fake: bool = True
    compile: bool = False  # torch.compile G and D (D's penalty pass stays eager)
    scale_smaller: bool = True  # equalized-LR scale on the smaller of input and weight
    stock_conv: bool = False  # F.conv2d's own double backward instead of progan.nets.ops (image-sized kernels)
    classes: int = 0  # > 0: a class-conditional model with this many classes (labels, class terms)

    def describe(self) -> str:
        return (f"channels_last>={self.channels_last_min_res}, fused_resample>={self.fused_min_res}, "
                f"inplace_act={self.inplace_act}, adam={self.adam}, batch_real_fake={self.batch_real_fake}, "
                f"compile={self.compile}, scale_smaller={self.scale_smaller}, stock_conv={self.stock_conv}, "
                f"classes={self.classes}")


COMPARISONS = {
    "channels_last": [("cl>=32", dict(channels_last_min_res=32)), ("cl>=64", dict(channels_last_min_res=64)),
                      ("cl-all", dict(channels_last_min_res=4)), ("nchw", dict(channels_last_min_res=10**9))],
    "fused": [("fused>=16", dict(fused_min_res=16)), ("fused>=8", dict(fused_min_res=8)),
              ("unfused", dict(fused_min_res=10**9))],
    "inplace": [("inplace", dict(inplace_act=True)), ("out-of-place", dict(inplace_act=False))],
    "adam": [("foreach", dict(adam="foreach")), ("fused", dict(adam="fused"))],
    "batch_real_fake": [("batched", dict(batch_real_fake=True)), ("separate", dict(batch_real_fake=False))],
    "compile": [("eager", dict(compile=False)), ("compiled", dict(compile=True))],
    "scale": [("scale-smaller", dict(scale_smaller=True)), ("scale-weight", dict(scale_smaller=False))],
    "conv": [("progan.nets.ops", dict(stock_conv=False)), ("stock-conv", dict(stock_conv=True))],
    "conditional": [("unconditional", dict(classes=0)), ("10 classes", dict(classes=10))],
    # Every option off: what a straightforward port executes (NCHW, separate upsample/pool and
    # 3x3 convs, out-of-place activations, reals and fakes in two D passes, default foreach
    # Adam, equalized-LR scale multiplied into the weight on every call).
    "port": [("ours", {}),
             ("port-style", dict(channels_last_min_res=10**9, fused_min_res=10**9, inplace_act=False,
                                 adam="foreach", batch_real_fake=False, scale_smaller=False))],
}


@contextmanager
def library_overrides(v: Variant):
    """Out-of-place leaky ReLU, the equalized-LR scale always on the weight (the paper's code), or
    PyTorch's own convolutions, for the A/B comparisons; the library's choices otherwise."""
    saved_act, saved_scaled, saved_ops = networks._lrelu, layers._Equalized._scaled, layers.ops
    if not v.inplace_act:
        networks._lrelu = lambda x, slope: F.leaky_relu(x, slope)
    if not v.scale_smaller:
        layers._Equalized._scaled = lambda self, x, weight: (x, weight * self.scale)
    if v.stock_conv:
        layers.ops = SimpleNamespace(conv2d=F.conv2d, conv_transpose2d=F.conv_transpose2d)
    try:
        yield
    finally:
        networks._lrelu, layers._Equalized._scaled, layers.ops = saved_act, saved_scaled, saved_ops


def apply_variant(G, D, v: Variant) -> None:
    """Override the library's per-block choices (fused resampling, memory format)."""
    fmt = lambda res: torch.channels_last if res >= v.channels_last_min_res else torch.contiguous_format  # noqa: E731
    for blocks in (G.blocks, D.blocks, D.from_rgb):
        for res, block in blocks.items():
            for m in block.modules():
                if hasattr(m, "fused"):
                    m.fused = int(res) >= v.fused_min_res
            if hasattr(block, "memory_format"):
                block.memory_format = fmt(int(res))


@dataclass
class Setup:
    G: Generator
    D: Discriminator
    G_ema: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    real: torch.Tensor      # uint8, as the trainer's reals
    G_fwd: torch.nn.Module  # G or torch.compile(G)
    D_fwd: torch.nn.Module
    stats: StepStats
    count: int = 0          # steps taken (the seed counter of the step's random inputs)
    real_labels: torch.Tensor | None = None        # conditional variants: the reals' classes
    class_frequencies: torch.Tensor | None = None  # ... and the G step's class weights


def build(cfg: ModelConfig, batch: int, device: torch.device | str, v: Variant, seed: int = 0) -> Setup:
    if v.classes:
        cfg = replace(cfg, class_names=tuple(f"class{i}" for i in range(v.classes)))
    torch.manual_seed(seed)
    with torch.device(device):
        G, D = Generator(cfg), Discriminator(cfg)
        apply_variant(G, D, v)
        G_ema = make_ema(G)
        width, height = cfg.level_size(cfg.resolution)
        real = torch.randint(0, 256, (batch, cfg.num_channels, height, width), dtype=torch.uint8)
    kw = dict(lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    kw["fused" if v.adam == "fused" else "foreach"] = True
    G_fwd, D_fwd = (torch.compile(G), torch.compile(D)) if v.compile else (G, D)
    setup = Setup(G, D, G_ema, torch.optim.Adam(G.parameters(), **kw),
                  torch.optim.Adam(D.parameters(), **kw), real, G_fwd, D_fwd, StepStats(device))
    if v.classes:
        setup.real_labels = torch.arange(batch, device=device) % v.classes
        if torch.device(device).type != "meta":
            setup.class_frequencies = torch.ones(v.classes, device=device)
    return setup


def run_step(s: Setup, res: int, v: Variant) -> None:
    with library_overrides(v):
        train_step(s, res, 1.0, v.batch_real_fake)


# --- FLOPs and ceilings -------------------------------------------------------------------

class _NoModuleTracking:
    """FlopCounterMode's module tracker breaks torch.autograd.grad (the penalty); we only need
    the global count."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(cfg: ModelConfig, batch: int, v: Variant) -> int:
    s = build(cfg, batch, "meta", replace(v, adam="foreach", compile=False))
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        run_step(s, cfg.resolution, v)
    return counter.get_total_flops()


def best_time(fn, repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def ceiling_dtype() -> torch.dtype:
    return AUTOCAST_DTYPE or torch.float32


def matmul_ceiling(repeats: int = 5, n: int = 4096) -> float:
    if DEVICE.type == "cuda":
        n, repeats = 8192, 20
    a, b = (torch.randn(n, n, device=DEVICE, dtype=ceiling_dtype()) for _ in range(2))
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def conv_ceiling(batch: int, channels: int, res: int, repeats: int) -> float:
    """Best GFLOP/s of a 3x3 conv forward + input and weight gradients, NCHW or channels_last."""
    flops = 3 * 2 * batch * res * res * channels * channels * 9
    best = 0.0
    for fmt in (torch.contiguous_format, torch.channels_last):
        kw = dict(device=DEVICE, dtype=ceiling_dtype())
        x = torch.randn(batch, channels, res, res, **kw).to(memory_format=fmt).requires_grad_()
        w = torch.randn(channels, channels, 3, 3, **kw).to(memory_format=fmt).requires_grad_()
        grad = torch.randn(batch, channels, res, res, **kw).to(memory_format=fmt)

        def step():
            torch.autograd.grad(F.conv2d(x, w, padding=1), (x, w), grad)
        best = max(best, flops / best_time(step, repeats) / 1e9)
    return best


# --- driver -------------------------------------------------------------------------------

def time_variants(cfg: ModelConfig, batch: int, variants: list[Variant], iters: int) -> dict[str, list[float]]:
    """Per-iteration seconds of each variant, interleaved round by round against drift."""
    setups = {v.name: build(cfg, batch, DEVICE, v) for v in variants}
    for v in variants:  # warm-up: allocator, oneDNN primitive caches / cuDNN autotuning
        for _ in range(1 if DEVICE.type == "cpu" else 3):
            run_step(setups[v.name], cfg.resolution, v)
    sync()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(iters):
        for v in variants:
            t0 = time.perf_counter()
            run_step(setups[v.name], cfg.resolution, v)
            sync()
            times[v.name].append(time.perf_counter() - t0)
    return times


def profile_shares(cfg: ModelConfig, batch: int, v: Variant, top: int = 6) -> str:
    """Where one iteration's time goes: the ops with the largest self time, as shares."""
    s = build(cfg, batch, DEVICE, v)
    run_step(s, cfg.resolution, v)  # warm-up
    with torch.profiler.profile() as prof:
        for _ in range(2):
            run_step(s, cfg.resolution, v)
        sync()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    attr = "self_device_time_total" if DEVICE.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return ", ".join(f"{e.key} {100 * getattr(e, attr) / total:.0f}%" for e in events[:top])


def default_iters(res: int, preset: str) -> int:
    if DEVICE.type == "cuda":
        return 20
    heavy = res * res * (16 if preset == "paper" else 1)
    return 5 if heavy <= 16 * 32 * 32 else 3 if heavy <= 16 * 64 * 64 else 2


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["paper", "small"], choices=["paper", "small"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--aspects", nargs="+", default=["1:1"], choices=list(ASPECTS),
                   help="width:height of the models (default 1:1); the conv ceiling stays square")
    p.add_argument("--iters", type=int, default=0, help="timed iterations per variant (0: by size)")
    p.add_argument("--compare", choices=sorted(COMPARISONS), help="A/B one option instead of the default")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--profile", action="store_true",
                   help="after the table, the ops taking the most time at each row (torch.profiler)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: networks under torch.autocast, as the trainer's --mixed-precision bf16")
    args = p.parse_args(argv)
    global DEVICE, AUTOCAST_DTYPE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is visible to torch {torch.__version__}")
    if DEVICE.type == "cuda":
        torch.backends.cudnn.benchmark = True
    AUTOCAST_DTYPE = torch.bfloat16 if args.precision == "bf16" else None
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.compare:
        variants = [Variant(name=name, **kw) for name, kw in COMPARISONS[args.compare]]
    else:
        variants = [Variant()]
    where = (torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"# torch {torch.__version__}, {where}, batch {args.batch}, stable phase (alpha 1), "
          f"{args.precision}; load average at start {os.getloadavg()[0]:.2f}")
    for v in variants:
        print(f"# variant {v.name}: {v.describe()}")
    n = 8192 if DEVICE.type == "cuda" else 4096
    print(f"# ceilings: a {n}^2 {args.precision} matmul and the 3x3 conv in {args.precision}, each measured just"
          " before and just after that row's timings; the better of the two is shown\n")
    header = ("| preset | res | variant | GFLOP/iter | s/iter median | s/iter best | img/s | GFLOP/s "
              "| unfused-graph GFLOP/s | conv3x3 ceiling | % conv ceiling | matmul ceiling | % matmul ceiling |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    profiles = []
    for preset, aspect in [(preset, aspect) for preset in args.presets for aspect in args.aspects]:
        label = preset if aspect == "1:1" else f"{preset} {aspect}"
        for res in args.resolutions:
            cfg = ModelConfig.preset(preset, res, aspect)
            iters = args.iters or default_iters(res, preset)
            conv_repeats = 3 if res <= 64 else 2
            ceiling = conv_ceiling(args.batch, cfg.channels(res), res, conv_repeats)
            mm = matmul_ceiling()
            times = time_variants(cfg, args.batch, variants, iters)
            if args.profile:
                profiles.append((label, res, profile_shares(cfg, args.batch, variants[0])))
            ceiling = max(ceiling, conv_ceiling(args.batch, cfg.channels(res), res, conv_repeats))
            mm = max(mm, matmul_ceiling())
            # FLOPs of the same iteration without fused resampling convs (upsample + 3x3 conv,
            # 3x3 conv + pool): what a straightforward port executes for the same result.
            unfused_gflop = count_flops(cfg, args.batch, replace(variants[0], fused_min_res=10**9)) / 1e9
            for v in variants:
                gflop = count_flops(cfg, args.batch, v) / 1e9
                best, median = min(times[v.name]), statistics.median(times[v.name])
                rate = gflop / best
                print(f"| {label} | {res} | {v.name} | {gflop:.1f} | {median:.3f} | {best:.3f} | "
                      f"{args.batch / best:.1f} | {rate:.0f} | {unfused_gflop / best:.0f} | {ceiling:.0f} | "
                      f"{100 * rate / ceiling:.0f}% | {mm:.0f} | {100 * rate / mm:.0f}% |", flush=True)
    for preset, res, shares in profiles:
        print(f"# profile {preset} {res}: {shares}")
    print(f"\n# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
