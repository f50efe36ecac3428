"""Shared command-line plumbing: a parser whose errors are one line, --device, the entry wrapper.

The errors and exit codes themselves live in progan.runtime.errors (library code raises them too)."""

from __future__ import annotations

import argparse
import os
import sys

from progan.runtime.errors import CommandLineError
from progan.runtime.signals import install_command_handlers, stop_received, stop_signals_held, stopped_exit_code


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad or unknown flag as one line (plus a pointer to --help)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def choose_device(name, flag: str = "--device"):
    """A --device value (or a torch.device) as a torch.device; None or "auto": cuda when available,
    else cpu. A malformed name or a device this torch cannot use is a CommandLineError (one line)
    naming `flag`: "--device" on a command line, a keyword such as "device" in the Python API."""
    import torch  # here, not at the top: the parsers import this module before torch

    def said(value) -> str:
        return f"{flag} {value}" if flag.startswith("--") else f"{flag}={str(value)!r}"

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CommandLineError(f"{said(name)}: not a device name (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandLineError(f"{said(name)}: no CUDA device is available to this torch; use {said('cpu')} "
                                   f"or {said('auto')}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandLineError(f"{said(name)}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise CommandLineError(f"{said(name)}: only cpu and cuda are supported")
    return device


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (so errors print once)."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str, prog: str, code: int = 2, every_process: bool = False) -> int:
    if every_process or is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def run_command(load_main, prog: str) -> None:
    """`sys.exit(main())` for a command whose imports take a while (torch, numpy, Pillow):
    `load_main` is the module holding `main`, or a function that imports and returns it.

    One exit path for SIGINT and SIGTERM at any moment (progan.runtime.signals): during the
    imports (or before: the entry script's first lines call hold_stop_signals) it is one line and
    nothing was written; during main, main's own handling says its line and cleans up (a stop
    that escapes it, such as one during argument parsing, gets the line here); a stop that a
    command finished despite (its signal swallowed where Python ignores exceptions) still exits
    as stopped. Exit 130 for SIGINT, 143 for SIGTERM; once stopped, the process leaves at once
    (os._exit after flushing), so the interpreter's exit never waits on a terminated worker's
    queue. After a completed main, late signals are ignored."""
    import importlib
    import signal

    try:
        with stop_signals_held():  # a Ctrl-C in torch's import would abort it (progan.runtime.signals)
            install_command_handlers()
            main = importlib.import_module(load_main).main if isinstance(load_main, str) else load_main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing was written)", file=sys.stderr)
        _leave(stopped_exit_code())
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = stopped_exit_code()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if stop_received() is not None:
        if code not in (130, 143):  # finished all the same: say that it was asked to stop
            print(f"{prog}: interrupted (after its work was done)", file=sys.stderr)
        _leave(stopped_exit_code())
    sys.exit(code)


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
