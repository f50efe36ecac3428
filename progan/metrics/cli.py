"""Command line: python -m progan.metrics swd|msssim|fid[,...] --real DATA.lmdb --fake CHECKPOINT

Prints one JSON object on stdout (progress goes to stderr) and, when CHECKPOINT lies in a run
folder, appends the same object as a line to the run's metrics.jsonl. --fake may also be an
LMDB database (e.g. the real one: real-vs-real gives the metric's noise floor). Bad input is
reported in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from progan.data.format import DatasetError
from progan.data.integrity import check_levels
from progan.data.reader import MultiResolutionDataset, dataset_aspect, read_labels, read_metadata
from progan.generator.fileformat import CheckpointError
from progan.generator.loading import load_generator
from progan.metrics.common import MetricError
from progan.metrics.evaluate import (DEFAULT_NUM_IMAGES, METRICS_WITH_REALS, evaluate_metrics, load_inception_once,
                                     parse_metric_names, unavailable_reason)
from progan.metrics.sources import DatasetSource, GeneratorSource
from progan.runtime.cli import OneLineErrorParser, choose_device, fail
from progan.runtime.diskspace import WriteFailed, write_failed
from progan.runtime.errors import EXIT_WRITE_FAILED, CommandLineError, first_line
from progan.runtime.fileio import append_jsonl
from progan.shapes import DEFAULT_ASPECT

PROG = "python -m progan.metrics"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog=PROG,
        description="Multi-scale SWD, MS-SSIM and FID of a generator (or a database) against a database.",
        epilog="Defaults follow the paper: SWD on 16384 images, MS-SSIM on 10,000 pairs, FID on 50,000.")
    p.add_argument("metric", help="swd, msssim or fid (or a comma list, e.g. swd,msssim)")
    p.add_argument("--fake", required=True,
                   help="checkpoint file, run folder (its latest checkpoint), exported generator, or an LMDB database")
    p.add_argument("--real", help="the real images: a progan LMDB database (needed by swd and fid)")
    p.add_argument("--num", type=int,
                   help="images per metric (MS-SSIM uses num/2 pairs); default: the paper's (SWD 16384, "
                        "MS-SSIM 20000, FID 50000), or all a database holds when it holds fewer (a note says so)")
    p.add_argument("--resolution", type=int,
                   help="resolution to compare at; default: the checkpoint's current one (a lower one "
                        "box-averages the generated images down), or the --fake database's largest")
    p.add_argument("--seed", type=int, default=0, help="picks latents, real subsets, patches, projections (default 0)")
    p.add_argument("--inception", help="FID: Inception-v3 weights, pt_inception-2015-12-05-6726825d.pth (pytorch-fid)")
    p.add_argument("--inception-unverified", action="store_true",
                   help="FID: accept weights whose SHA-256 is not the expected file's (FID then not comparable)")
    p.add_argument("--cache-dir", help="cache for real statistics (default: <run folder>/metric-cache for a "
                                       "checkpoint in a run folder, otherwise none)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--mirror-reals", choices=("auto", "yes", "no"), default="auto",
                   help="flip a seeded random half of the reals, as the release evaluates runs trained with "
                        "mirroring (default auto: when --fake's run folder says it trained with mirroring)")
    p.add_argument("--no-log", action="store_true", help="do not append to the run's metrics.jsonl")
    p.add_argument("--class", dest="class_", metavar="NAME|INDEX",
                   help="class-conditional generators: measure this class only (its generated images against "
                        "the --real images of that class); default: classes drawn with --real's class "
                        "frequencies (uniform without --real), as the release reports")
    return p


def _is_lmdb(path: Path) -> bool:
    return path.is_dir() and (path / "data.mdb").exists()


def _check_available(names: list[str], resolution: int, args, aspect: str = DEFAULT_ASPECT) -> None:
    for name in names:
        reason = unavailable_reason(name, resolution, inception_path=args.inception, aspect=aspect)
        if reason:
            raise MetricError(reason)


def metric_counts(names: list[str], num: int | None, real: tuple[str, int] | None,
                  fake: tuple[str, int] | None) -> tuple[dict[str, int], list[str]]:
    """({metric: images}, notes): --num for every metric, or by default the paper's count lowered
    to what the databases a metric reads hold ((path, image count) of --real and of an LMDB
    --fake), with a note for each metric lowered. SWD compares as many reals as fakes; MS-SSIM
    reads only the fakes; FID's reals may be fewer than its fakes (recorded as fid_real_images)."""
    counts, notes = {}, []
    for name in names:
        if num is not None:
            counts[name] = num
            continue
        count, limit = DEFAULT_NUM_IMAGES[name], None
        for database in ((real,) if name == "swd" else ()) + (fake,):
            if database is not None and database[1] < count:
                count, limit = database[1], database[0]
        counts[name] = count
        if limit is not None:
            notes.append(f"note: {name} on {count} images, all that {limit} holds (the paper's count is "
                         f"{DEFAULT_NUM_IMAGES[name]}; numbers on other counts are not comparable; --num sets it)")
    return counts, notes


