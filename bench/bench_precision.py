"""How far bf16 (and fp16) autocast moves WGAN-GP's numbers away from fp32, with float64 as the truth.

For each preset and resolution: one batch of reals, latents and penalty mixing weights; the
trainer's losses (progan.train.losses) on networks built once in float64 and copied to fp32. Each
precision computes, the way the trainer does (G under autocast without grad for D's fakes):

- the per-sample input-gradient norms ||grad_mix D(mix)|| (the penalty's inner, double-backward
  quantity) and the gradient penalty itself;
- D's parameter gradient of the full critic loss (Wasserstein + penalty + drift), through the
  penalty's double backward;
- G's parameter gradient of -D(G(z)).

Relative error = ||x - x64|| / ||x64|| over everything (all parameters concatenated), so fp32's
row is the floor that rounding alone gives. "batch-to-batch" is the float64 gradients' relative
change when the same step sees another minibatch (flipped reals, other latents): the noise SGD
already lives with, against which a precision's error is small or not. "penalty near target" repeats the penalty with the
target set to the float64 mean norm: that is where a trained critic lives (norms close to 1),
and where (norm - target)^2 cancels most, so it is the worst case for a low-precision norm.

    .venv/bin/python bench/bench_precision.py                          # small + paper, CPU
    .venv/bin/python bench/bench_precision.py --presets small --resolutions 8 32 --batch 4
    python bench/bench_precision.py --device cuda --json out/precision.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progan.runtime.errors import CommandLineError  # noqa: E402
from progan.runtime.cli import choose_device  # noqa: E402
from progan.nets.config import ModelConfig  # noqa: E402
from progan.nets.layers import at_least_fp32, autocast  # noqa: E402
from progan.train.losses import discriminator_loss, generator_loss  # noqa: E402
from progan.nets.networks import Discriminator, Generator  # noqa: E402

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for p in module.parameters() if p.grad is not None])


def measure(G, D, reals, latents, mix, res: int, alpha: float, device: torch.device,
            dtype: torch.dtype, target: float = 1.0) -> dict[str, torch.Tensor]:
    """One precision's penalty, input-gradient norms and D and G parameter gradients."""
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    amp = None if dtype in (torch.float64, torch.float32) else dtype
    G = copy.deepcopy(G).to(param_dtype)
    D = copy.deepcopy(D).to(param_dtype)
    reals, latents, mix = reals.to(param_dtype), latents.to(param_dtype), mix.to(param_dtype)
    out = {}

    # The norms themselves (what the penalty squares), one extra pass outside the loss.
    mixed = torch.lerp(reals, reals.flip(0), mix.reshape(-1, 1, 1, 1)).requires_grad_(True)
    with autocast(device, amp):
        scores = at_least_fp32(D(mixed, res, alpha))
    (grad,) = torch.autograd.grad(scores.sum(), mixed)
    out["norms"] = torch.linalg.vector_norm(at_least_fp32(grad).flatten(1), dim=1).double()

    D.zero_grad(set_to_none=True)
    with torch.no_grad(), autocast(device, amp):
        fakes = G(latents, resolution=res, alpha=alpha)
    with autocast(device, amp):
        loss, parts = discriminator_loss(D, reals, fakes, res, alpha, gp_target=target, mix_weights=mix)
    loss.backward()
    out["penalty"] = parts["gradient_penalty"].double().reshape(1)
    out["grad_d"] = _grads(D)

    D.requires_grad_(False)
    with autocast(device, amp):
        scores = D(G(latents, resolution=res, alpha=alpha), resolution=res, alpha=alpha)
    generator_loss(scores.float()).backward()
    out["grad_g"] = _grads(G)
    return out


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.cpu() - ref.cpu()) / torch.linalg.vector_norm(ref.cpu()).clamp_min(1e-300))


def run_case(preset: str, res: int, batch: int, precisions: list[str], device: torch.device, seed: int) -> list[dict]:
    cfg = ModelConfig.preset(preset, res)
    torch.manual_seed(seed)
    G = Generator(cfg).double().to(device)
    D = Discriminator(cfg).double().to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    reals = (torch.rand(batch, cfg.num_channels, res, res, generator=gen, dtype=torch.float64) * 2 - 1).to(device)
    latents = torch.randn(batch, cfg.latent_size, generator=gen, dtype=torch.float64).to(device)
    mix = torch.rand(batch, generator=gen, dtype=torch.float64).to(device)
    alpha = 0.5 if res > 4 else 1.0  # mid-fade: both paths of the newest block in play

    ref = measure(G, D, reals, latents, mix, res, alpha, device, torch.float64)
    # The scale that matters: how much the gradients change from one minibatch to the next.
    other = [x[torch.randperm(batch, generator=gen)] for x in (reals.flip(3), latents.neg(), 1 - mix)]
    noise = measure(G, D, *other, res, alpha, device, torch.float64)
    near = float(ref["norms"].mean())
    ref_near = measure(G, D, reals, latents, mix, res, alpha, device, torch.float64, target=near)["penalty"]
    rows = []
    for name in precisions:
        got = measure(G, D, reals, latents, mix, res, alpha, device, DTYPES[name])
        got_near = measure(G, D, reals, latents, mix, res, alpha, device, DTYPES[name], target=near)["penalty"]
        rows.append({
            "preset": preset, "resolution": res, "batch": batch, "precision": name,
            "mean_norm_fp64": near,
            "norms": rel_err(got["norms"], ref["norms"]),
            "penalty": rel_err(got["penalty"], ref["penalty"]),
            "penalty_near_target": rel_err(got_near, ref_near),
            "grad_d": rel_err(got["grad_d"], ref["grad_d"]),
            "grad_g": rel_err(got["grad_g"], ref["grad_g"]),
            "grad_d_batch_noise": rel_err(noise["grad_d"], ref["grad_d"]),
            "grad_g_batch_noise": rel_err(noise["grad_g"], ref["grad_g"]),
            "finite": all(bool(torch.isfinite(v).all()) for v in got.values()),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| preset | res | batch | precision | mean norm | norms | penalty | penalty near target | D grads | G grads | batch-to-batch D / G |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['resolution']} | {r['batch']} | {r['precision']} | {r['mean_norm_fp64']:.3g} "
                     f"| {r['norms']:.1e} | {r['penalty']:.1e} | {r['penalty_near_target']:.1e} "
                     f"| {r['grad_d']:.1e} | {r['grad_g']:.1e} | {r['grad_d_batch_noise']:.2f} / {r['grad_g_batch_noise']:.2f} |" + ("" if r["finite"] else " NON-FINITE"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[8, 32, 128])
    p.add_argument("--paper-max-res", type=int, default=32,
                   help="skip paper rows above this resolution (float64 paper nets are slow on a CPU)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    try:
        device = choose_device(args.device)
    except CommandLineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for preset in args.presets:
        for res in args.resolutions:
            if preset == "paper" and res > args.paper_max_res:
                continue
            rows += run_case(preset, res, args.batch, args.precisions, device, args.seed)
    print(table(rows))
    if args.json:
        from progan.runtime.fileio import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.json), json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
