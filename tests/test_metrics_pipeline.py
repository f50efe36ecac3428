"""evaluate_metrics (sharding, caching, sources) and the command line. The training hook itself
(Trainer.evaluate_metrics) is tested in test_training.py."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import TensorDataset, run_cli, upsampled_noise

from progan.metrics import (
    DatasetSource,
    GeneratorSource,
    MetricError,
    evaluate_metrics,
    ms_ssim,
    parse_metric_names,
    sliced_wasserstein_distance,
    unavailable_reason,
)
from progan.metrics import cache as metric_cache
from progan.metrics.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyGenerator(nn.Module):
    """Follows the generator contract: G(z, resolution=R, alpha=a) -> [N, 3, R, R] in about [-1, 1]."""

    def __init__(self, latent_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(latent_size, 3 * 8 * 8)
        self.calls: list[tuple[int, float]] = []

    def forward(self, z, resolution, alpha=1.0):
        self.calls.append((resolution, alpha))
        x = self.fc(z).view(-1, 3, 8, 8)
        return torch.tanh(F.interpolate(x, size=resolution, mode="bilinear", align_corners=False))


def write_lmdb(path: Path, count: int, top: int = 32, seed: int = 0) -> Path:
    """A real progan database (through its writer) of `count` images at 4..top."""
    from progan.data.writer import DatasetWriter
    from progan.data.format import ImageRecord, build_pyramid, encode_image, resolutions_between

    resolutions = resolutions_between(4, top)
    tops = upsampled_noise(count, top, seed, coarse=4).permute(0, 2, 3, 1).numpy()
    records = []
    for i, array in enumerate(tops):
        levels = build_pyramid(Image.fromarray(array), 4)
        records.append(ImageRecord(f"img{i}.png", [encode_image(level, "raw") for level in levels],
                                   hashlib.sha256(array.tobytes()).hexdigest()))
    with DatasetWriter(path) as writer:
        writer.start({"resolutions": resolutions, "encoding": "raw"})
        writer.commit_chunk(count, records, [])
        writer.finish()
    return path


@pytest.fixture(scope="module")
def lmdb16(tmp_path_factory) -> Path:
    return write_lmdb(tmp_path_factory.mktemp("metrics_data") / "faces.lmdb", count=16)


def thread_all_gathers(world_size: int):
    """all_gather functions for `world_size` threads standing in for processes."""
    slots: list = [None] * world_size
    barrier = threading.Barrier(world_size)

    def for_rank(rank: int):
        def all_gather(tensor: torch.Tensor) -> torch.Tensor:
            slots[rank] = tensor.clone()
            barrier.wait()
            out = torch.cat(slots)
            barrier.wait()  # nobody overwrites a slot before everyone has read it
            return out
        return all_gather
    return [for_rank(r) for r in range(world_size)]


# -- evaluate_metrics -----------------------------------------------------------------------
def test_evaluate_matches_the_direct_computations():
    generator = TinyGenerator()
    source = GeneratorSource(generator, 8, resolution=32, seed=3)
    reals = TensorDataset(upsampled_noise(12, 32, seed=1, coarse=4))
    result = evaluate_metrics(["swd", "msssim"], source, reals, 32, num_images=10, seed=3, batch_size=4,
                              progress=False)
    fakes = source(0, 10)
    real_subset = DatasetSource(reals, 10, seed=3, side="real")(0, 10)
    assert result == {**{k: pytest.approx(v, rel=1e-12)
                         for k, v in sliced_wasserstein_distance(real_subset, fakes, seed=3).items()},
                      "msssim": pytest.approx(ms_ssim(fakes), rel=1e-9)}
    assert set(result) == {"swd_x1e3_32", "swd_x1e3_16", "swd_x1e3_avg", "msssim"}
    assert result["swd_x1e3_avg"] > 0 and 0 < result["msssim"] < 1


def test_sharded_over_two_processes_gives_the_one_process_numbers():
    source = GeneratorSource(TinyGenerator(), 8, resolution=16, seed=1)
    reals = TensorDataset(upsampled_noise(9, 16, seed=2, coarse=4))
    args = dict(num_images=7, seed=1, batch_size=2, progress=False)  # odd: the last shard is padded
    single = evaluate_metrics("swd,msssim", source, reals, 16, **args)
    results = [None, None]

    def rank_main(rank, gather):
        results[rank] = evaluate_metrics("swd,msssim", source, reals, 16, rank=rank, world_size=2,
                                         all_gather=gather, **args)
    threads = [threading.Thread(target=rank_main, args=(r, g)) for r, g in enumerate(thread_all_gathers(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0] == results[1]
    assert results[0] == {k: pytest.approx(v, rel=1e-9) for k, v in single.items()}


def test_generator_source_is_seeded_per_image_and_downsamples():
    generator = TinyGenerator()
    source = GeneratorSource(generator, 8, resolution=16, generator_resolution=32, alpha=0.25, seed=5)
    whole = source(0, 6)
    assert torch.equal(torch.cat([source(0, 2), source(2, 4)]), whole)
    assert generator.calls[-1] == (32, 0.25)  # generated at its own resolution and fade
    full = GeneratorSource(generator, 8, resolution=32, generator_resolution=32, alpha=0.25, seed=5)(0, 6)
    assert whole.shape == (6, 3, 16, 16)
    # Box average of the float images, then quantised: within one grey level of averaging the uint8s.
    assert (whole.float() - F.avg_pool2d(full.float(), 2)).abs().max() <= 1.0
    assert not torch.equal(GeneratorSource(generator, 8, resolution=16, generator_resolution=32, seed=6)(0, 6), whole)
    with pytest.raises(MetricError, match="above what the generator produces"):
        GeneratorSource(generator, 8, resolution=64, generator_resolution=32)


def test_dataset_source_picks_a_seeded_subset_and_refuses_too_few():
    data = TensorDataset(upsampled_noise(10, 16, seed=0, coarse=4))
    real, fake = DatasetSource(data, 6, seed=0, side="real"), DatasetSource(data, 6, seed=0, side="fake")
    assert len(set(real.indices.tolist())) == 6 and not torch.equal(real.indices, fake.indices)
    assert torch.equal(real(0, 6), data.images[real.indices])
    with pytest.raises(MetricError, match="has 10 images at this resolution, fewer than the 11"):
        DatasetSource(data, 11)
    assert DatasetSource(data, 11, allow_fewer=True).count == 10


def test_metrics_that_cannot_run_say_why():
    assert unavailable_reason("swd", 8) is None and unavailable_reason("msssim", 16) is None
    assert "at least 8" in unavailable_reason("swd", 4)
    assert "at least 16x16" in unavailable_reason("msssim", 8)
    assert "no Inception weights" in unavailable_reason("fid", 128)
    assert "does not exist" in unavailable_reason("fid", 128, inception_path="/nonexistent/w.pth")
    with pytest.raises(MetricError, match="unknown metric 'is'"):
        parse_metric_names("swd,is")
    assert parse_metric_names(" SWD, msssim ,swd") == ["swd", "msssim"]
    source = GeneratorSource(TinyGenerator(), 8, resolution=8)
    with pytest.raises(MetricError, match="MS-SSIM needs images of at least 16x16"):
        evaluate_metrics(["msssim"], source, None, 8, num_images=4, progress=False)
    source16 = GeneratorSource(TinyGenerator(), 8, resolution=16)
    with pytest.raises(MetricError, match="fewer than the 20 SWD compares"):  # before MS-SSIM's work
        evaluate_metrics(["msssim", "swd"], source16, TensorDataset(upsampled_noise(10, 16, 0, coarse=4)), 16,
                         num_images=20, progress=False)


def test_real_swd_descriptors_are_cached_by_fingerprint(lmdb16, tmp_path, monkeypatch):
    reads = []
    real_call = DatasetSource.__call__
    monkeypatch.setattr(DatasetSource, "__call__", lambda self, s, n: reads.append(n) or real_call(self, s, n))
    source = GeneratorSource(TinyGenerator(), 8, resolution=32, seed=0)
    args = dict(num_images=12, cache_dir=tmp_path / "cache", progress=False, batch_size=5)
    first = evaluate_metrics(["swd"], source, lmdb16, 32, **args)
    assert sum(reads) == 12
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 3 and all(name.startswith("swd-real-32px-12img-") for name in files)  # key + 2 levels
    second = evaluate_metrics(["swd"], source, lmdb16, 32, **args)
    assert sum(reads) == 12 and second == first  # the reals were not read again
    evaluate_metrics(["swd"], source, lmdb16, 32, seed=1, **{k: v for k, v in args.items()})
    assert sum(reads) == 24 and len(list((tmp_path / "cache").iterdir())) == 6  # another seed, another entry


def test_fid_statistics_cache_round_trip(tmp_path):
    key = {"dataset": "abc", "resolution": 32, "images": 10, "seed": 0, "inception_sha256": "6726825d..."}
    mu, sigma = np.arange(3.0), np.eye(3)
    assert metric_cache.load_fid_stats(tmp_path, key) is None
    metric_cache.save_fid_stats(tmp_path, key, mu, sigma)
    loaded = metric_cache.load_fid_stats(tmp_path, key)
    assert np.array_equal(loaded[0], mu) and np.array_equal(loaded[1], sigma)
    assert metric_cache.load_fid_stats(tmp_path, {**key, "images": 11}) is None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_cache_is_a_warning_and_the_result_is_kept(lmdb16, tmp_path, capsys):
    in_the_way = tmp_path / "cache"
    in_the_way.write_text("not a folder")
    assert not metric_cache.save_fid_stats(in_the_way, {"images": 1}, np.zeros(2), np.eye(2))
    assert not metric_cache.save_swd_descriptors(in_the_way, {"images": 1}, [16], [torch.zeros(2, 3)])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: metric cache not written") for line in err)
    code, out, err = run_main(capsys, "swd", "--real", lmdb16, "--fake", lmdb16, "--num", "8",
                              "--resolution", "32", "--device", "cpu", "--cache-dir", in_the_way)
    assert code == 0 and json.loads(out)["swd_x1e3_avg"] > 0
    assert "Traceback" not in err and "warning: metric cache not written" in err
    assert in_the_way.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]

# -- the command line -----------------------------------------------------------------------
def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_cli_compares_two_databases(lmdb16, capsys):
    code, out, err = run_main(capsys, "swd,msssim", "--real", lmdb16, "--fake", lmdb16, "--num", "8",
                              "--resolution", "32", "--device", "cpu")
    assert code == 0, err
    record = json.loads(out)
    assert record["metric"] == "swd,msssim" and record["resolution"] == 32
    assert record["num_images"] == {"swd": 8, "msssim": 8}
    assert record["swd_x1e3_avg"] > 0 and 0 < record["msssim"] < 1  # real vs real: other subsets


def test_cli_records_how_many_reals_fid_used(lmdb16, fake_checkpoint, tmp_path, capsys, monkeypatch):
    import progan.metrics.cli as cli

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in")  # the network and the metric are stubbed: only the record is checked
    monkeypatch.setattr(cli, "load_inception_once", lambda path, verify, device: (None, "ab" * 32))
    monkeypatch.setattr(cli, "evaluate_metrics", lambda names, *a, **k: {"fid": 1.5})
    code, out, err = run_main(capsys, "fid", "--real", lmdb16, "--fake", fake_checkpoint, "--num", "20",
                              "--inception", weights, "--device", "cpu", "--no-log")
    assert code == 0, err
    record = json.loads(out)
    assert record["num_images"] == {"fid": 20} and record["fid_real_images"] == 16  # the database holds 16
    code, out, err = run_main(capsys, "fid", "--real", lmdb16, "--fake", fake_checkpoint, "--num", "10",
                              "--inception", weights, "--device", "cpu", "--no-log")
    assert code == 0 and json.loads(out)["fid_real_images"] == 10


@pytest.fixture
def fake_checkpoint(monkeypatch, tmp_path):
    """load_generator as the metrics command calls it, returning a tiny generator in a run folder."""
    import progan.metrics.cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    info = SimpleNamespace(model_config=SimpleNamespace(latent_size=8), resolution=32, alpha=1.0,
                           images_shown=12000, run_dir=run_dir, path=run_dir / "checkpoint-0000012000.pt")
    monkeypatch.setattr(progan.metrics.cli, "load_generator", lambda path, device="cpu", ema=True: (TinyGenerator(), info))
    return run_dir


def test_msssim_records_no_reals_it_did_not_read(lmdb16, fake_checkpoint, capsys):
    """Issue 19: msssim wrote "real": null, "mirror_reals": true; it looks at generated images only."""
    (fake_checkpoint / "config.json").write_text('{"mirror": true}')  # a run that trained with mirroring
    for extra in ([], ["--real", lmdb16]):
        code, out, err = run_main(capsys, "msssim", "--fake", fake_checkpoint, "--num", "4", "--device", "cpu",
                                  "--no-log", *extra)
        assert code == 0, err
        record = json.loads(out)
        assert "real" not in record and "mirror_reals" not in record and 0 < record["msssim"] <= 1
        assert record["num_images"] == {"msssim": 4} and record["fake"].endswith("checkpoint-0000012000.pt")
        assert ("--real was not used" in err) == bool(extra)
    # a metric that reads reals says which and how they were read
    code, out, err = run_main(capsys, "swd,msssim", "--real", lmdb16, "--fake", fake_checkpoint, "--num", "8",
                              "--device", "cpu", "--no-log")
    record = json.loads(out)
    assert code == 0 and record["real"] == str(lmdb16) and record["mirror_reals"] is True, err


def test_default_counts_fit_a_small_database_with_a_note(lmdb16, fake_checkpoint, capsys):
    """Issue 19: the README's examples failed on the 2000-image demo database without --num.
    With --num left out, a metric takes all a database holds when it holds fewer than the
    paper's count, says so on stderr and records the count; an explicit --num is kept."""
    code, out, err = run_main(capsys, "swd", "--real", lmdb16, "--fake", fake_checkpoint, "--device", "cpu", "--no-log")
    assert code == 0, err
    assert json.loads(out)["num_images"] == {"swd": 16}
    assert f"note: swd on 16 images, all that {lmdb16} holds (the paper's count is 16384" in err
    code, out, err = run_main(capsys, "swd,msssim", "--real", lmdb16, "--fake", lmdb16, "--resolution", "16",
                              "--device", "cpu")
    assert code == 0 and json.loads(out)["num_images"] == {"swd": 16, "msssim": 16}, err  # --fake a database too
    code, out, err = run_main(capsys, "msssim", "--fake", fake_checkpoint, "--num", "6", "--device", "cpu", "--no-log")
    assert code == 0 and "note" not in err and json.loads(out)["num_images"] == {"msssim": 6}
    code, out, err = run_main(capsys, "swd", "--real", lmdb16, "--fake", fake_checkpoint, "--num", "17", "--device", "cpu")
    assert_one_line_error(code, out, err, "fewer than the 17 SWD compares")


