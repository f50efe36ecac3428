"""From command-line flags to a validated run: which config, which checkpoint, which folder.

All checks happen here, before any process group, network or data loader exists, so a bad
flag or a mismatched run folder costs the user one line and no work.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from progan.data.background_check import check_during_training, first_failure
from progan.data.format import DatasetError
from progan.data.integrity import check_levels
from progan.data.reader import dataset_aspect, dataset_fingerprint, read_labels, read_labels_for, read_metadata
from progan.generator import checkpoints, fileformat
from progan.metrics import MetricError, parse_metric_names
from progan.runtime.cli import choose_device
from progan.runtime.diskspace import WriteFailed, check_room, write_failed
from progan.runtime.elastic import init_process_group, leave_process_group
from progan.runtime.errors import EXIT_FINISHED, EXIT_PREEMPTED, CommandLineError
from progan.runtime.fileio import atomic_write_text
from progan.runtime.runlock import lock_run_folder, remove_stale_temp_files, share_from_main
from progan.runtime.signals import pause_point
from progan.shapes import describe_level
from progan.train import trackers
from progan.train.config import PRESETS, TrainConfig, load_config_file, preset_defaults
from progan.train.loop import Trainer
from progan.train.microbatch import micro_batch_problem
from progan.train.precision import resolve_config
from progan.train.runfolder import CONFIG_FILE, STATS_FILE
from progan.train.schedule import KIMG, parse_table, state_at

# flag name -> TrainConfig field, for flags that map one to one
SIMPLE_FLAGS = (
    "data", "out", "mixed_precision", "seed", "workers", "max_batch_per_device", "mirror",
    "reset_optimizer", "tick_kimg", "snapshot_ticks", "checkpoint_minutes", "keep_checkpoints",
    "metric_kimg", "metric_images", "inception", "log_with", "tf32",
)
SCHEDULE_FLAGS = ("fade_kimg", "stable_kimg", "total_kimg", "base_lr")


class TrainingError(ValueError):
    """A problem with the run's setup; the message is one line for the user."""


