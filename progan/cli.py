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


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (so errors print once)."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str, prog: str, code: int = 2) -> int:
    if is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr)
    return code
