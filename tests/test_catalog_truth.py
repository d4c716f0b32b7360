"""ef's stored ground truth: an update merges its added and removed rows into the tuning
queries' exact neighbours instead of searching every row again, and the merged lists equal a
full exact search (adds, removes, replaces, chained updates); a query that loses more stored
neighbours than it keeps spare falls back to a full search; recall@K stays ≥ the target."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lookserve.client.catalog import (
    Catalog,
    EmbedderInfo,
    IndexParams,
    PhotoRecord,
    exact_search,
    recall_at_k,
    set_current,
    update_catalog,
    write_catalog,
)
from lookserve.client.catalog.index import (
    TRUTH_SPARE,
    GroundTruth,
    ef_for_truth,
    exact_truth,
    merge_truth,
    new_index,
    tuning_queries,
)
from lookserve.client.catalog.store import file_checksums, load_truth, manifest_checksum, truth_file
from lookserve.errors import CatalogError, CatalogIntegrityError

DIM = 16
K = 6
DEPTH = K + TRUTH_SPARE
PARAMS = IndexParams(M=12, ef_construction=60, tune_sample=80, k=K)
EMB = EmbedderInfo("embedder", "1")


def _clustered(rng: np.random.Generator, n: int, dim: int = DIM, clusters: int = 12) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    v = centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return v.astype(np.float32)


def _assert_exact(merged: GroundTruth, vectors: np.ndarray, deleted: np.ndarray) -> None:
    """Every label ``merged`` lists is the full exact search's at that rank, and a query whose
    list is short of ``DEPTH`` is either complete or knows at least ``K``."""
    full = exact_truth(vectors, merged.queries, DEPTH, deleted)
    known = merged.known()
    assert ((known >= K) | merged.complete).all()
    for i in range(len(merged.queries)):
        np.testing.assert_array_equal(merged.labels[i, : known[i]], full.labels[i, : known[i]])
        np.testing.assert_allclose(merged.sims[i, : known[i]], full.sims[i, : known[i]], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged.complete, full.complete & (known == full.known()))


@pytest.mark.parametrize("added_per_round", [10, 3 * DEPTH], ids=["added-fewer-than-depth", "added-more-than-depth"])
def test_merge_truth_equals_a_full_exact_search_when_rows_are_added_removed_and_replaced(added_per_round: int) -> None:
    rng = np.random.default_rng(7)
    vectors = _clustered(rng, 2000)
    deleted = np.zeros(len(vectors), bool)
    queries = tuning_queries(vectors, PARAMS, rng)
    truth = exact_truth(vectors, queries, DEPTH)
    for _ in range(4):  # chained updates: each merges into the previous merge
        live = np.flatnonzero(~deleted)
        removed = rng.choice(live, 30, replace=False)
        # a replaced photo: a removed row's vector, slightly changed, under a new label
        replaced = vectors[removed[:5]] + 0.01 * rng.normal(size=(5, DIM)).astype(np.float32)
        added = np.concatenate([replaced, _clustered(rng, added_per_round)])
        first = len(vectors)
        # the removed rows nearest the queries too, so merged lists really lose stored neighbours
        removed = np.union1d(removed, truth.labels[:10, 0])
        deleted[removed] = True
        vectors = np.concatenate([vectors, added])
        deleted = np.concatenate([deleted, np.zeros(len(added), bool)])
        merged = merge_truth(truth, removed, added, first, K)
        assert merged is not None
        _assert_exact(merged, vectors, deleted)
        truth = merged


def test_merge_truth_knows_every_row_of_a_category_smaller_than_its_depth() -> None:
    rng = np.random.default_rng(3)
    vectors = _clustered(rng, 12)
    queries = tuning_queries(vectors, PARAMS, rng)
    truth = exact_truth(vectors, queries, DEPTH)
    assert truth.complete.all() and (truth.known() == 12).all()
    added = _clustered(rng, 4)
    merged = merge_truth(truth, np.array([0, 5, 7, 8, 9, 10, 11]), added, 12, K)
    deleted = np.zeros(16, bool)
    deleted[[0, 5, 7, 8, 9, 10, 11]] = True
    assert merged is not None and merged.complete.all() and (merged.known() == 9).all()
    _assert_exact(merged, np.concatenate([vectors, added]), deleted)


def test_merge_truth_asks_for_a_full_search_when_a_query_loses_more_than_its_spare_neighbours() -> None:
    rng = np.random.default_rng(5)
    vectors = _clustered(rng, 2000)
    truth = exact_truth(vectors, tuning_queries(vectors, PARAMS, rng), DEPTH)
    spare = truth.labels[0, : TRUTH_SPARE]  # query 0 keeps K of its DEPTH stored neighbours: still known
    assert merge_truth(truth, spare, _clustered(rng, 3), 2000, K) is not None
    one_more = truth.labels[0, : TRUTH_SPARE + 1]  # K - 1 left: its exact top-K is no longer known
    assert merge_truth(truth, one_more, _clustered(rng, 3), 2000, K) is None


# --- through the catalog -------------------------------------------------------------------
def _records(ids) -> list[PhotoRecord]:
    return [PhotoRecord(int(pid), "tops", f"{pid}.jpg", None, f"tops {pid}", {}) for pid in ids]


def _root(tmp_path: Path, n: int = 1500) -> tuple[Path, np.ndarray]:
    vectors = _clustered(np.random.default_rng(11), n)
    root = tmp_path / "catalogs"
    write_catalog(root / "catalog-v1", _records(range(n)), vectors, EMB, PARAMS)
    set_current(root, "catalog-v1")
    return root, vectors


def _stored(catalog: Catalog) -> GroundTruth:
    info = catalog.manifest.categories["tops"]
    return load_truth(catalog.path / truth_file("tops"), catalog.manifest.files[truth_file("tops")], catalog.dim, info.count)


def _check_recall(catalog: Catalog) -> None:
    """The tuned ef reaches the target on the stored ground truth, and on fresh queries against
    exact search over the live rows."""
    info = catalog.manifest.categories["tops"]
    assert info.recall_at_k >= 0.99
    live = catalog.live_labels("tops")
    v = np.asarray(catalog.vectors_mapped("tops"))
    rng = np.random.default_rng(2)
    queries = v[live[rng.choice(len(live), 200, replace=False)]] + 0.2 * rng.normal(size=(200, DIM)).astype(np.float32)
    labels, _ = catalog.search_labels("tops", queries, K)
    exact, _ = exact_search(v[live], queries, K)
    assert recall_at_k(labels, live[exact]) >= 0.99


def test_ef_for_truth_keeps_a_start_ef_that_reaches_the_target_and_tunes_upward_from_one_that_does_not() -> None:
    rng = np.random.default_rng(11)
    vectors = _clustered(rng, 3000)
    params = IndexParams(M=8, ef_construction=24, tune_sample=200, k=10, recall_target=0.99)  # a sparse graph
    index = new_index(DIM, len(vectors), params)
    index.add_items(vectors, np.arange(len(vectors)))
    truth = exact_truth(vectors, tuning_queries(vectors, params, rng), 10 + TRUTH_SPARE)
    smallest, _ = ef_for_truth(index, truth, params, len(vectors))
    assert smallest > 16  # else the start below could not be below it
    # a start at or above the smallest passing ef is kept, even off the candidate grid
    assert ef_for_truth(index, truth, params, len(vectors), start=smallest + 5)[0] == smallest + 5
    # a start below it moves up the grid to the smallest passing candidate above the start
    ef, recall = ef_for_truth(index, truth, params, len(vectors), start=16)
    assert ef == smallest and recall >= 0.99


def test_update_merges_the_stored_ground_truth_into_one_a_full_exact_search_equals(tmp_path: Path) -> None:
    root, vectors = _root(tmp_path)
    built = Catalog.open(root)
    assert _stored(built).depth == DEPTH and truth_file("tops") in built.manifest.files
    rng = np.random.default_rng(4)
    add = _clustered(rng, 20)
    replaced = [3, 9, 27]  # new vectors for three products
    new_vectors = np.concatenate([add, vectors[replaced] + 0.05 * rng.normal(size=(3, DIM)).astype(np.float32)])
    result = update_catalog(root, add=_records(range(5000, 5020)), replace=_records(replaced),
                            remove=list(range(100, 130)), new_vectors=new_vectors, rebuild_fraction=0.5)
    assert result.tuning == {"tops": "merged"} and result.rebuilt == ()
    new = Catalog.open(root)
    deleted = new.product_ids("tops") < 0
    stored = _stored(new)
    np.testing.assert_array_equal(stored.queries, _stored(built).queries)  # the same tuning queries
    _assert_exact(stored, np.asarray(new.vectors_mapped("tops")), deleted)
    _check_recall(new)
    # a second update merges into the first's
    again = update_catalog(root, add=_records(range(6000, 6010)), remove=list(range(200, 210)),
                           new_vectors=_clustered(rng, 10), rebuild_fraction=0.5)
    newer = Catalog.open(root)
    assert again.tuning == {"tops": "merged"}
    _assert_exact(_stored(newer), np.asarray(newer.vectors_mapped("tops")), newer.product_ids("tops") < 0)
    _check_recall(newer)


def test_update_searches_every_row_again_when_removals_leave_a_query_without_its_top_k(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    built = Catalog.open(root)
    # remove every product among query 0's stored neighbours beyond K - 1: its top-K is unknown
    gone = sorted(int(built.product_ids("tops")[label]) for label in _stored(built).labels[0, : TRUTH_SPARE + 1])
    result = update_catalog(root, remove=gone, rebuild_fraction=0.5)
    assert result.tuning == {"tops": "searched"} and result.rebuilt == ()
    new = Catalog.open(root)
    stored = _stored(new)
    np.testing.assert_array_equal(stored.queries, _stored(built).queries)
    _assert_exact(stored, np.asarray(new.vectors_mapped("tops")), new.product_ids("tops") < 0)
    assert (stored.known() == DEPTH).all()  # searched again in full depth
    _check_recall(new)


def test_update_samples_new_tuning_queries_when_the_index_is_rebuilt_or_asked_to(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    full = update_catalog(root, remove=list(range(10)), incremental_tuning=False)
    assert full.tuning == {"tops": "sampled"}
    rebuilt = update_catalog(root, remove=list(range(10, 400)), rebuild_fraction=0.2)
    assert rebuilt.tuning == {"tops": "sampled"} and rebuilt.rebuilt == ("tops",)
    new = Catalog.open(root)
    _assert_exact(_stored(new), np.asarray(new.vectors_mapped("tops")), new.product_ids("tops") < 0)
    _check_recall(new)


def test_update_tunes_a_catalog_written_before_ground_truth_files_by_a_full_search(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    out = root / "catalog-v1"
    (out / truth_file("tops")).unlink()  # the layout of a catalog built before this change
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in file_checksums(out).items() if k != "manifest.json"}
    manifest["checksum"] = manifest_checksum(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = update_catalog(root, remove=[1, 2])
    assert result.tuning == {"tops": "sampled"}
    assert update_catalog(root, remove=[3]).tuning == {"tops": "merged"}  # the first wrote one


def test_update_refuses_a_damaged_ground_truth_file_even_when_opened_without_verification(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    path = root / "catalog-v1" / truth_file("tops")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CatalogIntegrityError, match=f"{truth_file('tops')} does not match its manifest"):
        update_catalog(root, remove=[1], verify=False)
    assert sorted(p.name for p in root.iterdir()) == ["catalog-v1", "current"]


# --- an update's private open reads no photo rows -----------------------------------------
def test_open_without_photo_rows_refuses_a_database_whose_photos_do_not_match_the_index(tmp_path: Path) -> None:
    root, _ = _root(tmp_path, n=300)
    out = root / "catalog-v1"
    light = Catalog.open(out, photos=False)
    with pytest.raises(CatalogError, match="opened without its photo rows"):
        light.search("tops", np.zeros((1, DIM), np.float32), 3)
    db = sqlite3.connect(out / "products.sqlite")  # one photo row lost, checksums recorded again: not damage
    db.execute("DELETE FROM photos WHERE label = 17")
    db.commit()
    db.close()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in file_checksums(out).items() if k != "manifest.json"}
    manifest["checksum"] = manifest_checksum(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CatalogIntegrityError, match="photos of tops do not match the index"):
        Catalog.open(out, photos=False)
    with pytest.raises(CatalogIntegrityError, match="photos of tops do not match the index"):
        update_catalog(root, remove=[1])
