"""How hard is a data set? A colour-histogram retrieval baseline (no learning).

Each street pair's box crop and each shop photo become a joint RGB histogram (8×8×8, Hellinger
normalised); every query of a split is ranked against all shop products of its category (the
whole catalog, as at serving time) by cosine similarity. If colour alone solved the task the
data would be trivial; hard negatives (same category + dominant colour) should be where it
fails.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lookserve.data import street2shop
from lookserve.errors import DataError, InvalidInputError
from lookserve.images import box_pixels, decode_image

log = logging.getLogger(__name__)


def _read(path: Path) -> np.ndarray:
    """A photo decoded as the models see it (:func:`lookserve.images.decode_image`)."""
    try:
        return decode_image(path)
    except InvalidInputError as e:
        raise DataError(f"cannot decode {path}: {e}") from e


def _hist(img: np.ndarray) -> np.ndarray:
    small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    h = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256]).ravel()
    h = np.sqrt(h / max(h.sum(), 1))
    return h / max(np.linalg.norm(h), 1e-9)


def colour_baseline(root: str | os.PathLike, split: str = "test", k: int = 6, max_queries: int | None = None) -> dict[str, Any]:
    """top-1 / top-k hit rates of colour-histogram retrieval for the pairs of ``split``; and how
    many top-1 mistakes picked a product of the query's hard-negative group."""
    ds = street2shop.load(Path(root))
    queries = ds.pairs_of(split)
    if max_queries is not None:
        queries = queries[:max_queries]
    if not queries:
        raise DataError(f"no {split} pairs under {root}")
    group = {pid: r.get("hard_negative_group") for pid, r in ds.products.items()}
    gallery: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cat in sorted({q.category for q in queries}):
        prods = [p for p in sorted(ds.shop) if ds.product_category.get(p) == cat]
        feats = [_hist(_read(ds.shop_path(ds.shop[p][0]))) for p in prods]
        gallery[cat] = (np.array(prods), np.stack(feats))
    hits1 = hitsk = wrong = wrong_in_group = 0
    for q in queries:
        img = _read(q.street_path)
        x0, y0, x1, y1 = box_pixels(np.array(q.bbox.xyxy()), img.shape[1], img.shape[0])  # the served crop's bounds
        crop = img[y0:y1, x0:x1]
        prods, feats = gallery[q.category]
        order = prods[np.argsort(-(feats @ _hist(crop)), kind="stable")]
        hits1 += order[0] == q.product
        hitsk += q.product in order[:k]
        if order[0] != q.product:
            wrong += 1
            g = group.get(q.product)
            wrong_in_group += g is not None and group.get(int(order[0])) == g
    n = len(queries)
    return {
        "split": split, "queries": n, "k": k,
        "top1": hits1 / n, f"top{k}": hitsk / n,
        "gallery_products_per_category": {c: len(v[0]) for c, v in gallery.items()},
        "top1_errors_in_hard_negative_group": wrong_in_group / wrong if wrong else 0.0,
    }
