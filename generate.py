#!/usr/bin/env python3
"""Images from a trained progressive GAN: one PNG per seed, grids, looping latent walks.

    python generate.py CHECKPOINT --out DIR --seeds 0-63              # seed0000.png ... seed0063.png
    python generate.py CHECKPOINT --out DIR --grid 8x8 --seed 100     # grid.png of seeds 100..163
    python generate.py CHECKPOINT --out DIR --walk --frames 240       # walk-seed0000.gif
    python generate.py CHECKPOINT --out DIR --seeds 0-7 --class cat   # conditional: seed0000-cat.png ...
    python generate.py CHECKPOINT --out DIR --grid 1x8 --class all    # grid-all.png: a row per class
    python generate.py CHECKPOINT --out DIR --walk --class cat:dog    # walk-seed0000-cat-dog.gif
    python generate.py export CHECKPOINT OUT.pt                       # generator-only file to share
    python generate.py export CHECKPOINT OUT.safetensors              # ... as safetensors (no pickle)
    python generate.py export CHECKPOINT OUT.onnx                     # one stage, for onnxruntime
    python generate.py timelapse RUN --out growth.webp                # the run's sample grids as one animation
    python generate.py info CHECKPOINT                                # stage, config and class names of a file

`sample` is the default subcommand: `generate.py CHECKPOINT ...` is `generate.py sample CHECKPOINT ...`.
CHECKPOINT is a run folder (its latest checkpoint), a training checkpoint or an exported
generator; the network is rebuilt from the config stored inside it. `generate.py --help` lists the
subcommands; `generate.py SUBCOMMAND --help` tells each one's flags.
"""

from __future__ import annotations

from progan.runtime.signals import hold_stop_signals

if __name__ == "__main__":
    hold_stop_signals()  # first: a Ctrl-C waits, pending, until main can answer it

import argparse
import sys

from progan.runtime.diskspace import WriteFailed
from progan.runtime.errors import EXIT_WRITE_FAILED, CommandLineError
from progan.runtime.cli import OneLineErrorParser, fail, run_command

PROG = "generate.py"
DEFAULT_NUM_IMAGES = 16  # sampled when no seeds, --num or --grid say how many


SUBCOMMANDS = ("sample", "export", "timelapse", "info")


def build_parser() -> argparse.ArgumentParser:
    """generate.py's four subcommands. `sample` is the default: `generate.py CHECKPOINT ...` is
    `generate.py sample CHECKPOINT ...` (main puts the word in)."""
    parser = OneLineErrorParser(
        prog=PROG,
        description="Images from a trained ProGAN, and its files. Without a subcommand: sample.",
        epilog=f"{PROG} SUBCOMMAND --help tells each one's flags.",
    )
    parser.set_defaults(prog=PROG, default_num=DEFAULT_NUM_IMAGES)  # for the commands' messages and defaults
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=OneLineErrorParser)
    add_sample_parser(commands)
    add_export_parser(commands)
    add_timelapse_parser(commands)
    add_info_parser(commands)
    return parser


def add_sample_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "sample", prog=f"{PROG} sample", help="PNGs, grids and latent walks from seeds (the default subcommand)",
        description="Sample a trained ProGAN. CHECKPOINT is a run folder (its latest checkpoint), a "
        "training checkpoint or an exported generator. The latent of seed S is drawn on the CPU from S "
        "alone, so a seed gives the same image on any device and batch size. "
        f"To write a generator-only file to share: {PROG} export CHECKPOINT OUT.pt|.safetensors|.onnx; "
        f"a run's growth as one animation: {PROG} timelapse RUN --out growth.webp; what a file holds "
        f"(stage, config, class names): {PROG} info CHECKPOINT",
        epilog="Seeds: --seeds 0-63 | --seeds 3,7,42 | --num N --seed S (seeds S..S+N-1). Without them: "
        f"{DEFAULT_NUM_IMAGES} images, the grid's ROWS*COLS, or 1 walk, from --seed (default 0). "
        "Outputs: one seedNNNN.png per seed; with --grid only grid.png (the same seeds without --grid "
        "give its cells as separate files); with --walk one walk-seedNNNN.gif/.webp per seed, or with "
        "--grid too one walk-grid.gif/.webp whose cell i walks from seed i. Existing files are replaced. "
        "Class-conditional models: every sample gets the --class asked for, named in the file names "
        "(seed0042-cat.png, grid-cat.png, walk-seed0000-cat-dog.gif); without --class seed S gets class "
        "S mod K (K classes), so a seed always gives the same image and consecutive seeds cycle through "
        "the classes, and the names are as for an unconditional model.",
    )
    p.set_defaults(handler="sample")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run folder, training checkpoint or exported generator")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", metavar="LIST", help="seeds and ranges: 0-63, 3,7,42 or 0-3,10")
    which.add_argument("--num", type=int, metavar="N", help="N consecutive seeds starting at --seed")
    p.add_argument("--seed", type=int, metavar="S", help="first seed for --num or the defaults (default 0)")
    p.add_argument("--grid", metavar="RxC", help="one ROWSxCOLS grid of the first ROWS*COLS seeds, e.g. 8x8")
    p.add_argument("--walk", action="store_true", help="a looping latent walk animation instead of still images")
    p.add_argument("--frames", type=int, default=240, metavar="N", help="walk length in frames (default 240)")
    p.add_argument("--fps", type=float, default=30.0, help="walk frames per second (default 30; GIF at most 50)")
    p.add_argument("--smoothing", type=float, default=1.0, metavar="SECONDS",
                   help="walk smoothness: Gaussian blur of the latents over time, in seconds "
                   "(sigma = smoothing*fps frames; default 1.0 as in the paper; 0 = jumps)")
    p.add_argument("--format", choices=("gif", "webp"), default="gif", help="walk file format (default gif)")
    p.add_argument("--class", dest="class_", metavar="CLASS",
                   help="class-conditional models: the class of every sample, by name or index (cat, 3); "
                   "with --grid, 'all' gives one row per class (the same seeds in every row, the grid's "
                   "columns wide); with --walk, a path NAME:NAME[:...] (cat:dog) moves the label linearly "
                   "from class to class and back to the first while the latents walk. Default: seed S "
                   "gets class S mod K")
    p.add_argument("--resolution", type=int, metavar="R",
                   help="sample the stable output of a lower trained stage (default: where training stood, "
                   "with its fade weight)")
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="use the raw generator, not the EMA one (training checkpoints only)")
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda if available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 (default) or bf16 autocast (faster on recent GPUs; images differ slightly)")
    return p


