"""Checkpoints: the training state of a run, and generator-only files for sampling.

A training checkpoint is one file that holds everything needed to continue exactly: G, D,
G_ema, both optimizers, the loss scalers, images shown, counters, the whole training config
and the dataset's fingerprint. The run's randomness is derived from (seed, step), so the step
counter restores every random stream on any number of processes (see progan/train/loop.py).

Files hold only tensors, numbers, strings, lists and dicts, are loaded with
`torch.load(weights_only=True)` (a crafted file cannot run code), and are written atomically:
`checkpoint-<images>.pt` first, then the `latest.json` pointer, so a kill at any moment leaves
the previous checkpoint intact and findable.

Every file also carries a CRC-32 of each tensor's bytes (and of each other value's text) under
"checksums", checked on load: a flipped bit or a value overwritten in place (a NaN) makes the
file unreadable like a truncated one, never a silent load. Files written before checksums
existed load as before, unchecked.
"""

from __future__ import annotations

import io
import json
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from progan.runtime.errors import first_line
from progan.nets.config import ModelConfig
from progan.runtime.diskspace import free_bytes, state_nbytes, write_failed
from progan.runtime.fileio import atomic_output, atomic_write_text

FORMAT_NAME = "progan-checkpoint"
FORMAT_VERSION = 1
TRAINING_KIND = "training"
GENERATOR_KIND = "generator"
LATEST_POINTER = "latest.json"
CHECKSUMS = "checksums"          # {"algorithm": "crc32", "values": {"generator/w": crc, ...}}
CHECKSUM_ALGORITHM = "crc32"
CHECKPOINT_GLOB = "checkpoint-*.pt"


class CheckpointError(ValueError):
    """A checkpoint path or file that cannot be used; the message is one line for the user."""


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


