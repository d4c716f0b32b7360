"""The catalog on a real (embedded) Milvus server: same answers as the hnswlib directory on the
same vectors, filters translated from the tree (literals stay literals), updates as new
collections behind an atomic alias flip that running readers follow, a typed error when the
server is gone and recovery without a new client; and the look chain through Triton on it.

One server for the module, on 127.0.0.1 only (its own network namespace), stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus client (pip install 'lookserve[milvus]') is not installed")
pytest.importorskip("milvus", reason="the embedded Milvus server (pip install 'lookserve[milvus]') is not installed")

from PIL import Image
from test_look_chain import CROP, served, street_photo  # noqa: F401 - `served`: the module's Triton + catalog
from test_look_chain import DIM as LOOK_DIM
from test_look_server import _without_timings
from test_models_swap import LoadThreads
from typer.testing import CliRunner

from lookserve.cli import app
from lookserve.client.catalog import (
    Catalog,
    CatalogBackend,
    EmbedderInfo,
    IndexParams,
    PhotoRecord,
    model_file_sha256,
    open_catalog,
    write_catalog,
)
from lookserve.client.catalog import milvus as mv
from lookserve.client.catalog.address import follow_catalog
from lookserve.client.catalog.directory import open_for_client
from lookserve.client.catalog.filters import FilterError, parse
from lookserve.client.catalog.milvus_server import start_milvus
from lookserve.client.core import TritonClient
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.client.look_remote import RemoteLook
from lookserve.client.models import ModelRepository
from lookserve.client.swap import SwapOptions, swap_embedder
from lookserve.errors import CatalogError, CatalogUnavailable, CatalogVersionMismatch, ConfigError
from lookserve.server.pipelines.repository import write_pipeline_models
from lookserve.ui import logic
from tinymodels import projection_embedder

pytestmark = pytest.mark.milvus

DIM = 16
EMB = EmbedderInfo("embedder", "1", "cd" * 32)
BRANDS = ["acme", "zeta", "nova", 'x" or category != "', None]
INJECTION = BRANDS[3]


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    server = start_milvus(tmp_path_factory.mktemp("milvus"))
    try:
        yield server
    finally:
        server.stop(kill=True)  # its data is a temporary directory: no need for a graceful stop


def _records() -> tuple[list[PhotoRecord], np.ndarray]:
    """240 photos of 150 products in two categories; typed attributes, some missing; raw
    (unnormalised) vectors, so a backend that forgot to normalise would rank differently."""
    rng = np.random.default_rng(7)
    records = []
    for i in range(150):
        category = "tops" if i < 90 else "bags"
        attrs = {"price": float(rng.integers(1, 100)) if i % 7 else None, "brand": BRANDS[i % 5],
                 "in_stock": bool(i % 3) if i % 11 else None, "tags": [t for t in ("sale", "new", "eco") if rng.random() < 0.3]}
        attrs = {k: v for k, v in attrs.items() if v is not None and v != []}
        if i == 42:
            attrs["price"] = 12345.0  # the one product a very selective filter keeps
        for j in range(1 + (i % 3 == 0) + (i % 10 == 0)):
            records.append(PhotoRecord(1000 + i, category, f"img/{i}_{j}.jpg", None, f"product {i}", attrs))
    vectors = rng.normal(size=(len(records), DIM)).astype(np.float32) * rng.uniform(0.2, 5, (len(records), 1)).astype(np.float32)
    return records, vectors


@pytest.fixture(scope="module")
def published(milvus_server, tmp_path_factory):
    records, vectors = _records()
    directory = tmp_path_factory.mktemp("dir") / "catalog"
    write_catalog(directory, records, vectors, EMB, IndexParams(M=12, ef_construction=80, tune_sample=60))
    address = f"{milvus_server.catalog_address}/shop"
    result = mv.publish_catalog(directory, address)
    return {"dir": directory, "address": address, "result": result, "records": records, "vectors": vectors}


def _queries(catalog: Catalog, category: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = catalog.vectors(category)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    q = v[rng.integers(0, len(v), n)] + rng.normal(scale=0.35, size=(n, DIM)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_embedded_milvus_listens_on_loopback_only_when_started(milvus_server) -> None:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True, timeout=10).stdout
    ours = [line for line in out.splitlines() if any(f"pid={p}," in line for p in milvus_server.pids)]
    assert ours, f"no listening socket of {milvus_server.pids} in:\n{out}"
    local = [line.split()[3] for line in ours]
    assert local == [milvus_server.address], local  # the relay's one socket; nothing on 0.0.0.0, [::] or *
    assert not [line for line in out.splitlines() if "milvus" in line], out
    interfaces = Path(f"/proc/{milvus_server.milvus_pid}/net/dev").read_text().splitlines()[2:]
    assert [i.split(":")[0].strip() for i in interfaces] == ["lo"]  # Milvus's own namespace has only loopback


def test_milvus_search_overlaps_hnswlib_when_published_from_the_same_catalog(published) -> None:
    directory = Catalog.open(published["dir"])
    catalog = open_catalog(published["address"])
    assert isinstance(catalog, mv.MilvusCatalog) and isinstance(catalog, CatalogBackend)
    assert catalog.collection == published["result"].collection
    assert catalog.embedder == EMB and catalog.categories == directory.categories
    desc = catalog.describe()
    assert desc["source"] == f"directory:{directory.version}" and desc["counts"]["photos"] == len(published["records"])
    hits = total = 0
    for category in ("tops", "bags"):
        q = _queries(directory, category, 40, seed=1)
        for want, got in zip(directory.search(category, q, k=10), catalog.search(category, q, k=10), strict=True):
            assert len({m.product_id for m in got}) == len(got)  # a product counts once
            hits += len({m.product_id for m in want} & {m.product_id for m in got})
            total += len(want)
            np.testing.assert_allclose(got[0].similarity, want[0].similarity, atol=1e-4)
    assert hits / total >= 0.99, hits / total
    (row,) = catalog.search("tops", _queries(directory, "tops", 1, 2), k=3)
    assert row[0].title.startswith("product ") and row[0].photo_image.startswith("img/")


FILTERS = [
    "price < 30",
    'brand == "acme"',
    'brand in ["zeta", "nova"] and in_stock',
    'not (tags contains "sale")',
    'tags in ["new", "eco"]',
    "not in_stock",
    "in_stock == false",
    'brand != "acme"',
    "price >= 10000",  # very selective: one product
    '(price > 90 or brand == "nova") and not (tags contains "eco")',
    "in_stock in [true]",
]


def test_milvus_filters_equal_hnswlib_when_the_same_filter_is_given(published) -> None:
    directory = Catalog.open(published["dir"])
    catalog = open_catalog(published["address"])
    for category in ("tops", "bags"):
        q = _queries(directory, category, 8, seed=3)
        for text in FILTERS:
            want = directory.search(category, q, k=5, filter=text)
            got = catalog.search(category, q, k=5, filter=parse(text))
            assert [[m.product_id for m in r] for r in got] == [[m.product_id for m in r] for r in want], (category, text)
    (only,) = catalog.search("tops", _queries(directory, "tops", 1, 4), k=5, filter="price >= 10000")
    assert [m.product_id for m in only] == [1042]


def test_milvus_filter_keeps_a_string_literal_literal_when_it_holds_quotes(published) -> None:
    catalog = open_catalog(published["address"])
    expression = mv.to_milvus_expression(parse(f"brand == '{INJECTION}'"), catalog.attributes)
    assert expression == '(h_brand == true and a_brand == "x\\" or category != \\"")'
    q = _queries(Catalog.open(published["dir"]), "tops", 4, seed=5)
    rows = catalog.search("tops", q, k=50, filter=f"brand == '{INJECTION}'")
    ids = {m.product_id for r in rows for m in r}
    want = {r.product_id for r in published["records"] if r.category == "tops" and r.attributes.get("brand") == INJECTION}
    assert ids == want and len(want) < 20
    with pytest.raises(FilterError, match="unknown attribute 'category'"):
        catalog.search("tops", q, k=5, filter='category == "bags"')  # names come from the schema only


def test_milvus_update_flips_alias_for_running_readers_when_products_change(published, milvus_server) -> None:
    address = published["address"]
    ref = mv.MilvusCatalogRef(address, interval_s=0.05)
    old = ref.get()
    removed = 1003  # tops, two photos
    rm_vec = np.stack([v for r, v in zip(published["records"], published["vectors"], strict=True) if r.product_id == removed])
    rm_q = (rm_vec[:1] / np.linalg.norm(rm_vec[:1])).astype(np.float32)
    new_vec = np.random.default_rng(9).normal(size=(1, DIM)).astype(np.float32)
    new_q = new_vec / np.linalg.norm(new_vec)
    answers: list[tuple[str, set[int]]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            catalog = ref.get()
            try:
                rows = catalog.search("tops", np.concatenate([rm_q, new_q]), k=3)
                answers.append((catalog.version, {m.product_id for r in rows for m in r}))
            except BaseException as e:  # noqa: BLE001 - every failure is counted
                failures.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        result = mv.update_milvus_catalog(
            address, add=[PhotoRecord(5000, "tops", "img/new.jpg", None, "new product", {"price": 5.0})],
            remove=[removed], new_vectors=new_vec, keep=0, params=mv.MilvusParams(flush=False))
        deadline = time.monotonic() + 10
        while ref.get().version != result.collection and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert result.previous == old.collection and result.collection != old.collection
    versions = {v for v, _ in answers}
    assert versions == {old.collection, result.collection}, versions  # readers saw both, without restart
    for version, ids in answers:  # each answer is one version's: never the removed and the new product together
        assert (removed in ids) == (version == old.collection) and (5000 in ids) == (version == result.collection)
    client = old.client
    assert client.describe_alias("shop")["collection_name"] == result.collection
    assert client.has_collection(old.collection)  # kept until pruned
    fresh = open_catalog(address)
    assert fresh.describe()["parent"] == old.collection and fresh.products([removed]) == {}
    assert mv.prune(address, keep=1) == [old.collection] and not client.has_collection(old.collection)


def test_milvus_catalog_raises_unavailable_within_deadline_and_recovers_when_server_restarts(published, milvus_server) -> None:
    catalog = mv.MilvusCatalog.open(published["address"], mv.MilvusParams(timeout_s=3.0))
    q = _queries(Catalog.open(published["dir"]), "bags", 2, seed=6)
    before = [[m.product_id for m in r] for r in catalog.search("bags", q, k=4)]
    milvus_server.stop(kill=True)  # as a crash would: no goodbye to its clients or to etcd
    try:
        t0 = time.monotonic()
        with pytest.raises(CatalogUnavailable, match="cannot be reached"):
            catalog.search("bags", q, k=4)
        assert time.monotonic() - t0 < 3.0 + 2.0
    finally:
        milvus_server.start()
    deadline, after = time.monotonic() + 60, None
    while after is None:  # the same object, no new client: it answers once gRPC has reconnected
        try:
            after = [[m.product_id for m in r] for r in catalog.search("bags", q, k=4)]
        except CatalogUnavailable:
            if time.monotonic() > deadline:
                raise
    assert after == before


@pytest.mark.triton
def test_look_chain_matches_directory_when_catalog_is_on_milvus(served, milvus_server, tmp_path: Path) -> None:  # noqa: F811
    address = f"{milvus_server.catalog_address}/look"
    pushed = CliRunner().invoke(app, ["catalog", "milvus-push", str(served["catalog"]), address, "--no-flush"])
    assert pushed.exit_code == 0, pushed.output
    assert json.loads(pushed.stdout)["collection"] == "look__e1__v1"
    refused = CliRunner().invoke(app, ["catalog", "milvus-push", str(served["catalog"]), "milvus://127.0.0.1:1/9bad"])
    assert refused.exit_code == 2 and "error: catalog address" in refused.output
    img = street_photo([(230, "tops"), (240, "bags")], seed=1)
    path = tmp_path / "street.png"
    Image.fromarray(img).save(path)
    with TritonClient(served["server"].grpc_url) as client:
        on_milvus = LookPipeline(client, open_catalog(address, client, served["repo"]), LookConfig(k=4)).run(path)
        on_disk = LookPipeline(client, open_for_client(served["catalog"], client, served["repo"]), LookConfig(k=4)).run(path)
    assert [i.detection.category for i in on_milvus.items] == ["tops", "bags"]
    for a, b in zip(on_milvus.items, on_disk.items, strict=True):
        assert [m.product_id for m in a.matches] == [m.product_id for m in b.matches]
        np.testing.assert_allclose([m.similarity for m in a.matches], [m.similarity for m in b.matches], atol=1e-5)
    assert on_milvus.catalog == f"{milvus_server.catalog_address}/look__e1__v1"
    gone = on_milvus.items[0].matches[0].product_id
    updated = CliRunner().invoke(app, ["catalog", "update", address, "--remove", str(gone), "--keep", "1"])
    assert updated.exit_code == 0, updated.output
    assert "look__e1__v2 (from look__e1__v1)" in updated.stdout and "pruned look__e1__v1" in updated.stdout
    after = open_catalog(address, client=None)
    assert after.collection == "look__e1__v2" and after.products([gone]) == {}
    with pytest.raises(CatalogError):
        open_catalog(f"{milvus_server.catalog_address}/nothing_here")


class _EmbedderV2:
    """A new embedder version: a fixed random projection of the crop's pixels, answering as "2"."""

    name, input_size, version = "embedder", 8, "2"

    def __init__(self) -> None:
        self.projection = np.random.default_rng(2).normal(size=(8 * 8 * 3, DIM)).astype(np.float32)

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        v = (crops.reshape(len(crops), -1).astype(np.float32) / 255 - 0.5) @ self.projection
        return v / np.linalg.norm(v, axis=1, keepdims=True), self.version


