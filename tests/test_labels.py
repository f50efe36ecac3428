"""Class labels in the database: `build --labels`, the label table, the reading API, info and
verify, resume and rebuild identity, and `synth --classes`."""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import signal
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from conftest_data import all_records, noise, run_cli, run_cli_subprocess, save
from data_prep.build import STALL_MESSAGE
from progan.data.format import LABELS_KEY, DatasetError, canonical_json, record_checksum
from progan.data.reader import MultiResolutionDataset, dataset_fingerprint, read_labels, read_metadata


def build(capsys, source: Path, out: Path, *flags):
    return run_cli(capsys, "build", source, out, "--max-res", 16, "--workers", 1, *flags)


@pytest.fixture(scope="module")
def class_source(tmp_path_factory) -> Path:
    """3 synth classes of 4 faces each, plus one picture directly in SOURCE (no class)."""
    root = tmp_path_factory.mktemp("classes") / "src"
    from data_prep.cli import main

    assert main(["synth", str(root), "--count", "12", "--size", "32", "--seed", "2", "--workers", "1",
                 "--classes", "3"]) == 0
    save(noise(32, 9), root / "loose.png")
    return root


@pytest.fixture(scope="module")
def folders_db(class_source, tmp_path_factory):
    from data_prep.cli import main

    out = tmp_path_factory.mktemp("db") / "classes.lmdb"
    assert main(["build", str(class_source), str(out), "--max-res", "16", "--workers", "1", "--labels", "folders"]) == 0
    return out


