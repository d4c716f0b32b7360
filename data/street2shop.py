"""Read a street2shop-layout data set, generated (``lookserve data synth``) or real.

Layout (the real data set's, plus the generator's extras)::

    photos/photos.txt                       id,url per photo (street and shop photos)
    images/<id>.jpg                         the photos (the url's relative path for generated data)
    meta/json/{train,test}_pairs_<cat>.json [{"photo", "product", "bbox": {left, top, width, height}}]
    meta/json/retrieval_<cat>.json          [{"product", "photo"}]      (shop photos of products)
    products.json, splits.json              (generated data only: product splits and attributes)

Pairs are joined to shop photos as in the original analysis: a street photo may show several
products, a product may appear in several street photos and has several shop photos. Street
and shop photo ids must be disjoint. Rows whose images are missing are logged, counted in
:attr:`Street2Shop.missing` and skipped — never silently dropped.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookserve.errors import DataError
from lookserve.images import DEFAULT_LIMITS
from lookserve.taxonomy import CATEGORIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BBox:
    left: float
    top: float
    width: float
    height: float

    def xywh(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.width, self.height)

    def xyxy(self) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)``, the box convention of :mod:`lookserve.images` (``crop_box``)."""
        return (self.left, self.top, self.left + self.width, self.top + self.height)


@dataclass(frozen=True)
class Pair:
    """One street photo showing one product, with the shop photos of that product."""

    photo: int  # street photo id
    product: int
    category: str
    bbox: BBox
    split: str  # train / val / test (products.json when present, else the pair file's name)
    pair_file: str  # "train" or "test": which meta/json file the row came from
    street_path: Path
    shop_photos: tuple[int, ...]


@dataclass(frozen=True)
class MissingRow:
    """A row skipped because an image it needs is absent."""

    file: str  # the meta/json file of the row
    index: int  # its position in that file
    photo: int
    product: int
    reason: str


@dataclass
class Street2Shop:
    root: Path
    photo_paths: dict[int, Path]  # every photo listed in photos.txt → where its image lies
    photo_urls: dict[int, str]
    pairs: list[Pair]  # usable pairs (street image present, ≥ 1 shop image present)
    shop: dict[int, tuple[int, ...]]  # product → its usable shop photo ids
    product_category: dict[int, str]
    product_split: dict[int, str]
    missing: list[MissingRow] = field(default_factory=list)
    products: dict[int, dict[str, Any]] = field(default_factory=dict)  # products.json records (generated data)

    # --- views -----------------------------------------------------------------------------
    @property
    def street_ids(self) -> set[int]:
        return {p.photo for p in self.pairs}

    @property
    def shop_ids(self) -> set[int]:
        return {s for v in self.shop.values() for s in v}

    @property
    def n_missing(self) -> int:
        return len(self.missing)

    def pairs_of(self, split: str | None = None, category: str | None = None) -> list[Pair]:
        return [p for p in self.pairs if (split is None or p.split == split) and (category is None or p.category == category)]

    def products_of(self, split: str | None = None, category: str | None = None) -> list[int]:
        return sorted(p for p, c in self.product_category.items()
                      if (category is None or c == category) and (split is None or self.product_split.get(p) == split))

    def shop_path(self, photo: int) -> Path:
        return self.photo_paths[photo]

    def summary(self) -> dict[str, Any]:
        per_cat = Counter((p.category, p.split) for p in self.pairs)
        return {
            "pairs": len(self.pairs),
            "street_photos": len(self.street_ids),
            "products_with_pairs": len({p.product for p in self.pairs}),
            "shop_photos": len(self.shop_ids),
            "missing_rows": len(self.missing),
            "per_category": {c: {s: per_cat[(c, s)] for s in ("train", "val", "test") if per_cat[(c, s)]} for c in CATEGORIES},
        }


# --------------------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """JSON of a data file; ``DataError`` naming the file and the problem otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise DataError(f"missing data file {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise DataError(f"{path} is not usable JSON: {e}") from e
    except RecursionError as e:
        raise DataError(f"{path} is not usable JSON: nested too deeply") from e


