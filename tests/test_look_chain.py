"""Shop the look end to end against real Triton, with tiny ONNX models built here.

The tiny detector reads its answer from the letterboxed image, so each test controls it with
pixels: for slot d, pixel (row S/2, column d) carries the score (red / 255) and the class
(green // 20); pixel (S/2, 0)'s blue // 10 is num_detections. Boxes and masks are constants in
letterboxed pixels. Test photos are S wide, so the letterbox only pads vertically (scale 1).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
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
from lookserve.client.catalog import (
    Catalog,
    PhotoRecord,
    TritonEmbedder,
    build_catalog,
    exact_search,
    open_for_client,
)
from lookserve.client.catalog.store import manifest_checksum
from lookserve.client.core import AsyncTritonClient, TritonClient
from lookserve.client.evaluation import evaluate_pairs
from lookserve.client.look import AsyncLookPipeline, FilterConfig, LookConfig, LookPipeline
from lookserve.errors import CatalogIntegrityError, CatalogVersionMismatch
from lookserve.images import crop_box, crop_mask, letterbox
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.taxonomy import CATEGORIES
from tinymodels import projection_embedder, run_onnx, write_model

pytestmark = pytest.mark.triton

S = 64  # detector input
CROP = 32  # embedder input
DIM = 16
D = 4  # detection slots
M = 28  # mask size
H = 40  # test photo height (pad_y = 12)
PAD_Y = (S - H) // 2
ROW = S // 2  # the letterboxed row that carries the answer; row ROW - PAD_Y of the photo

#: constant boxes (x1, y1, x2, y2) in letterboxed pixels: all inside the photo's content
BOXES = np.array([[4, 14, 30, 40], [20, 20, 60, 50], [34, 13, 62, 30], [8, 30, 40, 51]], np.float32)


def tiny_detector(path: Path) -> Path:
    mask = np.zeros((1, D, M, M), np.float32)
    mask[..., : M // 2] = 1.0  # left half of every box
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf"], ["mean"], axes=[1, 2, 3], keepdims=1),  # [B,1,1,1]
        helper.make_node("Mul", ["mean", "zero"], ["z4"]),
        helper.make_node("Reshape", ["z4", "shape_b11"], ["z3"]),  # [B,1,1]
        helper.make_node("Add", ["z3", "boxes_c"], ["boxes"]),  # [B,D,4]
        helper.make_node("Add", ["z4", "masks_c"], ["masks"]),  # [B,D,M,M]
        helper.make_node("Slice", ["xf", "starts", "ends", "axes"], ["row"]),  # [B,1,D,3]
        helper.make_node("Reshape", ["row", "shape_bd3"], ["px"]),  # [B,D,3]
        helper.make_node("Gather", ["px", "c0"], ["red"], axis=2),  # [B,D]
        helper.make_node("Div", ["red", "c255"], ["scores"]),
        helper.make_node("Gather", ["px", "c1"], ["green"], axis=2),
        helper.make_node("Div", ["green", "c20"], ["g20"]),
        helper.make_node("Floor", ["g20"], ["gf"]),
        helper.make_node("Cast", ["gf"], ["classes"], to=TensorProto.INT32),
        helper.make_node("Gather", ["px", "c2"], ["blue"], axis=2),  # [B,D]
        helper.make_node("Slice", ["blue", "s0", "s1", "ax1"], ["blue0"]),  # [B,1]
        helper.make_node("Div", ["blue0", "c10"], ["b10"]),
        helper.make_node("Floor", ["b10"], ["bf"]),
        helper.make_node("Cast", ["bf"], ["num_detections"], to=TensorProto.INT32),
    ]
    consts = {
        "zero": np.array(0.0, np.float32),
        "shape_b11": np.array([-1, 1, 1], np.int64),
        "shape_bd3": np.array([-1, D, 3], np.int64),
        "boxes_c": BOXES[None],
        "masks_c": mask,
        "starts": np.array([ROW, 0], np.int64),
        "ends": np.array([ROW + 1, D], np.int64),
        "axes": np.array([1, 2], np.int64),
        "c0": np.array(0, np.int64),
        "c1": np.array(1, np.int64),
        "c2": np.array(2, np.int64),
        "c255": np.array(255.0, np.float32),
        "c20": np.array(20.0, np.float32),
        "c10": np.array(10.0, np.float32),
        "s0": np.array([0], np.int64),
        "s1": np.array([1], np.int64),
        "ax1": np.array([1], np.int64),
    }
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, S, S, 3])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, D, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, D]),
            helper.make_tensor_value_info("classes", TensorProto.INT32, [None, D]),
            helper.make_tensor_value_info("masks", TensorProto.FLOAT, [None, D, M, M]),
            helper.make_tensor_value_info("num_detections", TensorProto.INT32, [None, 1]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def street_photo(slots: list[tuple[int, str]], seed: int = 0) -> np.ndarray:
    """A random S×H photo whose answer row says: slot d has (red value, category)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (H, S, 3), dtype=np.uint8)
    r = ROW - PAD_Y
    img[r, :D] = 0
    img[r, 0, 2] = 10 * len(slots)
    for d, (red, category) in enumerate(slots):
        img[r, d, 0] = red
        img[r, d, 1] = 20 * CATEGORIES.index(category) + 5
    return img


