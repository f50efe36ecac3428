"""Class-conditional training end to end: a labelled database trains a conditional model by
default, each real's label travels with it, resume stays exact, samples of class k look like
class k, metrics draw classes with the data's frequencies, and bad combinations are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from progan.generator import checkpoints
from progan.generator import loading
from test_training import TINY, assert_same_training_state, sigterm_after_ticks

CLASSES = 3


@pytest.fixture(scope="module")
def labelled_lmdb(tmp_path_factory):
    """96 demo faces of 3 kinds (told apart by background hue), stored at 4..16 with their labels."""
    root = tmp_path_factory.mktemp("labelled")
    run_cli(["-m", "data_prep", "synth", str(root / "faces"), "--count", "96", "--size", "16", "--seed", "2",
             "--classes", str(CLASSES)])
    run_cli(["-m", "data_prep", "build", str(root / "faces"), str(root / "faces.lmdb"), "--max-res", "16",
             "--labels", "folders", "--workers", "1"])
    return root / "faces.lmdb"


def hue_features(images: torch.Tensor) -> np.ndarray:
    """A simple measurement that tells the demo classes apart: the background's hue (the two top
    corners, 1/8 of the side each), as a point (cos, sin) on the colour wheel. uint8-range [N, 3, H, W]."""
    x = images.float().clamp(0, 255) / 255
    side = max(1, x.shape[-1] // 8)
    corners = torch.cat([x[:, :, :side, :side], x[:, :, :side, -side:]], dim=3).flatten(2)  # [N, 3, P]
    r, g, b = corners.unbind(1)
    # hue angle of each pixel (the hexagonal hue of HSV, in its smooth form)
    angle = torch.atan2(np.sqrt(3) * (g - b), 2 * r - g - b)
    return torch.stack([angle.cos().mean(dim=1), angle.sin().mean(dim=1)], dim=1).numpy()


def centroid_classifier(features: np.ndarray, labels: np.ndarray):
    centroids = np.stack([features[labels == k].mean(axis=0) for k in range(CLASSES)])
    return lambda f: np.argmin(((f[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)


def test_each_real_arrives_at_the_step_with_its_own_label(labelled_lmdb, tmp_path, monkeypatch):
    """The labels given to the step are those of the very images read, in the same order, also for
    the second process's strided share of the batch."""
    import progan.train.loop as training
    from progan.data.reader import MultiResolutionDataset, read_labels
    from progan.train.setup import prepare_run
    from train import build_parser

    names, labels = read_labels(labelled_lmdb)
    reals16 = MultiResolutionDataset(labelled_lmdb, 16).get_batch(list(range(len(labels))))
    classify = centroid_classifier(hue_features(reals16), labels)
    assert (classify(hue_features(reals16)) == labels).mean() == 1.0  # the demo classes are told apart

    seen = []

    def capture(models, settings, reals, inputs, resolution, alpha, micro, stats, flags=None, real_labels=None):
        seen.append((reals.clone(), real_labels.clone(), inputs.labels_g.clone()))
        return flags

    monkeypatch.setattr(training, "run_step", capture)
    args = vars(build_parser().parse_args(["--data", str(labelled_lmdb), "--out", str(tmp_path / "run"), *TINY]))
    config = prepare_run(args).config
    assert config.model.class_names == tuple(names) and len(names) == CLASSES
    from accelerate import Accelerator

    trainer = training.Trainer(config, Accelerator(cpu=True), log=lambda *a: None)
    trainer.part = slice(1, None, 2)  # the second of two processes
    trainer.reals = trainer._real_images(trainer.state)
    for _ in range(3):
        trainer.train_step([0.0, 0.0])
    for reals, real_labels, labels_g in seen:
        assert reals.shape[0] == real_labels.shape[0] == labels_g.shape[0] == 8
        up = torch.nn.functional.interpolate(reals.float(), size=16, mode="nearest")
        assert (classify(hue_features(up)) == real_labels.numpy()).all()
        assert labels_g.min() >= 0 and labels_g.max() < CLASSES


