"""Damage in a database, found before hours of training are lost.

Every record's crc32 is stored at build time (progan.data, `crc32/{R}` tables). Two checks use
them: `verify` reads every record of every level and lists each bad one (`data_prep verify`);
`check_levels` is the trainer's cheap check at start: the key structure and count of each level
it will need, its checksum table, and a spread sample of records. Reading during training checks
each record's checksum too (MultiResolutionDataset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import lmdb
import numpy as np

from progan.aspect import DEFAULT_ASPECT, describe_level
from progan.cli import first_line
from progan.data import (
    DatasetError,
    _reading,
    damaged_record,
    dataset_aspect,
    image_key,
    read_checksum_table,
    read_metadata,
    read_record,
)

SAMPLE_RECORDS = 16  # per level, checked by the trainer at start


class BadRecord(NamedTuple):
    resolution: int
    index: int | None  # None: the level as a whole (its checksum table)
    reason: str
    aspect: str = DEFAULT_ASPECT

    def describe(self) -> str:
        res = describe_level(self.aspect, self.resolution)
        if self.index is None:
            return f"level {res}: {self.reason}"
        return f"level {res} image {self.index} (record {image_key(self.resolution, self.index).decode()}): {self.reason}"


@dataclass
class VerifyReport:
    records: int  # records read
    checksums: bool  # whether the database has them (older builds do not)
    bad: list[BadRecord] = field(default_factory=list)
    stray: str | None = None  # a record count that does not add up


def verify(path, on_record: Callable[[], None] | None = None,
           on_bad: Callable[[BadRecord], None] | None = None) -> VerifyReport:
    """Read every record at every level: present, readable, matching its checksum, decoding to
    the right shape. Bad records are collected (and passed to `on_bad` as found), never raised;
    DatasetError only when the database cannot be opened or its metadata is unusable."""
    metadata = read_metadata(path)
    count, encoding, resolutions = metadata["count"], metadata["encoding"], metadata["resolutions"]
    checksums, aspect = metadata.get("checksums"), dataset_aspect(metadata)
    report = VerifyReport(records=0, checksums=checksums is not None)

    def found(bad: BadRecord) -> None:
        report.bad.append(bad)
        if on_bad is not None:
            on_bad(bad)

    with _reading(path) as env:  # a damaged page outside any record: DatasetError
        txn = env.begin(buffers=True)
        try:
            for resolution in resolutions:
                try:
                    table = read_checksum_table(txn, path, checksums, resolution, count)
                except DatasetError:
                    found(BadRecord(resolution, None, "checksum table missing or damaged; "
                                                      "records checked by decoding only", aspect))
                    table, txn = None, _renew(env, txn)
                for index in range(count):
                    try:
                        read_record(txn, resolution, index, encoding, table, aspect)
                    except ValueError as error:
                        found(BadRecord(resolution, index, str(error), aspect))
                        txn = _renew(env, txn)  # LMDB invalidates a transaction that met a damaged page
                    report.records += 1
                    if on_record is not None:
                        on_record()
            expected = 1 + count * len(resolutions) + (len(resolutions) if checksums is not None else 0)
            entries = txn.stat()["entries"]
        finally:
            txn.abort()
    if entries != expected:
        report.stray = f"holds {entries} records, expected {expected}"
    return report


def _renew(env, txn):
    txn.abort()
    return env.begin(buffers=True)


def check_levels(path, resolutions, samples: int = SAMPLE_RECORDS) -> None:
    """The trainer's check at start, cheap next to a training phase: for each level in
    `resolutions`, every key present (a lookup each: the pages that hold the structure), the
    checksum table intact, and `samples` records spread over the level
    read, checksummed and decoded. DatasetError (one line, naming the record and `verify`)."""
    metadata = read_metadata(path)
    count, encoding, checksums = metadata["count"], metadata["encoding"], metadata.get("checksums")
    aspect = dataset_aspect(metadata)
    with _reading(path) as env, env.begin(buffers=True) as txn:
        for resolution in resolutions:
            _check_keys(txn, path, resolution, count, aspect)
            table = read_checksum_table(txn, path, checksums, resolution, count)
            for index in np.unique(np.linspace(0, count - 1, min(samples, count)).round().astype(int)):
                try:
                    read_record(txn, resolution, int(index), encoding, table, aspect)
                except ValueError as error:
                    raise DatasetError(damaged_record(path, resolution, int(index), str(error), aspect)) from None


def _check_keys(txn, path, resolution: int, count: int, aspect: str) -> None:
    """Every key of the level present: one B-tree lookup each, which reads the branch and leaf
    pages but not the pixels (LMDB hands back a pointer into the map). Lookups, not a cursor
    walk: LMDB's cursor asserts (aborts the process) on some damaged pages a lookup reports."""
    for index in range(count):
        try:
            found = txn.get(image_key(resolution, index)) is not None
        except lmdb.Error as error:
            raise DatasetError(damaged_record(path, resolution, index, f"cannot be read ({first_line(error)})", aspect)) from None
        if not found:
            raise DatasetError(damaged_record(path, resolution, index, "is missing", aspect))
