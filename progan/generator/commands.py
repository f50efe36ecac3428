"""generate.py's work: sample, export and info (the script itself only parses the flags, so that
--help answers without importing torch). Each run_<subcommand>(args) takes the parsed flags and
returns the exit code; CommandLineError is the one-line error."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from progan.generator.animation import check_animation_options, write_animation
from progan.generator.export import export_file
from progan.generator.fileformat import CheckpointError
from progan.generator.images import label_rows, make_grid, save_png
from progan.generator.loading import load_generator
from progan.generator.onnx_file import onnx_session, verify_onnx
from progan.generator.sampling import (
    ALL_CLASSES,
    class_tag,
    parse_classes,
    parse_grid,
    parse_seeds,
    sampling_stage,
    seed_range,
    seeds_to_images,
    walk_frames,
)
from progan.nets.config import ModelConfig
from progan.runtime.cli import choose_device
from progan.runtime.diskspace import UNWRITABLE, write_failed
from progan.runtime.errors import CommandLineError
from progan.runtime.progress import Progress
from progan.shapes import describe_level

UNCHECKED_NOTE = "carries no checksums (written before progan wrote them); loaded unchecked"
FROZEN_WALK_FRACTION = 4  # a blur wider than frames/4 leaves under a third of the slowest motion


# -- export ---------------------------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    with writing_file(args.out):  # CheckpointError is a ValueError
        path = export_file(args.checkpoint, args.out, resolution=args.resolution)
    print(f"exported the EMA generator of {args.checkpoint} to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# -- info -----------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    try:
        if Path(args.checkpoint).suffix.lower() == ".onnx":

            session = onnx_session(args.checkpoint)
            meta = session.get_modelmeta().custom_metadata_map
            config = ModelConfig.from_json(meta["model_config"])
            kind = f"ONNX model, one stage; inputs {', '.join(f'{i.name} {i.shape}' for i in session.get_inputs())}"
            stage = (int(meta["resolution"]), float(meta["alpha"]), int(meta["images_shown"]))
            path = Path(args.checkpoint)
            checked = verify_onnx(path)
        else:
            _, info = load_generator(args.checkpoint)
            config, path = info.model_config, info.path
            kind = ("training checkpoint (EMA and raw generators)" if info.run_dir
                    else "exported generator (EMA weights)")
            stage = (info.resolution, info.alpha, info.images_shown)
            checked = info.checked
    except (CheckpointError, KeyError, ValueError) as exc:
        raise CommandLineError(str(exc) if not isinstance(exc, KeyError) else
                               f"{args.checkpoint} has no progan metadata ({exc}); export it again") from None
    names = config.class_names
    classes = (f"{len(names)}: " + ", ".join(f"{i}={name}" for i, name in enumerate(names)) if names
               else "none (unconditional)")
    print(f"file: {path}\nkind: {kind}\nstage: {describe_level(config.aspect, stage[0])}, alpha {stage[1]:.3f}, "
          f"{stage[2] / 1000:.1f} kimg\nclasses: {classes}\n"
          f"checksums: {'checked' if checked else 'none (written before progan wrote them; loaded unchecked)'}\n"
          f"model config: {json.dumps(config.to_dict(), sort_keys=True)}")
    return 0


@contextlib.contextmanager
def writing_file(out: str):
    """One-line errors for a command that writes the one file `out`: its own checks (ValueError)
    and the file system's."""
    try:
        yield
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None
    except (FileExistsError, NotADirectoryError):
        raise CommandLineError(f"cannot write {out}: part of its folder path is a file") from None
    except OSError as exc:
        if exc.errno in UNWRITABLE:
            raise write_failed(exc, Path(out).parent, Path(out).name, None, retry="rerun it") from None
        raise CommandLineError(f"cannot write {out}: {exc.strerror or exc}") from None


# -- sampling -------------------------------------------------------------------------------
def run_sample(args: argparse.Namespace) -> int:
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
    print(f"{args.prog}: {info.path} ({'EMA' if info.ema else 'raw'} generator, {info.images_shown / 1000:.1f} kimg) "
          f"at {describe_level(info.model_config.aspect, resolution)}, alpha {alpha:.3f}, on {device}", file=sys.stderr)
    if not info.checked:
        print(f"{args.prog}: note: {info.path} {UNCHECKED_NOTE}", file=sys.stderr)
    if class_names:
        print(f"{args.prog}: {_describe_classes(args, classes, class_names)}", file=sys.stderr)
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
        if exc.errno in UNWRITABLE:
            raise write_failed(exc, out_dir, "the images", None, retry="rerun it") from None
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
    if classes is None:
        return ""
    return "-" + (ALL_CLASSES if args.class_ == ALL_CLASSES else class_tag(classes, class_names))


