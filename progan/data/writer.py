"""Writing a database: DatasetWriter, the resumable, crash-safe builder that data_prep drives, and
write_growing, which grows LMDB's map as the data needs it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import lmdb
import numpy as np

from progan.data.environments import reading
from progan.data.format import (CHANNELS, CHECKSUM, CHECKSUM_PREFIX, ENCODINGS, FORMAT_NAME, FORMAT_VERSION,
                                LABEL_DTYPE, LABELS_KEY, META_KEY, PYRAMID_RULE, STATE_KEY, DatabaseWriteFailed,
                                DatasetError, FileCutShort, ImageRecord, canonical_json, checksum_key, chunk_key,
                                image_key, record_checksum)
from progan.data.lmdbfile import cut_short, lmdb_needed_size
from progan.runtime.diskspace import disk_full, shortfall, write_failure
from progan.shapes import DEFAULT_ASPECT, level_size

INITIAL_MAP_SIZE = 256 << 20  # the map starts here and doubles when full
PAGE_OVERHEAD = 4096  # per value, for the estimate of the room a commit needs


def write_growing(env: lmdb.Environment, fill: Callable) -> None:
    """Run `fill(txn)` in one write transaction, doubling the map and retrying while it is full:
    no large reservation up front, and a failed attempt leaves nothing behind (it aborts)."""
    while True:
        try:
            with env.begin(write=True) as txn:
                fill(txn)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


class DatasetWriter:
    """Writes a database in committed chunks so an interrupted build can resume.

    Each `commit_chunk` is one LMDB transaction holding the chunk's images, a record of its
    sources and skipped files, and the updated progress; a kill at any point leaves the last
    committed chunk as the resume point. `finish` turns the chunk records into the metadata
    record in one final transaction. The map starts at `initial_map_size` and doubles whenever
    it is full, so no large reservation is made up front. One writer per folder (flock).
    """

    def __init__(self, path, initial_map_size: int = INITIAL_MAP_SIZE) -> None:
        self.path = Path(path)
        _check_output_folder(self.path)
        self.created_folder = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        data_file = self.path / "data.mdb"
        existing = data_file.stat().st_size if data_file.exists() else 0
        if existing:  # a cut file would be mapped past its end (SIGBUS): see MappedFile
            with open(data_file, "rb") as handle:
                needed = lmdb_needed_size(handle)
            if needed and existing < needed:
                raise FileCutShort(cut_short(self.path, existing, needed))
        self.env, self._lock_file = None, None
        try:
            # metasync=False keeps every commit atomic and consistent, only skipping one fsync.
            self.env = lmdb.open(
                str(self.path), map_size=max(initial_map_size, existing), metasync=False,
                readahead=False, meminit=False,
            )
            self._lock_file = _lock_exclusively(data_file)
            with self.env.begin() as txn:
                self.finished_metadata = _json_record(self.path, txn, META_KEY)
                self.state = _json_record(self.path, txn, STATE_KEY)
                foreign = self.finished_metadata is None and self.state is None and txn.stat()["entries"]
        except lmdb.Error as error:
            self.close()
            raise DatasetError(f"{self.path}: cannot open as an LMDB database ({error})") from None
        except BaseException:
            self.close()
            raise
        if foreign:
            self.close()
            raise DatasetError(
                f"{self.path}: holds an LMDB database that is not a progan build; choose another output path"
            )

    def start(self, plan: dict) -> None:
        """Record the plan of a new build. plan needs "resolutions" and "encoding"."""
        state = {"plan": plan, "next_file": 0, "next_index": 0, "chunks": 0}
        self._write(lambda txn: txn.put(STATE_KEY, canonical_json(state)), self.disk_bytes([]), "the build record")
        self.state = state

    def commit_chunk(
        self,
        end_file: int,
        images: Sequence[ImageRecord],
        skipped: Sequence[tuple[str, str]],
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Commit files state["next_file"]..end_file: their images and (path, reason) skips."""
        state = self.state
        resolutions = state["plan"]["resolutions"]
        first_index = state["next_index"]
        record = {
            "first_file": state["next_file"],
            "end_file": end_file,
            "first_index": first_index,
            "sources": [image.source for image in images],
            "source_sha256": [image.source_sha256 for image in images],
            "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
            # Computed from the bytes handed to LMDB, so damage at any later point shows.
            CHECKSUM: [[record_checksum(data) for data in image.levels] for image in images],
        }
        if "labels" in state["plan"]:  # a labelled build: each image's class index
            record["labels"] = [image.label for image in images]
            if any(not isinstance(label, int) for label in record["labels"]):
                raise ValueError("a labelled build needs a class index for every image")
        new_state = dict(
            state, next_file=end_file, next_index=first_index + len(images), chunks=state["chunks"] + 1
        )

        def write(txn):
            for offset, image in enumerate(images):
                if len(image.levels) != len(resolutions):
                    raise ValueError(f"{image.source}: {len(image.levels)} levels, expected {len(resolutions)}")
                for resolution, data in zip(resolutions, image.levels):
                    txn.put(image_key(resolution, first_index + offset), data)
            txn.put(chunk_key(state["chunks"]), canonical_json(record))
            txn.put(STATE_KEY, canonical_json(new_state))
            if before_commit is not None:
                before_commit()

        self._make_room(sum(len(data) + 2 * PAGE_OVERHEAD for image in images for data in image.levels))
        sizes = [len(data) for image in images for data in image.levels] + [len(canonical_json(record))]
        self._write(write, self.disk_bytes(sizes), f"the next chunk ({len(images)} images)")
        self.state = new_state

    def finish(self) -> dict:
        """Write the metadata record and drop the build records; returns the metadata."""
        result = {}

        def write(txn):
            chunks = _read_chunk_records(txn, self.state["chunks"])
            tables = _checksum_tables(txn, self.state["plan"]["resolutions"], chunks)
            for resolution, table in tables.items():
                txn.put(checksum_key(resolution), table)
            labels = _label_table(self.state["plan"], chunks)
            if labels is not None:
                txn.put(LABELS_KEY, labels)
            metadata = _assemble_metadata(self.state["plan"], chunks, tables, labels)
            txn.put(META_KEY, canonical_json(metadata))
            for number in range(len(chunks)):
                txn.delete(chunk_key(number))
            txn.delete(STATE_KEY)
            result["metadata"] = metadata

        count = self.state["next_index"]
        sizes = [4 * count] * (len(self.state["plan"]["resolutions"]) + 1) + [100 * count]  # tables, labels, metadata
        self._write(write, self.disk_bytes(sizes), "the metadata")
        self.finished_metadata, self.state = result["metadata"], None
        return self.finished_metadata

    def chunk_records(self) -> list[dict]:
        """What each committed chunk of the unfinished build recorded, in order."""
        with self.env.begin() as txn:
            return _read_chunk_records(txn, self.state["chunks"])

    def abandon(self) -> None:
        """Remove the database files (a build that produced nothing)."""
        self.close()
        for name in ("data.mdb", "lock.mdb"):
            (self.path / name).unlink(missing_ok=True)
        if self.created_folder and not any(self.path.iterdir()):
            self.path.rmdir()

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def disk_bytes(self, value_sizes: Sequence[int], times: int = 1) -> int:
        """About how much data.mdb grows by in `times` transactions adding values of these sizes:
        the pages they write (see _pages_written), less room the file already holds past the last
        committed page (left by a failed commit, and reused)."""
        psize, info = self.env.stat()["psize"], self.env.info()
        # + the branch and meta pages a commit rewrites
        end = (info["last_pgno"] + 9) * psize + times * _pages_written(value_sizes, psize)
        data_file = self.path / "data.mdb"
        allocated = data_file.stat().st_blocks * 512 if data_file.exists() else 0
        return max(0, end - max(allocated, (info["last_pgno"] + 1) * psize))

    def _write(self, fill: Callable, needed: int, what: str) -> None:
        """write_growing after a free-space check, with a failed write (disk full, I/O error) as
        one line. A failed transaction leaves the database at its last commit."""
        done = self.state["chunks"] if self.state else 0
        remedy = f"rerun the same command to resume ({done} chunks committed so far are kept)"
        free = shortfall(self.path, needed)
        if free is not None:
            raise DatabaseWriteFailed(disk_full(self.path, needed, free, what, remedy))
        try:
            write_growing(self.env, fill)
        except (lmdb.Error, OSError) as error:
            raise DatabaseWriteFailed(write_failure(self.path, error, needed, what, remedy)) from None

    def _make_room(self, incoming: int) -> None:
        """Double the map ahead of a write that would not fit (saves redoing a full chunk)."""
        info, page_size = self.env.info(), self.env.stat()["psize"]
        used = (info["last_pgno"] + 1) * page_size
        size = info["map_size"]
        while used + incoming > size:
            size *= 2
        if size != info["map_size"]:
            self.env.set_mapsize(size)


