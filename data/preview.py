"""Contact sheets of a data set: street photos with masks and boxes, shop photos per category,
footwear view sets. Works on generated data (COCO masks, ground truth) and on real street2shop
data (pair boxes only)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from lookserve.data import footwear, street2shop
from lookserve.errors import DataError, InvalidInputError
from lookserve.fsutil import atomic_output
from lookserve.images import decode_image
from lookserve.taxonomy import CATEGORIES

log = logging.getLogger(__name__)

_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]], np.uint8)


def _read(path: Path, size: int) -> np.ndarray:
    """A photo as the models see it (:func:`lookserve.images.decode_image`: EXIF, modes, alpha)."""
    try:
        return decode_image(path)
    except InvalidInputError as e:
        raise DataError(f"cannot decode image {path}: {e}") from e


def _fit(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    s = size / max(h, w)
    out = np.full((size, size, 3), 255, np.uint8)
    r = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    out[: r.shape[0], : r.shape[1]] = r
    return out, s


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4, colour=(255, 255, 255)) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    if not tiles:
        raise DataError("nothing to draw")
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (h + 4), cols * (w + 4), 3), 40, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + 4) : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w] = t
    return out


def _save(path: Path, img: np.ndarray) -> Path:
    params = [cv2.IMWRITE_JPEG_QUALITY, 85] if path.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params):
            raise DataError(f"cannot write {path}")
    return path


def street_sheet(root: Path, n: int = 12, tile: int = 320, split: str = "train") -> np.ndarray:
    """Street photos with every instance's mask (coloured), box and ``category product`` label."""
    ann_path = root / "annotations" / f"instances_{split}.json"
    tiles = []
    if ann_path.exists():
        from pycocotools import mask as mask_util

        doc = street2shop.read_json(ann_path)
        by_img: dict[int, list[dict]] = {}
        for a in doc["annotations"]:
            by_img.setdefault(a["image_id"], []).append(a)
        names = {c["id"]: c["name"] for c in doc["categories"]}
        for im in doc["images"][:n]:
            img = _read(root / im["file_name"], tile).astype(np.float32)
            anns = by_img.get(im["id"], [])
            for a in anns:
                seg = a["segmentation"]
                if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                    seg = mask_util.frPyObjects(seg, *seg["size"])
                m = mask_util.decode(seg).astype(bool)
                img[m] = img[m] * 0.5 + _COLOURS[(a["category_id"] - 1) % 11] * 0.5
            out, s = _fit(np.clip(img, 0, 255).astype(np.uint8), tile)
            for a in anns:
                x, y, w, h = (v * s for v in a["bbox"])
                col = tuple(int(v) for v in _COLOURS[(a["category_id"] - 1) % 11])
                cv2.rectangle(out, (int(x), int(y)), (int(x + w), int(y + h)), col, 1)
                _text(out, f"{names[a['category_id']]} {a.get('product_id', '')}", (int(x) + 2, max(10, int(y) - 2)), 0.33, col)
            _text(out, f"photo {im['id']}: {len(anns)} instances", (4, tile - 6))
            tiles.append(out)
    else:  # real data: boxes of the pairs
        ds = street2shop.load(root)
        seen: dict[int, list] = {}
        for p in ds.pairs:
            seen.setdefault(p.photo, []).append(p)
        for pairs in list(seen.values())[:n]:
            out, s = _fit(_read(pairs[0].street_path, tile), tile)
            for p in pairs:
                x, y, w, h = (v * s for v in p.bbox.xywh())
                col = tuple(int(v) for v in _COLOURS[CATEGORIES.index(p.category)])
                cv2.rectangle(out, (int(x), int(y)), (int(x + w), int(y + h)), col, 2)
                _text(out, f"{p.category} {p.product}", (int(x) + 2, max(10, int(y) - 2)), 0.33, col)
            tiles.append(out)
    return _grid(tiles, 4)


def shop_sheet(root: Path, per_category: int = 8, tile: int = 128) -> np.ndarray:
    """One row per category: shop photos of different products (title below)."""
    ds = street2shop.load(root, check_images=True)
    titles = {pid: r.get("title", "") for pid, r in ds.products.items()}
    rows = []
    for cat in CATEGORIES:
        prods = [p for p in sorted(ds.shop) if ds.product_category.get(p) == cat][:per_category]
        tiles = []
        label = np.full((tile, tile, 3), 30, np.uint8)
        _text(label, cat, (6, tile // 2), 0.5)
        tiles.append(label)
        for p in prods:
            out, _ = _fit(_read(ds.shop_path(ds.shop[p][0]), tile), tile)
            _text(out, str(titles.get(p, p))[:22], (2, tile - 5), 0.3, (255, 255, 255))
            tiles.append(out)
        while len(tiles) < per_category + 1:
            tiles.append(np.full((tile, tile, 3), 60, np.uint8))
        rows.append(_grid(tiles, per_category + 1))
    return np.concatenate(rows, 0)


def footwear_sheet(root: Path, n_shoes: int = 12, tile: int = 128) -> np.ndarray:
    """One row per shoe: its 5 views in file order (as a user gets them), labelled with the
    generated ground truth (view, type, * = best view) when there is one."""

    shoes = footwear.load_views(root)
    rows = []
    for shoe, imgs in list(shoes.items())[:n_shoes]:
        tiles = []
        for v in imgs:
            out, _ = _fit(_read(v.path, tile), tile)
            if v.view is not None:
                _text(out, f"{v.view}{' *' if v.best_view else ''}", (4, 12), 0.38, (255, 255, 0) if v.best_view else (255, 255, 255))
                _text(out, f"{shoe} {v.type}", (4, tile - 5), 0.3)
            tiles.append(out)
        rows.append(_grid(tiles, len(tiles)))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=40) for r in rows]
    return np.concatenate(rows, 0)


def write_previews(data: str | os.PathLike, out: str | os.PathLike, n: int = 12, fmt: str = "png") -> list[Path]:
    """Write ``street.<fmt>``, ``shop.<fmt>`` and ``footwear.<fmt>`` (when the data has view
    sets); ``fmt`` is png (default) or jpg (smaller, for docs)."""
    if fmt not in ("png", "jpg"):
        raise DataError(f"unknown preview format {fmt!r}; expected png or jpg")
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [_save(out / f"street.{fmt}", street_sheet(data, n)), _save(out / f"shop.{fmt}", shop_sheet(data))]
    if (data / "footwear" / "views").is_dir():
        written.append(_save(out / f"footwear.{fmt}", footwear_sheet(data, n)))
    info = {"data": str(data), "files": [p.name for p in written]}
    (out / "preview.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written
