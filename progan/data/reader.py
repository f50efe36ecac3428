"""Reading a database: its metadata and labels, checked records, and MultiResolutionDataset,
what training and the metrics read images through.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import subprocess
import sys
from typing import Sequence

import lmdb
import numpy as np

from progan.data.environments import acquire, reading, release, release_from_finalizer
from progan.data.format import (
    CHANNELS,
    CHECKSUM,
    ENCODINGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_DTYPE,
    LABELS_KEY,
    MAX_CLASSES,
    META_KEY,
    STATE_KEY,
    DatasetError,
    FileCutShort,
    checksum_key,
    decode_image,
    image_key,
    record_checksum,
)
from progan.data.lmdbfile import MappedFile
from progan.runtime.errors import first_line
from progan.shapes import ASPECTS, DEFAULT_ASPECT, RESOLUTION_RULE, describe_level, is_valid_resolution, level_size

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of RAM one level may take to be served from memory


def _parse_metadata(path, record: bytes | None, unfinished: bool) -> dict:
    if record is None:
        if unfinished:
            raise DatasetError(
                f"{path}: unfinished build; rerun the same `python -m data_prep build` command to finish it"
            )
        raise DatasetError(f"{path}: not a progan dataset (no metadata record)")
    try:
        metadata = json.loads(record)
    except ValueError:
        raise DatasetError(f"{path}: metadata record is corrupt (not JSON)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: not a progan dataset (metadata format is not {FORMAT_NAME})")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: dataset format version {version}; this progan reads version {FORMAT_VERSION}"
        )
    problem = metadata_problem(metadata)
    if problem:
        raise DatasetError(f"{path}: metadata damaged: {problem}; build the database again")
    return metadata


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def metadata_problem(metadata: dict) -> str | None:
    """What a metadata record lacks or holds wrong, against what every reader relies on; None when
    it is whole. Keys added in later versions of the format (aspect, level_sizes, checksums,
    classes) are checked when present, so older databases still open."""
    resolutions = metadata.get("resolutions")
    if not (isinstance(resolutions, list) and resolutions and all(_is_count(r) and is_valid_resolution(r)
                                                                   for r in resolutions)):
        return f"'resolutions' is {_shown(resolutions)}, not a list of resolutions ({RESOLUTION_RULE})"
    if resolutions != sorted(set(resolutions)):
        return f"'resolutions' {resolutions} is not in increasing order without repeats"
    if not _is_count(metadata.get("count")):
        return f"'count' is {_shown(metadata.get('count'))}, not a number of images"
    if metadata.get("encoding") not in ENCODINGS:
        return f"'encoding' is {_shown(metadata.get('encoding'))}, not one of {', '.join(ENCODINGS)}"
    aspect = metadata.get("aspect", DEFAULT_ASPECT)
    if aspect not in ASPECTS:
        return f"'aspect' is {_shown(aspect)}, not one of {', '.join(ASPECTS)}"
    if "level_sizes" in metadata and metadata["level_sizes"] != [list(level_size(aspect, r)) for r in resolutions]:
        return f"'level_sizes' {_shown(metadata['level_sizes'])} do not match aspect {aspect} at {resolutions}"
    if "checksums" in metadata:
        record = metadata["checksums"]
        tables = record.get("tables") if isinstance(record, dict) else None
        if not (isinstance(record, dict) and record.get("algorithm") == CHECKSUM and isinstance(tables, dict)
                and all(_is_count(tables.get(str(r))) for r in resolutions)):
            return f"'checksums' is {_shown(record)}, not a {CHECKSUM} table per resolution"
    if "classes" in metadata:
        classes = metadata["classes"]
        if not (isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES
                and all(isinstance(c, str) and c for c in classes) and len(set(classes)) == len(classes)):
            return f"'classes' is {_shown(classes)}, not a list of distinct class names (at most {MAX_CLASSES})"
        if not (isinstance(metadata.get("label_table"), dict) and _is_count(metadata["label_table"].get(CHECKSUM))):
            return f"'label_table' is {_shown(metadata.get('label_table'))}, not the label table's {CHECKSUM}"
    for key in ("sources", "skipped"):
        if key in metadata and not isinstance(metadata[key], list):
            return f"'{key}' is {_shown(metadata[key])}, not a list"
    return None


def _shown(value) -> str:
    text = "missing" if value is None else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_metadata_record(path) -> tuple[bytes, dict]:
    with reading(path) as env, env.begin() as txn:
        record = txn.get(META_KEY)
        unfinished = txn.get(STATE_KEY) is not None
    return record, _parse_metadata(path, record, unfinished)


def read_metadata(path) -> dict:
    """The metadata record of a finished database; DatasetError if there is none."""
    return _read_metadata_record(path)[1]


def dataset_aspect(metadata: dict) -> str:
    """A database's aspect ratio; databases built before non-square ones existed are square."""
    return metadata.get("aspect", DEFAULT_ASPECT)


