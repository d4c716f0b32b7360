"""The catalog directory on disk: its layout and manifest, writing one in a temporary directory
and switching it into place with one atomic directory exchange.

A catalog directory holds::

    manifest.json            what built it (embedder name, version, model checksum), dimension,
                             space, HNSW parameters, per-category counts, tuned ef and measured
                             recall@K, and the sha256 of every other file
    products.sqlite          products(id, category, title, image, attributes JSON),
                             photos(category, label, product_id, image, sha256): label = HNSW
                             label (a label removed by an update has no row),
                             attribute_schema(name, type) and attributes(product_id, name, num,
                             text): the typed attributes filters run on (lookserve.client.catalog.attributes)
    index_<category>.bin     hnswlib index (space cosine); its file records neither space nor
                             dimension, so the manifest does
    vectors_<category>.npy   the embeddings (row = label, removed labels included), for exact
                             search and rebuilding
    truth_<category>.npy     ef's tuning queries and their exact top-(k + spare) labels and
                             similarities (:class:`~lookserve.client.catalog.index.GroundTruth`),
                             which an update merges its changes into instead of searching every
                             row again (absent in catalogs written before it: an update then
                             searches them all)

A catalog is written into ``DIR.tmp-xxxx`` next to ``DIR`` and switched into place with one
atomic directory exchange (``renameat2(RENAME_EXCHANGE)``; a two-step rename where the kernel
lacks it); the old directory stays whole until the switch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from lookserve.client.catalog.attributes import TYPES, infer_schema, sql_rows
from lookserve.client.catalog.embedder import EmbedderInfo
from lookserve.client.catalog.index import (
    SPACE,
    GroundTruth,
    IndexParams,
    new_index,
    tune_ef_with_truth,
)
from lookserve.client.catalog.records import PhotoRecord
from lookserve.errors import CatalogError, CatalogIntegrityError, ConfigError, InvalidInputError
from lookserve.fsutil import atomic_write_json, fsync_dir, sha256_file, sha256_files
from lookserve.taxonomy import CATEGORIES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "products.sqlite"


def index_file(category: str) -> str:
    return f"index_{category}.bin"


def vectors_file(category: str) -> str:
    return f"vectors_{category}.npy"


def delta_file(category: str) -> str:
    """The rows of a category's vectors added since its base file (:func:`vectors_file`) was
    written: an update appends here instead of rewriting the base (see
    :data:`~lookserve.client.catalog.update.DELTA_FRACTION`)."""
    return f"vectors_{category}.delta.npy"


def truth_file(category: str) -> str:
    return f"truth_{category}.npy"


@dataclass(frozen=True)
class CategoryInfo:
    count: int  # labels in the index, removed ones included (count - deleted photos are searchable)
    products: int
    ef: int
    recall_at_k: float
    k: int
    tune_sample: int
    deleted: int = 0  # labels marked deleted by updates since the index was last rebuilt


#: the manifest's own field holding :func:`manifest_checksum` of the rest of it
CHECKSUM_FIELD = "checksum"


def manifest_checksum(d: Mapping[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON without its ``checksum`` field. The manifest records
    the checksum of every other file of the catalog and, through this, of itself: a manifest
    edited or damaged by hand (another embedder version, other index parameters, another image
    folder) is refused instead of read with another meaning. It detects accidents, not an
    attacker, who could recompute it."""
    body = {k: v for k, v in d.items() if k != CHECKSUM_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    embedder: EmbedderInfo
    dim: int
    space: str
    params: IndexParams
    categories: Mapping[str, CategoryInfo]
    counts: Mapping[str, int]
    files: Mapping[str, Mapping[str, Any]]  # name -> {"sha256", "bytes"}
    created_utc: str = ""
    format: int = FORMAT_VERSION
    skipped: tuple[str, ...] = ()
    images_root: str = ""  # relative image paths in SQLite are relative to this folder
    attributes: Mapping[str, str] = field(default_factory=dict)  # attribute name -> type
    parent: str = ""  # the version this one was updated from ("" for a build)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"]["ef_candidates"] = list(self.params.ef_candidates)
        d["skipped"] = list(self.skipped)
        d[CHECKSUM_FIELD] = manifest_checksum(d)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        try:
            if int(d["format"]) != FORMAT_VERSION:
                raise CatalogError(f"catalog format {d['format']} is not supported (this lookserve reads {FORMAT_VERSION})")
            if CHECKSUM_FIELD not in d:
                raise CatalogIntegrityError("catalog manifest records no checksum of itself (written by an older "
                                            "lookserve, or edited): rebuild the catalog with lookserve catalog build")
            if d[CHECKSUM_FIELD] != manifest_checksum(d):
                raise CatalogIntegrityError("catalog manifest does not match its own checksum: it was edited or "
                                            "damaged after it was written; rebuild the catalog")
            params = dict(d["params"])
            params["ef_candidates"] = tuple(params.get("ef_candidates", IndexParams.ef_candidates))
            categories = {c: CategoryInfo(**v) for c, v in d["categories"].items()}
            for c, info in categories.items():
                if c not in CATEGORIES:
                    raise ValueError(f"unknown category {c!r}")
                if info.deleted > info.count:
                    raise ValueError(f"category {c!r}: {info.deleted} deleted of {info.count} labels")
                for name in ("count", "products", "ef", "k", "tune_sample", "deleted"):
                    v = getattr(info, name)
                    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                        raise ValueError(f"category {c!r}: {name} must be a non-negative integer, got {v!r}")
            files = {k: dict(v) for k, v in d["files"].items()}
            if any(not isinstance(k, str) or "/" in k or "\\" in k or k.startswith(".") for k in files):
                raise ValueError(f"file names must be plain names inside the catalog: {sorted(map(str, files))}")
            dim = int(d["dim"])
            if dim < 1:
                raise ValueError(f"dim must be positive, got {dim}")
            return cls(
                embedder=EmbedderInfo(**d["embedder"]),
                dim=dim,
                space=str(d["space"]),
                params=IndexParams(**params),
                categories=categories,
                counts=dict(d["counts"]),
                files=files,
                created_utc=str(d.get("created_utc", "")),
                format=int(d["format"]),
                skipped=tuple(d.get("skipped", ())),
                images_root=str(d.get("images_root", "")),
                attributes=_schema(d.get("attributes", {})),
                parent=str(d.get("parent", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, ConfigError) as e:
            raise CatalogError(f"catalog manifest is malformed: {e!r}") from e



def _schema(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping) or any(not isinstance(k, str) or v not in TYPES for k, v in raw.items()):
        raise ValueError(f"attributes must map names to one of {TYPES}, got {raw!r}")
    return dict(raw)


SCHEMA_SQL = """
CREATE TABLE products (id INTEGER PRIMARY KEY, category TEXT NOT NULL, title TEXT, image TEXT, attributes TEXT);
CREATE TABLE photos (category TEXT NOT NULL, label INTEGER NOT NULL,
                     product_id INTEGER NOT NULL REFERENCES products(id), image TEXT, sha256 TEXT,
                     PRIMARY KEY (category, label));
CREATE INDEX photos_product ON photos(product_id);
CREATE TABLE attribute_schema (name TEXT PRIMARY KEY, type TEXT NOT NULL);
CREATE TABLE attributes (product_id INTEGER NOT NULL REFERENCES products(id), name TEXT NOT NULL,
                         num REAL, text TEXT);
CREATE INDEX attributes_product ON attributes(product_id);
"""


def photo_sha256(record: PhotoRecord) -> str | None:
    """sha256 of a record's local photo file (None when it is not a local file): an update
    re-embeds a photo only when its name or this checksum changed."""
    if record.path is None or not record.path.is_file():
        return None
    return sha256_file(record.path)


def insert_products(db: sqlite3.Connection, products: Sequence[PhotoRecord]) -> None:
    """Insert one row per product (its first record) and its typed attribute rows."""
    db.executemany(
        "INSERT INTO products VALUES (?, ?, ?, ?, ?)",
        [(p.product_id, p.category, p.title, p.image, json.dumps(dict(p.attributes), sort_keys=True)) for p in products],
    )
    db.executemany("INSERT INTO attributes VALUES (?, ?, ?, ?)",
                   [row for p in products for row in sql_rows(p.product_id, p.attributes)])


def write_schema(db: sqlite3.Connection, schema: Mapping[str, str]) -> None:
    db.execute("DELETE FROM attribute_schema")
    db.executemany("INSERT INTO attribute_schema VALUES (?, ?)", sorted(schema.items()))


def file_checksums(directory: Path, known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """{name: {"sha256", "bytes"}} of every file in ``directory`` (what a manifest records):
    ``known`` records as given (vectors hashed as :func:`save_vectors` wrote them, files linked
    from a verified previous version), every other file hashed now."""
    known = known or {}
    files = sorted(directory.iterdir())
    hashed = sha256_files(p for p in files if p.name not in known)
    return {p.name: dict(known[p.name]) if p.name in known else {"sha256": hashed[p][0], "bytes": hashed[p][1]}
            for p in files}


def save_vectors(path: Path, *blocks: np.ndarray) -> dict[str, Any]:
    """Write the rows of ``blocks`` one after another as one ``.npy`` file at ``path`` — the
    bytes ``np.save`` writes for their concatenation, without making it (an update writes the
    stored vectors, a memory map, then the new ones) — hashing the bytes as they are written
    (hashlib and the file write each take a whole block with the GIL released); returns the
    manifest's record of the file ({"sha256", "bytes"}) without reading it back."""
    arrays = [np.ascontiguousarray(b) for b in blocks]
    if not arrays or any(a.dtype != arrays[0].dtype or a.shape[1:] != arrays[0].shape[1:] for a in arrays):
        raise CatalogError(f"vector blocks must share dtype and row shape, got {[(a.dtype, a.shape) for a in arrays]}")
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": npy_format.dtype_to_descr(arrays[0].dtype), "fortran_order": False,
                                               "shape": (sum(len(a) for a in arrays), *arrays[0].shape[1:])})
    h, size = hashlib.sha256(), 0
    with Path(path).open("wb") as f:
        for data in (memoryview(header.getvalue()), *(memoryview(a.reshape(-1).view(np.uint8)) for a in arrays if a.size)):
            h.update(data)
            f.write(data)
            size += data.nbytes
    return {"sha256": h.hexdigest(), "bytes": size}


def _truth_dtype(dim: int, depth: int) -> np.dtype:
    return np.dtype([("query", "<f4", (dim,)), ("labels", "<i8", (depth,)), ("sims", "<f4", (depth,)),
                     ("complete", "?")])


def save_truth(path: Path, truth: GroundTruth) -> dict[str, Any]:
    """Write a category's :class:`GroundTruth` (one structured ``.npy``, no pickle), hashing it
    as it is written; returns its manifest record."""
    rows = np.zeros(len(truth.queries), _truth_dtype(truth.queries.shape[1], truth.depth))
    rows["query"], rows["labels"], rows["sims"], rows["complete"] = truth.queries, truth.labels, truth.sims, truth.complete
    return save_vectors(path, rows)


def load_truth(path: Path, recorded: Mapping[str, Any], dim: int, count: int) -> GroundTruth:
    """Read a :func:`save_truth` file, checking its bytes against the manifest's ``recorded``
    checksum whether or not the catalog was verified when opened (it is small), and its shape
    against the category (``dim``, labels below ``count``): :class:`CatalogIntegrityError`."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != recorded.get("sha256") or len(data) != recorded.get("bytes"):
        raise CatalogIntegrityError(
            f"catalog file {path} does not match its manifest (sha256 {digest[:12]}…, {len(data)} bytes; expected "
            f"{str(recorded.get('sha256'))[:12]}…, {recorded.get('bytes')} bytes): it was modified or damaged; "
            "rebuild the catalog")
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
        names = rows.dtype.names or ()
        if rows.ndim != 1 or set(names) != {"query", "labels", "sims", "complete"} or rows["query"].shape[1:] != (dim,):
            raise ValueError(f"expected {dim}-d queries with labels, sims and complete, got {rows.dtype} {rows.shape}")
        truth = GroundTruth(np.array(rows["query"], np.float32), np.array(rows["labels"], np.int64),
                            np.array(rows["sims"], np.float32), np.array(rows["complete"], bool))
    except (ValueError, TypeError, IndexError, CatalogError) as e:
        raise CatalogIntegrityError(f"catalog file {path} is not a ground truth file: {e}") from e
    if truth.labels.size and (truth.labels.min() < -1 or truth.labels.max() >= count):
        raise CatalogIntegrityError(f"catalog file {path} names labels outside 0..{count - 1}")
    return truth


def link_verified(src: Path, dst: Path, recorded: Mapping[str, Any], verified: bool) -> dict[str, Any]:
    """Put the unchanged catalog file ``src`` at ``dst`` (a hard link, else a copy) and return
    its manifest record, checked against ``recorded`` (the previous manifest's): a link whose
    source was ``verified`` (its sha256 checked when the catalog was opened; the link shares its
    bytes) keeps ``recorded``; any other link is hashed, a copy is hashed while it is copied.
    :class:`CatalogIntegrityError` when the bytes do not match ``recorded`` — a damaged file
    is never given a fresh checksum."""
    try:
        os.link(src, dst)
    except OSError:
        h, size = hashlib.sha256(), 0
        with Path(src).open("rb") as fin, Path(dst).open("wb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                size += len(block)
                fout.write(block)
        got = {"sha256": h.hexdigest(), "bytes": size}
    else:
        if verified:
            return {"sha256": recorded.get("sha256"), "bytes": recorded.get("bytes")}
        got = {"sha256": sha256_file(dst), "bytes": dst.stat().st_size}
    if got["sha256"] != recorded.get("sha256") or got["bytes"] != recorded.get("bytes"):
        raise CatalogIntegrityError(
            f"catalog file {src} does not match its manifest (sha256 {got['sha256'][:12]}…, {got['bytes']} bytes; "
            f"expected {str(recorded.get('sha256'))[:12]}…, {recorded.get('bytes')} bytes): it was modified or "
            "damaged; rebuild the catalog"
        )
    return got


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE) failed: {os.strerror(err)}")


def switch_into_place(new_dir: Path, target: Path) -> None:
    """Make ``new_dir`` the catalog at ``target``; the old catalog stays whole until then."""
    new_dir, target = Path(new_dir), Path(target)
    if not target.exists():
        os.replace(new_dir, target)
        return
    if _exchange(new_dir, target):
        shutil.rmtree(new_dir)  # now holds the old catalog
        return
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    os.replace(new_dir, target)
    shutil.rmtree(old, ignore_errors=True)


def write_catalog(
    out_dir: str | os.PathLike,
    records: Sequence[PhotoRecord],
    vectors: np.ndarray,
    embedder: EmbedderInfo,
    params: IndexParams = IndexParams(),
    skipped: Sequence[str] = (),
    progress: bool = False,
    images_root: str | os.PathLike | None = None,
) -> Manifest:
    """Index ``vectors`` (one row per record) and write the catalog at ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(records):
        raise CatalogError(f"need one vector per record: {vectors.shape} for {len(records)} records")
    if not np.isfinite(vectors).all():
        raise CatalogError("embeddings contain NaN or infinity")
    if not records:
        raise CatalogError("no records to index")
    dim = vectors.shape[1]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        rng = np.random.default_rng(params.seed)
        by_cat: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_cat.setdefault(r.category, []).append(i)
        cats: dict[str, CategoryInfo] = {}
        written: dict[str, dict[str, Any]] = {}  # the vectors' records, hashed as they were written
        db = sqlite3.connect(tmp / DATABASE)
        try:
            db.executescript(SCHEMA_SQL)
            seen: dict[int, PhotoRecord] = {}
            for r in records:
                first = seen.setdefault(r.product_id, r)
                if first.category != r.category:
                    raise CatalogError(f"product {r.product_id} is in two categories: {first.category}, {r.category}")
            try:
                schema = infer_schema((p.product_id, p.attributes) for p in seen.values())
            except InvalidInputError as e:
                raise CatalogError(f"product attributes: {e}") from e
            write_schema(db, schema)
            insert_products(db, list(seen.values()))
            for category in CATEGORIES:
                rows = by_cat.get(category)
                if not rows:
                    continue
                v = vectors[rows]
                db.executemany(
                    "INSERT INTO photos VALUES (?, ?, ?, ?, ?)",
                    [(category, label, records[i].product_id, records[i].image, photo_sha256(records[i]))
                     for label, i in enumerate(rows)],
                )
                index = new_index(dim, len(rows), params)
                index.add_items(v, np.arange(len(rows)), num_threads=params.build_threads)
                ef, recall, truth = tune_ef_with_truth(index, v, params, rng)
                sample = len(truth.queries)
                index.save_index(str(tmp / index_file(category)))
                written[vectors_file(category)] = save_vectors(tmp / vectors_file(category), v)
                written[truth_file(category)] = save_truth(tmp / truth_file(category), truth)
                cats[category] = CategoryInfo(
                    count=len(rows), products=len({records[i].product_id for i in rows}), ef=int(ef),
                    recall_at_k=round(float(recall), 6), k=min(params.k, len(rows)), tune_sample=sample,
                )
                log.info("%s: %d photos, ef=%d, recall@%d=%.4f", category, len(rows), ef, cats[category].k, recall)
            db.commit()
        finally:
            db.close()
        files = file_checksums(tmp, written)
        manifest = Manifest(
            embedder=embedder, dim=dim, space=SPACE, params=params, categories=cats,
            counts={"photos": len(records), "products": len({r.product_id for r in records}), "categories": len(cats)},
            files=files, created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            skipped=tuple(skipped),
            images_root=str(Path(images_root).resolve()) if images_root else "",
            attributes=schema,
        )
        atomic_write_json(tmp / MANIFEST, manifest.to_dict(), sort_keys=True)  # fsyncs the file and tmp
        switch_into_place(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
