"""Catalog index without Triton: recall vs exact search, manifest, checksums, atomic switch."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookserve.cli import app
from lookserve.client import catalog as cat
from lookserve.client.catalog import (
    Catalog,
    CatalogRef,
    EmbedderInfo,
    IndexParams,
    PhotoRecord,
    exact_search,
    recall_at_k,
    write_catalog,
)
from lookserve.client.catalog.index import top_k
from lookserve.errors import CatalogError, CatalogIntegrityError, CatalogVersionMismatch, DataError

EMB = EmbedderInfo("embedder", "3", "ab" * 32)


def _records(n_per_cat: dict[str, int], photos_per_product: int = 1) -> list[PhotoRecord]:
    records, pid = [], 1000
    for category, n in n_per_cat.items():
        for _ in range(n):
            for j in range(photos_per_product):
                records.append(PhotoRecord(pid, category, f"images/{pid}_{j}.jpg", None, f"{category} {pid}", {"colour": "red"}))
            pid += 1
    return records


CENTRES = np.random.default_rng(7).normal(size=(20, 32))


def _clustered(rng: np.random.Generator, n: int, dim: int = 32, clusters: int = 20) -> np.ndarray:
    centres = CENTRES[:clusters, :dim]
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(tmp_path: Path, rng, sizes=None, **params) -> tuple[Path, list[PhotoRecord], np.ndarray]:
    records = _records(sizes or {"tops": 300, "bags": 40})
    vectors = _clustered(rng, len(records))
    out = tmp_path / "catalog"
    write_catalog(out, records, vectors, EMB, IndexParams(**params))
    return out, records, vectors


def test_catalog_recall_reaches_target_when_ef_is_tuned(tmp_path: Path, rng) -> None:
    sizes = {"tops": 2000}
    out, records, vectors = _build(tmp_path, rng, sizes, M=8, ef_construction=40, tune_sample=200)
    catalog = Catalog.open(out)
    info = catalog.manifest.categories["tops"]
    assert info.recall_at_k >= 0.99 and info.k == 6
    # Held-out check with fresh seeded queries (not the tuning sample).
    queries = _clustered(np.random.default_rng(99), 300)
    labels, sims = catalog.search_labels("tops", queries, 6)
    exact, exact_sims = exact_search(vectors, queries, 6)
    assert recall_at_k(labels, exact) >= 0.99
    np.testing.assert_allclose(sims[:, 0], exact_sims[:, 0], atol=1e-5)


def test_catalog_tunes_a_larger_ef_when_graph_is_sparse(tmp_path: Path) -> None:
    dense, _, _ = _build(tmp_path / "dense", np.random.default_rng(3), {"tops": 1500})
    sparse, _, _ = _build(tmp_path / "sparse", np.random.default_rng(3), {"tops": 1500}, M=4, ef_construction=16)
    d, s = (Catalog.open(p).manifest.categories["tops"] for p in (dense, sparse))
    assert s.ef > d.ef
    assert d.recall_at_k >= 0.99 and s.recall_at_k >= 0.99


def test_catalog_build_refuses_when_recall_target_is_unreachable(tmp_path: Path, rng) -> None:
    with pytest.raises(CatalogError, match="larger M or ef_construction"):
        _build(tmp_path, rng, {"tops": 1500}, M=2, ef_construction=4)
    assert not (tmp_path / "catalog").exists() and not list(tmp_path.iterdir())


def test_catalog_search_matches_exact_and_joins_metadata_when_opened(tmp_path: Path, rng) -> None:
    out, records, vectors = _build(tmp_path, rng)
    catalog = Catalog.open(out, embedder=EMB)
    bags = [i for i, r in enumerate(records) if r.category == "bags"]
    queries = vectors[bags[:5]] + 0.01
    matches = catalog.search("bags", queries, k=6)
    exact, sims = exact_search(vectors[bags], queries, 6)
    for row, ex, sim in zip(matches, exact, sims, strict=True):
        assert [m.product_id for m in row] == [records[bags[i]].product_id for i in ex]
        np.testing.assert_allclose([m.similarity for m in row], sim, atol=1e-5)
        assert row[0].title == f"bags {row[0].product_id}" and row[0].attributes == {"colour": "red"}
    assert catalog.categories == {"tops", "bags"}


def test_catalog_returns_distinct_products_when_products_have_several_photos(tmp_path: Path, rng) -> None:
    records = _records({"hats": 30}, photos_per_product=3)
    vectors = _clustered(rng, len(records))
    write_catalog(tmp_path / "c", records, vectors, EMB)
    catalog = Catalog.open(tmp_path / "c")
    (row,) = catalog.search("hats", vectors[:1], k=6)
    ids = [m.product_id for m in row]
    assert len(ids) == 6 == len(set(ids))
    # a product's similarity is that of its best photo
    sims = vectors @ vectors[0]
    best = {}
    for r, s in zip(records, sims, strict=True):
        best[r.product_id] = max(best.get(r.product_id, -2), s)
    expected = sorted(best, key=lambda p: -best[p])[:6]
    assert ids == expected


def test_catalog_manifest_records_binding_and_checksums_when_built(tmp_path: Path, rng) -> None:
    out, records, _ = _build(tmp_path, rng, M=12, ef_construction=50)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedder"] == {"name": "embedder", "version": "3", "model_sha256": "ab" * 32}
    assert manifest["dim"] == 32 and manifest["space"] == "cosine"
    assert manifest["params"]["M"] == 12 and manifest["params"]["ef_construction"] == 50
    assert manifest["counts"] == {"photos": len(records), "products": len(records), "categories": 2}
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {"manifest.json"}
    for name, info in manifest["files"].items():
        assert info["sha256"] == cat.sha256_file(out / name)


@pytest.mark.parametrize("edit", [
    lambda m: m["embedder"].update(version="4"),  # another embedder version: vectors of another space
    lambda m: m["params"].update(M=48),
    lambda m: m.update(images_root="/elsewhere"),
    lambda m: m.pop("checksum"),
], ids=["embedder_version", "params", "images_root", "checksum_removed"])
def test_catalog_refuses_a_manifest_edited_after_it_was_written(tmp_path: Path, rng, edit) -> None:
    out, _, _ = _build(tmp_path, rng)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CatalogIntegrityError, match="checksum"):
        Catalog.open(out)


def test_catalog_refuses_when_an_index_file_is_tampered(tmp_path: Path, rng) -> None:
    out, _, _ = _build(tmp_path, rng)
    data = bytearray((out / "index_tops.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "index_tops.bin").write_bytes(bytes(data))
    with pytest.raises(CatalogIntegrityError, match="index_tops.bin does not match"):
        Catalog.open(out)


def test_catalog_refuses_when_the_database_is_tampered(tmp_path: Path, rng) -> None:
    out, _, _ = _build(tmp_path, rng)

    with sqlite3.connect(out / "products.sqlite") as db:
        db.execute("UPDATE products SET title = 'x' WHERE id = 1000")
    with pytest.raises(CatalogIntegrityError, match="products.sqlite"):
        Catalog.open(out)


def test_catalog_refuses_when_a_file_is_missing(tmp_path: Path, rng) -> None:
    out, _, _ = _build(tmp_path, rng)
    (out / "vectors_bags.npy").unlink()
    with pytest.raises(CatalogIntegrityError, match="missing"):
        Catalog.open(out)


def test_catalog_refuses_when_served_embedder_version_differs(tmp_path: Path, rng) -> None:
    out, _, _ = _build(tmp_path, rng)
    with pytest.raises(CatalogVersionMismatch, match="version 3.*version 4 is served"):
        Catalog.open(out, embedder=EmbedderInfo("embedder", "4"))
    with pytest.raises(CatalogVersionMismatch, match="serves version"):
        Catalog.open(out, served_versions=["1", "2"])
    with pytest.raises(CatalogVersionMismatch, match="model file changed"):
        Catalog.open(out, embedder=EmbedderInfo("embedder", "3", "cd" * 32))
    assert Catalog.open(out, embedder=EmbedderInfo("embedder", "3"), served_versions=["3"]).embedder.version == "3"


def test_catalog_open_explains_when_directory_is_not_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="manifest.json is missing"):
        Catalog.open(tmp_path)


def test_catalog_switch_keeps_old_catalog_whole_when_build_fails(tmp_path: Path, rng) -> None:
    out, records, vectors = _build(tmp_path, rng)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = vectors.copy()
    bad[3] = np.nan
    with pytest.raises(CatalogError, match="NaN"):
        write_catalog(out, records, bad, EMB)
    with pytest.raises(CatalogError, match="two categories"):
        write_catalog(out, records + [PhotoRecord(1000, "hats", "x", None)], np.vstack([vectors, vectors[:1]]), EMB)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog"]  # no temp directories left


def test_catalog_switch_replaces_whole_directory_when_rebuilt(tmp_path: Path, rng) -> None:
    out, records, vectors = _build(tmp_path, rng)
    old = Catalog.open(out)
    new_emb = EmbedderInfo("embedder", "4")
    write_catalog(out, records[:50], vectors[:50], new_emb)
    new = Catalog.open(out)
    assert new.embedder.version == "4" and new.categories == {"tops"}
    assert not (out / "index_bags.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog"]
    # The old object keeps answering from memory: indexes are swapped by reference.
    ref = CatalogRef(old)
    assert ref.swap(new) is old and ref.get() is new
    assert old.search_labels("bags", vectors[-1:], 1)[0].shape == (1, 1)


def test_catalog_readers_see_old_or_new_when_switch_happens_during_reads(tmp_path: Path, rng) -> None:
    out, records, vectors = _build(tmp_path, rng, {"tops": 60})
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(Catalog.open(out).embedder.version)
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for v in range(4, 9):
        write_catalog(out, records, vectors, EmbedderInfo("embedder", str(v)))
    stop.set()
    t.join(10)
    assert not errors, errors[:3]
    assert seen and seen <= {"3", "4", "5", "6", "7", "8"}
    assert Catalog.open(out).embedder.version == "8"


def test_catalog_searches_concurrently_when_shared_between_threads(tmp_path: Path, rng) -> None:
    out, records, vectors = _build(tmp_path, rng)
    catalog = Catalog.open(out)
    expected = catalog.search("tops", vectors[:20], k=6)
    results: list = [None] * 4

    def run(i: int) -> None:
        results[i] = [catalog.search("tops", vectors[:20], k=6) for _ in range(5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for per_thread in results:
        assert all(r == expected for r in per_thread)


def test_catalog_search_refuses_when_category_is_absent(tmp_path: Path, rng) -> None:
    out, _, vectors = _build(tmp_path, rng)
    with pytest.raises(CatalogError, match="no 'belts' products"):
        Catalog.open(out).search("belts", vectors[:1])


def test_records_read_street2shop_layout_when_given_a_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "photos").mkdir(parents=True)
    (root / "meta" / "json").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "photos" / "photos.txt").write_text("1,images/1.jpg\n2,images/2.jpg\n3,images/3.jpg\n")
    for i in (1, 2, 3):
        (root / "images" / f"{i}.jpg").write_bytes(b"x")
    (root / "meta" / "json" / "retrieval_tops.json").write_text(json.dumps([{"product": 10, "photo": 1}, {"product": 10, "photo": 2}]))
    (root / "meta" / "json" / "retrieval_bags.json").write_text(json.dumps([{"product": 11, "photo": 3}]))
    (root / "products.json").write_text(json.dumps([
        {"id": 10, "category": "tops", "title": "red top", "attributes": {"colour": "red"}, "split": "test"},
        {"id": 11, "category": "bags", "title": "bag", "attributes": {}, "split": "train"},
    ]))
    records = cat.load_records(root)
    assert [(r.product_id, r.category, r.image) for r in records] == [
        (11, "bags", "images/3.jpg"), (10, "tops", "images/1.jpg"), (10, "tops", "images/2.jpg")
    ]
    assert records[1].title == "red top" and records[1].attributes == {"colour": "red"}
    assert [r.product_id for r in cat.load_records(root, splits=["test"])] == [10, 10]


def test_records_read_csv_when_given_a_folder(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("id,category,image,title,colour\n5,hats,a.jpg,A hat,blue\n")
    (r,) = cat.load_records(tmp_path)
    assert (r.product_id, r.category, r.path, r.title, dict(r.attributes)) == (5, "hats", tmp_path / "a.jpg", "A hat", {"colour": "blue"})
    (tmp_path / "metadata.csv").write_text("id,category,image\n5,capes,a.jpg\n")
    with pytest.raises(DataError, match="unknown category 'capes'"):
        cat.load_records(tmp_path)
    with pytest.raises(DataError, match="neither a street2shop"):
        cat.load_records(tmp_path / "nothing")


class _NumpyEmbedder:
    """A deterministic in-process embedder (mean colour → fixed projection) for the resume logic;
    serving is covered by tests/test_look_chain.py against real Triton."""

    name = "embedder"
    input_size = 16

    def __init__(self, fail_after: int | None = None, version: str = "1") -> None:
        self.calls = 0
        self.fail_after = fail_after
        self.version = version
        self.w = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        v = crops.reshape(len(crops), -1, 3).mean(axis=1) @ self.w + 1e-3
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), self.version


def _photo_records(tmp_path: Path, rng, n: int) -> list[PhotoRecord]:
    folder = tmp_path / "shop"
    folder.mkdir()
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        records.append(PhotoRecord(i, "tops" if i % 2 else "bags", f"{i}.png", folder / f"{i}.png"))
    return records


def test_catalog_build_resumes_from_partial_embeddings_when_interrupted(tmp_path: Path, rng) -> None:
    records = _photo_records(tmp_path, rng, 40)
    out = tmp_path / "catalog"
    with pytest.raises(KeyboardInterrupt):
        cat.build_catalog(records, out, _NumpyEmbedder(fail_after=3), batch_size=4, concurrency=1)
    assert not out.exists() and len(list(cat.partial_dir_for(out).glob("batch-*.npz"))) == 3
    resumed = _NumpyEmbedder()
    cat.build_catalog(records, out, resumed, batch_size=4, concurrency=2)
    assert resumed.calls == 1 + 10 - 3  # the probe + the batches not done before
    assert not cat.partial_dir_for(out).exists()
    full = tmp_path / "full"
    cat.build_catalog(records, full, _NumpyEmbedder(), batch_size=4, concurrency=2)
    np.testing.assert_array_equal(Catalog.open(out).vectors("tops"), Catalog.open(full).vectors("tops"))


def test_catalog_build_starts_over_when_partial_is_from_another_version(tmp_path: Path, rng) -> None:
    records = _photo_records(tmp_path, rng, 12)
    out = tmp_path / "catalog"
    with pytest.raises(KeyboardInterrupt):
        cat.build_catalog(records, out, _NumpyEmbedder(fail_after=2), batch_size=4, concurrency=1)
    other = _NumpyEmbedder(version="2")
    cat.build_catalog(records, out, other, batch_size=4, concurrency=1)
    assert other.calls == 1 + 3
    assert Catalog.open(out).embedder.version == "2"


def test_catalog_build_skips_unreadable_photos_when_some_are_corrupt(tmp_path: Path, rng) -> None:
    records = _photo_records(tmp_path, rng, 10)
    records[3].path.write_bytes(b"not an image")
    manifest = cat.build_catalog(records, tmp_path / "catalog", _NumpyEmbedder(), batch_size=4)
    assert manifest.skipped == ("3.png",) and manifest.counts["photos"] == 9


def test_catalog_bench_search_writes_the_committed_figures_when_run_small(tmp_path: Path) -> None:

    out = tmp_path / "bench.jsonl"
    result = CliRunner().invoke(app, ["catalog", "bench-search", "--n", "3000", "--queries", "200", "--M", "8",
                                      "--ef-construction", "40", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    committed = Path(__file__).parents[1] / "client" / "results" / "search_bench.jsonl"
    assert list(row) == list(json.loads(committed.read_text().splitlines()[0]))  # same figures as the committed run
    assert row["n"] == 3000 and row["queries"] == 200 and row["k"] == 6
    assert row["tune_recall_at_k"] >= 0.99 and row["held_out_recall_at_k"] >= 0.95
    assert 0 < row["search_ms_median"] <= row["search_ms_p99"]


def _reference_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns by a full sort (ties: lower column first)."""
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])