def _world_size() -> int:
    """Processes of this launch, known from the launcher's environment before any init."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class RunPlan:
    config: TrainConfig
    resume: dict | None         # the loaded checkpoint to continue from
    resume_path: Path | None
    world_size: int
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # unreadable checkpoints --resume auto skipped
    cpu: bool = False           # --device cpu: train on the CPU although an accelerator is there

    def describe(self) -> str:

        lines = [self.config.to_json().rstrip(), "", "schedule:"]
        for phase in self.config.schedule.phases():
            st = state_at(self.config.schedule, phase.start_images)
            width, height = self.config.model.level_size(phase.resolution)
            lines.append(
                f"  {phase.index:2d} {phase.kind:6s} {width:4d}x{height:<4d} "
                f"{phase.start_images / KIMG:9.1f} .. {phase.end_images / KIMG:9.1f} kimg  "
                f"batch {st.batch_size:4d}  lr {st.learning_rate:g}")
        lines.append(f"total: {self.config.schedule.total_images / KIMG:.1f} kimg on {self.world_size} process(es)")
        if self.resume_path:
            lines.append(f"resume from: {self.resume_path} ({self.resume['images_shown'] / KIMG:.1f} kimg)")
        lines += [f"skipped unreadable: {why}" for _, why in self.damaged]
        return "\n".join(lines)

    def train(self, stop=None) -> int:
        """Lock the run folder, start (or join) the process group and train; returns the exit code
        (EXIT_FINISHED, or EXIT_PREEMPTED when a signal stopped it after saving a checkpoint).
        `stop`: train.py's progan.runtime.signals.StopSignals, installed since its first line (set-up signals
        raise Interrupted; the loop turns later ones into a stop with a checkpoint)."""
        run_dir = Path(self.config.out)
        cpu = self.cpu or not _has_accelerator()
        init_process_group(cpu)  # fresh keys after a torchrun restart
        lock = lock_run_folder(run_dir, cpu)  # before anything is written
        error = None
        try:  # on the main process; a failure stops every process alike
            if lock is not None and self.resume_path is not None:  # room for the next checkpoint, before any write
                check_room(run_dir, self.resume_path.stat().st_size, "the next checkpoint")
            accelerator = make_accelerator(run_dir, self.config.log_with, self.config.to_dict(), cpu)  # trackers write their first files
            if accelerator.is_main_process:
                self._prepare_folder(run_dir, accelerator.print)
        except WriteFailed as exc:
            error = str(exc)
        except OSError as exc:
            error = str(write_failed(exc, run_dir, "the trackers' logs", None))
        error = share_from_main(error, self.world_size)  # also the barrier before training
        if error is not None:
            raise WriteFailed(error)
        pause_point("setup")  # tests: a signal here, with config.json, run.lock and the trackers' files written
        trainer = Trainer(self.config, accelerator, resume=self.resume, log=accelerator.print, stop=stop)
        self.resume = None  # the trainer holds what it needs; free the CPU copy
        if trainer.images_shown:
            try:
                trainer.truncate_stats()
            except OSError as exc:
                raise write_failed(exc, run_dir, STATS_FILE, None) from None
            accelerator.print(f"resumed from {self.resume_path} at {trainer.images_shown / KIMG:.1f} kimg, "
                              f"{describe_level(self.config.model.aspect, trainer.state.resolution)} alpha {trainer.state.alpha:.3f}")
        check = check_during_training(trainer)  # every record the run will read, in a thread
        try:
            outcome = trainer.run()
        finally:
            check.stop()
        damage = first_failure(check.failure, self.world_size)  # on whichever process found it
        damage = damage and (trainer.database_replaced() or damage)
        if lock is not None:
            lock.release()
        leave_process_group()  # every process has its checkpoint written: leave together
        trackers.finish(accelerator, run_dir)
        if damage is not None:
            raise CommandLineError(f"{damage} (found by the background check; stopped at "
                                   f"{trainer.images_shown / KIMG:.3f} kimg with a checkpoint saved)")
        return EXIT_PREEMPTED if outcome == "stopped" else EXIT_FINISHED

    def _prepare_folder(self, run_dir: Path, log) -> None:
        """Main process, lock held: clear what killed runs left, set damaged checkpoints aside, save the config."""
        what = "the run folder"
        try:
            removed = remove_stale_temp_files(run_dir)
            if removed:
                log(f"removed {len(removed)} temporary file(s) left by an interrupted run: "
                    f"{', '.join(p.name for p in removed)}")
            for path, why in self.damaged:
                what = f"{path.name}{checkpoints.DAMAGED_SUFFIX}"
                moved = checkpoints.set_aside(path)
                log(f"warning: {why}; resuming from {self.resume_path.name if self.resume_path else 'the start'} "
                    f"instead (the damaged file is kept as {moved.name})")
            what = CONFIG_FILE
            atomic_write_text(run_dir / CONFIG_FILE, self.config.to_json())
        except OSError as exc:
            raise write_failed(exc, run_dir, what, None) from None


def _has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def _training_device(name: str | None):
    """--device auto (default) | cpu | cuda as a torch.device; cuda without CUDA is one line."""
    if name not in (None, "auto", "cpu", "cuda"):
        raise CommandLineError(f"--device {name}: use auto, cpu or cuda (each process gets its own GPU)")
    return choose_device(name)


def make_accelerator(run_dir: Path, log_with: str = "auto", config: dict | None = None, cpu: bool | None = None):
    """accelerate picks the devices and the process group, and starts the --log-with trackers."""
    from accelerate import Accelerator

    # accelerate forms a multi-process CPU group (gloo) only when told it is on the CPU; on a
    # machine with no accelerator say so, so `accelerate launch --multi_gpu --num_processes N`
    # (or torchrun) trains N CPU processes instead of N unconnected copies.
    names = trackers.resolve(log_with)
    cpu = not _has_accelerator() if cpu is None else cpu
    accelerator = Accelerator(cpu=cpu, **trackers.accelerator_options(names, run_dir))
    trackers.start(accelerator, names, config)
    return accelerator


def prepare_run(args: dict) -> RunPlan:
    """Turn parsed flags (only those given) into a RunPlan, or raise CommandLineError."""
    world_size = _world_size()
    device = _training_device(args.get("device"))
    resume_path, resume, damaged = _find_resume(args)
    try:
        if resume is not None:
            saved = resolve_config(TrainConfig.from_dict(resume["config"]), device)
            config = resolve_config(_apply_flags(saved.to_dict(), args), device)
            diffs = config.semantic_differences(saved)
            if diffs:
                raise CommandLineError(
                    f"the run at {resume_path} was trained with other values of {', '.join(diffs)}; "
                    f"leave those flags out to resume, or start a new --out")
            _check_config_flag(args, saved, resume_path, device)
        else:
            config = resolve_config(_apply_flags(_base_config(args), args), device)
            _check_existing_run(config, device)
        validate_setup(config, world_size)
        check_classes(config)
        if resume is not None:
            _check_same_dataset(config, resume)
    except (DatasetError, TrainingError, fileformat.CheckpointError) as exc:
        raise CommandLineError(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise CommandLineError(f"invalid configuration: {exc}") from None
    try:
        trackers.resolve(config.log_with)  # an unknown or missing tracker fails here, before any work
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None
    return RunPlan(config=config, resume=resume, resume_path=resume_path, world_size=world_size, damaged=damaged,
                   cpu=device.type == "cpu")


def _find_resume(args: dict) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(checkpoint path, loaded checkpoint, unreadable newer checkpoints that --resume auto skipped)."""
    which = args.get("resume")
    if which is None:
        return None, None, []
    if which == "auto":
        if "out" not in args:
            raise CommandLineError("--resume auto needs --out (the run folder to continue)")
        if not Path(args["out"]).is_dir():
            return None, None, []  # nothing to resume yet: start the run
        path, data, damaged = checkpoints.load_newest_readable(args["out"])
        if damaged and path is None:
            raise CommandLineError(
                f"--resume auto: no checkpoint in {args['out']} is readable ({damaged[0][1]}); "
                f"move the damaged files away to start the run over")
        return path, data, damaged  # (None, None, []): nothing to resume yet, start the run
    try:
        path = checkpoints.resolve_checkpoint_path(which)
    except fileformat.CheckpointError as exc:
        raise CommandLineError(f"--resume: {exc}") from None
    try:
        data = checkpoints.load_checkpoint(path)
    except fileformat.CheckpointError as exc:
        raise CommandLineError(f"--resume: {exc}") from None
    if data.get("kind") != fileformat.TRAINING_KIND:
        raise CommandLineError(f"--resume: {path} is an exported generator, not a training checkpoint")
    args.setdefault("out", str(path.parent))
    return path, data, []


