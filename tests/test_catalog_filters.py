"""Attribute filters: the language (parsed, never eval'd), its errors, typed CSV attributes, and
filtered search = the true filtered top-K (recall vs exact filtered search) at every selectivity."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookserve.cli import app
from lookserve.client.catalog import (
    Catalog,
    EmbedderInfo,
    FilteredSearch,
    IndexParams,
    PhotoRecord,
    exact_search,
    parse_filter,
    records_from_csv,
    write_catalog,
)
from lookserve.client.catalog.filters import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Compare,
    Flag,
    In,
    Not,
    Or,
    check,
)
from lookserve.errors import CatalogError, DataError, InvalidInputError

EMB = EmbedderInfo("embedder", "1")
SCHEMA = {"price": "number", "brand": "string", "in_stock": "boolean", "tags": "list"}


# --- the language ---------------------------------------------------------------------------
def test_filter_parses_into_a_tree_when_it_mixes_and_or_not_in() -> None:
    tree = parse_filter('price < 50 and brand in ["a", "b"] and in_stock')
    assert tree == And((Compare("price", "<", 50.0), In("brand", ("a", "b")), Flag("in_stock")))
    tree = parse_filter("not (brand == 'a' or tags contains \"sale\") and price >= 1.5e1")
    assert isinstance(tree, And) and isinstance(tree.items[0], Not) and isinstance(tree.items[0].item, Or)
    assert tree.items[1] == Compare("price", ">=", 15.0)
    assert parse_filter("brand not in ['x']") == Not(In("brand", ("x",)))
    # the printed tree parses back to itself
    assert parse_filter(str(tree)) == tree


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('true')", "expected"),
    ("price < ", "a value"),
    ("price << 3", "a number, a quoted string, true or false at 7"),
    ("(price < 3", "`\\)`"),
    ("price < 3 brand", "`and`, `or` or the end"),
    ("brand in []", "a number, a quoted string"),
    ("price ; 3", "unexpected character"),
    ("", "empty"),
])
def test_filter_is_refused_with_its_place_when_it_does_not_parse(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_filter(text)


def test_filter_is_refused_when_too_long_or_nested_too_deep() -> None:
    with pytest.raises(InvalidInputError, match=f"limit is {MAX_LENGTH}"):
        parse_filter("in_stock or " * (MAX_LENGTH // 10) + "in_stock")
    with pytest.raises(InvalidInputError, match="nested deeper"):
        parse_filter("(" * (MAX_DEPTH + 1) + "in_stock" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(InvalidInputError, match="nested deeper"):
        parse_filter("not " * (MAX_DEPTH + 1) + "in_stock")
    parse_filter("(" * (MAX_DEPTH - 1) + "in_stock" + ")" * (MAX_DEPTH - 1))  # at the limit: fine


@pytest.mark.parametrize("text, message", [
    ("colour == 'red'", r"unknown attribute 'colour'; this catalog's attributes: brand \(string\)"),
    ("price == 'cheap'", r"attribute 'price' is a number; expected a number value, got \"cheap\""),
    ("brand < 'b'", r"attribute 'brand' is a string; `<` needs a number"),
    ("price", r"attribute 'price' is a number; `price` alone tests a boolean"),
    ("brand contains 'a'", r"attribute 'brand' is a string; `contains` needs a list"),
    ("tags == 'a'", r"attribute 'tags' is a list; test it with `contains`"),
    ("tags in [1]", r"attribute 'tags' is a list; expected string values in the list, got 1.0"),
    ("in_stock == 1", r"attribute 'in_stock' is a boolean; expected a boolean value"),
])
def test_filter_names_the_attribute_and_its_type_when_it_does_not_fit_the_schema(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check(parse_filter(text), SCHEMA)


# --- typed attributes from CSV --------------------------------------------------------------
def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "products.csv"
    p.write_text(text)
    return p


def test_csv_attributes_are_typed_when_headers_declare_or_columns_imply_a_type(tmp_path: Path) -> None:
    p = _csv(tmp_path, "id,category,image,title,price,brand,in_stock,tags,code:string,sizes:list\n"
                       '1,tops,a.jpg,A,12.5,acme,true,"[""x"", ""y""]",007,s|m\n'
                       "2,tops,b.jpg,B,3,,FALSE,[],12,\n")
    a, b = records_from_csv(p)
    assert a.attributes == {"price": 12.5, "brand": "acme", "in_stock": True, "tags": ["x", "y"], "code": "007",
                            "sizes": ["s", "m"]}
    assert b.attributes == {"price": 3, "in_stock": False, "tags": [], "code": "12"}  # empty cells are missing
    # on update, the catalog's schema decides how a cell is read
    (c,) = records_from_csv(_csv(tmp_path, "id,category,image,brand\n3,tops,c.jpg,42\n"), schema={"brand": "string"})
    assert c.attributes == {"brand": "42"}


@pytest.mark.parametrize("text, message", [
    ("id,category,image\n1,tops,a.jpg\n2,tops\n", r"products.csv:3: 2 cells, the header has 3"),
    ("id,category,image\n1,tops,a.jpg\nx,tops,b.jpg\n", r"products.csv:3: id 'x' is not an integer"),
    ("id,category,image\n1,tops,a.jpg\n2,robes,b.jpg\n", r"products.csv:3: product 2: unknown category 'robes'"),
    ("id,category,image,price:number\n1,tops,a.jpg,1\n2,tops,b.jpg,cheap\n",
     r"products.csv:3: attribute 'price' expects a number"),
    ("id,category,image,price:money\n", r"products.csv:1: column 'price:money': unknown attribute type 'money'"),
])
def test_csv_row_error_names_the_file_and_line_when_a_row_is_malformed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        records_from_csv(_csv(tmp_path, text))


def test_catalog_build_is_refused_when_one_attribute_has_two_types(tmp_path: Path) -> None:
    records = [PhotoRecord(1, "tops", "a", None, "", {"size": 3}), PhotoRecord(2, "tops", "b", None, "", {"size": "M"})]
    with pytest.raises(CatalogError, match="attribute 'size' is number for product 1 but string for product 2"):
        write_catalog(tmp_path / "c", records, np.eye(2, 4, dtype=np.float32), EMB)
    assert not (tmp_path / "c").exists()


# --- filtered search ------------------------------------------------------------------------
N = 10_000
DIM = 24


@pytest.fixture(scope="module")
def filtered_catalog(tmp_path_factory):
    """One category of N photos (one per product); `rank` is a random permutation of 0..N-1, so
    `rank < N * s` keeps exactly the fraction s; `tier`, `sale`, `tags` for the other types."""
    rng = np.random.default_rng(11)
    rank = rng.permutation(N)
    centres = rng.normal(size=(30, DIM))
    x = centres[rng.integers(0, 30, N)] + 0.5 * rng.normal(size=(N, DIM))
    vectors = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    records = [PhotoRecord(i, "tops", f"{i}.jpg", None, "", {
        "rank": int(rank[i]), "tier": "abc"[i % 3], "sale": bool(i % 2), "tags": [f"t{i % 5}"] + (["x"] if i % 7 == 0 else []),
    }) for i in range(N)]
    out = tmp_path_factory.mktemp("filtered") / "catalog"
    write_catalog(out, records, vectors, EMB, IndexParams(M=12, ef_construction=80, tune_sample=150, k=10))
    queries = (vectors[rng.choice(N, 150, replace=False)] + 0.12 * rng.normal(size=(150, DIM)).astype(np.float32))
    return Catalog.open(out), vectors, rank, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _filtered_recall(catalog: Catalog, vectors: np.ndarray, keep: np.ndarray, queries: np.ndarray, text: str,
                     k: int = 10) -> float:
    kept = np.flatnonzero(keep)
    idx, _ = exact_search(vectors[kept], queries, k)
    truth = kept[idx]  # product id = row here
    found = catalog.search("tops", queries, k, filter=text)
    for row in found:
        assert all(keep[m.product_id] for m in row), "a product the filter rejects was returned"
    return float(np.mean([len({m.product_id for m in row} & set(t.tolist())) / len(t) for row, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.01, 0.001])
def test_filtered_search_finds_the_true_filtered_top10_when_the_filter_keeps_a_fraction(filtered_catalog, fraction) -> None:
    catalog, vectors, rank, queries = filtered_catalog
    limit = int(N * fraction)
    keep = rank < limit
    assert keep.sum() == limit and np.array_equal(catalog.allowed("tops", f"rank < {limit}"), keep)
    before = dict(catalog.filtered_paths)
    assert _filtered_recall(catalog, vectors, keep, queries, f"rank < {limit}") >= 0.99
    path = "hnsw" if fraction == 0.5 else "exact"  # 5000 photos pass 50 %: above FilteredSearch.exact_rows
    assert catalog.filtered_paths[path] - before[path] == len(queries)


def test_filtered_search_keeps_recall_when_forced_through_the_hnsw_filter(filtered_catalog) -> None:
    """The HNSW path alone (exact search switched off) also reaches the target at 10 % and 2 %."""
    catalog, vectors, rank, queries = filtered_catalog
    forced = catalog.with_filtered_search(FilteredSearch(exact_rows=0, exact_fraction=0.0))
    for limit in (N // 10, N // 50):
        assert _filtered_recall(forced, vectors, rank < limit, queries, f"rank < {limit}") >= 0.99
    assert forced.filtered_paths == {"exact": 0, "hnsw": 2 * len(queries)}


def test_filtered_search_applies_every_type_when_filters_combine(filtered_catalog) -> None:
    catalog, vectors, rank, queries = filtered_catalog
    ids = np.arange(N)
    keep = ((ids % 3 != 1) & (ids % 2 == 1) & (ids % 7 == 0)) | ((ids % 5 == 4) & (rank < 50))
    text = "(tier in ['a', 'c'] and sale and tags contains 'x') or (tags in ['t4'] and not rank >= 50)"
    assert np.array_equal(catalog.allowed("tops", text), keep)
    assert _filtered_recall(catalog, vectors, keep, queries[:40], text, k=6) >= 0.99


def test_filtered_search_returns_nothing_when_no_product_passes(filtered_catalog) -> None:
    catalog, _, _, queries = filtered_catalog
    assert catalog.search("tops", queries[:3], 6, filter="rank < 0") == [[], [], []]
    with pytest.raises(InvalidInputError, match="unknown attribute 'price'"):
        catalog.search("tops", queries[:1], 6, filter="price < 3")


def test_attributes_outside_the_four_types_or_named_like_keywords_stay_in_json_but_not_in_the_schema(tmp_path: Path) -> None:
    records = [PhotoRecord(1, "tops", "a", None, "", {"rgb": [1, 2, 3], "params": {"a": 1}, "and": "x", "sleeve length": "s",
                                                       "colour": "red"})]
    write_catalog(tmp_path / "c", records, np.eye(1, 4, dtype=np.float32), EMB)
    catalog = Catalog.open(tmp_path / "c")
    assert catalog.manifest.attributes == {"colour": "string"}
    assert catalog.products([1])[1]["attributes"]["rgb"] == [1, 2, 3]
    with pytest.raises(InvalidInputError, match="unknown attribute 'rgb'"):
        catalog.search("tops", np.eye(1, 4, dtype=np.float32), 1, filter="rgb contains 'x'")


def test_catalog_search_cli_prints_filtered_matches_of_a_stored_product(filtered_catalog) -> None:


    catalog = filtered_catalog[0]
    r = CliRunner().invoke(app, ["catalog", "search", str(catalog.path), "--product", "5", "-k", "3", "--filter", "tier == 'c'"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["version"] == catalog.version and len(out["matches"]) == 3
    assert all(m["attributes"]["tier"] == "c" for m in out["matches"])
    r = CliRunner().invoke(app, ["catalog", "search", str(catalog.path), "--product", "5", "--filter", "tier < 3"])
    assert r.exit_code == 2 and "attribute 'tier' is a string" in r.output


def test_filtered_search_answers_from_many_threads_when_filters_differ(filtered_catalog) -> None:
    """hnswlib calls the Python filter under the GIL: concurrent filtered searches neither block
    nor leak another thread's filter into an answer."""

    catalog, _, rank, queries = filtered_catalog
    forced = catalog.with_filtered_search(FilteredSearch(exact_rows=0, exact_fraction=0.0))
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for i in range(30):
                limit = 3000 + 500 * t
                for row in forced.search("tops", queries[i : i + 1], 6, filter=f"rank < {limit}"):
                    assert len(row) == 6 and all(rank[m.product_id] < limit for m in row)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert forced.filtered_paths["hnsw"] == 4 * 30


def test_filter_type_error_is_raised_when_an_equal_valued_filter_was_cached(filtered_catalog) -> None:
    catalog = filtered_catalog[0]
    catalog.allowed("tops", "sale == true")
    with pytest.raises(InvalidInputError, match="attribute 'sale' is a boolean; expected a boolean value, got 1.0"):
        catalog.allowed("tops", "sale == 1")  # 1.0 == True in Python: the mask cache must not answer it
