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
import contextlib
import sys
import tempfile
from pathlib import Path

from progan.runtime.errors import CommandLineError
from progan.runtime.cli import OneLineErrorParser, choose_device, fail, run_command

PROG = "generate.py"
ALL_CLASSES = "all"  # --class all (progan.generator.sampling.ALL_CLASSES; not imported, to keep --help fast)
DEFAULT_NUM_IMAGES = 16
FROZEN_WALK_FRACTION = 4  # a blur wider than frames/4 leaves under a third of the slowest motion


SUBCOMMANDS = ("sample", "export", "timelapse", "info")


def build_parser() -> argparse.ArgumentParser:
    """generate.py's four subcommands. `sample` is the default: `generate.py CHECKPOINT ...` is
    `generate.py sample CHECKPOINT ...` (main puts the word in)."""
    parser = OneLineErrorParser(
        prog=PROG,
        description="Images from a trained ProGAN, and its files. Without a subcommand: sample.",
        epilog=f"{PROG} SUBCOMMAND --help tells each one's flags.",
    )
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
    p.set_defaults(handler=run_sampling)
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
    p.set_defaults(handler=run_export)
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
    p.set_defaults(handler=run_timelapse)
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
    p.set_defaults(handler=run_info)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run folder, training checkpoint or exported generator")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not (argv and argv[0] in (*SUBCOMMANDS, "-h", "--help")):
        argv = ["sample", *argv]  # the default subcommand: generate.py CHECKPOINT ... samples
    prog = f"{PROG} {argv[0]}" if argv[0] in SUBCOMMANDS else PROG
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except CommandLineError as exc:
        return fail(str(exc), prog=prog)
    except KeyboardInterrupt:
        return fail("interrupted (files already written are complete; none is half-written)", prog=prog, code=130)


