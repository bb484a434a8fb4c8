"""Image helpers of the data stages: packs, decoding, colour modes, resizing and class labels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dataprep.images import (
    RawImage,
    decode,
    encode_png,
    has_colour,
    label_ids,
    read_pack,
    square_resize,
    to_mode,
    write_pack,
)
from runtime.errors import DataError


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_a_pack_round_trips_bytes_labels_and_classes(tmp_path):
    blobs = [b"first", b"", b"third image bytes"]
    digest = write_pack(tmp_path, blobs, [0, None, 1], ["a", "b", "c"], ["cat", "dog"])
    rows, classes, data = read_pack(tmp_path)
    assert list(data) == blobs and classes == ["cat", "dog"]
    assert [r["label"] for r in rows] == [0, None, 1] and [r["source"] for r in rows] == ["a", "b", "c"]
    assert write_pack(tmp_path / "again", blobs, [0, None, 1], ["a", "b", "c"], ["cat", "dog"]) == digest


def test_a_missing_pack_names_the_missing_input(tmp_path):
    with pytest.raises(DataError, match="does not exist: run the stages before this one"):
        read_pack(tmp_path / "nowhere")


def test_decode_refuses_corrupt_bytes_and_decompression_bombs(monkeypatch):
    with pytest.raises(DataError, match="undecodable image"):
        decode(b"\x89PNG\r\n\x1a\n garbage")
    good = png_bytes(Image.new("L", (40, 40)))
    with pytest.raises(DataError, match="undecodable image"):
        decode(good[: len(good) // 2])  # truncated
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 = 1600 pixels is then a "bomb"
    with pytest.raises(DataError, match="refused image"):
        decode(good)


def test_colour_is_detected_from_pixels_not_from_the_mode():
    assert not has_colour(Image.new("RGB", (4, 4), (90, 90, 90)))  # RGB file, gray content
    assert has_colour(Image.new("RGB", (4, 4), (90, 10, 90)))
    assert not has_colour(Image.new("L", (4, 4)))


def test_transparency_is_flattened_onto_white_and_16_bit_is_scaled():
    clear = to_mode(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "L")
    assert np.asarray(clear).tolist() == [[255, 255], [255, 255]]
    deep = to_mode(Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)), "L")
    assert np.asarray(deep).max() == 255


def test_square_resize_centre_crops_then_resizes():
    pixels = np.zeros((10, 30), dtype=np.uint8)
    pixels[:, 10:20] = 255  # the centre square is all white; the sides are black
    out = square_resize(Image.fromarray(pixels), 8)
    assert out.shape == (1, 8, 8) and out.min() > 200
    rgb = square_resize(Image.new("RGB", (5, 5), (255, 0, 0)), 16)
    assert rgb.shape == (3, 16, 16) and rgb[0].min() == 255 and rgb[1].max() == 0


def test_labels_are_numbered_by_sorted_class_name_numbers_numerically():
    images = [RawImage(b"", name, "s") for name in ["10", "2", "cat", "2"]]
    ids, classes = label_ids(images)
    assert classes == ["2", "10", "cat"] and ids == [1, 0, 2, 0]
    assert label_ids([RawImage(b"", None, "s")] * 2) == ([None, None], [])
    with pytest.raises(DataError, match="label all of them or none"):
        label_ids([RawImage(b"", "a", "s"), RawImage(b"", None, "s")])


def test_png_encoding_is_lossless():
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert (np.asarray(decode(encode_png(pixels))) == pixels).all()


def test_a_photo_stored_sideways_with_an_exif_orientation_is_decoded_upright():
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)  # stored 4 wide, 2 high
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", exif=exif.tobytes(), quality=100)
    upright = decode(buf.getvalue())
    assert upright.size == (2, 4)  # displayed 2 wide, 4 high, as a viewer shows it
    assert np.asarray(upright)[0, 1].mean() > 128  # the stored top-left corner is now top-right


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path, caplog):
    from dataprep.images import read_image_folder

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(encode_png(np.zeros((1, 4, 4), dtype=np.uint8)))
    with caplog.at_level("WARNING"):
        images = read_image_folder(tmp_path, "data/pets")
    assert [i.label for i in images] == ["cat"]
    assert "ingest: class folder data/pets/dog has no image files: that class is left out" in caplog.text
