"""Incremental catalog updates: a new immutable version from the previous one, only new or
changed photos embedded, removed products never found again, recall kept, readers following
the new version under load, interrupted or bad updates changing nothing; on real Triton, the
embedder requests counted through Triton's statistics."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_look_chain import D, M, S, street_photo, tiny_detector
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.cli import app as cli_app
from lookserve.client.catalog import (
    Catalog,
    CatalogWatcher,
    IndexParams,
    PhotoRecord,
    TritonEmbedder,
    build_catalog,
    exact_search,
    read_current,
    recall_at_k,
    records_from_csv,
    set_current,
    update_catalog,
)
from lookserve.client.catalog import update as update_module
from lookserve.client.catalog.store import file_checksums, manifest_checksum
from lookserve.client.core import TritonClient
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.errors import (
    CatalogIntegrityError,
    CatalogVersionMismatch,
    DataError,
    InvalidInputError,
)
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.ui import logic
from tinymodels import projection_embedder, write_model

SIZE = 8  # the fake embedder's crop size
DIM = 16
PARAMS = IndexParams(M=12, ef_construction=60, tune_sample=80)


class CountingEmbedder:
    """Embeds a crop by a fixed random projection of its pixels (deterministic), counting calls."""

    name = "embedder"
    input_size = SIZE

    def __init__(self, version: str = "1", fail_after: int | None = None) -> None:
        self.version = version
        self.calls = 0
        self.rows = 0
        self.fail_after = fail_after
        self.projection = np.random.default_rng(1).normal(size=(SIZE * SIZE * 3, DIM)).astype(np.float32)

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted mid-update")
        self.calls += 1
        self.rows += len(crops)
        v = (crops.reshape(len(crops), -1).astype(np.float32) / 255 - 0.5) @ self.projection
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)).astype(np.float32), self.version


def _photo(folder: Path, name: str, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return path


def _records(folder: Path, ids, category: str = "tops", photos: int = 2, seed: int = 0) -> list[PhotoRecord]:
    out = []
    for pid in ids:
        for j in range(photos):
            path = _photo(folder, f"{pid}_{j}_{seed}.png", seed * 100_000 + pid * 10 + j)
            out.append(PhotoRecord(pid, category, path.name, path, f"{category} {pid}",
                                   {"price": pid % 100, "in_stock": pid % 2 == 0}))
    return out


def _root(tmp_path: Path, n_tops: int = 150, n_bags: int = 40) -> tuple[Path, list[PhotoRecord]]:
    images = tmp_path / "images"
    records = _records(images, range(n_tops)) + _records(images, range(1000, 1000 + n_bags), "bags", photos=1)
    root = tmp_path / "catalogs"
    build_catalog(records, root / "catalog-v1", CountingEmbedder(), PARAMS, batch_size=16, images_root=images)
    set_current(root, "catalog-v1")
    return root, records


def _live_ids(catalog: Catalog, category: str) -> set[int]:
    return set(catalog.product_ids(category).tolist()) - {-1}


# ------------------------------------------------------------------------------------------
# Offline (a counting embedder)
# ------------------------------------------------------------------------------------------
def test_update_embeds_only_new_photos_and_never_returns_removed_products(tmp_path: Path) -> None:
    root, records = _root(tmp_path)
    old = Catalog.open(root)
    images = tmp_path / "images"
    added = _records(images, range(500, 510), seed=1)
    changed = _records(images, [20], seed=2)  # new files for product 20: re-embedded
    same = [r for r in records if r.product_id == 21][:1]  # one of its two photos, unchanged: vector kept
    same = [replace(same[0], title="renamed", attributes={"price": 7.5, "in_stock": True, "brand": "new"})]
    embedder = CountingEmbedder()
    result = update_catalog(root, embedder=embedder, add=added, replace=changed + same, remove=[3, 4, 1001],
                            batch_size=4)
    new = Catalog.open(root)
    assert new.path == result.path == (root / "catalog-v1-u1") and read_current(root) == root / "catalog-v1-u1"
    assert new.manifest.parent == old.version != new.version and new.embedder == old.embedder
    # only the 22 new photos went to the embedder (+ its one probe request), in batches of 4
    assert (result.embedded_photos, result.reused_photos, embedder.rows) == (22, 1, 22 + 1)
    assert embedder.calls == 1 + -(-22 // 4)
    # unchanged photos keep their vectors bit for bit (labels are kept: no rebuild at this size)
    assert result.rebuilt == ()
    np.testing.assert_array_equal(new.vectors("tops")[: old.manifest.categories["tops"].count], old.vectors("tops"))
    np.testing.assert_array_equal(new.vectors("bags")[:40], old.vectors("bags"))
    # removed products are gone, even when searched with their own vectors
    for pid, category in ((3, "tops"), (4, "tops"), (1001, "bags")):
        labels = np.flatnonzero(old.product_ids(category) == pid)
        found = new.search(category, old.vectors(category)[labels], 6)
        assert all(m.product_id != pid for row in found for m in row)
        assert pid not in _live_ids(new, category) and not new.products([pid])
    # added and replaced products are found by their photos
    for r in added[:4] + changed:
        labels = np.flatnonzero(new.product_ids("tops") == r.product_id)
        assert new.search("tops", new.vectors("tops")[labels[:1]], 1)[0][0].product_id == r.product_id
    assert new.products([21])[21]["title"] == "renamed" and new.manifest.attributes["brand"] == "string"
    assert new.search("tops", new.vectors("tops")[:1], 3, filter="brand == 'new'")[0][0].product_id == 21
    assert new.manifest.counts["products"] == 150 + 40 + 10 - 3
    # the old version is untouched: a reader holding it still searches it whole
    assert Catalog.open(root / "catalog-v1").version == old.version


def test_update_rebuilds_a_category_from_stored_vectors_when_deletions_pass_the_threshold(tmp_path: Path) -> None:
    root, records = _root(tmp_path)
    old = Catalog.open(root)
    first = update_catalog(root, remove=list(range(0, 20)), rebuild_fraction=0.2)  # 40 of 300 labels: 13 %
    assert first.rebuilt == () and Catalog.open(root).manifest.categories["tops"].deleted == 40
    second = update_catalog(root, remove=list(range(20, 40)), rebuild_fraction=0.2)  # 80 of 300: 27 %
    assert second.rebuilt == ("tops",)
    assert "vectors_tops.delta.npy" not in first.manifest.files  # removals add no rows: the base is linked
    assert "vectors_tops.delta.npy" not in second.manifest.files  # a rebuild writes one base file
    new = Catalog.open(root)
    info = new.manifest.categories["tops"]
    assert (info.count, info.deleted, info.products) == (220, 0, 110)
    # the rebuilt index holds exactly the live photos' stored vectors, and meets the recall target
    live_old = np.flatnonzero(old.product_ids("tops") >= 40)
    np.testing.assert_array_equal(new.vectors("tops"), old.vectors("tops")[live_old])
    queries = old.vectors("tops")[live_old] + 0.05 * np.random.default_rng(3).normal(size=(220, DIM)).astype(np.float32)
    labels, _ = new.search_labels("tops", queries, 6)
    exact, _ = exact_search(new.vectors("tops"), queries, 6)
    assert info.recall_at_k >= 0.99 and recall_at_k(labels, exact) >= 0.99


def test_update_links_the_base_vectors_and_writes_added_rows_as_a_delta_until_it_passes_its_fraction(
        tmp_path: Path) -> None:
    root, _ = _root(tmp_path)  # tops: 300 rows in the base file
    old = Catalog.open(root)
    images = tmp_path / "images"
    first = update_catalog(root, embedder=CountingEmbedder(), add=_records(images, range(500, 510), seed=1), remove=[3])
    base = first.path / "vectors_tops.npy"
    assert base.stat().st_ino == (root / "catalog-v1" / "vectors_tops.npy").stat().st_ino  # 20 rows: 6.7 % ≤ 10 %
    delta = np.load(first.path / "vectors_tops.delta.npy")
    assert delta.shape == (20, DIM) and "vectors_bags.delta.npy" not in first.manifest.files
    new = Catalog.open(root)
    np.testing.assert_array_equal(new.vectors("tops"), np.concatenate([old.vectors("tops"), delta]))
    np.testing.assert_array_equal(new.vectors_mapped("tops"), new.vectors("tops"))
    picks = np.array([0, 299, 300, 319, 5])
    np.testing.assert_array_equal(new.vector_rows("tops", picks), new.vectors("tops")[picks])
    # a delta row is searched like any other: by HNSW, and by the exact search of a selective filter
    label = int(np.flatnonzero(new.product_ids("tops") == 505)[0])
    assert label >= 300 and new.search("tops", delta[label - 300 : label - 299], 1)[0][0].product_id == 505
    found = new.search("tops", delta[label - 300 : label - 299], 1, filter="price == 5")
    assert new.filtered_paths["exact"] == 1 and found[0][0].product_id == 505
    # 20 more rows: 40 after the base (13 % > 10 %) are written into one new base file
    second = update_catalog(root, embedder=CountingEmbedder(), add=_records(images, range(520, 530), seed=2))
    assert "vectors_tops.delta.npy" not in second.manifest.files and not (second.path / "vectors_tops.delta.npy").exists()
    assert (second.path / "vectors_tops.npy").stat().st_ino != base.stat().st_ino
    latest = Catalog.open(root)
    np.testing.assert_array_equal(latest.vectors("tops")[:320], new.vectors("tops"))
    assert latest.vectors("tops").shape == (340, DIM) and latest.vector_segments("tops")[1] is None


def test_update_keeps_recall_against_exact_search_when_labels_are_marked_deleted(tmp_path: Path) -> None:
    root, _ = _root(tmp_path, n_tops=400)
    update_catalog(root, embedder=CountingEmbedder(), add=_records(tmp_path / "images", range(600, 640), seed=3),
                   remove=list(range(0, 60)), rebuild_fraction=0.5)
    new = Catalog.open(root)
    info = new.manifest.categories["tops"]
    assert info.deleted == 120 and info.recall_at_k >= 0.99
    live = new.live_labels("tops")
    queries = new.vectors("tops")[live] + 0.1 * np.random.default_rng(4).normal(size=(len(live), DIM)).astype(np.float32)
    labels, _ = new.search_labels("tops", queries, 6)
    exact, _ = exact_search(new.vectors("tops")[live], queries, 6)
    assert not np.isin(labels, np.flatnonzero(new.product_ids("tops") < 0)).any()
    assert recall_at_k(labels, live[exact]) >= 0.99


def test_update_leaves_the_serving_catalog_as_it_was_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    root, _ = _root(tmp_path)
    before = sorted(p.name for p in root.iterdir())
    version = Catalog.open(root).version
    added = _records(tmp_path / "images", range(700, 720), seed=4)
    with pytest.raises(KeyboardInterrupt):  # the embedder dies after two batches
        update_catalog(root, embedder=CountingEmbedder(fail_after=2), add=added, batch_size=4, concurrency=1)

    def crash(tmp, out):  # interrupted after every file is written, just before the switch
        raise KeyboardInterrupt("killed before the switch")

    monkeypatch.setattr(update_module, "_switch", crash)
    with pytest.raises(KeyboardInterrupt):
        update_catalog(root, embedder=CountingEmbedder(), add=added, remove=[1])
    after = sorted(p.name for p in root.iterdir() if not p.name.endswith(".update-partial"))
    assert after == before and Catalog.open(root).version == version


@pytest.mark.parametrize("kwargs, message", [
    ({"add": "existing"}, r"already in the catalog; use --replace"),
    ({"remove": [99999]}, r"product\(s\) \[99999\] are not in the catalog"),
    ({"replace": "unknown"}, r"product\(s\) \[424242\] are not in the catalog"),
    ({"remove": [5], "replace": "five"}, r"in both --replace and --remove"),
    ({"add": "typed"}, r"product 888: attribute 'price' expects number, got string '12'"),
    ({}, "nothing to update"),
])
def test_update_changes_nothing_and_names_the_problem_when_input_is_bad(tmp_path: Path, kwargs, message) -> None:
    root, records = _root(tmp_path, n_tops=30, n_bags=5)
    version = Catalog.open(root).version
    images = tmp_path / "images"
    forms = {
        "existing": _records(images, [2], seed=5),
        "unknown": _records(images, [424242], seed=5),
        "five": _records(images, [5], seed=5),
        "typed": [PhotoRecord(888, "tops", records[0].image, records[0].path, "", {"price": "12"})],
    }
    kwargs = {k: forms[v] if isinstance(v, str) else v for k, v in kwargs.items()}
    embedder = CountingEmbedder()
    with pytest.raises(InvalidInputError, match=message):
        update_catalog(root, embedder=embedder, **kwargs)
    assert embedder.calls == 0 and Catalog.open(root).version == version
    assert sorted(p.name for p in root.iterdir()) == ["catalog-v1", "current"]


def test_readers_follow_updates_under_load_with_no_failure_and_no_mixed_answer(tmp_path: Path) -> None:
    """Search threads through a CatalogWatcher while three updates switch in: every answer is
    consistent with the one version it names (its products live there; its removals absent)."""
    root, _ = _root(tmp_path, n_tops=120, n_bags=10)
    watcher = CatalogWatcher(root, interval_s=0.0)
    queries = Catalog.open(root).vectors("tops")[::7]
    live: dict[str, set[int]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    answers, failures, mixed = [], [], []

    def reader() -> None:
        while not stop.is_set():
            catalog = watcher.get()  # once per request
            try:
                rows = catalog.search("tops", queries[:4], 6)
                meta_ok = all(m.title == f"tops {m.product_id}" for row in rows for m in row)
            except Exception as e:  # noqa: BLE001 - counted, not hidden
                failures.append(repr(e))
                continue
            with lock:
                if catalog.version not in live:
                    live[catalog.version] = _live_ids(catalog, "tops")
                ids = {m.product_id for row in rows for m in row}
                if not ids <= live[catalog.version] or not meta_ok:
                    mixed.append((catalog.version, ids - live[catalog.version]))
                answers.append(catalog.version)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    versions = [Catalog.open(root).version]
    removed = []
    for step in range(3):
        time.sleep(0.15)
        ids = list(range(step * 10, step * 10 + 10))
        removed += ids
        update_catalog(root, embedder=CountingEmbedder(), remove=ids,
                       add=_records(tmp_path / "images", range(800 + step * 5, 805 + step * 5), seed=10 + step))
        versions.append(Catalog.open(root).version)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert failures == [] and mixed == []
    assert set(versions) <= set(answers) | {versions[0]} and versions[-1] in answers  # readers moved along
    assert watcher.swaps >= 1 and watcher.get().version == versions[-1]
    assert not (set(removed) & _live_ids(watcher.get(), "tops"))
    # the root keeps the newest three update versions and the build; the pointer names the newest
    assert sorted(p.name for p in root.iterdir()) == ["catalog-v1", "catalog-v1-u1", "catalog-v1-u2", "catalog-v1-u3",
                                                      "current"]


def test_update_of_a_plain_catalog_directory_switches_it_in_place(tmp_path: Path) -> None:
    images = tmp_path / "images"
    out = tmp_path / "catalog"
    build_catalog(_records(images, range(30)), out, CountingEmbedder(), PARAMS, images_root=images)
    version = Catalog.open(out).version
    update_catalog(out, remove=[1, 2])
    new = Catalog.open(out)
    assert new.manifest.parent == version and not ({1, 2} & _live_ids(new, "tops"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog", "images"]


def test_catalog_update_cli_removes_and_refuses_a_malformed_csv_naming_its_line(tmp_path: Path) -> None:
    root, _ = _root(tmp_path, n_tops=30, n_bags=5)
    version = Catalog.open(root).version
    bad = tmp_path / "new.csv"
    bad.write_text("id,category,image,price\n900,tops,images/x.png,3\n901,tops\n")
    r = CliRunner().invoke(cli_app, ["catalog", "update", str(root), "--add", str(bad)])
    assert r.exit_code == 2 and "new.csv:3: 2 cells, the header has 4" in r.output
    assert Catalog.open(root).version == version
    ids = tmp_path / "ids.txt"
    ids.write_text("# gone\n1\n2,3\n")
    r = CliRunner().invoke(cli_app, ["catalog", "update", str(root), "--remove", str(ids), "--remove", "4"])
    assert r.exit_code == 0, r.output
    assert "removed 4 product(s)" in r.output and not ({1, 2, 3, 4} & _live_ids(Catalog.open(root), "tops"))
    r = CliRunner().invoke(cli_app, ["catalog", "update", str(root), "--remove", "1,x"])
    assert r.exit_code == 2 and "'x' (item 2) is not a product id" in r.output


# ------------------------------------------------------------------------------------------
# On real Triton: embedder requests counted by Triton, the version binding
# ------------------------------------------------------------------------------------------
CROP = 32


def _success_count(client, model: str) -> int:
    stats = client.statistics(model)
    return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats.get("model_stats", []))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One Triton for the module: the tiny detector and embedder version 1 only."""

    base = tmp_path_factory.mktemp("update-triton")
    repo = base / "repo"
    write_model(repo, replace(contracts.detector_config(input_size=S, max_detections=D, mask_size=M), warmup=()),
                tiny_detector)
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=CROP), warmup=()),
                lambda p: projection_embedder(p, size=CROP, dim=DIM, seed=4))
    server = TritonServer(ServerOptions(model_repository=repo, load_models=("detector", "embedder"), grpc_port=0,
                                        work_dir=base / "triton", ready_timeout_s=120.0, exit_timeout_s=10))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.triton