# -- export ---------------------------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    from progan.generator.export import export_file

    with _writing_file(args.out):  # CheckpointError is a ValueError
        path = export_file(args.checkpoint, args.out, resolution=args.resolution)
    print(f"exported the EMA generator of {args.checkpoint} to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# -- info -----------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    import json

    from progan.generator.fileformat import CheckpointError
    from progan.generator.loading import load_generator
    from progan.nets.config import ModelConfig

    try:
        if Path(args.checkpoint).suffix.lower() == ".onnx":
            from progan.generator.onnx_file import onnx_session

            session = onnx_session(args.checkpoint)
            meta = session.get_modelmeta().custom_metadata_map
            config = ModelConfig.from_json(meta["model_config"])
            kind = f"ONNX model, one stage; inputs {', '.join(f'{i.name} {i.shape}' for i in session.get_inputs())}"
            stage = (int(meta["resolution"]), float(meta["alpha"]), int(meta["images_shown"]))
            path = Path(args.checkpoint)
        else:
            _, info = load_generator(args.checkpoint)
            config, path = info.model_config, info.path
            kind = ("training checkpoint (EMA and raw generators)" if info.run_dir
                    else "exported generator (EMA weights)")
            stage = (info.resolution, info.alpha, info.images_shown)
    except (CheckpointError, KeyError, ValueError) as exc:
        raise CommandLineError(str(exc) if not isinstance(exc, KeyError) else
                               f"{args.checkpoint} has no progan metadata ({exc}); export it again") from None
    names = config.class_names
    classes = (f"{len(names)}: " + ", ".join(f"{i}={name}" for i, name in enumerate(names)) if names
               else "none (unconditional)")
    print(f"file: {path}\nkind: {kind}\nstage: {stage[0]}x{stage[0]}, alpha {stage[1]:.3f}, "
          f"{stage[2] / 1000:.1f} kimg\nclasses: {classes}\n"
          f"model config: {json.dumps(config.to_dict(), sort_keys=True)}")
    return 0


# -- timelapse ------------------------------------------------------------------------------
def run_timelapse(args: argparse.Namespace) -> int:
    from progan.train.timelapse import write_timelapse

    with _writing_file(args.out):  # TimelapseError and the animation format checks are ValueErrors
        path, count = write_timelapse(args.run, args.out, fps=args.fps, size=args.size)
    print(f"wrote {path}: {count} snapshots of {args.run}")
    return 0


@contextlib.contextmanager
def _writing_file(out: str):
    """One-line errors for a command that writes the one file `out`: its own checks (ValueError)
    and the file system's."""
    try:
        yield
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None
    except (FileExistsError, NotADirectoryError):
        raise CommandLineError(f"cannot write {out}: part of its folder path is a file") from None
    except OSError as exc:
        raise CommandLineError(f"cannot write {out}: {exc.strerror or exc}") from None


# -- sampling -------------------------------------------------------------------------------
def run_sampling(args: argparse.Namespace) -> int:
    import torch

    from progan.shapes import describe_level
    from progan.generator.fileformat import CheckpointError
    from progan.generator.loading import load_generator
    from progan.generator.sampling import sampling_stage

    grid = _parse_grid(args.grid)
    _check_class_use(args, grid)
    seeds = _choose_seeds(args, grid)
    _check_numbers(args)
    device = choose_device(args.device)
    try:
        generator, info = load_generator(args.checkpoint, device=device, ema=args.ema)
        resolution, alpha = sampling_stage(info, args.resolution)
    except (CheckpointError, ValueError) as exc:
        raise CommandLineError(str(exc)) from None
    class_names = info.model_config.class_names
    classes = _parse_class(args, class_names)
    out_dir = _prepare_out_dir(Path(args.out))  # after the checks, so a bad run leaves no folder
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    print(f"{PROG}: {info.path} ({'EMA' if info.ema else 'raw'} generator, {info.images_shown / 1000:.1f} kimg) "
          f"at {describe_level(info.model_config.aspect, resolution)}, alpha {alpha:.3f}, on {device}", file=sys.stderr)
    if class_names:
        print(f"{PROG}: {_describe_classes(args, classes, class_names)}", file=sys.stderr)
    job = dict(generator=generator, seeds=seeds, resolution=resolution, alpha=alpha, batch_size=args.batch,
               autocast_dtype=autocast_dtype, latent_size=info.model_config.latent_size)
    tag = _class_tag(args, classes, class_names)
    try:
        if args.walk:
            written = _write_walks(args, out_dir, grid, classes=classes, tag=tag, **job)
        elif grid and args.class_ == ALL_CLASSES:
            written = [_write_class_grid(out_dir, grid[1], classes, class_names, **job)]
        elif grid:
            written = [_write_grid(out_dir, grid, tag=tag, classes=classes and classes[0], **job)]
        else:
            written = _write_images(out_dir, tag=tag, classes=classes and classes[0], **job)
    except OSError as exc:
        raise CommandLineError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    print(_summary(written, out_dir))
    return 0


def _check_class_use(args: argparse.Namespace, grid: tuple[int, int] | None) -> None:
    """What --class can mean here, before the model is loaded (its classes are checked after)."""
    if args.class_ != ALL_CLASSES:
        return
    if args.walk:
        raise CommandLineError("--class all makes a still grid with a row per class; a walk moves between "
                               "classes with --class NAME:NAME (e.g. --class cat:dog)")
    if not grid:
        raise CommandLineError("--class all needs --grid (one row per class, e.g. --grid 1x8 for 8 columns); "
                               "for single images give one class")


def _parse_class(args: argparse.Namespace, class_names: tuple[str, ...]) -> list[int] | None:
    """--class as class indices (None without it); one-line errors name the model's classes."""
    from progan.generator.sampling import parse_classes

    if args.class_ is None:
        return None
    if not class_names:
        raise CommandLineError(f"--class {args.class_}: this model is unconditional (its config has no class "
                               "names); leave --class out")
    try:
        classes = parse_classes(args.class_, class_names)
    except ValueError as exc:
        raise CommandLineError(f"--class: {exc}") from None
    if len(classes) > 1 and not args.walk and args.class_ != ALL_CLASSES:
        raise CommandLineError(f"--class {args.class_}: a path of classes is for --walk; still images take "
                               f"one class (or --class all with --grid)")
    return classes


def _describe_classes(args, classes: list[int] | None, class_names: tuple[str, ...]) -> str:
    known = ", ".join(f"{i}={name}" for i, name in enumerate(class_names))
    k = len(class_names)
    if classes is None:
        return f"class-conditional, {k} classes ({known}); no --class: seed S gets class S mod {k}"
    if args.class_ == ALL_CLASSES:
        return f"one row per class, top to bottom: {known}"
    if len(classes) > 1:
        return f"the label walks {' -> '.join(class_names[i] for i in classes + classes[:1])} (looping)"
    return f"class {classes[0]}={class_names[classes[0]]} for every sample"


def _class_tag(args, classes: list[int] | None, class_names: tuple[str, ...]) -> str:
    """'-cat' (file-name part) for --class cat; '' without --class, so names stay as for an
    unconditional model."""
    from progan.generator.sampling import class_tag

    if classes is None:
        return ""
    return "-" + (ALL_CLASSES if args.class_ == ALL_CLASSES else class_tag(classes, class_names))


def _parse_grid(text: str | None) -> tuple[int, int] | None:
    from progan.generator.sampling import parse_grid

    if text is None:
        return None
    try:
        return parse_grid(text)
    except ValueError as exc:
        raise CommandLineError(f"--grid: {exc}") from None


def _choose_seeds(args: argparse.Namespace, grid: tuple[int, int] | None) -> list[int]:
    """The seeds asked for; with --grid, the first ROWS*COLS of them."""
    from progan.generator.sampling import parse_seeds, seed_range

    if args.seeds is not None and args.seed is not None:
        raise CommandLineError("--seed goes with --num (or the defaults); --seeds lists every seed itself")
    # --class all: the grid's columns are the seeds, repeated in every class's row.
    cells = (grid[1] if args.class_ == ALL_CLASSES else grid[0] * grid[1]) if grid else None
    try:
        if args.seeds is not None:
            seeds = parse_seeds(args.seeds)
        else:
            default_count = cells or (1 if args.walk else DEFAULT_NUM_IMAGES)
            seeds = seed_range(args.seed or 0, args.num if args.num is not None else default_count)
    except ValueError as exc:
        raise CommandLineError(f"--seeds: {exc}" if args.seeds is not None else str(exc)) from None
    if cells is not None:
        if len(seeds) < cells:
            raise CommandLineError(f"--grid {args.grid} needs {cells} seeds, got {len(seeds)}")
        if args.class_ == ALL_CLASSES and grid[0] != 1:
            print(f"{PROG}: note: --class all draws one row per class; --grid {args.grid}'s {grid[0]} rows are "
                  f"ignored, its {grid[1]} columns kept", file=sys.stderr)
        if len(seeds) > cells:
            print(f"{PROG}: note: --grid {args.grid} uses the first {cells} of {len(seeds)} seeds", file=sys.stderr)
        seeds = seeds[:cells]
    return seeds


def _check_numbers(args: argparse.Namespace) -> None:
    from progan.generator.animation import check_animation_options

    if args.batch < 1:
        raise CommandLineError(f"--batch must be at least 1, got {args.batch}")
    if not args.walk:
        return
    if args.frames < 1:
        raise CommandLineError(f"--frames must be at least 1, got {args.frames}")
    if not args.smoothing >= 0:
        raise CommandLineError(f"--smoothing must be 0 or more, got {args.smoothing}")
    try:
        check_animation_options(args.format, args.fps)
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None
    sigma_frames = args.smoothing * args.fps
    if sigma_frames > args.frames / FROZEN_WALK_FRACTION:
        # The wrap-around blur then averages nearly the whole loop: every frame is about the same.
        print(f"{PROG}: note: --smoothing {args.smoothing:g} s is {sigma_frames:g} frames, long for a "
              f"{args.frames}-frame walk, which will barely move; use more --frames or less --smoothing",
              file=sys.stderr)


def _prepare_out_dir(out_dir: Path) -> Path:
    """Create the folder and prove it writable before any work, so failures come first."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except FileExistsError:
        raise CommandLineError(f"--out {out_dir} is a file, not a folder") from None
    except OSError as exc:
        raise CommandLineError(f"--out {out_dir} is not writable: {exc.strerror or exc}") from None
    return out_dir


def _images_by_seed(seeds: list[int], **job):
    """Yield (seed, uint8 image) a batch at a time, with a progress bar and images/s at the end."""
    from progan.runtime.progress import Progress
    from progan.generator.sampling import seeds_to_images

    batch_size = job["batch_size"]
    with Progress(len(seeds), desc="generate", unit="img") as progress:
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            yield from zip(chunk, seeds_to_images(seeds=chunk, **job))
            progress.update(len(chunk))


def _write_images(out_dir: Path, seeds: list[int], tag: str = "", **job) -> list[Path]:
    from progan.generator.images import save_png

    written = []
    for seed, image in _images_by_seed(seeds, **job):
        written.append(out_dir / seed_file_name(seed, "png", tag=tag))
        save_png(image, written[-1])
    return written


def _write_grid(out_dir: Path, grid: tuple[int, int], seeds: list[int], tag: str = "", **job) -> Path:
    import numpy as np

    from progan.generator.images import make_grid, save_png

    images = np.stack([image for _, image in _images_by_seed(seeds, **job)])
    path = out_dir / f"grid{tag}.png"
    save_png(make_grid(images, rows=grid[0], cols=grid[1]), path)
    return path


def _write_class_grid(out_dir: Path, cols: int, classes: list[int], class_names: tuple[str, ...],
                      seeds: list[int], **job) -> Path:
    """grid-all.png: row k is class k for the same `cols` seeds, its name written at the row's left."""
    import numpy as np

    from progan.generator.images import label_rows, make_grid, save_png

    cells = np.concatenate([np.stack([image for _, image in _images_by_seed(seeds, classes=k, **job)])
                            for k in classes])
    path = out_dir / f"grid-{ALL_CLASSES}.png"
    save_png(label_rows(make_grid(cells, rows=len(classes), cols=cols), [class_names[k] for k in classes]), path)
    return path


def _write_walks(args, out_dir: Path, grid: tuple[int, int] | None, seeds: list[int], tag: str = "",
                 **job) -> list[Path]:
    from progan.generator.animation import write_animation
    from progan.runtime.progress import Progress
    from progan.generator.sampling import walk_frames

    walk_options = dict(frames=args.frames, smoothing=args.smoothing, fps=args.fps, **job)
    # A grid animates all its seeds together; otherwise every seed gets its own walk.
    groups = [(seeds, f"walk-grid{tag}")] if grid else [([seed], seed_file_name(seed, None, "walk-", tag))
                                                        for seed in seeds]
    written = []
    with Progress(args.frames * len(groups), desc="walk", unit="frame") as progress:
        for group, stem in groups:
            frames = walk_frames(seeds=group, rows=grid[0] if grid else None, cols=grid[1] if grid else None,
                                 on_frame=progress.update, **walk_options)
            path = out_dir / f"{stem}.{args.format}"
            write_animation(frames, path, fps=args.fps, fmt=args.format)
            written.append(path)
    return written


def seed_file_name(seed: int, suffix: str | None, prefix: str = "", tag: str = "") -> str:
    """seed0042.png (at least four digits, so names sort by seed up to 9999); seed0042-cat.png
    with tag '-cat'."""
    stem = f"{prefix}seed{seed:04d}{tag}"
    return f"{stem}.{suffix}" if suffix else stem


def _summary(written: list[Path], out_dir: Path) -> str:
    if len(written) == 1:
        return f"wrote {written[0]}"
    return f"wrote {len(written)} files to {out_dir} ({written[0].name} .. {written[-1].name})"


def _load_main():
    """run_command's loader: torch imported while a Ctrl-C waits (progan.runtime.signals.hold_stop_signals);
    --help stays quick."""
    if not {"-h", "--help"} & set(sys.argv[1:]):
        import torch  # noqa: F401
    return main


if __name__ == "__main__":
    run_command(_load_main, "generate.py")