def _check_config_flag(args: dict, saved: TrainConfig, resume_path: Path, device) -> None:
    """--config on a resume names what the run was trained with, or is refused: the run's own
    config.json always decides, and a preset or file that says otherwise would be silently ignored."""
    if "config" not in args:
        return
    named = resolve_config(_apply_flags(_base_config({**args, "data": saved.data, "out": saved.out}), args), device)
    diffs = named.semantic_differences(saved)
    if diffs:
        shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CommandLineError(f"--config {args['config']}: the run at {resume_path} was trained with another "
                               f"config ({shown} differ); leave --config out to resume, or start a new --out")


def _base_config(args: dict) -> dict:
    """The preset's or file's config as a dict, with data/out filled in."""
    for flag in ("data", "out"):
        if flag not in args:
            raise CommandLineError(f"--{flag} is required (see train.py --help)")
    source = args.get("config", "paper")
    if source in PRESETS:
        metadata = read_metadata(args["data"])
        resolution = args.get("resolution")
        if resolution is None:
            resolution = max(int(r) for r in metadata["resolutions"])
        defaults = preset_defaults(source, resolution)
        # The model's shape is the database's (validate_setup refuses a config file's other shape).
        defaults["model"] = dataclasses.replace(defaults["model"], aspect=dataset_aspect(metadata),
                                                class_names=_database_classes(args["data"]))  # auto
        config = TrainConfig(data=args["data"], out=args["out"], **defaults)
        return config.to_dict()
    if source.endswith(".json") or Path(source).is_file():
        return load_config_file(source)
    raise CommandLineError(f"--config: {source!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")


def _apply_flags(base: dict, args: dict) -> TrainConfig:
    config = dict(base)
    config["model"] = dict(base["model"])
    config["schedule"] = dict(base["schedule"])
    for name in SIMPLE_FLAGS:
        if name in args:
            config[name] = args[name]
    for name in SCHEDULE_FLAGS:
        if name in args:
            config["schedule"][name] = args[name]
    if "resolution" in args:
        config["model"]["resolution"] = args["resolution"]
        config["schedule"]["max_resolution"] = args["resolution"]
    if "batch" in args:
        table = {int(k): v for k, v in config["schedule"]["batch"].items()}
        table.update(parse_table(args["batch"], int, "--batch"))
        config["schedule"]["batch"] = table
    if "lr" in args:
        table = {int(k): v for k, v in config["schedule"]["lr"].items()}
        table.update(parse_table(args["lr"], float, "--lr"))
        config["schedule"]["lr"] = table
    if "metrics" in args:
        config["metrics"] = [m.strip() for m in args["metrics"].split(",") if m.strip()]
    if "conditional" in args:
        config["model"]["class_names"] = _conditional_classes(args["conditional"], config["data"])
    return TrainConfig.from_dict(config)


def _database_classes(data: str) -> list[str]:
    """The database's class names in label order; empty when it has no labels."""
    names, _ = read_labels(data)
    return list(names)


def _conditional_classes(choice: str, data: str) -> list[str]:
    """--conditional auto|on|off -> the model's class names (empty: unconditional)."""
    if choice == "off":
        return []
    names = _database_classes(data)
    if choice == "on" and not names:
        raise CommandLineError(f"--conditional on: {data} has no labels; build it with "
                               f"`python -m data_prep build ... --labels folders|FILE.json`, or leave the flag out")
    return names


