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

The other commands (data_prep, generate.py, metrics) stop on either signal as on Ctrl-C
(install_command_handlers, through progan.runtime.cli.run_command): SIGTERM raises Terminated, a
KeyboardInterrupt, so the same cleanup runs (temporary files removed, worker processes ended) and
the same one line is said; the exit code is 130 for SIGINT, 143 for SIGTERM. Their worker
processes ignore both (quiet_worker): the parent decides, and a worker dies with its parent.
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


class Terminated(KeyboardInterrupt):
    """SIGTERM in a command that stops as on Ctrl-C: every `except KeyboardInterrupt` path runs."""


_RECEIVED: list[int] = []  # the stop signals a command's handler has seen, in order


def _command_handler(signum, frame) -> None:
    _RECEIVED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_command_handlers() -> None:
    """SIGINT raises KeyboardInterrupt, SIGTERM Terminated, and both are remembered: a signal that
    lands where Python ignores exceptions (a fork hook, a finalizer: "Exception ignored in ...")
    is raised again at the command's next raise_if_stopped()."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _command_handler)


def stop_received() -> int | None:
    """The first stop signal a command's handler saw, or None."""
    return _RECEIVED[0] if _RECEIVED else None


def raise_if_stopped() -> None:
    """For a command's long loops: raise the stop a swallowed signal asked for."""
    if _RECEIVED:
        raise Terminated() if _RECEIVED[0] == signal.SIGTERM else KeyboardInterrupt()


def stopped_exit_code() -> int:
    """EXIT_INTERRUPTED (130) after SIGINT (Ctrl-C), EXIT_TERMINATED (143) after SIGTERM: 128 +
    the signal's number, as a shell says."""
    return 128 + (stop_received() or signal.SIGINT)


def quiet_worker() -> None:
    """Worker process set-up: stop signals are the parent's to handle (a Ctrl-C or a SIGTERM sent
    to the process group must not kill a worker mid-task, nor print its traceback), and the
    worker dies with its parent (kill -9 of the parent would leave it blocked on its queue)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a forked worker inherits the hold
    if not os.uname().sysname == "Linux":
        return
    try:
        import ctypes  # here: only worker processes on Linux need it

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
