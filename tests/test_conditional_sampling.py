"""Sampling class-conditional models (issue 20): --class for images, grids and walks, --class all
grids, class paths in walks, the classes in every export and through torch.hub, bad input.

The checkpoint holds a randomly initialised tiny conditional network (3 classes), saved with the
real checkpoint writer, as tests/test_generate.py does for unconditional ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_generate import (ALPHA, CONFIG, REPO, TRAINED_RES, assert_one_line_error, cli, read_frames, read_png,
                           training_state)

from progan.generator import checkpoints

from progan.generator import export
from progan.generator import fileformat
from progan.generator import onnx_file

from progan.generator import sampling
from progan.generator.loading import load_generator
from progan.nets.config import ModelConfig
from progan.nets.networks import Discriminator, Generator

CLASSES = ("cat", "dog", "red fox")  # a space: its file-name tag is its index
COND = ModelConfig(**{**CONFIG.to_dict(), "class_names": list(CLASSES)})


def conditional_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    state = training_state(seed)
    state.update(model_config=COND.to_dict(), generator=Generator(COND).state_dict(),
                 generator_ema=Generator(COND).state_dict(), discriminator=Discriminator(COND).state_dict())
    return state


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cond_run")
    checkpoints.save_training_checkpoint(folder, conditional_state(seed=4))
    return folder


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain_run")
    checkpoints.save_training_checkpoint(folder, training_state(seed=4))
    return folder


@pytest.fixture(scope="module")
def model(run_dir):
    return load_generator(run_dir)


def images_of(model, seeds, classes) -> np.ndarray:
    """The reference: the Generator called directly with class-index labels."""
    G, info = model
    latents = sampling.latents_for_seeds(seeds, COND.latent_size)
    with torch.no_grad():
        x = G(latents, info.resolution, info.alpha, labels=torch.as_tensor(classes, dtype=torch.long))
    from progan.generator.images import to_uint8
    return to_uint8(x)


# -- the library -----------------------------------------------------------------------------
def test_class_by_name_or_index_and_unknown_ones_list_the_classes():
    assert sampling.class_index("dog", CLASSES) == sampling.class_index("1", CLASSES) == 1
    assert sampling.class_index(1, CLASSES) == 1
    assert sampling.parse_classes("red fox", CLASSES) == [2]
    assert sampling.parse_classes("cat:2:dog", CLASSES) == [0, 2, 1]
    assert sampling.parse_classes("all", CLASSES) == [0, 1, 2]
    for bad, fragment in [("bird", "'bird' is not a class"), ("3", "index 3 is out of range"),
                          ("-1", "index -1 is out of range")]:
        with pytest.raises(ValueError, match=fragment) as caught:
            sampling.parse_classes(bad, CLASSES)
        assert "0=cat, 1=dog, 2=red fox" in str(caught.value)
    for bad in ("cat:", ":dog", "cat::dog", "cat:cat"):
        with pytest.raises(ValueError, match="bad class list"):
            sampling.parse_classes(bad, CLASSES)


def test_seeds_to_images_gives_each_seed_the_class_asked_for(model):
    G, info = model
    seeds = [0, 1, 2, 7]
    for cls, index in (("cat", 0), ("red fox", 2), (1, 1)):
        np.testing.assert_array_equal(sampling.seeds_to_images(G, seeds, info.resolution, info.alpha, classes=cls),
                                      images_of(model, seeds, [index] * 4))
    per_seed = sampling.seeds_to_images(G, seeds, info.resolution, info.alpha, classes=["dog", 0, 2, "cat"])
    np.testing.assert_array_equal(per_seed, images_of(model, seeds, [1, 0, 2, 0]))
    # the class matters (else every test above would pass with the labels ignored)
    assert not np.array_equal(images_of(model, seeds, [0] * 4), images_of(model, seeds, [1] * 4))


def test_without_classes_seed_s_gets_class_s_mod_k_at_any_batch_size(model):
    G, info = model
    seeds = [5, 0, 4, 9, 1]
    expected = images_of(model, seeds, [s % 3 for s in seeds])
    for batch in (1, 2, 5):
        np.testing.assert_array_equal(sampling.seeds_to_images(G, seeds, info.resolution, info.alpha,
                                                               batch_size=batch), expected)


def test_walk_labels_move_linearly_and_loop():
    path = sampling.walk_labels([0, 2], frames=8, label_size=3)  # cat -> red fox -> cat
    torch.testing.assert_close(path[0], torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(path[2], torch.tensor([0.5, 0, 0.5]))
    torch.testing.assert_close(path[4], torch.tensor([0.0, 0, 1]))
    torch.testing.assert_close(path[6], torch.tensor([0.5, 0, 0.5]))  # on its way back to the first
    torch.testing.assert_close(path.sum(1), torch.ones(8))
    torch.testing.assert_close(sampling.walk_labels([1], 4, 3), torch.tensor([[0.0, 1, 0]] * 4))


def test_walk_frames_follow_the_class_path(model):
    G, info = model
    frames = list(sampling.walk_frames(G, [3], frames=4, resolution=info.resolution, alpha=info.alpha,
                                       smoothing=0.5, fps=8, classes=["cat", "dog"]))
    latents = sampling.walk_latents(3, 4, COND.latent_size, smoothing=0.5, fps=8)
    labels = sampling.walk_labels([0, 1], 4, 3)
    from progan.generator.images import to_uint8
    with torch.no_grad():
        expected = to_uint8(G(latents, info.resolution, info.alpha, labels=labels))
    np.testing.assert_array_equal(np.stack(frames), expected)


# -- the command line ------------------------------------------------------------------------
def test_cli_class_for_single_images_names_the_files(run_dir, model, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--seeds", "3,4", "--class", "dog")
    assert code == 0, err
    assert "class 1=dog for every sample" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0003-dog.png", "seed0004-dog.png"]
    expected = images_of(model, [3, 4], [1, 1])
    np.testing.assert_array_equal(read_png(tmp_path / "seed0004-dog.png"), expected[1])
    assert cli(capsys, run_dir, "--out", tmp_path, "--seeds", "3", "--class", "2")[0] == 0
    np.testing.assert_array_equal(read_png(tmp_path / "seed0003-class2.png"), images_of(model, [3], [2])[0])


def test_cli_without_class_cycles_and_says_so(run_dir, model, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--seeds", "0-3")
    assert code == 0 and "seed S gets class S mod 3" in err, err
    expected = images_of(model, [0, 1, 2, 3], [0, 1, 2, 0])
    for i, seed in enumerate(range(4)):
        np.testing.assert_array_equal(read_png(tmp_path / f"seed{seed:04d}.png"), expected[i])


def test_cli_grid_with_one_class(run_dir, model, tmp_path, capsys):
    assert cli(capsys, run_dir, "--out", tmp_path, "--grid", "1x2", "--seed", "6", "--class", "cat")[0] == 0
    grid = read_png(tmp_path / "grid-cat.png")
    np.testing.assert_array_equal(grid, np.concatenate(list(images_of(model, [6, 7], [0, 0])), axis=1))


def test_cli_class_all_grid_has_a_row_per_class_over_the_same_seeds(run_dir, model, tmp_path, capsys):
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--grid", "2x3", "--seed", "10", "--class", "all")
    assert code == 0, err
    assert "rows are ignored" in err and "top to bottom: 0=cat, 1=dog, 2=red fox" in err
    grid = read_png(tmp_path / "grid-all.png")
    cells_width = 3 * TRAINED_RES
    assert grid.shape[0] == 3 * TRAINED_RES and grid.shape[1] > cells_width  # the names' strip at the left
    assert grid[:, :-cells_width].max() > 0  # something is written there
    for k in range(3):
        row = grid[k * TRAINED_RES:(k + 1) * TRAINED_RES, -cells_width:]
        np.testing.assert_array_equal(row, np.concatenate(list(images_of(model, [10, 11, 12], [k] * 3)), axis=1))


def test_cli_walk_between_classes(run_dir, model, tmp_path, capsys, monkeypatch):
    import progan.generator.commands

    written = {}
    real_write = progan.generator.commands.write_animation

    def capture(frames, path, **kwargs):  # the exact frames (GIF/WebP would quantise them)
        written[path.name] = list(frames)
        return real_write(written[path.name], path, **kwargs)

    monkeypatch.setattr(progan.generator.commands, "write_animation", capture)
    code, _, err = cli(capsys, run_dir, "--out", tmp_path, "--walk", "--seeds", "2", "--frames", "6",
                       "--fps", "6", "--smoothing", "0.3", "--class", "cat:red fox", "--format", "webp")
    assert code == 0 and "cat -> red fox -> cat" in err, err
    assert len(read_frames(tmp_path / "walk-seed0002-cat-class2.webp")) == 6
    G, info = model
    latents = sampling.walk_latents(2, 6, COND.latent_size, smoothing=0.3, fps=6)
    from progan.generator.images import to_uint8
    with torch.no_grad():
        expected = to_uint8(G(latents, info.resolution, info.alpha, labels=sampling.walk_labels([0, 2], 6, 3)))
    np.testing.assert_array_equal(np.stack(written["walk-seed0002-cat-class2.webp"]), expected)
    assert cli(capsys, run_dir, "--out", tmp_path, "--walk", "--grid", "1x2", "--frames", "2",
               "--class", "dog")[0] == 0
    assert (tmp_path / "walk-grid-dog.gif").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--class", "bird"], "--class: 'bird' is not a class; this model's 3 classes are 0=cat, 1=dog, 2=red fox"),
    (["--class", "5"], "--class: index 5 is out of range"),
    (["--class", "all"], "--class all needs --grid"),
    (["--class", "all", "--walk", "--grid", "1x2"], "--class all makes a still grid"),
    (["--class", "cat:dog"], "a path of classes is for --walk"),
    (["--class", "cat:", "--walk"], "--class: bad class list 'cat:'"),
    (["--class", "cat:bird", "--walk"], "'bird' is not a class"),
])
def test_bad_class_is_one_line_usage_error_and_writes_nothing(args, fragment, run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = cli(capsys, run_dir, "--out", out, *args)
    assert_one_line_error(result, fragment)
    assert result[0] == 2 and not out.exists()


def test_class_on_an_unconditional_model_is_a_usage_error(plain_run, tmp_path, capsys):
    result = cli(capsys, plain_run, "--out", tmp_path / "out", "--class", "cat")
    assert_one_line_error(result, "--class cat: this model is unconditional")
    assert result[0] == 2 and not (tmp_path / "out").exists()


# -- exports and torch.hub -------------------------------------------------------------------
@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cond_exports")
    return {suffix: export.export_file(run_dir, folder / f"g{suffix}") for suffix in (".pt", ".safetensors", ".onnx")}


def test_pt_and_safetensors_carry_the_class_names(exports):
    for suffix in (".pt", ".safetensors"):
        G, info = load_generator(exports[suffix])
        assert info.model_config.class_names == G.cfg.class_names == CLASSES
    raw = exports[".safetensors"].read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert json.loads(header["model_config"])["class_names"] == list(CLASSES)
    assert json.loads(header["class_names"]) == list(CLASSES)  # also on its own, for any safetensors reader


def test_one_seed_and_class_give_the_same_image_from_checkpoint_safetensors_and_onnx(model, exports,
                                                                                      one_torch_thread):
    import onnx

    seeds, classes = [0, 1, 2, 7, 42], ["dog", "cat", "red fox", "dog", 0]
    reference = images_of(model, seeds, [1, 0, 2, 1, 0])
    G_st, info_st = load_generator(exports[".safetensors"])
    np.testing.assert_array_equal(sampling.seeds_to_images(G_st, seeds, info_st.resolution, info_st.alpha,
                                                           classes=classes), reference)
    session = onnx_file.onnx_session(exports[".onnx"], threads=1)
    assert [i.name for i in session.get_inputs()] == ["latents", "labels"]
    assert session.get_inputs()[1].shape[1] == 3
    assert onnx_file.onnx_class_names(session) == CLASSES
    from_onnx = onnx_file.onnx_images(session, seeds, classes=classes)
    assert from_onnx.shape == reference.shape
    assert np.abs(from_onnx.astype(int) - reference.astype(int)).max() <= 1
    assert not np.array_equal(onnx_file.onnx_images(session, seeds, classes="cat"), from_onnx)
    # no classes: seed s gets class s mod K, as everywhere
    assert np.abs(onnx_file.onnx_images(session, [4, 5]).astype(int)
                  - images_of(model, [4, 5], [1, 2]).astype(int)).max() <= 1
    meta = {p.key: p.value for p in onnx.load(str(exports[".onnx"])).metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASSES)
    with pytest.raises(fileformat.ExportError, match="'bird' is not a class"):
        onnx_file.onnx_images(session, seeds, classes="bird")


def test_unconditional_onnx_keeps_one_input_and_refuses_classes(plain_run, tmp_path, one_torch_thread):
    session = onnx_file.onnx_session(export.export_file(plain_run, tmp_path / "g.onnx"), threads=1)
    assert [i.name for i in session.get_inputs()] == ["latents"]
    assert onnx_file.onnx_class_names(session) == ()
    with pytest.raises(fileformat.ExportError, match="unconditional"):
        onnx_file.onnx_images(session, [0], classes="cat")


def test_hub_generator_exposes_the_classes_and_samples_them(run_dir, model):
    G = torch.hub.load(str(REPO), "generator", path=str(run_dir), source="local", trust_repo=True)
    assert G.class_names == G.cfg.class_names == CLASSES
    np.testing.assert_array_equal(G.sample([3, 8], classes="dog"), images_of(model, [3, 8], [1, 1]))
    np.testing.assert_array_equal(G.sample([3, 8]), images_of(model, [3, 8], [0, 2]))
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_doc", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert "labels=" in hubconf.generator.__doc__ and "class_names" in hubconf.generator.__doc__


def test_readme_tells_the_conditional_commands():
    readme = (REPO / "docs" / "class-labels.md").read_text()
    for fragment in ("--class all", "--class cat:dog", "class_names", "onnx_images(session, seeds=[0, 1, 2], classes="):
        assert fragment in readme, fragment


def test_unconditional_files_are_as_before(plain_run, tmp_path, capsys):
    """No class anywhere: the same file names, and each file's bytes are what the generator's
    plain (label-free) call saved with save_png gives."""
    from progan.generator.images import make_grid, save_png, to_uint8

    G, info = load_generator(plain_run)
    with torch.no_grad():
        expected = to_uint8(G(sampling.latents_for_seeds([0, 1], CONFIG.latent_size), info.resolution, info.alpha))
    save_png(expected[1], tmp_path / "want-seed.png")
    save_png(make_grid(expected, rows=1, cols=2), tmp_path / "want-grid.png")
    assert cli(capsys, plain_run, "--out", tmp_path / "a", "--seeds", "0-1")[0] == 0
    assert cli(capsys, plain_run, "--out", tmp_path / "b", "--grid", "1x2")[0] == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["seed0000.png", "seed0001.png"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["grid.png"]
    assert (tmp_path / "a" / "seed0001.png").read_bytes() == (tmp_path / "want-seed.png").read_bytes()
    assert (tmp_path / "b" / "grid.png").read_bytes() == (tmp_path / "want-grid.png").read_bytes()


def test_the_readme_conditional_snippet_runs(exports, tmp_path, monkeypatch, one_torch_thread, capsys):
    import re
    import shutil

    shutil.copy(exports[".pt"], tmp_path / "generator.pt")
    shutil.copy(exports[".onnx"], tmp_path / "generator.onnx")
    readme = (REPO / "docs" / "class-labels.md").read_text()
    snippet = re.search(r"```python\n(import progan\nfrom progan.generator.onnx_file import onnx_class_names[^`]*)```",
                        readme).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - our own README
    assert scope["cats"].shape == scope["mixed"].shape == (3, TRAINED_RES, TRAINED_RES, 3)
    assert capsys.readouterr().out.count(str(CLASSES)) == 2


def test_info_prints_the_class_names_of_every_kind_of_file(run_dir, exports, plain_run, capsys):
    for path in (run_dir, exports[".pt"], exports[".safetensors"], exports[".onnx"]):
        code, out, err = cli(capsys, "info", path)
        assert code == 0, err
        assert "classes: 3: 0=cat, 1=dog, 2=red fox" in out and "stage: 8x8, alpha 0.500, 12.3 kimg" in out
    assert "labels ['batch', 3]" in cli(capsys, "info", exports[".onnx"])[1]
    code, out, _ = cli(capsys, "info", plain_run)
    assert code == 0 and "classes: none (unconditional)" in out and "training checkpoint" in out


def test_info_on_a_bad_path_is_one_line(tmp_path, capsys):
    result = cli(capsys, "info", tmp_path / "missing.pt")
    assert_one_line_error(result, "missing.pt")
    assert result[0] == 2
