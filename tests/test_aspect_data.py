"""`data_prep build --aspect`: portrait and landscape databases, their tools, and bad ratios."""

from __future__ import annotations

import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from conftest_data import exif_rotated_jpeg, noise, run_cli, save
from progan.data.format import META_KEY, canonical_json
from progan.data.reader import MultiResolutionDataset, read_metadata
from progan.data.integrity import verify

ALLOWED = "one of 1:1, 3:4, 4:3, 1:2, 2:1, 1:4, 4:1 (width:height)"


def records_verified(db) -> int:
    """Records `verify` read, after checking that it found nothing wrong."""
    report = verify(db)
    assert not report.bad and report.stray is None, (report.bad, report.stray)
    return report.records


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random colour blobs (photo-like, so Lanczos rings little) of width x height."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BILINEAR)


def stripes(width: int, height: int, side: int, axis: int) -> Image.Image:
    """Red | green | blue bands along `axis` (1 = left to right), the outer ones `side` px."""
    pixels = np.zeros((height, width, 3), np.uint8)
    index = [slice(None), slice(None)]
    for start, stop, channel in ((0, side, 0), (side, (width, height)[1 - axis] - side, 1),
                                 ((width, height)[1 - axis] - side, None, 2)):
        index[axis] = slice(start, stop)
        pixels[tuple(index) + (channel,)] = 255
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def portrait_source(tmp_path_factory) -> Path:
    """Portrait and landscape photos of various sizes and formats, too-small and broken files."""
    root = tmp_path_factory.mktemp("aspect_photos")
    save(photo(48, 64, 1), root / "portrait_exact.png")  # already 3:4
    save(photo(90, 100, 2), root / "portrait_wide.jpg", quality=95)
    save(photo(120, 60, 3), root / "landscape.png")
    save(photo(40, 40, 4), root / "square.webp", lossless=True)
    save(photo(20, 100, 5), root / "narrow_too_small.png")  # 20 wide < 24: too small for 3:4 at 32
    save(photo(23, 32, 6), root / "sub" / "one_px_short.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def level_array(db: Path, res: int) -> np.ndarray:
    dataset = MultiResolutionDataset(db, res, memory_budget_bytes=0)
    return dataset.get_batch(np.arange(len(dataset))).numpy()  # [N, 3, H, W]


def test_portrait_build_stores_every_level_at_its_shape_as_the_exact_box_chain(portrait_source, tmp_path, capsys):
    db = tmp_path / "portrait.lmdb"
    code, out, err = run_cli(capsys, "build", portrait_source, db, "--max-res", "32", "--aspect", "3:4",
                             "--workers", "1")
    assert code == 0, err
    assert "aspect 3:4, top level 24x32" in out
    metadata = read_metadata(db)
    assert metadata["aspect"] == "3:4" and metadata["build"]["options"]["aspect"] == "3:4"
    assert metadata["level_sizes"] == [[3, 4], [6, 8], [12, 16], [24, 32]]
    assert metadata["sources"] == ["landscape.png", "portrait_exact.png", "portrait_wide.jpg", "square.webp"]
    reasons = {skip["path"]: skip["reason"] for skip in metadata["skipped"]}
    assert reasons["narrow_too_small.png"] == "too small: 20x100, below 24x32 (--upscale keeps it)"
    assert reasons["sub/one_px_short.png"].startswith("too small: 23x32")
    assert reasons["broken.jpg"].startswith("truncated or corrupt")
    levels = {res: level_array(db, res) for res in (4, 8, 16, 32)}
    for res, (width, height) in zip((4, 8, 16, 32), metadata["level_sizes"]):
        assert levels[res].shape == (4, 3, height, width)
    for res in (4, 8, 16):  # each level is the 2x2 box average of the one above, rounded half up
        above = levels[2 * res].astype(int)
        boxes = above[..., 0::2, 0::2] + above[..., 1::2, 0::2] + above[..., 0::2, 1::2] + above[..., 1::2, 1::2]
        assert np.array_equal((boxes + 2) >> 2, levels[res])
    # An image already at 24x32 is stored as it is.
    exact = np.asarray(photo(48, 64, 1).resize((24, 32), Image.Resampling.LANCZOS, reducing_gap=3.0))
    assert np.abs(levels[32][1].transpose(1, 2, 0).astype(int) - exact).max() <= 1
    assert records_verified(db) == 4 * 4

    code, out, _ = run_cli(capsys, "verify", db)
    assert code == 0 and "ok, 16 records" in out
    code, out, _ = run_cli(capsys, "info", db, "--brief")
    assert code == 0 and json.loads(out)["aspect"] == "3:4"
    code, out, _ = run_cli(capsys, "preview", db, "--res", "32", "--out", tmp_path / "grid.png", "--count", "4")
    assert code == 0 and "4 images at 24x32" in out
    with Image.open(tmp_path / "grid.png") as grid:  # 2 x 2 cells of 24x32 with 2 px padding
        assert grid.size == (2 * 26 + 2, 2 * 34 + 2)


@pytest.mark.parametrize("aspect,size,side,axis,top", [
    ("3:4", (64, 32), 20, 1, (24, 32)),  # landscape photo -> portrait: keep the middle 24 columns
    ("4:3", (32, 64), 20, 0, (32, 24)),  # portrait photo -> landscape: keep the middle 24 rows
    ("2:1", (32, 48), 16, 0, (32, 16)),
])
def test_centre_crop_keeps_the_middle_at_the_aspect(aspect, size, side, axis, top, tmp_path, capsys):
    save(stripes(*size, side, axis), tmp_path / "src" / "stripes.png")
    db = tmp_path / "out.lmdb"
    code, _, err = run_cli(capsys, "build", tmp_path / "src", db, "--max-res", "32", "--aspect", aspect,
                           "--workers", "1")
    assert code == 0, err
    image = level_array(db, 32)[0]
    assert image.shape == (3, top[1], top[0])
    assert (image[1] == 255).all() and (image[0] == 0).all() and (image[2] == 0).all()  # green only


def test_exif_rotated_portrait_is_upright_before_the_crop(tmp_path, capsys):
    exif_rotated_jpeg(tmp_path / "src" / "rotated.jpg", 6)  # stored 128x64, shown 64x128 (1:2)
    db = tmp_path / "tall.lmdb"
    code, _, err = run_cli(capsys, "build", tmp_path / "src", db, "--max-res", "32", "--aspect", "1:2",
                           "--workers", "1")
    assert code == 0, err
    image = level_array(db, 32)[0].transpose(1, 2, 0).astype(int)  # [32, 16, 3]
    assert image.shape == (32, 16, 3)
    assert (image[:12, :, 0] > 200).all() and (image[20:, :, 2] > 200).all()  # red on top, blue below


def test_crop_none_keeps_only_images_already_at_the_aspect(tmp_path, capsys):
    save(photo(32, 24, 1), tmp_path / "src" / "a.png")
    save(photo(64, 48, 2), tmp_path / "src" / "b.png")
    save(photo(32, 32, 3), tmp_path / "src" / "c.png")
    save(photo(24, 32, 4), tmp_path / "src" / "d.png")
    db = tmp_path / "out.lmdb"
    code, _, err = run_cli(capsys, "build", tmp_path / "src", db, "--max-res", "32", "--aspect", "4:3",
                           "--crop", "none", "--workers", "1")
    assert code == 0, err
    metadata = read_metadata(db)
    assert metadata["sources"] == ["a.png", "b.png"]
    reasons = {skip["path"]: skip["reason"] for skip in metadata["skipped"]}
    assert reasons == {"c.png": "not 4:3: 32x32 (--crop none keeps only images at --aspect 4:3)",
                       "d.png": "not 4:3: 24x32 (--crop none keeps only images at --aspect 4:3)"}


@pytest.mark.parametrize("aspect,why", [("5:4", "is not a supported ratio"), ("0:1", "has a side below 1"),
                                        ("abc", "is not a ratio W:H")])
def test_bad_aspect_is_one_line_naming_the_flag_and_writes_nothing(aspect, why, portrait_source, tmp_path, capsys):
    out = tmp_path / "never.lmdb"
    code, stdout, err = run_cli(capsys, "build", portrait_source, out, "--max-res", "16", "--aspect", aspect)
    assert code != 0 and stdout == ""
    assert err.count("\n") == 1 and "--aspect" in err and why in err and ALLOWED in err
    assert not out.exists()


def test_a_rebuild_with_another_aspect_is_refused_and_the_database_kept(portrait_source, tmp_path, capsys):
    db = tmp_path / "db.lmdb"
    assert run_cli(capsys, "build", portrait_source, db, "--max-res", "8", "--aspect", "3:4", "--workers", "1")[0] == 0
    before = (db / "data.mdb").read_bytes()
    code, _, err = run_cli(capsys, "build", portrait_source, db, "--max-res", "8", "--aspect", "4:3", "--workers", "1")
    assert code != 0 and "aspect: 3:4 recorded, 4:3 now" in err and err.count("\n") == 1
    assert (db / "data.mdb").read_bytes() == before


def test_square_database_without_aspect_metadata_opens_as_before(tmp_path, capsys):
    for i in range(3):
        save(noise(16, i), tmp_path / "src" / f"{i}.png")
    db = tmp_path / "square.lmdb"
    assert run_cli(capsys, "build", tmp_path / "src", db, "--max-res", "16", "--workers", "1")[0] == 0
    assert "aspect" not in read_metadata(db)["build"]["options"]  # square plans are as before --aspect
    # Make it a database written before non-square ones existed: no aspect, no level sizes.
    metadata = read_metadata(db)
    del metadata["aspect"], metadata["level_sizes"]
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(META_KEY, canonical_json(metadata))
    env.close()
    dataset = MultiResolutionDataset(db, 16)
    assert dataset.aspect == "1:1" and dataset.get_batch([0, 1, 2]).shape == (3, 3, 16, 16)
    assert records_verified(db) == 3 * 3
    code, out, _ = run_cli(capsys, "build", tmp_path / "src", db, "--max-res", "16", "--workers", "1")
    assert code == 0 and "already complete" in out


def test_upscale_and_the_narrowest_ratio_down_to_one_pixel_wide(tmp_path, capsys):
    save(photo(12, 16, 1), tmp_path / "small" / "a.png")
    db = tmp_path / "up.lmdb"
    code, _, err = run_cli(capsys, "build", tmp_path / "small", db, "--max-res", "32", "--aspect", "3:4",
                           "--upscale", "--workers", "1")
    assert code == 0, err
    assert level_array(db, 32).shape == (1, 3, 32, 24)
    save(photo(20, 90, 2), tmp_path / "tall" / "b.png")
    db = tmp_path / "tall.lmdb"
    code, _, err = run_cli(capsys, "build", tmp_path / "tall", db, "--max-res", "64", "--aspect", "1:4",
                           "--workers", "1", "--encoding", "png")
    assert code == 0, err
    assert read_metadata(db)["level_sizes"] == [[1, 4], [2, 8], [4, 16], [8, 32], [16, 64]]
    assert level_array(db, 4).shape == (1, 3, 4, 1) and level_array(db, 64).shape == (1, 3, 64, 16)
    assert records_verified(db) == 5


def test_verify_names_a_bad_record_of_a_portrait_database_by_its_level_shape(portrait_source, tmp_path, capsys):
    db = tmp_path / "p.lmdb"
    assert run_cli(capsys, "build", portrait_source, db, "--max-res", "32", "--aspect", "3:4", "--workers", "1")[0] == 0
    env = lmdb.open(str(db), subdir=True, lock=False)
    with env.begin(write=True) as txn:  # one pixel byte of image 1 at level 8 (6 wide, 8 high)
        record = bytearray(txn.get(b"8-00000001"))
        record[7] ^= 0xFF
        txn.put(b"8-00000001", bytes(record))
    env.close()
    code, out, err = run_cli(capsys, "verify", db)
    assert code == 2
    assert "bad: level 6x8 image 1 (record 8-00000001): fails its crc32 checksum" in out + err
    assert "1 bad record(s)" in err and "(1 at 6x8)" in err