def poke(db: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def folder_of(source: str) -> str:
    return source.split("/")[0]


# ----------------------------------------------------------------------------- --labels folders


def test_folders_give_each_image_its_folders_class(folders_db, capsys):
    metadata = read_metadata(folders_db)
    assert metadata["classes"] == ["class_00", "class_01", "class_02"]
    assert metadata["count"] == 12
    assert metadata["skipped"] == [{"path": "loose.png", "reason": "no label: directly in SOURCE, not in a class folder"}]
    classes, labels = read_labels(folders_db)
    assert classes == ("class_00", "class_01", "class_02")
    assert labels.dtype == np.int64 and labels.shape == (12,)
    # index i is the same picture at every level: its label is its source's folder
    assert [classes[label] for label in labels] == [folder_of(s) for s in metadata["sources"]]
    for res in (4, 16):
        dataset = MultiResolutionDataset(folders_db, res)
        assert dataset.class_names == classes
        np.testing.assert_array_equal(dataset.labels, labels)
        assert dataset.class_counts.dtype == np.int64 and dataset.class_counts.tolist() == [4, 4, 4]


def test_folders_build_summary_counts_the_unlabelled_file(class_source, tmp_path, capsys):
    code, out, err = build(capsys, class_source, tmp_path / "db.lmdb", "--labels", "folders")
    assert code == 0
    assert "skipped loose.png: no label: directly in SOURCE" in err
    assert "skipped 1 files: 1 no label" in out
    assert "labels: 3 classes (class_00: 4, class_01: 4, class_02: 4)" in out


def test_identical_labelled_builds_are_identical(class_source, folders_db, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "build", class_source, tmp_path / "again.lmdb", "--max-res", 16, "--workers", 2,
                         "--labels", "folders")
    assert code == 0
    assert all_records(tmp_path / "again.lmdb") == all_records(folders_db)


def test_unlabelled_dataset_has_no_labels(class_source, tmp_path, capsys):
    assert build(capsys, class_source, tmp_path / "plain.lmdb")[0] == 0
    dataset = MultiResolutionDataset(tmp_path / "plain.lmdb", 8)
    assert dataset.class_names == () and dataset.labels is None and dataset.class_counts is None
    assert read_labels(tmp_path / "plain.lmdb") == ((), None)
    assert len(dataset) == 13  # the loose picture too
    assert LABELS_KEY not in all_records(tmp_path / "plain.lmdb")


def test_folders_without_subfolders_is_refused(tmp_path, capsys):
    save(noise(32, 1), tmp_path / "flat" / "a.png")
    code, _, err = build(capsys, tmp_path / "flat", tmp_path / "out.lmdb", "--labels", "folders")
    assert code == 2 and err.count("\n") == 1 and "--labels folders: SOURCE has no subfolders of images" in err
    assert not (tmp_path / "out.lmdb").exists()


# ----------------------------------------------------------------------------- unlabelled builds unchanged


# `synth --count 6 --size 32 --seed 3` and its `build --max-res 16` as made before labels existed
# (Pillow 13.0.0, constraints.txt): the files' and the database's digests.
SYNTH_DIGEST = "7949d6ad36126de09acf21f81db062ce7acc8964912f39c70bfd809e4e13e468"
DATABASE_DIGEST = "c296aafd9302758e1ad15c87c992fa61db2ead2440228c8f756fc8c5e1f34fd9"


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def database_digest(db: Path) -> str:
    """Every record's key and bytes; the metadata with the build's absolute SOURCE path blanked."""
    records = all_records(db)
    metadata = json.loads(records[b"meta"])
    metadata["build"]["source"] = "SOURCE"
    records[b"meta"] = json.dumps(metadata, sort_keys=True).encode()
    digest = hashlib.sha256()
    for key in sorted(records):
        digest.update(key + b"\0" + hashlib.sha256(records[key]).digest())
    return digest.hexdigest()


def test_unlabelled_synth_and_build_are_byte_identical_to_before_labels(tmp_path, capsys):
    if Image.__version__ != "13.0.0":
        pytest.skip("the recorded digests are of Pillow 13.0.0 (constraints.txt)")
    assert run_cli(capsys, "synth", tmp_path / "f", "--count", 6, "--size", 32, "--seed", 3, "--workers", 1)[0] == 0
    assert folder_digest(tmp_path / "f") == SYNTH_DIGEST
    assert build(capsys, tmp_path / "f", tmp_path / "f.lmdb")[0] == 0
    metadata = read_metadata(tmp_path / "f.lmdb")
    assert "classes" not in metadata and "label_table" not in metadata and "labels" not in metadata["build"]
    assert database_digest(tmp_path / "f.lmdb") == DATABASE_DIGEST


# ----------------------------------------------------------------------------- --labels FILE.json


@pytest.fixture
def flat_source(tmp_path) -> Path:
    """Five pictures: a.png, b.png, sub/c.png, sub/d.png, e.png."""
    root = tmp_path / "flat"
    for i, name in enumerate(["a.png", "b.png", "sub/c.png", "sub/d.png", "e.png"]):
        save(noise(32, i), root / name)
    return root


def test_json_map_of_class_names(flat_source, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a.png": "dog", "sub/c.png": "cat", "./sub/d.png": "dog", "e.png": "cat",
                                  "gone.png": "cat", "sub/gone.png": "dog"}))
    code, out, err = build(capsys, flat_source, tmp_path / "db.lmdb", "--labels", labels)
    assert code == 0
    # entries naming no file: one line each and counted; the file without a label: skipped
    assert "label file entry gone.png: no such image" in err and "label file entry sub/gone.png: no such image" in err
    assert "label file: 2 entries name no image under" in out
    assert "skipped b.png: no label: not in labels.json" in err and "1 no label" in out
    classes, values = read_labels(tmp_path / "db.lmdb")
    assert classes == ("cat", "dog")  # sorted
    sources = read_metadata(tmp_path / "db.lmdb")["sources"]
    assert sources == ["a.png", "e.png", "sub/c.png", "sub/d.png"]
    assert [classes[v] for v in values] == ["dog", "cat", "cat", "dog"]


