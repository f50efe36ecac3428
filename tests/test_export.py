"""Exports to share and serve: .safetensors (no pickle) and .onnx (onnxruntime on the CPU) give
the same image for a seed as the training checkpoint; bad input is one line and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_generate import ALPHA, CONFIG, TRAINED_RES, assert_one_line_error, cli, read_png, training_state

from progan.generator import checkpoints

from progan.generator import export
from progan.generator import fileformat
from progan.generator import onnx_file
from progan.generator.fileformat import CheckpointError
from progan.generator.loading import load_generator
from progan.generator.sampling import latents_for_seeds, seeds_to_images, synthesize

SEEDS = [0, 1, 2, 7, 42]
# ONNX runs the same float32 maths in another order (and with the equalized-LR scales folded
# into the weights): outputs in [-1, 1] agree to this, and 8-bit pixels to one grey level.
ONNX_ATOL = 1e-4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    checkpoints.save_training_checkpoint(folder, training_state(seed=3))
    return folder


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    return {suffix: export.export_file(run_dir, folder / f"g{suffix}") for suffix in (".safetensors", ".onnx")}


def test_a_seed_gives_the_same_image_from_checkpoint_safetensors_and_onnx(run_dir, exports, one_torch_thread):
    G, info = load_generator(run_dir)
    G_st, info_st = load_generator(exports[".safetensors"])
    assert (info_st.resolution, info_st.alpha, info_st.images_shown) == (TRAINED_RES, ALPHA, 12_345)
    assert info_st.model_config == info.model_config == CONFIG
    reference = seeds_to_images(G, SEEDS, info.resolution, info.alpha)
    np.testing.assert_array_equal(seeds_to_images(G_st, SEEDS, info.resolution, info.alpha), reference)

    session = onnx_file.onnx_session(exports[".onnx"], threads=1)
    from_onnx = onnx_file.onnx_images(session, SEEDS, CONFIG.latent_size)
    assert from_onnx.shape == reference.shape == (len(SEEDS), TRAINED_RES, TRAINED_RES, 3)
    assert np.abs(from_onnx.astype(int) - reference.astype(int)).max() <= 1
    latents = latents_for_seeds(SEEDS, CONFIG.latent_size)
    expected = synthesize(G, latents, info.resolution, info.alpha).clamp(-1, 1).numpy()
    (images,) = session.run(["images"], {"latents": latents.numpy()})
    np.testing.assert_allclose(images, expected, atol=ONNX_ATOL, rtol=0)
    assert images.min() >= -1 and images.max() <= 1


def test_onnx_batch_is_dynamic_and_the_file_says_what_it_holds(exports):
    import onnx

    session = onnx_file.onnx_session(exports[".onnx"], threads=1)
    for count in (1, 3, 9):
        (images,) = session.run(["images"], {"latents": latents_for_seeds(range(count), CONFIG.latent_size).numpy()})
        assert images.shape == (count, 3, TRAINED_RES, TRAINED_RES)
    model = onnx.load(str(exports[".onnx"]))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch dimension
    assert model.opset_import[0].version == onnx_file.onnx_opset() >= 21
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["model_config"]) == CONFIG.to_dict()
    assert (meta["resolution"], float(meta["alpha"])) == (str(TRAINED_RES), ALPHA)


def test_onnx_images_reads_the_latent_size_from_the_model(exports):
    """Issue 19: the README passed latent_size=512, and a model of another latent size then
    failed inside onnxruntime. The model's input [batch, latent_size] says it."""
    session = onnx_file.onnx_session(exports[".onnx"], threads=1)
    assert onnx_file.onnx_latent_size(session) == CONFIG.latent_size == 32  # not the paper's 512
    np.testing.assert_array_equal(onnx_file.onnx_images(session, SEEDS), onnx_file.onnx_images(session, SEEDS, 32))
    with pytest.raises(fileformat.ExportError, match=r"latent_size 512 does not fit .* latents \[batch, 32\]"):
        onnx_file.onnx_images(session, SEEDS, latent_size=512)


