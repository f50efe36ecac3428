"""SIGINT and SIGTERM for the whole life of train.py: never a traceback, never a lost checkpoint.

`main` installs StopSignals on its first line. During set-up (flags, checkpoint loading, the
process group, the networks) the first signal raises Interrupted: there is nothing to save yet,
so train.py says so in one line and exits 3 (EXIT_PREEMPTED), leaving nothing a rerun of the same
command refuses. Once the loop starts (`training()`), a signal only asks it to stop: every process
stops at the same step and saves a checkpoint, then exits 3. Any further signal (an impatient
second Ctrl-C) is counted and otherwise ignored, so it can never cut the checkpoint short; kill -9
remains the way to stop at once, losing only the work since the last checkpoint.

Before all that, every command's first lines block SIGINT and SIGTERM at the OS level until its
imports are done (hold_stop_signals / release_stop_signals): a signal then waits, pending, and
goes to the right handler right after, instead of raising inside torch's import (a traceback,
or an abort from C++).
"""

from __future__ import annotations

import contextlib
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


def hold_stop_signals() -> None:
    """Block SIGINT and SIGTERM at the OS level: one that arrives stays pending, not lost, until
    release_stop_signals(). For the first lines of a command, before imports of C extensions such
    as torch: an exception raised by a Python signal handler while C++ runs a Python callback
    there aborts the whole process ("terminate called after throwing an instance of
    'pybind11::error_already_set'", SIGABRT), and a KeyboardInterrupt in any import is a
    traceback. No-op where the OS has no signal masks."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """Unblock them: a pending one goes, now, to the handler in place (Python runs it inside this
    call: KeyboardInterrupt, Interrupted or the default death are raised here)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held():
    """hold_stop_signals() inside, release_stop_signals() on leaving (also on an exception)."""
    hold_stop_signals()
    try:
        yield
    finally:
        release_stop_signals()


def pause_point(stage: str, seconds: float = 60.0, until=None) -> None:
    """For tests of signals: with PROGAN_TEST_PAUSE=STAGE:FILE, write FILE (this PID) and wait here
    up to `seconds` (or until `until()` is true, or the test deletes FILE), so a test can signal the
    process or change its files at a known point. A no-op otherwise. A stop signal held pending
    (hold_stop_signals) ends the wait too: it is answered where it is released."""
    name, _, path = os.environ.get(PAUSE_ENV, "").partition(":")
    if name != stage or not path:
        return
    Path(path).write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + seconds
    while (time.monotonic() < deadline and not (until is not None and until()) and not _stop_signal_pending()
           and os.path.exists(path)):
        time.sleep(0.02)


def _stop_signal_pending() -> bool:
    return hasattr(signal, "sigpending") and bool(set(STOP_SIGNALS) & signal.sigpending())
