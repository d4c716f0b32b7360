"""The generator: determinism, the layout and schema of every file, splits, hard negatives."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from lookserve.data import render, synth, synthetic
from lookserve.errors import ConfigError, DataError
from lookserve.taxonomy import CATEGORIES, FOOTWEAR_TYPES, VIEWS

SEED = 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "tiny", synth.SynthConfig.tiny(), seed=SEED)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _json(p: Path):
    return json.loads(p.read_text())


def test_generate_writes_byte_identical_files_when_seed_is_the_same(tiny, tmp_path):
    again = synth.generate(tmp_path / "again", synth.SynthConfig.tiny(), seed=SEED)
    assert _digest(again) == _digest(tiny)


def test_generate_writes_the_same_files_when_another_process_renders_with_two_workers(tmp_path):
    """Same seed → same bytes across processes (another PYTHONHASHSEED) and worker counts."""

    cfg = dataclasses.replace(synth.SynthConfig.tiny(), n_street=10, n_shoes=1)
    one = synth.generate(tmp_path / "one", cfg, seed=9)
    code = ("import dataclasses, sys; from lookserve.data import synth; "
            "cfg = dataclasses.replace(synth.SynthConfig.tiny(), n_street=10, n_shoes=1); "
            "synth.generate(sys.argv[1], cfg, seed=9, workers=2)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "two")], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "977"})
    assert _digest(one) == _digest(tmp_path / "two")


def test_generate_writes_different_images_when_seed_differs(tiny, tmp_path):
    cfg = dataclasses.replace(synth.SynthConfig.tiny(), n_street=4, n_shoes=1)
    other = synth.generate(tmp_path / "other", cfg, seed=SEED + 1)
    assert (other / "images" / "1.jpg").read_bytes() != (tiny / "images" / "1.jpg").read_bytes()


def test_generate_refuses_non_empty_output_when_overwrite_is_off(tiny):
    with pytest.raises(DataError, match="not empty"):
        synth.generate(tiny, synth.SynthConfig.tiny(), seed=SEED)


def test_synth_config_rejects_bad_sizes_when_constructed():
    with pytest.raises(ConfigError, match="n_products"):
        synth.SynthConfig(n_products=3)
    with pytest.raises(ConfigError, match="split_fractions"):
        synth.SynthConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="preset"):
        synth.SynthConfig.preset("huge")


def test_photos_txt_lists_every_image_with_disjoint_street_and_shop_ids(tiny):
    lines = (tiny / "photos" / "photos.txt").read_text().splitlines()
    ids = {}
    for line in lines:
        pid, url = line.split(",", 1)
        ids[int(pid)] = url
        assert url == f"images/{int(pid)}.jpg"
    assert len(ids) == len(lines)
    on_disk = {int(p.stem) for p in (tiny / "images").glob("*.jpg")}
    assert on_disk == set(ids)
    meta = tiny / "meta" / "json"
    street = {r["photo"] for c in CATEGORIES for f in ("train", "test") for r in _json(meta / f"{f}_pairs_{c}.json")}
    shop = {r["photo"] for c in CATEGORIES for r in _json(meta / f"retrieval_{c}.json")}
    assert street and shop and not (street & shop)
    assert street | shop <= set(ids)


def test_images_have_the_contract_sizes(tiny):
    products = _json(tiny / "products.json")
    shop_id = products[0]["shop_photos"][0]
    assert cv2.imread(str(tiny / "images" / f"{shop_id}.jpg")).shape == (256, 256, 3)
    assert cv2.imread(str(tiny / "images" / "1.jpg")).shape == (384, 384, 3)


def test_pair_files_follow_the_street2shop_schema(tiny):
    meta = tiny / "meta" / "json"
    products = {p["id"]: p for p in _json(tiny / "products.json")}
    n = 0
    for cat in CATEGORIES:
        for f in ("train", "test"):
            for r in _json(meta / f"{f}_pairs_{cat}.json"):
                assert set(r) == {"photo", "product", "bbox"}
                assert set(r["bbox"]) == {"left", "top", "width", "height"}
                b = r["bbox"]
                assert b["width"] > 0 and b["height"] > 0 and b["left"] >= 0 and b["top"] >= 0
                assert b["left"] + b["width"] <= 384 and b["top"] + b["height"] <= 384
                assert products[r["product"]]["category"] == cat
                n += 1
        for r in _json(meta / f"retrieval_{cat}.json"):
            assert set(r) == {"product", "photo"} and products[r["product"]]["category"] == cat
    assert n > 0


def test_products_json_has_identity_split_and_hard_negative_group(tiny):
    products = _json(tiny / "products.json")
    assert len(products) == synth.SynthConfig.tiny().n_products
    assert {p["category"] for p in products} == set(CATEGORIES)
    for p in products:
        assert {"id", "category", "title", "attributes", "split", "hard_negative_group"} <= set(p)
        assert p["split"] in synth.SPLITS
        a = p["attributes"]
        assert a["dominant_colour"] in render.PALETTE and a["pattern"] in render.PATTERNS
        assert set(a["shape"]) == set(render.SHAPE_PARAMS[p["category"]])
        assert 2 <= len(p["shop_photos"]) <= 4


def test_hard_negatives_are_at_least_30_percent_when_generated(tiny):
    products = _json(tiny / "products.json")
    key = Counter((p["category"], p["attributes"]["dominant_colour"]) for p in products)
    hard = [p for p in products if key[(p["category"], p["attributes"]["dominant_colour"])] > 1]
    assert len(hard) / len(products) >= 0.3
    for p in products:  # the recorded group is exactly the category+colour sharing
        expected = f"{p['category']}/{p['attributes']['dominant_colour']}" if p in hard else None
        assert p["hard_negative_group"] == expected
    # members of a group differ in pattern or shape, never only in id
    by_group: dict[str, list] = {}
    for p in hard:
        by_group.setdefault(p["hard_negative_group"], []).append(p)
    for members in by_group.values():
        looks = {json.dumps([m["attributes"]["pattern"], m["attributes"]["pattern_params"], m["attributes"]["shape"]],
                            sort_keys=True) for m in members}
        assert len(looks) == len(members)


def test_hard_negative_ratio_holds_when_catalog_is_larger():
    cfg = dataclasses.replace(synth.SynthConfig.small(), n_products=300)
    looks = synth.make_catalog(cfg, seed=3)
    groups = synth.hard_negative_groups(looks)
    assert sum(g is not None for g in groups.values()) / len(looks) >= 0.3


def test_splits_keep_test_products_out_of_every_training_file(tiny):
    splits = _json(tiny / "splits.json")
    prods = {s: set(v) for s, v in splits["products"].items()}
    assert prods["train"] and prods["test"]
    assert not (prods["train"] & prods["test"]) and not (prods["train"] & prods["val"]) and not (prods["val"] & prods["test"])
    photos = {s: set(v) for s, v in splits["street_photos"].items()}
    assert not (photos["train"] & photos["test"]) and not (photos["train"] & photos["val"])
    meta = tiny / "meta" / "json"
    train_pair_products = {r["product"] for c in CATEGORIES for r in _json(meta / f"train_pairs_{c}.json")}
    assert train_pair_products <= prods["train"]
    coco_train = _json(tiny / "annotations" / "instances_train.json")
    assert {a["product_id"] for a in coco_train["annotations"]} <= prods["train"]
    assert {im["id"] for im in coco_train["images"]} == photos["train"]
    coco_test = _json(tiny / "annotations" / "instances_test.json")
    assert {a["product_id"] for a in coco_test["annotations"]} <= prods["test"]


def test_coco_annotations_decode_to_masks_inside_their_boxes(tiny):
    from pycocotools.coco import COCO

    n = 0
    for split in synth.SPLITS:
        path = tiny / "annotations" / f"instances_{split}.json"
        coco = COCO(str(path))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
        for ann in coco.loadAnns(coco.getAnnIds()):
            m = coco.annToMask(ann)
            x, y, w, h = ann["bbox"]
            assert m.sum() == ann["area"] > 0
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
            assert 1 <= ann["category_id"] <= 11 and "product_id" in ann
            n += 1
    assert n > 0


def test_street_photos_show_two_to_five_products_at_their_body_positions(tiny):
    coco = _json(tiny / "annotations" / "instances_train.json")
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert max(per_image.values()) <= 5 and np.mean(list(per_image.values())) >= 2
    cy = {}
    for a in coco["annotations"]:
        cat = CATEGORIES[a["category_id"] - 1]
        cy.setdefault(cat, []).append(a["bbox"][1] + a["bbox"][3] / 2)
    # hats sit above tops, tops above footwear (image y grows downwards)
    if "hats" in cy and "tops" in cy:
        assert np.median(cy["hats"]) < np.median(cy["tops"])
    if "tops" in cy and "footwear" in cy:
        assert np.median(cy["tops"]) < np.median(cy["footwear"])


def test_pairs_and_coco_describe_the_same_instances(tiny):
    meta = tiny / "meta" / "json"
    pairs = {(r["photo"], r["product"], tuple(r["bbox"].values())) for c in CATEGORIES for f in ("train", "test")
             for r in _json(meta / f"{f}_pairs_{c}.json")}
    anns = set()
    for split in synth.SPLITS:
        for a in _json(tiny / "annotations" / f"instances_{split}.json")["annotations"]:
            x, y, w, h = a["bbox"]
            anns.add((a["image_id"], a["product_id"], (x, y, w, h)))
    assert {(p, q) for p, q, _ in pairs} == {(p, q) for p, q, _ in anns}


def test_footwear_views_are_five_per_shoe_with_opaque_names_and_ground_truth(tiny):
    gt = _json(tiny / "footwear" / "ground_truth.json")["images"]
    by_shoe: dict[str, list] = {}
    for r in gt:
        by_shoe.setdefault(r["shoe_id"], []).append(r)
        assert (tiny / "footwear" / r["path"]).is_file()
        name = Path(r["path"]).stem
        assert r["view"] not in name and r["type"] not in name and len(name) == 16
    assert len(by_shoe) == synth.SynthConfig.tiny().n_shoes
    assert {r["type"] for r in gt} == set(FOOTWEAR_TYPES)
    for recs in by_shoe.values():
        assert sorted(r["view"] for r in recs) == sorted(VIEWS)
        assert len({r["type"] for r in recs}) == 1 and len({r["split"] for r in recs}) == 1
        best = {r["view"] for r in recs if r["best_view"]}
        if recs[0]["type"] == "zip":
            assert best in ({"left"}, {"right"})
        else:
            assert best == {"front", "left", "right"}
    files = sorted(p.name for p in (tiny / "footwear" / "views").glob("*/*.jpg"))
    assert len(files) == len(gt)


def test_zip_cue_is_visible_only_from_the_zip_side():
    zip_left = render.ShoeLook("s", "zip", (30, 40, 90), (200, 40, 40), (240, 240, 235), 0.5, 0.5, 0.5, "left")
    zip_right = dataclasses.replace(zip_left, zip_side="right")

    def diff(view):  # the same random draws for both renders
        a = render.shoe_view(zip_left, view, np.random.default_rng(1)).astype(int)
        b = render.shoe_view(zip_right, view, np.random.default_rng(1)).astype(int)
        return np.abs(a - b).mean()

    assert diff("left") > 0.5 and diff("right") > 0.5
    assert diff("front") == diff("back") == diff("sole") == 0


def test_bench_street_reports_rates_when_run_small():
    res = synth.bench_street(n=5, repeats=1)
    assert res["photos"] == 5 and res["photos_per_cpu_s_median"] > 0 and res["opencv_threads"] == 1


def test_render_photos_returns_uint8_batch_when_asked_for_any_size():
    a = synthetic.render_photos(2, 100, 120, seed=3)
    assert a.shape == (2, 100, 120, 3) and a.dtype == np.uint8 and a.std() > 10
    assert np.array_equal(a, synthetic.render_photos(2, 100, 120, seed=3))
