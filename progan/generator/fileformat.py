"""The file format of every progan model file: its header, the CRC-32 checksums checked on load,
the weights-only loader and the errors a reader raises.

A file holds only tensors, numbers, strings, lists and dicts, is loaded with
`torch.load(weights_only=True)` (a crafted file cannot run code), and carries a CRC-32 of each
tensor's bytes (and of each other value's text) under "checksums", checked on load: a flipped
bit or a value overwritten in place (a NaN) makes the file unreadable like a truncated one,
never a silent load. Files written before checksums existed load as before, unchecked.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch

from progan.runtime.errors import first_line

FORMAT_NAME = "progan-checkpoint"
FORMAT_VERSION = 1
TRAINING_KIND = "training"
GENERATOR_KIND = "generator"


CHECKSUMS = "checksums"          # {"algorithm": "crc32", "values": {"generator/w": crc, ...}}
CHECKSUM_ALGORITHM = "crc32"


class CheckpointError(ValueError):
    """A checkpoint path or file that cannot be used; the message is one line for the user."""


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


UNCHECKED = "unchecked"  # set (True) on what load_checkpoint read from a file that carries no checksums


def verify_checksums(data: dict, path: Path) -> None:
    """CheckpointError unless every value matches the checksum written with it. A file written
    before checksums existed is loaded unchecked and marked so (data[UNCHECKED]), for a note."""
    record = data.get(CHECKSUMS)
    if record is None:
        data[UNCHECKED] = True
        return
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


MODEL_KEYS = ("generator", "discriminator", "generator_ema")  # the networks' state dicts in a file


def check_finite(data: dict, path: Path) -> None:
    """CheckpointError naming the first network tensor that holds a NaN or an infinity: such a file
    would sample black images and resume a run that can only stay broken (its checksums may match:
    a diverged write, or an edit with them recomputed)."""
    for key in MODEL_KEYS:
        state = data.get(key)
        for name, tensor in state.items() if isinstance(state, dict) else ():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{path} is damaged: {key}/{name} holds non-finite values (NaN or infinity); "
                                      f"use an earlier checkpoint or export")


def load_weights_only(path: Path, what: str, error: type[Exception],
                      map_location: str | torch.device = "cpu") -> Any:
    """torch.load(path, weights_only=True): tensors and plain data only, so a crafted file cannot
    run code. Any failure raises `error` with one line naming `path` and `what` it should be:
    refused (it pickles other objects) or not readable (truncated, corrupt, not a torch file)."""
    try:
        with warnings.catch_warnings():  # torch's own two lines about a foreign file ("Detected pickle
            warnings.simplefilter("ignore")  # protocol 4 ..."): the one-line refusal below says it all
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


class ExportError(CheckpointError):
    """An export that cannot be written (format, missing package); one line for the user."""


def class_metadata(data: dict[str, Any]) -> dict[str, str]:
    """{"class_names": JSON list} for a conditional model; {} for an unconditional one (its files
    stay as they were)."""
    names = data["model_config"].get("class_names") if isinstance(data.get("model_config"), dict) else None
    if not names:
        return {}
    return {"class_names": json.dumps(list(names)),
            "labels": f"labels float32 [N, {len(names)}]: one-hot (or soft) rows over class_names, in that order"}
