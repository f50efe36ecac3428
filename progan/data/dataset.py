"""The multi-resolution LMDB dataset: the one module that knows its keys, metadata and encodings.

`data_prep build` writes databases through `DatasetWriter`; training reads them through
`MultiResolutionDataset`. Keeping both here means writer and reader cannot disagree.

A database is an LMDB environment folder (e.g. `faces.lmdb/`) holding:

    meta                canonical JSON metadata (`read_metadata`); written last, so a database
                        without it is an unfinished build
    {R}-{i:08d}         image i at resolution R: RGB uint8 pixels in HWC order, encoded as
                        metadata["encoding"] says (see ENCODINGS); R x R, or for a non-square
                        database (metadata["aspect"], e.g. "3:4") level_size(aspect, R)
    crc32/{R}           crc32 of every record of level R as stored, uint32 little-endian in index
                        order; metadata["checksums"] holds each table's own crc32. Databases built
                        before checksums have neither and are read unchecked.
    labels              labelled builds only: the class of image i (the same picture at every
                        level), uint32 little-endian in index order; metadata["classes"] holds the
                        class names (index = position), metadata["label_table"] the table's crc32.
                        Unlabelled databases have none of the three.
    build/state         progress of an unfinished build (removed when the build finishes)
    build/chunk/{n:08d} what chunk n of an unfinished build committed (removed likewise)

Every level below the top is the 2x2 box average of the stored level above, in exact
arithmetic, rounded half up (what PIL's `Image.reduce(2)` computes). So average-pooling a stored
level and rounding gives exactly the next stored level, which is what the trainer's fade-in of
real images assumes.

torch is imported only where tensors are made, so `data_prep` workers stay light.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import operator
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import lmdb
import numpy as np
from PIL import Image

from progan.shapes import DEFAULT_ASPECT, describe_level, level_size
from progan.runtime.errors import first_line
from progan.shapes import RESOLUTION_RULE, is_valid_resolution
from progan.runtime.diskspace import disk_full, shortfall, write_failure

FORMAT_NAME = "progan-multires-lmdb"
FORMAT_VERSION = 1
CHANNELS = 3
PYRAMID_RULE = "2x2 box average of the stored level above, rounded half up"

META_KEY = b"meta"
STATE_KEY = b"build/state"
CHUNK_PREFIX = b"build/chunk/"
CHECKSUM = "crc32"
CHECKSUM_PREFIX = b"crc32/"
LABELS_KEY = b"labels"
LABEL_DTYPE = "<u4"  # one class index per image

# name -> lossless. Numbers behind the default: bench/RESULTS.md, "Dataset build and reading".
ENCODINGS = {"raw": True, "png": True, "webp": True, "jpeg": False}
DEFAULT_ENCODING = "raw"

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of RAM one level may take to be served from memory
INITIAL_MAP_SIZE = 256 << 20  # the map starts here and doubles when full
PAGE_OVERHEAD = 4096  # per value, for the estimate of the room a commit needs


class DatasetError(ValueError):
    """A dataset path that cannot be used; the message is one line naming the path."""


class DatabaseWriteFailed(DatasetError):
    """A build could not write (disk full, I/O error); what it committed is kept."""


class FileCutShort(DatasetError):
    """data.mdb is shorter than its database needs (see MappedFile): no record can be trusted."""


class ImageRecord(NamedTuple):
    """One source image, encoded at every level of a build (ascending resolution)."""

    source: str  # path relative to the build's SOURCE folder
    levels: list[bytes]
    source_sha256: str  # of the source file's bytes
    label: int | None = None  # class index in a labelled build


# ----------------------------------------------------------------------------- keys and levels


def image_key(resolution: int, index: int) -> bytes:
    return b"%d-%08d" % (resolution, index)


def chunk_key(number: int) -> bytes:
    return CHUNK_PREFIX + b"%08d" % number


def checksum_key(resolution: int) -> bytes:
    return CHECKSUM_PREFIX + b"%d" % resolution


def record_checksum(data) -> int:
    """crc32 of a stored record's bytes (any buffer)."""
    return zlib.crc32(data)


def resolutions_between(min_res: int, max_res: int) -> list[int]:
    """Ascending powers of two from min_res to max_res inclusive."""
    for res in (min_res, max_res):
        if not is_valid_resolution(res):
            raise ValueError(f"resolution {res} is not {RESOLUTION_RULE}")
    if min_res > max_res:
        raise ValueError(f"min resolution {min_res} is above max resolution {max_res}")
    return [1 << n for n in range(min_res.bit_length() - 1, max_res.bit_length())]