def test_metric_counts_take_the_smaller_database_only_for_the_metrics_that_read_it():
    from progan.metrics.cli import metric_counts

    counts, notes = metric_counts(["swd", "msssim", "fid"], None, ("r.lmdb", 2000), None)
    assert counts == {"swd": 2000, "msssim": 20000, "fid": 50000} and len(notes) == 1 and "r.lmdb" in notes[0]
    counts, notes = metric_counts(["swd", "msssim", "fid"], None, ("r.lmdb", 3000), ("f.lmdb", 1000))
    assert counts == {"swd": 1000, "msssim": 1000, "fid": 1000} and all("f.lmdb" in n for n in notes)
    assert metric_counts(["swd"], 500, ("r.lmdb", 100), None) == ({"swd": 500}, [])  # --num is the user's


def test_cli_appends_to_the_run_metrics_log(lmdb16, fake_checkpoint, capsys):
    args = ["swd", "--real", lmdb16, "--fake", fake_checkpoint, "--num", "8", "--device", "cpu"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    record = json.loads(out)
    assert record["kimg"] == 12.0 and set(record) >= {"swd_x1e3_32", "swd_x1e3_16", "swd_x1e3_avg"}
    assert (fake_checkpoint / "metrics.jsonl").read_text().splitlines() == [out.strip()]
    assert any(p.name.startswith("swd-real-32px-8img-") for p in (fake_checkpoint / "metric-cache").iterdir())
    assert run_main(capsys, *args)[0] == 0
    assert len((fake_checkpoint / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_on_a_real_training_checkpoint(lmdb16, tmp_path, capsys):
    from progan.generator.checkpoints import save_training_checkpoint
    from progan.nets.config import ModelConfig
    from progan.nets.networks import Generator

    torch.manual_seed(0)
    config = ModelConfig.preset("small", resolution=32)
    generator = Generator(config)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_training_checkpoint(run_dir, {
        "model_config": config.to_dict(), "resolution": 16, "alpha": 0.5, "images_shown": 3000,
        "generator": generator.state_dict(), "generator_ema": generator.state_dict()})
    code, out, err = run_main(capsys, "msssim", "--fake", run_dir, "--num", "4", "--device", "cpu")
    assert code == 0, err
    record = json.loads(out)
    assert record["resolution"] == 16 and record["alpha"] == 0.5 and record["kimg"] == 3.0
    assert json.loads((run_dir / "metrics.jsonl").read_text()) == record
    code, out, err = run_main(capsys, "msssim", "--fake", run_dir, "--resolution", "32", "--device", "cpu")
    assert_one_line_error(code, out, err, "resolution 32 is above what the generator produces (resolution 16)")


@pytest.mark.parametrize("args, message", [
    (["swd", "--real", "{missing}", "--fake", "{lmdb}"], "no such file or folder"),
    (["swd", "--real", "{lmdb}", "--fake", "{lmdb}", "--resolution", "64"], "no 64x64 images"),
    (["swd", "--real", "{lmdb}", "--fake", "{lmdb}", "--num", "100"], "fewer than the 100"),
    (["swd", "--fake", "{lmdb}"], "need --real"),
    (["fid", "--real", "{lmdb}", "--fake", "{lmdb}"], "FID unavailable: no Inception weights"),
    (["fid", "--real", "{lmdb}", "--fake", "{lmdb}", "--inception", "{missing}"], "does not exist"),
    (["fid", "--real", "{lmdb}", "--fake", "{lmdb}", "--inception", "{junk}"], "SHA-256 starts with"),
    (["fid", "--real", "{lmdb}", "--fake", "{lmdb}", "--inception", "{junk}", "--inception-unverified"],
     "not a readable PyTorch weights file"),
    (["ssim", "--fake", "{lmdb}"], "unknown metric 'ssim'"),
    (["msssim", "--fake", "{lmdb}", "--resolution", "8"], "at least 16x16"),
    (["msssim", "--fake", "{missing}"], "does not exist"),
    (["msssim", "--fake", "{lmdb}", "--device", "gpu0"], "--device gpu0: not a device name"),
])
def test_cli_bad_input_is_one_line_and_exit_2(lmdb16, tmp_path, capsys, args, message):
    junk = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    junk.write_bytes(b"junk")
    paths = {"lmdb": lmdb16, "missing": tmp_path / "nothing_here", "junk": junk}
    code, out, err = run_main(capsys, *[a.format(**paths) for a in args])
    assert_one_line_error(code, out, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == [junk.name]  # nothing written


def test_cli_refuses_a_resolution_above_the_generators(lmdb16, fake_checkpoint, capsys):
    code, out, err = run_main(capsys, "msssim", "--fake", fake_checkpoint, "--resolution", "64", "--device", "cpu")
    assert_one_line_error(code, out, err, "resolution 64 is above what the generator produces (resolution 32)")
    assert not (fake_checkpoint / "metrics.jsonl").exists()


def test_cli_as_a_process_reports_one_line(tmp_path):
    proc = run_cli(["-m", "progan.metrics", "swd", "--real", str(tmp_path / "none.lmdb"),
                    "--fake", str(tmp_path / "none.pt")], timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "no such file or folder" in proc.stderr


def test_a_mirroring_training_dataset_is_read_unmirrored_and_stays_usable(lmdb16):
    from progan.data.reader import MultiResolutionDataset

    training_data = MultiResolutionDataset(lmdb16, 32, mirror=True, memory_budget_bytes=0)
    training_data.get_batch([0])  # its LMDB is now open in this process
    environment = training_data._env
    source = GeneratorSource(TinyGenerator(), 8, resolution=32, seed=0)
    args = dict(num_images=8, progress=False)
    from_object = evaluate_metrics(["swd"], source, training_data, 32, **args)
    assert training_data.mirror  # the caller's dataset is untouched
    assert from_object == evaluate_metrics(["swd"], source, TensorDataset(
        MultiResolutionDataset(lmdb16, 32, mirror=False).get_batch(list(range(16)))), 32, **args)
    # The metrics' own reader shared the open environment and released it without closing it.
    assert training_data._env is environment
    training_data.mirror = False
    assert torch.equal(training_data.get_batch([0, 5]), MultiResolutionDataset(lmdb16, 32).get_batch([0, 5]))


@pytest.mark.slow
def test_a_ctrl_c_while_torch_imports_is_one_line(demo_lmdb, tmp_path):
    """`python -m progan.metrics` starts without torch (progan.metrics imports lazily) and holds a
    Ctrl-C while torch imports (a KeyboardInterrupt raised in there can even abort the process:
    "terminate called after throwing ... pybind11::error_already_set"): one line and exit 130."""
    from conftest import interrupted_at

    codes = set()
    for delay in (0.0, 0.2, 0.6, 1.0):
        code, _, err = interrupted_at(["-m", "progan.metrics", "swd", "--real", str(demo_lmdb), "--fake",
                                       str(demo_lmdb), "--num", "16", "--no-log"], delay)
        assert "Traceback" not in err and "terminate" not in err and code in (130, 0), (delay, code, err)
        if code == 130:
            assert "interrupted" in err.strip().splitlines()[-1], err
        codes.add(code)
    assert 130 in codes
