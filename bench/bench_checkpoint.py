"""What the checkpoint checksums cost at paper widths: CRC-32 of every tensor against torch.save.

    .venv/bin/python bench/bench_checkpoint.py [--resolution 1024] [--repeats 3]

Builds G, D (paper preset), an EMA copy of G and both Adam optimizers with their moments filled
(what a training checkpoint holds), then times progan.generator.fileformat.checksums (run at every save
and every load), the whole save (save_training_checkpoint: checksums, torch.save, fsync, rename)
and the whole load (load_checkpoint: torch.load and the check). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from progan.generator import checkpoints  # noqa: E402
from progan.generator import fileformat
from progan.nets.config import ModelConfig  # noqa: E402
from progan.nets.networks import Discriminator, Generator  # noqa: E402


def training_state(resolution: int) -> dict:
    model = ModelConfig.preset("paper", resolution)
    G, D = Generator(model), Discriminator(model)
    state = {"images_shown": 1, "model_config": model.to_dict(), "generator": G.state_dict(),
             "discriminator": D.state_dict(), "generator_ema": copy.deepcopy(G).state_dict()}
    for name, net in (("optimizer_g", G), ("optimizer_d", D)):
        opt = torch.optim.Adam(net.parameters())
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        opt.step()  # fills exp_avg and exp_avg_sq
        state[name] = opt.state_dict()
    return state


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    state = training_state(args.resolution)
    mib = checkpoints.state_nbytes(state) / 2**20
    crc = best_of(lambda: fileformat.checksums(state), args.repeats)
    with tempfile.TemporaryDirectory(dir=".") as folder:
        save = best_of(lambda: checkpoints.save_training_checkpoint(folder, state, keep=1), args.repeats)
        path = checkpoints.find_latest_checkpoint(folder)
        load = best_of(lambda: checkpoints.load_checkpoint(path), args.repeats)
        plain = best_of(lambda: torch.load(path, weights_only=True), args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, paper preset at {args.resolution}, "
          f"best of {args.repeats}\n")
    print("| tensors MiB | checksums s | checksums MiB/s | save s (with checksums) | load s (checked) | torch.load s |")
    print("|---|---|---|---|---|---|")
    print(f"| {mib:.0f} | {crc:.2f} | {mib / crc:.0f} | {save:.2f} | {load:.2f} | {plain:.2f} |")


if __name__ == "__main__":
    main()
