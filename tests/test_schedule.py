"""The progressive schedule: phase edges, alpha, batch/lr switching, and the paper's totals."""

import pytest

from progan.train.schedule import PAPER_BATCH, ScheduleConfig, parse_table, state_at


def small_schedule(**kw):
    args = dict(max_resolution=16, fade_kimg=1, stable_kimg=2, batch={4: 16, 8: 8, 16: 4}, lr={16: 0.003})
    args.update(kw)
    return ScheduleConfig(**args)


def test_phases_in_order_with_image_edges():
    phases = small_schedule().phases()
    assert [(p.kind, p.resolution, p.start_images, p.end_images) for p in phases] == [
        ("stable", 4, 0, 2000),
        ("fade", 8, 2000, 3000),
        ("stable", 8, 3000, 5000),
        ("fade", 16, 5000, 6000),
        ("stable", 16, 6000, 8000),
    ]


@pytest.mark.parametrize(
    "images, resolution, alpha, kind",
    [
        (0, 4, 1.0, "stable"),
        (1999, 4, 1.0, "stable"),  # last image before the first fade
        (2000, 8, 0.0, "fade"),  # first image of the fade: new block has no weight yet
        (2500, 8, 0.5, "fade"),
        (2999, 8, 0.999, "fade"),
        (3000, 8, 1.0, "stable"),
        (5250, 16, 0.25, "fade"),
        (7999, 16, 1.0, "stable"),
        (123456, 16, 1.0, "stable"),  # past the schedule: the last phase continues
    ],
)
def test_state_at_edges_and_mid_fade(images, resolution, alpha, kind):
    st = state_at(small_schedule(), images)
    assert st.resolution == resolution
    assert st.alpha == pytest.approx(alpha)
    assert st.phase.kind == kind


def test_batch_and_learning_rate_switch_when_the_fade_starts():
    sched = small_schedule(base_lr=0.001)
    before, at_fade = state_at(sched, 1999), state_at(sched, 2000)
    assert (before.batch_size, at_fade.batch_size) == (16, 8)
    into_16 = state_at(sched, 5000)
    assert into_16.batch_size == 4 and into_16.learning_rate == 0.003  # fade uses the new resolution's
    assert state_at(sched, 4999).learning_rate == 0.001


def test_alpha_rises_monotonically_through_a_fade():
    sched = small_schedule()
    alphas = [state_at(sched, i).alpha for i in range(2000, 3000, 50)]
    assert alphas == sorted(alphas) and alphas[0] == 0.0 and alphas[-1] < 1.0


def test_fractional_kimg_and_total():
    sched = small_schedule(fade_kimg=0.5, stable_kimg=0.25, total_kimg=1.1)
    assert [p.end_images for p in sched.phases()] == [250, 750, 1000, 1500, 1750]
    assert sched.total_images == 1100


def test_total_defaults_to_the_end_of_the_last_stable_phase():
    assert small_schedule().total_images == 8000


def test_paper_schedule_numbers():
    sched = ScheduleConfig()  # paper defaults, 1024
    # 1024 is fully faded in at 9.6M images with 600k/600k phases (shared PAPER.md).
    assert state_at(sched, 9_600_000 - 1).phase.kind == "fade"
    assert state_at(sched, 9_600_000).resolution == 1024 and state_at(sched, 9_600_000).alpha == 1.0
    assert sched.total_images == 10_200_000
    assert [state_at(sched, p.start_images).batch_size for p in sched.phases() if p.kind == "stable"] == [
        PAPER_BATCH[r] for r in sched.resolutions
    ]
    assert state_at(sched, 9_000_000).learning_rate == 0.0015  # the fade into 1024


def test_json_style_keys_are_normalised():
    sched = ScheduleConfig(max_resolution=8, batch={"4": 32, "8": 16}, lr={"8": 0.002})
    assert sched.batch == {4: 32, 8: 16} and sched.lr == {8: 0.002}
    assert ScheduleConfig(**sched.to_dict()) == sched


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_resolution=48), "power of two"),
        (dict(max_resolution=2048), "power of two"),
        (dict(fade_kimg=0), "fade_kimg"),
        (dict(stable_kimg=-1), "stable_kimg"),
        (dict(start_resolution=64, max_resolution=32), "above"),
        (dict(batch={4: 0}), "batch size"),
        (dict(total_kimg=float("nan")), "total_kimg"),
    ],
)
def test_invalid_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


def test_parse_table():
    assert parse_table("4:128, 8:64,1024:4", int, "--batch") == {4: 128, 8: 64, 1024: 4}
    assert parse_table("1024:0.0015", float, "--lr") == {1024: 0.0015}
    for bad in ("4=128", "4:x", "12:4", "", "4"):
        with pytest.raises(ValueError, match="--batch"):
            parse_table(bad, int, "--batch")


# -- which phase a tick belongs to -------------------------------------------------------------
def trainer_step_starts(sched, until):
    """The trainer's loop, written out: each step starts where the last ended and adds the
    batch of the phase it starts in (progan/train/loop.py Trainer.run / train_step)."""
    starts, images = [], 0
    while images < until:
        starts.append(images)
        images += state_at(sched, images).batch_size
    return starts, images


@pytest.mark.parametrize("sched", [
    small_schedule(),
    small_schedule(batch={4: 32, 8: 32, 16: 32}, fade_kimg=0.5, stable_kimg=0.5),   # the run
    small_schedule(batch={4: 7, 8: 13, 16: 3}, fade_kimg=0.1, stable_kimg=0.25),     # edges never on step edges
    small_schedule(batch={4: 16, 8: 300, 16: 5}, fade_kimg=0.1, stable_kimg=0.05),   # one step overshoots whole phases
])
def test_tick_state_is_the_state_of_the_step_that_ended_there(sched):
    from progan.train.schedule import last_step_start, tick_state

    starts, end = trainer_step_starts(sched, sched.total_images + 500)
    for start, stop in zip(starts, starts[1:] + [end]):
        assert last_step_start(sched, stop) == start
        assert tick_state(sched, stop) == state_at(sched, start)
        for images in (start + 1, (start + stop) // 2):  # inside a step: the step holding image images-1
            assert last_step_start(sched, images) == start
    assert last_step_start(sched, 0) == 0 and tick_state(sched, 0) == state_at(sched, 0)
    with pytest.raises(ValueError):
        last_step_start(sched, -1)


def test_a_tick_just_past_a_phase_edge_belongs_to_the_phase_that_ended():
    """The issue's run (batch 32, 500-image phases): the tick at 512 follows the step 480..511,
    which crossed the edge at 500 in stable 4x4; the fade's first step starts at 512."""
    from progan.train.schedule import tick_state

    sched = small_schedule(batch={4: 32, 8: 32, 16: 32}, fade_kimg=0.5, stable_kimg=0.5)
    at_512 = tick_state(sched, 512)
    assert (at_512.phase.kind, at_512.resolution, at_512.alpha) == ("stable", 4, 1.0)
    assert state_at(sched, 512).phase.kind == "fade"  # what the next step trains
    at_1024 = tick_state(sched, 1024)  # the last fade step started at 992: alpha (992-500)/500
    assert (at_1024.phase.kind, at_1024.resolution) == ("fade", 8) and at_1024.alpha == pytest.approx(0.984)
