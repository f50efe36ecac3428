"""A dependency-free progress reporter for long work (dataset builds, sampling, metrics).

On a terminal it redraws one line: count/total, items/s and ETA. Elsewhere (CI logs, files,
pipes) it prints a plain line every `interval` seconds and a closing line, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts finished items and reports throughput; use as a context manager."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "img",
        stream: TextIO | None = None,
        interval: float = 10.0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.count = 0
        self.start_time = time.perf_counter()
        self._last_report = self.start_time
        self._closed = False
        self._is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        # A terminal redraws often; a log gets a line only every `interval` seconds.
        self._min_gap = 0.1 if self._is_tty else interval

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        elapsed = self.elapsed
        return self.count / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self._last_report >= self._min_gap:
            self._last_report = now
            self._report(final=False)

    def write(self, line: str) -> None:
        """Print one message line; on a terminal the bar is cleared first and redrawn below it."""
        if self._is_tty:
            self.stream.write("\r\033[K" + line + "\n")
            if not self._closed:
                self._report(final=False)
                return
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._report(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _line(self, final: bool) -> str:
        rate = self.rate
        parts = [f"{self.desc}:"]
        if self.total is not None:
            width = len(str(self.total))
            parts.append(f"{self.count:>{width}}/{self.total} {self.unit}")
            if self._is_tty and not final:
                parts.insert(1, _bar(self.count, self.total))
        else:
            parts.append(f"{self.count} {self.unit}")
        parts.append(f"{rate:.1f} {self.unit}/s")
        if final:
            parts.append(f"in {format_duration(self.elapsed)}")
        elif self.total is not None and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.count) / rate)}")
        return " ".join(parts)

    def _report(self, final: bool) -> None:
        line = self._line(final)
        if self._is_tty:
            end = "\n" if final else ""
            self.stream.write("\r\033[K" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _bar(count: int, total: int, width: int = 24) -> str:
    filled = width if total <= 0 else min(width, int(width * count / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"
