"""The dataset format's pure parts: box pyramid, encodings, keys; progan.generator.images; synth faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.synth import draw_face, face_rng
from progan.data.format import ENCODINGS, build_pyramid, decode_image, encode_image, image_key, resolutions_between
from progan.generator.images import grid_shape, make_grid, save_png, to_uint8


def box_reference(level: np.ndarray) -> np.ndarray:
    """2x2 mean in float64 of a stored uint8 level, rounded half up."""
    x = level.astype(np.float64)
    mean = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) / 4
    return np.floor(mean + 0.5).astype(np.uint8)


def test_box_pyramid_matches_float64_reference():
    rng = np.random.default_rng(0)
    top = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # 2x2 sums 2, 1020, 10: means 0.5 and 2.5 are exact halves (half up: 1, 3; half even: 0, 2)
    top[:2, :2] = [[[0, 255, 1], [0, 255, 1]], [[1, 255, 2], [1, 255, 6]]]
    levels = [np.asarray(level) for level in build_pyramid(Image.fromarray(top), 4)]
    assert [level.shape[0] for level in levels] == [4, 8, 16, 32, 64]
    np.testing.assert_array_equal(levels[-1], top)
    for above, below in zip(levels[:0:-1], levels[-2::-1]):
        np.testing.assert_array_equal(below, box_reference(above))
    assert levels[-2][0, 0].tolist() == [1, 255, 3]


def test_pyramid_stops_at_min_res():
    levels = build_pyramid(Image.new("RGB", (32, 32)), 16)
    assert [level.width for level in levels] == [16, 32]


def test_resolutions_between():
    assert resolutions_between(4, 32) == [4, 8, 16, 32]
    assert resolutions_between(1024, 1024) == [1024]
    for low, high in [(4, 48), (2, 16), (4, 2048), (64, 32)]:
        with pytest.raises(ValueError):
            resolutions_between(low, high)


def test_image_keys_are_fixed_width():
    assert image_key(32, 7) == b"32-00000007"
    assert image_key(1024, 12345678) == b"1024-12345678"


@pytest.mark.parametrize("encoding", [e for e, lossless in ENCODINGS.items() if lossless])
def test_lossless_encodings_round_trip_exactly(encoding):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    decoded = decode_image(encode_image(Image.fromarray(image), encoding), encoding, 32)
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_encoding_is_close():
    smooth = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    decoded = decode_image(encode_image(Image.fromarray(smooth), "jpeg"), "jpeg", 32)
    assert np.abs(decoded.astype(int) - smooth).max() <= 4


def test_decode_rejects_records_of_the_wrong_size_or_kind():
    with pytest.raises(ValueError, match="expected 3072"):
        decode_image(b"\0" * 100, "raw", 32)
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode_image(b"not a png", "png", 32)
    with pytest.raises(ValueError, match="shape"):
        decode_image(encode_image(Image.new("RGB", (16, 16)), "png"), "png", 32)


# ----------------------------------------------------------------------------- progan.generator.images


def test_to_uint8_maps_minus_one_one_to_bytes():
    images = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0, -0.5, 0.5]).reshape(1, 1, 1, 7).repeat(2, 3, 1, 1)
    out = to_uint8(images)
    assert out.shape == (2, 1, 7, 3) and out.dtype == np.uint8
    expected = np.clip(np.rint((np.array([-1, -2, 0, 1, 3, -0.5, 0.5]) + 1) * 127.5), 0, 255)
    np.testing.assert_array_equal(out[0, 0, :, 0], expected)


def test_to_uint8_rejects_other_shapes():
    with pytest.raises(ValueError, match="N, C, H, W"):
        to_uint8(torch.zeros(3, 4, 4))


def test_make_grid_layout_and_padding():
    images = np.stack([np.full((2, 3, 3), i * 10, np.uint8) for i in range(5)])
    grid = make_grid(images, padding=1, pad_value=255)
    assert grid_shape(5) == (2, 3)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    assert grid[1, 1 + 4 * 2, 0] == 20  # image 2: row 0, column 2
    assert grid[1 + 3, 1 + 4, 0] == 40  # image 4: row 1, column 1
    assert grid[0, 0, 0] == 255 and grid[4, 9, 0] == 255  # frame, empty cell
    assert make_grid(images, rows=5).shape == (10, 3, 3)
    assert make_grid(images, cols=5).shape == (2, 15, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        make_grid(images, rows=2, cols=2)


def test_save_png_writes_the_array(tmp_path):
    array = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "grid.png"
    save_png(array, path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary left


def test_save_png_failing_mid_write_leaves_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "grid.png"
    old = np.full((2, 2, 3), 7, np.uint8)
    save_png(old, path)
    with pytest.raises(ValueError):
        save_png(np.zeros((2, 2, 3), np.float32), path)  # refused before any file is opened

    def write_part_then_fail(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", write_part_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.zeros((4, 4, 3), np.uint8), path)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(Image.open(path)), old)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left


# ----------------------------------------------------------------------------- synth faces


def test_synth_faces_are_deterministic_and_varied():
    first = np.asarray(draw_face(face_rng(5, 3), 32))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, np.asarray(draw_face(face_rng(5, 3), 32)))
    assert not np.array_equal(first, np.asarray(draw_face(face_rng(5, 4), 32)))
    assert not np.array_equal(first, np.asarray(draw_face(face_rng(6, 3), 32)))


def test_synth_faces_have_a_face_layout():
    """Across faces: skin stands out from the background, eyes are dark, the mouth is red."""
    faces = np.stack([np.asarray(draw_face(face_rng(0, i), 64)).astype(float) for i in range(24)])
    luma = faces @ [0.299, 0.587, 0.114]
    redness = faces[..., 0] - faces[..., 1:].mean(axis=-1)
    corner = faces[:, 2:8, 2:8].mean(axis=(1, 2))
    cheek = faces[:, 34:38, 18:22].mean(axis=(1, 2))
    assert (np.abs(cheek - corner).sum(axis=1) > 60).mean() >= 0.9
    left_eye, right_eye = luma[:, 28:35, 22:29].min(axis=(1, 2)), luma[:, 28:35, 35:42].min(axis=(1, 2))
    forehead = luma[:, 24:28, 30:34].mean(axis=(1, 2))
    assert (np.maximum(left_eye, right_eye) < forehead - 40).mean() >= 0.9
    mouth = redness[:, 39:47, 29:35].max(axis=(1, 2))
    assert (mouth > redness[:, 34:38, 18:22].mean(axis=(1, 2)) + 8).mean() >= 0.9
