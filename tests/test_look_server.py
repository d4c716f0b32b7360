"""The ``look`` Triton model (python backend, BLS) against the client chain, on real Triton.

One server for the module: the tiny detector and embedder of ``test_look_chain`` (answers
controlled by pixels), a catalog built through the served embedder, and ``look`` written by
:func:`lookserve.server.pipelines.repository.write_pipeline_models` with that catalog.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_look_chain import (
    M,
    S,
    module_triton,
    shop_records,
    street_photo,
    write_look_models,
)
from test_models_embedder_swap import FAST, PHOTO_SLOTS, _served
from test_models_swap import LoadThreads
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.cli import app
from lookserve.client.catalog import TritonEmbedder, build_catalog, open_for_client
from lookserve.client.catalog.store import manifest_checksum
from lookserve.client.core import TritonClient
from lookserve.client.look import FilterConfig, LookConfig, LookPipeline
from lookserve.client.look_remote import (
    RemoteLook,
    config_for_request,
    error_from_server,
    error_text,
    request_tensors,
    result_from_dict,
    server_message,
)
from lookserve.client.swap import swap_embedder
from lookserve.demo import compare_one_call
from lookserve.modelconfig import ModelConfig
from lookserve.server.pipelines.repository import (
    SHIM,
    check_embedder_on_disk,
    error_from_message,
    metadata_from_config,
    open_catalog_ref,
    write_pipeline_models,
)

ROOT = Path(__file__).resolve().parent.parent


def _png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _without_timings(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "timings_ms"}


def _outcome(fn):
    """The document without timings, or (error class, message)."""
    try:
        return _without_timings(fn())
    except errors.LookserveError as e:
        return type(e).__name__, str(e)


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("look-server")
    repo = root / "repo"
    write_look_models(repo)
    server = module_triton(repo, root / "triton")
    try:
        shop = root / "shop"
        records = shop_records(shop, ["tops"] * 12 + ["bags"] * 8 + ["hats"] * 6, np.random.default_rng(5),
                               lambda i: {"i": i})
        with TritonClient(server.grpc_url, repository_key=server.repository_key) as client:
            build_catalog(records, root / "catalog", TritonEmbedder(client), batch_size=5, concurrency=3,
                          model_repository=repo, images_root=shop)
            write_pipeline_models(repo, catalog=str(root / "catalog"))
            client.load_model("look")
        yield {"server": server, "repo": repo, "catalog": root / "catalog", "root": root}
    finally:
        if request.session.testsfailed:
            print((root / "triton" / "tritonserver.log").read_text(errors="replace")[-4000:])
        server.stop()


def _chain(client, served, **config) -> LookPipeline:
    return LookPipeline(client, open_for_client(served["catalog"], client, served["repo"]), LookConfig(**config))


PHOTOS = [
    [(230, "tops"), (240, "bags"), (200, "hats")],
    [(250, "tops"), (100, "bags")],  # bags below min_score
    [(230, "tops"), (240, "tops"), (220, "bags")],  # two tops: best per category
    [(10, "hats")],  # nothing kept
]


@pytest.mark.triton
def test_look_server_json_equals_client_chain_apart_from_timings_when_given_generated_photos(served, tmp_path) -> None:
    with TritonClient(served["server"].grpc_url) as client:
        chain = _chain(client, served)
        remote = RemoteLook(client)
        compared = 0
        for seed, slots in enumerate(PHOTOS):
            for fmt in ("PNG", "WEBP", "JPEG"):  # JPEG is lossy: the pixel-coded answers may break, alike on both
                path = tmp_path / f"street-{seed}.{fmt.lower()}"
                path.write_bytes(_png(street_photo(slots, seed=seed), fmt))
                want, got = _outcome(lambda p=path: json.loads(chain.run(p).to_json())), _outcome(lambda p=path: remote.run(p))
                assert got == want, (seed, fmt)
                compared += isinstance(got, dict)
        assert compared >= 2 * len(PHOTOS)
        got = remote.run(tmp_path / "street-0.png")
        assert got["model_versions"] == {"detector": "1", "embedder": "1"}
        # the JSON is the document a LookResult writes: it reads back whole
        assert _without_timings(result_from_dict(got).to_dict()) == _without_timings(got)


@pytest.mark.triton
def test_look_cli_server_writes_the_client_chains_json_apart_from_timings_when_given_photos(served, tmp_path) -> None:

    photos = []
    for seed, slots in enumerate(PHOTOS[:3]):
        photos.append(tmp_path / f"street-{seed}.png")
        photos[-1].write_bytes(_png(street_photo(slots, seed=seed)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    url = served["server"].grpc_url
    runner = CliRunner()
    common = ["look", *map(str, photos), str(bad), "--url", url, "--no-render"]
    chain = runner.invoke(app, [*common, "--catalog", str(served["catalog"]), "--out", str(tmp_path / "chain")])
    server = runner.invoke(app, [*common, "--server", "--out", str(tmp_path / "server")])
    for res in (chain, server):  # one bad photo of four: exit 1, the same message on both paths
        assert res.exit_code == 1 and "bad.jpg is truncated or corrupt" in res.output, res.output
    for photo in photos:
        want = json.loads((tmp_path / "chain" / f"{photo.stem}.json").read_text())
        got = json.loads((tmp_path / "server" / f"{photo.stem}.json").read_text())
        assert _without_timings(got) == _without_timings(want)
    assert runner.invoke(app, ["look", str(photos[0]), "--url", url]).exit_code == 2  # no --catalog, no --server


@pytest.mark.triton
def test_demo_one_call_comparison_reports_identical_json_when_run_on_the_served_catalog(served, tmp_path) -> None:
    photos = []
    for seed, slots in enumerate(PHOTOS):
        photos.append(tmp_path / f"street-{seed}.png")
        photos[-1].write_bytes(_png(street_photo(slots, seed=seed)))
    figures = compare_one_call(served["server"], served["catalog"], photos)
    assert figures["identical_json"] == figures["photos"] == len(PHOTOS)
    # the one call sends the PNG (+ a BYTES length) and gets JSON back; the chain sends the 64x64x3 letterbox + crops
    sent_png = np.mean([p.stat().st_size for p in photos])
    assert figures["one call"]["bytes_per_photo"] > sent_png
    assert sent_png < figures["one call, no masks"]["bytes_per_photo"] < figures["one call"]["bytes_per_photo"]
    assert figures["client chain"]["bytes_per_photo"] > S * S * 3
    assert figures["one call"]["p50_ms"] > 0 and figures["client chain"]["p50_ms"] > 0


@pytest.mark.triton
def test_look_server_honours_k_min_score_and_categories_when_given_per_request(served) -> None:
    data = _png(street_photo(PHOTOS[0], seed=0))
    with TritonClient(served["server"].grpc_url) as client:
        want = json.loads(_chain(client, served, k=2, filter=FilterConfig(min_score=0.85, categories=("tops", "hats")))
                          .run(data).to_json())
        r = client.infer("look", request_tensors(data, k=2, min_score=0.85, categories=("tops", "hats")))
        lean = client.infer("look", request_tensors(data, k=2, min_score=0.85, categories=("tops", "hats"), masks=False))
    got = json.loads(r.outputs["look_json"][0, 0])
    assert np.array(got["items"][0]["mask"]).shape == (M, M)  # the default: the document `lookserve look` writes
    without = json.loads(lean.outputs["look_json"][0, 0])
    assert "mask" not in without["items"][0] and _without_timings(without) == _without_timings(
        json.loads(json.dumps({**want, "items": [{k: v for k, v in i.items() if k != "mask"} for i in want["items"]]})))
    assert _without_timings(got) == _without_timings(want)
    assert [i["category"] for i in got["items"]] == ["tops"]  # bags not requested, hats (200/255) below 0.85
    assert {d["reason"] for d in got["dropped"]} == {"category_not_requested", "score"}
    # typed tensors say the same as the JSON
    assert r.outputs["item_category"].tolist() == [[b"tops"]]
    np.testing.assert_allclose(r.outputs["item_score"][0], [got["items"][0]["score"]], atol=1e-6)
    np.testing.assert_allclose(r.outputs["item_box"][0], [got["items"][0]["box"]], atol=1e-2)
    assert r.outputs["match_product_id"].shape == (1, 1, 2)
    assert r.outputs["match_product_id"][0, 0].tolist() == [m["product_id"] for m in got["items"][0]["matches"]]
    np.testing.assert_allclose(r.outputs["match_similarity"][0, 0],
                               [m["similarity"] for m in got["items"][0]["matches"]], atol=1e-6)


@pytest.mark.triton
def test_look_server_fails_only_the_broken_request_when_batched_with_good_ones(served) -> None:
    good = _png(street_photo(PHOTOS[0], seed=0))
    broken = _png(street_photo(PHOTOS[1], seed=1))[:200]  # truncated PNG
    with TritonClient(served["server"].grpc_url) as client:
        with pytest.raises(errors.InvalidInputError) as chain_error:
            _chain(client, served).run(broken)
        want = _without_timings(json.loads(_chain(client, served).run(good).to_json()))
        results: dict[int, object] = {}
        start = threading.Barrier(8)

        def call(i: int) -> None:
            start.wait()
            try:
                results[i] = RemoteLook(client).run(broken if i % 2 else good)
            except errors.LookserveError as e:
                results[i] = e

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = client.statistics("look")
    for i in range(8):
        if i % 2:
            assert isinstance(results[i], errors.InvalidInputError), results[i]
            assert str(results[i]) == str(chain_error.value)  # the client chain's message, e.g. "... is truncated"
        else:
            assert _without_timings(results[i]) == want
    batches = stats["model_stats"][0]["batch_stats"]
    assert max(int(b["batch_size"]) for b in batches) > 1, batches  # concurrent photos did share execute calls


@pytest.mark.triton
def test_look_server_refuses_bad_knobs_with_a_clear_error_when_request_is_malformed(served) -> None:
    data = _png(street_photo(PHOTOS[0], seed=0))
    with TritonClient(served["server"].grpc_url) as client:
        for tensors, words in (
            (request_tensors(data, k=0), "k must be ≥ 1"),
            (request_tensors(data, categories=("spaceships",)), "unknown categories"),
            ({"image": np.array([[data], [data]], dtype=np.object_)}, "one photo per request"),
        ):
            with pytest.raises(errors.ServerError) as e:
                client.infer("look", tensors)
            err = error_from_server(server_message(e.value))
            assert isinstance(err, errors.InvalidInputError) and words in str(err), str(e.value)


@pytest.mark.triton
def test_look_model_fails_to_load_with_reason_when_catalog_is_missing_or_of_another_embedder_version(served) -> None:
    repo = served["repo"]
    with TritonClient(served["server"].grpc_url, repository_key=served["server"].repository_key) as client:
        try:
            write_pipeline_models(repo, catalog=str(served["root"] / "no-such-catalog"))
            with pytest.raises(errors.ServerError, match="no-such-catalog.*not a catalog directory"):
                client.load_model("look")
            # a catalog whose manifest names embedder version 7, which the repository does not hold
            other = served["root"] / "catalog-v7"
            shutil.copytree(served["catalog"], other)
            manifest = json.loads((other / "manifest.json").read_text())
            manifest["embedder"]["version"] = "7"
            manifest["checksum"] = manifest_checksum(manifest)  # a catalog written this way, not a damaged one
            (other / "manifest.json").write_text(json.dumps(manifest))
            write_pipeline_models(repo, catalog=str(other))
            with pytest.raises(errors.ServerError, match="embedder version 7.*holds versions \\[1\\]"):
                client.load_model("look")
        finally:
            write_pipeline_models(repo, catalog=str(served["catalog"]))
            client.load_model("look")


# ------------------------------------------------------------------------------------------
# Without Triton: the pieces the model is built of
# ------------------------------------------------------------------------------------------
def test_committed_look_and_thumbnails_entries_equal_generated_when_regenerated(tmp_path: Path) -> None:
    write_pipeline_models(tmp_path)
    for name in ("look", "thumbnails"):
        committed = ROOT / "model_repository" / name
        assert (committed / "config.pbtxt").read_text() == (tmp_path / name / "config.pbtxt").read_text(), name
        assert (committed / "1" / "model.py").read_text() == (tmp_path / name / "1" / "model.py").read_text(), name
    assert "lookserve.server.pipelines.look" in SHIM.format(name="look", module="lookserve.server.pipelines.look")
    config = ModelConfig.read(ROOT / "model_repository" / "look" / "config.pbtxt")
    assert config.max_batch_size > 0 and config.dynamic_batching is not None
    assert config.input("image").dtype == "STRING" and not config.input("image").optional
    assert config.input("k").optional and config.parameters["catalog"] == "../runs/demo/catalog"


def test_metadata_from_config_matches_triton_shapes_when_batching() -> None:
    meta = metadata_from_config(contracts.detector_config())
    assert meta.inputs[0].shape == (-1, 512, 512, 3) and meta.inputs[0].datatype == "UINT8"
    assert metadata_from_config(contracts.thumbnails_config()).inputs[0].datatype == "BYTES"


def test_error_from_message_maps_triton_wording_when_model_version_is_gone() -> None:
    assert isinstance(error_from_message("x", "Request for unknown model: 'embedder' version 2 is not found"),
                      errors.ModelNotFound)
    assert isinstance(error_from_message("x", "model 'embedder' version 2 is not ready"), errors.ModelNotReady)
    assert type(error_from_message("x", "boom")) is errors.InternalServerError


def test_error_round_trip_keeps_class_and_message_when_sent_as_text() -> None:
    e = errors.InvalidInputError("image bytes is truncated or corrupt")
    back = error_from_server(f"in ensemble 'look', {error_text(e)}")
    assert type(back) is errors.InvalidInputError and str(back) == str(e)
    assert type(error_from_server("no prefix")) is errors.InternalServerError


def test_config_for_request_refuses_bad_knob_when_k_or_filter_is_invalid() -> None:
    base = LookConfig()
    assert config_for_request(base, k=3, min_score=0.5, categories=("tops",)).filter.categories == ("tops",)
    with pytest.raises(errors.InvalidInputError, match="k must be"):
        config_for_request(base, k=0)
    with pytest.raises(errors.InvalidInputError, match="price <.*expected a value"):
        config_for_request(base, catalog_filter="price <")


def test_open_catalog_ref_names_the_path_when_catalog_is_missing(tmp_path: Path) -> None:
    with pytest.raises(errors.CatalogError, match="nowhere.*not a catalog directory"):
        open_catalog_ref("nowhere", tmp_path)
    with pytest.raises(errors.ConfigError, match="needs the 'catalog' parameter"):
        open_catalog_ref("", tmp_path)


def test_check_embedder_on_disk_refuses_when_version_folder_is_missing(tmp_path: Path) -> None:
    catalog = SimpleNamespace(path=tmp_path / "c", embedder=SimpleNamespace(name="embedder", version="2"))
    (tmp_path / "embedder" / "1").mkdir(parents=True)
    with pytest.raises(errors.CatalogVersionMismatch, match="version 2.*holds versions \\[1\\]"):
        check_embedder_on_disk(tmp_path, catalog)
    (tmp_path / "embedder" / "2").mkdir()
    check_embedder_on_disk(tmp_path, catalog)


# ------------------------------------------------------------------------------------------
# The embedder hot swap under clients that only call `look`
# ------------------------------------------------------------------------------------------
@pytest.mark.triton
def test_look_server_answers_without_failures_or_mixed_versions_when_embedder_is_swapped(tmp_path, triton_factory) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url
    write_pipeline_models(s["repo"], catalog=str(s["root"]), catalog_poll_s=0.05)
    manifests: dict[str, str] = {}

    class Clients(LoadThreads):
        def __init__(self) -> None:
            self.client = TritonClient(url, timeout_s=20)
            self.remote = RemoteLook(self.client)
            self.rows: list[tuple[float, str, str, str, int]] = []  # start, answered, recorded, catalog, items
            super().__init__(3)

        def _run(self, i: int) -> None:
            self._loop(self._look)

        def _look(self) -> None:
            t0 = time.time()
            doc = self.remote.run(s["street"])
            self.rows.append((t0, doc["model_versions"].get("embedder", ""), doc["catalog_embedder"]["version"],
                              doc["catalog"], len(doc["items"])))

        def __exit__(self, *exc) -> None:
            super().__exit__(*exc)
            self.client.close()

    with TritonClient(url, repository_key=s["server"].repository_key) as admin:
        admin.load_model("look")
        with Clients() as load:
            swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=s["candidate"], options=FAST,
                          images_root=s["shop"])
            t_done = time.time()
            time.sleep(0.5)
    assert load.failures == []
    assert len(load.rows) > 10
    for _, answered, recorded, catalog, items in load.rows:
        if catalog not in manifests:
            manifests[catalog] = json.loads((Path(catalog) / "manifest.json").read_text())["embedder"]["version"]
        assert answered == recorded == manifests[catalog], (answered, recorded, catalog)
        assert items == len(PHOTO_SLOTS)
    assert {r[1] for r in load.rows} == {"1", "2"}
    assert all(r[1] == "2" for r in load.rows if r[0] > t_done)


def test_remote_look_refuses_switches_the_model_does_not_take_when_configured(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="crop"):
        RemoteLook(None, LookConfig(crop="mask"))
    with pytest.raises(errors.ConfigError, match="--all-instances"):
        RemoteLook(None, LookConfig(filter=FilterConfig(best_per_category=False)))
    remote = RemoteLook(None, LookConfig(k=2, filter=FilterConfig(min_score=0.5, categories=("tops",))))
    photo = tmp_path / "p.png"
    photo.write_bytes(_png(street_photo(PHOTOS[0])))
    sent = remote.request(photo, name="p.png", include_masks=False)
    assert sorted(sent) == ["categories", "image", "k", "masks", "min_score", "source"]
    assert sent["image"][0, 0] == photo.read_bytes() and sent["k"].tolist() == [[2]]
    assert sent["categories"].tolist() == [[b"tops"]] and sent["masks"].tolist() == [[False]]