def _pages_written(value_sizes: Sequence[int], psize: int) -> int:
    """Bytes of pages an LMDB transaction adding values of these sizes writes. A value too big
    for half a page gets overflow pages of its own; smaller ones share leaf pages, counted as half
    full (page splits)."""
    node_max = (psize - 16) // 2 - 2  # LMDB's largest in-page node: header 16, two nodes a page
    node = 8 + 16  # node header and key (at most 16 bytes here)
    total = 0
    for size in value_sizes:
        if node + size > node_max:
            total += -(-(16 + size) // psize) * psize + 2 * (node + 8)
        else:
            total += 2 * (node + size + 2)
    return total


def _check_output_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path}: exists and is not a folder; choose another output path")
    if path.is_dir() and not (path / "data.mdb").exists():
        if any(name.name != "lock.mdb" for name in path.iterdir()):
            raise DatasetError(f"{path}: folder is not empty and holds no database; choose another output path")


def _lock_exclusively(data_file: Path):
    try:
        import fcntl
    except ImportError:  # Windows: LMDB's own writer lock still serialises transactions
        return None
    handle = open(data_file, "rb")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DatasetError(f"{data_file.parent}: another build is writing this database") from None
    return handle


def _json_record(path, txn, key: bytes):
    """The JSON record under `key`, None if absent; DatasetError (one line) if it is corrupt."""
    record = txn.get(key)
    if record is None:
        return None
    try:
        return json.loads(bytes(record))
    except ValueError:
        raise DatasetError(
            f"{path}: record {key.decode()} is corrupt (not JSON); delete {path} and build it again"
        ) from None


