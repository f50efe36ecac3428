"""The release's schedules: the paper preset trains to 12M images, and its 8-GPU table is a named preset
that runs on any number of devices dividing its batches."""

from __future__ import annotations

import pytest

from progan.train.schedule import KIMG, state_at
from progan.train.setup import prepare_run
from progan.runtime.errors import CommandLineError
from progan.train.config import preset_defaults


def test_paper_preset_runs_the_release_length():
    sched = preset_defaults("paper", 1024)["schedule"]
    assert sched.schedule_end_images == 10_200_000 and sched.total_images == 12_000_000
    last = sched.phases()[-1]
    assert (last.kind, last.resolution) == ("stable", 1024)
    st = state_at(sched, 11_999_000)  # past the schedule's end: still 1024, stable, its batch and lr
    assert (st.resolution, st.alpha, st.batch_size, st.learning_rate) == (1024, 1.0, 4, 0.0015)


def test_release_8gpu_table():
    sched = preset_defaults("paper-8gpu", 1024)["schedule"]
    assert [sched.batch_size(r) for r in sched.resolutions] == [512, 256, 128, 64, 32, 32, 32, 32, 32]
    assert [sched.learning_rate(r) for r in sched.resolutions] == [0.001] * 5 + [0.0015, 0.002, 0.003, 0.003]
    assert sched.total_images == 12_000_000
    assert preset_defaults("paper-8gpu", 1024)["model"] == preset_defaults("paper", 1024)["model"]


def test_release_8gpu_preset_runs_on_any_divisor_of_its_batches(demo_lmdb, tmp_path, monkeypatch):
    from train import build_parser

    def plan(*extra):
        args = ["--data", str(demo_lmdb), "--out", str(tmp_path / "run"), "--config", "paper-8gpu", *extra]
        return prepare_run(vars(build_parser().parse_args(args)))

    for world in ("1", "2", "8"):
        monkeypatch.setenv("WORLD_SIZE", world)
        config = plan().config
        assert config.schedule.batch_size(16) == 128 and config.schedule.total_images == 12_000 * KIMG
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert plan("--max-batch-per-device", "32").config.max_batch_per_device == 32  # one GPU, accumulating
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(CommandLineError, match="batch size 512 at 4x4 does not divide over 3 processes"):
        plan()
