"""The Mask R-CNN detector: box arithmetic, the served graph's post-processing and contract,
training on tiny hand-drawn data, and the tf2onnx export parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookserve.errors import ConfigError, InvalidInputError
from lookserve.taxonomy import CATEGORIES
from lookserve.training import detector_ops as ops

# --------------------------------------------------------------------------------------------
# tiny hand-drawn data: coloured rectangles ("bags") and ellipses ("dresses") on grey
# --------------------------------------------------------------------------------------------
SHAPES = {"rect": CATEGORIES.index("bags") + 1, "ellipse": CATEGORIES.index("dresses") + 1}


def write_tiny_coco(root: Path, n_train: int = 8, n_test: int = 4, side: int = 96, seed: int = 0) -> Path:
    """A street2shop-shaped data set: images/<id>.jpg + annotations/instances_{train,test}.json."""
    import cv2
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)]
    next_id, ann_id = 1, 1
    for split, n in (("train", n_train), ("test", n_test)):
        images, anns = [], []
        for _ in range(n):
            img = np.full((side, side, 3), 128, np.uint8)
            for _k in range(int(rng.integers(1, 3))):
                kind = "rect" if rng.random() < 0.5 else "ellipse"
                w, h = (int(v) for v in rng.integers(side // 4, side // 2, size=2))
                x0, y0 = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
                m = np.zeros((side, side), np.uint8)
                if kind == "rect":
                    m[y0 : y0 + h, x0 : x0 + w] = 1
                else:
                    cv2.ellipse(m, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
                colour = (220, 40, 40) if kind == "rect" else (40, 40, 220)
                img[m > 0] = colour
                rle = mask_utils.encode(np.asfortranarray(m))
                ys, xs = np.nonzero(m)
                bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
                anns.append(
                    {
                        "id": ann_id, "image_id": next_id, "category_id": SHAPES[kind], "iscrowd": 0,
                        "bbox": bbox, "area": float(m.sum()),
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                        "product_id": ann_id,
                    }
                )
                ann_id += 1
            cv2.imwrite(str(root / "images" / f"{next_id}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({"id": next_id, "file_name": f"images/{next_id}.jpg", "width": side, "height": side})
            next_id += 1
        doc = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root
