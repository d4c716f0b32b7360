"""Thumbnails against real Triton with a tiny view classifier built with onnx's helper API."""

from __future__ import annotations

import asyncio
import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.cli import app
from lookserve.client.core import AsyncTritonClient, TritonClient
from lookserve.client.thumbnails import (
    AsyncThumbnailPipeline,
    ThumbnailConfig,
    ThumbnailPipeline,
    _Steps,
    decide,
    find_products,
)
from lookserve.errors import ContractMismatch, InvalidInputError
from lookserve.taxonomy import FOOTWEAR_TYPES
from tinymodels import run_onnx, write_model

SIZE = 32


def tiny_view_classifier(path: Path, seed: int = 0) -> Path:
    """type_probs = softmax(mean_rgb @ W + b); best_view = sigmoid(mean_rgb @ w) — mean_rgb in [0, 1]."""
    rng = np.random.default_rng(seed)
    consts = {
        "W": rng.normal(size=(3, len(FOOTWEAR_TYPES))).astype(np.float32) * 4,
        "b": rng.normal(size=(len(FOOTWEAR_TYPES),)).astype(np.float32),
        "w": np.array([[6.0], [-3.0], [-3.0]], np.float32),  # red views look "best"
        "c255": np.array(255.0, np.float32),
    }
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "c255"], ["xn"]),
        helper.make_node("ReduceMean", ["xn"], ["mean"], axes=[1, 2], keepdims=0),  # [B,3]
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["type_probs"], axis=1),
        helper.make_node("MatMul", ["mean", "w"], ["bv"]),
        helper.make_node("Sigmoid", ["bv"], ["best_view"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_view_classifier",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("type_probs", TensorProto.FLOAT, [None, len(FOOTWEAR_TYPES)]),
         helper.make_tensor_value_info("best_view", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def _views(root: Path, rng: np.random.Generator, products: int = 4, views: int = 5) -> Path:
    for p in range(products):
        d = root / f"shoe{p:02d}"
        d.mkdir(parents=True)
        for _ in range(views):
            colour = rng.integers(0, 256, 3)
            img = np.clip(colour + rng.integers(-20, 21, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{rng.integers(1 << 30):x}.png")
    return root


def _expected(model: Path, product: str, views: list[Path]):
    batch = np.stack([np.asarray(Image.open(v).convert("RGB")) for v in views])
    type_probs, best_view = run_onnx(model, {"images": batch})
    return decide(product, [str(v) for v in views], type_probs, best_view, "1")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.view_classifier_config(image_size=SIZE), warmup=()), tiny_view_classifier)
    return repo


@pytest.mark.triton
def test_thumbnails_equal_onnxruntime_when_classified_through_triton(tmp_path: Path, repo: Path, triton_factory, rng) -> None:
    root = _views(tmp_path / "views", rng)
    products = find_products(root)
    server = triton_factory(repo, models=["view_classifier"])
    model = repo / "view_classifier" / "1" / "model.onnx"
    with TritonClient(server.grpc_url) as client:
        pipe = ThumbnailPipeline(client)
        before = client.statistics("view_classifier")["model_stats"][0]
        results = list(pipe.run_many(products, concurrency=2))
        after = client.statistics("view_classifier")["model_stats"][0]
    # one batched request per product (Triton counts requests in success.count), 5 inferences each
    requests = int(after["inference_stats"]["success"].get("count", 0)) - int(before["inference_stats"]["success"].get("count", 0))
    assert requests == len(products)
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 5 * len(products)
    for r, (name, views) in zip(results, products.items(), strict=True):
        want = _expected(model, name, views)
        assert (r.product, r.thumbnail, r.footwear_type) == (want.product, want.thumbnail, want.footwear_type)
        assert r.best_view == pytest.approx(want.best_view, abs=1e-6)
        assert r.type_probability == pytest.approx(want.type_probability, abs=1e-6)
        assert r.model_version == "1"
        assert max(v.best_view for v in r.views) == r.best_view

    async def go():
        async with AsyncTritonClient(server.grpc_url) as aclient:
            apipe = await AsyncThumbnailPipeline.create(aclient)
            return await apipe.run_many(products, concurrency=2)

    assert [x.to_dict()["views"] for x in asyncio.run(go())] == [x.to_dict()["views"] for x in results]

    too_many = list(products.values())[0] * 4  # 20 views > max_batch_size 16
    with TritonClient(server.grpc_url) as client, pytest.raises(InvalidInputError, match="at most 16 images"):
        ThumbnailPipeline(client).run("big", too_many)


@pytest.mark.triton
def test_thumbnails_cli_writes_csv_json_and_sheet_when_given_a_folder(tmp_path: Path, repo: Path, triton_factory, rng) -> None:
    root = _views(tmp_path / "views", rng, products=3)
    server = triton_factory(repo, models=["view_classifier"])
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["thumbnails", str(root), "--url", server.grpc_url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "thumbnails.csv").open()))
    data = json.loads((out / "thumbnails.json").read_text())
    assert [r["product"] for r in rows] == ["shoe00", "shoe01", "shoe02"] == [d["product"] for d in data]
    model = repo / "view_classifier" / "1" / "model.onnx"
    for row, (name, views) in zip(rows, find_products(root).items(), strict=True):
        assert row["thumbnail"] == _expected(model, name, views).thumbnail
    assert (out / "contact_sheet.png").stat().st_size > 1000


@pytest.mark.triton
def test_eval_thumbnails_cli_prints_accuracy_beside_baselines_when_given_a_data_set(tmp_path: Path, repo: Path,
                                                                                   triton_factory, rng) -> None:
    data = tmp_path / "data"
    views_dir = _views(data / "footwear" / "views", rng, products=4)
    model = repo / "view_classifier" / "1" / "model.onnx"
    truth = []
    for i, (name, views) in enumerate(find_products(views_dir).items()):
        want = _expected(model, name, views)
        best = Path(want.thumbnail).name if i != 2 else next(v.name for v in views if v.name != Path(want.thumbnail).name)
        others = iter(["back", "left", "right", "sole"])
        for v in views:  # the one best view is the front; shoe02's is not the one the model picks
            truth.append({"path": f"views/{name}/{v.name}", "shoe_id": name, "view": "front" if v.name == best else next(others),
                          "type": want.footwear_type, "split": "train" if i == 3 else "test", "best_view": v.name == best})
    (data / "footwear" / "ground_truth.json").write_text(json.dumps({"images": truth}))
    server = triton_factory(repo, models=["view_classifier"])
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "thumbnails", str(data), "--url", server.grpc_url, "--json"])
    assert res.exit_code == 0, res.output
    figures = json.loads(res.stdout)
    assert figures == {"products": 3, "thumbnail_accuracy": pytest.approx(2 / 3), "thumbnail_baseline_random": pytest.approx(0.2),
                       "thumbnail_baseline_no_back_sole": pytest.approx(1 / 3), "type_accuracy": 1.0,
                       "type_baseline_majority": pytest.approx(max(Counter(_types(truth)).values()) / 3),
                       "failed_products": 0}
    res = runner.invoke(app, ["eval", "thumbnails", str(data), "--url", server.grpc_url])
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in res.stdout.splitlines() if line.count("│") == 5]
    assert rows[:2] == [["thumbnail is a best view", "0.667", "random view", "0.200"],
                        ["", "", "never back or sole", "0.333"]], res.stdout


def _types(truth: list[dict]) -> list[str]:
    return [t["type"] for t in truth if t["split"] == "test" and t["view"] == "front"]


def test_decide_picks_highest_best_view_and_mean_type_when_given_outputs() -> None:
    tp = np.zeros((3, 6), np.float32)
    tp[0, 5], tp[1, 0], tp[2, 0] = 1.0, 0.6, 0.6
    tp[1, 5], tp[2, 5] = 0.4, 0.4  # mean: zip 0.6, lace-up 0.4
    r = decide("s", ["a", "b", "c"], tp, np.array([[0.2], [0.9], [0.5]]), "3")
    assert (r.thumbnail, r.best_view, r.footwear_type) == ("b", pytest.approx(0.9), "zip")
    assert r.type_probability == pytest.approx(0.6)
    with pytest.raises(ContractMismatch):
        decide("s", ["a", "b"], tp, np.array([0.1, 0.2]), "3")


def test_thumbnail_prepare_refuses_when_product_has_no_views() -> None:
    with pytest.raises(InvalidInputError, match="at least one view"):
        _Steps(ThumbnailConfig()).prepare([])
