#!/usr/bin/env python3
"""Train a progressive GAN.

    python train.py --data DATA.lmdb --out checkpoints/RUN [--config paper|small|FILE.json] ...
    accelerate launch --multi_gpu --num_processes 8 train.py ...     # same flags
    python train.py --out checkpoints/RUN --resume auto                # continue a run

Run `python train.py --help` for every flag.
"""

from __future__ import annotations

from progan.runtime.signals import Interrupted, StopSignals, hold_stop_signals, pause_point, stop_signals_held

if __name__ == "__main__":
    hold_stop_signals()  # first: a Ctrl-C waits, pending, until main can answer it

import argparse
import os
import signal
import sys

from progan.runtime.cli import OneLineErrorParser, fail
from progan.runtime.elastic import lost_peer, release_process_group  # no torch here
from progan.runtime.errors import (EXIT_DIVERGED, EXIT_LOST_PEER, EXIT_PREEMPTED, EXIT_USAGE, EXIT_WRITE_FAILED, VERBOSE_ENV,
                                   CommandLineError, first_line)
from progan.train.config import MIXED_PRECISION_CHOICES  # no torch: the flags are read before torch's import


def _max_batch(text: str) -> int | str:
    """--max-batch-per-device: a positive number or auto."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or auto), got {value}")
    return value


def _path(text: str) -> str:
    """A path flag: never empty (an empty --out would train into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty value")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="train.py",
        description="Progressive growing of GANs (Karras et al. 2018) on WGAN-GP. Flags left out "
        "take the preset's value; when resuming they take the run's own.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--data", type=_path, help="LMDB made by `python -m data_prep build`")
    p.add_argument("--out", type=_path, help="run folder (config, stats.jsonl, sample grids, checkpoints)")
    p.add_argument("--resolution", type=int, help="final resolution (default: the database's largest)")
    p.add_argument("--config", type=_path, help="paper (default) | paper-8gpu | small | FILE.json (e.g. another run's config.json)")
    p.add_argument("--fade-kimg", type=float, help="thousands of images per fade-in")
    p.add_argument("--stable-kimg", type=float, help="thousands of images per stable phase")
    p.add_argument("--total-kimg", type=float, help="stop after this many thousand images (default: end of schedule)")
    p.add_argument("--batch", help="global batch sizes per resolution, e.g. 4:128,8:128,32:64")
    p.add_argument("--lr", help="learning rates per resolution, e.g. 1024:0.0015")
    p.add_argument("--base-lr", type=float, help="learning rate of resolutions not in --lr")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION_CHOICES,
                   help="autocast dtype (default auto: bf16 on GPUs that have it, else fp32; docs/gpus.md)")
    p.add_argument("--device", help="auto (default: the GPU when there is one) | cpu | cuda")
    p.add_argument("--seed", type=int, help="seed of all randomness (default 0)")
    p.add_argument("--resume", type=_path, help="auto (the run folder's latest checkpoint, if any) | PATH to a checkpoint")
    p.add_argument("--workers", type=int, help="data loader processes for levels not held in memory")
    p.add_argument("--max-batch-per-device", type=_max_batch,
                   help="split larger batches and accumulate gradients; auto: the largest that fits (CUDA)")
    p.add_argument("--no-mirror", dest="mirror", action="store_false", help="no horizontal flips of reals")
    p.add_argument("--conditional", choices=["auto", "on", "off"],
                   help="class-conditional model: auto (default: when the database has labels), on, off")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="CUDA: full fp32 matmuls and convolutions (default: TF32 tensor cores)")
    p.add_argument("--no-reset-optimizer", dest="reset_optimizer", action="store_false",
                   help="keep Adam state across phases (the paper resets it)")
    p.add_argument("--tick-kimg", type=float, help="log line and stats every this many kimg")
    p.add_argument("--snapshot-ticks", type=int, help="sample grid and checkpoint every this many ticks")
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint at least this often")
    p.add_argument("--keep-checkpoints", type=int, help="how many checkpoints to keep")
    p.add_argument("--metrics", help="comma list of swd, msssim, fid, evaluated during training")
    p.add_argument("--metric-kimg", type=float, help="evaluate --metrics every this many kimg")
    p.add_argument("--metric-images", type=int, help="generated images per evaluation")
    p.add_argument("--inception", type=_path, help="Inception-v3 weights file for --metrics fid")
    p.add_argument("--log-with", metavar="LIST",
                   help="experiment trackers through accelerate: auto (default: tensorboard when installed), "
                   "none, or a comma list such as tensorboard,wandb,mlflow")
    p.add_argument("--dry-run", action="store_true", help="validate, print the config and schedule, and exit")
    p.add_argument("--verbose", action="store_true", help="never shorten error messages")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 finished, 2 bad input or run folder in use, 3 pre-empted (SIGTERM/SIGINT:
    checkpoint saved, or stopped during set-up with nothing to save yet), 4 run folder not
    writable (disk full), 5 another process of the group died, 6 training diverged (a whole tick of
    non-finite steps; the last good checkpoint kept); 1 is an unexpected error."""
    stop = StopSignals()  # first: a signal at any later moment is one line, never a traceback
    installed = stop.install()
    try:
        pause_point("start")
        return _main(argv, stop)
    except Interrupted as exc:
        return fail(f"stopped by {exc.signal_name} during set-up, before training began: nothing to save "
                    f"yet, nothing lost; rerun the same command", prog="train.py", code=EXIT_PREEMPTED)
    finally:
        if installed:
            stop.uninstall()


def _main(argv: list[str] | None, stop: StopSignals) -> int:
    args = vars(build_parser().parse_args(argv))  # first: --help and a bad flag import no torch
    if args.pop("verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    with stop_signals_held():  # torch's import: a signal acts once it is done (progan.runtime.signals)
        from progan.data.format import DatasetError
        from progan.runtime.diskspace import WriteFailed
        from progan.train.loop import TrainingDiverged
        import torch._dynamo  # noqa: F401 - imported by the first optimizer anyway: here, under the deferral
    try:
        return run(args, stop)
    except TrainingDiverged as exc:
        return fail(str(exc), prog="train.py", code=EXIT_DIVERGED)
    except CommandLineError as exc:
        return fail(str(exc), prog="train.py", code=EXIT_USAGE)
    except DatasetError as exc:  # a damaged record met in training: only the process that read it knows
        return fail(str(exc), prog="train.py", code=EXIT_USAGE, every_process=True)
    except WriteFailed as exc:
        return fail(str(exc), prog="train.py", code=EXIT_WRITE_FAILED)
    except RuntimeError as exc:
        if not lost_peer(exc):
            raise
        # Said by every surviving rank: the main process may be the one that died.
        rank = os.environ.get("RANK", "0")
        print(f"train.py: error: process {rank} lost another process of the run ({first_line(exc)}); the "
              f"last checkpoint is intact: torchrun --max-restarts restarts the group, else rerun with "
              f"--resume auto", file=sys.stderr)
        return EXIT_LOST_PEER


def run(args: dict, stop: StopSignals | None = None) -> int:
    from progan.train.setup import prepare_run  # torch and the rest: after the flags, under held signals (_main)

    plan = prepare_run(args)
    if args.get("dry_run"):
        print(plan.describe())
        return 0
    return plan.train(stop)


RELEASE_TIMEOUT_S = 60


def release_distributed(code: int) -> None:
    """Free the process group before the interpreter's exit on every path (see
    progan.runtime.elastic.release_process_group): otherwise gloo can turn any exit code into SIGABRT.
    Freeing it joins its threads; should one be stuck on a peer that hangs (not dead: a dead
    peer ends its collective), the process exits with `code` after RELEASE_TIMEOUT_S instead."""
    dist = sys.modules.get("torch.distributed")  # never imported here: a Ctrl-C may have cut torch's import short
    try:
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return  # no group, no threads (the normal end of a run has freed its own already)
    except AttributeError:  # a half-imported torch
        return
    import threading

    def give_up() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    watchdog = threading.Timer(RELEASE_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        release_process_group()
    finally:
        watchdog.cancel()


if __name__ == "__main__":
    code = 1  # an unexpected error (its traceback is printed)
    try:
        code = main()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the run is over and its exit code stands: a late
            signal.signal(sig, signal.SIG_IGN)        # signal during shutdown changes nothing
        release_distributed(code)
    sys.exit(code)
