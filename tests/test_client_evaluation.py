"""The chains' evaluation (client/evaluation.py) and the one footwear ground-truth reader, without
a server: results are built by hand, ground truth is written or generated here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookserve.client.catalog import Match
from lookserve.client.evaluation import evaluate_thumbnails, score_pairs, thumbnail_baselines
from lookserve.client.look import Detection, LookItem, LookResult
from lookserve.client.thumbnails import decide
from lookserve.data import footwear, synth
from lookserve.data.street2shop import BBox, Pair
from lookserve.errors import DataError, InvalidInputError
from lookserve.taxonomy import CATEGORIES, FOOTWEAR_TYPES
from lookserve.training import clustering


# ------------------------------------------------------------------------------------------
# shop the look: score_pairs
# ------------------------------------------------------------------------------------------
def _pair(photo: Path, product: int, category: str, box: tuple[float, float, float, float]) -> Pair:
    x1, y1, x2, y2 = box
    return Pair(1, product, category, BBox(x1, y1, x2 - x1, y2 - y1), "test", "test", photo, ())


def _result(*items: tuple[str, tuple[float, float, float, float], list[int]]) -> LookResult:
    look_items = tuple(
        LookItem(Detection(i, category, CATEGORIES.index(category), 0.9, box, None),
                 tuple(Match(pid, 0.5, category, "", "", "", {}) for pid in ids))
        for i, (category, box, ids) in enumerate(items))
    return LookResult("p.jpg", 100, 100, look_items, (), {}, {}, "cat")


def test_score_pairs_counts_detected_only_when_box_overlaps_ground_truth_by_half() -> None:
    photo = Path("p.jpg")
    pairs = [_pair(photo, 7, "tops", (0, 0, 40, 40)), _pair(photo, 8, "bags", (50, 50, 90, 90))]
    # tops: right place (IoU 0.81), product 7 first; bags: the right category far from its box
    result = _result(("tops", (2, 2, 38, 38), [7, 1]), ("bags", (0, 0, 30, 30), [8]))
    figures = score_pairs(pairs, {photo: result}, k=6, catalog_products={"tops": 4, "bags": 10})
    assert figures["pairs"] == 2 and figures["min_iou"] == 0.5
    assert figures["detected_category_only"] == 1.0  # the loose definition counts both
    assert figures["detected"] == 0.5  # the strict one only the overlapping tops
    assert figures["top1_accuracy"] == figures["top6_accuracy"] == 0.5  # bags' product 8 is not a hit: wrong box
    assert figures["per_category"]["bags"] == {
        "pairs": 1, "detected": 0.0, "detected_category_only": 1.0, "top1_accuracy": 0.0, "top6_accuracy": 0.0,
        "chance_top1": 0.1, "chance_top6": 0.6}
    assert figures["chance_top1"] == pytest.approx((1 / 4 + 1 / 10) / 2)
    assert figures["chance_top6"] == pytest.approx((1.0 + 0.6) / 2)  # top-6 of 4 products always holds it


def test_score_pairs_scores_zero_when_the_photo_failed_or_the_box_misses_by_a_little() -> None:
    ok, bad = Path("ok.jpg"), Path("bad.jpg")
    pairs = [_pair(ok, 7, "tops", (0, 0, 40, 40)), _pair(bad, 7, "tops", (0, 0, 40, 40))]
    shifted = _result(("tops", (14, 0, 54, 40), [7]))  # IoU 26/54 = 0.48
    figures = score_pairs(pairs, {ok: shifted, bad: InvalidInputError("corrupt")}, k=6)
    assert figures["detected_category_only"] == 0.5 and figures["detected"] == 0.0 and figures["top6_accuracy"] == 0.0
    assert "chance_top1" not in figures  # no catalog sizes given: no chance baseline invented
    loose = score_pairs(pairs, {ok: shifted, bad: InvalidInputError("corrupt")}, k=6, min_iou=0.45)
    assert loose["detected"] == loose["top1_accuracy"] == 0.5


# ------------------------------------------------------------------------------------------
# thumbnails: evaluate_thumbnails
# ------------------------------------------------------------------------------------------
def _truth_root(tmp_path: Path, images: list[dict]) -> Path:
    (tmp_path / "footwear").mkdir(parents=True, exist_ok=True)
    (tmp_path / "footwear" / "ground_truth.json").write_text(json.dumps({"images": images}))
    return tmp_path


def _gt(shoe: str, name: str, view: str, best: bool, type_: str = "zip", split: str = "test") -> dict:
    return {"path": f"views/{shoe}/{name}", "shoe_id": shoe, "view": view, "type": type_, "split": split,
            "best_view": best}


def _thumb(product: str, names: list[str], chosen: int, type_: str = "zip"):
    best = np.full(len(names), 0.1, np.float32)
    best[chosen] = 0.9
    tp = np.tile(np.eye(len(FOOTWEAR_TYPES), dtype=np.float32)[[FOOTWEAR_TYPES.index(type_)]], (len(names), 1))
    return decide(product, [f"/somewhere/{product}/{n}" for n in names], tp, best, "1")


def test_evaluate_thumbnails_matches_views_by_product_when_file_names_repeat_across_products(tmp_path: Path) -> None:
    root = _truth_root(tmp_path, [  # both shoes name their views front.jpg / sole.jpg
        _gt("s1", "front.jpg", "front", True), _gt("s1", "sole.jpg", "sole", False),
        _gt("s2", "front.jpg", "front", False, "buckle"), _gt("s2", "sole.jpg", "sole", True, "buckle"),
    ])
    results = [_thumb("s1", ["front.jpg", "sole.jpg"], 0), _thumb("s2", ["front.jpg", "sole.jpg"], 1, "zip")]
    figures = evaluate_thumbnails(results, root)
    # by file name alone, s2's sole.jpg would take s1's record (not best): accuracy 0.5
    assert figures["thumbnail_accuracy"] == 1.0
    assert figures["type_accuracy"] == 0.5  # s2 is a buckle shoe


def test_evaluate_thumbnails_prints_baselines_of_the_evaluated_views_when_shoes_are_generated(tmp_path: Path) -> None:
    # one generated shoe of each type: 3 of 5 views best, 1 of 5 for zip
    root = synth.generate(tmp_path / "d", synth.SynthConfig(n_products=11, n_street=1, n_shoes=6,
                                                             split_fractions=(0.0, 0.0, 1.0)), seed=3)
    truth = footwear.read_ground_truth(root)
    results = []
    for shoe, views in footwear.load_views(root).items():
        first_best = next(i for i, v in enumerate(views) if v.best_view)
        results.append(_thumb(shoe, [v.path.name for v in views], first_best, views[0].type))
    figures = evaluate_thumbnails(results, root, splits=None)
    types = [t.type for t in truth.values()]
    n_zip = types.count("zip") // 5
    n = len(results)
    assert figures["thumbnail_accuracy"] == 1.0 and figures["type_accuracy"] == 1.0
    assert figures["thumbnail_baseline_random"] == pytest.approx(((n - n_zip) * 3 / 5 + n_zip / 5) / n)
    assert figures["thumbnail_baseline_no_back_sole"] == pytest.approx(((n - n_zip) + n_zip / 3) / n)
    assert figures["type_baseline_majority"] == max(types.count(t) for t in set(types)) / len(types)
    assert thumbnail_baselines(root, splits=None) == {k: v for k, v in figures.items() if "baseline" in k or k == "products"}


def test_evaluate_thumbnails_takes_the_baseline_over_the_views_given_when_a_product_has_fewer(tmp_path: Path) -> None:
    root = _truth_root(tmp_path, [
        _gt("s1", "a.jpg", "front", True), _gt("s1", "b.jpg", "back", False), _gt("s1", "c.jpg", "sole", False),
        _gt("s1", "d.jpg", "left", False), _gt("s2", "e.jpg", "front", True, split="train"),
    ])
    figures = evaluate_thumbnails([_thumb("s1", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], 1),
                                   _thumb("s2", ["e.jpg"], 0)], root)
    assert figures["products"] == 1  # s2 is a training shoe
    assert figures["thumbnail_accuracy"] == 0.0
    assert figures["thumbnail_baseline_random"] == 0.25 and figures["thumbnail_baseline_no_back_sole"] == 0.5


def test_evaluate_thumbnails_raises_when_a_view_or_product_is_not_in_the_ground_truth(tmp_path: Path) -> None:
    root = _truth_root(tmp_path, [_gt("s1", "a.jpg", "front", True)])
    with pytest.raises(DataError, match="no ground truth for view 'b.jpg' of product 's1'"):
        evaluate_thumbnails([_thumb("s1", ["b.jpg"], 0)], root)
    with pytest.raises(DataError, match="product 's9' has no ground truth"):
        evaluate_thumbnails([_thumb("s9", ["a.jpg"], 0)], root)
    with pytest.raises(DataError, match="no thumbnail result"):
        evaluate_thumbnails([_thumb("s1", ["a.jpg"], 0)], root, splits=("val",))


# ------------------------------------------------------------------------------------------
# the one reader: lookserve.data.footwear
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"path": "views/s2/a.jpg"}, "expected views/s1/<name>"),
    ({"path": "a.jpg"}, "expected views/s1/<name>"),
    ({"shoe_id": 1}, "string path and shoe_id"),
    ({"view": "top"}, "unknown view 'top'"),
    ({"type": "velcro"}, "or type 'velcro'"),
    ({"best_view": "yes"}, "true/false best_view"),
    ({"split": None}, "string split"),
])
def test_footwear_read_ground_truth_raises_naming_the_field_when_a_record_is_wrong(tmp_path: Path, change: dict,
                                                                                   message: str) -> None:
    root = _truth_root(tmp_path, [_gt("s1", "a.jpg", "front", True) | change])
    with pytest.raises(DataError, match=message):
        footwear.read_ground_truth(root)


def test_footwear_load_views_raises_when_an_image_has_no_ground_truth_record(tmp_path: Path) -> None:
    root = _truth_root(tmp_path, [_gt("s1", "a.jpg", "front", True)])
    (root / "footwear" / "views" / "s1").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (root / "footwear" / "views" / "s1" / name).write_bytes(b"")
    with pytest.raises(DataError, match="no ground truth for views/s1/b.jpg"):
        footwear.load_views(root)
    assert [v.view for v in footwear.load_views(root, with_truth=False)["s1"]] == [None, None]


def test_training_reads_the_same_ground_truth_as_the_data_reader_when_given_a_generated_set(tmp_path: Path) -> None:
    root = synth.generate(tmp_path / "d", synth.SynthConfig(n_products=11, n_street=1, n_shoes=4), seed=5)
    truth = clustering.read_ground_truth(root)
    views = footwear.load_views(root)
    assert clustering.read_ground_truth is footwear.read_ground_truth
    assert {v.rel: (v.shoe_id, v.view, v.type, v.split, v.best_view) for vs in views.values() for v in vs} == {
        k: (t.shoe, t.view, t.type, t.split, t.best) for k, t in truth.items()}
    assert clustering.shoes_in_split(root, "train") == {s for s, vs in views.items() if vs[0].split == "train"}
    shutil.rmtree(root)