def _fake_source(args, names: list[str], counts: dict[str, int], device: torch.device):
    """(source, resolution, aspect, provenance dict, run folder or None) for --fake."""
    fake_path = Path(args.fake)
    counts = [counts[name] for name in names]
    if _is_lmdb(fake_path):

        metadata = read_metadata(fake_path)
        resolution = args.resolution or max(metadata["resolutions"])
        _check_available(names, resolution, args, dataset_aspect(metadata))
        dataset = MultiResolutionDataset(fake_path, resolution)
        check_levels(fake_path, [resolution])  # in a child: a damaged index that crashes LMDB is one line here
        source = DatasetSource(dataset, max(counts), seed=args.seed, side="fake", name=str(fake_path))
        return source, resolution, dataset.aspect, {"fake": str(fake_path)}, None

    generator, info = load_generator(fake_path, device=device, ema=True)
    resolution = args.resolution or info.resolution
    # A generator without an aspect (any object with latent_size will do here) makes squares.
    aspect = getattr(info.model_config, "aspect", DEFAULT_ASPECT)
    _check_available(names, resolution, args, aspect)
    frequencies, class_index, provenance = _classes(args, info.model_config)
    source = GeneratorSource(generator, info.model_config.latent_size, resolution=resolution,
                             generator_resolution=info.resolution, alpha=info.alpha, seed=args.seed, device=device,
                             class_frequencies=frequencies, class_index=class_index)
    provenance.update({"fake": str(info.path), "generator_resolution": info.resolution, "alpha": info.alpha,
                       "kimg": info.images_shown / 1000})
    return source, resolution, aspect, provenance, info.run_dir


def _classes(args, model_config) -> tuple[list[float] | None, int | None, dict]:
    """(class frequencies, fixed class index, record fields) for --fake's generator."""
    names = tuple(getattr(model_config, "class_names", ()))
    if not names:
        if args.class_ is not None:
            raise MetricError(f"--class {args.class_}: {args.fake} is not a class-conditional model")
        return None, None, {}
    if args.class_ is not None:
        index = class_index(args.class_, names)
        return None, index, {"class": names[index]}
    if args.real is not None:

        real_names, labels = read_labels(args.real)
        if tuple(real_names) == names and labels is not None:
            counts = torch.bincount(torch.from_numpy(labels.astype("int64")), minlength=len(names))
            return counts.tolist(), None, {"classes": "drawn with --real's class frequencies"}
    return [1.0] * len(names), None, {"classes": "drawn uniformly"}


def class_index(text: str, names: tuple[str, ...]) -> int:
    """--class NAME or INDEX -> the index; MetricError naming the model's classes otherwise."""
    if text in names:
        return names.index(text)
    if text.strip().isdigit() and int(text) < len(names):
        return int(text)
    raise MetricError(f"--class {text}: not one of the model's classes ({', '.join(names)}, or 0..{len(names) - 1})")


class ClassSubset:
    """The images of one class of a labelled dataset, as a dataset (len, get_batch)."""

    def __init__(self, dataset, labels, index: int) -> None:
        self.dataset = dataset
        self.indices = [i for i, label in enumerate(labels.tolist()) if label == index]
        self.aspect = getattr(dataset, "aspect", DEFAULT_ASPECT)

    def __len__(self) -> int:
        return len(self.indices)

    def get_batch(self, indices):
        return self.dataset.get_batch([self.indices[i] for i in indices])


