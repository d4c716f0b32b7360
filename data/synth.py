"""A street2shop-format data set generator with exact ground truth.

``generate(out_dir, config, seed)`` writes the layout of the data contract (see
``lookserve.data`` and README): a catalog of procedural products with shop photos, street
photos of a person-like figure wearing 2–5 of them (COCO instance masks + street2shop pairs),
and footwear view sets with their ground truth. Every random draw comes from a generator seeded
by (seed, kind, index), so the same seed gives byte-identical files, whatever is generated
before or after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from lookserve.data import render as R
from lookserve.errors import ConfigError, DataError
from lookserve.taxonomy import CATEGORIES, FOOTWEAR_TYPES, VIEWS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1

# seed streams
_PRODUCT, _SHOP, _STREET, _SHOE, _VIEW, _SPLIT, _OUTFIT = range(1, 8)


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and knobs of a generated data set."""

    n_products: int = 2200
    shop_photos: tuple[int, int] = (2, 4)  # min, max per product
    n_street: int = 12000
    street_size: int = 384
    shop_size: int = 256
    n_shoes: int = 600
    view_size: int = 256
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test (products, photos, shoes)
    hard_negative_fraction: float = 0.2  # share of products created as a sibling of another (≥ 2× this are hard)
    items_per_photo: tuple[int, int] = (2, 5)
    jpeg_quality: tuple[int, int] = (55, 92)  # street photos; shop photos and views use 90

    @classmethod
    def tiny(cls) -> SynthConfig:
        """For tests: a few seconds."""
        return cls(n_products=33, n_street=40, n_shoes=12)

    @classmethod
    def small(cls) -> SynthConfig:
        """Reference training set: a few minutes."""
        return cls(n_products=440, n_street=2000, n_shoes=150)

    @classmethod
    def default(cls) -> SynthConfig:
        return cls()

    @classmethod
    def preset(cls, name: str) -> SynthConfig:
        presets = {"tiny": cls.tiny, "small": cls.small, "default": cls.default}
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(presets)}")
        return presets[name]()

    def __post_init__(self) -> None:
        if self.n_products < len(CATEGORIES):
            raise ConfigError(f"n_products={self.n_products}: need at least one per category ({len(CATEGORIES)})")
        if self.n_street < 1 or self.n_shoes < 0:
            raise ConfigError(f"n_street={self.n_street}, n_shoes={self.n_shoes}: must be >= 1 and >= 0")
        if not (1 <= self.shop_photos[0] <= self.shop_photos[1]):
            raise ConfigError(f"shop_photos={self.shop_photos}: expected 1 <= min <= max")
        if not (2 <= self.items_per_photo[0] <= self.items_per_photo[1]):
            raise ConfigError(f"items_per_photo={self.items_per_photo}: expected 2 <= min <= max")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ConfigError(f"split_fractions={self.split_fractions}: three non-negative fractions summing to 1")
        if not 0 <= self.hard_negative_fraction <= 0.5:
            raise ConfigError(f"hard_negative_fraction={self.hard_negative_fraction}: expected 0..0.5")
        if self.street_size < 64 or self.shop_size < 64 or self.view_size < 64:
            raise ConfigError("image sizes must be at least 64 pixels")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


# --------------------------------------------------------------------------------------------
# catalog
# --------------------------------------------------------------------------------------------
def _pattern_params(rng: np.random.Generator, family: str) -> dict[str, float]:
    if family == "solid":
        return {}
    return {
        "period": round(float(rng.uniform(0.015, 0.045)), 4),
        "angle": round(float(rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4]) + rng.uniform(-0.1, 0.1)), 4),
        "duty": round(float(rng.uniform(0.15, 0.35)), 4),  # the dominant colour stays dominant
    }


def _new_look(rng: np.random.Generator, pid: int, cat: str) -> R.ProductLook:
    colour = R.COLOUR_NAMES[int(rng.integers(len(R.COLOUR_NAMES)))]
    rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in R.PALETTE[colour])
    others = [n for n in R.COLOUR_NAMES if n != colour]
    rgb2 = R.PALETTE[others[int(rng.integers(len(others)))]]
    family = R.PATTERNS[int(rng.integers(len(R.PATTERNS)))]
    shape = {k: round(float(rng.uniform(0, 1)), 4) for k in R.SHAPE_PARAMS[cat]}
    return R.ProductLook(pid, cat, colour, rgb, tuple(int(v) for v in rgb2), family, _pattern_params(rng, family), shape,
                         int(rng.integers(2**31)), round(float(rng.uniform(4, 14)), 3))