def test_the_readme_onnx_snippet_runs_on_a_small_preset_export(tmp_path, monkeypatch, one_torch_thread):
    """The README's Python snippet, as written, on an export of the `small` preset (latent 64)."""
    import re
    from pathlib import Path

    from progan.nets.config import ModelConfig
    from progan.nets.networks import Generator

    config = ModelConfig.preset("small", resolution=8)
    torch.manual_seed(0)
    state = {**training_state(seed=3), "model_config": config.to_dict(), "resolution": 8, "alpha": 1.0}
    state["generator"] = state["generator_ema"] = Generator(config).state_dict()
    checkpoints.save_training_checkpoint(tmp_path, state)
    export.export_file(tmp_path, tmp_path / "generator.onnx")
    readme = (Path(__file__).resolve().parents[1] / "docs" / "sampling.md").read_text()
    snippet = re.search(r"```python\n(from progan.generator.onnx_file import onnx_images[^`]*)```", readme).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - our own README
    assert scope["images"].shape == (3, 8, 8, 3) and scope["images"].dtype == np.uint8


def test_onnx_of_a_lower_stage_is_its_stable_output(run_dir, tmp_path, one_torch_thread):
    path = export.export_file(run_dir, tmp_path / "g4.onnx", resolution=4)
    G, _ = load_generator(run_dir)
    (images,) = onnx_file.onnx_session(path, threads=1).run(["images"], {"latents": latents_for_seeds([5], 32).numpy()})
    expected = synthesize(G, latents_for_seeds([5], 32), 4, 1.0).clamp(-1, 1).numpy()
    np.testing.assert_allclose(images, expected, atol=ONNX_ATOL, rtol=0)


