"""The hnswlib catalog directory, opened: :class:`Catalog` (the default
:class:`~lookserve.client.catalog.backend.CatalogBackend`), its embedder check and
:func:`open_for_client`.

:meth:`Catalog.open` verifies every checksum (:class:`CatalogIntegrityError`) and, given the
served embedder, its version (:class:`CatalogVersionMismatch`). A :class:`Catalog` is never
mutated after opening — searches only read — and a new index replaces an old one by reference
(:class:`~lookserve.client.catalog.watcher.CatalogRef`), because hnswlib is not safe for
``add_items`` concurrent with ``knn_query``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from lookserve import contracts
from lookserve.client.catalog.attributes import AttributeColumns
from lookserve.client.catalog.backend import Match
from lookserve.client.catalog.embedder import EmbedderInfo, model_file_sha256
from lookserve.client.catalog.filters import Expr, as_expr, evaluate
from lookserve.client.catalog.index import SPACE, FilteredSearch, exact_search
from lookserve.client.catalog.root import resolve_catalog
from lookserve.client.catalog.store import (
    DATABASE,
    MANIFEST,
    Manifest,
    delta_file,
    index_file,
    vectors_file,
)
from lookserve.errors import (
    CatalogError,
    CatalogIntegrityError,
    CatalogVersionMismatch,
    InvalidInputError,
)
from lookserve.fsutil import BackgroundSha256

log = logging.getLogger(__name__)


class Catalog:
    """A verified, read-only catalog. Safe for concurrent searches from many threads."""

    def __init__(self, path: Path, manifest: Manifest, indexes: Mapping[str, Any], labels: Mapping[str, np.ndarray],
                 photo_images: Mapping[str, list[str]], columns: AttributeColumns | None = None,
                 filtered: FilteredSearch = FilteredSearch()) -> None:
        self.path = path
        self.manifest = manifest
        self._indexes = dict(indexes)
        self._labels = dict(labels)  # category -> product id per HNSW label (-1: removed by an update)
        self._photo_images = dict(photo_images)
        self._columns: AttributeColumns | None = None
        self._label_rows: dict[str, np.ndarray] = {}
        self._columns_lock = threading.Lock()
        if columns is not None:
            self._set_columns(columns)
        self.filtered = filtered
        self._max_photos = {c: int(np.unique(v[v >= 0], return_counts=True)[1].max()) if (v >= 0).any() else 1
                            for c, v in self._labels.items()}
        self._masks: OrderedDict[tuple[str, str], tuple[np.ndarray, list[bool], np.ndarray]] = OrderedDict()
        self._gathered: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # unit vectors of kept photos
        self._masks_lock = threading.Lock()
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}  # base memory map, delta
        self._joined: dict[str, np.ndarray] = {}
        self.filtered_paths = {"exact": 0, "hnsw": 0}  # queries answered by each path (approximate under threads)
        self._local = threading.local()
        #: names of the files whose sha256 :meth:`open` checked against the manifest
        self.verified: frozenset[str] = frozenset()

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        embedder: EmbedderInfo | None = None,
        served_versions: Sequence[str] | None = None,
        verify: bool = True,
        attributes: bool = True,
        photos: bool = True,
    ) -> Catalog:
        """Open and verify a catalog.

        ``embedder``: the served embedder; its name and version (and model checksum when both
        sides know it) must equal the manifest's. ``served_versions``: the versions Triton
        serves now; the catalog's must be one of them. ``verify``: check every file's sha256.
        ``attributes``: read the attribute columns filters need now (else on the first filter).
        ``photos=False``: check each category's photo rows against its index by SQL aggregates
        (count, label range; the primary key keeps labels unique) instead of reading every row —
        what an update's private copy, never searched, needs; such a catalog refuses
        :meth:`search`, :meth:`product_ids` and :meth:`live_labels`.
        A catalog switched into place while it was being read is read again (once). A symlink
        (e.g. a root's ``current`` pointer) or a catalog root is resolved first, so the opened
        catalog stays bound to one directory when the pointer moves.
        """
        path = resolve_catalog(path)
        for attempt in range(2):
            before = _read_bytes(path / MANIFEST)
            try:
                return cls._open_once(path, before, embedder, served_versions, verify, attributes, photos)
            except (CatalogIntegrityError, FileNotFoundError) as e:
                if attempt == 0 and before is not None and _read_bytes(path / MANIFEST) != before:
                    log.info("catalog %s was replaced while opening; reading it again", path)
                    continue
                if isinstance(e, FileNotFoundError):
                    raise CatalogIntegrityError(f"catalog file {e.filename} is missing") from e
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _open_once(cls, path: Path, manifest_bytes: bytes | None, embedder: EmbedderInfo | None,
                   served_versions: Sequence[str] | None, verify: bool, attributes: bool = True,
                   photos: bool = True) -> Catalog:
        manifest_path = path / MANIFEST
        if manifest_bytes is None:
            raise CatalogError(f"{path} is not a catalog: {MANIFEST} is missing (build one with lookserve catalog build)")
        try:
            raw = json.loads(manifest_bytes)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, digit limit, nesting
            raise CatalogIntegrityError(f"{manifest_path} is not valid JSON: {e}") from e
        manifest = Manifest.from_dict(raw)
        if manifest.space != SPACE:
            raise CatalogError(f"catalog space {manifest.space!r} is not supported (expected {SPACE!r})")
        check_embedder(manifest, embedder, served_versions)
        expected = {DATABASE} | {index_file(c) for c in manifest.categories} | {vectors_file(c) for c in manifest.categories}
        missing = expected - set(manifest.files)
        if missing:
            raise CatalogIntegrityError(f"{manifest_path} records no checksum for {sorted(missing)}")
        for name in manifest.files:
            if not (path / name).is_file():
                raise CatalogIntegrityError(f"catalog file {path / name} is missing")
        # every file is hashed by background threads while the indexes load and the photo rows are
        # read; nothing is searched or returned before the checksums match
        # (hnswlib's load_index follows no stored neighbour, so a damaged file loads or fails cleanly)
        hashing = BackgroundSha256(path / name for name in manifest.files) if verify else None
        try:
            catalog = cls._load(path, manifest, photos)
        except BaseException as e:
            if hashing is not None:  # a damaged file explains the failure better than the failure
                _check_checksums(path, manifest, hashing.result(), cause=e)
            raise
        if hashing is not None:
            _check_checksums(path, manifest, hashing.result())
        log.info("opened catalog %s: %s, embedder %s v%s", path, dict(manifest.counts), manifest.embedder.name,
                 manifest.embedder.version)
        catalog.verified = frozenset(manifest.files) if verify else frozenset()
        if attributes:
            catalog.columns  # noqa: B018 - read now, so the first filtered search does not wait for it
        return catalog

    @classmethod
    def _load(cls, path: Path, manifest: Manifest, photos: bool) -> Catalog:
        """The catalog's indexes and photo rows, read (not yet verified)."""
        indexes, labels, names = {}, {}, {}
        db = sqlite3.connect(f"file:{path / DATABASE}?mode=ro", uri=True)
        try:
            for category, info in manifest.categories.items():
                index = hnswlib.Index(space=SPACE, dim=manifest.dim)
                try:
                    index.load_index(str(path / index_file(category)), max_elements=info.count)
                except RuntimeError as e:
                    raise CatalogIntegrityError(f"cannot load {path / index_file(category)}: {e}") from e
                if index.get_current_count() != info.count:
                    raise CatalogIntegrityError(
                        f"{index_file(category)} holds {index.get_current_count()} items, manifest says {info.count}"
                    )
                index.set_ef(max(info.ef, info.k))
                indexes[category] = index
                if not photos:
                    n, lo, hi = db.execute("SELECT COUNT(*), MIN(label), MAX(label) FROM photos WHERE category = ?",
                                           (category,)).fetchone()
                    if n != info.count - info.deleted or (n and (lo < 0 or hi >= info.count)):
                        raise CatalogIntegrityError(f"{DATABASE}: photos of {category} do not match the index")
                    continue
                rows = db.execute(
                    "SELECT label, product_id, image FROM photos WHERE category = ? ORDER BY label", (category,)
                ).fetchall()
                found = np.array([r[0] for r in rows], dtype=np.int64)
                if (len(rows) != info.count - info.deleted or (len(found) and (found[0] < 0 or found[-1] >= info.count))
                        or len(np.unique(found)) != len(found)):
                    raise CatalogIntegrityError(f"{DATABASE}: photos of {category} do not match the index")
                product_of = np.full(info.count, -1, dtype=np.int64)
                product_of[found] = [r[1] for r in rows]
                photo_images = [""] * info.count
                for r in rows:
                    photo_images[r[0]] = r[2]
                labels[category] = product_of
                names[category] = photo_images
        except sqlite3.DatabaseError as e:
            raise CatalogIntegrityError(f"{path / DATABASE} is unreadable: {e}") from e
        finally:
            db.close()
        return cls(path, manifest, indexes, labels, names)

    @property
    def columns(self) -> AttributeColumns:
        """The typed attribute columns filters run on (read from SQLite on first use unless
        :meth:`open` was asked for them eagerly)."""
        if self._columns is None:
            with self._columns_lock:
                if self._columns is None:
                    self._set_columns(self._read_columns())
        return self._columns

    def _set_columns(self, columns: AttributeColumns) -> None:
        # per category: the product row (in columns) of each label, -1 for a removed label
        self._label_rows = {c: np.where(v >= 0, columns.positions(np.maximum(v, 0)), -1) for c, v in self._labels.items()}
        self._columns = columns

    def _read_columns(self) -> AttributeColumns:
        live = sorted({int(p) for v in self._labels.values() for p in v[v >= 0].tolist()})
        schema = dict(self.manifest.attributes)
        if not schema:
            return AttributeColumns.from_rows({}, live, ())
        db = sqlite3.connect(f"file:{self.path / DATABASE}?mode=ro", uri=True)
        try:
            return AttributeColumns.from_rows(schema, live, db.execute("SELECT product_id, name, num, text FROM attributes"))
        except sqlite3.DatabaseError as e:
            raise CatalogIntegrityError(f"{self.path / DATABASE} is unreadable: {e}") from e
        finally:
            db.close()

    def with_filtered_search(self, filtered: FilteredSearch) -> Catalog:
        """This catalog (sharing its loaded indexes) searching filters by another policy."""
        return Catalog(self.path, self.manifest, self._indexes, self._labels, self._photo_images, self.columns, filtered)

    # --- properties ----------------------------------------------------------------------
    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self._indexes)

    @property
    def embedder(self) -> EmbedderInfo:
        return self.manifest.embedder

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def address(self) -> str:
        """The catalog directory, as :func:`~lookserve.client.catalog.address.open_catalog` takes it."""
        return str(self.path)

    @functools.cached_property
    def version(self) -> str:
        """This catalog's identity: sha256 of its manifest's canonical JSON, which records every
        other file's checksum — two directories with one version hold the same catalog."""
        canonical = json.dumps(self.manifest.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def describe(self) -> dict:
        """What the catalog is, JSON-ready: address, version, embedder, HNSW parameters, counts."""
        m = self.manifest
        return {
            "path": str(self.path),
            "version": self.version,
            "embedder": asdict(m.embedder),
            "dim": m.dim,
            "space": m.space,
            "M": m.params.M,
            "ef_construction": m.params.ef_construction,
            "counts": dict(m.counts),
            "categories": {c: asdict(v) for c, v in m.categories.items()},
            "created_utc": m.created_utc,
            "skipped": len(m.skipped),
            "attributes": dict(m.attributes),
            "parent": m.parent,
        }

    # --- searching -----------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "db", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path / DATABASE}?mode=ro", uri=True, check_same_thread=True)
            self._local.db = conn
        return conn

    def search_labels(self, category: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """HNSW top-k photos: (labels [n, k'], cosine similarities [n, k']), k' = min(k, count)."""
        index = self._indexes.get(category)
        if index is None:
            raise CatalogError(f"the catalog has no {category!r} products (it has: {', '.join(sorted(self._indexes))})")
        q = self._queries(queries)
        info = self.manifest.categories[category]
        k = min(k, info.count - info.deleted)
        labels, distances = index.knn_query(q, k=k, num_threads=1)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def search(self, category: str, queries: np.ndarray, k: int = 6, filter: str | Expr | None = None) -> list[list[Match]]:
        """Top-k products per query (a product's similarity is that of its best photo).

        ``filter`` (text in the language of :mod:`~lookserve.client.catalog.filters`, or its
        tree) keeps only the products it accepts, inside the search: the result is the top-k of
        the filtered products, not a filtered top-k. A filter keeping few photos is answered by
        exact search over them, others by HNSW with the filter (see :class:`FilteredSearch`)."""
        expr = as_expr(filter)
        if expr is None:
            labels, sims = self._search_unfiltered(category, queries, k)
        else:
            labels, sims = self.search_labels_filtered(category, queries, k, expr)
        return self._matches(category, labels, sims, k)

    def _search_unfiltered(self, category: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.manifest.categories.get(category)
        count = info.count - info.deleted if info else 0
        per_product = info.products if info else 0
        # Several photos may belong to one product: ask for more photos than products wanted.
        want = min(count, k * max(1, -(-count // max(per_product, 1))))
        return self.search_labels(category, queries, max(want, min(k, count)))

    def allowed(self, category: str, filter: str | Expr) -> np.ndarray:
        """Boolean mask over ``category``'s labels: photos of live products the filter accepts."""
        return self._allowed(category, as_expr(filter))[0]

    def _allowed(self, category: str, expr: Expr) -> tuple[np.ndarray, list[bool], np.ndarray]:
        if category not in self._indexes:
            raise CatalogError(f"the catalog has no {category!r} products (it has: {', '.join(sorted(self._indexes))})")
        key = (category, str(expr))  # not the tree: 1.0 == True would make `x == 1` and `x == true` one key
        with self._masks_lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
                return hit
        products = evaluate(expr, self.columns)
        rows = self._label_rows[category]
        mask = np.zeros(len(rows), bool)
        live = rows >= 0
        mask[live] = products[rows[live]]
        entry = (mask, mask.tolist(), np.flatnonzero(mask))  # list.__getitem__: the cheapest filter callable
        with self._masks_lock:
            self._masks[key] = entry
            while len(self._masks) > self.filtered.cache:
                self._masks.popitem(last=False)
        return entry

    def search_labels_filtered(self, category: str, queries: np.ndarray, k: int,
                               filter: str | Expr) -> tuple[np.ndarray, np.ndarray]:
        """Photo labels (and similarities) per query holding the top-``k`` filtered products;
        rows are padded with label -1 when fewer photos pass."""
        q = self._queries(queries)
        expr = as_expr(filter)
        mask, as_list, kept = self._allowed(category, expr)
        # enough photos for k distinct products, whatever their photos' order
        want = min(len(kept), k * self._max_photos[category])
        if want == 0:
            return np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
        info = self.manifest.categories[category]
        live = info.count - info.deleted
        if len(kept) <= max(self.filtered.exact_rows, self.filtered.exact_fraction * live):
            self.filtered_paths["exact"] += len(q)
            return self._exact(category, q, kept, want, str(expr))
        self.filtered_paths["hnsw"] += len(q)
        index = self._indexes[category]
        ask = min(len(kept), max(want, self.filtered.ef_for(info.ef, len(kept) / max(live, 1))))
        labels = np.full((len(q), want), -1, np.int64)
        sims = np.zeros((len(q), want), np.float32)
        for i in range(len(q)):
            try:
                got, dist = index.knn_query(q[i : i + 1], k=ask, num_threads=1, filter=as_list.__getitem__)
            except RuntimeError:  # fewer than `ask` reachable through the filter: search them exactly
                got_l, got_s = self._exact(category, q[i : i + 1], kept, want, str(expr))
                labels[i], sims[i] = got_l[0], got_s[0]
                continue
            labels[i] = got[0, :want]
            sims[i] = 1.0 - dist[0, :want]
        return labels, sims

    def _exact(self, category: str, q: np.ndarray, kept: np.ndarray, want: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``want`` over the kept photos; their unit vectors are gathered once per
        filter and kept while they fit in ``FilteredSearch.gather_bytes``."""
        with self._masks_lock:
            v = self._gathered.get((category, key))
            if v is not None:
                self._gathered.move_to_end((category, key))
        if v is None:
            v = self.vector_rows(category, kept)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            if v.nbytes <= self.filtered.gather_bytes:
                with self._masks_lock:
                    self._gathered[(category, key)] = v
                    while sum(x.nbytes for x in self._gathered.values()) > self.filtered.gather_bytes:
                        self._gathered.popitem(last=False)
        idx, sims = exact_search(v, q, want, normalized=True)
        return kept[idx], sims.astype(np.float32)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInputError(f"queries must be [n, {self.dim}], got {q.shape}")
        return q

    def _matches(self, category: str, labels: np.ndarray, sims: np.ndarray, k: int) -> list[list[Match]]:
        product_of = self._product_of(category)
        results = []
        for row_labels, row_sims in zip(labels, sims, strict=True):
            best: dict[int, tuple[float, int]] = {}
            for label, sim in zip(row_labels.tolist(), row_sims.tolist(), strict=True):
                if label < 0:
                    continue
                pid = int(product_of[label])
                if pid < 0:  # pragma: no cover - hnswlib never returns a label marked deleted
                    continue
                if pid not in best:
                    best[pid] = (sim, label)
                if len(best) == k:
                    break
            results.append([(pid, sim, label) for pid, (sim, label) in best.items()])
        meta = self.products({pid for row in results for pid, _, _ in row})
        return [
            [
                Match(pid, float(sim), category, meta[pid]["title"], meta[pid]["image"],
                      self._photo_images[category][label], meta[pid]["attributes"])
                for pid, sim, label in row
            ]
            for row in results
        ]

    def products(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = sorted({int(i) for i in ids})
        if not ids:
            return {}
        rows = self._db().execute(
            f"SELECT id, category, title, image, attributes FROM products WHERE id IN ({','.join('?' * len(ids))})", ids
        ).fetchall()
        return {r[0]: {"id": r[0], "category": r[1], "title": r[2], "image": r[3], "attributes": json.loads(r[4] or "{}")}
                for r in rows}

    # A category's vectors (row = HNSW label, removed labels included) are one base file, memory
    # mapped, and — after updates — a small delta file of the rows added since the base was
    # written (:func:`~lookserve.client.catalog.store.delta_file`), read into memory.
    def vector_segments(self, category: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(the base file's rows, memory mapped; the delta's rows or None)."""
        got = self._vectors.get(category)
        if got is None:
            if category not in self.manifest.categories:
                raise CatalogError(f"the catalog has no {category!r} products (it has: {', '.join(sorted(self._indexes))})")
            base = np.load(self.path / vectors_file(category), mmap_mode="r")
            delta = np.load(self.path / delta_file(category)) if delta_file(category) in self.manifest.files else None
            rows = len(base) + (len(delta) if delta is not None else 0)
            if rows != self.manifest.categories[category].count or base.shape[1:] != (self.dim,):
                raise CatalogIntegrityError(f"the vectors of {category} hold {rows} rows of {base.shape[1:]}, the "
                                            f"manifest says {self.manifest.categories[category].count} of ({self.dim},)")
            got = self._vectors[category] = (base, delta)
        return got

    def vectors(self, category: str) -> np.ndarray:
        """The stored embeddings of a category (row = HNSW label, removed labels included), in memory."""
        return np.array(self.vectors_mapped(category))

    def vectors_mapped(self, category: str) -> np.ndarray:
        """:meth:`vectors` without reading them: the base file's memory map when the category has
        no delta, else base and delta joined once (a copy, kept). Searches gather rows with
        :meth:`vector_rows` instead."""
        base, delta = self.vector_segments(category)
        if delta is None:
            return base
        with self._masks_lock:
            joined = self._joined.get(category)
            if joined is None:
                joined = self._joined[category] = np.concatenate([base, delta])
        return joined

    def vector_rows(self, category: str, labels: np.ndarray) -> np.ndarray:
        """The stored embeddings of ``labels`` ([n, dim] float32, a copy), from base and delta."""
        base, delta = self.vector_segments(category)
        labels = np.asarray(labels, dtype=np.int64)
        if delta is None:
            return np.asarray(base[labels], dtype=np.float32)
        out = np.empty((len(labels), self.dim), np.float32)
        in_base = labels < len(base)
        out[in_base] = base[labels[in_base]]
        out[~in_base] = delta[labels[~in_base] - len(base)]
        return out

    def live_labels(self, category: str) -> np.ndarray:
        """The labels of photos that are searchable (not removed by an update)."""
        return np.flatnonzero(self._product_of(category) >= 0)

    def product_ids(self, category: str) -> np.ndarray:
        return self._product_of(category).copy()

    def _product_of(self, category: str) -> np.ndarray:
        v = self._labels.get(category)
        if v is None and category in self._indexes:
            raise CatalogError(f"catalog {self.path} was opened without its photo rows (photos=False); open it again "
                               "to search it or read its products")
        if v is None:
            raise CatalogError(f"the catalog has no {category!r} products (it has: {', '.join(sorted(self._indexes))})")
        return v

    def image_path(self, image: str) -> Path | None:
        """Where a stored image name is on this machine (None for URLs)."""
        if image.startswith(("http://", "https://")):
            return None
        p = Path(image)
        if not p.is_absolute() and self.manifest.images_root:
            p = Path(self.manifest.images_root) / p
        return p


def _check_checksums(path: Path, manifest: Manifest, hashed: Mapping[Path, tuple[str, int]],
                     cause: BaseException | None = None) -> None:
    """:class:`CatalogIntegrityError` naming the first file whose (sha256, bytes) in ``hashed``
    differ from the manifest's record."""
    for name, info in manifest.files.items():
        file = path / name
        digest, size = hashed[file]
        if size != info.get("bytes") or digest != info.get("sha256"):
            raise CatalogIntegrityError(
                f"catalog file {file} does not match its manifest (sha256 {digest[:12]}…, {size} bytes; "
                f"expected {str(info.get('sha256'))[:12]}…, {info.get('bytes')} bytes): it was modified or "
                "damaged; rebuild the catalog"
            ) from cause


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def check_embedder(manifest: Manifest, served: EmbedderInfo | None, served_versions: Sequence[str] | None = None) -> None:
    """Raise :class:`CatalogVersionMismatch` unless the served embedder is the catalog's."""
    built = manifest.embedder
    if served is not None:
        if served.name != built.name:
            raise CatalogVersionMismatch(
                f"catalog was built with model {built.name!r}, the chain uses {served.name!r}; rebuild the catalog"
            )
        if str(served.version) != str(built.version):
            raise CatalogVersionMismatch(
                f"catalog was built with {built.name} version {built.version}, but version {served.version} is "
                f"served: embeddings of different versions are not comparable. Serve version {built.version} "
                f"again or rebuild the catalog (lookserve catalog build)"
            )
        if served.model_sha256 and built.model_sha256 and served.model_sha256 != built.model_sha256:
            raise CatalogVersionMismatch(
                f"{built.name} version {built.version}'s model file changed since the catalog was built "
                f"(sha256 {served.model_sha256[:12]}… vs {built.model_sha256[:12]}…); rebuild the catalog"
            )
    if served_versions is not None and str(built.version) not in {str(v) for v in served_versions}:
        raise CatalogVersionMismatch(
            f"catalog needs {built.name} version {built.version}, but the server serves version(s) "
            f"{', '.join(map(str, served_versions)) or 'none'}; load version {built.version} or rebuild the catalog"
        )


def open_for_client(path: str | os.PathLike, client, model_repository: str | os.PathLike | None = None,
                    verify: bool = True) -> Catalog:
    """Open a catalog and check that ``client``'s server serves its embedder version."""
    path = resolve_catalog(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CatalogError(f"{path} is not a catalog: {MANIFEST} is missing")
    try:
        raw = json.loads(manifest_path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise CatalogIntegrityError(f"{manifest_path} is not valid JSON: {e}") from e
    embedder = raw.get("embedder") if isinstance(raw, dict) else None
    name = embedder.get("name") if isinstance(embedder, dict) else None
    if not isinstance(name, str) or not name:
        name = contracts.EMBEDDER  # Catalog.open below names what is wrong with the manifest
    meta = client.model_metadata(name)
    catalog = Catalog.open(path, served_versions=meta.versions, verify=verify)
    if model_repository is not None:
        sha = model_file_sha256(model_repository, name, catalog.embedder.version)
        check_embedder(catalog.manifest, EmbedderInfo(name, catalog.embedder.version, sha))
    return catalog


def describe(catalog: Catalog) -> dict:
    """:meth:`Catalog.describe` (kept for the callers of the function)."""
    return catalog.describe()