def read_photos_txt(path: Path) -> dict[int, str]:
    """``id,url`` lines → {id: url}; a malformed line or a duplicate id is a ``DataError``."""
    if not path.is_file():
        raise DataError(f"{path} is missing: not a street2shop data set root")
    out: dict[int, str] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            pid_s, sep, url = line.partition(",")
            try:
                if not sep or not url:
                    raise ValueError("no url")
                pid = int(pid_s)
            except ValueError as e:
                raise DataError(f"{path}:{n}: expected 'id,url', got {line[:80]!r}") from e
            if pid in out and out[pid] != url:
                raise DataError(f"{path}:{n}: photo id {pid} listed twice with different urls")
            out[pid] = url
    return out


def photo_path(root: Path, pid: int, url: str) -> Path:
    """Generated data: the url is the image's relative path; real data: ``images/<id>.jpg``."""
    if url.startswith(("http://", "https://", "ftp://")):
        return root / "images" / f"{pid}.jpg"
    return root / url


def _int_field(rec: Any, key: str, where: str) -> int:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}: {str(rec)[:80]}")
    if key not in rec:
        raise DataError(f"{where}: missing field {key!r} in {str(rec)[:120]}")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise DataError(f"{where}: field {key!r} must be an integer id, got {v!r}")
    try:
        return int(v)
    except ValueError as e:
        raise DataError(f"{where}: field {key!r} must be an integer id, got {v!r}") from e


def _bbox(rec: dict, where: str) -> BBox:
    b = rec.get("bbox")
    if not isinstance(b, dict):
        raise DataError(f"{where}: missing or malformed field 'bbox' (expected an object with left, top, width, height): {b!r}")
    try:
        vals = [float(b[k]) for k in ("left", "top", "width", "height")]
    except KeyError as e:
        raise DataError(f"{where}: bbox lacks {e}: {b!r}") from e
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: bbox values must be numbers: {b!r}") from e
    if not all(math.isfinite(v) for v in vals):
        raise DataError(f"{where}: bbox values must be finite numbers: {b!r}")
    if vals[2] <= 0 or vals[3] <= 0:
        raise DataError(f"{where}: bbox has a non-positive width or height: {b!r}")
    # No photo lookserve decodes is larger than DEFAULT_LIMITS.max_side: a box beyond it is not
    # in any photo (it would otherwise load and crop nothing, or crop a clamped sliver).
    side = DEFAULT_LIMITS.max_side
    left, top, width, height = vals
    if left < -side or top < -side or left + width > 2 * side or top + height > 2 * side:
        raise DataError(f"{where}: bbox lies outside any photo lookserve decodes (sides up to {side} px): {b!r}")
    return BBox(*vals)


def _list_file(path: Path) -> list:
    doc = read_json(path)
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(doc).__name__}")
    return doc