def test_json_map_of_indices_has_max_plus_one_classes(flat_source, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a.png": 0, "b.png": 4, "sub/c.png": 2, "sub/d.png": 0, "e.png": 2}))
    assert build(capsys, flat_source, tmp_path / "db.lmdb", "--labels", labels)[0] == 0
    classes, values = read_labels(tmp_path / "db.lmdb")
    assert classes == ("0", "1", "2", "3", "4")
    assert values.tolist() == [0, 4, 2, 2, 0]  # a, b, e, sub/c, sub/d
    assert MultiResolutionDataset(tmp_path / "db.lmdb", 4).class_counts.tolist() == [2, 0, 2, 0, 1]


def test_stylegan2_ada_form_with_and_without_class_names(flat_source, tmp_path, capsys):
    entries = [["a.png", 1], ["b.png", 0], ["sub/c.png", 2], ["sub/d.png", 1], ["e.png", 0]]
    plain = tmp_path / "dataset.json"
    plain.write_text(json.dumps({"labels": entries}))
    assert build(capsys, flat_source, tmp_path / "plain.lmdb", "--labels", plain)[0] == 0
    classes, values = read_labels(tmp_path / "plain.lmdb")
    assert classes == ("0", "1", "2") and values.tolist() == [1, 0, 0, 2, 1]
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"labels": entries, "classes": ["x", "y", "z", "w"]}))
    assert build(capsys, flat_source, tmp_path / "named.lmdb", "--labels", named)[0] == 0
    classes, values = read_labels(tmp_path / "named.lmdb")
    assert classes == ("x", "y", "z", "w") and values.tolist() == [1, 0, 0, 2, 1]
    assert MultiResolutionDataset(tmp_path / "named.lmdb", 4).class_counts.tolist() == [2, 2, 1, 0]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "has the wrong shape"),
    ('{"labels": null}', "has the wrong shape"),
    ("{}", "holds no labels"),
    ('{"a.png": "cat", "b.png": 1}', "mixes class names and indices"),
    ('{"a.png": -1}', 'maps to -1, expected a class name or an index >= 0'),
    ('{"a.png": [1]}', "expected a class name or an index"),
    ('{"labels": [["a.png", "cat"]]}', '"labels" entry 0 is'),
    ('{"labels": [["a.png", true]]}', '"labels" entry 0 is'),
    ('{"labels": [["a.png", 3]], "classes": ["x", "y"]}', '"a.png" has class index 3, but "classes" names 2'),
    ('{"labels": [["a.png", 0]], "classes": ["x", "x"]}', '"classes" must be a list of distinct'),
    ('{"labels": [["a.png", 0], ["a.png", 1]]}', '"a.png" is given two different classes'),
    ('{"nothing/here.png": "cat"}', "none of its 1 paths names an image under SOURCE"),
    # a label that would size a class list of 4 billion names (it filled 24 GB before the OOM killer)
    ('{"a.png": 4294967297}', '"a.png" has class index 4294967297, above the limit of 65536 classes'),
    ('{"a.png": 100000000000000000000}', 'has class index 100000000000000000000, above the limit of 65536'),
    ('{"labels": [["a.png", 65536]]}', '"a.png" has class index 65536, above the limit of 65536 classes'),
    ('{"labels": [["a.png", 0]], "classes": %s}' % json.dumps([f"c{i}" for i in range(65537)]),
     "names 65537 classes, more than the limit of 65536"),
])
def test_bad_label_files_are_one_line_exit_2_nothing_written(flat_source, tmp_path, capsys, content, message):
    labels = tmp_path / "labels.json"
    labels.write_text(content)
    code, out, err = build(capsys, flat_source, tmp_path / "out.lmdb", "--labels", labels)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--labels {labels}: " in err and message in err, err
    assert not (tmp_path / "out.lmdb").exists()


def test_missing_label_file_is_one_line(flat_source, tmp_path, capsys):
    code, _, err = build(capsys, flat_source, tmp_path / "out.lmdb", "--labels", tmp_path / "nope.json")
    assert code == 2 and err.count("\n") == 1 and "cannot read it" in err
    assert not (tmp_path / "out.lmdb").exists()


# ----------------------------------------------------------------------------- info and verify


def test_info_shows_classes_and_counts(folders_db, capsys):
    code, out, _ = run_cli(capsys, "info", folders_db, "--brief")
    assert code == 0
    brief = json.loads(out)
    assert brief["classes"] == {"class_00": 4, "class_01": 4, "class_02": 4}
    assert '"classes": {"class_00": 4, "class_01": 4, "class_02": 4}' in out  # compact: one line
    code, out, _ = run_cli(capsys, "info", folders_db)
    full = json.loads(out)
    assert full["classes"] == ["class_00", "class_01", "class_02"]
    assert full["class_counts"] == {"class_00": 4, "class_01": 4, "class_02": 4}