def build_pyramid(top: Image.Image, min_res: int) -> list[Image.Image]:
    """All levels from `top` (RGB, square or of a supported aspect) down to the level whose long
    side is min_res, ascending resolution.

    Each level is made from the level above as stored (uint8), never from the original.
    """
    levels = [top]
    while max(levels[-1].size) > min_res:
        levels.append(levels[-1].reduce(2))  # (a + b + c + d + 2) >> 2 per channel
    return levels[::-1]


# ----------------------------------------------------------------------------- encodings


def encode_image(image: Image.Image, encoding: str) -> bytes:
    """Encode an RGB image for storage."""
    if encoding == "raw":
        return image.tobytes()
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif encoding == "webp":
        image.save(buffer, format="WEBP", lossless=True, quality=0, method=0)  # fastest lossless
    elif encoding == "jpeg":
        image.save(buffer, format="JPEG", quality=100, subsampling=0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    return buffer.getvalue()


def decode_image(data, encoding: str, resolution: int, aspect: str = DEFAULT_ASPECT) -> np.ndarray:
    """Decode one stored record to uint8 [H, W, 3] (R x R when square); ValueError if it is not that."""
    width, height = level_size(aspect, resolution)
    shape = (height, width, CHANNELS)
    if encoding == "raw":
        if len(data) != height * width * CHANNELS:
            raise ValueError(f"holds {len(data)} bytes, expected {height * width * CHANNELS}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    except Exception as error:  # PIL raises many types for bad data
        raise ValueError(f"cannot be decoded as {encoding}: {error}") from None
    if array.shape != shape:
        raise ValueError(f"decodes to shape {array.shape}, expected {shape}")
    return array


# ----------------------------------------------------------------------------- metadata


def canonical_json(value) -> bytes:
    """The one serialisation used for records: stable bytes for equal values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


# ----------------------------------------------------------------------------- the mapped file
#
# LMDB reads through a memory map. A page of the map past the end of data.mdb (a file cut short
# by an interrupted copy, a full disk, a truncation, also while it is open) is not an error LMDB
# can return: touching it raises SIGBUS and the process dies ("Bus error", exit 135, no message).
# Python cannot recover from SIGBUS (its handlers run after the faulting instruction, which would
# fault again; faulthandler only prints a traceback). So the fault is prevented, not caught:
#   - before mapping, the size the newest meta page needs ((mm_last_pg + 1) * page size: LMDB
#     never follows a page number above mm_last_pg) is compared with the file's size;
#   - every record read first compares the open file's size with it again (one fstat, well
#     under a microsecond next to reading a record), so a file cut while a trainer, verify or a
#     loader worker reads it stops the read with the same one line;
#   - a raw record's length is checked before its bytes are touched, so a damaged length cannot
#     send a read past the end of the file.
# What remains is a truncation landing inside the one record being read after its check (a
# window of microseconds): a loader worker killed that way is reported by the trainer in one
# line (progan.train.reals), a main-process reader dies with SIGBUS.

LMDB_MAGIC = 0xBEEFC0DE
LMDB_DATA_VERSION = 1
# Byte offsets in a meta page of 64-bit LMDB 0.9 (lmdb's mdb.c): a 16-byte page header (mp_pgno,
# mp_pad, mp_flags, mp_lower/upper), then MDB_meta: mm_magic, mm_version, mm_address, mm_mapsize,
# mm_dbs[2] (48 bytes each; the page size is kept in mm_dbs[0].md_pad), mm_last_pg, mm_txnid.
_META_FLAGS, _META_MAGIC, _META_PSIZE, _META_LAST_PAGE = 10, 16, 40, 136
_P_META = 0x08
_META_BYTES = 152


def _meta_page(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(page size, last page, txnid) of the meta page at `offset`, None when it is not one."""
    if len(data) < offset + _META_BYTES:
        return None
    flags, = struct.unpack_from("<H", data, offset + _META_FLAGS)
    magic, version = struct.unpack_from("<II", data, offset + _META_MAGIC)
    if not flags & _P_META or magic != LMDB_MAGIC or version != LMDB_DATA_VERSION:
        return None
    psize, = struct.unpack_from("<I", data, offset + _META_PSIZE)
    last_page, txnid = struct.unpack_from("<QQ", data, offset + _META_LAST_PAGE)
    return psize, last_page, txnid


def lmdb_needed_size(handle) -> int | None:
    """Bytes an LMDB data file must hold for every page its newest meta page can lead to, read
    from the two meta pages at its start (`handle`: a binary file open for reading). None when
    they are not both LMDB 0.9 meta pages of this machine's layout: LMDB itself then refuses the
    file with an error, or maps nothing past what the meta pages say."""
    handle.seek(0)
    first = handle.read(_META_BYTES)
    if len(first) < _META_BYTES and (not first or first[_META_MAGIC:_META_MAGIC + 4] == struct.pack("<I", LMDB_MAGIC)
                                     or len(first) <= _META_MAGIC):
        return 2 * 4096  # empty, or cut inside the first meta page: at least the two meta pages are missing
    meta0 = _meta_page(first, 0)
    if meta0 is None or not 512 <= meta0[0] <= 1 << 20:
        return None
    handle.seek(meta0[0])
    meta1 = _meta_page(handle.read(_META_BYTES), 0)
    if meta1 is None:
        return 2 * meta0[0] if len(first) == _META_BYTES else None  # second meta page cut off
    psize, last_page, _ = max(meta0, meta1, key=lambda meta: meta[2])  # LMDB uses the newer one
    return max(last_page + 1, 2) * psize


def cut_short(path, size: int, needed: int) -> str:
    """One line for a data file shorter than its database needs."""
    return (f"{path}: data.mdb is cut short ({size:,} of the {needed:,} bytes its database needs: an "
            f"interrupted copy, a full disk or a truncation); copy it again, or delete it and build it again")


class MappedFile:
    """data.mdb as a reader maps it: an open handle (the same file even if the path is replaced)
    and the size the database needs; `check()` before touching the map (see above)."""

    def __init__(self, path, data_file: str) -> None:
        self.path = os.fspath(path)
        self._handle = open(data_file, "rb")
        try:
            self.needed = lmdb_needed_size(self._handle) or 0
            self.check()
        except BaseException:
            self._handle.close()
            raise

    def check(self) -> None:
        """DatasetError (one line) if the file is now shorter than the database needs."""
        size = os.fstat(self._handle.fileno()).st_size
        if size < self.needed:
            raise FileCutShort(cut_short(self.path, size, self.needed))

    def read_ahead(self, offset: int, buffer: bytearray) -> None:
        """Read this part of the file (into `buffer`, thrown away) so that it is in the page cache
        when the map is read there: one large read instead of a 4 KiB page fault per page (LMDB
        maps without readahead; posix_fadvise WILLNEED is ignored by some file systems)."""
        with contextlib.suppress(OSError):
            os.preadv(self._handle.fileno(), [buffer], offset)

    def close(self) -> None:
        self._handle.close()


def _data_file(path: str) -> str:
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def check_data_file(path) -> None:
    """FileCutShort (one line) if the database's data.mdb is now shorter than it needs; without
    mapping it (for a reader that died of SIGBUS: was the file cut?)."""
    try:
        with open(_data_file(os.fspath(path)), "rb") as handle:
            needed, size = lmdb_needed_size(handle), os.fstat(handle.fileno()).st_size
    except OSError as error:
        raise DatasetError(f"{path}: cannot read data.mdb ({error.strerror})") from None
    if needed and size < needed:
        raise FileCutShort(cut_short(path, size, needed))


def _open_readonly(path) -> tuple[lmdb.Environment, MappedFile]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder")
    is_folder = os.path.isdir(path)
    if is_folder and not os.path.exists(os.path.join(path, "data.mdb")):
        raise DatasetError(f"{path}: not an LMDB database (no data.mdb inside)")
    try:
        mapped = MappedFile(path, _data_file(path))  # before the map exists
    except OSError as error:
        raise DatasetError(f"{path}: cannot read data.mdb ({error.strerror})") from None
    try:
        # lock=False: reading needs no write access to the folder; builds never overlap reads.
        env = lmdb.open(
            path, subdir=is_folder, readonly=True, lock=False, readahead=False, meminit=False
        )
    except lmdb.Error as error:
        mapped.close()
        raise DatasetError(f"{path}: not an LMDB database ({error})") from None
    return env, mapped


# py-lmdb refuses to open one environment twice in a process, yet a trainer holds several
# levels (and reads metadata) of the same database at once, and the background check reads it
# from a thread: readers share one environment per (database, process), counted, and closed
# with its last user. The table is guarded by a lock (renewed in a forked child).
_SHARED_ENVS: dict[tuple[str, int], list] = {}  # (real path, pid) -> [environment, users, MappedFile]
_SHARED_LOCK = threading.Lock()
# Datasets released by the garbage collector. A finalizer can run at any allocation, also while
# this thread holds _SHARED_LOCK (a deadlock if it took the lock), so __del__ only queues its
# release here (deque.append takes no lock) and the next acquire or release carries it out.
_DEFERRED_RELEASES: collections.deque = collections.deque()


def _renew_shared_lock() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # a thread of the parent may have held it at fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_shared_lock)


def _shared_key(path) -> tuple[str, int]:
    return os.path.realpath(os.fspath(path)), os.getpid()


def _acquire_env(path) -> lmdb.Environment:
    return _acquire(path)[0]


def _acquire(path) -> tuple[lmdb.Environment, MappedFile]:
    with _SHARED_LOCK:
        _release_deferred()
        _close_inherited_envs()
        key = _shared_key(path)
        entry = _SHARED_ENVS.get(key)
        if entry is None:
            env, mapped = _open_readonly(path)
            entry = _SHARED_ENVS[key] = [env, 0, mapped]
        entry[1] += 1
        return entry[0], entry[2]


def mapped_file(path) -> MappedFile | None:
    """The size guard of a database this process has open (None when it has not)."""
    entry = _SHARED_ENVS.get(_shared_key(path))
    return entry[2] if entry is not None else None


def _close_inherited_envs() -> None:
    """In a forked child, close the environments inherited from the parent.

    LMDB handles must not cross fork(), and py-lmdb would refuse to reopen a database this
    process seems to hold already. Closing read-only, lock-free handles touches only this
    process's copies of the mapping and file descriptors; the parent keeps its own.
    """
    pid = os.getpid()
    for key in [key for key in _SHARED_ENVS if key[1] != pid]:
        env, _, mapped = _SHARED_ENVS.pop(key)
        with contextlib.suppress(lmdb.Error):
            env.close()
        mapped.close()


def _release_env(path) -> None:
    with _SHARED_LOCK:
        _release_deferred()
        _release_locked(path)


def _release_deferred() -> None:
    """Carry out the releases queued by finalizers (with _SHARED_LOCK held)."""
    while _DEFERRED_RELEASES:
        _release_locked(_DEFERRED_RELEASES.popleft())


def _release_locked(path) -> None:
    key = _shared_key(path)
    entry = _SHARED_ENVS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _SHARED_ENVS[key]
        entry[0].close()
        entry[2].close()


@contextlib.contextmanager
def _reading(path):
    """A read-only environment for a one-off read: a shared one if open, else a temporary one.
    The file's size is checked first (records read through it are checked each, read_record)."""
    env, mapped = _acquire(path)
    try:
        mapped.check()
        yield env
    except lmdb.Error as error:  # a damaged page on the way to a record
        raise DatasetError(f"{path}: the database is damaged ({first_line(error)}); delete it and build it again") from None
    finally:
        _release_env(path)


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
    return metadata


def _read_metadata_record(path) -> tuple[bytes, dict]:
    with _reading(path) as env, env.begin() as txn:
        record = txn.get(META_KEY)
        unfinished = txn.get(STATE_KEY) is not None
    return record, _parse_metadata(path, record, unfinished)


def read_build_records(path) -> tuple[dict | None, dict | None]:
    """(finished metadata, unfinished-build state) of a build output folder, read without
    writing or locking; (None, None) where no database is there yet. DatasetError (one line) if
    the path cannot be a build output or a record is corrupt."""
    path = Path(path)
    _check_output_folder(path)
    if not (path / "data.mdb").exists():
        return None, None
    with _reading(path) as env, env.begin() as txn:
        return _json_record(path, txn, META_KEY), _json_record(path, txn, STATE_KEY)


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
    with _reading(path) as env, env.begin() as txn:
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


# ----------------------------------------------------------------------------- reading


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
        self._level = None  # [N, 3, R, R] uint8 once loaded
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
            _release_env(self.path)
        self._env = self._mapped = None

    def __del__(self) -> None:
        # Never wait for the lock here (see _DEFERRED_RELEASES): queue the release, and carry it
        # out at once when the lock is free (the usual case: the database is closed right away).
        if getattr(self, "_env", None) is not None and self._env_pid == os.getpid():
            _DEFERRED_RELEASES.append(self.path)
            if _SHARED_LOCK.acquire(blocking=False):
                try:
                    _release_deferred()
                finally:
                    _SHARED_LOCK.release()
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
            self._env, self._mapped = _acquire(self.path)
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


# ----------------------------------------------------------------------------- writing


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
