"""Street photos with instance masks for the detector, read from COCO annotations.

A data set root holds ``annotations/instances_<split>.json`` (category ids 1..11 in
``lookserve.taxonomy.CATEGORIES`` order, masks as RLE or polygons) and the images under
``images/``. Each instance keeps its box (x1, y1, x2, y2 pixels of the original photo) and its
mask cropped to the box and resized to a small square (``mask_size``), which is all the training
targets need: a box-local mask makes the target of any proposal one ``crop_and_resize`` away.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lookserve.errors import DataError, InvalidInputError
from lookserve.images import Letterbox, letterbox
from lookserve.taxonomy import CATEGORIES
from lookserve.training import detector_ops as ops
from lookserve.training.common import read_rgb

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class StreetSample:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # [G, 4] float32 x1, y1, x2, y2 (original pixels)
    classes: np.ndarray  # [G] int32, 1..11 (detector class ids)
    masks: np.ndarray  # [G, m, m] uint8 0/1, the mask inside its box


def annotations_path(root: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    p = Path(root) / "annotations" / f"instances_{split}.json"
    if not p.is_file():
        raise DataError(f"{p} not found: is {root} a generated street2shop data set (lookserve data synth)?")
    return p


def load_coco(root: str | Path, split: str):
    """A pycocotools ``COCO`` of one split (its chatter on stdout silenced)."""
    from pycocotools.coco import COCO

    path = annotations_path(root, split)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a valid COCO instances file: {e}") from e


def category_map(coco) -> dict[int, int]:
    """COCO category id → detector class id (1..11, CATEGORIES order), matched by name."""
    out = {}
    for cat in coco.loadCats(coco.getCatIds()):
        name = cat.get("name")
        if name not in CATEGORIES:
            raise DataError(f"unknown category {name!r} (id {cat['id']}); expected one of {', '.join(CATEGORIES)}")
        out[int(cat["id"])] = CATEGORIES.index(name) + 1
    return out


def image_path(root: Path, img: dict) -> Path:
    """Where an image of the COCO file lies: its ``file_name`` (relative to the root or to
    ``images/``), else ``images/<id>.jpg``."""
    name = img.get("file_name")
    candidates = []
    if name:
        candidates += [root / name, root / "images" / name]
    candidates.append(root / "images" / f"{img['id']}.jpg")
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"image {img['id']} not found (looked at {', '.join(str(c) for c in candidates)})")


def load_samples(root: str | Path, split: str, mask_size: int = 56, limit: int | None = None) -> list[StreetSample]:
    """Every image of ``split`` with its instances (crowd annotations and empty boxes skipped)."""

    root = Path(root)
    coco = load_coco(root, split)
    cmap = category_map(coco)
    out = []
    img_ids = sorted(coco.getImgIds())
    if limit is not None:
        img_ids = img_ids[:limit]
    for iid in img_ids:
        img = coco.loadImgs(iid)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=iid, iscrowd=None))
        boxes, classes, masks = [], [], []
        for a in anns:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            if w < 1 or h < 1:
                continue
            if a["category_id"] not in cmap:
                raise DataError(f"annotation {a.get('id')} has unknown category id {a['category_id']}")
            full = coco.annToMask(a)
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
            crop = full[max(0, y0) : y1, max(0, x0) : x1]
            if crop.size == 0:
                continue
            local = cv2.resize(crop.astype(np.float32), (mask_size, mask_size), interpolation=cv2.INTER_AREA)
            boxes.append([x, y, x + w, y + h])
            classes.append(cmap[a["category_id"]])
            masks.append((local >= 0.5).astype(np.uint8))
        out.append(
            StreetSample(
                image_id=int(iid),
                path=image_path(root, img),
                width=int(img["width"]),
                height=int(img["height"]),
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                classes=np.asarray(classes, dtype=np.int32),
                masks=np.asarray(masks, dtype=np.uint8).reshape(-1, mask_size, mask_size),
            )
        )
    if not out:
        raise DataError(f"no images in {annotations_path(root, split)}")
    return out


def letterbox_sample(sample: StreetSample, size: int) -> tuple[np.ndarray, Letterbox]:
    """A street photo as the detector is served it: :func:`lookserve.images.decode_image` then
    :func:`lookserve.images.letterbox` (the client's ``prepare``). Raises DataError when the
    decoded photo's size differs from its annotation's (the masks would not line up)."""

    img = read_rgb(sample.path)
    if img.shape[:2] != (sample.height, sample.width):
        raise DataError(f"{sample.path} decodes to {img.shape[1]}x{img.shape[0]} pixels but image "
                        f"{sample.image_id}'s annotation says {sample.width}x{sample.height}")
    return letterbox(img, size)


def read_letterboxed(sample: StreetSample, size: int) -> tuple[np.ndarray, float, int, int]:
    """:func:`letterbox_sample` as ``(square, scale, pad_x, pad_y)`` (the training batches' form)."""
    square, lb = letterbox_sample(sample, size)
    return square, lb.scale, lb.pad_x, lb.pad_y


@dataclass
class Batch:
    images: np.ndarray  # [B, S, S, 3] uint8
    rpn_labels: np.ndarray  # [B, A] int32
    rpn_deltas: np.ndarray  # [B, A, 4]
    gt_boxes: np.ndarray  # [B, G, 4] letterboxed pixels
    gt_classes: np.ndarray  # [B, G] int32 (0 = padding)
    gt_valid: np.ndarray  # [B, G] float32
    gt_masks: np.ndarray  # [B, G, m, m] float32

    def as_tuple(self):
        return (self.images, self.rpn_labels, self.rpn_deltas, self.gt_boxes, self.gt_classes, self.gt_valid, self.gt_masks)


def make_batch(
    samples: list[StreetSample],
    anchors: np.ndarray,
    size: int,
    max_instances: int,
    mask_size: int,
    rng: np.random.Generator,
    hflip: float = 0.0,
    rpn_batch: int = 256,
    images: list[np.ndarray] | None = None,
) -> Batch:
    """Letterbox, maybe flip, and compute the RPN targets of a list of samples."""
    b, a, g = len(samples), len(anchors), max_instances
    out = Batch(
        images=np.zeros((b, size, size, 3), np.uint8),
        rpn_labels=np.zeros((b, a), np.int32),
        rpn_deltas=np.zeros((b, a, 4), np.float32),
        gt_boxes=np.zeros((b, g, 4), np.float32),
        gt_classes=np.zeros((b, g), np.int32),
        gt_valid=np.zeros((b, g), np.float32),
        gt_masks=np.zeros((b, g, mask_size, mask_size), np.float32),
    )
    for i, s in enumerate(samples):
        if images is not None:
            img, scale, px, py = images[i]
        else:
            img, scale, px, py = read_letterboxed(s, size)
        boxes = s.boxes * scale + np.array([px, py, px, py], np.float32)
        masks = s.masks
        if masks.shape[1] != mask_size:
            masks = np.stack([cv2.resize(m, (mask_size, mask_size), interpolation=cv2.INTER_NEAREST) for m in masks]) if len(masks) else masks.reshape(0, mask_size, mask_size)
        if hflip and rng.random() < hflip:
            img = img[:, ::-1]
            boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
            masks = masks[:, :, ::-1]
        n = min(len(boxes), g)
        if len(boxes) > g:
            log.debug("image %s has %d instances; keeping the first %d", s.image_id, len(boxes), g)
        out.images[i] = img
        labels, deltas = ops.rpn_targets(anchors, boxes, rng, batch=rpn_batch)
        out.rpn_labels[i], out.rpn_deltas[i] = labels, deltas
        out.gt_boxes[i, :n] = boxes[:n]
        out.gt_classes[i, :n] = s.classes[:n]
        out.gt_valid[i, :n] = 1.0
        out.gt_masks[i, :n] = masks[:n]
    return out
