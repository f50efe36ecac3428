"""The one typed training config: every number a run uses, validated in one place, saved as JSON.

`TrainConfig` nests the network config (`ModelConfig`) and the schedule (`ScheduleConfig`), so
a run folder's `config.json` (and every checkpoint) holds everything needed to rebuild and
continue the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from progan.nets.config import ModelConfig
from progan.train.schedule import (PAPER_BATCH, PAPER_LR, RELEASE_8GPU_BATCH, RELEASE_8GPU_LR, RELEASE_TOTAL_KIMG,
                             ScheduleConfig)

# The one declaration of --mixed-precision's values; "auto" becomes one of the others in
# progan.train.precision.resolve_config, once, before a run starts.
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
PRESETS = ("paper", "paper-8gpu", "small")

# Fields that may change when a run is resumed: they change how the run is operated, not what
# it computes. Everything else must match the run's saved config.
OPERATIONAL_FIELDS = frozenset(
    {
        "data", "out", "workers", "max_batch_per_device", "tick_kimg", "snapshot_ticks",
        "checkpoint_minutes", "keep_checkpoints", "metrics", "metric_kimg", "metric_images",
        "inception", "log_with", "tf32",
    }
)
# mixed_precision changes the computation, so a resume must keep it; it is compared resolved
# ("auto" -> the device's concrete choice, progan/train/precision.py), never as typed.
OPERATIONAL_SCHEDULE_FIELDS = frozenset({"total_kimg"})


@dataclass(frozen=True)
class TrainConfig:
    data: str                               # the LMDB built by `python -m data_prep build`
    out: str                                # the run folder
    model: ModelConfig                      # networks; model.resolution is the target
    schedule: ScheduleConfig                # phases, batch sizes, learning rates
    seed: int = 0                           # all randomness of a run derives from this
    mixed_precision: str = "auto"           # auto | no | fp16 | bf16; resolved per device before training (precision.py)
    mirror: bool = True                     # random horizontal flips of reals (faces)
    gp_weight: float = 10.0                 # WGAN-GP lambda
    gp_target: float = 1.0                  # WGAN-GP gradient-norm target
    drift_weight: float = 0.001             # epsilon_drift * D(real)^2
    cond_weight: float = 1.0                # conditional models: weight of the class terms (the release's)
    ema_beta: float = 0.999                 # Gs = lerp(G, Gs, beta) after every step
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    adam_eps: float = 1e-8
    reset_optimizer: bool = True            # fresh Adam state at every fade and stable phase
    max_batch_per_device: int | str | None = None  # cap: larger batches are split and accumulated; "auto": what fits
    workers: int = 2                        # DataLoader processes for levels not held in memory
    tick_kimg: float = 20.0                 # upkeep (log line, stats) every this many kimg
    snapshot_ticks: int = 10                # checkpoint + sample grid every this many ticks
    checkpoint_minutes: float = 30.0        # ... and at least this often by the clock
    keep_checkpoints: int = 3               # older checkpoints are deleted
    metrics: tuple[str, ...] = ()           # evaluated on the EMA generator during training
    metric_kimg: float = 0.0                # every this many kimg (0: never)
    metric_images: int = 1024               # generated images per evaluation
    inception: str | None = None            # Inception weights file for FID
    log_with: str = "auto"                  # trackers: auto | none | tensorboard,wandb,... (progan/train/trackers.py)
    tf32: bool = True                       # CUDA: TF32 tensor cores for fp32 matmuls and convolutions

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        self.validate()

    def validate(self) -> None:
        for name in ("data", "out"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"--{name} must be a path, not empty")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, "
                f"got {self.mixed_precision!r}"
            )
        if self.schedule.max_resolution != self.model.resolution:
            raise ValueError(
                f"schedule ends at {self.schedule.max_resolution} but the model is built for "
                f"{self.model.resolution}"
            )
        positive = {
            "gp_weight": self.gp_weight, "ema_beta": self.ema_beta, "adam_eps": self.adam_eps,
            "tick_kimg": self.tick_kimg, "checkpoint_minutes": self.checkpoint_minutes,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.ema_beta < 1:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError("Adam betas must be in [0, 1)")
        if self.drift_weight < 0:
            raise ValueError(f"drift_weight must be non-negative, got {self.drift_weight}")
        if not (math.isfinite(self.cond_weight) and self.cond_weight >= 0):
            raise ValueError(f"cond_weight must be a finite number >= 0, got {self.cond_weight}")
        if self.max_batch_per_device == "auto":
            pass
        elif isinstance(self.max_batch_per_device, str) or (
                self.max_batch_per_device is not None and self.max_batch_per_device < 1):
            raise ValueError(f"--max-batch-per-device must be at least 1, got {self.max_batch_per_device}")
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if self.snapshot_ticks < 1 or self.keep_checkpoints < 1:
            raise ValueError("--snapshot-ticks and --keep-checkpoints must be at least 1")
        if self.metric_kimg < 0 or self.metric_images < 1:
            raise ValueError("--metric-kimg must be >= 0 and --metric-images >= 1")

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "schedule"):
                value = value.to_dict()
            elif f.name == "metrics":
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        data["model"] = ModelConfig.from_dict(data["model"])
        data["schedule"] = ScheduleConfig(**data["schedule"])
        data["metrics"] = tuple(data.get("metrics", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    # -- comparing runs ---------------------------------------------------------------------
    def semantic_differences(self, other: "TrainConfig") -> list[str]:
        """Names of the settings that differ and would change what the run computes."""
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = []
        for key in sorted(mine):
            if key in OPERATIONAL_FIELDS:
                continue
            if key == "schedule":
                for sub in sorted(mine[key]):
                    if sub not in OPERATIONAL_SCHEDULE_FIELDS and mine[key][sub] != theirs[key][sub]:
                        diffs.append(f"schedule.{sub}")
            elif key == "model":  # both sides' keys: an unconditional dict has no class_names
                diffs += [f"model.{sub}" for sub in sorted(set(mine[key]) | set(theirs[key]))
                          if mine[key].get(sub) != theirs[key].get(sub)]
            elif mine[key] != theirs[key]:
                diffs.append(key)
        return diffs


def preset_defaults(name: str, resolution: int) -> dict:
    """Keyword defaults for TrainConfig (model and schedule included) of a named preset."""
    if name in ("paper", "paper-8gpu"):
        # paper: the release's 1-GPU table; paper-8gpu: its 8-GPU table (any number of devices).
        batch, lr = (PAPER_BATCH, PAPER_LR) if name == "paper" else (RELEASE_8GPU_BATCH, RELEASE_8GPU_LR)
        return {
            "model": ModelConfig.preset("paper", resolution),
            "schedule": ScheduleConfig(
                max_resolution=resolution, fade_kimg=600, stable_kimg=600,
                total_kimg=RELEASE_TOTAL_KIMG, batch=dict(batch), lr=dict(lr),
            ),
            "tick_kimg": 20.0,
        }
    if name == "small":
        # Tuned to grow 4x4 -> 32x32 in a few minutes on 2 CPU cores (the README demo).
        return {
            "model": ModelConfig.preset("small", resolution),
            "schedule": ScheduleConfig(
                max_resolution=resolution, fade_kimg=12, stable_kimg=12,
                batch={4: 32, 8: 32, 16: 32, 32: 32, 64: 16, 128: 16, 256: 8, 512: 4, 1024: 4},
                lr={}, base_lr=0.002,
            ),
            # The paper's 0.999 per step averages over ~1000 steps: longer than a whole demo phase,
            # so the EMA generator would still be mostly its random start. 0.99 is ~100 steps.
            "ema_beta": 0.99,
            "tick_kimg": 2.0,
            "snapshot_ticks": 3,
        }
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or a JSON file")


def load_config_file(path: str | Path) -> dict:
    """Read a JSON training config (e.g. a run's config.json) into TrainConfig keyword values."""
    path = Path(path)
    try:
        return TrainConfig.from_json(path.read_text()).to_dict()
    except FileNotFoundError:
        raise ValueError(f"--config: {path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"--config: {path} is not a valid training config ({exc})") from None
