"""Safe decoding (limits, formats, modes, EXIF) and letterbox/crop geometry."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookserve.errors import InvalidInputError
from lookserve.images import (
    DecodeLimits,
    crop_box,
    crop_mask,
    decode_image,
    letterbox,
    paste_mask,
)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(rng, h=40, w=60) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_decode_returns_same_pixels_when_format_is_lossless(rng, fmt: str) -> None:
    arr = _rgb(rng)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(_encode(Image.fromarray(arr), fmt, **kw))
    np.testing.assert_array_equal(out, arr)


def test_decode_returns_rgb_uint8_when_format_is_jpeg(rng) -> None:
    arr = np.full((32, 48, 3), (200, 30, 90), np.uint8)
    out = decode_image(_encode(Image.fromarray(arr), "JPEG", quality=95))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - arr).max() <= 6


def test_decode_reads_path_when_given_a_file(tmp_path: Path, rng) -> None:
    arr = _rgb(rng)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(decode_image(path), arr)
    np.testing.assert_array_equal(decode_image(str(path)), arr)


def test_decode_greys_to_rgb_when_mode_is_l(rng) -> None:
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(grey, "L"), "PNG"))
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_decode_keeps_top_byte_when_mode_is_16_bit(rng) -> None:
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    img = Image.fromarray(grey16)  # I;16
    assert img.mode.startswith("I;16")
    out = decode_image(_encode(img, "PNG"))
    np.testing.assert_array_equal(out[..., 0], (grey16 >> 8).astype(np.uint8))


def test_decode_composites_on_white_when_mode_is_rgba() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half fully transparent
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[9, 9], [255, 255, 255])


def test_decode_expands_palette_when_mode_is_p(rng) -> None:
    arr = _rgb(rng, 16, 16)
    pal = Image.fromarray(arr).quantize(colors=8)
    assert pal.mode == "P"
    out = decode_image(_encode(pal, "PNG"))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_decode_converts_to_rgb_when_mode_is_cmyk() -> None:
    cmyk = Image.new("CMYK", (12, 8), (0, 255, 255, 0))  # red
    out = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert out.shape == (8, 12, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


@pytest.mark.parametrize("orientation, expected_shape", [(1, (20, 40)), (3, (20, 40)), (6, (40, 20)), (8, (40, 20))])
def test_decode_applies_exif_orientation_when_tag_is_set(orientation: int, expected_shape) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:10, :20] = 255  # white top-left quadrant marks the orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(_encode(Image.fromarray(arr), "PNG", exif=exif))
    assert out.shape[:2] == expected_shape
    rotated = {1: arr, 3: np.rot90(arr, 2), 6: np.rot90(arr, -1), 8: np.rot90(arr, 1)}[orientation]
    np.testing.assert_array_equal(out, rotated)


def test_decode_refuses_when_pixels_exceed_limit() -> None:
    data = _encode(Image.new("L", (4000, 4000)), "PNG")  # tiny file, 16 MP
    with pytest.raises(InvalidInputError, match="decompression bomb"):
        decode_image(data, DecodeLimits(max_pixels=1_000_000))


def test_decode_refuses_when_pillow_bomb_limit_is_hit(monkeypatch) -> None:
    data = _encode(Image.new("L", (300, 300)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's own check fires first
    with pytest.raises(InvalidInputError, match="decompression bomb"):
        decode_image(data)


def test_decode_refuses_before_reading_when_file_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 2048)
    with pytest.raises(InvalidInputError, match="over the limit of 1024"):
        decode_image(path, DecodeLimits(max_bytes=1024))


def test_decode_refuses_when_file_is_truncated(rng) -> None:
    data = _encode(Image.fromarray(_rgb(rng, 64, 64)), "PNG")
    with pytest.raises(InvalidInputError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_decode_refuses_when_jpeg_is_truncated(rng) -> None:
    data = _encode(Image.fromarray(_rgb(rng, 64, 64)), "JPEG")
    with pytest.raises(InvalidInputError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_decode_refuses_when_format_is_not_allowed(rng) -> None:
    data = _encode(Image.fromarray(_rgb(rng)), "TIFF")
    with pytest.raises(InvalidInputError, match="allowed format"):
        decode_image(data)


def test_decode_refuses_when_bytes_are_not_an_image() -> None:
    with pytest.raises(InvalidInputError):
        decode_image(b"hello, not an image")
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(b"")


def test_decode_refuses_when_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read"):
        decode_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("h, w", [(100, 300), (300, 100), (64, 64), (1000, 700)])
def test_letterbox_maps_boxes_back_when_image_is_any_shape(rng, h: int, w: int) -> None:
    img = _rgb(rng, h, w)
    square, lb = letterbox(img, 128)
    assert square.shape == (128, 128, 3)
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.1, w * 0.5, h * 0.9]], np.float32)
    np.testing.assert_allclose(lb.to_original(lb.to_square(boxes)), boxes, atol=1e-3)
    # the content sits inside the padding: the full-image box maps onto the resized region
    x1, y1, x2, y2 = lb.to_square(boxes[:1])[0]
    assert x1 == lb.pad_x and y1 == lb.pad_y
    assert abs((x2 - x1) - round(w * lb.scale)) <= 1 and abs((y2 - y1) - round(h * lb.scale)) <= 1
    assert square[: lb.pad_y].sum() == 0 and square[:, : lb.pad_x].sum() == 0


def test_letterbox_clips_boxes_when_they_cross_the_padding() -> None:
    _, lb = letterbox(np.zeros((50, 100, 3), np.uint8), 100)
    out = lb.to_original(np.array([[-10, -10, 200, 200]], np.float32))
    np.testing.assert_array_equal(out, [[0, 0, 100, 50]])


def test_crop_box_cuts_the_box_when_given_original_pixels() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 50:150] = (10, 200, 30)
    crop = crop_box(img, np.array([50, 20, 150, 60]), size=32)
    assert crop.shape == (32, 32, 3)
    assert (crop == (10, 200, 30)).all()


def test_crop_box_refuses_when_box_is_empty() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        crop_box(np.zeros((10, 10, 3), np.uint8), np.array([5, 5, 5, 9]))


def test_crop_mask_whitens_outside_when_mask_covers_half() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((28, 28), np.float32)
    mask[:, :14] = 1.0  # left half of the box
    out = crop_mask(img, np.array([0, 0, 40, 40]), mask, size=40)
    assert (out[:, :18] == 0).all() and (out[:, 22:] == 255).all()
    pasted = paste_mask(mask, np.array([0, 0, 40, 40]), 40, 40)
    assert pasted[:, :20].all() and not pasted[:, 20:].any()