def _read_chunk_records(txn, count: int) -> list[dict]:
    chunks = []
    for number in range(count):
        record = txn.get(chunk_key(number))
        if record is None:
            raise DatasetError(f"build record {chunk_key(number).decode()} is missing")
        chunk = json.loads(bytes(record))
        previous = chunks[-1] if chunks else {"end_file": 0, "first_index": 0, "sources": []}
        if chunk["first_file"] != previous["end_file"] or chunk["first_index"] != previous[
            "first_index"
        ] + len(previous["sources"]):
            raise DatasetError(f"build record {chunk_key(number).decode()} does not follow the one before")
        chunks.append(chunk)
    return chunks


def _checksum_tables(txn, resolutions: list[int], chunks: list[dict]) -> dict[int, bytes]:
    """Each level's crc32 table (uint32 little-endian per image) from the chunk records; a chunk
    committed by a progan without checksums (a build resumed across versions) has its records
    read back instead."""
    per_image = []
    for chunk in chunks:
        if CHECKSUM in chunk:
            per_image.extend(chunk[CHECKSUM])
            continue
        for offset in range(len(chunk["sources"])):
            index = chunk["first_index"] + offset
            per_image.append([record_checksum(txn.get(image_key(res, index))) for res in resolutions])
    table = np.array(per_image, dtype="<u4").reshape(len(per_image), len(resolutions))
    return {res: table[:, level].tobytes() for level, res in enumerate(resolutions)}


def _label_table(plan: dict, chunks: list[dict]) -> bytes | None:
    """The label table (LABEL_DTYPE per image, index order) of a labelled build; None unlabelled."""
    if "labels" not in plan:
        return None
    return np.array([label for chunk in chunks for label in chunk["labels"]], dtype=LABEL_DTYPE).tobytes()


def _assemble_metadata(plan: dict, chunks: list[dict], tables: dict[int, bytes], labels: bytes | None = None) -> dict:
    sources = [source for chunk in chunks for source in chunk["sources"]]
    source_digest = hashlib.sha256()
    for chunk in chunks:
        for digest in chunk["source_sha256"]:
            source_digest.update(bytes.fromhex(digest))
    encoding = plan["encoding"]
    aspect = plan.get("options", {}).get("aspect", DEFAULT_ASPECT)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "resolutions": plan["resolutions"],
        "aspect": aspect,  # width:height; level R is level_sizes[i] = (width, height)
        "level_sizes": [list(level_size(aspect, res)) for res in plan["resolutions"]],
        "count": len(sources),
        "channels": CHANNELS,
        "pixel_layout": "HWC",
        "encoding": encoding,
        "lossless": ENCODINGS[encoding],
        "key_format": "{resolution}-{index:08d}",
        "pyramid": PYRAMID_RULE,
        "build": plan,
        "source_sha256": source_digest.hexdigest(),
        "sources": sources,
        "skipped": [skip for chunk in chunks for skip in chunk["skipped"]],
        "checksums": {
            "algorithm": CHECKSUM,
            "key_format": CHECKSUM_PREFIX.decode() + "{resolution}",
            "tables": {str(res): record_checksum(table) for res, table in tables.items()},
        },
    }
    if labels is not None:  # only then: an unlabelled database is what it was before labels
        metadata["classes"] = list(plan["labels"]["classes"])
        metadata["label_table"] = {"key": LABELS_KEY.decode(), "dtype": "uint32 little-endian, one class index per image",
                                   CHECKSUM: record_checksum(labels)}
    return metadata


def read_build_records(path) -> tuple[dict | None, dict | None]:
    """(finished metadata, unfinished-build state) of a build output folder, read without
    writing or locking; (None, None) where no database is there yet. DatasetError (one line) if
    the path cannot be a build output or a record is corrupt."""
    path = Path(path)
    _check_output_folder(path)
    if not (path / "data.mdb").exists():
        return None, None
    with reading(path) as env, env.begin() as txn:
        return _json_record(path, txn, META_KEY), _json_record(path, txn, STATE_KEY)
