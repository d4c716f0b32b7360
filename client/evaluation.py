"""Accuracy of the two client chains against a data set's ground truth, each figure beside a
trivial baseline computed from the same ground truth.

* :func:`evaluate_pairs` runs shop the look on a street2shop-format data set's held-out street
  photos and scores every (street photo, product) pair (:func:`score_pairs`);
* :func:`evaluate_thumbnails` scores thumbnail results against ``footwear/ground_truth.json``
  (read by :mod:`lookserve.data.footwear`, the one reader of that file).

The chains (:mod:`lookserve.client.look`, :mod:`lookserve.client.thumbnails`) read no data set;
this module is where chain results meet ground truth.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import errors
from lookserve.client.look import LookPipeline, LookResult
from lookserve.client.thumbnails import ThumbnailResult
from lookserve.data import footwear, street2shop
from lookserve.errors import DataError
from lookserve.training.detector_ops import iou_matrix

log = logging.getLogger(__name__)

#: a kept item "detects" a ground-truth garment when it has the garment's category and at
#: least this IoU with its box (the PASCAL VOC / COCO AP50 criterion)
MIN_IOU = 0.5

#: views a "never pick the back or the sole" rule of thumb leaves out
NOT_THUMBNAIL_VIEWS = ("back", "sole")


# ------------------------------------------------------------------------------------------
# Shop the look
# ------------------------------------------------------------------------------------------
def _xyxy(pair: street2shop.Pair) -> np.ndarray:
    b = pair.bbox
    return np.array([b.left, b.top, b.left + b.width, b.top + b.height], np.float32)


def score_pairs(pairs: Sequence[street2shop.Pair], by_photo: Mapping[Path, LookResult | errors.LookserveError], k: int,
                catalog_products: Mapping[str, int] | None = None, min_iou: float = MIN_IOU) -> dict[str, Any]:
    """Score each pair against the result of its street photo (a photo that failed scores 0).

    *detected*: the chain kept an item of the pair's category whose box has IoU ≥ ``min_iou``
    with the pair's ground-truth box; *detected_category_only*: an item of the category was
    kept, wherever it is (the looser definition, reported for comparison only). *hit@1* /
    *hit@k*: a detected item (IoU ≥ ``min_iou``) has the product first / within its top-k.
    With ``catalog_products`` (category → products in the catalog), the chance baselines: a
    random ranking of the category's products has the right one first with probability 1/n,
    within the top k with k/n (mean over the pairs)."""
    if not 0.0 < min_iou <= 1.0:
        raise errors.ConfigError(f"min_iou must be in (0, 1], got {min_iou}")
    per_cat: dict[str, dict[str, float]] = {}
    keys = ("pairs", "detected", "detected_category_only", "hit@1", "hit@k", "chance@1", "chance@k")
    for p in pairs:
        c = per_cat.setdefault(p.category, dict.fromkeys(keys, 0))
        c["pairs"] += 1
        n = (catalog_products or {}).get(p.category, 0)
        if n:
            c["chance@1"] += 1 / n
            c["chance@k"] += min(k, n) / n
        result = by_photo[p.street_path]
        if isinstance(result, errors.LookserveError):
            continue
        items = [i for i in result.items if i.detection.category == p.category]
        if not items:
            continue
        c["detected_category_only"] += 1
        ious = iou_matrix(np.array([i.detection.box for i in items], np.float32), _xyxy(p)[None])[:, 0]
        overlapping = [i for i, iou in zip(items, ious, strict=True) if iou >= min_iou]
        if not overlapping:
            continue
        c["detected"] += 1
        ids = [[m.product_id for m in i.matches] for i in overlapping]
        c["hit@1"] += any(x[:1] == [p.product] for x in ids)
        c["hit@k"] += any(p.product in x[:k] for x in ids)
    total = {key: sum(c[key] for c in per_cat.values()) for key in keys}

    def rates(c: dict[str, float]) -> dict[str, float]:
        n = max(c["pairs"], 1)
        out = {"pairs": int(c["pairs"]), "detected": c["detected"] / n,
               "detected_category_only": c["detected_category_only"] / n,
               "top1_accuracy": c["hit@1"] / n, f"top{k}_accuracy": c["hit@k"] / n}
        if catalog_products is not None:
            out |= {"chance_top1": c["chance@1"] / n, f"chance_top{k}": c["chance@k"] / n}
        return out

    return {"k": k, "min_iou": min_iou, **rates(total),
            "per_category": {cat: rates(c) for cat, c in sorted(per_cat.items())}}


def _products_per_category(catalog) -> dict[str, int] | None:
    """category → products, from the catalog's description (None when the backend does not say)."""
    try:
        return {cat: int(info["products"]) for cat, info in catalog.describe()["categories"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        log.warning("catalog %s does not tell its products per category: no chance baselines", catalog.address)
        return None


def evaluate_pairs(pipeline: LookPipeline, root: str | os.PathLike, split: str = "test", limit: int | None = None,
                   concurrency: int = 4, results: dict[Path, LookResult | errors.LookserveError] | None = None,
                   min_iou: float = MIN_IOU) -> dict[str, Any]:
    """End-to-end accuracy on a street2shop-format data set's ``split`` street photos (held out):
    the chain runs on each photo once, then :func:`score_pairs` scores every pair, with the
    chance baselines of the catalog the chain searched. Given ``results``, it is filled with each
    photo's result (or error), in the order the photos were sent."""
    data = street2shop.load(root)
    pairs = data.pairs_of(split)
    if not pairs:
        raise DataError(f"no {split} pairs under {root}")
    photos = list(dict.fromkeys(p.street_path for p in pairs))
    if limit:
        photos = photos[:limit]
        keep = set(photos)
        pairs = [p for p in pairs if p.street_path in keep]
    by_photo: dict[Path, LookResult | errors.LookserveError] = {} if results is None else results
    failed = 0
    for path, result in zip(photos, pipeline.run_many(photos, concurrency), strict=True):
        by_photo[path] = result
        failed += isinstance(result, errors.LookserveError)
    figures = score_pairs(pairs, by_photo, pipeline.config.k, _products_per_category(pipeline.catalog), min_iou)
    return {"split": split, "street_photos": len(photos), "failed_photos": failed, **figures}


# ------------------------------------------------------------------------------------------
# Thumbnails
# ------------------------------------------------------------------------------------------
def _baselines_of(views: Sequence[footwear.ViewTruth]) -> tuple[float, float]:
    """One product's expected thumbnail accuracy when its thumbnail is a uniformly random view,
    and a random view that is neither back nor sole (all views when none is left)."""
    fronts_sides = [t for t in views if t.view not in NOT_THUMBNAIL_VIEWS] or views
    return sum(t.best for t in views) / len(views), sum(t.best for t in fronts_sides) / len(fronts_sides)


def thumbnail_baselines(root: str | os.PathLike, splits: Sequence[str] | None = ("test",)) -> dict[str, Any]:
    """The baselines of :func:`evaluate_thumbnails` from the ground truth alone (every view of
    every product of ``splits``), e.g. for a data set a model card reports figures on."""
    by_shoe: dict[str, list[footwear.ViewTruth]] = {}
    for t in footwear.read_ground_truth(root).values():
        if not splits or t.split in splits:
            by_shoe.setdefault(t.shoe, []).append(t)
    if not by_shoe:
        raise DataError(f"no product of split(s) {', '.join(splits or ())} in {Path(root) / footwear.GROUND_TRUTH}")
    per_shoe = [_baselines_of(v) for v in by_shoe.values()]
    types = Counter(v[0].type for v in by_shoe.values())
    n = len(by_shoe)
    return {"products": n, "thumbnail_baseline_random": sum(r for r, _ in per_shoe) / n,
            "thumbnail_baseline_no_back_sole": sum(b for _, b in per_shoe) / n,
            "type_baseline_majority": types.most_common(1)[0][1] / n}


def evaluate_thumbnails(results: Sequence[ThumbnailResult], root: str | os.PathLike,
                        splits: Sequence[str] | None = ("test",)) -> dict[str, Any]:
    """Accuracy of thumbnail results against ``ROOT/footwear/ground_truth.json``, on the
    products of ``splits`` (None: every product). Each view is matched by its product and its
    name inside the product (:func:`lookserve.data.footwear.truth_key`), never by file name alone.

    * ``thumbnail_accuracy``: the chosen view is a best view; beside it, from the ground truth of
      the same products and the views each was given: ``thumbnail_baseline_random`` (expected
      accuracy of a uniformly random view) and ``thumbnail_baseline_no_back_sole`` (a random view
      among those that are neither back nor sole);
    * ``type_accuracy``: the product's type is right; ``type_baseline_majority``: always answering
      the most common type of these products."""
    truth = footwear.read_ground_truth(root)
    shoe_split = {t.shoe: t.split for t in truth.values()}

    def view_truth(product: str, image: str) -> footwear.ViewTruth:
        t = truth.get(footwear.truth_key(product, image))
        if t is None:
            raise DataError(f"{Path(root) / footwear.GROUND_TRUTH}: no ground truth for view {Path(image).name!r} "
                            f"of product {product!r} (result view {image})")
        return t

    n = best_hits = type_hits = 0
    random_sum = no_back_sole_sum = 0.0
    types: Counter[str] = Counter()
    for r in results:
        if r.product not in shoe_split:
            raise DataError(f"{Path(root) / footwear.GROUND_TRUTH}: product {r.product!r} has no ground truth")
        if splits and shoe_split[r.product] not in splits:
            continue
        chosen = view_truth(r.product, r.thumbnail)
        given = [view_truth(r.product, v.image) for v in r.views] or [chosen]
        n += 1
        best_hits += chosen.best
        type_hits += chosen.type == r.footwear_type
        types[chosen.type] += 1
        random, no_back_sole = _baselines_of(given)
        random_sum += random
        no_back_sole_sum += no_back_sole
    if n == 0:
        raise DataError(f"no thumbnail result is of a product of split(s) {', '.join(splits or ())} in "
                        f"{Path(root) / footwear.GROUND_TRUTH}")
    return {"products": n, "thumbnail_accuracy": best_hits / n, "thumbnail_baseline_random": random_sum / n,
            "thumbnail_baseline_no_back_sole": no_back_sole_sum / n, "type_accuracy": type_hits / n,
            "type_baseline_majority": types.most_common(1)[0][1] / n}


__all__ = ["MIN_IOU", "evaluate_pairs", "evaluate_thumbnails", "score_pairs", "thumbnail_baselines"]