def test_conditional_flags_and_mismatched_databases_are_one_line_errors(labelled_lmdb, demo_lmdb, tmp_path):
    def dry(*extra, data=labelled_lmdb):
        return run_cli(["train.py", "--data", str(data), "--out", str(tmp_path / "run"), *TINY, "--dry-run", *extra],
                       check=False)

    proc = dry()  # auto: the database's classes, in label order
    assert proc.returncode == 0 and '"class_00"' in proc.stdout and '"class_02"' in proc.stdout, proc.stderr
    proc = dry("--conditional", "off")
    assert proc.returncode == 0 and "class_names" not in proc.stdout
    proc = dry("--conditional", "on", data=demo_lmdb)
    assert proc.returncode == 2 and "has no labels" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # A conditional config (another run's config.json) on a database without those classes.
    saved = tmp_path / "conditional.json"
    from progan.train.setup import prepare_run
    from train import build_parser

    plan = prepare_run(vars(build_parser().parse_args(["--data", str(labelled_lmdb), "--out", str(tmp_path / "y"),
                                                       *TINY])))
    saved.write_text(plan.config.to_json())
    proc = run_cli(["train.py", "--data", str(demo_lmdb), "--out", str(tmp_path / "z"), "--config", str(saved),
                    "--dry-run"], check=False)
    assert proc.returncode == 2 and "has no labels" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_labelled_database_trains_conditionally_and_resumes_exactly(labelled_lmdb, tmp_path):
    reference = tmp_path / "reference"
    run_cli(["train.py", "--data", str(labelled_lmdb), "--out", str(reference), *TINY, "--total-kimg", "0.256"])
    from progan.data.reader import read_labels

    saved = checkpoints.load_checkpoint(reference)
    names, _ = read_labels(labelled_lmdb)
    assert tuple(saved["config"]["model"]["class_names"]) == tuple(names) and len(names) == CLASSES
    ticks = [json.loads(line) for line in (reference / "stats.jsonl").read_text().splitlines()]
    ticks = [t for t in ticks if t.get("kind") == "tick"]
    assert ticks and all(t["class_loss_d"] > 0 and t["class_loss_g"] > 0 for t in ticks)

    out = tmp_path / "run"
    proc, output = sigterm_after_ticks(labelled_lmdb, out, 3, "--total-kimg", "0.256")
    assert proc.returncode in (0, 3), output
    assert " cls " in output  # the log line shows the class terms
    run_cli(["train.py", "--out", str(out), "--total-kimg", "0.256", "--resume", "auto"])
    assert_same_training_state(checkpoints.load_checkpoint(out), checkpoints.load_checkpoint(reference))
    # Metrics: classes drawn with the database's frequencies, or one class against its own reals.
    proc = run_cli(["-m", "progan.metrics", "swd", "--real", str(labelled_lmdb), "--fake", str(reference), "--num", "32",
                    "--no-log"])
    assert json.loads(proc.stdout)["classes"] == "drawn with --real's class frequencies"
    proc = run_cli(["-m", "progan.metrics", "swd", "--real", str(labelled_lmdb), "--fake", str(reference), "--num", "30",
                    "--class", names[1], "--no-log"])
    record = json.loads(proc.stdout)
    assert record["class"] == names[1] and record["swd_x1e3_avg"] > 0
    proc = run_cli(["-m", "progan.metrics", "swd", "--real", str(labelled_lmdb), "--fake", str(reference), "--num", "64",
                    "--class", names[1], "--no-log"], check=False)  # 32 reals of that class: too few
    assert proc.returncode != 0 and "lower --num" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # With --num left out, the class is used whole, as a small database is (was refused: issue 25, row 10).
    proc = run_cli(["-m", "progan.metrics", "swd", "--real", str(labelled_lmdb), "--fake", str(reference),
                    "--class", names[1], "--no-log"])
    record = json.loads(proc.stdout)
    assert record["num_images"] == {"swd": 32} and record["class"] == names[1] and record["swd_x1e3_avg"] > 0
    assert f"note: swd on 32 images, all of class {names[1]} in {labelled_lmdb}" in proc.stderr
    proc = run_cli(["-m", "progan.metrics", "swd", "--real", str(labelled_lmdb), "--fake", str(reference), "--num", "30",
                    "--class", "zebra", "--no-log"], check=False)
    assert proc.returncode != 0 and "not one of the model's classes" in proc.stderr
    # An unconditional resume of a conditional run is refused by name.
    proc = run_cli(["train.py", "--out", str(out), "--resume", "auto", "--conditional", "off", "--total-kimg", "0.3"],
                   check=False)
    assert proc.returncode == 2 and "class_names" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_metric_fakes_draw_classes_with_the_data_frequencies_or_one_fixed_class():
    from progan.metrics.sources import GeneratorSource

    calls = []

    def generator(z, resolution, alpha, labels=None):
        calls.append(labels)
        return torch.zeros(z.shape[0], 3, resolution, resolution)

    source = GeneratorSource(generator, 8, resolution=4, seed=1, class_frequencies=[6, 3, 1])
    source(0, 4000)
    drawn = calls[-1]
    assert torch.equal(source.labels(100, 50), drawn[100:150])  # addressed by index: shards agree
    shares = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert torch.allclose(shares, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)
    GeneratorSource(generator, 8, resolution=4, class_index=2)(0, 5)
    assert calls[-1].tolist() == [2] * 5
    GeneratorSource(generator, 8, resolution=4)(0, 5)
    assert calls[-1] is None  # unconditional: no labels argument at all