def add_export_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "export", prog=f"{PROG} export", help="a generator-only file to share: .pt, .safetensors or .onnx",
        description="Write a generator-only file: the EMA weights, the model config and where training "
        "stood, in the format OUT's extension names. .pt and .safetensors are all `generate.py` and "
        "`progan.load_generator` need and load safely (weights only; safetensors without pickle at all). "
        ".onnx is the generator at one stage for onnxruntime: input latents float32 [batch, latent] (and, "
        "for a class-conditional model, labels float32 [batch, K]: one-hot rows in class_names order), "
        "output images float32 [batch, C, H, W] in [-1, 1]; it needs pip install -e \".[export]\". "
        "Every format carries the model config, class names included.",
    )
    p.set_defaults(handler="export")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run folder, training checkpoint or exported generator")
    p.add_argument("out", metavar="OUT", help="file to write: .pt, .safetensors or .onnx (replaced atomically if it exists)")
    p.add_argument("--resolution", type=int, metavar="R",
                   help=".onnx only: the stage to export (default: where training stood; a lower trained "
                   "resolution gives its stable output)")
    return p


def add_timelapse_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "timelapse", prog=f"{PROG} timelapse", help="a run's sample grids as one animation",
        description="Turn a run's fixed-latent sample grids (samples-<images>.png) into one looping "
        "animation: every frame upscaled (nearest) to the final grid's size and labelled with its "
        "resolution, fade weight and kimg; the last frame is held for 2 s. Pillow only, no ffmpeg.",
    )
    p.set_defaults(handler="timelapse")
    p.add_argument("run", metavar="RUN", help="run folder (what train.py --out wrote)")
    p.add_argument("--out", required=True, metavar="FILE", help="growth.webp or growth.gif (replaced atomically)")
    p.add_argument("--fps", type=float, default=10.0, help="snapshots per second (default 10; GIF at most 50)")
    p.add_argument("--size", type=int, metavar="PX", help="frame size: its long side in pixels (default: the final grid's size)")
    return p


def add_info_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "info", prog=f"{PROG} info", help="what a model file holds: stage, config, class names",
        description="Print what a generator file holds: its kind, the stage training had reached, the "
        "model config and, for a class-conditional model, the class names (index=name, the labels' order). "
        "Reads run folders, training checkpoints, .pt, .safetensors and .onnx exports; writes nothing.",
    )
    p.set_defaults(handler="info")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run folder, training checkpoint or exported generator")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not (argv and argv[0] in (*SUBCOMMANDS, "-h", "--help")):
        argv = ["sample", *argv]  # the default subcommand: generate.py CHECKPOINT ... samples
    prog = f"{PROG} {argv[0]}" if argv[0] in SUBCOMMANDS else PROG
    try:
        args = build_parser().parse_args(argv)
        # Imported once the flags are read: --help and a bad flag answer without importing torch.
        from progan.generator import commands
        from progan.train.timelapse import write_timelapse

        if args.handler == "timelapse":
            return run_timelapse(args, write_timelapse, commands.writing_file)
        return getattr(commands, f"run_{args.handler}")(args)
    except CommandLineError as exc:
        return fail(str(exc), prog=prog)
    except WriteFailed as exc:
        return fail(str(exc), prog=prog, code=EXIT_WRITE_FAILED)
    except KeyboardInterrupt:
        return fail("interrupted (files already written are complete; none is half-written)", prog=prog, code=130)


# -- timelapse ------------------------------------------------------------------------------
def run_timelapse(args: argparse.Namespace, write_timelapse, writing_file) -> int:
    """The timelapse reads a training run (progan.train), so it runs here, not in progan.generator."""
    with writing_file(args.out):  # TimelapseError and the animation format checks are ValueErrors
        path, count = write_timelapse(args.run, args.out, fps=args.fps, size=args.size)
    print(f"wrote {path}: {count} snapshots of {args.run}")
    return 0


def _load_main():
    """run_command's loader: torch imported while a Ctrl-C waits (progan.runtime.signals.hold_stop_signals);
    --help stays quick."""
    if not {"-h", "--help"} & set(sys.argv[1:]):
        import torch  # noqa: F401
    return main


if __name__ == "__main__":
    run_command(_load_main, "generate.py")
