"""Command line of `python -m data_prep`: build, info, verify, preview, synth."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

from data_prep.build import BuildConfig, BuildError, build, default_workers, skip_summary
from data_prep.decode import DEFAULT_MAX_PIXELS
from data_prep.synth import FORMATS, MAX_CLASSES, synth
from progan.data.format import DEFAULT_ENCODING, ENCODINGS, DatabaseWriteFailed, DatasetError
from progan.data.integrity import check_levels, verify
from progan.data.reader import MultiResolutionDataset, dataset_aspect, read_labels, read_metadata
from progan.generator.images import make_grid, save_png
from progan.runtime.cli import OneLineErrorParser, fail
from progan.runtime.diskspace import format_bytes
from progan.runtime.errors import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_WRITE_FAILED
from progan.runtime.progress import Progress
from progan.shapes import ASPECT_RULE, DEFAULT_ASPECT, RESOLUTION_RULE, describe_level, is_valid_resolution



def main(argv: list[str] | None = None) -> int:
    """Exit codes, as train.py's (README, "Exit codes"): 0 done, 2 bad input or an unusable or
    damaged database (verify found bad records), 4 the output could not be written (disk full,
    I/O error; committed chunks are kept), 130 interrupted (Ctrl-C); 1 is an unexpected error."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (DatabaseWriteFailed, OSError) as error:  # OSError: unwritable output
        return fail(str(error), f"data_prep {args.command}", code=EXIT_WRITE_FAILED)
    except (BuildError, DatasetError) as error:
        return fail(str(error), f"data_prep {args.command}", code=EXIT_USAGE)
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume" if args.command == "build" else ""
        print(f"\ndata_prep {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    # Subcommand parsers are made with the parser's own class, so bad flags are one line too.
    parser = OneLineErrorParser(
        prog="python -m data_prep",
        description="Build and inspect multi-resolution LMDB datasets for progan.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("build", help="build a dataset from a folder of images",
                            description="Build one LMDB holding every resolution from --min-res to --max-res. "
                                        "Rerunning the same command resumes an interrupted build.")
    p.add_argument("source", type=Path, metavar="SOURCE", help="folder of images, searched recursively")
    p.add_argument("out", type=Path, metavar="OUT", help="database folder to create, e.g. faces.lmdb")
    p.add_argument("--max-res", type=_resolution, required=True, help=f"top resolution: {RESOLUTION_RULE}")
    p.add_argument("--min-res", type=_resolution, default=4, help="lowest resolution (default 4)")
    p.add_argument("--workers", type=_positive, default=None,
                   help=f"decoding processes (default: all cores, here {default_workers()})")
    p.add_argument("--aspect", default=DEFAULT_ASPECT, metavar="W:H",
                   help=f"width:height of every image, {ASPECT_RULE}; default {DEFAULT_ASPECT}. Level R is "
                        "R on its long side: --aspect 3:4 --max-res 1024 stores 768x1024")
    p.add_argument("--crop", choices=("center", "none"), default="center",
                   help="center: the largest centred crop of --aspect (default); none: skip images not "
                        "already at --aspect")
    p.add_argument("--upscale", action="store_true",
                   help="keep images smaller than --max-res by upscaling them (default: skip them)")
    p.add_argument("--limit", type=_positive, default=None, help="stop after this many images")
    p.add_argument("--encoding", choices=tuple(ENCODINGS), default=DEFAULT_ENCODING,
                   help=f"how images are stored (default {DEFAULT_ENCODING}); raw, png and webp are "
                        "lossless, jpeg (quality 100) is not")
    p.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS,
                   help="skip images with more pixels than this, as decompression bombs "
                        f"(default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--labels", default=None, metavar="folders|FILE.json",
                   help="store a class per image: `folders` (the first folder under SOURCE is the class) or a "
                        'JSON file {"a/b.png": "cat", ...} or {"labels": [["a/b.png", 3], ...]}; files without '
                        "a label are skipped (default: unlabelled)")
    p.set_defaults(run=_run_build)

    p = commands.add_parser("info", help="print a dataset's metadata as JSON (with images per class when labelled)")
    p.add_argument("dataset", type=Path, metavar="DATASET")
    p.add_argument("--brief", action="store_true", help="replace the per-image source and skip lists by their lengths, "
                                                            "and the class names by {name: images}")
    p.set_defaults(run=_run_info)

    p = commands.add_parser("verify", help="read every record at every level; check checksums, shapes, count, labels",
                            description="Read every record at every level and check its checksum, shape and the "
                                        "record count, and a labelled database's label table (checksum, one "
                                        "label per image, every class index below the number of classes). Lists "
                                        "each bad record (level, image, why) and exits 2 if there is any.")
    p.add_argument("dataset", type=Path, metavar="DATASET")
    p.set_defaults(run=_run_verify)

    p = commands.add_parser("preview", help="write a grid of a dataset's images as PNG")
    p.add_argument("dataset", type=Path, metavar="DATASET")
    p.add_argument("--res", type=_resolution, required=True, help="which resolution to show")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--count", type=_positive, default=64, help="images to show, from the first (default 64)")
    p.set_defaults(run=_run_preview)

    p = commands.add_parser("synth", help="draw a demo dataset of face-like pictures",
                            description="Write procedurally drawn face-like pictures as image files.")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--count", type=_positive, default=1000, help="number of pictures (default 1000)")
    p.add_argument("--size", type=_size, default=128, help="width and height in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="picture i depends only on (seed, i) (default 0)")
    p.add_argument("--format", choices=tuple(FORMATS), default="png", help="file format (default png)")
    p.add_argument("--workers", type=_positive, default=None, help="processes (default: all cores)")
    p.add_argument("--classes", type=_classes, default=0, metavar="K",
                   help=f"K kinds of face (2..{MAX_CLASSES}), told apart by background hue, one folder each "
                        "(class_00, ...), for `build --labels folders` (default: one kind, no folders)")
    p.set_defaults(run=_run_synth)
    return parser


def _resolution(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not is_valid_resolution(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {RESOLUTION_RULE}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _classes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 2 <= value <= MAX_CLASSES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of classes from 2 to {MAX_CLASSES}")
    return value


def _size(text: str) -> int:
    value = _positive(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"{text!r} is too small for a face; use 16 or more")
    return value


def _run_build(args) -> int:
    config = BuildConfig(
        source=args.source, out=args.out, max_res=args.max_res, min_res=args.min_res,
        workers=args.workers or 0, crop=args.crop, upscale=args.upscale,
        limit=args.limit, encoding=args.encoding, max_pixels=args.max_pixels, aspect=args.aspect,
        labels=args.labels,
    )
    report = build(config)
    metadata = report.metadata
    resolutions = metadata["resolutions"]
    aspect = dataset_aspect(metadata)
    shape = "" if aspect == DEFAULT_ASPECT else f" (aspect {aspect}, top level {describe_level(aspect, resolutions[-1])})"
    if report.already_complete:
        print(f"{args.out} is already complete ({metadata['count']} images); nothing to do")
        return 0
    size = (args.out / "data.mdb").stat().st_size
    print(
        f"built {args.out}: {metadata['count']} images at {resolutions[0]}..{resolutions[-1]} px{shape}, "
        f"{metadata['encoding']} encoding, {format_bytes(size)} ({format_bytes(size / metadata['count'] * 1000)} "
        f"per 1000 images) in {report.seconds:.1f} s"
    )
    if metadata["skipped"]:
        print(f"skipped {len(metadata['skipped'])} files: {skip_summary(metadata['skipped'])} "
              f"(listed in the metadata: python -m data_prep info {args.out})")
    _print_label_summary(args, report)
    return 0


def _print_label_summary(args, report) -> None:
    """After the build line: the classes and their counts, and label-file entries naming no file."""
    metadata = report.metadata
    if "classes" not in metadata:
        return
    classes, labels = read_labels(args.out)
    print(f"labels: {len(classes)} classes ({_class_counts_text(classes, labels)})")
    if report.unmatched_labels:
        print(f"label file: {len(report.unmatched_labels)} entries name no image under {args.source} "
              "(listed above; ignored)")


def _class_counts(classes, labels) -> dict[str, int]:
    return dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist()))


def _class_counts_text(classes, labels, most: int = 10) -> str:
    counts = list(_class_counts(classes, labels).items())
    text = ", ".join(f"{name}: {count}" for name, count in counts[:most])
    return text + (f", ... {len(counts) - most} more" if len(counts) > most else "")


def _run_info(args) -> int:
    metadata = read_metadata(args.dataset)
    if "classes" in metadata:  # the images per class, from the label table (damaged: said, not fatal)
        try:
            counts = _class_counts(*read_labels(args.dataset))
        except DatasetError:
            counts = f"unreadable: run python -m data_prep verify {args.dataset}"
        metadata = dict(metadata, class_counts=counts)
        if args.brief:  # one {name: count} instead of the names and the counts
            metadata["classes"] = metadata.pop("class_counts")
    if args.brief:
        metadata = dict(metadata, sources=len(metadata["sources"]), skipped=len(metadata["skipped"]))
    print(compact_json(metadata))
    return 0


def compact_json(value, indent: int = 0, width: int = 100, used: int = 0) -> str:
    """JSON indented like json.dumps(indent=2), but any list or object that fits on its line
    (`width` characters; `used` of them taken by the key before it) stays on one line
    (resolutions, level sizes, options), so a brief `info` is a screenful, not one number a line."""
    inline = json.dumps(value, separators=(", ", ": "))
    if not isinstance(value, (dict, list)) or not value or indent + used + len(inline) <= width:
        return inline
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {compact_json(item, indent + 2, width, len(key) + 4)}"
                 for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{compact_json(item, indent + 2, width)}" for item in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def _run_verify(args) -> int:
    metadata = read_metadata(args.dataset)
    levels = len(metadata["resolutions"])
    with Progress(metadata["count"] * levels, "verify", unit="rec") as progress:
        report = verify(args.dataset, on_record=progress.update,
                        on_bad=lambda bad: progress.write(f"bad: {bad.describe()}"))
    if report.labels_problem:
        print(f"bad: {report.labels_problem}", file=sys.stderr)
    if report.bad or report.stray or report.labels_problem:
        per_level = collections.Counter(describe_level(bad.aspect, bad.resolution) for bad in report.bad)
        what = [f"{len(report.bad)} bad record(s) of {report.records} "
                f"({', '.join(f'{n} at {level}' for level, n in per_level.items())})"] if report.bad else []
        what += [report.stray + " (stray keys)"] if report.stray else []
        what += [report.labels_problem] if report.labels_problem else []
        listed = ", listed above" if report.bad else ""
        raise DatasetError(f"{args.dataset}: {'; '.join(what)}{listed}; delete it and build it again "
                           "(the same build command gives the same database)")
    checks = "checksums, decode to the right shapes" if report.checksums else (
        "decode to the right shapes; no checksums (built before progan stored them: rebuild to add them)")
    if "classes" in metadata:
        checks += f"; labels ({len(metadata['classes'])} classes)"
    print(f"{args.dataset}: ok, {report.records} records ({metadata['count']} images x {levels} resolutions): {checks}")
    return 0


def _run_preview(args) -> int:
    dataset = MultiResolutionDataset(args.dataset, args.res, memory_budget_bytes=0)
    check_levels(args.dataset, [args.res])  # in a child: a damaged index that crashes LMDB is one line here
    count = min(args.count, len(dataset))
    batch = dataset.get_batch(np.arange(count)).numpy()
    save_png(make_grid(batch.transpose(0, 2, 3, 1), padding=2), args.out)
    print(f"wrote {args.out}: {count} images at {describe_level(dataset.aspect, args.res)}")
    return 0


def _run_synth(args) -> int:
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise BuildError(f"{args.out_dir}: exists and is not a folder")
    with Progress(args.count, "synth", unit="img") as progress:
        synth(args.out_dir, args.count, args.size, args.seed, args.format,
              workers=args.workers or default_workers(), progress=progress, classes=args.classes)
    kinds = f" in {args.classes} class folders (class_00..class_{args.classes - 1:02d})" if args.classes else ""
    print(f"wrote {args.count} face pictures of {args.size}x{args.size} to {args.out_dir}{kinds}")
    return 0