def test_verify_checks_the_label_table(folders_db, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "verify", folders_db)
    assert code == 0 and "labels (3 classes)" in out

    damaged = tmp_path / "damaged.lmdb"
    damaged.mkdir()
    (damaged / "data.mdb").write_bytes((folders_db / "data.mdb").read_bytes())
    table = bytearray(all_records(damaged)[LABELS_KEY])
    table[5] ^= 0x01  # one flipped bit in image 1's label
    poke(damaged, LABELS_KEY, bytes(table))
    code, _, err = run_cli(capsys, "verify", damaged)
    assert code == 2
    assert "bad: label table labels fails its crc32 checksum" in err
    assert "label table labels fails its crc32 checksum" in err.strip().splitlines()[-1]
    with pytest.raises(DatasetError, match="label table labels fails its crc32 checksum.*verify"):
        MultiResolutionDataset(damaged, 8).labels
    with pytest.raises(DatasetError, match="fails its crc32"):
        read_labels(damaged)
    code, out, _ = run_cli(capsys, "info", damaged, "--brief")
    assert code == 0 and '"classes": "unreadable: run python -m data_prep verify' in out


def rewrite_labels(db: Path, table: bytes) -> None:
    """A label table whose checksum in the metadata matches (so only the other checks see it)."""
    metadata = read_metadata(db)
    metadata["label_table"]["crc32"] = record_checksum(table)
    poke(db, LABELS_KEY, table)
    poke(db, b"meta", canonical_json(metadata))


@pytest.mark.parametrize("table, message", [
    (np.array([0, 1, 2, 7] + [0] * 8, "<u4").tobytes(), "image 3 has class 7, only 3 classes"),
    (np.zeros(11, "<u4").tobytes(), "holds 11 labels for 12 images"),
])
def test_verify_names_a_bad_class_index_or_length(folders_db, tmp_path, capsys, table, message):
    db = tmp_path / "db.lmdb"
    db.mkdir()
    (db / "data.mdb").write_bytes((folders_db / "data.mdb").read_bytes())
    rewrite_labels(db, table)
    code, _, err = run_cli(capsys, "verify", db)
    assert code == 2 and message in err
    with pytest.raises(DatasetError, match=message):
        read_labels(db)


def test_verify_names_a_missing_label_table(folders_db, tmp_path, capsys):
    db = tmp_path / "db.lmdb"
    db.mkdir()
    (db / "data.mdb").write_bytes((folders_db / "data.mdb").read_bytes())
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.delete(LABELS_KEY)
    env.close()
    code, _, err = run_cli(capsys, "verify", db)
    assert code == 2 and "label table labels is missing" in err


# ----------------------------------------------------------------------------- resume and rebuild


def test_killed_labelled_build_resumes_to_the_same_database(tmp_path, capsys):
    source = tmp_path / "src"
    for i in range(14):
        save(noise(32, i), source / ("ab"[i % 2]) / f"{i:02d}.png")
    save(noise(32, 99), source / "top.png")  # no class
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({f"{'ab'[i % 2]}/{i:02d}.png": f"k{i % 3}" for i in range(14)}))
    for spec in ("folders", str(labels)):
        out = tmp_path / f"resumed-{len(spec)}.lmdb"
        args = ("build", source, out, "--max-res", 16, "--workers", 2, "--labels", spec)
        process = run_cli_subprocess(*args, env={"PROGAN_BUILD_CHUNK_FILES": "4",
                                                 "PROGAN_BUILD_STALL_AFTER_COMMITS": "2"})
        for line in process.stderr:
            if STALL_MESSAGE in line:
                break
        else:
            pytest.fail(f"the build never stalled: {process.communicate()}")
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        with pytest.raises(DatasetError, match="unfinished build"):
            read_metadata(out)
        # a different --labels is refused on the unfinished build, with one line
        other = "folders" if spec != "folders" else str(labels)
        code, _, err = run_cli(capsys, *args[:-1], other)
        assert code == 2 and err.count("\n") == 1 and "holds an unfinished build with different settings (labels:" in err
        resumed = run_cli_subprocess(*args, env={"PROGAN_BUILD_CHUNK_FILES": "4"})
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0 and "resuming" in err, err
        clean = tmp_path / f"clean-{len(spec)}.lmdb"
        assert run_cli(capsys, "build", source, clean, "--max-res", 16, "--workers", 1, "--labels", spec)[0] == 0
        assert all_records(out) == all_records(clean)
        assert dataset_fingerprint(out) == dataset_fingerprint(clean)
        assert read_labels(out)[1].tolist() == read_labels(clean)[1].tolist()
        assert len(read_labels(out)[1]) == 14


