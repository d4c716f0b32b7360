"""The one reader of the footwear view sets: ``footwear/views/<shoe_id>/<opaque>.jpg`` and, for
generated data, ``footwear/ground_truth.json``::

    {"images": [{"path": "views/<shoe_id>/<name>.jpg", "shoe_id": str, "view": one of VIEWS,
                 "type": one of FOOTWEAR_TYPES, "split": str, "best_view": bool}, ...]}

An image is identified by its product (``shoe_id``, its folder) and its name inside that folder:
:func:`truth_key` builds the key, ``views/<shoe_id>/<name>``, every reader and evaluation uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lookserve.data.street2shop import read_json
from lookserve.errors import DataError
from lookserve.taxonomy import FOOTWEAR_TYPES, VIEWS

GROUND_TRUTH = Path("footwear") / "ground_truth.json"
_FIELDS = ("path", "shoe_id", "view", "type", "split", "best_view")


@dataclass(frozen=True)
class ViewTruth:
    """Generated ground truth of one view image (never used for training)."""

    shoe: str
    view: str
    type: str
    split: str
    best: bool


@dataclass(frozen=True)
class ViewImage:
    shoe_id: str
    path: Path  # absolute
    rel: str  # "views/<shoe>/<name>.jpg", the key of the ground truth
    view: str | None = None  # ground truth (None when the data set has none)
    type: str | None = None
    split: str | None = None
    best_view: bool | None = None


def truth_key(product: str, image: str | os.PathLike) -> str:
    """The ground-truth key of view ``image`` (a path or a bare name) of ``product``."""
    return f"views/{product}/{Path(image).name}"


def read_ground_truth(root: str | os.PathLike) -> dict[str, ViewTruth]:
    """``ROOT/footwear/ground_truth.json`` keyed by :func:`truth_key`; :class:`DataError` naming the
    file, the record and the field on anything else than the documented format."""
    path = Path(root) / GROUND_TRUTH
    doc = read_json(path)
    recs = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(recs, list):
        raise DataError(f"{path}: expected an object with an 'images' list")
    out: dict[str, ViewTruth] = {}
    for i, r in enumerate(recs):
        if not isinstance(r, dict) or not set(_FIELDS) <= set(r):
            raise DataError(f"{path}: images[{i}] lacks one of {', '.join(_FIELDS)}: {str(r)[:120]}")
        shoe, rel = r["shoe_id"], r["path"]
        if not isinstance(shoe, str) or not shoe or not isinstance(rel, str):
            raise DataError(f"{path}: images[{i}] needs string path and shoe_id, got {rel!r:.80} and {shoe!r:.80}")
        if rel != truth_key(shoe, rel) or Path(rel).name in ("", ".", ".."):
            raise DataError(f"{path}: images[{i}] has path {rel!r:.80}, expected views/{shoe}/<name> for shoe_id {shoe!r}")
        if r["view"] not in VIEWS or r["type"] not in FOOTWEAR_TYPES:
            raise DataError(f"{path}: images[{i}] has unknown view {r['view']!r:.40} or type {r['type']!r:.40} "
                            f"(expected one of {', '.join(VIEWS)} and of {', '.join(FOOTWEAR_TYPES)})")
        if not isinstance(r["split"], str) or not isinstance(r["best_view"], bool):
            raise DataError(f"{path}: images[{i}] needs a string split and a true/false best_view, "
                            f"got {r['split']!r:.40} and {r['best_view']!r:.40}")
        if rel in out:
            raise DataError(f"{path}: images[{i}] repeats {rel}")
        out[rel] = ViewTruth(shoe, r["view"], r["type"], r["split"], r["best_view"])
    return out


def shoes_in_splits(root: str | os.PathLike, splits: str | tuple[str, ...]) -> set[str]:
    """The shoe (product) ids of ``splits`` in the ground truth."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    return {t.shoe for t in read_ground_truth(root).values() if t.split in splits}


def load_views(root: str | os.PathLike, with_truth: bool = True) -> dict[str, list[ViewImage]]:
    """shoe id → its view images (sorted by file name, i.e. in no meaningful order). With
    ``with_truth`` and a ground-truth file present, each image carries its view, type, split;
    an image the ground truth does not describe is a :class:`DataError`."""
    root = Path(root)
    views_dir = root / "footwear" / "views"
    if not views_dir.is_dir():
        raise DataError(f"{views_dir} is missing: no footwear view sets under {root}")
    truth = read_ground_truth(root) if with_truth and (root / GROUND_TRUTH).exists() else None
    out: dict[str, list[ViewImage]] = {}
    for d in sorted(p for p in views_dir.iterdir() if p.is_dir()):
        imgs = []
        for f in sorted(d.glob("*.jpg")):
            rel = truth_key(d.name, f.name)
            if truth is None:
                imgs.append(ViewImage(d.name, f, rel))
                continue
            t = truth.get(rel)
            if t is None:
                raise DataError(f"{root / GROUND_TRUTH}: no ground truth for {rel}")
            imgs.append(ViewImage(d.name, f, rel, t.view, t.type, t.split, t.best))
        if imgs:
            out[d.name] = imgs
    if not out:
        raise DataError(f"no view images under {views_dir}")
    return out


__all__ = ["GROUND_TRUTH", "ViewImage", "ViewTruth", "load_views", "read_ground_truth", "shoes_in_splits", "truth_key"]
