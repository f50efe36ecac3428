"""SIGINT and SIGTERM for the whole life of train.py: never a traceback, never a lost checkpoint.

`main` installs StopSignals on its first line. During set-up (flags, checkpoint loading, the
process group, the networks) the first signal raises Interrupted: there is nothing to save yet,
so train.py says so in one line and exits 3 (EXIT_PREEMPTED), leaving nothing a rerun of the same
command refuses. Once the loop starts (`training()`), a signal only asks it to stop: every process
stops at the same step and saves a checkpoint, then exits 3. Any further signal (an impatient
second Ctrl-C) is counted and otherwise ignored, so it can never cut the checkpoint short; kill -9
remains the way to stop at once, losing only the work since the last checkpoint.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PAUSE_ENV = "PROGAN_TEST_PAUSE"  # tests: "STAGE:FILE" makes pause_point(STAGE) write FILE and wait


class Interrupted(BaseException):
    """A stop signal during set-up, before there is anything to save. A BaseException (like
    KeyboardInterrupt), so library code that catches Exception cannot swallow it."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """Turns SIGINT/SIGTERM into Interrupted during set-up, then into a flag the loop checks."""

    def __init__(self, during_setup: bool = True) -> None:
        self.requested = False      # a stop was asked for (the loop reads this)
        self.signal_name = ""       # e.g. "SIGTERM"; empty when the stop came another way
        self.repeats = 0            # signals after the first, ignored
        self._raise = during_setup  # set-up: the first signal raises Interrupted
        self._previous: dict = {}

    def install(self) -> bool:
        """Handle the stop signals (main thread only); False when already installed or impossible."""
        if self._previous:
            return False
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (some test runners, notebooks' workers)
                return False
        return True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def training(self) -> None:
        """From now on a signal asks the loop to stop and save, and raises nothing."""
        self._raise = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.repeats += 1  # the stop is under way: a checkpoint is being made safe
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._raise:
            raise Interrupted(self.signal_name)


def pause_point(stage: str, seconds: float = 60.0, until=None) -> None:
    """For tests of signals: with PROGAN_TEST_PAUSE=STAGE:FILE, write FILE (this PID) and wait here
    up to `seconds` (or until `until()` is true), so a test can signal the process at a known
    point. A no-op otherwise."""
    name, _, path = os.environ.get(PAUSE_ENV, "").partition(":")
    if name != stage or not path:
        return
    Path(path).write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until is not None and until()):
        time.sleep(0.02)
