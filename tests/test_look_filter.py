"""The filter step on raw detector outputs (no server): order of rules, edge cases, bad outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lookserve.client.look import FilterConfig, LookConfig, filter_detections
from lookserve.errors import ConfigError, InvalidRequest
from lookserve.images import letterbox
from lookserve.taxonomy import CATEGORIES


def _outputs(rows: list[tuple[str, float, list[float]]], slots: int = 6) -> dict[str, np.ndarray]:
    boxes = np.zeros((1, slots, 4), np.float32)
    scores = np.zeros((1, slots), np.float32)
    classes = np.zeros((1, slots), np.int32)
    for i, (cat, score, box) in enumerate(rows):
        boxes[0, i], scores[0, i], classes[0, i] = box, score, CATEGORIES.index(cat)
    scores[0, len(rows):] = 0.99  # padding slots beyond num_detections must be ignored
    return {"boxes": boxes, "scores": scores, "classes": classes, "masks": np.ones((1, slots, 4, 4), np.float32),
            "num_detections": np.array([[len(rows)]], np.int32)}


_, LB = letterbox(np.zeros((100, 200, 3), np.uint8), 100)  # scale 0.5, pad_y 25


def test_filter_applies_rules_in_order_when_all_are_on() -> None:
    out = _outputs([("tops", 0.9, [0, 30, 50, 70]), ("tops", 0.95, [10, 30, 60, 70]), ("belts", 0.99, [0, 30, 40, 40]),
                    ("bags", 0.5, [0, 30, 40, 60]), ("bags", 0.8, [50, 30, 90, 60])])
    kept, dropped = filter_detections(out, LB, FilterConfig(), {"tops", "bags"})
    assert [(d.index, d.category) for d in kept] == [(1, "tops"), (4, "bags")]
    assert sorted((d.detection.index, d.reason) for d in dropped) == [
        (0, "not_best_in_category"), (2, "category_not_in_catalog"), (3, "score")]
    assert kept[0].box == pytest.approx((20.0, 10.0, 120.0, 90.0))  # back to the 200×100 original


def test_filter_keeps_everything_when_all_rules_are_off() -> None:
    out = _outputs([("tops", 0.1, [0, 30, 50, 70]), ("tops", 0.2, [10, 30, 60, 70]), ("belts", 0.3, [0, 30, 40, 40])])
    config = FilterConfig(use_min_score=False, catalog_categories_only=False, best_per_category=False)
    kept, dropped = filter_detections(out, LB, config, {"tops"})
    assert [d.index for d in kept] == [0, 1, 2] and dropped == []


def test_filter_drops_empty_boxes_when_box_lies_in_the_padding() -> None:
    out = _outputs([("tops", 0.9, [0, 0, 100, 20])])  # entirely in the top padding
    kept, dropped = filter_detections(out, LB, FilterConfig(), {"tops"})
    assert kept == [] and [d.reason for d in dropped] == ["empty_box"]


def test_filter_returns_nothing_when_num_detections_is_zero() -> None:
    assert filter_detections(_outputs([]), LB, FilterConfig(), {"tops"}) == ([], [])


def test_filter_refuses_when_detector_output_is_malformed() -> None:
    out = _outputs([("tops", 0.9, [0, 30, 50, 70])])
    out["classes"][0, 0] = 11
    with pytest.raises(InvalidRequest, match="class 11"):
        filter_detections(out, LB, FilterConfig(), {"tops"})
    out = _outputs([("tops", 0.9, [0, 30, 50, 70])])
    out["num_detections"][0, 0] = 7
    with pytest.raises(InvalidRequest, match="num_detections=7"):
        filter_detections(out, LB, FilterConfig(), {"tops"})


def test_configs_refuse_when_values_are_out_of_range() -> None:
    with pytest.raises(ConfigError):
        FilterConfig(min_score=1.5)
    with pytest.raises(ConfigError):
        LookConfig(k=0)
    with pytest.raises(ConfigError, match="box' or 'mask"):
        LookConfig(crop="polygon")


def test_client_modules_import_nothing_heavy_when_loaded() -> None:
    code = ("import sys, lookserve.client.cli, lookserve.client.look, lookserve.client.thumbnails, "
            "lookserve.client.render, lookserve.client.catalog, lookserve.images; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnxruntime', 'matplotlib', 'faiss', "
            "'streamlit', 'playwright') if m in sys.modules))")  # the lazy allow-list of pyproject's ruff config
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
