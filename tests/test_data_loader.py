"""The street2shop loader on generated data and on hand-written (malformed) street2shop files;
the footwear view loader; the preview sheets."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lookserve.data import difficulty, footwear, preview, street2shop, synth
from lookserve.errors import DataError

CONFIG = synth.SynthConfig(n_products=22, n_street=16, n_shoes=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("loader") / "tiny", CONFIG, seed=11)


def _img(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 32, 3), value, np.uint8))


def _real_layout(root: Path, *, pairs=None, retrieval=None, photos=None, images=None) -> Path:
    """A hand-written real-style data set: http urls, images/<id>.jpg, pairs of one category.
    Street photo 1 shows products 10 and 11; street photo 2 shows product 10 again;
    product 10 has shop photos 100, 101; product 11 has 102."""
    photos = photos if photos is not None else {1: "http://x/1.jpg", 2: "http://x/2.jpg", 100: "http://x/a.jpg",
                                                 101: "http://x/b.jpg", 102: "http://x/c.jpg"}
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "photos.txt").write_text("".join(f"{k},{v}\n" for k, v in photos.items()))
    for pid in images if images is not None else photos:
        _img(root / "images" / f"{pid}.jpg")
    meta = root / "meta" / "json"
    meta.mkdir(parents=True)
    bb = {"left": 1, "top": 2, "width": 10, "height": 12}
    pairs = pairs if pairs is not None else [{"photo": 1, "product": 10, "bbox": bb}, {"photo": 1, "product": 11, "bbox": bb},
                                             {"photo": 2, "product": 10, "bbox": bb}]
    retrieval = retrieval if retrieval is not None else [{"product": 10, "photo": 100}, {"product": 10, "photo": 101},
                                                         {"product": 11, "photo": 102}]
    for name, doc in (("train_pairs_tops.json", pairs), ("retrieval_tops.json", retrieval)):
        (meta / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return root


# --- generated data ---------------------------------------------------------------------------
def test_load_joins_every_generated_pair_to_its_shop_photos(tiny):
    ds = street2shop.load(tiny)
    products = {p["id"]: p for p in json.loads((tiny / "products.json").read_text())}
    assert ds.n_missing == 0 and ds.pairs
    for p in ds.pairs:
        assert p.street_path.is_file()
        assert list(p.shop_photos) == products[p.product]["shop_photos"]
        assert p.split == products[p.product]["split"]
    assert not (ds.street_ids & ds.shop_ids)
    splits = json.loads((tiny / "splits.json").read_text())
    assert {p.product for p in ds.pairs_of("test")} <= set(splits["products"]["test"])
    assert {p.photo for p in ds.pairs_of("train")} <= set(splits["street_photos"]["train"])


def test_load_reports_and_skips_rows_when_generated_images_are_deleted(tmp_path, caplog):
    root = synth.generate(tmp_path / "d", synth.SynthConfig(n_products=11, n_street=6, n_shoes=0), seed=2)
    full = street2shop.load(root)
    victim = full.pairs[0]
    victim.street_path.unlink()
    n_victim_rows = sum(p.photo == victim.photo for p in full.pairs)
    with caplog.at_level(logging.WARNING, logger="lookserve.data.street2shop"):
        ds = street2shop.load(root)
    assert ds.n_missing == n_victim_rows
    assert all(m.reason == "street image missing" and m.photo == victim.photo for m in ds.missing)
    assert len(ds.pairs) == len(full.pairs) - n_victim_rows
    assert "skipped" in caplog.text


def test_footwear_load_views_carries_ground_truth_per_image(tiny):
    shoes = footwear.load_views(tiny)
    assert len(shoes) == CONFIG.n_shoes
    for imgs in shoes.values():
        assert len(imgs) == 5 and {v.view for v in imgs} == {"front", "back", "left", "right", "sole"}
        assert all(v.path.is_file() for v in imgs)


def test_preview_writes_three_contact_sheets(tiny, tmp_path):
    files = preview.write_previews(tiny, tmp_path / "prev", n=4)
    assert [f.name for f in files] == ["street.png", "shop.png", "footwear.png"]
    for f in files:
        img = cv2.imread(str(f))
        assert img is not None and img.shape[0] > 100 and img.std() > 10


# --- real-style layout: joins -------------------------------------------------------------
def test_load_joins_many_to_many_when_real_layout_is_complete(tmp_path):
    ds = street2shop.load(_real_layout(tmp_path))
    assert ds.n_missing == 0
    assert sorted((p.photo, p.product) for p in ds.pairs) == [(1, 10), (1, 11), (2, 10)]
    assert {p.product: p.shop_photos for p in ds.pairs} == {10: (100, 101), 11: (102,)}
    assert all(p.street_path == tmp_path / "images" / f"{p.photo}.jpg" for p in ds.pairs)
    assert all(p.split == "train" and p.category == "tops" for p in ds.pairs)


def test_load_keeps_a_shared_street_photo_when_one_products_shop_photos_are_missing(tmp_path):
    ds = street2shop.load(_real_layout(tmp_path, images=[1, 2, 100, 101]))  # 102 (product 11) missing
    assert sorted((p.photo, p.product) for p in ds.pairs) == [(1, 10), (2, 10)]
    reasons = sorted((m.file, m.photo, m.reason) for m in ds.missing)
    assert reasons == [("retrieval_tops.json", 102, "shop image missing"),
                       ("train_pairs_tops.json", 1, "no shop image of the product")]


def test_load_reports_street_rows_when_street_image_is_missing(tmp_path):
    ds = street2shop.load(_real_layout(tmp_path, images=[2, 100, 101, 102]))
    assert [(p.photo, p.product) for p in ds.pairs] == [(2, 10)]
    assert sorted((m.index, m.reason) for m in ds.missing) == [(0, "street image missing"), (1, "street image missing")]


# --- malformed files ------------------------------------------------------------------------
def test_load_raises_data_error_naming_file_when_json_is_malformed(tmp_path):
    _real_layout(tmp_path, pairs='[{"photo": 1, "product": 10,')
    with pytest.raises(DataError, match=r"train_pairs_tops\.json is not valid JSON.*line 1"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_when_pairs_file_is_not_a_list(tmp_path):
    _real_layout(tmp_path, pairs={"photo": 1})
    with pytest.raises(DataError, match=r"train_pairs_tops\.json: expected a JSON list"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_naming_row_when_bbox_is_missing(tmp_path):
    _real_layout(tmp_path, pairs=[{"photo": 1, "product": 10}])
    with pytest.raises(DataError, match=r"train_pairs_tops\.json\[0\].*'bbox'"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_when_bbox_has_non_positive_size(tmp_path):
    _real_layout(tmp_path, pairs=[{"photo": 1, "product": 10, "bbox": {"left": 0, "top": 0, "width": 0, "height": 5}}])
    with pytest.raises(DataError, match="non-positive"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_when_bbox_lies_outside_any_decodable_photo(tmp_path):
    _real_layout(tmp_path, pairs=[{"photo": 1, "product": 10, "bbox": {"left": 0, "top": 2**70, "width": 3, "height": 4}}])
    with pytest.raises(DataError, match=r"train_pairs_tops\.json\[0\].*outside any photo"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_when_ids_are_not_integers(tmp_path):
    _real_layout(tmp_path, retrieval=[{"product": "ten", "photo": 100}])
    with pytest.raises(DataError, match=r"retrieval_tops\.json\[0\].*'product' must be an integer"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_when_street_and_shop_ids_overlap(tmp_path):
    _real_layout(tmp_path, retrieval=[{"product": 10, "photo": 100}, {"product": 11, "photo": 1}])
    with pytest.raises(DataError, match="both street photos .* and shop photos .*disjoint"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_naming_line_when_photos_txt_is_malformed(tmp_path):
    _real_layout(tmp_path)
    (tmp_path / "photos" / "photos.txt").write_text("1,http://x/1.jpg\nnot-a-line\n")
    with pytest.raises(DataError, match=r"photos\.txt:2: expected 'id,url'"):
        street2shop.load(tmp_path)


def test_load_raises_data_error_when_photos_txt_is_absent(tmp_path):
    with pytest.raises(DataError, match=r"photos\.txt is missing"):
        street2shop.load(tmp_path)


def test_footwear_load_views_raises_when_ground_truth_lacks_fields(tiny, tmp_path):
    root = tmp_path / "fw"
    shutil.copytree(tiny / "footwear", root / "footwear")
    (root / "footwear" / "ground_truth.json").write_text(json.dumps({"images": [{"path": "views/x/y.jpg"}]}))
    with pytest.raises(DataError, match="lacks one of"):
        footwear.load_views(root)


def test_colour_baseline_reports_hit_rates_between_zero_and_one(tiny):
    res = difficulty.colour_baseline(tiny, "train", k=3)
    assert res["queries"] > 0 and 0 <= res["top1"] <= res["top3"] <= 1
    assert 0 <= res["top1_errors_in_hard_negative_group"] <= 1
