"""`make demo`'s main job, end to end on real Triton with the committed reference weights."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from lookserve.client.evaluation import thumbnail_baselines
from lookserve.demo import DemoOptions, run_demo

ROOT = Path(__file__).resolve().parents[1]

#: What the committed reference weights scored on this test's data set (seed 7, 110 products =
#: 10 per category, 6 street photos / 21 pairs, 6 shoes), minus 0.05 and rounded down. Measured
#: 2026-12-01: detected 0.952, top-1 0.714, top-6 0.905 (chance 0.096 / 0.578), thumbnail 0.833
#: (random view 0.533, never back or sole 0.889), type 1.000 (most common type 0.167).
MINIMUMS = {"look.detected": 0.90, "look.top1_accuracy": 0.66, "look.top6_accuracy": 0.85,
            "thumbnails.thumbnail_accuracy": 0.78, "thumbnails.type_accuracy": 0.95}


def _below_minimums(summary: dict) -> dict[str, tuple[float, float]]:
    """figure → (got, minimum) for every figure under its minimum."""
    got = {**{f"look.{k}": summary["look"][k] for k in ("detected", "top1_accuracy", "top6_accuracy")},
           **{f"thumbnails.{k}": summary["thumbnails"][k] for k in ("thumbnail_accuracy", "type_accuracy")}}
    return {k: (got[k], m) for k, m in MINIMUMS.items() if got[k] < m}


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.triton
@pytest.mark.timeout(600)
def test_demo_runs_both_jobs_end_to_end_when_started_from_reference_weights(tmp_path: Path) -> None:
    options = DemoOptions(out=tmp_path / "demo", weights_root=ROOT / "training" / "weights",
                          model_repository=tmp_path / "repo", products=110, street=6, shoes=6, render=2)
    summary = run_demo(options)

    assert summary["exported"] == ["detector", "embedder", "view_classifier"]
    for name in ("detector", "embedder", "view_classifier"):
        assert (tmp_path / "repo" / name / "1" / "model.onnx").is_file()
        assert summary["served_versions"][name] == ("1",)
    assert summary["catalog"]["photos"] > 110  # several shop photos per product
    look = summary["look"]
    assert look["street_photos"] == 6 and look["failed_photos"] == 0
    assert _below_minimums(summary) == {}
    # the minimums mean something: well above a random ranking of this catalog
    assert look["chance_top1"] + 0.3 < MINIMUMS["look.top1_accuracy"]
    assert look["chance_top6"] + 0.2 < MINIMUMS["look.top6_accuracy"]
    assert look["detected"] <= look["detected_category_only"]
    pngs = sorted((tmp_path / "demo" / "look").glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        result = json.loads(png.with_suffix(".json").read_text())
        width, height = Image.open(png).size
        assert height > 0 and result["source"].endswith(png.stem + ".jpg")
        if result["items"]:  # photo plus one row of shop matches per kept garment
            assert width > 512
    thumbs = summary["thumbnails"]
    assert thumbs["products"] == thumbs["answered"] == 6
    # the baselines printed beside the figures are those of the evaluated shoes' ground truth
    baselines = thumbnail_baselines(tmp_path / "demo" / "data", splits=None)
    assert {k: thumbs[k] for k in baselines} == baselines
    assert (tmp_path / "demo" / "thumbnails" / "contact_sheet.png").is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["look"] == json.loads(json.dumps(look))

    # a second run re-uses the exported versions (same weights) instead of exporting again
    again = run_demo(replace(options, out=tmp_path / "again", products=11, street=1, shoes=1, render=0))
    assert again["exported"] == []