@pytest.mark.parametrize("n, k", [(5000, 6), (5000, 1), (40, 6), (64, 2), (7, 7)])
def test_top_k_equals_a_full_sort_when_scores_are_cut_into_groups(rng, n: int, k: int) -> None:
    scores = np.round(rng.normal(size=(50, n)), 1).astype(np.float32)  # rounded: many tied scores
    np.testing.assert_array_equal(top_k(scores, k), _reference_top_k(scores, k))


def test_exact_search_finds_the_best_cosine_scores_when_rows_are_not_unit(rng) -> None:
    vectors = 3 * rng.normal(size=(5000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    idx, sims = exact_search(vectors, queries, 6)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    best = np.take_along_axis(scores, _reference_top_k(scores, 6), axis=1)
    np.testing.assert_allclose(sims, best, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(scores, idx, axis=1), best, rtol=1e-5, atol=1e-6)


def test_exact_search_never_returns_an_excluded_row_when_given_a_mask(rng) -> None:
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    exclude = rng.random(3000) < 0.3
    queries = vectors[exclude][:40] + 0.01  # the excluded rows would be their own best matches
    idx, sims = exact_search(vectors, queries, 6, exclude=exclude)
    live = np.flatnonzero(~exclude)
    want, want_sims = exact_search(vectors[live], queries, 6)
    assert not exclude[idx].any()
    np.testing.assert_array_equal(idx, live[want])
    np.testing.assert_allclose(sims, want_sims, rtol=1e-6)


def test_top_k_falls_back_to_a_partition_when_scores_hold_nan(rng) -> None:
    scores = rng.normal(size=(4, 1000)).astype(np.float32)
    scores[1] = np.nan  # no score reaches a NaN bound: the grouped path has no candidates for this row
    got = top_k(scores, 5)
    np.testing.assert_array_equal(got[[0, 2, 3]], _reference_top_k(scores[[0, 2, 3]], 5))


def test_tune_ef_picks_the_same_queries_and_ef_when_given_a_deleted_mask(rng) -> None:
    vectors = _clustered(rng, 2000)
    deleted = rng.random(2000) < 0.2
    params = IndexParams(M=8, ef_construction=40)
    index = cat.new_index(32, 2000, params)
    index.add_items(vectors, np.arange(2000))
    for label in np.flatnonzero(deleted):
        index.mark_deleted(int(label))
    live = np.flatnonzero(~deleted)
    gathered = cat.tune_ef(index, vectors[live], params, np.random.default_rng(5), labels=live)
    masked = cat.tune_ef(index, vectors, params, np.random.default_rng(5), deleted=deleted)
    assert masked == gathered and masked[1] >= 0.99
