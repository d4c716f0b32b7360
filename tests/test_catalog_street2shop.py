"""The client CLIs on the data generator's real output (street2shop layout + footwear views),
served by real Triton with tiny models: catalog build, search, thumbnails evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_thumbnails_chain import tiny_view_classifier
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.cli import app
from lookserve.client.catalog import Catalog, records_from_street2shop
from lookserve.client.cli import eval_app
from lookserve.data import synth
from lookserve.images import decode_image, resize_square
from tinymodels import projection_embedder, run_onnx, write_model

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "data", synth.SynthConfig.tiny(), seed=0)


def test_catalog_cli_indexes_every_shop_photo_when_given_generated_data(synth_root: Path, tmp_path: Path, triton_factory) -> None:

    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.embedder_config(dim=32), warmup=()), lambda p: projection_embedder(p, dim=32))
    write_model(repo, replace(contracts.view_classifier_config(image_size=32), warmup=()), tiny_view_classifier)
    server = triton_factory(repo, models=["embedder", "view_classifier"])
    runner = CliRunner()
    out = tmp_path / "catalog"
    res = runner.invoke(app, ["catalog", "build", str(synth_root), "--out", str(out), "--url", server.grpc_url,
                              "--batch-size", "16", "--model-repository", str(repo)])
    assert res.exit_code == 0, res.output

    records = records_from_street2shop(synth_root)
    catalog = Catalog.open(out)
    assert catalog.manifest.counts["photos"] == len(records)
    assert catalog.manifest.counts["products"] == len({r.product_id for r in records})
    assert catalog.categories == {r.category for r in records}
    # a shop photo, embedded with onnxruntime, finds its own product first
    r = records[0]
    crop = resize_square(decode_image(r.path), 224)
    (emb,) = run_onnx(repo / "embedder" / "1" / "model.onnx", {"crops": crop[None]})
    (matches,) = catalog.search(r.category, emb, k=3)
    assert matches[0].product_id == r.product_id and matches[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert catalog.image_path(matches[0].photo_image).is_file()

    figures_path = tmp_path / "thumbs.json"
    res = runner.invoke(app, ["thumbnails", str(synth_root), "--url", server.grpc_url, "--out", str(tmp_path / "thumbs")])
    assert res.exit_code == 0, res.output

    res = runner.invoke(eval_app, ["thumbnails", str(synth_root), "--url", server.grpc_url, "--out", str(figures_path)])
    assert res.exit_code == 0, res.output
    figures = json.loads(figures_path.read_text())
    truth = json.loads((synth_root / "footwear" / "ground_truth.json").read_text())["images"]
    assert figures["products"] == len({g["shoe_id"] for g in truth if g["split"] == "test"})
    assert 0.0 <= figures["thumbnail_accuracy"] <= 1.0 and 0.0 <= figures["type_accuracy"] <= 1.0
    assert np.isfinite(figures["type_accuracy"])