def load(root: str | os.PathLike, categories: tuple[str, ...] | None = None, check_images: bool = True) -> Street2Shop:
    """Read the layout under ``root`` and join pairs to shop photos (see the module doc).

    ``check_images`` checks every needed image exists (``images/<id>.jpg`` for real data); rows
    that miss one are reported in ``.missing`` and skipped."""
    root = Path(root)
    urls = read_photos_txt(root / "photos" / "photos.txt")
    paths = {pid: photo_path(root, pid, u) for pid, u in urls.items()}
    meta = root / "meta" / "json"
    if not meta.is_dir():
        raise DataError(f"{meta} is missing: not a street2shop data set root")
    cats = categories or CATEGORIES
    for c in cats:
        if c not in CATEGORIES:
            raise DataError(f"unknown category {c!r}; expected one of {', '.join(CATEGORIES)}")

    products: dict[int, dict[str, Any]] = {}
    if (root / "products.json").exists():
        doc = read_json(root / "products.json")
        items = doc.values() if isinstance(doc, dict) else doc
        if not isinstance(items, list) and not isinstance(doc, dict):
            raise DataError(f"{root / 'products.json'}: expected a list of products")
        for i, r in enumerate(items):
            products[_int_field(r, "id", f"{root / 'products.json'}[{i}]")] = r

    exists_cache: dict[int, bool] = {}

    def present(pid: int) -> bool:
        if not check_images:
            return pid in paths
        if pid not in exists_cache:
            exists_cache[pid] = pid in paths and paths[pid].is_file()
        return exists_cache[pid]

    missing: list[MissingRow] = []
    shop_all: dict[int, list[int]] = defaultdict(list)
    product_category: dict[int, str] = {}
    raw_pairs: list[tuple[str, int, dict, str, str]] = []  # file, index, rec, category, pair_file
    shop_listed: set[int] = set()
    for cat in cats:
        rf = meta / f"retrieval_{cat}.json"
        if rf.exists():
            for i, rec in enumerate(_list_file(rf)):
                where = f"{rf}[{i}]"
                prod, photo = _int_field(rec, "product", where), _int_field(rec, "photo", where)
                if product_category.setdefault(prod, cat) != cat:
                    raise DataError(f"{where}: product {prod} is listed in {product_category[prod]} and {cat}")
                shop_listed.add(photo)
                if present(photo):
                    shop_all[prod].append(photo)
                else:
                    missing.append(MissingRow(rf.name, i, photo, prod, "shop image missing" if photo in paths else "shop photo not in photos.txt"))
        for pf in ("train", "test"):
            f = meta / f"{pf}_pairs_{cat}.json"
            if f.exists():
                raw_pairs.extend((f.name, i, rec, cat, pf) for i, rec in enumerate(_list_file(f)))

    shop = {p: tuple(dict.fromkeys(v)) for p, v in shop_all.items()}
    shop_ids = {s for v in shop_all.values() for s in v}
    street_listed = {_int_field(rec, "photo", f"{meta / fn}[{i}]") for fn, i, rec, _, _ in raw_pairs}
    both = street_listed & shop_listed
    if both:
        ex = ", ".join(str(x) for x in sorted(both)[:5])
        raise DataError(f"{root}: {len(both)} photo ids are both street photos (pairs) and shop photos (retrieval), e.g. {ex}; "
                        "street and shop ids must be disjoint")

    pairs: list[Pair] = []
    for fname, i, rec, cat, pf in raw_pairs:
        where = f"{meta / fname}[{i}]"
        photo, prod = _int_field(rec, "photo", where), _int_field(rec, "product", where)
        bbox = _bbox(rec, where)
        if product_category.get(prod, cat) != cat:
            raise DataError(f"{where}: product {prod} is a {product_category[prod]} product but paired in {cat}")
        if products and prod in products and "split" in products[prod]:
            split = str(products[prod]["split"])
        else:
            split = pf
        if not present(photo):
            missing.append(MissingRow(fname, i, photo, prod, "street image missing" if photo in paths else "street photo not in photos.txt"))
            continue
        if not shop.get(prod):
            missing.append(MissingRow(fname, i, photo, prod, "no shop image of the product"))
            continue
        pairs.append(Pair(photo, prod, cat, bbox, split, pf, paths[photo], shop[prod]))

    product_split: dict[int, str] = {}
    for p in pairs:
        product_split.setdefault(p.product, p.split)
    for pid, r in products.items():
        if "split" in r:
            product_split[pid] = str(r["split"])
    if missing:
        by_reason = Counter(m.reason for m in missing)
        log.warning("%s: skipped %d rows whose images are missing (%s)", root, len(missing),
                    ", ".join(f"{n} {r}" for r, n in by_reason.most_common()))
    log.info("%s: %d pairs, %d street photos, %d products with shop photos (%d shop photos)", root, len(pairs),
             len({p.photo for p in pairs}), len(shop), len(shop_ids))
    return Street2Shop(root, paths, urls, pairs, shop, product_category, product_split, missing, products)