def test_rebuild_with_other_labels_is_refused_and_the_same_is_complete(folders_db, class_source, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "build", class_source, folders_db, "--max-res", 16, "--labels", "folders")
    assert code == 0 and "already complete" in out
    code, _, err = run_cli(capsys, "build", class_source, folders_db, "--max-res", 16)
    assert code == 2 and err.count("\n") == 1 and "(labels: folders recorded, none now)" in err
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"class_00/face_000000.png": "x"}))
    code, _, err = run_cli(capsys, "build", class_source, folders_db, "--max-res", 16, "--labels", labels)
    assert code == 2 and "(labels: folders recorded, a label file (sha256" in err
    # a label file with other contents is another build
    plain = tmp_path / "plain.lmdb"
    assert run_cli(capsys, "build", class_source, plain, "--max-res", 16, "--labels", labels)[0] == 0
    labels.write_text(json.dumps({"class_00/face_000000.png": "y"}))
    code, _, err = run_cli(capsys, "build", class_source, plain, "--max-res", 16, "--labels", labels)
    assert code == 2 and "labels: a label file (sha256" in err and "recorded, a label file (sha256" in err


# ----------------------------------------------------------------------------- synth --classes


def background_hue(path: Path) -> float:
    """Mean hue (circular) of the two top corners, 3x3 pixels each: background only."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    patch = np.concatenate([pixels[:3, :3].reshape(-1, 3), pixels[:3, -3:].reshape(-1, 3)])
    hues = np.array([colorsys.rgb_to_hsv(*p)[0] for p in patch])
    return float(np.angle(np.exp(2j * np.pi * hues).mean()) / (2 * np.pi)) % 1.0


@pytest.mark.parametrize("classes, size", [(10, 16), (4, 32)])
def test_synth_classes_are_told_apart_by_mean_background_hue(tmp_path, capsys, classes, size):
    out = tmp_path / "faces"
    code, stdout, _ = run_cli(capsys, "synth", out, "--count", 6 * classes, "--size", size, "--seed", 4,
                              "--workers", 1, "--classes", classes)
    assert code == 0 and f"in {classes} class folders" in stdout
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [f"class_{c:02d}" for c in range(classes)]
    hues, truth = [], []
    for label, folder in enumerate(folders):
        files = sorted((out / folder).iterdir())
        assert len(files) == 6
        hues += [background_hue(f) for f in files]
        truth += [label] * len(files)
    # nearest class hue (c / K on the colour wheel) recovers every label
    centres = np.arange(classes) / classes
    distance = np.abs(np.array(hues)[:, None] - centres[None])
    predicted = np.minimum(distance, 1 - distance).argmin(axis=1)
    assert predicted.tolist() == truth


def test_synth_classes_keep_the_faces(tmp_path, capsys):
    """Only the background changes: the face region of picture i is that of the unlabelled one."""
    run_cli(capsys, "synth", tmp_path / "plain", "--count", 4, "--size", 64, "--seed", 1, "--workers", 1)
    run_cli(capsys, "synth", tmp_path / "classed", "--count", 4, "--size", 64, "--seed", 1, "--workers", 1,
            "--classes", 2)
    for i in range(4):
        plain = np.asarray(Image.open(tmp_path / "plain" / f"face_{i:06d}.png")).astype(int)
        classed = np.asarray(Image.open(tmp_path / "classed" / f"class_{i % 2:02d}" / f"face_{i:06d}.png")).astype(int)
        centre = (slice(24, 40), slice(24, 40))  # the middle of the face: skin, eyes, nose
        assert np.abs(plain[centre] - classed[centre]).max() <= 2
        assert np.abs(plain[:4, :4] - classed[:4, :4]).mean() > 5  # the background did change


def test_synth_classes_build_a_k_class_database(tmp_path, capsys):
    run_cli(capsys, "synth", tmp_path / "faces", "--count", 9, "--size", 32, "--seed", 0, "--workers", 1,
            "--classes", 3)
    assert build(capsys, tmp_path / "faces", tmp_path / "db.lmdb", "--labels", "folders")[0] == 0
    dataset = MultiResolutionDataset(tmp_path / "db.lmdb", 16)
    assert dataset.class_names == ("class_00", "class_01", "class_02")
    assert dataset.class_counts.tolist() == [3, 3, 3]


@pytest.mark.parametrize("value", ["1", "11", "x"])
def test_synth_bad_classes_is_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "synth", tmp_path / "f", "--classes", value)
    assert exit_info.value.code == 2
    assert "--classes" in capsys.readouterr().err