def test_safetensors_holds_tensors_and_the_config_in_its_header(exports, run_dir):
    from safetensors import safe_open

    raw = exports[".safetensors"].read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])  # the format: u64 length, JSON header
    assert json.loads(header["__metadata__"]["model_config"]) == CONFIG.to_dict()
    with safe_open(str(exports[".safetensors"]), framework="pt") as f:
        ema = torch.load(checkpoints.find_latest_checkpoint(run_dir), weights_only=True)["generator_ema"]
        assert sorted(f.keys()) == sorted(ema)
        for name in ema:
            torch.testing.assert_close(f.get_tensor(name), ema[name], rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_exports_of_one_checkpoint_are_byte_identical(suffix, run_dir, tmp_path):
    """The same checkpoint gives the same bytes, so a sha256 can name an export. safetensors
    wrote its metadata in hash order: the header is rewritten with sorted keys, padded to 8
    bytes as the format asks. torch.save named the archive's root after its (temporary) file:
    it saves to memory first. Both still read back exactly."""
    files = [export.export_file(run_dir, tmp_path / f"g{n}{suffix}") for n in range(4)]
    raw = files[0].read_bytes()
    assert all(f.read_bytes() == raw for f in files[1:])
    ema = torch.load(checkpoints.find_latest_checkpoint(run_dir), weights_only=True)["generator_ema"]
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        length = int.from_bytes(raw[:8], "little")
        assert length % 8 == 0 and raw[8:8 + length].rstrip(b" ") == json.dumps(
            json.loads(raw[8:8 + length]), sort_keys=True, separators=(",", ":")).encode()
        loaded = load_file(str(files[0]))
    else:
        loaded = torch.load(files[0], weights_only=True)["generator_ema"]
    assert sorted(loaded) == sorted(ema) and all(torch.equal(loaded[name], ema[name]) for name in ema)


def test_cli_exports_safetensors_and_samples_from_it(run_dir, tmp_path, capsys):
    code, out, err = cli(capsys, "export", run_dir, tmp_path / "g.safetensors")
    assert code == 0 and "g.safetensors" in out, err
    assert cli(capsys, tmp_path / "g.safetensors", "--out", tmp_path / "a", "--seeds", "4")[0] == 0
    assert cli(capsys, run_dir, "--out", tmp_path / "b", "--seeds", "4")[0] == 0
    np.testing.assert_array_equal(read_png(tmp_path / "a" / "seed0004.png"), read_png(tmp_path / "b" / "seed0004.png"))
    # and a .safetensors export exports again, to any format
    assert cli(capsys, "export", tmp_path / "g.safetensors", tmp_path / "again.pt")[0] == 0
    assert cli(capsys, "export", tmp_path / "g.safetensors", tmp_path / "again.onnx")[0] == 0
    modes = {path.suffix: path.stat().st_mode & 0o777 for path in tmp_path.glob("*.*")}
    assert len(set(modes.values())) == 1, modes  # every format gets the usual file mode


# -- bad input ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(run_dir, exports, tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bad")
    (root / "empty_run").mkdir()
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(root / "resnet.safetensors"))  # no progan metadata
    # progan's metadata without its checksums (a file that carried them would be refused as damaged)
    good_meta = {key: value for key, value in _metadata(exports[".safetensors"]).items() if key != "checksums"}
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(root / "wrong_keys.safetensors"), metadata=good_meta)
    for suffix in (".safetensors", ".onnx"):
        data = exports[suffix].read_bytes()
        (root / f"truncated{suffix}").write_bytes(data[: len(data) // 2])
    return root


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.mark.parametrize("name, fragment", [
    ("empty_run", "holds no checkpoint"),
    ("resnet.safetensors", "is not a progan generator"),
    ("wrong_keys.safetensors", "holds no usable EMA generator"),
    ("truncated.safetensors", "not a readable .safetensors file"),
    ("truncated.onnx", "is an ONNX model"),
])
def test_unusable_inputs_are_one_line_and_write_nothing(name, fragment, bad_files, tmp_path, capsys):
    path = bad_files / name
    for out in ("g.pt", "g.safetensors", "g.onnx"):
        assert_one_line_error(cli(capsys, "export", path, tmp_path / out), name, fragment)
    assert_one_line_error(cli(capsys, path, "--out", tmp_path / "samples"), name, fragment)
    assert list(tmp_path.iterdir()) == []


def test_truncated_onnx_cannot_open_a_session(bad_files):
    with pytest.raises(CheckpointError, match="truncated.onnx is not a readable ONNX model"):
        onnx_file.onnx_session(bad_files / "truncated.onnx")


@pytest.mark.parametrize("out, args, fragment", [
    ("g.h5", [], "unknown export format '.h5'; end the file name in .pt, .safetensors, .onnx"),
    ("g", [], "(no extension)"),
    ("g.safetensors", ["--resolution", "4"], "--resolution picks the stage of an .onnx export"),
    ("g.onnx", ["--resolution", "16"], "above the 8x8"),
])
def test_bad_export_options_are_one_line_and_write_nothing(out, args, fragment, run_dir, tmp_path, capsys):
    assert_one_line_error(cli(capsys, "export", run_dir, tmp_path / "sub" / out, *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_without_its_packages_says_what_to_install(run_dir, tmp_path, capsys, monkeypatch):
    real_find_spec = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a))
    assert_one_line_error(cli(capsys, "export", run_dir, tmp_path / "g.onnx"), "g.onnx needs onnxscript",
                          'pip install -e ".[export]"')
    assert list(tmp_path.iterdir()) == []


def test_failed_onnx_export_is_one_line_and_leaves_the_previous_file(run_dir, tmp_path, monkeypatch, capsys):
    import onnx

    target = tmp_path / "g.onnx"
    target.write_bytes(b"previous")

    def refuse(*args, **kwargs):
        raise onnx.checker.ValidationError("refused for the test")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    assert_one_line_error(cli(capsys, "export", run_dir, target), "g.onnx: the ONNX export failed, nothing was written",
                          "ValidationError: refused for the test")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["g.onnx"]


@pytest.mark.slow
def test_command_line_onnx_export_prints_one_line_and_no_exporter_noise(run_dir, tmp_path):
    from test_generate import _run

    done = _run("export", run_dir, tmp_path / "g.onnx")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("\n") == 1 and "g.onnx" in done.stdout
    done = _run("export", run_dir, tmp_path / "g.h5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown export format" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]