def _real_of_class(path: str, resolution: int, class_name: str):
    """--real restricted to one class (MetricError when the database has no such labels)."""
    names, labels = read_labels(path)
    if class_name not in names or labels is None:
        raise MetricError(f"--class {class_name}: {path} has no images labelled {class_name!r}")
    return ClassSubset(MultiResolutionDataset(path, resolution), labels, tuple(names).index(class_name))


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    names = parse_metric_names(args.metric)
    if not names:
        raise MetricError("no metric given (swd, msssim or fid)")
    if args.num is not None and args.num < 2:
        raise MetricError(f"--num must be at least 2, got {args.num}")
    if args.batch_size < 1:
        raise MetricError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.real is None and any(name in METRICS_WITH_REALS for name in names):
        raise MetricError("swd and fid need --real DATA.lmdb")
    device = choose_device(args.device)
    if "fid" in names:
        _check_available(["fid"], args.resolution or 0, args)  # FID's needs do not depend on the resolution
        _, sha256 = load_inception_once(args.inception, not args.inception_unverified, device)  # fail early

    uses_reals = any(name in METRICS_WITH_REALS for name in names)
    real_count = None
    if args.real is not None:
        # A missing or broken database fails before the generator loads.
        real_count = read_metadata(args.real)["count"]
    fake_count = read_metadata(args.fake)["count"] if _is_lmdb(Path(args.fake)) else None
    counts, notes = metric_counts(names, args.num, (args.real, real_count) if uses_reals and args.real else None,
                                  (args.fake, fake_count) if fake_count is not None else None)
    if args.real is not None and not uses_reals:
        notes.append(f"note: {', '.join(names)} looks at generated images only; --real was not used")
    source, resolution, aspect, provenance, run_dir = _fake_source(args, names, counts, device)
    cache_dir = Path(args.cache_dir) if args.cache_dir else (run_dir / "metric-cache" if run_dir else None)
    real = args.real if uses_reals else None
    if real is not None and resolution in read_metadata(real)["resolutions"]:  # (a missing level: said later)

        check_levels(real, [resolution])  # in a child: a damaged index that crashes LMDB is one line here
    real_available = real_count
    if "class" in provenance and real is not None:  # one class: its reals only, statistics not cached
        real, cache_dir = _real_of_class(args.real, resolution, provenance["class"]), None
        real_available = len(real)
        if args.num is None and "swd" in names and real_available < counts["swd"]:  # as a small database is
            counts["swd"] = real_available
            notes.append(f"note: swd on {real_available} images, all of class {provenance['class']} in {args.real} "
                         f"(the paper's count is {DEFAULT_NUM_IMAGES['swd']}; numbers on other counts are not "
                         f"comparable; --num sets it)")
    mirror_reals = args.mirror_reals == "yes" or (args.mirror_reals == "auto" and _trained_with_mirror(run_dir))
    started = time.perf_counter()
    results = evaluate_metrics(
        names, source, real, resolution, counts, cache_dir=cache_dir, seed=args.seed,
        inception_path=args.inception, verify_inception=not args.inception_unverified, device=device,
        batch_size=args.batch_size, aspect=aspect, mirror_reals=mirror_reals)
    record = {
        "metric": ",".join(names),
        **results,
        "resolution": resolution,
        **({"aspect": aspect} if aspect != DEFAULT_ASPECT else {}),  # square records as before
        "num_images": counts,
        "seed": args.seed,
        # Only a metric that reads reals (SWD, FID) says which and how: MS-SSIM looks at fakes only.
        **({"real": args.real, "mirror_reals": mirror_reals} if uses_reals else {}),
        **provenance,
        "seconds": round(time.perf_counter() - started, 1),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if "fid" in names:
        # FID's statistics use the whole database when it holds fewer images than asked for.
        record["fid_real_images"] = min(counts["fid"], real_available)
        record["inception_sha256"] = sha256
    for note in notes:  # after the work: a failure stays one line
        print(note, file=sys.stderr)
    print(json.dumps(record), flush=True)
    if run_dir is not None and not args.no_log:
        try:
            append_jsonl(run_dir / "metrics.jsonl", record)
        except OSError as exc:  # the result is printed above; the log is left as it was
            raise write_failed(exc, run_dir, "metrics.jsonl", len(json.dumps(record)) + 1, retry="rerun it") from None
    return 0


def _trained_with_mirror(run_dir: Path | None) -> bool:
    """The run's saved config says it trained with mirror augmentation (no run folder: no)."""
    try:
        return bool(json.loads((run_dir / "config.json").read_text()).get("mirror", False)) if run_dir else False
    except (OSError, ValueError, AttributeError):
        return False


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (one line, exit 2); anything else is a bug and keeps its traceback."""
    return MetricError, CommandLineError, DatasetError, CheckpointError, OSError


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return fail("interrupted", PROG, code=130)
    except WriteFailed as exc:
        return fail(str(exc), PROG, code=EXIT_WRITE_FAILED)
    except _user_errors() as exc:
        return fail(first_line(exc, limit=None), PROG)

