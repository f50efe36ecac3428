"""--mixed-precision auto: what it picks per device, the one-line refusals, and the bench that is its evidence."""

from __future__ import annotations

import json

import pytest
import torch

from progan.train.precision import autocast_dtype, native_bf16, resolve_mixed_precision


def fake_cuda(monkeypatch, major: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Fake sm{major}0")


def test_auto_picks_bf16_only_on_cuda_with_native_bf16(monkeypatch):
    assert resolve_mixed_precision("auto", "cpu") == "no"  # same numbers on every CPU
    fake_cuda(monkeypatch, 9)
    assert native_bf16("cuda") and resolve_mixed_precision("auto", "cuda") == "bf16"
    fake_cuda(monkeypatch, 7)
    assert not native_bf16("cuda") and resolve_mixed_precision("auto", "cuda") == "no"
    assert resolve_mixed_precision("fp16", "cuda") == "fp16"
    assert autocast_dtype("bf16") == torch.bfloat16 and autocast_dtype("no") is None


def test_explicit_choices_pass_through_and_bf16_without_it_is_refused(monkeypatch):
    for choice in ("no", "fp16", "bf16"):
        assert resolve_mixed_precision(choice, "cpu") == choice  # bf16 emulated where not native
    fake_cuda(monkeypatch, 7)
    with pytest.raises(ValueError, match=r"--mixed-precision bf16: Fake sm70 has no native bf16") as info:
        resolve_mixed_precision("bf16", "cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="must be one of auto, no, fp16, bf16"):
        resolve_mixed_precision("fp8", "cpu")


def test_train_resolves_auto_and_refuses_bf16_without_it_in_one_line(demo_lmdb, tmp_path, capsys, monkeypatch):
    from progan.train.setup import prepare_run
    from train import build_parser, main

    out = tmp_path / "run"
    base = ["--data", str(demo_lmdb), "--out", str(out), "--config", "small"]
    plan = prepare_run(vars(build_parser().parse_args(base)))
    assert plan.config.mixed_precision == "no"  # the default is auto; a CPU resolves it to fp32
    assert '"mixed_precision": "no"' in plan.describe()  # the run saves what it used, not "auto"

    fake_cuda(monkeypatch, 7)
    plan = prepare_run(vars(build_parser().parse_args(base)))
    assert plan.config.mixed_precision == "no"
    code = main([*base, "--mixed-precision", "bf16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--mixed-precision bf16: Fake sm70 has no native bf16" in err
    assert len(err.splitlines()) == 1 and not out.exists()  # nothing written
    fake_cuda(monkeypatch, 8)
    assert prepare_run(vars(build_parser().parse_args(base))).config.mixed_precision == "bf16"


def test_precision_bench_measures_bf16_error_against_float64(tmp_path, one_torch_thread):
    import bench.bench_precision as bp

    out = tmp_path / "p.json"
    assert bp.main(["--presets", "small", "--resolutions", "8", "--batch", "4",
                    "--precisions", "fp32", "bf16", "--json", str(out)]) == 0
    rows = {r["precision"]: r for r in json.loads(out.read_text())}
    # fp32's rounding is the floor; bf16 (8 significant bits) must sit orders of magnitude above
    # it and still far below the batch-to-batch change of the same gradients.
    assert rows["fp32"]["grad_d"] < 1e-5 and rows["fp32"]["penalty"] < 1e-5
    assert 1e-4 < rows["bf16"]["grad_d"] < 0.2 and 1e-4 < rows["bf16"]["grad_g"] < 0.2
    assert rows["bf16"]["grad_d"] < rows["bf16"]["grad_d_batch_noise"] / 5
    assert all(r["finite"] for r in rows.values())


def test_train_device_flag_errors_are_one_line_and_write_nothing(demo_lmdb, tmp_path, capsys, monkeypatch):
    from progan.train.setup import prepare_run
    from train import build_parser, main

    out = tmp_path / "run"
    base = ["--data", str(demo_lmdb), "--out", str(out), "--config", "small"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("cuda", "--device cuda: no CUDA device is available"),
                            ("tpu", "--device tpu: use auto, cpu or cuda")):
        code = main([*base, "--device", device])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()
    fake_cuda(monkeypatch, 9)
    plan = prepare_run(vars(build_parser().parse_args([*base, "--device", "cpu"])))
    assert plan.cpu and plan.config.mixed_precision == "no"  # auto on the device asked for, not the card
    plan = prepare_run(vars(build_parser().parse_args(base)))
    assert not plan.cpu and plan.config.mixed_precision == "bf16"
