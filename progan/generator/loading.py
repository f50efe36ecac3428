"""A ready generator from any model file: a run folder (its latest checkpoint), a training
checkpoint, or a .pt / .safetensors export; GeneratorInfo says what stage it was saved at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from progan.generator.checkpoints import load_checkpoint, resolve_checkpoint_path
from progan.generator.fileformat import GENERATOR_KIND, TRAINING_KIND, UNCHECKED, CheckpointError
from progan.nets.config import ModelConfig
from progan.nets.networks import Generator, check_phase
from progan.runtime.cli import choose_device
from progan.runtime.errors import first_line
from progan.shapes import describe_level


@dataclass(frozen=True)
class GeneratorInfo:
    model_config: ModelConfig
    resolution: int         # the resolution training had reached
    alpha: float            # its fade weight there (1.0 when stable)
    images_shown: int
    ema: bool               # True when the weights are the EMA generator's
    path: Path              # the file that was loaded
    run_dir: Path | None    # the run folder, for a training checkpoint
    checked: bool = True    # False: the file carries no checksums (written before they existed)


def build_generator(data: dict[str, Any], key: str, path: Path):
    """(generator, config, (resolution, alpha, images_shown)) from a loaded checkpoint's `key`
    weights; CheckpointError if they do not fit this progan's Generator or the stage is impossible."""
    try:
        config = ModelConfig.from_dict(data["model_config"])
        generator = Generator(config)
        generator.load_state_dict(data[key])
        resolution, images_shown = int(data["resolution"]), int(data["images_shown"])
        try:
            alpha = check_phase(config, resolution, float(data["alpha"]))
        except ValueError as exc:
            raise ValueError(f"impossible stage {describe_level(config.aspect, resolution)}, alpha {data['alpha']}: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        what = "EMA generator" if key == "generator_ema" else "generator"
        raise CheckpointError(f"{path} holds no usable {what} for this progan ({first_line(exc)})") from None
    return generator, config, (resolution, alpha, images_shown)


def load_generator(
    path: str | Path, device: str | torch.device = "cpu", ema: bool = True
) -> tuple[torch.nn.Module, GeneratorInfo]:
    """A ready (eval-mode) generator and its info from a run folder, checkpoint or export, on
    `device` ("cpu", "cuda", "cuda:N", or "auto": the GPU when there is one). A device this torch
    cannot use is a CommandLineError (one line) before anything is read."""
    device = choose_device(device, flag="device")
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
        checked=not data.get(UNCHECKED),
    )
    return generator, info