def _sibling(rng: np.random.Generator, pid: int, base: R.ProductLook) -> R.ProductLook:
    """Same category and dominant colour as ``base``; differs in pattern or shape details."""
    if rng.random() < 0.5:  # another pattern (family or parameters), same colours
        family = R.PATTERNS[int(rng.integers(len(R.PATTERNS)))]
        if family == base.pattern == "solid":
            family = R.PATTERNS[1 + int(rng.integers(len(R.PATTERNS) - 1))]
        params = _pattern_params(rng, family)
        shape = dict(base.shape)
    else:  # another shape, same pattern
        family, params = base.pattern, dict(base.pattern_params)
        shape = {k: round(float(np.clip(v + rng.choice([-1, 1]) * rng.uniform(0.3, 0.6), 0, 1)), 4) for k, v in base.shape.items()}
    return dataclasses.replace(base, id=pid, pattern=family, pattern_params=params, shape=shape,
                               texture_seed=int(rng.integers(2**31)))


def make_catalog(config: SynthConfig, seed: int) -> list[R.ProductLook]:
    """Products in id order: every category at least once, ``hard_negative_fraction`` of them
    siblings (same category + dominant colour) of an earlier base product."""
    rng = _rng(seed, _PRODUCT)
    n = config.n_products
    cats = list(CATEGORIES) + [CATEGORIES[int(i)] for i in rng.integers(0, len(CATEGORIES), n - len(CATEGORIES))]
    n_sib = int(math.ceil(config.hard_negative_fraction * n))
    looks: list[R.ProductLook] = []
    base_ids: list[int] = []
    sib_slots = set(rng.choice(np.arange(len(CATEGORIES), n), size=min(n_sib, n - len(CATEGORIES)), replace=False).tolist())
    for i in range(n):
        pid = 100001 + i
        if i in sib_slots and base_ids:
            base = looks[base_ids.pop(int(rng.integers(len(base_ids))))]
            looks.append(_sibling(rng, pid, base))
        else:
            looks.append(_new_look(rng, pid, cats[i]))
            base_ids.append(i)
    return looks


def hard_negative_groups(looks: list[R.ProductLook]) -> dict[int, str | None]:
    """product id → its group name (``category/colour``) when another product shares both."""
    count = Counter((lk.category, lk.colour) for lk in looks)
    return {lk.id: f"{lk.category}/{lk.colour}" if count[(lk.category, lk.colour)] > 1 else None for lk in looks}


