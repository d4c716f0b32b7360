"""Read the footwear view sets: ``footwear/views/<shoe_id>/<opaque>.jpg`` and, for generated
data, ``footwear/ground_truth.json`` (per image: shoe id, view, type, split, best view)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lookserve.data.street2shop import read_json
from lookserve.errors import DataError
from lookserve.taxonomy import FOOTWEAR_TYPES, VIEWS


@dataclass(frozen=True)
class ViewImage:
    shoe_id: str
    path: Path  # absolute
    rel: str  # "views/<shoe>/<name>.jpg", the key of the ground truth
    view: str | None = None  # ground truth (None when the data set has none)
    type: str | None = None
    split: str | None = None
    best_view: bool | None = None


def load_views(root: str | os.PathLike, with_truth: bool = True) -> dict[str, list[ViewImage]]:
    """shoe id → its view images (sorted by file name, i.e. in no meaningful order). With
    ``with_truth`` and a ground-truth file present, each image carries its view, type, split."""
    root = Path(root)
    views_dir = root / "footwear" / "views"
    if not views_dir.is_dir():
        raise DataError(f"{views_dir} is missing: no footwear view sets under {root}")
    truth: dict[str, dict] = {}
    gt = root / "footwear" / "ground_truth.json"
    if with_truth and gt.exists():
        doc = read_json(gt)
        recs = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(recs, list):
            raise DataError(f"{gt}: expected an object with an 'images' list")
        for i, r in enumerate(recs):
            if not isinstance(r, dict) or not {"path", "shoe_id", "view", "type", "split", "best_view"} <= set(r):
                raise DataError(f"{gt}: images[{i}] lacks one of path, shoe_id, view, type, split, best_view: {str(r)[:120]}")
            if not isinstance(r["path"], str):
                raise DataError(f"{gt}: images[{i}] has a path that is not a string: {r['path']!r:.80}")
            if r["view"] not in VIEWS or r["type"] not in FOOTWEAR_TYPES:
                raise DataError(f"{gt}: images[{i}] has unknown view {r['view']!r} or type {r['type']!r}")
            truth[r["path"]] = r
    out: dict[str, list[ViewImage]] = {}
    for d in sorted(p for p in views_dir.iterdir() if p.is_dir()):
        imgs = []
        for f in sorted(d.glob("*.jpg")):
            rel = f"views/{d.name}/{f.name}"
            t = truth.get(rel)
            if truth and t is None:
                raise DataError(f"{gt}: no ground truth for {rel}")
            imgs.append(ViewImage(d.name, f, rel, *((t["view"], t["type"], t["split"], bool(t["best_view"])) if t else ())))
        if imgs:
            out[d.name] = imgs
    if not out:
        raise DataError(f"no view images under {views_dir}")
    return out
