"""Network architecture configuration (ModelConfig).

Only the architecture lives here; the training configuration is kept elsewhere. A ModelConfig
is frozen and validated once, in ``__post_init__``; make a changed copy with
``dataclasses.replace(cfg, resolution=256)``, which validates again. It round-trips through
``to_dict``/``to_json`` so a checkpoint can rebuild its networks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from progan.shapes import (ASPECT_RULE, ASPECTS, DEFAULT_ASPECT, MAX_RESOLUTION, MIN_RESOLUTION,
                           is_valid_resolution, level_size)


# "small": same architecture as the paper, narrow enough to grow 4x4 -> 32x32 in minutes on
# 2 CPU cores (the README demo and the tests). Channels: 4, 8 -> 64, 16 -> 32, 32 -> 16, then 8.
_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"latent_size": 64, "fmap_base": 256, "fmap_max": 64, "fmap_min": 8},
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of G and D; defaults are the paper's 1024x1024 networks."""

    resolution: int = 1024  # final (largest) output resolution, power of two in 4..1024
    num_channels: int = 3  # image channels (3 RGB, 1 grayscale)
    latent_size: int = 512
    fmap_base: int = 8192  # channels at a stage: min(fmap_base / 2**stage, fmap_max)
    fmap_max: int = 512
    fmap_min: int = 0  # floor on channels; 0 = none, as the paper (its networks never go below 16)
    mbstd_group_size: int = 4  # <= 1 turns minibatch stddev off, as in the paper's code
    leaky_slope: float = 0.2
    # width:height (progan.shapes); level R is level_size(R) = (w0*R/4, h0*R/4). Configs saved
    # before this field existed have none and load as the square 1:1.
    aspect: str = DEFAULT_ASPECT
    # Class-conditional models (the release's label_size): the names of the classes, in label
    # order; () = unconditional. Configs saved before this field existed load as unconditional,
    # and an unconditional config's dict/JSON has no "class_names" key, as before.
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.class_names, list):  # from JSON; a tuple keeps the config hashable
            object.__setattr__(self, "class_names", tuple(self.class_names))
        self.validate()

    # --- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError (one line) if any field is out of range or of the wrong type."""
        for name in ("resolution", "num_channels", "latent_size", "fmap_base", "fmap_max", "fmap_min",
                     "mbstd_group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"ModelConfig.{name} must be an int, got {value!r}")
        r = self.resolution
        if not is_valid_resolution(r):
            raise ValueError(
                f"ModelConfig.resolution must be a power of two in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {r}")
        if self.fmap_min < 0:
            raise ValueError(f"ModelConfig.fmap_min must be >= 0, got {self.fmap_min}")
        for name in ("num_channels", "latent_size", "fmap_base", "fmap_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.mbstd_group_size < 0:
            raise ValueError(f"ModelConfig.mbstd_group_size must be >= 0 (<= 1 disables it), got {self.mbstd_group_size}")
        slope = self.leaky_slope
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not (0.0 <= slope < 1.0):
            raise ValueError(f"ModelConfig.leaky_slope must be a number in [0, 1), got {slope!r}")
        if not isinstance(self.aspect, str) or self.aspect not in ASPECTS:
            raise ValueError(f"ModelConfig.aspect must be {ASPECT_RULE}, got {self.aspect!r}")
        names = self.class_names
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"ModelConfig.class_names must be a list of non-empty class names "
                             f"(or empty for an unconditional model), got {names!r}")
        if len(names) == 1:
            raise ValueError(f"ModelConfig.class_names must name at least 2 classes (or none for an "
                             f"unconditional model), got {list(names)}")
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"ModelConfig.class_names must be distinct; {duplicates} appear more than once")
        if self.channels(r) < 1:
            raise ValueError(
                f"ModelConfig: fmap_base={self.fmap_base} leaves 0 channels at {r}x{r}; "
                f"need fmap_base >= {r // 2} or fmap_min >= 1")

    # --- derived quantities -------------------------------------------------------------
    def stage_channels(self, stage: int) -> int:
        """The paper's nf(stage) = int(min(fmap_base / 2**stage, fmap_max)); stage 0 is D's dense layer."""
        return max(self.fmap_min, int(min(self.fmap_base / 2.0**stage, self.fmap_max)))

    def channels(self, res: int) -> int:
        """Feature maps of the blocks working at res x res (paper: nf(log2(res) - 1))."""
        if res < 1 or res & (res - 1):
            raise ValueError(f"resolution must be a power of two, got {res}")
        return self.stage_channels(int(math.log2(res)) - 1)

    @property
    def label_size(self) -> int:
        """Number of classes (the release's label_size); 0 for an unconditional model."""
        return len(self.class_names)

    @property
    def conditional(self) -> bool:
        return bool(self.class_names)

    @property
    def resolutions(self) -> list[int]:
        """[4, 8, ..., resolution]."""
        return [2**k for k in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def base_size(self) -> tuple[int, int]:
        """(width, height) of the base block: (4, 4) square, (3, 4) for 3:4, ..."""
        return ASPECTS[self.aspect]

    def level_size(self, res: int) -> tuple[int, int]:
        """(width, height) of the images at level res (named by its long side)."""
        return level_size(self.aspect, res)

    # --- presets and serialisation ------------------------------------------------------
    @classmethod
    def preset(cls, name: str, resolution: int, aspect: str = DEFAULT_ASPECT,
               class_names: tuple[str, ...] = ()) -> "ModelConfig":
        """'paper' (latent 512, fmap_base 8192, fmap_max 512) or 'small' (latent 64, fmap_base
        256, fmap_max 64, fmap_min 8: the same architecture for CPU demos up to about 64x64)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown ModelConfig preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(resolution=resolution, aspect=aspect, class_names=tuple(class_names), **_PRESETS[name])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; "class_names" (a list) only for a conditional model, so unconditional
        configs serialise exactly as before the field existed."""
        data = dataclasses.asdict(self)
        if self.class_names:
            data["class_names"] = list(self.class_names)
        else:
            del data["class_names"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; missing keys take the defaults, unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"ModelConfig.from_json expects a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)
