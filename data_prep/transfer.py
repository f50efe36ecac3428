"""Moving encoded images from worker processes to the writer without pickling them.

A 1024x1024 image with its pyramid is about 4.2 MB of levels. Sent back as a pickled result it
would be serialised, pushed through a pipe and unpickled; through shared memory it is copied
once into a slot by the worker and once out by the writer.
"""

from __future__ import annotations

import collections
import mmap


class TransferRing:
    """Fixed-size slots in one anonymous shared memory mapping, inherited by forked workers.

    Anonymous MAP_SHARED memory needs no name (nothing is left behind if the build is killed)
    and is not limited by the size of /dev/shm (64 MB in many containers). The parent hands a
    free slot to each task and takes it back once it has copied the result out.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slots, self.slot_bytes = slots, slot_bytes
        # fd -1: anonymous. MAP_POPULATE maps every page into this process now, instead of
        # one page fault per 4 KB on every first read (a thousand per 1024x1024 image).
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self.buffer = mmap.mmap(-1, slots * slot_bytes, flags=flags)
        self._free = collections.deque(range(slots))

    def store(self, slot: int, parts: list[bytes]) -> bool:
        """Worker side: write `parts` back to back into `slot`; False if they do not fit."""
        if sum(map(len, parts)) > self.slot_bytes:
            return False
        offset = slot * self.slot_bytes
        for part in parts:
            self.buffer[offset : offset + len(part)] = part
            offset += len(part)
        return True

    def load(self, slot: int, lengths: list[int]) -> list[bytes]:
        """Parent side: copies of the parts a worker stored in `slot`."""
        offset, parts = slot * self.slot_bytes, []
        for length in lengths:
            parts.append(self.buffer[offset : offset + length])
            offset += length
        return parts

    def acquire(self) -> int:
        return self._free.popleft()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        self.buffer.close()
