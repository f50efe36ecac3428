"""Shared command-line plumbing: one-line errors, never a traceback, for bad input."""

from __future__ import annotations

import argparse
import os
import sys


class CommandLineError(Exception):
    """A user-facing problem (bad flag, missing file, unusable checkpoint): one line, exit 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad or unknown flag as one line (plus a pointer to --help)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def choose_device(name: str | None):
    """A --device value as a torch.device; None or "auto": cuda when available, else cpu.
    A malformed name or a device this torch cannot use is a CommandLineError (one line)."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandLineError(f"--device {name}: not a device name (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandLineError(f"--device {name}: no CUDA device is available to this torch; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandLineError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise CommandLineError(f"--device {name}: only cpu and cuda are supported")
    return device


# Exit codes of train.py (README, "Running under a scheduler"). 1 stays Python's own: a bug.
EXIT_FINISHED = 0     # the schedule (or --total-kimg) is done
EXIT_USAGE = 2        # bad input, an unusable checkpoint or database, a run folder in use: fix, then rerun
EXIT_PREEMPTED = 3    # stopped by SIGTERM/SIGINT after saving a checkpoint: rerun with --resume auto
EXIT_WRITE_FAILED = 4 # the run folder could not be written (disk full, I/O error); the last checkpoint is intact
EXIT_LOST_PEER = 5    # another process of a multi-process run died; restart the group with --resume auto
EXIT_DIVERGED = 6     # every step of a whole tick was non-finite; stopped unsaved, the last good checkpoint kept

VERBOSE_ENV = "PROGAN_VERBOSE"  # set (train.py --verbose does) to never shorten messages
SHORTENED = f" ... [shortened; {VERBOSE_ENV}=1 shows all]"


def shorten(text: str, limit: int | None = 160) -> str:
    """`text`, or when longer than `limit` its start cut at a word boundary and marked, so a
    one-line error never ends mid-word; with PROGAN_VERBOSE=1 the full text."""
    if limit is None or len(text) <= limit or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return text
    space = text.rfind(" ", 0, limit + 1)  # a space right at `limit` keeps the last word whole
    cut = text[:space] if space > 0 else text[:limit]
    return cut.rstrip(" ,;:(") + SHORTENED


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message (shortened past `limit` characters; its type name
    when the message is empty), for one-line errors built from library exceptions."""
    lines = str(exc).strip().splitlines()
    return shorten(lines[0], limit) if lines else type(exc).__name__


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (so errors print once)."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str, prog: str, code: int = 2, every_process: bool = False) -> int:
    if every_process or is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def run_command(load_main, prog: str) -> None:
    """`sys.exit(main())` for a command whose imports take a while (torch, numpy, Pillow):
    `load_main` is the module holding `main`, or a function that imports and returns it. A Ctrl-C
    during those imports (or before: the entry script's first lines call
    progan.runtime.signals.hold_stop_signals) is one line and exit 130 (nothing was written yet), and
    once main has returned a late Ctrl-C during the interpreter's exit changes nothing."""
    import importlib
    import signal

    from progan.runtime.signals import stop_signals_held

    try:
        with stop_signals_held():  # a Ctrl-C in torch's import would abort it (progan.runtime.signals)
            main = importlib.import_module(load_main).main if isinstance(load_main, str) else load_main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing was written)", file=sys.stderr)
        sys.exit(130)
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
