"""One pixel path: training, evaluation and serving decode, letterbox, crop and paste masks with
the same functions (``lookserve.images``), so a model is scored on the pixels it is served.

The photos here are ones where OpenCV's and Pillow's decoders disagree (a PNG with
transparency, a CMYK JPEG) or where orientation matters (an EXIF-rotated JPEG): a training
reader that decodes any other way than :func:`lookserve.images.decode_image` fails these tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lookserve.client.look import FilterConfig, filter_detections
from lookserve.errors import DataError
from lookserve.images import crop_box, decode_image, letterbox, paste_mask, resize_square
from lookserve.taxonomy import CATEGORIES
from lookserve.training import embedder as E
from lookserve.training.common import pool_uint8, read_rgb
from lookserve.training.detector import coco_results
from lookserve.training.detector_data import StreetSample, letterbox_sample, read_letterboxed


def _rgba_png(path: Path, rng: np.random.Generator, h: int = 120, w: int = 180) -> Path:
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    arr[: h // 3, :, 3] = 0  # a transparent band: Pillow composites it on white, OpenCV drops alpha
    Image.fromarray(arr, "RGBA").save(path)
    return path


def _cmyk_jpeg(path: Path, rng: np.random.Generator, h: int = 90, w: int = 140) -> Path:
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("CMYK").save(path, quality=92)
    return path


def _exif_rotated_jpeg(path: Path, rng: np.random.Generator, h: int = 80, w: int = 130) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, exif=exif.tobytes(), quality=92)
    return path


PHOTOS = {"rgba.png": _rgba_png, "cmyk.jpg": _cmyk_jpeg, "exif6.jpg": _exif_rotated_jpeg}


@pytest.fixture
def photos(tmp_path: Path, rng) -> dict[str, Path]:
    return {name: make(tmp_path / name, rng) for name, make in PHOTOS.items()}


def _opencv_decode(path: Path) -> np.ndarray:
    """How training used to read photos (``cv2.imread``), to show the fixtures discriminate."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_training_reader_returns_served_pixels_when_decoders_would_disagree(photos, name):
    served = decode_image(photos[name])
    np.testing.assert_array_equal(read_rgb(photos[name]), served)
    if name != "exif6.jpg":  # OpenCV applies EXIF orientation too; the other two it decodes differently
        assert not np.array_equal(_opencv_decode(photos[name]), served)
    else:
        assert served.shape == (130, 80, 3)  # rotated upright


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_detector_training_input_equals_served_letterbox_when_same_file(photos, name):
    served, lb = letterbox(decode_image(photos[name]), 128)
    sample = StreetSample(1, photos[name], lb.width, lb.height, np.zeros((0, 4), np.float32),
                          np.zeros(0, np.int32), np.zeros((0, 28, 28), np.uint8))
    square, scale, pad_x, pad_y = read_letterboxed(sample, 128)
    np.testing.assert_array_equal(square, served)
    assert (scale, pad_x, pad_y) == (lb.scale, lb.pad_x, lb.pad_y)


def _write_layout(root: Path, street: Path, shop: Path, bbox: dict) -> None:
    """One hats product in the street2shop layout: one street photo (with ``bbox``), one shop photo."""
    (root / "photos").mkdir(parents=True)
    (root / "meta" / "json").mkdir(parents=True)
    (root / "photos" / "photos.txt").write_text(f"1,{street.relative_to(root)}\n2,{shop.relative_to(root)}\n")
    meta = root / "meta" / "json"
    (meta / "train_pairs_hats.json").write_text(json.dumps([{"photo": 1, "product": 9, "bbox": bbox}]))
    (meta / "retrieval_hats.json").write_text(json.dumps([{"product": 9, "photo": 2}]))
    (root / "products.json").write_text(json.dumps([{"id": 9, "category": "hats", "split": "train"}]))


def test_embedder_training_crops_equal_served_crops_when_box_is_fractional(tmp_path, rng):
    street = _rgba_png(tmp_path / "street.png", rng)
    shop = _cmyk_jpeg(tmp_path / "shop.jpg", rng)
    bbox = {"left": 20.5, "top": 30.4, "width": 101.3, "height": 77.6}  # x2 = 121.8, y2 = 108.0
    _write_layout(tmp_path, street, shop, bbox)
    box = np.array([20.5, 30.4, 20.5 + 101.3, 30.4 + 77.6])
    served_crop = crop_box(decode_image(street), box, 224)  # what client/look.py sends the embedder
    served_shop = resize_square(decode_image(shop), 224)  # what client/catalog.py embeds
    full = E.load_triplet_data(tmp_path, ("train",), 224)
    np.testing.assert_array_equal(full.street[0], served_crop)
    np.testing.assert_array_equal(full.shop[0], served_shop)
    pooled = E.load_triplet_data(tmp_path, ("train",), 112)  # the graph's 2×2 box pooling, in numpy
    np.testing.assert_array_equal(pooled.street[0], pool_uint8(served_crop[None], 2)[0])


def _detector_outputs(rng) -> dict[str, np.ndarray]:
    """One image's detector outputs in a 128 square: fractional box edges, one box running into
    the letterbox padding (clipped when mapped back), masks high at their borders."""
    boxes = np.array([[10.3, 30.7, 70.6, 90.2], [60.45, 14.8, 127.9, 66.35], [2.5, 40.5, 30.5, 60.5]], np.float32)
    masks = rng.random((3, 28, 28)).astype(np.float32)
    masks[:, :, :3] = 0.9
    masks[:, -2:, :] = 0.7
    return {
        "boxes": boxes[None],
        "scores": np.array([[0.9, 0.8, 0.3]], np.float32),
        "classes": np.array([[0, 5, 10]], np.int32),
        "masks": masks[None],
        "num_detections": np.array([[3]], np.int32),
    }


def test_detector_eval_masks_equal_served_masks_when_box_edges_are_fractional(rng):
    from pycocotools import mask as mask_utils


    image = np.zeros((200, 300, 3), np.uint8)  # wide: letterboxed with pad_y > 0
    _, lb = letterbox(image, 128)
    outputs = _detector_outputs(rng)
    results = coco_results(outputs, 0, lb, image_id=7)
    keep_all = FilterConfig(use_min_score=False, catalog_categories_only=False, best_per_category=False)
    kept, dropped = filter_detections(outputs, lb, keep_all, CATEGORIES)
    served = sorted(kept + [d.detection for d in dropped], key=lambda d: d.index)
    assert len(results) == len(served) == 3
    for r, d in zip(results, served, strict=True):
        want = paste_mask(d.mask, np.array(d.box), lb.width, lb.height)  # as client/render.py and crop_mask do
        got = mask_utils.decode(r["segmentation"]).astype(bool)
        assert got.shape == (200, 300) and 0 < want.sum() < want.size
        np.testing.assert_array_equal(got, want)
        x, y, w, h = r["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], d.box, atol=1e-4)
        assert r["category_id"] == d.class_id + 1 and r["image_id"] == 7


def test_detector_training_input_names_the_file_when_annotation_size_differs_from_photo(photos):
    # the EXIF-rotated photo decodes upright (80 wide, 130 high); an annotation of the raw
    # 130x80 frame would misplace every mask
    sample = StreetSample(4, photos["exif6.jpg"], 130, 80, np.zeros((0, 4), np.float32),
                          np.zeros(0, np.int32), np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"exif6\.jpg decodes to 80x130 pixels but image 4's annotation says 130x80"):
        letterbox_sample(sample, 128)
