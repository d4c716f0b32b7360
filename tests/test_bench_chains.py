"""bench look / bench thumbnails against real Triton: one chain request, the models' counts in Triton's statistics."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_look_chain import img_bytes, served, street_photo  # noqa: F401 - served: detector + embedder + catalog
from test_thumbnails_chain import SIZE, tiny_view_classifier
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.bench.load import chain_workload, read_report
from lookserve.cli import app
from lookserve.errors import ConfigError
from tinymodels import write_model


@pytest.mark.triton
def test_bench_thumbnails_counts_one_batched_request_per_product_when_cli_runs(tmp_path, triton_factory):
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.view_classifier_config(image_size=SIZE), warmup=()), tiny_view_classifier)
    server = triton_factory(repo, models=["view_classifier"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "thumbnails", "--url", server.grpc_url, "--views", "3", "--photo-size", "48",
                                      "--levels", "1,2", "--duration", "0.7", "--max-requests", "20", "--warmup", "0.1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = read_report(out / "thumbnails.json")
    assert report["workload"]["kind"] == "chain" and report["workload"]["items_per_request"] == 3
    for point in report["points"]:
        stats = point["triton"]["view_classifier"]
        assert point["errors"] == {} and 0 < point["requests"] <= 20
        assert stats["requests"] == point["requests"] and point["agreement"]["counts_match"] is True
        assert stats["inferences"] == 3 * point["requests"]  # all views of a product in one request
        assert 0 < stats["server_ms"] <= point["service_latency"]["mean_ms"]


@pytest.mark.triton
def test_bench_look_counts_each_models_requests_exactly_when_cli_runs_open_loop(served, tmp_path):  # noqa: F811
    photos = tmp_path / "street"
    photos.mkdir()
    for i, slots in enumerate([[(230, "tops"), (240, "bags")], [(200, "hats")], [(100, "tops")]]):  # the last: filtered out
        (photos / f"{i}.png").write_bytes(img_bytes(street_photo(slots, seed=i)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "look", "--url", served["server"].grpc_url, "--catalog", str(served["catalog"]),
                                      "--photos", str(photos), "--mode", "constant", "--levels", "15", "--duration", "1",
                                      "--max-requests", "10", "--warmup", "0.2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    point = read_report(out / "look.json")["points"][0]
    assert point["errors"] == {}, point["error_examples"]
    assert 0 < point["requests"] <= 10
    assert point["agreement"]["counts_match"] is True
    assert point["triton"]["detector"]["requests"] == point["requests"]
    # request i sends photo i % 3 (sorted by name); photo 2's only garment is filtered out, so it never embeds
    embedded = sum(1 for i in range(point["requests"]) if i % 3 != 2)
    assert point["triton"]["embedder"]["requests"] == embedded == point["agreement"]["bench_model_requests"]["embedder"]
    assert point["breakdown"]["total_ms"] >= point["breakdown"]["compute_ms"] > 0
    assert point["latency"]["mean_ms"] >= point["service_latency"]["mean_ms"] - 1e-6  # open loop: from intended time


def test_chain_workload_refuses_when_chain_unknown():
    with pytest.raises(ConfigError, match="unknown chain"):
        chain_workload("catalog", client=None)