@pytest.mark.slow
def test_samples_of_each_class_are_recognised_as_that_class(labelled_lmdb, tmp_path):
    """The issue's target: a conditional model on the K-class demo, samples of class k recognised
    as class k at least 90% of the time by a classifier fitted on the reals."""
    from progan.data.reader import MultiResolutionDataset, read_labels

    out = tmp_path / "run"
    # 4x4 (the background's hue already shows there) for 40 kimg: ~30 s on 2 CPU cores; the
    # model reaches 93-95% at 30 kimg (bench: the class terms fall from ln 3 to ~0.01).
    run_cli(["train.py", "--data", str(labelled_lmdb), "--out", str(out), "--config", "small", "--resolution", "4",
             "--batch", "4:32", "--tick-kimg", "5", "--snapshot-ticks", "10", "--workers", "0", "--total-kimg", "40",
             "--log-with", "none"], timeout=600)
    names, labels = read_labels(labelled_lmdb)
    reals = MultiResolutionDataset(labelled_lmdb, 4).get_batch(list(range(len(labels))))
    classify = centroid_classifier(hue_features(reals), labels)
    G, info = loading.load_generator(out, ema=True)
    per_class = 64
    z = torch.randn(per_class * CLASSES, G.latent_size, generator=torch.Generator().manual_seed(0))
    wanted = torch.arange(CLASSES).repeat_interleave(per_class)
    with torch.no_grad():
        fakes = G(z, resolution=info.resolution, alpha=info.alpha, labels=wanted)
    fakes = ((fakes.clamp(-1, 1) + 1) * 127.5).round()
    accuracy = (classify(hue_features(fakes)) == wanted.numpy()).mean()
    assert accuracy >= 0.9, f"{accuracy:.2f} of the samples recognised as their class"


@pytest.mark.slow
def test_two_processes_train_the_same_conditional_model_as_one(labelled_lmdb, tmp_path):
    """Labels through several processes: each takes its strided share of the reals with their
    labels, and the G step's classes are drawn for the global batch, so two processes compute what
    one does (up to the summation order of the gradients, as for unconditional runs)."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--data", str(labelled_lmdb), *TINY, "--total-kimg", "0.192", "--log-with", "none"]
    run_cli(["train.py", "--out", str(one), *args])
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    proc = run_cli([*launch, "train.py", "--out", str(two), *args], timeout=400, env={"OMP_NUM_THREADS": "1"})
    assert "2 replicas identical" in proc.stdout + proc.stderr
    a, b = checkpoints.load_checkpoint(one), checkpoints.load_checkpoint(two)
    assert a["images_shown"] == b["images_shown"]
    for key in ("generator", "discriminator"):
        x = torch.cat([t.flatten() for t in a[key].values()])
        y = torch.cat([t.flatten() for t in b[key].values()])
        assert ((x - y).abs() > 1e-3).float().mean().item() < 0.15, key  # see test_two_processes_match_one
    stats = [json.loads(line) for line in (two / "stats.jsonl").read_text().splitlines()]
    assert all(t["class_loss_d"] > 0 for t in stats if t.get("kind") == "tick")


@pytest.mark.slow
def test_a_portrait_labelled_database_trains_a_portrait_conditional_model(tmp_path):
    """Non-square and conditional together: 3:4 levels with labels, through a fade, then sampled
    by class."""
    run_cli(["-m", "data_prep", "synth", str(tmp_path / "faces"), "--count", "32", "--size", "32", "--seed", "3",
             "--classes", "2"])
    db = tmp_path / "p.lmdb"
    run_cli(["-m", "data_prep", "build", str(tmp_path / "faces"), str(db), "--max-res", "8", "--aspect", "3:4",
             "--labels", "folders", "--workers", "1"])
    out = tmp_path / "run"
    run_cli(["train.py", "--data", str(db), "--out", str(out), *TINY, "--total-kimg", "0.16", "--log-with", "none"])
    G, info = loading.load_generator(out, ema=True)
    assert info.model_config.aspect == "3:4" and info.model_config.label_size == 2
    with torch.no_grad():
        images = G(torch.randn(4, G.latent_size), resolution=info.resolution, alpha=info.alpha,
                   labels=torch.tensor([0, 1, 0, 1]))
    width, height = info.model_config.level_size(info.resolution)
    assert images.shape == (4, 3, height, width) and height > width and torch.isfinite(images).all()
