"""Generator files to share and serve: `export_file` picks the format by the file's extension.

    generate.py export RUN generator.pt             # progan's own: EMA weights, config and stage
    generate.py export RUN generator.safetensors    # the same in the header; no pickle (safetensors_file.py)
    generate.py export RUN generator.onnx           # one stage, dynamic batch, for onnxruntime (onnx_file.py)

`.pt` is written here (the checkpoint format of fileformat.py, kind "generator"). Every file is
written to a temporary name and renamed once complete (and, for ONNX, checked with
onnx.checker), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from progan.generator.checkpoints import load_checkpoint, resolve_checkpoint_path
from progan.generator.fileformat import (FORMAT_NAME, FORMAT_VERSION, GENERATOR_KIND, ExportError, class_metadata,
                                         with_checksums)
from progan.generator.loading import GeneratorInfo, build_generator
from progan.generator.onnx_file import ONNX_INSTALL_HINT, ONNX_PACKAGES, write_onnx
from progan.generator.safetensors_file import SAFETENSORS_FORMAT, write_safetensors
from progan.generator.sampling import sampling_stage
from progan.runtime.fileio import atomic_output

FORMATS = (".pt", ".safetensors", ".onnx")


# -- choosing a format ----------------------------------------------------------------------
def export_file(source: str | os.PathLike, out_path: str | os.PathLike, resolution: int | None = None) -> Path:
    """Export the EMA generator of `source` (run folder, checkpoint or export) to `out_path`,
    in the format its extension names. `resolution` picks the ONNX stage (see sampling_stage).

    The weights are checked against the model config before anything is written, so a file
    that is written always loads. Raises CheckpointError (one line) for anything unusable.
    """
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if out_path.is_dir():
        raise ExportError(f"{out_path} is a folder; give the file to write, e.g. {out_path / 'generator.safetensors'}")
    if suffix not in FORMATS:
        raise ExportError(f"{out_path}: unknown export format {suffix or '(no extension)'!r}; "
                          f"end the file name in {', '.join(FORMATS)}")
    if resolution is not None and suffix != ".onnx":
        raise ExportError(f"--resolution picks the stage of an .onnx export; {suffix} files keep the whole generator")
    if suffix == ".onnx":
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ExportError(f"writing {out_path} needs {', '.join(missing)}: {ONNX_INSTALL_HINT}")
    resolved = resolve_checkpoint_path(source)
    if out_path.exists() and out_path.resolve() == resolved.resolve():
        raise ExportError(f"{out_path} is the checkpoint being exported; write the export elsewhere")
    data = load_checkpoint(resolved)
    generator, config, stage = build_generator(data, "generator_ema", resolved)  # refuse what nobody could sample
    if suffix == ".onnx":
        res, alpha = _onnx_stage(config, stage, resolved, resolution)
    out_path.parent.mkdir(parents=True, exist_ok=True)  # after every check: a refused export leaves no folder
    if suffix == ".safetensors":
        return write_safetensors(data, out_path)
    if suffix == ".onnx":
        return write_onnx(generator, res, alpha, out_path, metadata=_stage_metadata(data, res, alpha))
    return export_generator(data, out_path)


def _onnx_stage(config, stage: tuple[int, float, int], path: Path, resolution: int | None) -> tuple[int, float]:
    """(resolution, alpha) of the ONNX export: sampling_stage's choice for --resolution."""
    info = GeneratorInfo(model_config=config, resolution=stage[0], alpha=stage[1], images_shown=stage[2],
                         ema=True, path=path, run_dir=None)
    try:
        return sampling_stage(info, resolution)
    except ValueError as exc:
        raise ExportError(f"--resolution: {exc}") from None


def _stage_metadata(data: dict[str, Any], resolution: int, alpha: float) -> dict[str, str]:
    metadata = {"format": SAFETENSORS_FORMAT, "model_config": json.dumps(data["model_config"], sort_keys=True),
                "resolution": str(resolution), "alpha": repr(float(alpha)),
                "images_shown": str(int(data["images_shown"])),
                "output": "images float32 [N, C, H, W] in [-1, 1]; pixel = round((x + 1) * 127.5)"}
    return {**metadata, **class_metadata(data)}


# -- safetensors ----------------------------------------------------------------------------


# -- ONNX -----------------------------------------------------------------------------------


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
