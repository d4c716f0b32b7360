"""The ``thumbnails`` Triton model (python backend, BLS) against the client chain, on real Triton."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_thumbnails_chain import _views, tiny_view_classifier
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.cli import app as cli_app
from lookserve.client.core import TritonClient
from lookserve.client.look_remote import error_from_server, server_message
from lookserve.client.thumbnails import RemoteThumbnails, ThumbnailPipeline, find_products
from lookserve.server.pipelines.repository import write_pipeline_models
from tinymodels import write_model

pytestmark = pytest.mark.triton


def _request(views: list[bytes]) -> dict[str, np.ndarray]:
    return {"images": np.array(views, dtype=np.object_)}


@pytest.mark.triton
def test_thumbnails_server_answers_the_client_chain_when_sent_one_products_views(tmp_path: Path, triton_factory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.view_classifier_config(image_size=32), warmup=()), tiny_view_classifier)
    write_pipeline_models(repo, catalog="unused")  # look is not loaded here
    server = triton_factory(repo, models=["view_classifier", "thumbnails"])
    products = find_products(_views(tmp_path / "views", np.random.default_rng(3), products=3, views=4))
    with TritonClient(server.grpc_url) as client:
        chain = ThumbnailPipeline(client)
        for views in products.values():
            data = [p.read_bytes() for p in views]
            want = chain.run("product", data).to_dict()
            r = client.infer("thumbnails", _request(data))
            got = json.loads(r.outputs["thumbnails_json"][0])
            assert {k: v for k, v in got.items() if k != "timings_ms"} == {k: v for k, v in want.items() if k != "timings_ms"}
            best = int(r.outputs["best_view_index"][0])
            assert want["thumbnail"] == f"view {best}"
            np.testing.assert_allclose(r.outputs["view_scores"], [v["best_view"] for v in want["views"]], atol=1e-6)
            assert r.outputs["footwear_type"][0].decode() == want["footwear_type"]
            np.testing.assert_allclose(r.outputs["type_probs"], list(want["type_probs"].values()), atol=1e-6)
            assert got["model_version"] == "1"
        # a broken view: the request's error, with the client chain's message
        broken = [p.read_bytes() for p in next(iter(products.values()))]
        broken[1] = broken[1][:100]
        with pytest.raises(errors.InvalidInputError) as chain_error:
            chain.run("product", broken)
        with pytest.raises(errors.ServerError) as e:
            client.infer("thumbnails", _request(broken))
        err = error_from_server(server_message(e.value))
        assert isinstance(err, errors.InvalidInputError) and str(err) == str(chain_error.value)


@pytest.mark.triton
def test_thumbnails_cli_with_server_writes_what_the_client_chain_writes(tmp_path: Path, triton_factory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.view_classifier_config(image_size=32), warmup=()), tiny_view_classifier)
    write_pipeline_models(repo, catalog="unused")
    server = triton_factory(repo, models=["view_classifier", "thumbnails"])
    root = _views(tmp_path / "views", np.random.default_rng(5), products=4, views=3)
    products = find_products(root)
    with TritonClient(server.grpc_url) as client:
        chain = {r.product: r.to_dict() for r in ThumbnailPipeline(client).run_many(products)}
        remote = {r.product: r.to_dict() for r in RemoteThumbnails(client).run_many(products)}
    strip = lambda d: {k: v for k, v in d.items() if k != "timings_ms"}  # noqa: E731
    # the same thumbnail (by its path here), scores, type and version for every product
    assert {p: strip(d) for p, d in remote.items()} == {p: strip(d) for p, d in chain.items()}
    assert all(Path(d["thumbnail"]).is_file() for d in remote.values())
    outs = {}
    for way in ("chain", "server"):
        args = ["thumbnails", str(root), "--url", server.grpc_url, "--out", str(tmp_path / way), "--no-sheet"]
        run = CliRunner().invoke(cli_app, args + (["--server"] if way == "server" else []))
        assert run.exit_code == 0, run.output
        outs[way] = (tmp_path / way / "thumbnails.csv").read_text()
    assert outs["server"] == outs["chain"] and len(outs["chain"].splitlines()) == 1 + len(products)
