"""`make demo`'s main job, end to end on real Triton with the committed reference weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lookserve.demo import DemoOptions, run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.triton
@pytest.mark.timeout(600)
def test_demo_runs_both_jobs_end_to_end_when_started_from_reference_weights(tmp_path: Path) -> None:
    options = DemoOptions(out=tmp_path / "demo", weights_root=ROOT / "training" / "weights",
                          model_repository=tmp_path / "repo", products=22, street=4, shoes=3, render=2)
    summary = run_demo(options)

    assert summary["exported"] == ["detector", "embedder", "view_classifier"]
    for name in ("detector", "embedder", "view_classifier"):
        assert (tmp_path / "repo" / name / "1" / "model.onnx").is_file()
        assert summary["served_versions"][name] == ("1",)
    assert summary["catalog"]["photos"] > 22  # several shop photos per product
    look = summary["look"]
    assert look["street_photos"] == 4 and look["failed_photos"] == 0
    assert 0.0 <= look["top1_accuracy"] <= look["top6_accuracy"] <= look["detected"] <= 1.0
    pngs = sorted((tmp_path / "demo" / "look").glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        result = json.loads(png.with_suffix(".json").read_text())
        width, height = Image.open(png).size
        assert height > 0 and result["source"].endswith(png.stem + ".jpg")
        if result["items"]:  # photo plus one row of shop matches per kept garment
            assert width > 512
    thumbs = summary["thumbnails"]
    assert thumbs["products"] == thumbs["answered"] == 3
    assert (tmp_path / "demo" / "thumbnails" / "contact_sheet.png").is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["look"] == json.loads(json.dumps(look))

    # a second run re-uses the exported versions (same weights) instead of exporting again
    again = run_demo(options)
    assert again["exported"] == []
