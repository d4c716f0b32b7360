"""The catalog index: shop photos → embeddings → one hnswlib index per category + SQLite + manifest.

A catalog directory holds::

    manifest.json            what built it (embedder name, version, model checksum), dimension,
                             space, HNSW parameters, per-category counts, tuned ef and measured
                             recall@K, and the sha256 of every other file
    products.sqlite          products(id, category, title, image, attributes) and
                             photos(category, label, product_id, image): label = HNSW label
    index_<category>.bin     hnswlib index (space cosine); its file records neither space nor
                             dimension, so the manifest does
    vectors_<category>.npy   the embeddings, for exact search and rebuilding

A catalog is written into ``DIR.tmp-xxxx`` next to ``DIR`` and switched into place with one
atomic directory exchange (``renameat2(RENAME_EXCHANGE)``; a two-step rename where the kernel
lacks it); the old directory stays whole until the switch. :meth:`Catalog.open` verifies every
checksum (:class:`CatalogIntegrityError`) and, given the served embedder, its version
(:class:`CatalogVersionMismatch`). A :class:`Catalog` is never mutated after opening — searches
only read — and a new index replaces an old one by reference (:class:`CatalogRef`), because
hnswlib is not safe for ``add_items`` concurrent with ``knn_query``.

A *catalog root* holds one catalog per embedder version (``catalog-v1``, ``catalog-v2``, …) and a
``current`` symlink naming the one clients use, replaced atomically (:func:`set_current`). A
:class:`CatalogWatcher` is a :class:`CatalogRef` that follows that pointer: a running client picks
up a new (embedder version, index) pair without a restart (see :mod:`lookserve.client.swap`).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lookserve import contracts
from lookserve.errors import (
    CatalogError,
    CatalogIntegrityError,
    CatalogVersionMismatch,
    ConfigError,
    DataError,
    InvalidInputError,
    LookserveError,
)
from lookserve.images import DEFAULT_LIMITS, DecodeLimits, decode_image, resize_square
from lookserve.taxonomy import CATEGORIES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "current"  # in a catalog root: symlink to the catalog clients use
DATABASE = "products.sqlite"
SPACE = "cosine"


def index_file(category: str) -> str:
    return f"index_{category}.bin"


def vectors_file(category: str) -> str:
    return f"vectors_{category}.npy"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhotoRecord:
    """One shop photo of one product; a product may have several photos."""

    product_id: int
    category: str
    image: str  # path (absolute or relative to the data root) or URL, as stored in SQLite
    path: Path | None  # where to read it now; None if not available locally
    title: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise InvalidInputError(
                f"product {self.product_id}: unknown category {self.category!r}; expected one of {', '.join(CATEGORIES)}"
            )


def records_from_street2shop(root: str | os.PathLike, splits: Sequence[str] | None = None) -> list[PhotoRecord]:
    """Shop photos of a street2shop-format data set, read with :func:`lookserve.data.street2shop.load`
    (retrieval files joined to ``photos.txt``; titles and attributes from ``products.json`` when
    present; photos not on disk are skipped by the loader). ``splits`` keeps only those products."""
    from lookserve.data import street2shop

    root = Path(root)
    data = street2shop.load(root)
    records: list[PhotoRecord] = []
    for product_id in sorted(data.shop, key=lambda p: (CATEGORIES.index(data.product_category[p]), p)):
        if splits and data.product_split.get(product_id) not in splits:
            continue
        meta = data.products.get(product_id, {})
        for photo in data.shop[product_id]:
            path = data.shop_path(photo)
            try:
                image = str(path.relative_to(root))
            except ValueError:
                image = str(path)
            records.append(PhotoRecord(product_id=product_id, category=data.product_category[product_id], image=image,
                                       path=path, title=str(meta.get("title", "")),
                                       attributes=dict(meta.get("attributes", {}))))
    if not records:
        raise DataError(f"no shop photos found under {root}" + (f" for splits {list(splits)}" if splits else ""))
    return records


def records_from_csv(csv_path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> list[PhotoRecord]:
    """A CSV of metadata with columns ``id, category, image`` (+ optional ``title``; any other
    column becomes an attribute). ``image`` is a path relative to ``images_dir`` (default: the
    CSV's folder) or a URL."""
    csv_path = Path(csv_path)
    base = Path(images_dir) if images_dir else csv_path.parent
    records = []
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "category", "image"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; have {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            try:
                product_id = int(row["id"])
            except ValueError as e:
                raise DataError(f"{csv_path}:{n}: id {row['id']!r} is not an integer") from e
            image = row["image"].strip()
            local = None if image.startswith(("http://", "https://")) else base / image
            attrs = {k: v for k, v in row.items() if k not in ("id", "category", "image", "title")}
            try:
                records.append(PhotoRecord(product_id, row["category"].strip(), image, local, row.get("title") or "", attrs))
            except InvalidInputError as e:
                raise DataError(f"{csv_path}:{n}: {e}") from e
    if not records:
        raise DataError(f"{csv_path} has no rows")
    return records


def load_records(photos: str | os.PathLike, metadata_csv: str | os.PathLike | None = None,
                 splits: Sequence[str] | None = None) -> list[PhotoRecord]:
    """Records from a street2shop-format root, or a folder of images with a CSV."""
    photos = Path(photos)
    if metadata_csv is not None:
        return records_from_csv(metadata_csv, photos)
    if (photos / "photos" / "photos.txt").is_file():
        return records_from_street2shop(photos, splits)
    for candidate in (photos / "metadata.csv", photos / "products.csv"):
        if candidate.is_file():
            return records_from_csv(candidate, photos)
    raise DataError(
        f"{photos}: neither a street2shop data set (photos/photos.txt) nor a folder with metadata.csv; "
        "pass --metadata CSV"
    )


# ------------------------------------------------------------------------------------------
# The embedder, as the catalog sees it
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    version: str
    model_sha256: str | None = None  # of <repository>/<name>/<version>/model.onnx when known


class Embedder(Protocol):
    name: str
    input_size: int

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        """``[B, S, S, 3]`` uint8 → (``[B, dim]`` float32 L2-normalised, version that answered)."""


class TritonEmbedder:
    """The served embedder through a (thread-safe) :class:`~lookserve.client.core.TritonClient`."""

    def __init__(self, client, name: str = contracts.EMBEDDER, version: str = "") -> None:
        self.client, self.name, self.version = client, name, version
        meta = client.model_metadata(name, version)
        crops = next((t for t in meta.inputs if t.datatype == "UINT8"), None)
        if crops is None or len(crops.shape) != 4:
            raise CatalogError(f"served model {name!r} has no UINT8 [B, S, S, 3] input: {meta.inputs}")
        self.input_name = crops.name
        self.input_size = int(crops.shape[1])
        self.output_name = meta.outputs[0].name

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        result = self.client.infer(self.name, {self.input_name: crops}, outputs=[self.output_name], version=self.version)
        return np.asarray(result.outputs[self.output_name], dtype=np.float32), result.model_version


def model_file_sha256(repository: str | os.PathLike | None, name: str, version: str) -> str | None:
    """sha256 of ``<repository>/<name>/<version>/model.onnx`` (None without a repository)."""
    if repository is None:
        return None
    path = Path(repository) / name / str(version) / "model.onnx"
    if not path.is_file():
        raise CatalogError(f"model file {path} not found; is {repository} the served model repository?")
    return sha256_file(path)


# ------------------------------------------------------------------------------------------
# Parameters and the manifest
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexParams:
    M: int = 16
    ef_construction: int = 200
    k: int = 6  # the K of recall@K used to tune ef
    recall_target: float = 0.99
    tune_sample: int = 256  # queries per category used to tune ef
    query_noise: float = 1.0  # largest norm of the noise that turns an indexed (unit) vector into a query
    ef_candidates: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
    seed: int = 0
    build_threads: int = 1  # >1 is faster but makes the graph depend on thread timing

    def __post_init__(self) -> None:
        if self.M < 2 or self.ef_construction < 1 or self.k < 1:
            raise ConfigError(f"invalid HNSW parameters M={self.M}, ef_construction={self.ef_construction}, k={self.k}")
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall_target must be in (0, 1], got {self.recall_target}")


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k with numpy: (indices [n, k], similarities [n, k]), best first."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    sims = q @ v.T
    k = min(k, v.shape[0])
    if k < v.shape[0]:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
    else:
        idx = np.argsort(-sims, axis=1, kind="stable")
    return idx, np.take_along_axis(sims, idx, axis=1)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found among the approximate top-k."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def _new_index(dim: int, n: int, params: IndexParams):
    import hnswlib

    index = hnswlib.Index(space=SPACE, dim=dim)
    index.init_index(max_elements=max(n, 1), M=params.M, ef_construction=params.ef_construction, random_seed=params.seed)
    return index


def tune_ef(index, vectors: np.ndarray, params: IndexParams, rng: np.random.Generator) -> tuple[int, float, int]:
    """The smallest candidate ef with recall@K ≥ target on noisy copies of sampled vectors
    (against exact search). Returns (ef, measured recall, sample size)."""
    n, dim = vectors.shape
    k = min(params.k, n)
    m = min(params.tune_sample, n)
    picks = rng.choice(n, size=m, replace=False)
    # Queries at several distances from their source vector (a street crop is rarely as close
    # to its shop photo as a near-duplicate): noise norms cycle through 1/3, 2/3 and 1 × query_noise.
    noise = rng.normal(size=(m, dim)).astype(np.float32)
    levels = params.query_noise * (1 + np.arange(m) % 3) / 3
    noise *= (levels / np.maximum(np.linalg.norm(noise, axis=1), 1e-12))[:, None]
    unit = vectors[picks] / np.maximum(np.linalg.norm(vectors[picks], axis=1, keepdims=True), 1e-12)
    queries = unit + noise
    exact, _ = exact_search(vectors, queries, k)
    best = (max(params.ef_candidates[-1], n), 0.0)
    for ef in sorted({max(e, k) for e in params.ef_candidates} | {max(n, k)}):
        index.set_ef(ef)
        labels, _ = index.knn_query(queries, k=k, num_threads=1)
        recall = recall_at_k(labels.astype(np.int64), exact)
        if recall >= params.recall_target:
            return ef, recall, m
        best = (ef, recall)
        if ef >= n:
            break
    raise CatalogError(
        f"recall@{k} of the HNSW graph stays below {params.recall_target} at every ef (best {best[1]:.4f} at "
        f"ef={best[0]}); build with a larger M or ef_construction (now M={params.M}, "
        f"ef_construction={params.ef_construction})"
    )


@dataclass(frozen=True)
class CategoryInfo:
    count: int  # indexed photos
    products: int
    ef: int
    recall_at_k: float
    k: int
    tune_sample: int


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"]["ef_candidates"] = list(self.params.ef_candidates)
        d["skipped"] = list(self.skipped)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        try:
            if int(d["format"]) != FORMAT_VERSION:
                raise CatalogError(f"catalog format {d['format']} is not supported (this lookserve reads {FORMAT_VERSION})")
            params = dict(d["params"])
            params["ef_candidates"] = tuple(params.get("ef_candidates", IndexParams.ef_candidates))
            categories = {c: CategoryInfo(**v) for c, v in d["categories"].items()}
            for c, info in categories.items():
                if c not in CATEGORIES:
                    raise ValueError(f"unknown category {c!r}")
                for name in ("count", "products", "ef", "k", "tune_sample"):
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
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, ConfigError) as e:
            raise CatalogError(f"catalog manifest is malformed: {e!r}") from e


# ------------------------------------------------------------------------------------------
# Writing: build in a temp directory, switch atomically
# ------------------------------------------------------------------------------------------
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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        db = sqlite3.connect(tmp / DATABASE)
        try:
            db.executescript(
                """
                CREATE TABLE products (id INTEGER PRIMARY KEY, category TEXT NOT NULL, title TEXT,
                                       image TEXT, attributes TEXT);
                CREATE TABLE photos (category TEXT NOT NULL, label INTEGER NOT NULL,
                                     product_id INTEGER NOT NULL REFERENCES products(id), image TEXT,
                                     PRIMARY KEY (category, label));
                """
            )
            seen: dict[int, PhotoRecord] = {}
            for r in records:
                first = seen.setdefault(r.product_id, r)
                if first.category != r.category:
                    raise CatalogError(f"product {r.product_id} is in two categories: {first.category}, {r.category}")
            db.executemany(
                "INSERT INTO products VALUES (?, ?, ?, ?, ?)",
                [(p.product_id, p.category, p.title, p.image, json.dumps(dict(p.attributes), sort_keys=True))
                 for p in seen.values()],
            )
            for category in CATEGORIES:
                rows = by_cat.get(category)
                if not rows:
                    continue
                v = vectors[rows]
                db.executemany(
                    "INSERT INTO photos VALUES (?, ?, ?, ?)",
                    [(category, label, records[i].product_id, records[i].image) for label, i in enumerate(rows)],
                )
                index = _new_index(dim, len(rows), params)
                index.add_items(v, np.arange(len(rows)), num_threads=params.build_threads)
                ef, recall, sample = tune_ef(index, v, params, rng)
                index.save_index(str(tmp / index_file(category)))
                np.save(tmp / vectors_file(category), v)
                cats[category] = CategoryInfo(
                    count=len(rows), products=len({records[i].product_id for i in rows}), ef=int(ef),
                    recall_at_k=round(float(recall), 6), k=min(params.k, len(rows)), tune_sample=sample,
                )
                log.info("%s: %d photos, ef=%d, recall@%d=%.4f", category, len(rows), ef, cats[category].k, recall)
            db.commit()
        finally:
            db.close()
        files = {}
        for path in sorted(tmp.iterdir()):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = Manifest(
            embedder=embedder, dim=dim, space=SPACE, params=params, categories=cats,
            counts={"photos": len(records), "products": len({r.product_id for r in records}), "categories": len(cats)},
            files=files, created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            skipped=tuple(skipped),
            images_root=str(Path(images_root).resolve()) if images_root else "",
        )
        with (tmp / MANIFEST).open("w") as f:
            json.dump(manifest.to_dict(), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        switch_into_place(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ------------------------------------------------------------------------------------------
# Embedding shop photos through the served embedder (batched, concurrent, resumable)
# ------------------------------------------------------------------------------------------
def _records_key(records: Sequence[PhotoRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.product_id}\t{r.category}\t{r.image}\n".encode())
    return h.hexdigest()


def partial_dir_for(out_dir: Path) -> Path:
    return out_dir.with_name(f"{out_dir.name}.partial")


def embed_records(
    records: Sequence[PhotoRecord],
    embedder: Embedder,
    partial_dir: Path,
    batch_size: int = 32,
    concurrency: int = 4,
    limits: DecodeLimits = DEFAULT_LIMITS,
    progress: bool = False,
) -> tuple[np.ndarray, str, list[str]]:
    """Embed every record's photo. Finished batches are saved under ``partial_dir`` (one
    ``.npz`` per batch, written atomically) so an interrupted run resumes where it stopped;
    batches embedded by another embedder version are redone.

    Returns (vectors [N, dim] — zero rows for skipped photos, the version, skipped image names).
    """
    if batch_size < 1 or concurrency < 1:
        raise ConfigError("batch_size and concurrency must be ≥ 1")
    size = embedder.input_size
    # Probe: which version answers now, and the dimension.
    probe, version = embedder.embed(np.zeros((1, size, size, 3), np.uint8))
    dim = probe.shape[1]
    partial_dir.mkdir(parents=True, exist_ok=True)
    state_path = partial_dir / "state.json"
    state = {"records": _records_key(records), "embedder": embedder.name, "version": version, "batch_size": batch_size, "dim": dim}
    if state_path.is_file() and json.loads(state_path.read_text()) != state:
        log.info("partial embeddings in %s are from another run (records, version or batch size differ); starting over", partial_dir)
        shutil.rmtree(partial_dir)
        partial_dir.mkdir(parents=True)
    _atomic_write_text(state_path, json.dumps(state, sort_keys=True))

    starts = list(range(0, len(records), batch_size))
    todo = [s for s in starts if not (partial_dir / f"batch-{s:09d}.npz").is_file()]
    if len(todo) < len(starts):
        log.info("resuming: %d of %d batches already embedded", len(starts) - len(todo), len(starts))

    def work(start: int) -> int:
        chunk = records[start : start + batch_size]
        crops = np.zeros((len(chunk), size, size, 3), np.uint8)
        ok = np.zeros(len(chunk), bool)
        for j, r in enumerate(chunk):
            if r.path is None:
                log.warning("product %d: photo %s is not available locally; skipped", r.product_id, r.image)
                continue
            try:
                crops[j] = resize_square(decode_image(r.path, limits), size)
                ok[j] = True
            except InvalidInputError as e:
                log.warning("product %d: %s; skipped", r.product_id, e)
        vecs = np.zeros((len(chunk), dim), np.float32)
        got = version
        if ok.any():
            out, got = embedder.embed(crops[ok])
            vecs[ok] = out
        if got != version:
            raise CatalogVersionMismatch(
                f"the embedder changed version during the build ({version} → {got}); run the build again"
            )
        tmp = partial_dir / f".batch-{start:09d}.{uuid.uuid4().hex[:6]}.npz"
        with tmp.open("wb") as f:
            np.savez(f, vectors=vecs, ok=ok)
        os.replace(tmp, partial_dir / f"batch-{start:09d}.npz")
        return len(chunk)

    with _progress(progress, len(records), f"embedding with {embedder.name} v{version}") as advance:
        advance(len(records) - sum(min(batch_size, len(records) - s) for s in todo))
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            pending: set[Future] = set()
            queue = iter(todo)
            try:
                for start in queue:
                    pending.add(pool.submit(work, start))
                    if len(pending) >= concurrency * 2:  # bounded in flight
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            advance(fut.result())
                for fut in pending:
                    advance(fut.result())
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise

    vectors = np.zeros((len(records), dim), np.float32)
    skipped: list[str] = []
    for start in starts:
        with np.load(partial_dir / f"batch-{start:09d}.npz") as z:
            vectors[start : start + len(z["vectors"])] = z["vectors"]
            skipped += [records[start + j].image for j in np.flatnonzero(~z["ok"])]
    return vectors, version, skipped


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str):
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def build_catalog(
    records: Sequence[PhotoRecord],
    out_dir: str | os.PathLike,
    embedder: Embedder,
    params: IndexParams = IndexParams(),
    batch_size: int = 32,
    concurrency: int = 4,
    model_repository: str | os.PathLike | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    progress: bool = False,
    images_root: str | os.PathLike | None = None,
) -> Manifest:
    """Embed every shop photo through ``embedder`` and write the catalog at ``out_dir``."""
    out_dir = Path(out_dir)
    partial = partial_dir_for(out_dir)
    vectors, version, skipped = embed_records(records, embedder, partial, batch_size, concurrency, limits, progress)
    keep = [i for i, r in enumerate(records) if r.image not in set(skipped)]
    if not keep:
        raise CatalogError("no shop photo could be embedded; see the warnings above")
    info = EmbedderInfo(embedder.name, version, model_file_sha256(model_repository, embedder.name, version))
    manifest = write_catalog(out_dir, [records[i] for i in keep], vectors[keep], info, params, skipped, progress,
                             images_root=images_root)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


# ------------------------------------------------------------------------------------------
# Reading and searching
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    product_id: int
    similarity: float  # cosine similarity of the best photo of the product
    category: str
    title: str
    image: str
    photo_image: str  # the matching shop photo
    attributes: Mapping[str, Any]

    def to_dict(self) -> dict:
        return {**asdict(self), "attributes": dict(self.attributes)}


class Catalog:
    """A verified, read-only catalog. Safe for concurrent searches from many threads."""

    def __init__(self, path: Path, manifest: Manifest, indexes: Mapping[str, Any], labels: Mapping[str, np.ndarray],
                 photo_images: Mapping[str, list[str]]) -> None:
        self.path = path
        self.manifest = manifest
        self._indexes = dict(indexes)
        self._labels = dict(labels)  # category -> product id per HNSW label
        self._photo_images = dict(photo_images)
        self._local = threading.local()

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        embedder: EmbedderInfo | None = None,
        served_versions: Sequence[str] | None = None,
        verify: bool = True,
    ) -> Catalog:
        """Open and verify a catalog.

        ``embedder``: the served embedder; its name and version (and model checksum when both
        sides know it) must equal the manifest's. ``served_versions``: the versions Triton
        serves now; the catalog's must be one of them. ``verify``: check every file's sha256.
        A catalog switched into place while it was being read is read again (once). A symlink
        (e.g. a root's ``current`` pointer) or a catalog root is resolved first, so the opened
        catalog stays bound to one directory when the pointer moves.
        """
        path = resolve_catalog(path)
        for attempt in range(2):
            before = _read_bytes(path / MANIFEST)
            try:
                return cls._open_once(path, before, embedder, served_versions, verify)
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
                   served_versions: Sequence[str] | None, verify: bool) -> Catalog:
        import hnswlib

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
        for name, info in manifest.files.items():
            file = path / name
            if not file.is_file():
                raise CatalogIntegrityError(f"catalog file {file} is missing")
            if verify:
                size = file.stat().st_size
                digest = sha256_file(file)
                if size != info.get("bytes") or digest != info.get("sha256"):
                    raise CatalogIntegrityError(
                        f"catalog file {file} does not match its manifest (sha256 {digest[:12]}…, {size} bytes; "
                        f"expected {str(info.get('sha256'))[:12]}…, {info.get('bytes')} bytes): it was modified or "
                        "damaged; rebuild the catalog"
                    )
        indexes, labels, images = {}, {}, {}
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
                rows = db.execute(
                    "SELECT label, product_id, image FROM photos WHERE category = ? ORDER BY label", (category,)
                ).fetchall()
                if len(rows) != info.count or any(r[0] != i for i, r in enumerate(rows)):
                    raise CatalogIntegrityError(f"{DATABASE}: photos of {category} do not match the index")
                indexes[category] = index
                labels[category] = np.array([r[1] for r in rows], dtype=np.int64)
                images[category] = [r[2] for r in rows]
        except sqlite3.DatabaseError as e:
            raise CatalogIntegrityError(f"{path / DATABASE} is unreadable: {e}") from e
        finally:
            db.close()
        log.info("opened catalog %s: %s, embedder %s v%s", path, dict(manifest.counts), manifest.embedder.name,
                 manifest.embedder.version)
        return cls(path, manifest, indexes, labels, images)

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
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInputError(f"queries must be [n, {self.dim}], got {q.shape}")
        k = min(k, index.get_current_count())
        labels, distances = index.knn_query(q, k=k, num_threads=1)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def search(self, category: str, queries: np.ndarray, k: int = 6) -> list[list[Match]]:
        """Top-k products per query (a product's similarity is that of its best photo)."""
        count = self.manifest.categories[category].count if category in self.manifest.categories else 0
        per_product = self.manifest.categories[category].products if count else 0
        # Several photos may belong to one product: ask for more photos than products wanted.
        want = min(count, k * max(1, -(-count // max(per_product, 1))))
        labels, sims = self.search_labels(category, queries, max(want, min(k, count)))
        product_of = self._labels[category]
        results = []
        for row_labels, row_sims in zip(labels, sims, strict=True):
            best: dict[int, tuple[float, int]] = {}
            for label, sim in zip(row_labels.tolist(), row_sims.tolist(), strict=True):
                pid = int(product_of[label])
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

    def vectors(self, category: str) -> np.ndarray:
        """The stored embeddings of a category (row = HNSW label)."""
        return np.load(self.path / vectors_file(category))

    def product_ids(self, category: str) -> np.ndarray:
        return self._labels[category].copy()

    def image_path(self, image: str) -> Path | None:
        """Where a stored image name is on this machine (None for URLs)."""
        if image.startswith(("http://", "https://")):
            return None
        p = Path(image)
        if not p.is_absolute() and self.manifest.images_root:
            p = Path(self.manifest.images_root) / p
        return p


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


class CatalogRef:
    """A swappable reference to the current catalog: readers take :meth:`get` once per request
    and keep using that object; :meth:`swap` publishes a new one without touching the old."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()

    def get(self) -> Catalog:
        return self._catalog

    def swap(self, catalog: Catalog) -> Catalog:
        with self._lock:
            old, self._catalog = self._catalog, catalog
        return old

    def refresh(self) -> Catalog:
        """The newest catalog the reference knows of (a :class:`CatalogWatcher` looks again now)."""
        return self.get()


# ------------------------------------------------------------------------------------------
# A catalog root: catalog-v<N> directories and the ``current`` pointer
# ------------------------------------------------------------------------------------------
def catalog_dir_name(version: str | int) -> str:
    """The directory of the catalog built with embedder version ``version`` in a catalog root."""
    return f"catalog-v{version}"


def resolve_catalog(path: str | os.PathLike) -> Path:
    """A catalog directory from a path: a symlink is resolved; a catalog root (no manifest, a
    ``current`` pointer) gives the catalog its pointer names; anything else is returned as is."""
    path = Path(path)
    if path.is_symlink():
        return path.resolve()
    if not (path / MANIFEST).exists() and (path / CURRENT).is_symlink():
        return read_current(path)
    return path


def read_current(root: str | os.PathLike) -> Path:
    """The catalog directory ``<root>/current`` points to (one readlink: cheap enough per request)."""
    root = Path(root)
    try:
        name = os.readlink(root / CURRENT)
    except FileNotFoundError as e:
        raise CatalogError(
            f"{root} has no {CURRENT} pointer; point it at a catalog with lookserve models catalog-current "
            f"--catalog-root {root} NAME"
        ) from e
    except OSError as e:
        raise CatalogError(f"{root / CURRENT} is not a symlink to a catalog: {e}") from e
    target = Path(name) if os.path.isabs(name) else root / name
    if not (target / MANIFEST).is_file():
        raise CatalogError(f"{root / CURRENT} points to {target}, which is not a catalog ({MANIFEST} is missing)")
    return target


def set_current(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """Point ``<root>/current`` at the catalog ``name`` (a directory inside ``root``), atomically:
    a new symlink is made beside it and renamed over the old one, so a reader sees the old
    target or the new one, never neither. Returns the catalog directory."""
    root = Path(root)
    name = Path(name)
    if name.is_absolute() or len(name.parts) != 1:
        if name.parent.resolve() != root.resolve():
            raise CatalogError(f"{name} is not inside the catalog root {root}; the pointer names a sibling directory")
        name = Path(name.name)
    target = root / name
    if not (target / MANIFEST).is_file():
        raise CatalogError(f"{target} is not a catalog ({MANIFEST} is missing); build it first")
    tmp = root / f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(str(name), tmp)
    try:
        os.replace(tmp, root / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    log.info("catalog pointer %s now names %s", root / CURRENT, name)
    return target


class CatalogWatcher(CatalogRef):
    """A :class:`CatalogRef` that follows a catalog root's ``current`` pointer.

    Every :meth:`get` (once per request) looks at the pointer when ``interval_s`` has passed
    since the last look — one ``readlink``. When it names another catalog, one thread opens and
    verifies it (with ``client``: also that the server serves its embedder version) while the
    others keep using the old one, then swaps it in; requests in flight finish on the catalog
    they started with. A catalog that fails to open is logged and skipped (the old one keeps
    serving) until its manifest changes.

        watcher = CatalogWatcher("catalogs", client)
        pipeline = LookPipeline(client, watcher)   # picks up lookserve models swap-embedder
    """

    def __init__(self, root: str | os.PathLike, client=None, interval_s: float = 0.5,
                 model_repository: str | os.PathLike | None = None, verify: bool = True,
                 on_swap=None) -> None:
        if interval_s < 0:
            raise ConfigError(f"interval_s must be ≥ 0, got {interval_s}")
        self.root = Path(root)
        self.client = client
        self.interval_s = interval_s
        self.model_repository = model_repository
        self.verify = verify
        self.on_swap = on_swap  # called with (old, new) catalogs after a swap
        self._target = read_current(self.root)
        super().__init__(self._open(self._target))
        self._poll_lock = threading.Lock()
        self._checked = time.monotonic()
        self._bad: tuple[str, float] | None = None
        self.swaps = 0

    def _open(self, target: Path) -> Catalog:
        if self.client is not None:
            return open_for_client(target, self.client, self.model_repository, verify=self.verify)
        return Catalog.open(target, verify=self.verify)

    def get(self) -> Catalog:
        if time.monotonic() - self._checked >= self.interval_s:
            self.poll()
        return self._catalog

    def refresh(self) -> Catalog:
        self.poll(blocking=True)
        return self._catalog

    def poll(self, blocking: bool = False) -> bool:
        """Look at the pointer now; True when a new catalog was swapped in."""
        if not self._poll_lock.acquire(blocking=blocking):
            return False  # another thread is looking (or opening); use the current catalog
        try:
            self._checked = time.monotonic()
            try:
                target = read_current(self.root)
            except CatalogError as e:
                log.warning("catalog pointer unreadable, keeping %s: %s", self._catalog.path, e)
                return False
            if target == self._target:
                return False
            try:
                stamp = (str(target), (target / MANIFEST).stat().st_mtime)
            except OSError:
                return False
            if stamp == self._bad:
                return False
            try:
                catalog = self._open(target)
            except (CatalogError, InvalidInputError) as e:
                self._bad = stamp
                log.error("the catalog pointer names %s, which cannot serve: %s; keeping %s", target, e, self._catalog.path)
                return False
            except LookserveError as e:  # a server error must not break the requests using the old catalog
                log.warning("could not check %s against the server (%s); will look again", target, e)
                return False
            old = self.swap(catalog)
            self._target = target
            self._bad = None
            self.swaps += 1
            log.info("catalog swapped: %s (embedder v%s) -> %s (embedder v%s)", old.path, old.embedder.version,
                     catalog.path, catalog.embedder.version)
            if self.on_swap is not None:
                self.on_swap(old, catalog)
            return True
        finally:
            self._poll_lock.release()


def bench_search(n: int, dim: int = 128, queries: int = 2000, params: IndexParams = IndexParams(), seed: int = 0,
                 clusters: int = 1000, threads: int = 2, progress: bool = False) -> dict[str, Any]:
    """HNSW search speed and recall on one synthetic category of ``n`` clustered unit vectors:
    build (``threads``), tune ef as a catalog build does, then time single-query ``knn_query``
    calls (one thread, as a request does) on held-out queries and check recall@K against exact
    numpy search. Returns the figures (latencies in ms: median, p99)."""
    import time

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)

    def sample(m: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, m)] + 0.7 * rng.normal(size=(m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        vectors[start : start + 100_000] = sample(min(100_000, n - start))
    held_out = sample(queries)
    t0 = time.perf_counter()
    index = _new_index(dim, n, params)
    with _progress(progress, n, f"HNSW build n={n}") as advance:
        for start in range(0, n, 50_000):
            chunk = vectors[start : start + 50_000]
            index.add_items(chunk, np.arange(start, start + len(chunk)), num_threads=threads)
            advance(len(chunk))
    build_s = time.perf_counter() - t0
    ef, tune_recall, _ = tune_ef(index, vectors, params, rng)
    index.set_ef(ef)
    for q in held_out[:50]:  # warm up
        index.knn_query(q[None], k=params.k, num_threads=1)
    lat = np.empty(queries)
    labels = np.empty((queries, params.k), np.int64)
    for i, q in enumerate(held_out):
        t = time.perf_counter()
        got, _ = index.knn_query(q[None], k=params.k, num_threads=1)
        lat[i] = (time.perf_counter() - t) * 1e3
        labels[i] = got[0]
    exact = np.concatenate([exact_search(vectors, held_out[i : i + 200], params.k)[0] for i in range(0, queries, 200)])
    return {
        "n": n, "dim": dim, "M": params.M, "ef_construction": params.ef_construction, "k": params.k,
        "build_s": round(build_s, 1), "build_threads": threads, "ef": ef, "tune_recall_at_k": round(tune_recall, 4),
        "held_out_recall_at_k": round(recall_at_k(labels, exact), 4), "queries": queries,
        "search_ms_median": round(float(np.median(lat)), 4), "search_ms_p99": round(float(np.percentile(lat, 99)), 4),
    }


def describe(catalog: Catalog) -> dict:
    m = catalog.manifest
    return {
        "path": str(catalog.path),
        "embedder": asdict(m.embedder),
        "dim": m.dim,
        "space": m.space,
        "M": m.params.M,
        "ef_construction": m.params.ef_construction,
        "counts": dict(m.counts),
        "categories": {c: asdict(v) for c, v in m.categories.items()},
        "created_utc": m.created_utc,
        "skipped": len(m.skipped),
    }


__all__ = [
    "CURRENT", "Catalog", "CatalogRef", "CatalogWatcher", "CategoryInfo", "Embedder", "EmbedderInfo", "IndexParams", "Manifest", "Match",
    "PhotoRecord", "TritonEmbedder", "bench_search", "build_catalog", "catalog_dir_name", "check_embedder", "describe", "embed_records", "exact_search",
    "load_records", "model_file_sha256", "open_for_client", "recall_at_k", "records_from_csv",
    "read_current", "records_from_street2shop", "resolve_catalog", "set_current", "switch_into_place", "tune_ef", "write_catalog",
]
