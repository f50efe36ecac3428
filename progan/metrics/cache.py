"""On-disk cache of real-image statistics, keyed by dataset fingerprint, resolution and options.

Every file is written atomically; an entry counts only once its key file (written last) exists
and matches, so an interrupted write is recomputed, never half-read.

- FID: mu and sigma of the real features, one small .npz (~32 MB).
- SWD: the real descriptor sets, normalised, one float32 .npy per pyramid level
  (~1.2 GB per level for 16384 images); read back memory-mapped, so they cost page cache,
  not process memory. The paper's code, too, computes the reals once and reuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from progan.fileio import atomic_output, atomic_write_text

CACHE_FORMAT = 1


def entry_stem(kind: str, key: dict) -> str:
    """A readable, unique file stem: kind, resolution, image count and a hash of the whole key."""
    key = {"format": CACHE_FORMAT, "kind": kind, **key}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{kind}-{key.get('resolution')}px-{key.get('images')}img-{digest}"


def _key_path(folder: Path, stem: str) -> Path:
    return folder / f"{stem}.json"


def _key_text(kind: str, key: dict) -> str:
    return json.dumps({"format": CACHE_FORMAT, "kind": kind, **key}, sort_keys=True, indent=1) + "\n"


def _matches(folder: Path, kind: str, key: dict) -> bool:
    path = _key_path(folder, entry_stem(kind, key))
    try:
        return path.read_text() == _key_text(kind, key)
    except OSError:
        return False


# -- FID: mu / sigma ------------------------------------------------------------------------
def load_fid_stats(folder: Path, key: dict) -> tuple[np.ndarray, np.ndarray] | None:
    stem = entry_stem("fid-real", key)
    if not _matches(folder, "fid-real", key):
        return None
    try:
        with np.load(folder / f"{stem}.npz") as data:
            return data["mu"], data["sigma"]
    except (OSError, KeyError, ValueError):
        return None


def save_fid_stats(folder: Path, key: dict, mu: np.ndarray, sigma: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = entry_stem("fid-real", key)
    with atomic_output(folder / f"{stem}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
    atomic_write_text(_key_path(folder, stem), _key_text("fid-real", key))


# -- SWD: descriptor sets -------------------------------------------------------------------
def load_swd_descriptors(folder: Path, key: dict, sizes: list[int]) -> list[torch.Tensor] | None:
    stem = entry_stem("swd-real", key)
    if not _matches(folder, "swd-real", key):
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


def save_swd_descriptors(folder: Path, key: dict, sizes: list[int], levels: list[torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = entry_stem("swd-real", key)
    for size, level in zip(sizes, levels):
        with atomic_output(folder / f"{stem}-level{size}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, level.numpy())
    atomic_write_text(_key_path(folder, stem), _key_text("swd-real", key))
