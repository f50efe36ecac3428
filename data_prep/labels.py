"""`data_prep build --labels`: the class of each source file, from its folder or a JSON file.

    --labels folders     the class is the first folder under SOURCE (SOURCE/cat/x.png: "cat");
                         class names are those folder names, sorted (index = position)
    --labels FILE.json   {"a/b.png": "cat", ...}: path relative to SOURCE (forward slashes) ->
                         class name (classes: the distinct names, sorted) or index (classes
                         "0".."K-1", K = the largest index + 1); or the stylegan2-ada-pytorch
                         form {"labels": [["a/b.png", 3], ...]} (indices; K likewise), which may
                         also name its classes: "classes": ["cat", "dog", ...] (then K = their
                         number and an index past them is refused)

A file under SOURCE without a label (directly in SOURCE with `folders`, or not in the file) is
skipped like a broken file: one line, counted, recorded with the reason "no label". An entry of
the file that names no image under SOURCE is one line each and counted in the summary; the build
goes on with the files that have labels and is refused (exit 2, nothing written) only when no
file under SOURCE has one. A file that is not JSON or not of these shapes is one line, exit 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from progan.data.format import MAX_CLASSES

NO_LABEL = "no label"
FORMS = ('{"path/relative/to/SOURCE.png": "class name" or index, ...} or '
         '{"labels": [["path.png", index], ...]}')


class LabelError(ValueError):
    """A --labels value that cannot be used; the message is one line naming it."""


@dataclass
class Labels:
    classes: list[str]
    by_path: dict[str, int]  # source path (relative, "/") -> class index
    plan: dict  # what the build plan records: a resume or rebuild must match it
    unmatched: list[str] = field(default_factory=list)  # label-file entries naming no file under SOURCE

    def of(self, path: str) -> int | None:
        return self.by_path.get(path)


def resolve_labels(spec: str, source_paths: list[str]) -> Labels:
    """The labels of a build's files (`source_paths`, relative, sorted). LabelError (one line)."""
    if spec == "folders":
        return _from_folders(source_paths)
    if not spec.strip():
        raise LabelError(f"--labels {spec!r}: empty; give `folders` or a JSON file")
    return _from_file(Path(spec), source_paths, spec)


def skip_reason(spec: str) -> str:
    where = "directly in SOURCE, not in a class folder" if spec == "folders" else f"not in {Path(spec).name}"
    return f"{NO_LABEL}: {where}"


def _from_folders(source_paths: list[str]) -> Labels:
    classes = sorted({path.split("/", 1)[0] for path in source_paths if "/" in path})
    if len(classes) > MAX_CLASSES:
        raise LabelError(f"--labels folders: SOURCE has {len(classes)} subfolders, more than the limit of "
                         f"{MAX_CLASSES} classes")
    if not classes:
        raise LabelError("--labels folders: SOURCE has no subfolders of images; the class of an image is the "
                         "first folder under SOURCE (SOURCE/cat/1.png is a cat): put each class in its own folder")
    index = {name: i for i, name in enumerate(classes)}
    by_path = {path: index[path.split("/", 1)[0]] for path in source_paths if "/" in path}
    return Labels(classes, by_path, {"from": "folders", "classes": classes})


def _from_file(path: Path, source_paths: list[str], spec: str | None = None) -> Labels:
    def bad(what: str) -> LabelError:  # the flag as typed: Path("") would say "."
        return LabelError(f"--labels {spec if spec is not None else path}: {what}")

    try:
        raw = path.read_bytes()
    except OSError as error:
        raise bad(f"cannot read it ({error.strerror}); give `folders` or a JSON file") from None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad(f"not valid JSON ({error}); expected {FORMS}") from None
    declared = None
    if isinstance(value, dict) and isinstance(value.get("labels"), list):  # stylegan2-ada-pytorch's dataset.json
        entries = value["labels"]
        for number, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and _is_index(entry[1])):
                raise bad(f'"labels" entry {number} is {json.dumps(entry)[:60]}, expected ["path.png", index >= 0]')
        pairs = [(name, index) for name, index in entries]
        declared = value.get("classes")
        if declared is not None and not (isinstance(declared, list) and declared
                                         and all(isinstance(c, str) and c for c in declared)
                                         and len(set(declared)) == len(declared)):
            raise bad('"classes" must be a list of distinct, non-empty class names')
    elif isinstance(value, dict) and "labels" not in value:
        pairs = list(value.items())
        for name, label in pairs:
            if not (isinstance(label, str) and label) and not _is_index(label):
                raise bad(f"{json.dumps(name)} maps to {json.dumps(label)[:60]}, expected a class name or an index >= 0")
        kinds = {isinstance(label, str) for _, label in pairs}
        if len(kinds) > 1:
            raise bad("mixes class names and indices; use one or the other")
    else:
        raise bad(f"has the wrong shape; expected {FORMS}")
    if not pairs:
        raise bad("holds no labels")
    too_large = next(((name, label) for name, label in pairs if _is_index(label) and label >= MAX_CLASSES), None)
    if too_large:  # before anything is sized by it: range(4294967298) would fill the memory
        raise bad(f"{json.dumps(too_large[0])} has class index {too_large[1]}, above the limit of {MAX_CLASSES} "
                  f"classes (indices 0..{MAX_CLASSES - 1})")
    names = {label for _, label in pairs if isinstance(label, str)} if declared is None else set(declared)
    if len(names) > MAX_CLASSES:
        raise bad(f"names {len(names)} classes, more than the limit of {MAX_CLASSES}")

    if all(isinstance(label, str) for _, label in pairs):
        classes = sorted({label for _, label in pairs})
        index = {name: i for i, name in enumerate(classes)}
        pairs = [(name, index[label]) for name, label in pairs]
    elif declared is not None:
        classes = list(declared)
        for name, label in pairs:
            if label >= len(classes):
                raise bad(f"{json.dumps(name)} has class index {label}, but \"classes\" names {len(classes)} "
                          f"(indices 0..{len(classes) - 1})")
    else:
        classes = [str(i) for i in range(max(label for _, label in pairs) + 1)]

    by_name: dict[str, int] = {}
    for name, label in pairs:
        key = name[2:] if name.startswith("./") else name
        if by_name.get(key, label) != label:
            raise bad(f"{json.dumps(name)} is given two different classes")
        by_name[key] = label
    present = set(source_paths)
    by_path = {name: label for name, label in by_name.items() if name in present}
    unmatched = sorted(name for name in by_name if name not in present)
    if not by_path:
        raise bad(f"none of its {len(by_name)} paths names an image under SOURCE (e.g. {json.dumps(unmatched[0])}); "
                  "paths are relative to SOURCE with forward slashes, like \"cats/1.png\"")
    plan = {"from": "file", "file_sha256": hashlib.sha256(raw).hexdigest(), "classes": classes}
    return Labels(classes, by_path, plan, unmatched)


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