def test_update_sends_only_new_photos_to_triton_when_counted_by_its_statistics(served, tmp_path: Path) -> None:
    images = tmp_path / "images"
    records = _records(images, range(40))
    root = tmp_path / "catalogs"
    with TritonClient(served.grpc_url) as client:
        build_catalog(records, root / "catalog-v1", TritonEmbedder(client), PARAMS, batch_size=8, images_root=images)
        set_current(root, "catalog-v1")
        before = _success_count(client, "embedder")
        added = _records(images, range(100, 103), seed=1)  # 6 photos
        changed = [r for r in records if r.product_id == 7][:1]  # unchanged file: kept
        result = update_catalog(root, client, add=added, replace=changed, remove=[0], batch_size=4)
        sent = _success_count(client, "embedder") - before
    # one probe + ceil(6 / 4) batches; none for the 79 unchanged photos nor the kept one
    assert (result.embedded_photos, result.reused_photos) == (6, 1)
    assert sent == 1 + 2
    new = Catalog.open(root)
    labels = np.flatnonzero(new.product_ids("tops") == 101)
    assert new.search("tops", new.vectors("tops")[labels[:1]], 1)[0][0].product_id == 101


@pytest.mark.triton
def test_update_is_refused_by_name_when_the_catalog_embedder_version_is_not_served(served, tmp_path: Path) -> None:
    images = tmp_path / "images"
    root = tmp_path / "catalogs"
    build_catalog(_records(images, range(20)), root / "catalog-v2", CountingEmbedder(version="2"), PARAMS,
                  images_root=images)
    set_current(root, "catalog-v2")
    with TritonClient(served.grpc_url) as client:
        before = _success_count(client, "embedder")
        with pytest.raises(CatalogVersionMismatch, match=r"bound to embedder version 2, which the server does not "
                                                         r"serve \(it serves 1\)"):
            update_catalog(root, client, add=_records(images, range(50, 52), seed=2))
        assert _success_count(client, "embedder") == before
    assert os.readlink(root / "current") == "catalog-v2" and sorted(p.name for p in root.iterdir()) == ["catalog-v2", "current"]
    # a removal needs no embedder: it goes through without the server's version
    update_catalog(root, remove=[3])
    assert json.loads((read_current(root) / "manifest.json").read_text())["embedder"]["version"] == "2"