def _assign_splits(ids: list, fractions: tuple[float, float, float], rng: np.random.Generator) -> dict[Any, str]:
    order = [ids[i] for i in rng.permutation(len(ids))]
    n = len(order)
    n_test = int(round(fractions[2] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3 and fractions[2] > 0:
        n_test = max(n_test, 1)
    out = {}
    for k, x in enumerate(order):
        out[x] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def product_splits(looks: list[R.ProductLook], config: SynthConfig, seed: int) -> dict[int, str]:
    """Stratified by category."""
    rng = _rng(seed, _SPLIT, 1)
    out: dict[int, str] = {}
    for cat in CATEGORIES:
        out.update(_assign_splits([lk.id for lk in looks if lk.category == cat], config.split_fractions, rng))
    # per-category rounding starves small splits of small catalogs: top them up from train,
    # taking from the categories with the most training products
    cat_of = {lk.id: lk.category for lk in looks}
    for split, frac in (("test", config.split_fractions[2]), ("val", config.split_fractions[1])):
        want = int(round(frac * len(looks)))
        while sum(v == split for v in out.values()) < want:
            train_count = Counter(cat_of[p] for p, v in out.items() if v == "train")
            cat, n = max(sorted(train_count.items()), key=lambda kv: kv[1])
            if n < 2:
                break
            cands = sorted(p for p, v in out.items() if v == "train" and cat_of[p] == cat)
            out[cands[int(rng.integers(len(cands)))]] = split
    return out


# --------------------------------------------------------------------------------------------
# street photos
# --------------------------------------------------------------------------------------------
def _outfit(rng: np.random.Generator, available: set[str], k: int) -> list[str]:
    """2–5 compatible categories: a dress or top/outerwear + a bottom, then accessories."""
    garments: list[str] = []
    if "dresses" in available and rng.random() < 0.3:
        garments = ["dresses"] + (["outerwear"] if rng.random() < 0.3 else [])
    else:
        r = rng.random()
        garments = ["tops"] if r < 0.5 else ["outerwear"] if r < 0.7 else ["tops", "outerwear"]
        bottoms = [b for b in ("pants", "skirts", "leggings") if b in available]
        if bottoms:
            garments.append(bottoms[int(rng.integers(len(bottoms)))])
    garments = [g for g in garments if g in available]
    acc = [a for a in rng.permutation(["footwear", "bags", "hats", "eyewear", "belts"]).tolist() if a in available]
    items = (garments + acc)[:k]
    if len(items) < 2:  # a sparse split: anything worn
        extra = [c for c in rng.permutation(sorted(available)).tolist() if c not in items
                 and not ({c, *items} >= {"dresses", "skirts"} or {c, *items} >= {"dresses", "pants"}
                          or {c, *items} >= {"dresses", "leggings"} or len({c, *items} & {"pants", "skirts", "leggings"}) > 1)]
        items += extra[: 2 - len(items)]
    return items


def plan_street(config: SynthConfig, seed: int, looks: list[R.ProductLook], prod_split: dict[int, str]):
    """Which products each street photo shows: (photo index, split, [product ids]); products of
    a split appear only in photos of that split; the least shown products are picked first."""
    rng = _rng(seed, _OUTFIT)
    photo_split = _assign_splits(list(range(config.n_street)), config.split_fractions, _rng(seed, _SPLIT, 2))
    by_split_cat: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for lk in looks:
        by_split_cat[prod_split[lk.id]][lk.category].append(lk.id)
    shown: Counter[int] = Counter()
    plan = []
    for i in range(config.n_street):
        split = photo_split[i]
        avail = {c for c, v in by_split_cat[split].items() if v}
        k = int(rng.integers(config.items_per_photo[0], config.items_per_photo[1] + 1))
        cats = _outfit(rng, avail, k)
        prods = []
        for c in cats:
            cands = by_split_cat[split][c]
            least = min(shown[p] for p in cands)
            pool = [p for p in cands if shown[p] == least]
            p = pool[int(rng.integers(len(pool)))]
            shown[p] += 1
            prods.append(p)
        plan.append((i, split, prods))
    return plan


def shop_patch(look: R.ProductLook, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The product rendered at the resolution its shop photo shows it (small items get more
    pixels per figure unit; patterns keep their size relative to the garment)."""
    polys = R.garment_polygons(look.category, look.shape)
    pts = np.concatenate([np.asarray(p, np.float32) for p in polys])
    extent = float((pts.max(0) - pts.min(0)).max())
    return R.render_product(look, res=0.8 * size / extent)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a binary mask (compressed with pycocotools when present, else uncompressed)."""
    try:
        from pycocotools import mask as mask_util
    except ImportError:  # pragma: no cover - pycocotools comes with the train extras
        flat = np.asfortranarray(mask.astype(bool)).ravel(order="F")
        change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat[0]:
            counts = [0] + counts
        return {"size": list(mask.shape), "counts": counts}
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclass
class StreetResult:
    jpeg: bytes
    instances: list[dict[str, Any]]  # product_id, category, bbox [x, y, w, h], area, segmentation


def render_street(
    index: int,
    seed: int,
    products: list[R.ProductLook],
    patches: dict[int, tuple[np.ndarray, np.ndarray, tuple[float, float]]],
    config: SynthConfig,
    noise_bank: np.ndarray,
    min_visible: int = 40,
) -> StreetResult:
    """One street photo, JPEG-encoded, with its visible instances (heavily occluded ones that
    keep fewer than ``min_visible`` pixels, or less than 15% of their painted area, are not annotated:
    nobody could match them)."""
    rng = _rng(seed, _STREET, index)
    img, labels, visible = R.street_photo([(p, patches[p.id]) for p in products], rng, config.street_size, noise_bank)
    q = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover
        raise DataError("JPEG encoding failed")
    areas = np.bincount(labels.ravel(), minlength=len(products) + 1)
    instances = []
    for k, look in enumerate(products, 1):
        if areas[k] < min_visible or visible[k - 1] < 0.15:
            continue
        m = labels == k
        ys = np.flatnonzero(m.any(1))
        xs = np.flatnonzero(m.any(0))
        x0, y0, x1, y1 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
        instances.append({"product_id": look.id, "category": look.category, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "area": int(areas[k]), "segmentation": rle_encode(m)})
    return StreetResult(buf.tobytes(), instances)


# --------------------------------------------------------------------------------------------
# footwear
# --------------------------------------------------------------------------------------------
def make_shoes(config: SynthConfig, seed: int) -> list[R.ShoeLook]:
    out = []
    for i in range(config.n_shoes):
        rng = _rng(seed, _SHOE, i)
        t = FOOTWEAR_TYPES[i % len(FOOTWEAR_TYPES)] if i < len(FOOTWEAR_TYPES) else FOOTWEAR_TYPES[int(rng.integers(len(FOOTWEAR_TYPES)))]
        c = R.PALETTE[R.COLOUR_NAMES[int(rng.integers(len(R.COLOUR_NAMES)))]]
        c2 = R.PALETTE[R.COLOUR_NAMES[int(rng.integers(len(R.COLOUR_NAMES)))]]
        sole = tuple(int(v) for v in rng.choice([[240, 240, 235], [40, 35, 30], [170, 120, 70]]))
        out.append(R.ShoeLook(f"shoe{i + 1:05d}", t, tuple(int(v) for v in c), tuple(int(v) for v in c2), sole,
                              float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(rng.uniform(0, 1)),
                              "left" if rng.random() < 0.5 else "right"))
    return out


def _opaque(seed: int, shoe: str, view: str) -> str:
    return hashlib.sha256(f"lookserve-view:{seed}:{shoe}:{view}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


def _jpeg(img_rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise DataError("JPEG encoding failed")
    return buf.tobytes()


def _look_record(lk: R.ProductLook, split: str, group: str | None, shop_ids: list[int]) -> dict[str, Any]:
    singular = {"bags": "bag", "belts": "belt", "dresses": "dress", "eyewear": "glasses", "footwear": "shoes",
                "hats": "hat", "leggings": "leggings", "outerwear": "jacket", "pants": "trousers", "skirts": "skirt", "tops": "top"}
    return {
        "id": lk.id,
        "category": lk.category,
        "title": f"{lk.colour} {'' if lk.pattern == 'solid' else lk.pattern + ' '}{singular[lk.category]} #{lk.id}",
        "attributes": {"dominant_colour": lk.colour, "rgb": list(lk.rgb), "pattern_rgb": list(lk.rgb2), "pattern": lk.pattern,
                       "pattern_params": lk.pattern_params, "shape": lk.shape, "texture_seed": lk.texture_seed,
                       "texture_amp": lk.texture_amp},
        "split": split,
        "hard_negative_group": group,
        "shop_photos": shop_ids,
    }


def generate(
    out_dir: str | os.PathLike,
    config: SynthConfig | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write a data set to ``out_dir`` (built in a temporary sibling, renamed at the end, so a
    failed run leaves nothing half-written). Returns ``out_dir``. ``workers`` > 1 renders the
    street photos in that many processes — the files are byte-identical to ``workers=1``."""
    if workers < 1:
        raise ConfigError(f"workers={workers}: expected >= 1")
    config = config or SynthConfig.small()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _generate_into(tmp, config, seed, progress, workers)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("generated %s (seed %d)", out, seed)
    return out


def _progress(enabled: bool):
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


_WORKER_STATE: dict[str, Any] = {}


def _street_worker_init(state: dict[str, Any]) -> None:
    cv2.setNumThreads(1)
    _WORKER_STATE.update(state)


def _street_job(job: tuple[int, str, list[int]]) -> StreetResult:
    st = _WORKER_STATE
    i, _, prods = job
    return render_street(i, st["seed"], [st["by_id"][p] for p in prods], st["patches"], st["config"], st["bank"])


def _street_results(plan, seed, by_id, patches, config, bank, workers: int):
    """Street photos in plan order; with ``workers`` > 1 rendered by worker processes (each photo
    depends only on its own seed stream, so the files are the same either way). Workers are
    spawned, not forked: forking a process whose OpenCV thread pool holds a lock can deadlock."""
    if workers <= 1:
        for i, _, prods in plan:
            yield render_street(i, seed, [by_id[p] for p in prods], patches, config, bank)
        return

    state = {"seed": seed, "by_id": by_id, "patches": patches, "config": config, "bank": bank}
    with mp.get_context("spawn").Pool(workers, initializer=_street_worker_init, initargs=(state,)) as pool:
        yield from pool.imap(_street_job, plan, chunksize=8)


def _generate_into(root: Path, config: SynthConfig, seed: int, progress: bool, workers: int = 1) -> None:
    t0 = time.perf_counter()
    (root / "images").mkdir()
    looks = make_catalog(config, seed)
    by_id = {lk.id: lk for lk in looks}
    split_of = product_splits(looks, config, seed)
    groups = hard_negative_groups(looks)
    patches = {lk.id: R.render_product(lk) for lk in looks}
    plan = plan_street(config, seed, looks, split_of)
    n_street = config.n_street
    photo_lines: list[str] = []
    shop_of: dict[int, list[int]] = {}
    next_id = n_street + 1  # street photos: 1..n_street; shop photos after them (disjoint)
    noise_bank = R.make_noise_bank(seed, config.street_size)
    coco: dict[str, dict[str, list]] = {s: {"images": [], "annotations": []} for s in SPLITS}
    pairs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    street_by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    ann_id = 1
    with _progress(progress) as bar:
        task = bar.add_task("shop photos", total=len(looks))
        for lk in looks:
            rng = _rng(seed, _SHOP, lk.id)
            k = int(rng.integers(config.shop_photos[0], config.shop_photos[1] + 1))
            ids = []
            patch, mask, _ = shop_patch(lk, config.shop_size)
            for _ in range(k):
                (root / "images" / f"{next_id}.jpg").write_bytes(_jpeg(R.shop_photo(patch, mask, rng, config.shop_size)))
                ids.append(next_id)
                next_id += 1
            shop_of[lk.id] = ids
            bar.advance(task)
        task = bar.add_task("street photos", total=n_street)
        for (i, split, _prods), res in zip(plan, _street_results(plan, seed, by_id, patches, config, noise_bank, workers),
                                          strict=True):
            photo_id = i + 1
            (root / "images" / f"{photo_id}.jpg").write_bytes(res.jpeg)
            photo_lines.append(f"{photo_id},images/{photo_id}.jpg")
            street_by_split[split].append(photo_id)
            coco[split]["images"].append({"id": photo_id, "file_name": f"images/{photo_id}.jpg",
                                          "width": config.street_size, "height": config.street_size})
            pair_file = "train" if split == "train" else "test"
            for inst in res.instances:
                coco[split]["annotations"].append({
                    "id": ann_id, "image_id": photo_id, "category_id": CATEGORIES.index(inst["category"]) + 1,
                    "bbox": inst["bbox"], "area": inst["area"], "iscrowd": 0, "segmentation": inst["segmentation"],
                    "product_id": inst["product_id"]})
                ann_id += 1
                x, y, w, h = inst["bbox"]
                pairs[(pair_file, inst["category"])].append(
                    {"photo": photo_id, "product": inst["product_id"], "bbox": {"left": x, "top": y, "width": w, "height": h}})
            bar.advance(task)
        for lk in looks:
            photo_lines.extend(f"{s},images/{s}.jpg" for s in shop_of[lk.id])
        # footwear view sets
        shoes = make_shoes(config, seed)
        shoe_split = _assign_splits([s.id for s in shoes], config.split_fractions, _rng(seed, _SPLIT, 3))
        truth = []
        task = bar.add_task("footwear views", total=len(shoes))
        for si, shoe in enumerate(shoes):
            d = root / "footwear" / "views" / shoe.id
            d.mkdir(parents=True)
            best = R.best_views(shoe)
            for vi, view in enumerate(VIEWS):
                name = _opaque(seed, shoe.id, view) + ".jpg"
                img = R.shoe_view(shoe, view, _rng(seed, _VIEW, si, vi), config.view_size)
                (d / name).write_bytes(_jpeg(img, 90))
                truth.append({"path": f"views/{shoe.id}/{name}", "shoe_id": shoe.id, "view": view, "type": shoe.type,
                              "split": shoe_split[shoe.id], "best_view": view in best})
            bar.advance(task)
    truth.sort(key=lambda r: r["path"])
    _dump(root / "footwear" / "ground_truth.json", {
        "best_view_rule": "front or side view; for zip shoes only the side view that shows the zip",
        "images": truth,
    })
    (root / "photos").mkdir()
    (root / "photos" / "photos.txt").write_text("\n".join(photo_lines) + "\n")
    meta = root / "meta" / "json"
    for cat in CATEGORIES:
        for pf in ("train", "test"):
            _dump(meta / f"{pf}_pairs_{cat}.json", pairs.get((pf, cat), []))
        _dump(meta / f"retrieval_{cat}.json",
              [{"product": lk.id, "photo": s} for lk in looks if lk.category == cat for s in shop_of[lk.id]])
    categories = [{"id": i + 1, "name": c, "supercategory": "fashion"} for i, c in enumerate(CATEGORIES)]
    for split in SPLITS:
        _dump(root / "annotations" / f"instances_{split}.json", {
            "info": {"description": f"lookserve synthetic street photos ({split})", "version": str(FORMAT_VERSION),
                     "seed": seed},
            "licenses": [], "categories": categories, **coco[split]})
    _dump(root / "products.json", [_look_record(lk, split_of[lk.id], groups[lk.id], shop_of[lk.id]) for lk in looks])
    _dump(root / "splits.json", {
        "products": {s: sorted(p for p, v in split_of.items() if v == s) for s in SPLITS},
        "street_photos": {s: street_by_split[s] for s in SPLITS},
        "shoes": {s: sorted(k for k, v in shoe_split.items() if v == s) for s in SPLITS},
        "pair_files": {"train": ["train"], "val": ["test"], "test": ["test"]},
    })
    n_hard = sum(g is not None for g in groups.values())
    _dump(root / "dataset.json", {
        "generator": "lookserve.data.synth", "format_version": FORMAT_VERSION, "seed": seed,
        "config": dataclasses.asdict(config),
        "counts": {"products": len(looks), "street_photos": n_street, "shop_photos": next_id - n_street - 1,
                   "instances": ann_id - 1, "shoes": len(shoes), "view_images": len(truth)},
        "hard_negative_ratio": round(n_hard / len(looks), 4),
    })
    log.info("generated %d products, %d street photos, %d shoes in %.1fs", len(looks), n_street, len(shoes),
             time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------------
def bench_street(n: int = 200, seed: int = 0, size: int = 384, repeats: int = 3,
                 on_repeat: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Street photos per second on one core (OpenCV single-threaded, so the process's CPU time is
    one core's time), including rendering, JPEG encoding and mask RLE encoding — everything but
    the file write. Rates per CPU-second (robust to a shared machine) and per wall-second;
    medians over ``repeats``."""
    config = dataclasses.replace(SynthConfig.small(), street_size=size, n_street=n)
    looks = make_catalog(config, seed)
    patches = {lk.id: R.render_product(lk) for lk in looks}
    plan = plan_street(config, seed, looks, product_splits(looks, config, seed))
    by_id = {lk.id: lk for lk in looks}
    bank = R.make_noise_bank(seed, size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        render_street(0, seed, [by_id[p] for p in plan[0][2]], patches, config, bank)  # warm-up
        rates, wall_rates, per_photo = [], [], []
        for r in range(repeats):
            times = []
            t_all, c_all = time.perf_counter(), time.process_time()
            for i, _, prods in plan:
                t = time.process_time()
                render_street(i, seed, [by_id[p] for p in prods], patches, config, bank)
                times.append(time.process_time() - t)
            rate = n / (time.process_time() - c_all)
            rates.append(rate)
            wall_rates.append(n / (time.perf_counter() - t_all))
            per_photo.extend(times)
            if on_repeat:
                on_repeat(r, rate)
    finally:
        cv2.setNumThreads(threads)
    ms = np.array(per_photo) * 1000
    return {"photos": n, "size": size, "repeats": repeats,
            "photos_per_cpu_s_median": float(np.median(rates)), "photos_per_cpu_s_each": [round(x, 1) for x in rates],
            "photos_per_wall_s_median": float(np.median(wall_rates)),
            "cpu_ms_per_photo_median": float(np.median(ms)), "cpu_ms_per_photo_p99": float(np.percentile(ms, 99)),
            "opencv_threads": 1, "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
