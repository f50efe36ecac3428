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


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message (at most `limit` characters; its type name when
    the message is empty), for one-line errors built from library exceptions."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (so errors print once)."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str, prog: str, code: int = 2, every_process: bool = False) -> int:
    if every_process or is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr)
    return code
