"""The progressive schedule: images shown -> (resolution, alpha, batch size, learning rate).

Pure Python, no torch, so it can be reasoned about and tested on its own. Progress is counted
in real images shown, as in the paper. The phases are

    stable 4x4, fade 8x8, stable 8x8, fade 16x16, stable 16x16, ..., stable RxR (until the end)

A fade into R uses R's batch size and learning rate from its first image: the switch happens
when a fade starts, as in the paper's code, so a fade and the stable phase after it share them.
Alpha rises linearly from 0 to 1 over a fade and is 1 in every stable phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from progan.shapes import RESOLUTION_RULE, is_valid_resolution

KIMG = 1000  # images per kimg

# The paper's single-GPU tables (release config "v2-1gpu", see shared PAPER.md).
PAPER_BATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
PAPER_LR = {1024: 0.0015}
PAPER_BASE_LR = 0.001
# The release trains every preset to 12M images: at 1024 the last stable phase runs on past the
# schedule's end (10.2M) for another 1.8M.
RELEASE_TOTAL_KIMG = 12000.0
# The release's 8-GPU table ("preset-v2-8gpus"): global batches, 32 wherever the table is silent,
# and learning rates rising with the batch. Global, so any number of devices that divides the
# batch runs it (with --max-batch-per-device, a large GPU runs it alone).
RELEASE_8GPU_BATCH = {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 32, 256: 32, 512: 32, 1024: 32}
RELEASE_8GPU_LR = {128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003}


@dataclass(frozen=True)
class ScheduleConfig:
    """Every number that decides when the networks grow and how they are fed."""

    max_resolution: int = 1024          # the schedule ends stable at this resolution
    start_resolution: int = 4           # the first (stable-only) resolution
    fade_kimg: float = 600.0            # images (x1000) over which a new block fades in
    stable_kimg: float = 600.0          # images (x1000) each resolution trains after its fade
    total_kimg: float | None = None     # None: stop when the last stable phase ends
    batch: Mapping[int, int] = field(default_factory=lambda: dict(PAPER_BATCH))
    lr: Mapping[int, float] = field(default_factory=lambda: dict(PAPER_LR))
    base_lr: float = PAPER_BASE_LR      # learning rate for resolutions not in `lr`
    default_batch: int = 16             # batch size for resolutions not in `batch`

    def __post_init__(self) -> None:
        # JSON turns int keys into strings; normalise here so every caller sees ints.
        object.__setattr__(self, "batch", {int(k): int(v) for k, v in dict(self.batch).items()})
        object.__setattr__(self, "lr", {int(k): float(v) for k, v in dict(self.lr).items()})
        self.validate()

    def validate(self) -> None:
        for name in ("max_resolution", "start_resolution"):
            value = getattr(self, name)
            if not is_valid_resolution(value):
                raise ValueError(f"{name} must be {RESOLUTION_RULE}, got {value}")
        if self.start_resolution > self.max_resolution:
            raise ValueError(
                f"start_resolution {self.start_resolution} is above max_resolution {self.max_resolution}"
            )
        for name in ("fade_kimg", "stable_kimg"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of kimg, got {value}")
        if self.total_kimg is not None and not (math.isfinite(self.total_kimg) and self.total_kimg > 0):
            raise ValueError(f"total_kimg must be positive, got {self.total_kimg}")
        for res, size in self.batch.items():
            if size < 1:
                raise ValueError(f"batch size for resolution {res} must be at least 1, got {size}")
        for res, rate in self.lr.items():
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"learning rate for resolution {res} must be positive, got {rate}")
        if self.default_batch < 1 or not (self.base_lr > 0):
            raise ValueError("default_batch and base_lr must be positive")

    # -- derived --------------------------------------------------------------------------
    @property
    def resolutions(self) -> list[int]:
        out, res = [], self.start_resolution
        while res <= self.max_resolution:
            out.append(res)
            res *= 2
        return out

    def batch_size(self, resolution: int) -> int:
        return self.batch.get(resolution, self.default_batch)

    def learning_rate(self, resolution: int) -> float:
        return self.lr.get(resolution, self.base_lr)

    @property
    def schedule_end_images(self) -> int:
        """Images shown when the last resolution has finished its stable phase."""
        growths = len(self.resolutions) - 1
        return round(KIMG * (self.stable_kimg + growths * (self.fade_kimg + self.stable_kimg)))

    @property
    def total_images(self) -> int:
        if self.total_kimg is None:
            return self.schedule_end_images
        return round(self.total_kimg * KIMG)

    def phases(self) -> list["Phase"]:
        """Every phase in order; the last one runs to `total_images` (or beyond, if asked)."""
        phases: list[Phase] = []
        start = 0
        for i, res in enumerate(self.resolutions):
            if i > 0:
                end = start + round(self.fade_kimg * KIMG)
                phases.append(Phase(len(phases), "fade", res, start, end))
                start = end
            end = start + round(self.stable_kimg * KIMG)
            phases.append(Phase(len(phases), "stable", res, start, end))
            start = end
        return phases

    def to_dict(self) -> dict:
        return {
            "max_resolution": self.max_resolution,
            "start_resolution": self.start_resolution,
            "fade_kimg": self.fade_kimg,
            "stable_kimg": self.stable_kimg,
            "total_kimg": self.total_kimg,
            "batch": {str(k): v for k, v in sorted(self.batch.items())},
            "lr": {str(k): v for k, v in sorted(self.lr.items())},
            "base_lr": self.base_lr,
            "default_batch": self.default_batch,
        }


@dataclass(frozen=True)
class Phase:
    index: int          # 0 for the first stable phase
    kind: str           # "fade" or "stable"
    resolution: int     # the resolution being faded in, or trained stable
    start_images: int   # first image of the phase
    end_images: int     # first image after it (the last phase extends past it to the end)


@dataclass(frozen=True)
class TrainingState:
    """Where training stands after `images_shown` images."""

    images_shown: int
    phase: Phase
    resolution: int
    alpha: float        # weight of the newest block: rises 0 -> 1 in a fade, 1 when stable
    batch_size: int     # global batch (over all processes)
    learning_rate: float

    @property
    def kimg(self) -> float:
        return self.images_shown / KIMG


def state_at(schedule: ScheduleConfig, images_shown: int) -> TrainingState:
    """The resolution, alpha, batch size and learning rate for the step starting at `images_shown`."""
    if images_shown < 0:
        raise ValueError(f"images_shown must be non-negative, got {images_shown}")
    phases = schedule.phases()
    phase = phases[-1]
    for candidate in phases:
        if images_shown < candidate.end_images:
            phase = candidate
            break
    if phase.kind == "fade":
        alpha = (images_shown - phase.start_images) / (phase.end_images - phase.start_images)
    else:
        alpha = 1.0
    res = phase.resolution
    return TrainingState(
        images_shown=images_shown,
        phase=phase,
        resolution=res,
        alpha=alpha,
        batch_size=schedule.batch_size(res),
        learning_rate=schedule.learning_rate(res),
    )


def last_step_start(schedule: ScheduleConfig, images_shown: int) -> int:
    """The first image of the training step that ended at `images_shown` (more precisely: the
    largest step start below it; 0 when nothing has been shown).

    The trainer's steps start at 0 and each adds the global batch of the phase it starts in:
    s[k+1] = s[k] + state_at(s[k]).batch_size. A phase edge rarely falls on a step edge, so the
    step that crosses it (it starts before the edge) belongs wholly to the phase that is ending,
    and the new phase's first step starts at the first step edge at or past the edge.
    """
    if images_shown < 0:
        raise ValueError(f"images_shown must be non-negative, got {images_shown}")
    phases = schedule.phases()
    start, previous = 0, 0  # the first step start in the phase; the last step start before it
    for i, phase in enumerate(phases):
        end = phase.end_images if i < len(phases) - 1 else math.inf  # the last phase runs on
        if start >= end:
            continue  # a batch larger than the whole phase stepped over it
        if images_shown <= start:
            break
        batch = schedule.batch_size(phase.resolution)
        k = (images_shown - 1 - start) // batch  # the step of this phase that holds image images_shown - 1
        steps = -(-(end - start) // batch) if end != math.inf else math.inf  # steps that start in it
        if k < steps:
            return start + k * batch
        previous = start + (steps - 1) * batch
        start += steps * batch
    return previous


def tick_state(schedule: ScheduleConfig, images_shown: int) -> TrainingState:
    """The stage that upkeep at `images_shown` (a tick's log line and stats, a sample grid
    `samples-<images_shown>.png`) reports and draws: that of the step which ended there.

    This is the one rule for "which phase does a tick belong to". A tick at or just past a phase
    edge belongs to the phase that just ended, because its statistics were measured and its
    networks trained by that phase's steps; the grid is drawn at that step's resolution and
    alpha (the alpha it trained with). The new phase is announced after the tick, when its
    first step starts. The state's `images_shown` is that step's first image.
    """
    return state_at(schedule, last_step_start(schedule, images_shown))


def parse_table(text: str, value_type=float, flag: str = "table") -> dict[int, float]:
    """Parse '4:128,8:128,1024:4' into {4: 128, 8: 128, 1024: 4}; raises ValueError naming `flag`."""
    table: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition(":")
        try:
            if not sep:
                raise ValueError
            res = int(key)
            parsed = value_type(value)
        except ValueError:
            raise ValueError(
                f"{flag}: cannot read {item!r}; write RESOLUTION:VALUE pairs such as 4:128,8:64"
            ) from None
        if not is_valid_resolution(res):
            raise ValueError(f"{flag}: {res} is not a resolution ({RESOLUTION_RULE})")
        table[res] = parsed
    if not table:
        raise ValueError(f"{flag}: empty table; write RESOLUTION:VALUE pairs such as 4:128,8:64")
    return table