def _parse_grid(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        return parse_grid(text)
    except ValueError as exc:
        raise CommandLineError(f"--grid: {exc}") from None


def _choose_seeds(args: argparse.Namespace, grid: tuple[int, int] | None) -> list[int]:
    """The seeds asked for; with --grid, the first ROWS*COLS of them."""
    if args.seeds is not None and args.seed is not None:
        raise CommandLineError("--seed goes with --num (or the defaults); --seeds lists every seed itself")
    # --class all: the grid's columns are the seeds, repeated in every class's row.
    cells = (grid[1] if args.class_ == ALL_CLASSES else grid[0] * grid[1]) if grid else None
    try:
        if args.seeds is not None:
            seeds = parse_seeds(args.seeds)
        else:
            default_count = cells or (1 if args.walk else args.default_num)
            seeds = seed_range(args.seed or 0, args.num if args.num is not None else default_count)
    except ValueError as exc:
        raise CommandLineError(f"--seeds: {exc}" if args.seeds is not None else str(exc)) from None
    if cells is not None:
        if len(seeds) < cells:
            raise CommandLineError(f"--grid {args.grid} needs {cells} seeds, got {len(seeds)}")
        if args.class_ == ALL_CLASSES and grid[0] != 1:
            print(f"{args.prog}: note: --class all draws one row per class; --grid {args.grid}'s {grid[0]} rows are "
                  f"ignored, its {grid[1]} columns kept", file=sys.stderr)
        if len(seeds) > cells:
            print(f"{args.prog}: note: --grid {args.grid} uses the first {cells} of {len(seeds)} seeds", file=sys.stderr)
        seeds = seeds[:cells]
    return seeds


def _check_numbers(args: argparse.Namespace) -> None:
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
        print(f"{args.prog}: note: --smoothing {args.smoothing:g} s is {sigma_frames:g} frames, long for a "
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
        if exc.errno in UNWRITABLE:
            raise write_failed(exc, out_dir if out_dir.is_dir() else out_dir.parent, f"--out {out_dir}", None,
                               retry="rerun it") from None
        raise CommandLineError(f"--out {out_dir} is not writable: {exc.strerror or exc}") from None
    return out_dir


def _images_by_seed(seeds: list[int], **job):
    """Yield (seed, uint8 image) a batch at a time, with a progress bar and images/s at the end."""
    batch_size = job["batch_size"]
    with Progress(len(seeds), desc="generate", unit="img") as progress:
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            yield from zip(chunk, seeds_to_images(seeds=chunk, **job))
            progress.update(len(chunk))


def _write_images(out_dir: Path, seeds: list[int], tag: str = "", **job) -> list[Path]:
    written = []
    for seed, image in _images_by_seed(seeds, **job):
        written.append(out_dir / seed_file_name(seed, "png", tag=tag))
        save_png(image, written[-1])
    return written


def _write_grid(out_dir: Path, grid: tuple[int, int], seeds: list[int], tag: str = "", **job) -> Path:
    images = np.stack([image for _, image in _images_by_seed(seeds, **job)])
    path = out_dir / f"grid{tag}.png"
    save_png(make_grid(images, rows=grid[0], cols=grid[1]), path)
    return path


def _write_class_grid(out_dir: Path, cols: int, classes: list[int], class_names: tuple[str, ...],
                      seeds: list[int], **job) -> Path:
    """grid-all.png: row k is class k for the same `cols` seeds, its name written at the row's left."""

    cells = np.concatenate([np.stack([image for _, image in _images_by_seed(seeds, classes=k, **job)])
                            for k in classes])
    path = out_dir / f"grid-{ALL_CLASSES}.png"
    save_png(label_rows(make_grid(cells, rows=len(classes), cols=cols), [class_names[k] for k in classes]), path)
    return path


def _write_walks(args, out_dir: Path, grid: tuple[int, int] | None, seeds: list[int], tag: str = "",
                 **job) -> list[Path]:
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
