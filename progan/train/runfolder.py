"""A run folder's layout: the one place the trainer, its set-up and the timelapse name its files.

    config.json               the run's TrainConfig, written before the first step (CONFIG_FILE)
    checkpoint-<images>.pt    training checkpoints; latest.json names the newest (progan.generator.checkpoints)
    samples-<images>.png      the EMA generator's fixed-latent grid at a snapshot (samples_name);
                              samples-latest.png is the newest
    stats.jsonl               one line a tick (STATS_FILE); metrics.jsonl, one line an evaluation
    run.lock                  held while a process trains here (progan.runtime.runlock)
"""

from __future__ import annotations

import re

CONFIG_FILE = "config.json"
STATS_FILE = "stats.jsonl"
SAMPLES_LATEST = "samples-latest.png"
SAMPLES_PATTERN = re.compile(r"^samples-(\d+)\.png$")  # group 1: images shown


def samples_name(images_shown: int) -> str:
    return f"samples-{images_shown:010d}.png"


def sample_grid_side(resolution: int) -> int:
    """Cells per side of the run's sample grids: 8x8 up to 256, then at most 2048 pixels wide."""
    return max(2, min(8, 2048 // resolution))