def check_classes(config: TrainConfig) -> None:
    """A conditional model trains on a database with exactly its classes, in its order (DatasetError)."""
    if config.model.class_names:
        read_labels_for(config.data, config.model.class_names)


def _check_existing_run(config: TrainConfig, device) -> None:
    """A new run must not silently overwrite or mix with another run in the same folder."""
    run_dir = Path(config.out)
    if not run_dir.is_dir():
        return
    latest = checkpoints.find_latest_checkpoint(run_dir)
    if latest is not None:
        raise CommandLineError(
            f"{run_dir} already holds a run (latest {latest.name}); pass --resume auto to continue it, "
            f"or choose another --out")
    saved_path = run_dir / CONFIG_FILE
    if saved_path.is_file():
        try:
            saved = resolve_config(TrainConfig.from_json(saved_path.read_text()), device)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            return  # an unreadable config with no checkpoint: nothing of value to protect
        diffs = config.semantic_differences(saved)
        if diffs:
            raise CommandLineError(
                f"{run_dir} holds a run with other values of {', '.join(diffs)}; choose another --out")


def _check_same_dataset(config: TrainConfig, resume: dict) -> None:

    found = dataset_fingerprint(config.data)
    if found != resume["dataset_fingerprint"]:
        raise CommandLineError(
            f"{config.data} is not the database this run was trained on (fingerprint {found}, "
            f"the run's {resume['dataset_fingerprint']}); pass --data with the original database")


def validate_setup(config: TrainConfig, world_size: int) -> None:
    """Raise TrainingError (one line) for any setup problem before training starts."""
    metadata = read_metadata(config.data)
    aspect = dataset_aspect(metadata)
    if aspect != config.model.aspect:
        raise TrainingError(
            f"--data {config.data} holds {aspect} images (width:height) but this run's model is "
            f"{config.model.aspect}; pass a {config.model.aspect} database (data_prep build --aspect "
            f"{config.model.aspect}) or start a new run on this one")
    available = sorted(int(r) for r in metadata["resolutions"])
    needed = config.schedule.resolutions
    top = max(available)
    if config.model.resolution > top:
        raise TrainingError(
            f"--resolution {config.model.resolution} is above the database's largest level {describe_level(aspect, top)}; "
            f"train at {top} or rebuild {config.data} with --max-res {config.model.resolution}")
    missing = [r for r in needed if r not in available]
    if missing:
        raise TrainingError(
            f"{config.data} lacks the resolution(s) {', '.join(map(str, missing))} the schedule needs "
            f"(it has {', '.join(map(str, available))}); rebuild it with --min-res {min(needed)}")
    _validate_metrics(config, int(metadata["count"]))
    group = config.model.mbstd_group_size
    for res in needed:
        batch = config.schedule.batch_size(res)
        if batch % world_size:
            raise TrainingError(
                f"batch size {batch} at {describe_level(config.model.aspect, res)} does not divide over {world_size} processes; "
                f"set --batch so every size is a multiple of {world_size}")
        local = batch // world_size
        cap = config.max_batch_per_device if isinstance(config.max_batch_per_device, int) else None
        micro = min(local, cap or local)  # auto: chosen at run time among sizes that pass here
        if local % micro:
            raise TrainingError(
                f"--max-batch-per-device {config.max_batch_per_device} does not divide the per-process batch "
                f"{local} at {describe_level(config.model.aspect, res)}; choose a divisor")
        problem = micro_batch_problem(micro, batch, group, describe_level(config.model.aspect, res))  # also on resume with another cap
        if problem:
            raise TrainingError(problem)
    check_levels(config.data, needed)  # last (it reads): damage found now, not when a phase first reads a level


def _validate_metrics(config: TrainConfig, num_images: int) -> None:
    if not config.metrics:
        return

    try:
        names = parse_metric_names(config.metrics)
    except MetricError as exc:
        raise TrainingError(f"--metrics: {exc}") from None
    if config.metric_kimg <= 0:
        raise TrainingError("--metrics needs --metric-kimg K (evaluate every K thousand images)")
    if "fid" in names:
        if config.inception is None:
            raise TrainingError("--metrics fid needs --inception PATH (pt_inception-2015-12-05-6726825d.pth)")
        if not Path(config.inception).is_file():
            raise TrainingError(f"--inception: {config.inception} does not exist")
    if "swd" in names and config.metric_images > num_images:
        raise TrainingError(
            f"--metrics swd compares {config.metric_images} generated images with as many reals, but "
            f"{config.data} holds {num_images}; lower --metric-images")