def shop_photo(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)


def write_look_models(repo: Path, embedder_seed: int = 3) -> None:
    """The tiny detector and embedder (version 1, no warm-up) the look tests serve."""
    write_model(repo, replace(contracts.detector_config(input_size=S, max_detections=D, mask_size=M), warmup=()),
                tiny_detector)
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=CROP), warmup=()),
                lambda p: projection_embedder(p, size=CROP, dim=DIM, seed=embedder_seed))


def shop_records(shop: Path, categories, rng: np.random.Generator, attributes=lambda i: {}) -> list[PhotoRecord]:
    """One generated shop photo per entry of ``categories`` written to ``shop`` (created), as
    catalog records with product ids 100, 101, … and ``attributes(i)``."""
    shop.mkdir()
    records = []
    for i, category in enumerate(categories):
        path = shop / f"{i}.png"
        Image.fromarray(shop_photo(rng)).save(path)
        records.append(PhotoRecord(100 + i, category, path.name, path, f"{category} #{i}", attributes(i)))
    return records


def module_triton(repo: Path, work_dir: Path, models=("detector", "embedder")) -> TritonServer:
    """A started Triton for a module-scoped fixture (free port, the given models loaded)."""
    server = TritonServer(ServerOptions(model_repository=repo, load_models=tuple(models), grpc_port=0,
                                        work_dir=work_dir, ready_timeout_s=120.0, exit_timeout_s=10))
    server.start()
    return server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One Triton for the module: detector, embedder (v1) and a catalog built through it."""
    root = tmp_path_factory.mktemp("look")
    repo = root / "repo"
    write_look_models(repo)
    server = module_triton(repo, root / "triton")
    try:
        shop = root / "shop"
        records = shop_records(shop, ["tops"] * 12 + ["bags"] * 8 + ["hats"] * 6, np.random.default_rng(5),
                               lambda i: {"i": i})
        with TritonClient(server.grpc_url) as client:
            build_catalog(records, root / "catalog", TritonEmbedder(client), batch_size=5, concurrency=3,
                          model_repository=repo, images_root=shop)
        yield {"server": server, "repo": repo, "catalog": root / "catalog", "records": records, "root": root}
    finally:
        server.stop()


def _crop_direct(img: np.ndarray, box: np.ndarray, mask=None) -> np.ndarray:
    return crop_mask(img, box, mask, CROP) if mask is not None else crop_box(img, box, CROP)


def _expected(served, img, keep, mask=False, k=6) -> list[dict]:
    repo = served["repo"]
    square, _ = letterbox(img, S)
    outs = run_onnx(repo / "detector" / "1" / "model.onnx", {"images": square[None]})
    scores, classes, masks = outs[1], outs[2], outs[3]
    catalog = Catalog.open(served["catalog"])
    crops, metas = [], []
    for d in keep:
        box = BOXES[d] - np.array([0, PAD_Y, 0, PAD_Y], np.float32)
        crops.append(_crop_direct(img, box, masks[0, d] if mask else None))
        metas.append((d, CATEGORIES[int(classes[0, d])], float(scores[0, d]), box))
    if not crops:
        return []
    (embs,) = run_onnx(repo / "embedder" / "1" / "model.onnx", {"crops": np.stack(crops)})
    out = []
    for (_d, category, score, box), emb in zip(metas, embs, strict=True):
        idx, sims = exact_search(catalog.vectors(category), emb[None], k)
        out.append({"category": category, "score": score, "box": box.tolist(),
                    "ids": catalog.product_ids(category)[idx[0]].tolist(), "sims": sims[0].tolist()})
    return out


def _got(result) -> list[dict]:
    return [{"category": i.detection.category, "score": i.detection.score, "box": list(i.detection.box),
             "ids": [m.product_id for m in i.matches], "sims": [m.similarity for m in i.matches]} for i in result.items]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert [g["category"] for g in got] == [w["category"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g["ids"] == w["ids"]
        np.testing.assert_allclose(g["sims"], w["sims"], atol=1e-5)
        np.testing.assert_allclose(g["box"], w["box"], atol=1e-4)
        assert g["score"] == pytest.approx(w["score"])


def _pipeline(client, served, **config) -> LookPipeline:
    return LookPipeline(client, open_for_client(served["catalog"], client, served["repo"]), LookConfig(**config))


def test_look_equals_onnxruntime_and_exact_search_when_run_through_triton(served, tmp_path: Path) -> None:
    img = street_photo([(230, "tops"), (240, "bags"), (200, "hats")], seed=1)
    path = tmp_path / "street.png"
    Image.fromarray(img).save(path)
    with TritonClient(served["server"].grpc_url) as client:
        result = _pipeline(client, served).run(path)
    _assert_same(_got(result), _expected(served, img, [0, 1, 2]))
    assert result.model_versions == {"detector": "1", "embedder": "1"}
    assert all(len(i.matches) == 6 for i in result.items[:1]) and result.width == S and result.height == H
    assert set(result.timings_ms) >= {"decode", "letterbox", "detect", "filter", "crop", "embed", "search", "total"}
    data = json.loads(result.to_json())
    assert data["items"][0]["matches"][0]["title"].startswith("tops #")
    assert np.array(data["items"][0]["mask"]).shape == (M, M)


def test_look_crops_from_full_resolution_original_when_photo_is_larger_than_input(served) -> None:
    small = street_photo([(230, "tops"), (240, "bags")], seed=9)
    big = np.kron(small, np.ones((2, 2, 1), np.uint8))  # 128×80: letterbox scale 1/2, exact 2×2 averages
    big[1::2, 1::2] = np.random.default_rng(0).integers(0, 256, (H, S, 3), dtype=np.uint8)  # detail only the original has
    r = ROW - PAD_Y
    big[2 * r : 2 * r + 2, : 2 * D] = np.kron(small[r : r + 1, :D], np.ones((2, 2, 1), np.uint8))  # keep the answer row
    with TritonClient(served["server"].grpc_url) as client:
        result = _pipeline(client, served).run(img_bytes(big))
    square, lb = letterbox(big, S)
    assert lb.scale == 0.5 and (lb.pad_x, lb.pad_y) == (0, PAD_Y)
    catalog = Catalog.open(served["catalog"])
    boxes = (BOXES[:2] - np.array([0, PAD_Y, 0, PAD_Y], np.float32)) * 2
    crops = np.stack([crop_box(big, b, CROP) for b in boxes])  # from the original, not the square
    (embs,) = run_onnx(served["repo"] / "embedder" / "1" / "model.onnx", {"crops": crops})
    assert (result.width, result.height) == (2 * S, 2 * H)
    for item, box, emb in zip(result.items, boxes, embs, strict=True):
        np.testing.assert_allclose(item.detection.box, box, atol=1e-4)
        idx, sims = exact_search(catalog.vectors(item.detection.category), emb[None], 6)
        assert [m.product_id for m in item.matches] == catalog.product_ids(item.detection.category)[idx[0]].tolist()
        np.testing.assert_allclose([m.similarity for m in item.matches], sims[0], atol=1e-5)


def test_catalog_build_equals_onnxruntime_when_embedded_through_triton(served) -> None:
    catalog = Catalog.open(served["catalog"])
    records = [r for r in served["records"] if r.category == "bags"]
    crops = np.stack([crop_box(np.asarray(Image.open(r.path)), np.array([0, 0, 48, 48]), CROP) for r in records])
    (want,) = run_onnx(served["repo"] / "embedder" / "1" / "model.onnx", {"crops": crops})
    np.testing.assert_allclose(catalog.vectors("bags"), want, atol=1e-6)
    assert catalog.manifest.embedder.model_sha256 is not None
    assert catalog.manifest.categories["tops"].recall_at_k >= 0.99


def test_look_drops_low_scores_when_score_filter_is_on(served) -> None:
    img = street_photo([(150, "tops"), (240, "bags")], seed=2)  # 150/255 = 0.59 < 0.75
    with TritonClient(served["server"].grpc_url) as client:
        on = _pipeline(client, served).run(img_bytes(img))
        off = _pipeline(client, served, filter=FilterConfig(use_min_score=False)).run(img_bytes(img))
        lower = _pipeline(client, served, filter=FilterConfig(min_score=0.5)).run(img_bytes(img))
    _assert_same(_got(on), _expected(served, img, [1]))
    assert [(d.detection.category, d.reason) for d in on.dropped] == [("tops", "score")]
    _assert_same(_got(off), _expected(served, img, [0, 1]))
    _assert_same(_got(lower), _expected(served, img, [0, 1]))


def test_look_drops_categories_missing_from_catalog_when_category_filter_is_on(served) -> None:
    img = street_photo([(230, "belts"), (240, "tops")], seed=3)
    with TritonClient(served["server"].grpc_url) as client:
        on = _pipeline(client, served).run(img_bytes(img))
        off = _pipeline(client, served, filter=FilterConfig(catalog_categories_only=False)).run(img_bytes(img))
    _assert_same(_got(on), _expected(served, img, [1]))
    assert [(d.detection.category, d.reason) for d in on.dropped] == [("belts", "category_not_in_catalog")]
    assert [i.detection.category for i in off.items] == ["belts", "tops"]
    assert off.items[0].matches == ()  # nothing to match in the catalog, but reported


def test_look_keeps_best_instance_per_category_when_that_rule_is_on(served) -> None:
    img = street_photo([(220, "tops"), (250, "tops"), (230, "bags"), (240, "tops")], seed=4)
    with TritonClient(served["server"].grpc_url) as client:
        on = _pipeline(client, served).run(img_bytes(img))
        off = _pipeline(client, served, filter=FilterConfig(best_per_category=False)).run(img_bytes(img))
    _assert_same(_got(on), _expected(served, img, [1, 2]))
    assert sorted(d.detection.index for d in on.dropped if d.reason == "not_best_in_category") == [0, 3]
    _assert_same(_got(off), _expected(served, img, [0, 1, 2, 3]))


def test_look_crops_by_mask_when_mask_option_is_set(served) -> None:
    img = street_photo([(230, "hats")], seed=5)
    with TritonClient(served["server"].grpc_url) as client:
        box = _pipeline(client, served).run(img_bytes(img))
        mask = _pipeline(client, served, crop="mask").run(img_bytes(img))
    _assert_same(_got(mask), _expected(served, img, [0], mask=True))
    assert _got(box)[0]["sims"] != _got(mask)[0]["sims"]


def test_look_returns_no_items_when_nothing_is_detected(served) -> None:
    img = street_photo([], seed=6)
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        before = int(client.statistics("embedder")["model_stats"][0].get("inference_count", 0))
        result = pipe.run(img_bytes(img))
        after = int(client.statistics("embedder")["model_stats"][0].get("inference_count", 0))
    assert result.items == () and result.dropped == ()
    assert after == before  # no embedder request at all
    assert result.model_versions == {"detector": "1"} and "embed" not in result.timings_ms
    assert json.loads(result.to_json())["items"] == []


def test_look_embeds_all_crops_in_one_request_when_several_items_are_kept(served) -> None:
    img = street_photo([(230, "tops"), (240, "bags"), (200, "hats")], seed=7)
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        before = client.statistics("embedder")["model_stats"][0]
        pipe.run(img_bytes(img))
        after = client.statistics("embedder")["model_stats"][0]
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 3
    requests = int(after["inference_stats"]["success"].get("count", 0)) - int(before["inference_stats"]["success"].get("count", 0))
    assert requests == 1


def test_look_refuses_when_catalog_embedder_version_differs(served, tmp_path: Path) -> None:
    other = tmp_path / "catalog"
    shutil.copytree(served["catalog"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["embedder"]["version"] = "7"
    manifest["checksum"] = manifest_checksum(manifest)  # a catalog written this way, not a damaged one
    (other / "manifest.json").write_text(json.dumps(manifest))
    img = street_photo([(230, "tops")], seed=8)
    with TritonClient(served["server"].grpc_url) as client:
        with pytest.raises(CatalogVersionMismatch, match="version 7.*serves version\\(s\\) 1"):
            open_for_client(other, client)
        catalog = Catalog.open(other)  # opened without asking the server
        unpinned = LookPipeline(client, catalog, LookConfig(pin_embedder_version=False))
        with pytest.raises(CatalogVersionMismatch, match="embedder version 1 answered.*built with version 7"):
            unpinned.run(img_bytes(img))
        with pytest.raises(CatalogVersionMismatch, match="needs embedder version 7"):
            _run_after_swap(client, served, catalog, img)


def _run_after_swap(client, served, catalog, img):
    pipe = LookPipeline(client, Catalog.open(served["catalog"]))
    pipe.swap_catalog(catalog)  # a pinned request for version 7, which the server does not have
    return pipe.run(img_bytes(img))


def test_look_refuses_when_index_file_is_tampered(served, tmp_path: Path) -> None:
    other = tmp_path / "catalog"
    shutil.copytree(served["catalog"], other)
    data = bytearray((other / "index_tops.bin").read_bytes())
    data[-5] ^= 0x01
    (other / "index_tops.bin").write_bytes(bytes(data))
    with TritonClient(served["server"].grpc_url) as client, pytest.raises(CatalogIntegrityError, match="index_tops.bin"):
        open_for_client(other, client)


def test_look_async_equals_sync_when_many_images_are_pipelined(served) -> None:
    imgs = [street_photo([(230, "tops"), (240, "bags")], seed=s) for s in range(10, 16)]
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        sync = [_got(r) for r in pipe.run_many([img_bytes(i) for i in imgs], concurrency=3)]

    async def go():
        async with AsyncTritonClient(served["server"].grpc_url) as aclient:
            pipe = await AsyncLookPipeline.create(aclient, Catalog.open(served["catalog"]))
            return await pipe.run_many([img_bytes(i) for i in imgs] + [b"not an image"], concurrency=3)

    results = asyncio.run(go())
    assert [_got(r) for r in results[:-1]] == sync
    assert "not an image" in str(results[-1]) or "allowed format" in str(results[-1])
    _assert_same(sync[0], _expected(served, imgs[0], [0, 1]))


def img_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_look_cli_writes_json_and_png_when_catalog_is_built_by_cli(served, tmp_path: Path) -> None:

    shop = served["root"] / "shop"
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text("id,category,image,title\n" + "".join(
        f"{r.product_id},{r.category},{r.image},{r.title}\n" for r in served["records"]))
    url = served["server"].grpc_url
    runner = CliRunner()
    built = runner.invoke(app, ["catalog", "build", str(shop), "--metadata", str(csv_path), "--out", str(tmp_path / "cat"),
                                "--url", url, "--batch-size", "4", "--model-repository", str(served["repo"])])
    assert built.exit_code == 0, built.output
    np.testing.assert_allclose(Catalog.open(tmp_path / "cat").vectors("tops"),
                               Catalog.open(served["catalog"]).vectors("tops"), atol=1e-6)
    info = runner.invoke(app, ["catalog", "info", str(tmp_path / "cat"), "--url", url, "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["embedder"]["version"] == "1"

    img = street_photo([(230, "tops"), (240, "bags")], seed=21)
    photo = tmp_path / "street.png"
    Image.fromarray(img).save(photo)
    res = runner.invoke(app, ["look", str(photo), "--catalog", str(tmp_path / "cat"), "--url", url,
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "street.json").read_text())
    want = _expected(served, img, [0, 1])
    assert [[m["product_id"] for m in i["matches"]] for i in data["items"]] == [w["ids"] for w in want]
    assert (tmp_path / "out" / "street.png").stat().st_size > 5000

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = runner.invoke(app, ["look", str(bad), "--catalog", str(tmp_path / "cat"), "--url", url,
                              "--out", str(tmp_path / "out2"), "--no-render"])
    assert res.exit_code == 1 and "bad.jpg is truncated or corrupt" in res.output


def test_look_evaluation_counts_hits_only_on_overlapping_items_when_run_on_street2shop_pairs(served, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "meta" / "json").mkdir(parents=True)
    (root / "photos").mkdir()
    lines = []
    for r in served["records"]:  # shop photos: ids 1000+
        Image.open(r.path).save(root / "images" / f"{r.product_id + 900}.png")
        lines.append(f"{r.product_id + 900},images/{r.product_id + 900}.png")
    street_a = street_photo([(230, "tops"), (220, "hats")], seed=31)  # detected: tops (slot 0), hats (slot 1)
    street_b = street_photo([], seed=32)  # nothing detected
    for pid, img in ((1, street_a), (2, street_b)):
        Image.fromarray(img).save(root / "images" / f"{pid}.png")
        lines.append(f"{pid},images/{pid}.png")
    (root / "photos" / "photos.txt").write_text("\n".join(lines) + "\n")
    x1, y1, x2, y2 = (BOXES[0] - np.array([0, PAD_Y, 0, PAD_Y])).tolist()  # slot 0's box in photo pixels
    tops_box = {"left": x1, "top": y1, "width": x2 - x1, "height": y2 - y1}
    far_box = {"left": 0, "top": 0, "width": 10, "height": 10}  # slot 1 (hats) is at (20, 8, 60, 38): IoU 0
    want_ids = _expected(served, street_a, [0])[0]["ids"]
    target = want_ids[2]  # a product the chain ranks third
    for category in ("tops", "bags", "hats"):
        (root / "meta" / "json" / f"retrieval_{category}.json").write_text(json.dumps(
            [{"product": r.product_id, "photo": r.product_id + 900} for r in served["records"] if r.category == category]))
    (root / "meta" / "json" / "test_pairs_tops.json").write_text(json.dumps([{"photo": 1, "product": target, "bbox": tops_box}]))
    hats_product = next(r.product_id for r in served["records"] if r.category == "hats")
    (root / "meta" / "json" / "test_pairs_hats.json").write_text(json.dumps([{"photo": 1, "product": hats_product, "bbox": far_box}]))
    (root / "meta" / "json" / "test_pairs_bags.json").write_text(json.dumps([{"photo": 2, "product": 112, "bbox": far_box}]))
    with TritonClient(served["server"].grpc_url) as client:
        figures = evaluate_pairs(_pipeline(client, served), root, "test", concurrency=2)
    assert figures["pairs"] == 3 and figures["street_photos"] == 2 and figures["failed_photos"] == 0
    assert figures["detected_category_only"] == pytest.approx(2 / 3)  # tops and hats kept
    assert figures["detected"] == pytest.approx(1 / 3)  # but only tops where the ground truth is
    assert figures["top1_accuracy"] == 0.0 and figures["top6_accuracy"] == pytest.approx(1 / 3)
    assert figures["per_category"]["tops"]["top6_accuracy"] == 1.0
    assert figures["per_category"]["hats"] == {"pairs": 1, "detected": 0.0, "detected_category_only": 1.0,
                                               "top1_accuracy": 0.0, "top6_accuracy": 0.0,
                                               "chance_top1": 1 / 6, "chance_top6": 1.0}  # 6 hats in the catalog
    assert figures["per_category"]["bags"]["detected"] == 0.0
    assert figures["chance_top1"] == pytest.approx((1 / 12 + 1 / 6 + 1 / 8) / 3)
    # the CLI prints the same figures, as JSON or as a table with a row per category and one for all


    args = ["eval", "look", str(root), "--catalog", str(served["catalog"]), "--url", served["server"].grpc_url]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(json.dumps(figures))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.split("│")[1:-1]] for line in res.stdout.splitlines())
            if len(r) == 8}
    assert rows["hats"] == ["1", "0.000", "1.000", "0.000", "0.167", "0.000", "1.000"], res.stdout
    assert rows["all"][:3] == ["3", "0.333", "0.667"], res.stdout