def dataset_fingerprint(path) -> str:
    """16 hex digits identifying the database contents.

    sha256 of the metadata record, which holds the build options, library versions and a sha256
    over every source file's bytes (no timestamps), so it changes when the images change and is
    identical for identical builds, resumed or not.
    """
    record, _ = _read_metadata_record(path)
    return hashlib.sha256(record).hexdigest()[:16]


def database_identity(path) -> tuple[int, int] | None:
    """(device, inode) of a database's data file: a database deleted and built again at the same
    path is another file, even when this process still maps the old one. None when it is gone."""
    path = os.fspath(path)
    try:
        info = os.stat(os.path.join(path, "data.mdb") if os.path.isdir(path) else path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def fresh_fingerprint(path) -> str | None:
    """The fingerprint of the database at `path` now, read by a child process (this process may
    still map a file that was deleted, and LMDB opens a path once per process); None if unreadable."""
    code = "import sys; from progan.data.reader import dataset_fingerprint; print(dataset_fingerprint(sys.argv[1]))"
    try:
        done = subprocess.run([sys.executable, "-c", code, os.fspath(path)], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def replaced_message(path, fingerprint: str) -> str:
    """One line for a database that was replaced under a run that started on `fingerprint`."""
    now = fresh_fingerprint(path)
    return (f"{path}: the database was replaced during the run (fingerprint {fingerprint} at the start, "
            f"{now or 'none readable'} now); put the run's own database back and rerun with --resume auto, "
            f"or train on the new one in a new --out")


def class_names(metadata: dict) -> tuple[str, ...]:
    """A database's class names, index = position; () when it is unlabelled."""
    return tuple(metadata.get("classes", ()))


def label_table_problem(data, metadata: dict) -> str | None:
    """What is wrong with a label table as read (None: missing), or None when it is sound:
    its checksum, its length (one entry per image) and every value a class index."""
    if data is None:
        return f"label table {LABELS_KEY.decode()} is missing"
    count, classes = metadata["count"], class_names(metadata)
    if record_checksum(data) != metadata.get("label_table", {}).get(CHECKSUM):
        return f"label table {LABELS_KEY.decode()} fails its {CHECKSUM} checksum (its bytes changed since the build)"
    if len(data) != 4 * count:
        return f"label table {LABELS_KEY.decode()} holds {len(data) // 4} labels for {count} images"
    labels = np.frombuffer(data, dtype=LABEL_DTYPE)
    bad = np.flatnonzero(labels >= len(classes))
    if len(bad):
        return (f"label table {LABELS_KEY.decode()}: image {int(bad[0])} has class {int(labels[bad[0]])}, "
                f"only {len(classes)} classes ({len(bad)} such image(s))")
    return None


def _read_label_table(path, metadata: dict) -> np.ndarray | None:
    """int64 [N] class of each image, checked; None when unlabelled. DatasetError (one line)."""
    if "classes" not in metadata:
        return None
    with reading(path) as env, env.begin() as txn:
        data = txn.get(LABELS_KEY)
        data = None if data is None else bytes(data)
    problem = label_table_problem(data, metadata)
    if problem is not None:
        raise DatasetError(f"{path}: {problem}; run `python -m data_prep verify {path}` and rebuild the database")
    return np.frombuffer(data, dtype=LABEL_DTYPE).astype(np.int64)


def read_labels(path) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(class names, int64 [N] class index of image i) of a database; ((), None) when it is
    unlabelled. The table is checked against its checksum, length and the class count:
    DatasetError (one line) when it is damaged."""
    metadata = read_metadata(path)
    return class_names(metadata), _read_label_table(os.fspath(path), metadata)


def read_labels_for(path, class_names) -> np.ndarray:
    """The label table (int64 [N]) of a database that a class-conditional model with `class_names`
    trains on; DatasetError (one line) unless the database has exactly those classes, in that order.
    The one check of a database's classes against a model's (the run's set-up and the Trainer)."""
    names, labels = read_labels(path)
    want = tuple(class_names)
    if labels is None:
        raise DatasetError(f"the model is class-conditional ({len(want)} classes) but {path} has no labels; pass a "
                           f"labelled database, or train unconditionally (--conditional off for a new run)")
    if tuple(names) != want:
        raise DatasetError(f"{path} has the classes {', '.join(names)}; the model was made for {', '.join(want)} "
                           f"(same names, same order); pass the run's own database")
    return labels


class RecordError(ValueError):
    """What is wrong with one stored record: missing, unreadable, bad checksum, bad encoding."""


def read_checksum_table(txn, path, checksums: dict | None, resolution: int, count: int):
    """The crc32 of every record of one level (uint32 [count]); None for a database built without
    checksums (`checksums` is its metadata["checksums"]). DatasetError if the table is missing,
    unreadable or damaged."""
    if checksums is None:
        return None
    key = checksum_key(resolution)
    try:
        data = txn.get(key)
    except lmdb.Error:  # a damaged page on the way to it
        data = None
    if data is None or len(data) != 4 * count or record_checksum(data) != checksums["tables"].get(str(resolution)):
        raise DatasetError(
            f"{path}: checksum table {key.decode()} is missing or damaged; "
            f"run `python -m data_prep verify {path}` and rebuild the database")
    return np.frombuffer(data, dtype="<u4").copy()


def read_record(txn, resolution: int, index: int, encoding: str, checksums,
                aspect: str = DEFAULT_ASPECT, mapped: MappedFile | None = None) -> np.ndarray:
    """Image `index` at `resolution` as uint8 [H, W, 3], checked against its level's checksum
    table (None: unchecked) before decoding; RecordError or ValueError saying what is wrong.
    With `mapped`, the file's size is checked first: FileCutShort (not a record's fault)."""
    if mapped is not None:
        mapped.check()
    try:
        data = txn.get(image_key(resolution, index))
    except lmdb.Error as error:  # a damaged page on the way to the record
        raise RecordError(f"cannot be read ({first_line(error)})") from None
    if data is None:
        raise RecordError("is missing")
    # The length comes from the page; the bytes behind it are touched only when it is plausible.
    if encoding == "raw":
        width, height = level_size(aspect, resolution)
        if len(data) != width * height * CHANNELS:
            raise RecordError(f"holds {len(data)} bytes, expected {width * height * CHANNELS}")
    elif mapped is not None and len(data) > mapped.needed:
        raise RecordError(f"claims {len(data)} bytes, more than the whole file")
    if checksums is not None and record_checksum(data) != checksums[index]:
        raise RecordError(f"fails its {CHECKSUM} checksum (its bytes changed since the build)")
    return decode_image(data, encoding, resolution, aspect)


def damaged_record(path, resolution: int, index: int, reason: str, aspect: str = DEFAULT_ASPECT) -> str:
    """One line for a bad record: its key, image and level, and the command listing them all."""
    key = image_key(resolution, index).decode()
    return (f"{path}: record {key} {reason} (image {index} at {describe_level(aspect, resolution)}); "
            f"run `python -m data_prep verify {path}` to list every bad record")


class MultiResolutionDataset:
    """Images of one resolution from a database, as uint8 tensors [3, H, W] ([3, R, R] when square).

    Map-style (works with torch DataLoader). The LMDB is opened lazily in each process, so the
    object pickles cleanly and works in DataLoader workers under fork and spawn. When the whole
    level fits `memory_budget_bytes` (`in_memory`), it is decoded once into one array (on first
    use, or `preload()`; preload before forking workers to share it) and `get_batch` indexes it.
    `mirror=True` flips each image horizontally with probability 1/2 (torch's RNG, which
    DataLoader seeds per worker). A labelled database's classes: `class_names` (() when
    unlabelled), `labels` (int64 [N], image i's class index; None) and `class_counts` (int64 [K];
    None), the same at every resolution.
    """

    def __init__(
        self,
        path,
        resolution: int,
        mirror: bool = False,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.path = os.fspath(path)
        metadata = read_metadata(self.path)
        available = metadata["resolutions"]
        if resolution not in available:
            raise DatasetError(
                f"{self.path}: no {describe_level(dataset_aspect(metadata), resolution)} images; "
                f"available resolutions: {', '.join(map(str, available))}"
            )
        self.resolution = resolution
        self.aspect = dataset_aspect(metadata)
        self.width, self.height = level_size(self.aspect, resolution)
        self.mirror = mirror
        self.encoding = metadata["encoding"]
        self.length = metadata["count"]
        self.level_bytes = self.length * CHANNELS * self.height * self.width
        self.in_memory = self.level_bytes <= (memory_budget_bytes or 0)
        self._checksum_info = metadata.get("checksums")
        self._checksums = None  # the level's crc32 table, read with the first record
        self._env = None
        self._env_pid = None
        self._mapped = None  # the size guard of the open environment
        self._level = None  # [N, 3, H, W] uint8 once loaded
        self._metadata_labels = {key: metadata[key] for key in ("count", "classes", "label_table") if key in metadata}
        self.class_names = class_names(metadata)  # () when unlabelled
        self._labels = None  # int64 [N], read with the first use of `labels`

    @property
    def labels(self) -> np.ndarray | None:
        """int64 [N]: the class index of image i; None when the database is unlabelled. Read once
        (checked against its checksum, length and class count) and kept: it is small."""
        if self._labels is None and self.class_names:
            self._labels = _read_label_table(self.path, self._metadata_labels)
        return self._labels

    @property
    def class_counts(self) -> np.ndarray | None:
        """int64 [K]: images per class; None when the database is unlabelled."""
        labels = self.labels
        return None if labels is None else np.bincount(labels, minlength=len(self.class_names)).astype(np.int64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        torch = _torch()
        index = self._check_index(index)
        flip = self.mirror and bool(torch.rand(()) < 0.5)
        if self.in_memory:
            stored = self._loaded_level()[index]
            image = (stored[:, :, ::-1] if flip else stored).copy()  # one copy, flipped or not
        else:
            image = np.empty((CHANNELS, self.height, self.width), np.uint8)
            with self._environment().begin(buffers=True) as txn:
                self._read_chw(txn, index, image[:, :, ::-1] if flip else image)
        return torch.from_numpy(image)

    def get_batch(self, indices: Sequence[int] | np.ndarray):
        """uint8 tensor [N, 3, H, W] of the given images: the fast path for training."""
        torch = _torch()
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.in_memory:
            batch = self._loaded_level()[indices]  # IndexError when out of range
        else:
            batch = np.empty((len(indices), CHANNELS, self.height, self.width), np.uint8)
            with self._environment().begin(buffers=True) as txn:
                for slot, index in enumerate(indices):
                    self._read_chw(txn, self._check_index(int(index)), batch[slot])
        if self.mirror and len(batch):
            flip = (torch.rand(len(batch)) < 0.5).numpy()
            batch[flip] = batch[flip][..., ::-1]
        return torch.from_numpy(batch)

    def preload(self) -> None:
        """Load the level into memory now (only when `in_memory`)."""
        if self.in_memory:
            self._loaded_level()

    def close(self) -> None:
        if self._env is not None and self._env_pid == os.getpid():
            release(self.path)
        self._env = self._mapped = None

    def __del__(self) -> None:
        if getattr(self, "_env", None) is not None and self._env_pid == os.getpid():
            release_from_finalizer(self.path)
        self._env = self._mapped = None

    def __getstate__(self) -> dict:
        # The environment is per process and the level is reloaded where needed.
        state = self.__dict__.copy()
        state.update(_env=None, _env_pid=None, _mapped=None, _level=None)
        return state

    def __repr__(self) -> str:
        return (
            f"MultiResolutionDataset({self.path!r}, resolution={self.resolution}, aspect={self.aspect!r}, "
            f"images={self.length}, encoding={self.encoding!r}, in_memory={self.in_memory})"
        )

    def _check_index(self, index) -> int:
        index = operator.index(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index out of range for {self.length} images")
        return index

    def _environment(self) -> lmdb.Environment:
        # An LMDB environment must not cross fork(): reopen in every new process.
        if self._env is None or self._env_pid != os.getpid():
            self._env, self._mapped = acquire(self.path)
            self._env_pid = os.getpid()
        self._mapped.check()  # a transaction reads the meta pages
        return self._env

    def _read_chw(self, txn, index: int, out: np.ndarray) -> None:
        """Decode image `index` into `out` ([3, H, W], any strides): its only copy. Records are
        checked against their checksums: a damaged one stops here, never reaches training; so
        does a file cut short since it was opened (checked before each record)."""
        if self._checksums is None and self._checksum_info is not None:
            self._checksums = read_checksum_table(
                txn, self.path, self._checksum_info, self.resolution, self.length)
        try:
            hwc = read_record(txn, self.resolution, index, self.encoding, self._checksums, self.aspect,
                              self._mapped)
        except FileCutShort:
            raise
        except ValueError as error:
            raise DatasetError(damaged_record(self.path, self.resolution, index, str(error), self.aspect)) from None
        out[...] = hwc.transpose(2, 0, 1)

    def _loaded_level(self) -> np.ndarray:
        if self._level is None:
            level = np.empty((self.length, CHANNELS, self.height, self.width), np.uint8)
            with self._environment().begin(buffers=True) as txn:
                for index in range(self.length):
                    self._read_chw(txn, index, level[index])
            self._level = level
        return self._level


def _torch():
    import torch

    return torch
