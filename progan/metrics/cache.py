"""On-disk cache of real-image statistics, keyed by dataset fingerprint, resolution and options.

Every file is written atomically; an entry counts only once its key file (written last) exists
and matches, so an interrupted write is recomputed, never half-read. A cache that cannot be
written (read-only folder, a file in the way) is a warning on stderr: the result is kept.

- FID: mu and sigma of the real features, one small .npz (~32 MB).
- SWD: the real descriptor sets, normalised, one float32 .npy per pyramid level
  (~1.2 GB per level for 16384 images); read back memory-mapped, so they cost page cache,
  not process memory. The paper's code, too, computes the reals once and reuses them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from progan.runtime.fileio import atomic_output, atomic_write_text

CACHE_FORMAT = 1


def _entry(kind: str, key: dict) -> tuple[str, str]:
    """(file stem, key file text) of an entry; the stem is readable (kind, resolution, image
    count) and unique (a hash of the whole key)."""
    full = {"format": CACHE_FORMAT, "kind": kind, **key}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{kind}-{key.get('resolution')}px-{key.get('images')}img-{digest}"
    return stem, json.dumps(full, sort_keys=True, indent=1) + "\n"


def _matches(folder: Path, stem: str, key_text: str) -> bool:
    try:
        return (folder / f"{stem}.json").read_text() == key_text
    except OSError:
        return False


def _warn_unwritable(folder: Path, error: OSError) -> None:
    # The statistics were computed and are used; only the next run loses the shortcut.
    reason = error.strerror or str(error)
    where = error.filename or folder
    print(f"warning: metric cache not written ({where}: {reason}); the result is kept, "
          f"the real images will be read again next time", file=sys.stderr, flush=True)


# -- FID: mu / sigma ------------------------------------------------------------------------
def load_fid_stats(folder: Path, key: dict) -> tuple[np.ndarray, np.ndarray] | None:
    stem, key_text = _entry("fid-real", key)
    if not _matches(folder, stem, key_text):
        return None
    try:
        with np.load(folder / f"{stem}.npz") as data:
            return data["mu"], data["sigma"]
    except (OSError, KeyError, ValueError):
        return None


def save_fid_stats(folder: Path, key: dict, mu: np.ndarray, sigma: np.ndarray) -> bool:
    """Write the entry (key file last); an unwritable folder is a warning on stderr. True if written."""
    stem, key_text = _entry("fid-real", key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(folder / f"{stem}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mu=mu, sigma=sigma)
        atomic_write_text(folder / f"{stem}.json", key_text)
    except OSError as error:
        _warn_unwritable(folder, error)
        return False
    return True


# -- SWD: descriptor sets -------------------------------------------------------------------
def load_swd_descriptors(folder: Path, key: dict, sizes: list[int]) -> list[torch.Tensor] | None:
    stem, key_text = _entry("swd-real", key)
    if not _matches(folder, stem, key_text):
        return None
    levels = []
    try:
        for size in sizes:
            # Copy-on-write map: a writable view (no torch warning) that never touches the file.
            array = np.load(folder / f"{stem}-level{size}.npy", mmap_mode="c")
            if array.dtype != np.float32 or array.ndim != 2:
                return None
            levels.append(torch.from_numpy(array))
    except (OSError, ValueError):
        return None
    return levels


def save_swd_descriptors(folder: Path, key: dict, sizes: list[int], levels: list[torch.Tensor]) -> bool:
    """Write the entry (key file last); an unwritable folder is a warning on stderr. True if written."""
    stem, key_text = _entry("swd-real", key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for size, level in zip(sizes, levels):
            with atomic_output(folder / f"{stem}-level{size}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, level.numpy())
        atomic_write_text(folder / f"{stem}.json", key_text)
    except OSError as error:
        _warn_unwritable(folder, error)
        return False
    return True