def export_generator(checkpoint: dict, out_path: str | Path) -> Path:
    """Write a generator-only file (EMA weights + model config + where training stood)."""
    exported = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": GENERATOR_KIND,
        "model_config": checkpoint["model_config"],
        "resolution": checkpoint["resolution"],
        "alpha": checkpoint["alpha"],
        "images_shown": checkpoint["images_shown"],
        "generator_ema": checkpoint["generator_ema"],
    }
    out_path = Path(out_path)
    exported = with_checksums(exported)
    buffer = io.BytesIO()  # not the temp file: torch.save names the archive's root after its file
    torch.save(exported, buffer)  # so the same checkpoint gives the same bytes (a sha256 names an export)
    with atomic_output(out_path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return out_path


# -- checksums ------------------------------------------------------------------------------
def _leaves(obj, prefix: str = ""):
    """(path, value) of every tensor and plain value in a nested dict/list, in a fixed order."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _leaves(value, f"{prefix}/{index}")
    else:
        yield prefix, obj


def _crc(value) -> int:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        head = f"{tensor.dtype} {tuple(tensor.shape)}".encode()
        if tensor.numel() == 0:
            return zlib.crc32(head)
        flat = tensor.contiguous().reshape(-1)
        data = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
        return zlib.crc32(data.cpu().numpy(), zlib.crc32(head))  # the bytes, read in place on the CPU
    return zlib.crc32(repr(value).encode())


def checksums(state: dict) -> dict[str, int]:
    """CRC-32 of every tensor's bytes (dtype and shape included) and of every other value's text."""
    return {path: _crc(value) for key, part in state.items() if key != CHECKSUMS
            for path, value in _leaves(part, str(key))}


def with_checksums(state: dict) -> dict:
    """`state` on the CPU (torch.save copies there anyway) with its checksums added."""
    state = _to_cpu({k: v for k, v in state.items() if k != CHECKSUMS})
    state[CHECKSUMS] = {"algorithm": CHECKSUM_ALGORITHM, "values": checksums(state)}
    return state


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def verify_checksums(data: dict, path: Path) -> None:
    """CheckpointError unless every value matches the checksum written with it (none: not checked)."""
    record = data.get(CHECKSUMS)
    if record is None:
        return  # written before checksums existed
    try:
        if record["algorithm"] != CHECKSUM_ALGORITHM:
            raise CheckpointError(f"{path} has checksums of an unknown kind ({record['algorithm']!r})")
        expected = dict(record["values"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} is damaged: its checksum record is unreadable") from None
    found = checksums(data)
    bad = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{path} is damaged: {bad[0]}{more} does not match the checksum written with it "
                              f"(a flipped bit, a bad disk or an edit)")


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
    if path.suffix.lower() in (".safetensors", ".onnx"):  # the formats of progan/generator/export.py
        from progan.generator.export import load_exported

        return load_exported(path, map_location)
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
    return data


def load_weights_only(path: Path, what: str, error: type[Exception],
                      map_location: str | torch.device = "cpu") -> Any:
    """torch.load(path, weights_only=True): tensors and plain data only, so a crafted file cannot
    run code. Any failure raises `error` with one line naming `path` and `what` it should be:
    refused (it pickles other objects) or not readable (truncated, corrupt, not a torch file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch wraps every refusal in UnpicklingError: a pickled class or function ("Unsupported
        # global") is refused, never run; foreign bytes ("Unsupported operand") are just unreadable.
        if "unsupported global" in str(exc).lower():
            raise error(f"{path} was refused: it holds objects other than tensors and plain data; "
                        f"it may not be a {what}, or it may be unsafe") from None
        raise error(f"{path} is not a readable {what} (corrupt, or not a PyTorch file)") from None
    except Exception as exc:  # noqa: BLE001 - foreign bytes make the unpickler raise KeyError,
        # struct.error, EOFError, zipfile.BadZipFile, RuntimeError, ...: all mean "unreadable".
        raise error(f"{path} is not a readable {what} (truncated or corrupt: "
                    f"{type(exc).__name__} {first_line(exc)})") from None


# -- generators for sampling ----------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorInfo:
    model_config: ModelConfig
    resolution: int         # the resolution training had reached
    alpha: float            # its fade weight there (1.0 when stable)
    images_shown: int
    ema: bool               # True when the weights are the EMA generator's
    path: Path              # the file that was loaded
    run_dir: Path | None    # the run folder, for a training checkpoint


def build_generator(data: dict[str, Any], key: str, path: Path):
    """(generator, config, (resolution, alpha, images_shown)) from a loaded checkpoint's `key`
    weights; CheckpointError if they do not fit this progan's Generator or the stage is impossible."""
    from progan.nets.networks import Generator, check_phase

    try:
        config = ModelConfig.from_dict(data["model_config"])
        generator = Generator(config)
        generator.load_state_dict(data[key])
        resolution, images_shown = int(data["resolution"]), int(data["images_shown"])
        try:
            alpha = check_phase(config, resolution, float(data["alpha"]))
        except ValueError as exc:
            raise ValueError(f"impossible stage {resolution}x{resolution}, alpha {data['alpha']}: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        what = "EMA generator" if key == "generator_ema" else "generator"
        raise CheckpointError(f"{path} holds no usable {what} for this progan ({first_line(exc)})") from None
    return generator, config, (resolution, alpha, images_shown)


def load_generator(
    path: str | Path, device: str | torch.device = "cpu", ema: bool = True
) -> tuple[torch.nn.Module, GeneratorInfo]:
    """A ready (eval-mode) generator and its info from a run folder, checkpoint or export."""
    resolved = resolve_checkpoint_path(path)
    data = load_checkpoint(resolved)
    if data.get("kind") == GENERATOR_KIND and not ema:
        raise CheckpointError(f"{resolved} is an exported generator: it holds the EMA weights only")
    generator, config, stage = build_generator(data, "generator_ema" if ema else "generator", resolved)
    generator.eval().requires_grad_(False).to(device)
    info = GeneratorInfo(
        model_config=config,
        resolution=stage[0],
        alpha=stage[1],
        images_shown=stage[2],
        ema=ema,
        path=resolved,
        run_dir=resolved.parent if data.get("kind") == TRAINING_KIND else None,
    )
    return generator, info


def describe(data: dict[str, Any]) -> str:
    """One line about a loaded checkpoint, for logs."""
    return (
        f"{data.get('kind')} checkpoint at {data['images_shown'] / 1000:.1f} kimg, "
        f"{data['resolution']}x{data['resolution']} alpha {data['alpha']:.3f}"
    )
