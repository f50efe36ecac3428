"""One-line errors and the exit codes every command shares: what a user sees instead of a traceback."""

from __future__ import annotations

import os


class CommandLineError(Exception):
    """A user-facing problem (bad flag, missing file, unusable checkpoint): one line, exit 2."""


# Exit codes (README, "Exit codes"); data_prep, generate.py and metrics use the same. 130 is a
# Ctrl-C; 1 stays Python's own: a bug.
EXIT_FINISHED = 0     # the schedule (or --total-kimg) is done
EXIT_USAGE = 2        # bad input, an unusable checkpoint or database, a run folder in use: fix, then rerun
EXIT_PREEMPTED = 3    # stopped by SIGTERM/SIGINT after saving a checkpoint: rerun with --resume auto
EXIT_WRITE_FAILED = 4 # the run folder could not be written (disk full, I/O error); the last checkpoint is intact
EXIT_LOST_PEER = 5    # another process of a multi-process run died; restart the group with --resume auto
EXIT_DIVERGED = 6     # every step of a whole tick was non-finite; stopped unsaved, the last good checkpoint kept
EXIT_INTERRUPTED = 130  # data_prep, generate.py, metrics: Ctrl-C (128 + SIGINT); a build resumes when rerun
EXIT_TERMINATED = 143   # the same commands stopped by SIGTERM (128 + SIGTERM), as by Ctrl-C

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
