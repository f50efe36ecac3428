"""progan.data.reader: MultiResolutionDataset, batches, DataLoader workers, metadata."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest_data import save
from data_prep.build import BuildConfig, build
from data_prep.synth import draw_face, face_rng
from progan.data.format import DatasetError
from progan.data.writer import DatasetWriter
from progan.data.reader import MultiResolutionDataset, dataset_fingerprint, read_metadata

COUNT = 12


def write_faces(folder: Path, count: int = COUNT, seed: int = 0) -> list[np.ndarray]:
    faces = [np.asarray(draw_face(face_rng(seed, i), 32)) for i in range(count)]
    for i, face in enumerate(faces):
        save(Image.fromarray(face), folder / f"face_{i:02d}.png")
    return faces


def build_db(source: Path, out: Path) -> Path:
    build(BuildConfig(source=source, out=out, max_res=32, min_res=8, workers=2), log=io.StringIO())
    return out


@pytest.fixture(scope="module")
def faces_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    faces = write_faces(root / "src")
    return build_db(root / "src", root / "faces.lmdb"), np.stack(faces).transpose(0, 3, 1, 2)


def test_items_are_uint8_chw_and_equal_the_source_pixels(faces_db):
    db, faces = faces_db
    dataset = MultiResolutionDataset(db, 32, memory_budget_bytes=0)
    assert len(dataset) == COUNT and not dataset.in_memory
    item = dataset[3]
    assert item.dtype == torch.uint8 and item.shape == (3, 32, 32)
    np.testing.assert_array_equal(item.numpy(), faces[3])
    np.testing.assert_array_equal(dataset[-1].numpy(), faces[-1])
    with pytest.raises(IndexError):
        dataset[COUNT]


def test_in_memory_batches_equal_per_item_batches(faces_db):
    db, faces = faces_db
    for res in (8, 16, 32):
        memory = MultiResolutionDataset(db, res)
        per_item = MultiResolutionDataset(db, res, memory_budget_bytes=0)
        assert memory.in_memory and not per_item.in_memory
        indices = np.array([5, 0, 11, 5, 2])
        batch = memory.get_batch(indices)
        assert batch.dtype == torch.uint8 and batch.shape == (5, 3, res, res)
        torch.testing.assert_close(batch, per_item.get_batch(list(indices)), rtol=0, atol=0)
        torch.testing.assert_close(memory[11], per_item[11], rtol=0, atol=0)
    np.testing.assert_array_equal(MultiResolutionDataset(db, 32).get_batch([7]).numpy()[0], faces[7])


def test_memory_budget_decides_in_memory(faces_db):
    db, _ = faces_db
    level_bytes = COUNT * 3 * 32 * 32
    assert MultiResolutionDataset(db, 32, memory_budget_bytes=level_bytes).in_memory
    assert not MultiResolutionDataset(db, 32, memory_budget_bytes=level_bytes - 1).in_memory


def test_in_memory_items_are_copies(faces_db):
    db, faces = faces_db
    dataset = MultiResolutionDataset(db, 16)
    dataset[0].zero_()
    dataset.get_batch([0]).zero_()
    assert dataset[0].sum() > 0
    mirrored = MultiResolutionDataset(db, 16, mirror=True)
    for _ in range(16):  # flipped and unflipped items alike
        mirrored[0].zero_()
    assert mirrored[0].sum() > 0 and mirrored.get_batch([0]).sum() > 0


@pytest.mark.parametrize("memory_budget", [0, 1 << 30])
def test_mirror_flips_about_half_the_images(faces_db, memory_budget):
    db, faces = faces_db
    dataset = MultiResolutionDataset(db, 32, mirror=True, memory_budget_bytes=memory_budget)
    torch.manual_seed(0)
    batch = dataset.get_batch(np.zeros(64, dtype=np.int64)).numpy()
    flipped = np.array([np.array_equal(image, faces[0][:, :, ::-1]) for image in batch])
    unflipped = np.array([np.array_equal(image, faces[0]) for image in batch])
    assert (flipped | unflipped).all() and 16 < flipped.sum() < 48
    items = [dataset[0].numpy() for _ in range(32)]
    assert any(np.array_equal(i, faces[0][:, :, ::-1]) for i in items)
    assert any(np.array_equal(i, faces[0]) for i in items)


def test_pickles_after_use(faces_db):
    db, faces = faces_db
    dataset = MultiResolutionDataset(db, 16, memory_budget_bytes=0)
    before = dataset[4]
    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[4], before, rtol=0, atol=0)
    memory = MultiResolutionDataset(db, 16)
    memory.preload()
    assert len(pickle.dumps(memory)) < 2000  # the loaded level does not travel


@pytest.mark.parametrize(
    "context, memory_budget",
    [("fork", 0), ("fork", 1 << 30), pytest.param("spawn", 1 << 30, marks=pytest.mark.slow)],
)
def test_dataloader_workers(faces_db, context, memory_budget):
    db, faces = faces_db
    dataset = MultiResolutionDataset(db, 32, memory_budget_bytes=memory_budget)
    dataset[0]  # opened (and maybe loaded) in the parent first: workers must not reuse the handle
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context=context)
    batches = list(loader)
    assert [len(b) for b in batches] == [5, 5, 2]
    np.testing.assert_array_equal(torch.cat(batches).numpy(), faces)


def test_wrong_resolution_names_the_available_ones(faces_db):
    db, _ = faces_db
    with pytest.raises(DatasetError, match=r"no 64x64 images; available resolutions: 8, 16, 32") as info:
        MultiResolutionDataset(db, 64)
    assert str(db) in str(info.value) and "\n" not in str(info.value)


def test_paths_that_are_not_datasets(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.lmdb").write_bytes(b"not lmdb" * 1000)
    env = lmdb.open(str(tmp_path / "other.lmdb"))
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    cases = {
        tmp_path / "missing.lmdb": "no such file or folder",
        tmp_path / "folder": "not an LMDB database",
        tmp_path / "file.lmdb": "not an LMDB database",
        tmp_path / "other.lmdb": "not a progan dataset",
    }
    for path, message in cases.items():
        with pytest.raises(DatasetError, match=message) as info:
            MultiResolutionDataset(path, 32)
        assert str(path) in str(info.value)


def test_unfinished_build_is_not_readable(tmp_path):
    with DatasetWriter(tmp_path / "x.lmdb") as writer:
        writer.start({"resolutions": [8], "encoding": "raw", "options": {}})
    with pytest.raises(DatasetError, match="unfinished build; rerun the same"):
        read_metadata(tmp_path / "x.lmdb")


def test_missing_record_names_the_key(faces_db, tmp_path):
    db, _ = faces_db
    copy = tmp_path / "copy.lmdb"
    copy.mkdir()
    (copy / "data.mdb").write_bytes((db / "data.mdb").read_bytes())
    env = lmdb.open(str(copy))
    with env.begin(write=True) as txn:
        txn.delete(b"16-00000002")
    env.close()
    with pytest.raises(DatasetError, match="record 16-00000002 is missing"):
        MultiResolutionDataset(copy, 16, memory_budget_bytes=0)[2]


def test_metadata_and_fingerprint(faces_db, tmp_path):
    db, _ = faces_db
    metadata = read_metadata(db)
    assert metadata["count"] == COUNT and metadata["resolutions"] == [8, 16, 32]
    assert metadata["encoding"] == "raw" and metadata["lossless"] and metadata["format_version"] == 1
    fingerprint = dataset_fingerprint(db)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0  # 16 hex digits

    # Changing one picture changes the fingerprint, through the digest of the source bytes.
    write_faces(tmp_path / "src")
    first = dataset_fingerprint(build_db(tmp_path / "src", tmp_path / "a.lmdb"))
    assert first == dataset_fingerprint(build_db(tmp_path / "src", tmp_path / "a2.lmdb"))
    save(Image.fromarray(np.asarray(draw_face(face_rng(9, 9), 32))), tmp_path / "src" / "face_05.png")
    second = dataset_fingerprint(build_db(tmp_path / "src", tmp_path / "b.lmdb"))
    assert first != second
    digests = [read_metadata(tmp_path / name)["source_sha256"] for name in ("a.lmdb", "b.lmdb")]
    assert digests[0] != digests[1]


def test_a_dataset_collected_while_the_environment_lock_is_held_does_not_deadlock(demo_lmdb):
    """The garbage collector may finalize a dataset at any allocation, also inside the shared
    environments' lock (a full-suite run once hung there for good): its release is queued and
    carried out by the next acquire."""
    import progan.data.environments as envs
    from progan.data.reader import MultiResolutionDataset, read_metadata

    ds = MultiResolutionDataset(demo_lmdb, 4)
    ds[0]  # opens (shares) the environment
    key = envs._shared_key(demo_lmdb)
    users = envs._SHARED_ENVS[key][1]
    with envs._SHARED_LOCK:  # what a collection inside acquire does
        ds.__del__()
    assert list(envs._DEFERRED_RELEASES) == [ds.path]
    read_metadata(demo_lmdb)  # the next acquire releases it
    assert not envs._DEFERRED_RELEASES
    assert envs._SHARED_ENVS.get(key, [None, 0])[1] == users - 1
    # With the lock free, a collected dataset lets go at once (a plain lmdb.open may follow).
    again = MultiResolutionDataset(demo_lmdb, 4)
    again[0]
    again.__del__()
    assert not envs._DEFERRED_RELEASES and envs._SHARED_ENVS.get(key, [None, 0])[1] == users - 1