def test_milvus_new_embedder_version_gets_its_own_collection_when_alias_flips(published, milvus_server, tmp_path) -> None:
    address = published["address"]
    ref = mv.MilvusCatalogRef(address, interval_s=0)
    before = ref.get()
    rng = np.random.default_rng(8)
    records = []
    for i, category in enumerate(["tops"] * 4 + ["bags"] * 3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        records.append(PhotoRecord(7000 + i, category, path.name, path, f"v2 product {i}", {}))
    staged = mv.publish_records(records, _EmbedderV2(), address, tmp_path / "partial", model_sha256="ef" * 32,
                                params=mv.MilvusParams(flush=False), keep=0, flip=False)
    assert staged.collection.startswith("shop__e2__v") and staged.previous is None
    assert ref.get().collection == before.collection  # staged, not served
    with pytest.raises(CatalogVersionMismatch, match="version 2"):  # bound to the version that embedded it
        mv.MilvusCatalog.open(f"{milvus_server.catalog_address}/{staged.collection}", served_versions=["1"])
    assert mv.flip_alias(address, staged.collection) == before.collection
    now = ref.get()
    assert now.collection == staged.collection and now.embedder == EmbedderInfo("embedder", "2", "ef" * 32)
    (row,) = now.search("bags", _EmbedderV2().embed(np.zeros((1, 8, 8, 3), np.uint8))[0], k=3)
    assert {m.product_id for m in row} <= {7004, 7005, 7006}
    assert open_catalog(f"{milvus_server.catalog_address}/{before.collection}").embedder == EMB  # the old pair stays


def test_milvus_drop_collection_refuses_when_the_alias_serves_it(published) -> None:
    address = published["address"]
    serving = open_catalog(address).collection
    every = mv.versions_of(address)
    assert serving in every and mv.versions_of(address, "2") == [c for c in every if "__e2__" in c]
    with pytest.raises(CatalogError, match="flip the alias away from it first"):
        mv.drop_collection(address, serving)
    assert mv.versions_of(address) == every and open_catalog(address).collection == serving


def _street(tmp_path: Path) -> Path:
    path = tmp_path / "street.png"
    Image.fromarray(street_photo([(230, "tops"), (240, "bags")], seed=1)).save(path)
    return path


@pytest.fixture(scope="module")
def on_milvus(served, milvus_server) -> str:  # noqa: F811
    """The Triton-built catalog of `served` pushed once behind alias "served" (read by the UI and
    the look model; the swap, last, flips it to v2 and back)."""
    address = f"{milvus_server.catalog_address}/served"
    mv.publish_catalog(served["catalog"], address, params=mv.MilvusParams(flush=False))
    return address


@pytest.mark.triton
def test_ui_searches_the_milvus_catalog_when_given_a_milvus_address(served, milvus_server, on_milvus,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    address = on_milvus
    path = _street(tmp_path)
    services = logic.connect(logic.UiConfig(url=served["server"].grpc_url, catalog=address,
                                            model_repository=served["repo"]))
    try:
        assert services.look_error is None and isinstance(services.catalog, mv.MilvusCatalog)
        view = logic.run_look(services, logic.load_input(path.name, path), k=4)
        want = LookPipeline(services.client, open_for_client(served["catalog"], services.client, served["repo"]),
                            LookConfig(k=4)).run(path)
        caption = logic.catalog_caption(services.catalog)
        attributes = logic.catalog_attributes(services.catalog)
    finally:
        services.close()
    assert [i.category for i in view.items] == ["tops", "bags"]
    assert [[m.product_id for m in i.matches] for i in view.items] == [[m.product_id for m in i.matches] for i in want.items]
    assert view.result.catalog == f"{milvus_server.catalog_address}/served__e1__v1"
    assert caption.startswith(f"Catalog {address}: 26 products (26 shop photos) in 3 categories, built by embedder v1")
    assert attributes == {"i": "number"}


@pytest.mark.triton
def test_look_model_answers_the_client_chains_products_when_its_catalog_is_a_milvus_alias(
    served, milvus_server, on_milvus, tmp_path: Path  # noqa: F811
) -> None:
    address = on_milvus
    path = _street(tmp_path)
    server = served["server"]
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as client:
        write_pipeline_models(served["repo"], catalog=address)
        client.load_model("look")
        try:
            got = RemoteLook(client).run(path)
            chain = LookPipeline(client, open_catalog(address, client, served["repo"]))
            want = json.loads(chain.run(path).to_json())
        finally:
            client.unload_model("look")
    assert got["catalog"] == f"{milvus_server.catalog_address}/served__e1__v1"
    assert [[m["product_id"] for m in i["matches"]] for i in got["items"]] == \
        [[m["product_id"] for m in i["matches"]] for i in want["items"]]
    assert len(got["items"]) == 2 and all(i["matches"] for i in got["items"])
    assert _without_timings(got) == _without_timings(want)


class _MilvusClients(LoadThreads):
    """Threads running the look chain on a Milvus alias followed with ``follow_catalog``."""

    def __init__(self, url: str, address: str, street: Path, threads: int = 2) -> None:
        self.client = TritonClient(url, timeout_s=20)
        self.ref = follow_catalog(address, self.client, interval_s=0.05)
        self.pipeline = LookPipeline(self.client, self.ref)
        self.street = street
        self.results: list[tuple[float, str, str, str, int]] = []  # start, answered, catalog's, collection, items
        super().__init__(threads)

    def _run(self, i: int) -> None:
        self._loop(self._look)

    def _look(self) -> None:
        t0 = time.time()
        r = self.pipeline.run(self.street)
        self.results.append((t0, r.model_versions.get("embedder", ""), r.catalog_embedder["version"], r.catalog,
                             len(r.items)))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.client.close()


@pytest.mark.triton
def test_swap_embedder_flips_the_milvus_alias_without_failed_or_mixed_answers_when_under_load(
    served, milvus_server, on_milvus, tmp_path: Path  # noqa: F811
) -> None:
    """Last of the module: it swaps the module Triton's embedder to v2 and back to v1 (rollback)."""
    address = on_milvus
    street = _street(tmp_path)
    candidate = projection_embedder(tmp_path / "candidate" / "model.onnx", size=CROP, dim=LOOK_DIM, seed=2)
    server = served["server"]
    options = SwapOptions(quiet_s=0.3, max_wait_s=20.0, poll_s=0.05, batch_size=5, concurrency=2,
                          allow_unverified=True, milvus_flush=False)
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
        with pytest.raises(ConfigError, match="served__e1__v1 names a collection, not an alias"):
            swap_embedder(admin, served["repo"], f"{address}__e1__v1", served["records"], onnx_path=candidate,
                          options=options)
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin, \
            _MilvusClients(server.grpc_url, address, street) as load:
        report = swap_embedder(admin, served["repo"], address, served["records"], onnx_path=candidate,
                               options=options, images_root=served["root"] / "shop")
        t_done = time.time()
        time.sleep(0.3)
    assert load.failures == []
    built_with: dict[str, str] = {}
    for _, answered, recorded, collection, items in load.results:  # no answer mixes versions
        if collection not in built_with:
            built_with[collection] = open_catalog(collection).embedder.version
        assert answered == recorded == built_with[collection], (answered, recorded, collection)
        assert items == 2
    assert {r[1] for r in load.results} == {"1", "2"}
    assert all(r[1] == "2" for r in load.results if r[0] > t_done)
    base = milvus_server.catalog_address
    assert (report.old_catalog, report.new_catalog) == (f"{base}/served__e1__v1", f"{base}/served__e2__v2")
    assert [st.name for st in report.steps] == ["publish", "load_both", "build", "flip", "drain", "unload"]
    assert report.serving == (2,) and report.drained
    milvus = open_catalog(address)
    assert milvus.collection == "served__e2__v2" and milvus.client.has_collection("served__e1__v1")  # kept for rollback
    sha2 = model_file_sha256(served["repo"], "embedder", "2")
    assert milvus.embedder == EmbedderInfo("embedder", "2", sha2)
    # rollback: the same command, the old collection reused (nothing re-embedded), v1 serving again;
    # without --reuse-catalog nor photos it stops before the switch and the v2 pair keeps serving
    key = tmp_path / "key"
    key.write_text(server.repository_key)
    back = ["models", "swap-embedder", "--catalog-root", address, "--version", "1", "--allow-unverified",
            "--quiet", "0.3", "--max-wait", "20", "--url", server.grpc_url, "--key-file", str(key),
            "-r", str(served["repo"])]
    refused = CliRunner().invoke(app, back)
    assert refused.exit_code == 2 and "must be built: give the shop photos" in refused.output, refused.output
    assert "embedder version 2 and served__e2__v2 keep serving; version 1 was retired" in refused.output
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
        assert ModelRepository(served["repo"]).loaded_versions(admin, "embedder") == (2,)
    assert open_catalog(address).collection == "served__e2__v2"
    back = CliRunner().invoke(app, [*back, "--reuse-catalog"])
    assert back.exit_code == 0, back.output
    assert "version 2 (served__e2__v2) -> version 1 (served__e1__v1)" in back.stdout
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
        assert ModelRepository(served["repo"]).loaded_versions(admin, "embedder") == (1,)
    assert open_catalog(address).collection == "served__e1__v1" and not milvus.client.has_collection("served__e1__v3")
