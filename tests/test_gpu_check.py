"""bench/gpu_check.py: its CPU dry run goes start to finish (so GPU minutes go to measuring), its numbers
add up, and its host-read trap sees reads."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli


def test_host_read_trap_counts_each_read_and_restores_tensor():
    from bench.gpu_check import HostReads

    x = torch.ones(3)
    original = torch.Tensor.item
    with HostReads(torch.device("cpu")) as reads:
        x.sum().item()
        bool(x.sum() > 0)
        x.mul_(2)  # device work: no read
    assert reads.count == 2 and reads.where == {"item": 1, "__bool__": 1}
    assert torch.Tensor.item is original


def test_bad_device_and_missing_gpu_are_one_line_errors(tmp_path):
    out = tmp_path / "out"
    if not torch.cuda.is_available():
        proc = run_cli(["bench/gpu_check.py", "--out", str(out), "--device", "cuda"], check=False)
        assert proc.returncode == 2 and "--device cuda: no CUDA device" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        proc = run_cli(["bench/gpu_check.py", "--out", str(out)], check=False)
        assert proc.returncode == 2 and "use --tiny" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli(["bench/gpu_check.py", "--out", str(out), "--device", "tpu"], check=False)
    assert proc.returncode == 2 and "--device tpu" in proc.stderr
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_tiny_dry_run_drives_the_trainer_step_and_its_numbers_add_up(tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["bench/gpu_check.py", "--out", str(out), "--tiny", "--device", "cpu", "--resolutions", "4", "8",
                    "--steps", "1", "--max-doublings", "1", "--skip-user-path"], env={"OMP_NUM_THREADS": "1"})
    result = json.loads((out / "gpu_check.json").read_text())
    assert "errors" not in result and set(result["part_seconds"]) == {
        "ceilings", "data", "steps", "profile", "sampling", "precision", "swd", "roofline"}
    assert (out / "gpu_check.txt").read_text().strip().splitlines()[-1] == proc.stdout.strip().splitlines()[-2]
    assert "aten::" in (out / "profile.txt").read_text() and result["profile"]["s_per_step"] > 0
    rows = result["steps"]
    assert [(r["resolution"], r["batch"]) for r in rows] == [(4, 8), (4, 16), (8, 8), (8, 16)]
    assert all(r["finite"] and r["s_per_kimg"] > 0 and r["flops_per_step"] > 0 for r in rows)
    by = {(r["resolution"], r["batch"]): r for r in rows}
    # The trainer's step does twice the work on twice the batch, and more at 8x8 than at 4x4.
    assert by[8, 16]["flops_per_step"] == pytest.approx(2 * by[8, 8]["flops_per_step"], rel=0.02)
    assert by[8, 8]["flops_per_step"] > 2 * by[4, 8]["flops_per_step"]
    assert [r.get("largest_that_fits", False) for r in rows] == [False, True, False, True]
    # The roofline counts bench_step's step on the meta device: per image it must be the
    # trainer's own step (same networks, penalty and losses), else the floors mean nothing.
    roof = result["roofline"]["per_resolution"]
    assert all(roof[res]["convs"] > 0 and roof[res]["image_sized_convs"] == 0 for res in ("4", "8"))
    for res in ("4", "8"):
        per_image_meta = roof[res]["flops_per_step"] / roof[res]["batch"]
        assert per_image_meta == pytest.approx(by[int(res), 8]["flops_per_step"] / 8, rel=0.05)
    assert result["roofline"]["floor_hours"] == pytest.approx(
        sum(p["floor_hours"] for p in result["roofline"]["phases"]))
    (proj,) = result["projections"]
    assert proj["complete"] and proj["hours"] == pytest.approx(sum(p["hours"] for p in proj["phases"]))
    assert sum(p["kimg"] for p in proj["phases"]) == pytest.approx(result["roofline"]["total_kimg"])
    assert result["sampling_img_per_s"] > 0 and result["swd_seconds"] > 0
    errors = {r["precision"]: r for r in result["precision_error"]}
    assert errors["fp32"]["grad_d"] < errors["bf16"]["grad_d"] < 0.2
    last = proc.stdout.strip().splitlines()
    assert last[-1].startswith("(") and last[-2].startswith("| bf16 | 8 | 16 | larger (largest) |")  # table last


def test_batch_search_stops_at_out_of_memory_and_keeps_the_largest_that_ran(monkeypatch, tmp_path):
    import time

    import bench.gpu_check as gpu_check

    tried = []

    def measure(data, out, preset, res, batch, precision, device, steps, workers):
        tried.append((res, batch))
        if batch > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"resolution": res, "batch": batch, "s_per_kimg": 1.0, "tflops": 0.0,
                "host_reads_per_step": 0.0, "peak_bytes": 0}

    monkeypatch.setattr(gpu_check, "measure_step", measure)
    rows = gpu_check.step_rows(None, tmp_path, "small", [4, 8], ["bf16"], torch.device("cpu"), 1, 0, 5,
                               time.monotonic() + 60, first_batch=8)
    assert tried == [(4, 8), (4, 16), (4, 32), (8, 8), (8, 16), (8, 32)]
    assert [(r["batch"], r["kind"], r.get("largest_that_fits", False)) for r in rows] == [
        (8, "paper batch", False), (16, "larger", True), (8, "paper batch", False), (16, "larger", True)]

    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "measure_step", broken)  # a real failure is not mistaken for a full card
    with pytest.raises(RuntimeError, match="illegal memory access"):
        gpu_check.step_rows(None, tmp_path, "small", [4], ["bf16"], torch.device("cpu"), 1, 0, 5,
                            time.monotonic() + 60, first_batch=8)


def test_a_part_that_fails_is_recorded_and_keeps_what_was_measured_before_and_after(tmp_path):
    from bench.gpu_check import Report

    result = {"mode": "tiny", "environment": {"device_name": "cpu", "torch": torch.__version__}}
    report = Report(tmp_path / "out", result)
    with report.part("ceilings"):
        result["ceilings"] = {"matmul_bf16_tflops": 1.0, "matmul_fp32_tflops": 0.5, "copy_bytes_per_s": 1e9}
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["ceilings"]["matmul_bf16_tflops"] == 1.0  # on disk as soon as the part ends
    with report.part("precision"):
        result["precision_error"] = []
        raise RuntimeError("expected dtype float for `end` but got dtype c10::BFloat16")
    with report.part("swd"):
        result["swd_images"], result["swd_resolution"], result["swd_seconds"] = 64, 16, 0.5
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert "c10::BFloat16" in saved["errors"]["precision"] and saved["swd_seconds"] == 0.5
    assert set(saved["part_seconds"]) == {"ceilings", "precision", "swd"}
    text = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert "section precision FAILED" in text and "SWD of 64 images" in text


@pytest.mark.slow
def test_the_users_path_on_this_device_goes_through_fades_sigterm_resume_and_generate(tmp_path):
    """The part of the GPU check that would have caught the fade crash: the README's commands
    with their defaults, here on the CPU (tiny sizes)."""
    from bench.gpu_check import user_path

    got = user_path(tmp_path, tiny=True, device=torch.device("cpu"), timeout=400)
    assert got["ok"], "\n".join(got["log"][-30:])
    assert got["first_leg"]["returncode"] == 3 and got["first_leg"]["signalled"]
    assert max(got["first_leg"]["phases_seen"]) >= 1  # stopped inside the first fade (the GPU run: the second)
    assert 3 in got["resume"]["phases_seen"]  # the resumed run went into the next fade
    assert got["generate"]["returncode"] == 0 and (tmp_path / "samples" / "grid.png").stat().st_size > 0
