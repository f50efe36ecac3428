"""--log-with: trackers through accelerate; a tiny run's TensorBoard events hold the tick
scalars of stats.jsonl and the fixed-latent sample grids."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from test_training import run_main, train_cli

from progan.train import trackers


def test_resolve_tracker_names():
    assert trackers.resolve("none") == [] and trackers.resolve("") == []
    assert trackers.resolve("auto") == ["tensorboard"]  # installed for the tests (the dev extra)
    assert trackers.resolve(" TensorBoard,tensorboard ") == ["tensorboard"]
    with pytest.raises(ValueError, match="--log-with neptune: not a tracker accelerate supports; choose from .*wandb"):
        trackers.resolve("tensorboard,neptune")
    with pytest.raises(ValueError, match="'none' stands alone"):
        trackers.resolve("none,tensorboard")


def test_a_tracker_that_is_not_installed_is_named_with_what_to_do(monkeypatch):
    monkeypatch.setattr(trackers, "_installed", lambda name: name == "tensorboard")
    with pytest.raises(ValueError, match="--log-with mlflow: the mlflow package is not installed; pip install mlflow"):
        trackers.resolve("tensorboard,mlflow")
    monkeypatch.setattr(trackers, "_installed", lambda name: False)
    assert trackers.resolve("auto") == []  # auto: tensorboard only when it is there


def test_train_refuses_a_missing_tracker_before_any_work(demo_lmdb, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trackers, "_installed", lambda name: name == "tensorboard")
    code, err = run_main(capsys, "--data", demo_lmdb, "--out", tmp_path / "run", "--config", "small",
                         "--log-with", "wandb")
    assert code == 2 and len(err.splitlines()) == 1 and "--log-with wandb" in err and "pip install wandb" in err
    assert not (tmp_path / "run").exists()


def test_config_is_flattened_to_scalars():
    flat = trackers.flatten({"seed": 3, "inception": None, "metrics": ["swd"], "model": {"resolution": 8},
                             "schedule": {"batch": {4: 16}}})
    assert flat == {"seed": 3, "inception": "none", "metrics": "['swd']", "model.resolution": 8,
                    "schedule.batch": "{4: 16}"}


@pytest.mark.slow
def test_tensorboard_gets_the_tick_scalars_and_the_sample_grids(demo_lmdb, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train_cli(demo_lmdb, run, "--total-kimg", "0.128", "--log-with", "tensorboard")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    ticks = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert len(ticks) == 4
    for name in ("loss_d", "loss_g", "gradient_penalty", "kimg", "resolution", "alpha", "images_per_s"):
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [t["images_shown"] for t in ticks], name
        np.testing.assert_allclose([e.value for e in logged], [t[name] for t in ticks], rtol=1e-6, err_msg=name)
    grids = events.Images("samples")
    assert [g.step for g in grids] == [64, 128]  # every second tick, with the checkpoint
    for grid in grids:
        logged = np.asarray(Image.open(io.BytesIO(grid.encoded_image_string)).convert("RGB"))
        with Image.open(run / f"samples-{grid.step:010d}.png") as saved:
            np.testing.assert_array_equal(logged, np.asarray(saved.convert("RGB")))
