"""Atomic writes keep the old file on failure; progress reports suit terminals and logs."""

import io
import json
import os

import pytest

from progan.runtime.fileio import append_jsonl, atomic_output, atomic_write_text
from progan.runtime.progress import Progress, format_duration


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp files left
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_failed_write_leaves_previous_file_untouched(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "precious")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half of a new ver")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_append_jsonl_adds_one_whole_line_per_record(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kimg": 0}\n')  # an existing log is appended to, not replaced
    append_jsonl(log, {"kimg": 1.5, "fid": 12.25})
    append_jsonl(log, {"kimg": 3.0, "note": "two\nlines"})
    lines = log.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"kimg": 0}, {"kimg": 1.5, "fid": 12.25}, {"kimg": 3.0, "note": "two\nlines"}]


def test_progress_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(3, "build", stream=stream, interval=3600) as progress:
        for _ in range(3):
            progress.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1  # nothing between intervals, one closing line
    assert lines[0].startswith("build:") and "3/3 img" in lines[0] and "img/s" in lines[0]
    assert "\r" not in stream.getvalue()


def test_progress_redraws_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(10, "build", stream=stream)
    progress._min_gap = 0.0
    progress.update(5)
    progress.close()
    out = stream.getvalue()
    assert "\r" in out and "[" in out and "ETA" in out and out.endswith("\n")


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(65) == "1m05s"
    assert format_duration(3 * 3600 + 61) == "3h01m01s"
