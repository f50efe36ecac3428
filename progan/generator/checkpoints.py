"""Training checkpoints: the state of a run in its folder, written atomically, found again, and
read back (any model file: `load_checkpoint` also reads the exports).

A training checkpoint is one file that holds everything needed to continue exactly: G, D,
G_ema, both optimizers, the loss scalers, images shown, counters, the whole training config
and the dataset's fingerprint. The run's randomness is derived from (seed, step), so the step
counter restores every random stream on any number of processes (see progan/train/loop.py).

Checkpoints are written atomically: `checkpoint-<images>.pt` first, then the `latest.json`
pointer, so a kill at any moment leaves the previous checkpoint intact and findable. The file
format itself (weights only, checksums) is fileformat.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from progan.generator.fileformat import (FORMAT_NAME, FORMAT_VERSION, TRAINING_KIND, CheckpointError, check_finite,
                                         load_weights_only, verify_checksums, with_checksums)
from progan.generator.safetensors_file import read_safetensors
from progan.runtime.diskspace import free_bytes, state_nbytes, write_failed
from progan.runtime.fileio import atomic_output, atomic_write_text

LATEST_POINTER = "latest.json"
CHECKPOINT_GLOB = "checkpoint-*.pt"


# -- writing --------------------------------------------------------------------------------
def checkpoint_name(images_shown: int) -> str:
    return f"checkpoint-{images_shown:010d}.pt"


def save_training_checkpoint(run_dir: str | Path, state: dict, keep: int = 3) -> Path:
    """Write `state` as the run's newest checkpoint, point latest.json at it, prune old ones."""
    run_dir = Path(run_dir)
    state = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": TRAINING_KIND, **state}
    path = run_dir / checkpoint_name(int(state["images_shown"]))
    free = free_bytes(run_dir)  # before: a failed torch.save may still hold its unlinked file open
    try:
        state = with_checksums(state)
        with atomic_output(path) as tmp:
            torch.save(state, tmp)
        pointer = {"checkpoint": path.name, "images_shown": int(state["images_shown"])}
        atomic_write_text(run_dir / LATEST_POINTER, json.dumps(pointer) + "\n")
        _prune(run_dir, keep=keep, protect=path)
    except (OSError, RuntimeError) as exc:  # a full disk reaches torch.save as a RuntimeError
        raise write_failed(exc, run_dir, f"checkpoint {path.name}", state_nbytes(state), free) from None
    return path


# -- checksums ------------------------------------------------------------------------------


def _prune(run_dir: Path, keep: int, protect: Path) -> None:
    existing = sorted(run_dir.glob(CHECKPOINT_GLOB))
    for old in existing[:-keep] if keep > 0 else existing:
        if old != protect:
            old.unlink(missing_ok=True)


# -- finding and reading --------------------------------------------------------------------
def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's newest complete checkpoint, or None when it has none."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST_POINTER
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        candidate = run_dir / Path(name).name
        if candidate.is_file():
            return candidate
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no pointer or a damaged one: fall back to the files themselves
    candidates = sorted(run_dir.glob(CHECKPOINT_GLOB))
    return candidates[-1] if candidates else None


DAMAGED_SUFFIX = ".damaged"


def load_newest_readable(run_dir: str | Path) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(path, loaded training checkpoint, [(unreadable newer checkpoint, why)]) for a run folder:
    latest.json's checkpoint, else the newest by name that loads. A truncated or corrupt newest
    checkpoint is skipped, not fatal, so an automatically requeued job never stalls on it.
    (None, None, skipped) when no checkpoint loads."""
    run_dir = Path(run_dir)
    first = find_latest_checkpoint(run_dir)
    candidates = [first] if first is not None else []
    candidates += [p for p in sorted(run_dir.glob(CHECKPOINT_GLOB), reverse=True) if p != first]
    skipped = []
    for path in candidates:
        try:
            data = load_checkpoint(path)
            if data.get("kind") != TRAINING_KIND:
                raise CheckpointError(f"{path} is an exported generator, not a training checkpoint")
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
            continue
        return path, data, skipped
    return None, None, skipped


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint out of the run's way (never delete it): checkpoint-N.pt.damaged."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{n}")
    path.rename(target)
    return target


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run folder means its latest checkpoint; a file means itself."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        latest = find_latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} holds no checkpoint (no {CHECKPOINT_GLOB} files)")
        return latest
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a progan file (training checkpoint or exported generator)."""
    path = resolve_checkpoint_path(path)
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is an ONNX model: run it with onnxruntime (progan.generator.onnx_file.onnx_session); "
                              "progan samples .pt and .safetensors files")
    if path.suffix.lower() == ".safetensors":
        data = read_safetensors(path, map_location)
        check_finite(data, path)
        return data
    data = load_weights_only(path, "checkpoint", CheckpointError, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a progan checkpoint")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this progan reads version "
            f"{FORMAT_VERSION} (use the progan release that wrote it)"
        )
    verify_checksums(data, path)
    check_finite(data, path)
    return data


# -- generators for sampling ----------------------------------------------------------------


