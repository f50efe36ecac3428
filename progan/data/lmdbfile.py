"""LMDB's data file from outside: its meta pages, the size it needs, and the guard that turns a
file cut short into one line instead of a Bus error.
"""

from __future__ import annotations

import contextlib
import os
import struct

import lmdb

from progan.data.format import DatasetError, FileCutShort

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


def _shows_lmdb_magic(path: str) -> bool:
    """True when the file's first meta page carries LMDB's magic number (or is too short to tell
    only because the file is empty: an empty file is a database cut to nothing)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_META_MAGIC + 4)
    except OSError:
        return True  # let the open report it
    return not head or head[_META_MAGIC:_META_MAGIC + 4] == struct.pack("<I", LMDB_MAGIC)


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


def open_readonly(path) -> tuple[lmdb.Environment, MappedFile]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder")
    is_folder = os.path.isdir(path)
    if is_folder and not os.path.exists(os.path.join(path, "data.mdb")):
        raise DatasetError(f"{path}: not an LMDB database (no data.mdb inside)")
    if not is_folder and not _shows_lmdb_magic(path):  # a stray file, not a database cut short
        raise DatasetError(f"{path}: not an LMDB database (a progan database is the folder that "
                           f"`python -m data_prep build` writes)")
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
