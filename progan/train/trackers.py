"""Experiment trackers through accelerate's own tracker API (`train.py --log-with`).

`--log-with` takes the tracker names accelerate knows (tensorboard, wandb, mlflow, comet_ml,
aim, clearml, dvclive, swanlab, trackio, ...) as a comma list, `auto` (the default: tensorboard
when it is installed, else none) or `none`. Each tick's numbers (the scalars of stats.jsonl)
go to every tracker with `accelerator.log`, stepped in images shown; each fixed-latent sample
grid goes as an image to the trackers whose accelerate class can log images (tensorboard,
wandb, aim, clearml, swanlab). TensorBoard writes under RUN/tensorboard.

A tracker's failure to write (a full disk) is the run's: TensorBoard writes from a background
thread, which keeps the error for the next call in the main thread; `start` installs a thread
hook that keeps such a thread's error off the terminal (no traceback), the training loop calls
the trackers like any other upkeep write (one line, a last checkpoint, exit 4), and `finish`
closes them the same way.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from progan.runtime.diskspace import write_failed

AUTO, NONE = "auto", "none"
TENSORBOARD = "tensorboard"
PROJECT_NAME = "tensorboard"  # accelerate's TensorBoard folder under the run (RUN/tensorboard), as before


def known_trackers() -> list[str]:
    """The tracker names this accelerate supports (its LoggerType, less 'all')."""
    from accelerate.utils import LoggerType

    return [str(t.value) for t in LoggerType if t != LoggerType.ALL]


def resolve(log_with: str) -> list[str]:
    """`--log-with` text -> the tracker names to start (maybe none). ValueError (one line,
    naming the flag) for a name accelerate does not know or whose package is not installed."""
    names = [name.strip().lower() for name in str(log_with).split(",") if name.strip()]
    if names in ([], [NONE]):
        return []
    if names == [AUTO]:
        return [TENSORBOARD] if _installed(TENSORBOARD) else []
    known = known_trackers()
    chosen: list[str] = []
    for name in names:
        if name in (AUTO, NONE):
            raise ValueError(f"--log-with {log_with}: {name!r} stands alone; give it or a list of trackers")
        if name not in known:
            raise ValueError(f"--log-with {name}: not a tracker accelerate supports; choose from "
                             f"{', '.join(known)}, or auto or none")
        if not _installed(name):
            raise ValueError(f"--log-with {name}: the {name} package is not installed; pip install {name}, "
                             f"or choose another tracker (or none)")
        if name not in chosen:
            chosen.append(name)
    return chosen


def _installed(name: str) -> bool:
    """Whether accelerate finds the tracker's package (as its own availability check does)."""
    from accelerate.tracking import get_available_trackers

    if name == TENSORBOARD:  # accelerate also takes tensorboardX; torch's writer needs tensorboard itself
        return importlib.util.find_spec("tensorboard") is not None
    return name in {str(t.value) for t in get_available_trackers()}


def accelerator_options(names: list[str], run_dir: Path) -> dict:
    """Keyword arguments for Accelerator(...) that set up `names`."""
    return dict(log_with=names, project_dir=str(run_dir)) if names else {}


def start(accelerator, names: list[str], config: dict | None = None) -> None:
    """init_trackers with the run's config flattened to the scalars trackers accept."""
    if names:
        quiet_writer_threads()
        accelerator.init_trackers(PROJECT_NAME, config=flatten(config) if config else None)


def finish(accelerator, run_dir: Path) -> None:
    """end_training: flush and close the trackers; a failed write is WriteFailed (one line, exit 4)."""
    try:
        accelerator.end_training()
    except OSError as exc:
        raise write_failed(exc, run_dir, "the trackers' logs", None) from None


# Writer threads of the tracker packages: an error there reaches the main thread at the next
# log call (TensorBoard's _AsyncWriter re-raises it), so the thread's own traceback is noise.
_WRITER_MODULES = ("tensorboard.", "tensorboardX.", "torch.utils.tensorboard")
thread_errors: list[BaseException] = []  # what those threads raised, for the record (and tests)


def _is_writer_thread(thread: threading.Thread | None) -> bool:
    module = type(thread).__module__ if thread is not None else ""
    return module.startswith(_WRITER_MODULES)


def quiet_writer_threads() -> None:
    """Keep the tracker writer threads' errors (a full disk) off the terminal; others as before."""
    previous = threading.excepthook
    if getattr(previous, "_progan_quiet", False):
        return

    def hook(args) -> None:
        if _is_writer_thread(args.thread) and isinstance(args.exc_value, OSError):
            thread_errors.append(args.exc_value)  # re-raised in the main thread by the next log call
            return
        previous(args)

    hook._progan_quiet = True
    threading.excepthook = hook


def flatten(config: dict, prefix: str = "") -> dict:
    """{'model': {'resolution': 16}} -> {'model.resolution': 16}; lists and dicts below become text."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            flat.update(flatten(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value if value is not None else "none"
        else:
            flat[name] = str(value)
    return flat


def log_image(accelerator, name: str, image, step: int) -> None:
    """Send one uint8 [H, W, C] picture to every tracker whose accelerate class logs images."""
    for tracker in getattr(accelerator, "trackers", None) or []:
        if tracker.name == TENSORBOARD:
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({name: [image]}, step=step)
