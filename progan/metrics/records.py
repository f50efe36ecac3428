"""Appending metric results to a run's JSON-lines log."""

from __future__ import annotations

import json
import os
from pathlib import Path


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append `record` as one complete line (one write, flushed and synced).

    A single write of a whole line is what keeps a concurrent reader or a crash from seeing
    half a record.
    """
    line = json.dumps(record, sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
