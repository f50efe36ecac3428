"""`.safetensors` generator files: the EMA generator's state dict as tensors; the header's
metadata holds the model config (its JSON round trip, so every ModelConfig field travels,
class names included), the stage training had reached and images shown; a conditional model's
class names also on their own (`class_names`, a JSON list) for readers that know nothing of
progan's config. progan.load_generator and generate.py read it like a `.pt` export.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from progan.generator.fileformat import (CHECKSUMS, FORMAT_NAME, FORMAT_VERSION, GENERATOR_KIND, UNCHECKED, CheckpointError,
                                         class_metadata, verify_checksums, with_checksums)
from progan.runtime.errors import first_line
from progan.runtime.fileio import atomic_output

SAFETENSORS_FORMAT = "progan-generator"  # the header's "format" entry: this file is ours


def write_safetensors(data: dict[str, Any], out_path: Path) -> Path:
    """The EMA weights of a loaded checkpoint as safetensors; config and stage in the metadata."""
    from safetensors.torch import save

    tensors = {name: t.detach().cpu().contiguous() for name, t in data["generator_ema"].items()}
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(data["model_config"], sort_keys=True),
        "resolution": str(int(data["resolution"])),
        "alpha": repr(float(data["alpha"])),  # repr: the exact float back
        "images_shown": str(int(data["images_shown"])),
        **class_metadata(data),
    }
    # The tensors' bytes and every metadata value, as a .pt file carries them (safetensors itself
    # checks nothing: a flipped exponent bit loaded silently, images off by 92/255 on average).
    metadata[CHECKSUMS] = json.dumps(with_checksums({"generator_ema": tensors, "metadata": metadata})[CHECKSUMS],
                                     sort_keys=True)
    with atomic_output(out_path) as tmp:
        tmp.write_bytes(_canonical_header(save(tensors, metadata=metadata)))  # save_file: a 0600 file over tmp
    return out_path


def _canonical_header(serialized: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: the library writes the
    metadata in hash order, so two exports of one checkpoint differed in their first bytes.
    Sorted, an export is byte-identical (its sha256 names it). The tensors' bytes and offsets
    (relative to the end of the header) are the library's own; the header stays padded with
    spaces to a multiple of 8 bytes, as the format asks, so the data stays aligned."""
    length = struct.unpack("<Q", serialized[:8])[0]
    header = json.loads(serialized[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + serialized[8 + length:]


def read_safetensors(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A `.safetensors` export as the dict `load_checkpoint` gives for a `.pt` export."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "unreadable"
        raise CheckpointError(f"{path} is not a readable .safetensors file (truncated or corrupt: "
                              f"{first_line(exc)})") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} is not a progan generator (its header has no progan metadata); "
                              f"export one with: generate.py export RUN {path.name}")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path} has progan format version {metadata.get('format_version')}; this progan "
                              f"reads version {FORMAT_VERSION} (use the progan release that wrote it)")
    _verify(path, tensors, metadata)
    try:
        header = {"model_config": json.loads(metadata["model_config"]), "resolution": int(metadata["resolution"]),
                  "alpha": float(metadata["alpha"]), "images_shown": int(metadata["images_shown"])}
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} has damaged progan metadata ({first_line(exc)}); export it again") from None
    tensors = {name: t.to(map_location) for name, t in tensors.items()}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": GENERATOR_KIND, **header,
            "generator_ema": tensors, **({} if CHECKSUMS in metadata else {UNCHECKED: True})}


def _verify(path: Path, tensors: dict, metadata: dict) -> None:
    """CheckpointError unless the tensors and metadata match the checksums written with them; an
    export from before checksums existed has none and loads unchecked."""
    if CHECKSUMS not in metadata:
        return
    try:
        record = json.loads(metadata[CHECKSUMS])
    except ValueError:
        raise CheckpointError(f"{path} is damaged: its checksum record is unreadable") from None
    rest = {key: value for key, value in metadata.items() if key != CHECKSUMS}
    verify_checksums({"generator_ema": tensors, "metadata": rest, CHECKSUMS: record}, path)