def test_csv_reader_names_the_line_when_a_quoted_cell_runs_to_the_end(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("id,category,image,price\n1,tops,a.png,1\n2,tops,b.png,\"unterminated\n")
    with pytest.raises(DataError, match=r"x.csv:3"):
        records_from_csv(p, schema={"price": "number"})


@pytest.mark.triton
def test_look_matches_only_filtered_products_and_follows_an_update_on_triton(served, tmp_path: Path) -> None:
    """`lookserve look --filter` and a running LookPipeline (CatalogWatcher) with a filter: every
    match passes it; after an update the chain searches the new version, named in its result."""

    images = tmp_path / "images"
    records = _records(images, range(12), photos=1) + _records(images, range(50, 56), "bags", photos=1)
    root = tmp_path / "catalogs"
    with TritonClient(served.grpc_url) as client:
        build_catalog(records, root / "catalog-v1", TritonEmbedder(client), PARAMS, batch_size=8, images_root=images)
    set_current(root, "catalog-v1")
    street = tmp_path / "street.png"
    Image.fromarray(street_photo([(230, "tops"), (220, "bags")])).save(street)
    runner = CliRunner()
    args = ["look", str(street), "--catalog", str(root), "--url", served.grpc_url, "--no-render", "--no-masks"]
    r = runner.invoke(cli_app, [*args, "-o", str(tmp_path / "out"), "--filter", "price < 5 and in_stock"])
    assert r.exit_code == 0, r.output
    items = json.loads((tmp_path / "out" / "street.json").read_text())["items"]
    tops = next(i for i in items if i["category"] == "tops")
    assert sorted(m["product_id"] for m in tops["matches"]) == [0, 2, 4]  # every top passing, and only those
    assert all(m["attributes"]["price"] < 5 and m["attributes"]["in_stock"] for i in items for m in i["matches"])
    r = runner.invoke(cli_app, [*args, "-o", str(tmp_path / "bad"), "--filter", "colour == 'red'"])
    assert r.exit_code == 2 and "unknown attribute 'colour'" in r.output and not (tmp_path / "bad").exists()

    with TritonClient(served.grpc_url) as client:
        pipe = LookPipeline(client, CatalogWatcher(root, client, interval_s=0.0), LookConfig(catalog_filter="price < 5"))
        before = pipe.run(street)
        update_catalog(root, client, remove=[0, 1])
        after = pipe.run(street)
    assert before.catalog.endswith("catalog-v1") and after.catalog.endswith("catalog-v1-u1")
    assert before.catalog_version == Catalog.open(root / "catalog-v1").version != after.catalog_version
    assert after.to_dict()["catalog_version"] == Catalog.open(root).version
    ids = lambda res: sorted(m.product_id for i in res.items if i.detection.category == "tops" for m in i.matches)  # noqa: E731
    assert ids(before) == [0, 1, 2, 3, 4] and ids(after) == [2, 3, 4]
    # the web page's logic passes the filter the same way

    services = logic.connect(logic.UiConfig(url=served.grpc_url, catalog=root))
    try:
        inp = logic.load_input("street.png", street)
        assert ids(logic.run_look(services, inp, catalog_filter="price < 4 and not in_stock").result) == [3]
        unfiltered = ids(logic.run_look(services, inp, catalog_filter="  ").result)  # blank: no filter
        assert len(unfiltered) == 6 and set(unfiltered) <= set(range(2, 12))
        with pytest.raises(InvalidInputError, match="unknown attribute 'size'"):
            logic.run_look(services, inp, catalog_filter="size == 3")
    finally:
        services.close()


def test_update_upgrades_a_catalog_database_written_before_typed_attributes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    out = tmp_path / "catalog"
    build_catalog(_records(images, range(20)), out, CountingEmbedder(), PARAMS, images_root=images)
    db = sqlite3.connect(out / "products.sqlite")  # the layout of a catalog built before this change
    db.executescript("DROP TABLE attributes; DROP TABLE attribute_schema; ALTER TABLE photos DROP COLUMN sha256;")
    db.commit()
    db.close()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = file_checksums(out)
    del manifest["files"]["manifest.json"]
    manifest.pop("attributes")
    manifest["checksum"] = manifest_checksum(manifest)  # a catalog written this way, not a damaged one
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert Catalog.open(out).manifest.attributes == {}
    update_catalog(out, embedder=CountingEmbedder(), add=_records(images, [77], seed=9), remove=[1])
    new = Catalog.open(out)
    assert new.manifest.attributes == {"in_stock": "boolean", "price": "number"}
    assert [m.product_id for m in new.search("tops", new.vectors("tops")[-1:], 1, filter="price == 77")[0]] == [77]


def _damage(path: Path) -> None:
    """Flip one byte in the middle of a file, keeping its size (and its inode: hard links share it)."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("name", ["vectors_bags.npy", "index_bags.bin"])
def test_update_refuses_a_damaged_unchanged_file_when_opened_without_verification(tmp_path: Path, name: str) -> None:
    root, _ = _root(tmp_path)
    version = Catalog.open(root).version
    _damage(root / "catalog-v1" / name)  # bags are untouched by the update: the file is linked, not rewritten
    with pytest.raises(CatalogIntegrityError, match=f"{name} does not match its manifest"):
        update_catalog(root, remove=[1], verify=False)
    assert sorted(p.name for p in root.iterdir()) == ["catalog-v1", "current"]
    assert json.loads((root / "catalog-v1" / "manifest.json").read_text())["checksum"]
    assert Catalog.open(root, verify=False).version == version


@pytest.mark.parametrize("link", [True, False], ids=["hard-link", "copy"])
def test_update_never_records_a_fresh_checksum_for_a_file_damaged_after_verification(tmp_path: Path, monkeypatch,
                                                                                      link: bool) -> None:
    root, _ = _root(tmp_path)
    old = Catalog.open(root / "catalog-v1")  # verified here ...
    _damage(old.path / "vectors_bags.npy")  # ... damaged afterwards, before the update links or copies it
    if not link:
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(18, "cross-device link")))
    out = tmp_path / "next"
    if link:  # the link keeps the recorded checksum, so the new version refuses to open
        update_module.apply_update(old, out, {1}, [], [], np.zeros((0, DIM), np.float32))
        with pytest.raises(CatalogIntegrityError, match="vectors_bags.npy does not match its manifest"):
            Catalog.open(out)
    else:  # a copy is hashed while it is copied
        with pytest.raises(CatalogIntegrityError, match="vectors_bags.npy does not match its manifest"):
            update_module.apply_update(old, out, {1}, [], [], np.zeros((0, DIM), np.float32))
        assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith("next")] == []


def test_update_records_checksums_a_full_hash_agrees_with_when_files_are_linked_or_written(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    result = update_catalog(root, embedder=CountingEmbedder(), add=_records(tmp_path / "images", [900], seed=5),
                            remove=[2])
    recorded = dict(result.manifest.files)
    assert recorded == {k: v for k, v in file_checksums(result.path).items() if k != "manifest.json"}
    assert (result.path / "vectors_bags.npy").stat().st_ino == (root / "catalog-v1" / "vectors_bags.npy").stat().st_ino
