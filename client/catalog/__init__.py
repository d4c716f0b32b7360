"""The catalog index: shop photos → embeddings → one hnswlib index per category + SQLite + manifest.

One module per job; every public name is re-exported here, so callers import from
``lookserve.client.catalog``:

* :mod:`~lookserve.client.catalog.records` — the inputs: :class:`PhotoRecord` from a
  street2shop-format data set or a folder of images with a metadata CSV (:func:`load_records`);
* :mod:`~lookserve.client.catalog.embedder` — the embedder as the catalog sees it
  (:class:`EmbedderInfo`, :class:`Embedder`, :class:`TritonEmbedder`);
* :mod:`~lookserve.client.catalog.index` — HNSW parameters, ef tuning to a recall target, exact search;
* :mod:`~lookserve.client.catalog.store` — the directory layout, :class:`Manifest`, writing a
  catalog and switching it into place atomically (:func:`write_catalog`);
* :mod:`~lookserve.client.catalog.build` — embedding every shop photo, resumably (:func:`build_catalog`);
* :mod:`~lookserve.client.catalog.backend` — the :class:`CatalogBackend` interface and :class:`Match`;
* :mod:`~lookserve.client.catalog.directory` — :class:`Catalog`, the hnswlib directory backend
  (open, verify, search) and :func:`open_for_client`;
* :mod:`~lookserve.client.catalog.address` — :func:`open_catalog`: the backend an address names
  (:func:`follow_catalog`: a reference that follows its pointer);
* :mod:`~lookserve.client.catalog.milvus` — :class:`MilvusCatalog`, the same interface on a Milvus
  server (``milvus://HOST:PORT/ALIAS``; the ``[milvus]`` extra, so it is not re-exported here) and
  :mod:`~lookserve.client.catalog.milvus_server`, the embedded server on loopback;
* :mod:`~lookserve.client.catalog.root` — a catalog root and its ``current`` pointer (:func:`set_current`);
* :mod:`~lookserve.client.catalog.watcher` — :class:`CatalogRef` and :class:`CatalogWatcher`,
  which follows the pointer in a running client;
* :mod:`~lookserve.client.catalog.attributes` — typed product attributes (number, string,
  boolean, list of strings) and the columns filters run on;
* :mod:`~lookserve.client.catalog.filters` — the filter language (``price < 50 and in_stock``)
  → an expression tree (:func:`parse_filter`), applied inside :meth:`Catalog.search`;
* :mod:`~lookserve.client.catalog.update` — incremental updates (:func:`update_catalog`): add,
  replace and remove products as a new catalog version.

:meth:`Catalog.open` verifies every checksum (:class:`~lookserve.errors.CatalogIntegrityError`)
and, given the served embedder, its version (:class:`~lookserve.errors.CatalogVersionMismatch`).
A :class:`Catalog` is never mutated after opening — searches only read — and a new index
replaces an old one by reference (:class:`CatalogRef`), because hnswlib is not safe for
``add_items`` concurrent with ``knn_query``.

A *catalog root* holds one catalog per embedder version (``catalog-v1``, ``catalog-v2``, …) and a
``current`` symlink naming the one clients use, replaced atomically (:func:`set_current`). A
:class:`CatalogWatcher` is a :class:`CatalogRef` that follows that pointer: a running client picks
up a new (embedder version, index) pair without a restart (see :mod:`lookserve.client.swap`).

The search benchmark of the HNSW tuning lives in :mod:`lookserve.bench.search`.
"""

from lookserve.client.catalog.address import (
    MILVUS_SCHEMES,
    SCHEMES,
    catalog_path,
    follow_catalog,
    is_milvus_address,
    open_catalog,
)
from lookserve.client.catalog.attributes import AttributeColumns
from lookserve.client.catalog.backend import CatalogBackend, Match
from lookserve.client.catalog.build import build_catalog, embed_records, partial_dir_for
from lookserve.client.catalog.directory import Catalog, check_embedder, describe, open_for_client
from lookserve.client.catalog.embedder import (
    Embedder,
    EmbedderInfo,
    TritonEmbedder,
    model_file_sha256,
)
from lookserve.client.catalog.filters import Expr, FilterError
from lookserve.client.catalog.filters import parse as parse_filter
from lookserve.client.catalog.index import (
    SPACE,
    FilteredSearch,
    IndexParams,
    exact_search,
    new_index,
    recall_at_k,
    tune_ef,
)
from lookserve.client.catalog.records import (
    PhotoRecord,
    load_records,
    records_from_csv,
    records_from_street2shop,
)
from lookserve.client.catalog.root import (
    CURRENT,
    catalog_dir_name,
    read_current,
    resolve_catalog,
    set_current,
)
from lookserve.client.catalog.store import (
    DATABASE,
    FORMAT_VERSION,
    MANIFEST,
    CategoryInfo,
    Manifest,
    index_file,
    switch_into_place,
    vectors_file,
    write_catalog,
)
from lookserve.client.catalog.update import UpdateResult, update_catalog
from lookserve.client.catalog.watcher import CatalogRef, CatalogWatcher
from lookserve.fsutil import sha256_file

__all__ = [
    "CURRENT", "DATABASE", "FORMAT_VERSION", "MANIFEST", "MILVUS_SCHEMES", "SCHEMES", "SPACE",
    "AttributeColumns", "Expr", "FilterError", "FilteredSearch", "UpdateResult", "parse_filter", "update_catalog",
    "Catalog", "CatalogBackend", "CatalogRef", "CatalogWatcher", "CategoryInfo", "Embedder", "EmbedderInfo",
    "IndexParams", "Manifest", "Match", "PhotoRecord", "TritonEmbedder",
    "build_catalog", "catalog_dir_name", "catalog_path", "check_embedder", "describe", "embed_records",
    "exact_search", "follow_catalog", "index_file", "is_milvus_address", "load_records", "model_file_sha256", "new_index", "open_catalog",
    "open_for_client", "partial_dir_for", "read_current", "recall_at_k", "records_from_csv",
    "records_from_street2shop", "resolve_catalog", "set_current", "sha256_file", "switch_into_place",
    "tune_ef", "vectors_file", "write_catalog",
]
