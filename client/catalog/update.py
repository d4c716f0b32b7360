"""Incremental catalog updates: add, replace and remove products, writing a new immutable
catalog version from the previous one (:func:`update_catalog`).

Unchanged photos keep their stored vectors and are never re-embedded; new photos, and photos of
a replaced product whose image name or file checksum changed, are embedded by the embedder
version the catalog is bound to (:class:`~lookserve.errors.CatalogVersionMismatch` when the
server does not serve it). Per touched category the previous HNSW index is loaded, removed
photos are ``mark_deleted`` (never returned again), the index is ``resize_index``'d and the new
vectors ``add_items``'d under new labels; when more than ``rebuild_fraction`` of a category's
labels are deleted, its index is rebuilt from the stored vectors of the live photos instead.
Either way ``ef`` is tuned again to the recall target against exact search — an updated index
keeps its parent's ef while that still reaches the target (only a larger one is tried when it
does not), a rebuilt one is tuned from the smallest candidate. Its ground truth —
the tuning queries' exact top-(k + spare) neighbours, stored per category (``truth_<category>.npy``,
checksummed in the manifest) — is merged, not searched again: the removed labels are dropped and
only the added rows are searched exactly for the same queries
(:func:`~lookserve.client.catalog.index.merge_truth`). When a query has lost so many stored
neighbours that its exact top-k is no longer known, when the index is rebuilt, when the previous
version has no such file, or with ``incremental_tuning=False``, every stored row is searched
again (the removed labels masked, not a gathered copy of the live ones); a rebuild or a missing
file also samples fresh queries.

A category's vectors are a base file and the rows added since it was written, a small delta file:
an update links the base and writes the delta, until the delta passes :data:`DELTA_FRACTION` of
the base's rows or the index is rebuilt, when one new base is written (so a 1 % update does not
rewrite every stored vector).

Each file's checksum is computed once: a category's new vectors are hashed as they are written,
its new index and the database read back and hashed; an untouched category's files are hard
links to the previous version's (:func:`~lookserve.client.catalog.store.link_verified`), which
keep the checksum :meth:`Catalog.open` verified, or are hashed (a copy while it is copied) and
compared with the previous manifest when they were not verified — a damaged file is refused,
never given a fresh checksum.

The new version is written in a temporary directory and switched in atomically: in a catalog
root (``current`` pointer) as a new sibling directory ``<name>-u<N>`` and a pointer flip
(:func:`~lookserve.client.catalog.root.set_current`), which running
:class:`~lookserve.client.catalog.watcher.CatalogWatcher`\\ s follow; a plain catalog directory
is exchanged in place (:func:`~lookserve.client.catalog.store.switch_into_place`), as a build
is — readers that must never see two versions in one answer use a root. An update that fails
or is interrupted before the switch leaves the serving catalog as it was (a leftover
``.<name>.update-partial`` folder of embedded batches is reused by the next try).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import hnswlib
import numpy as np

from lookserve.client.catalog.attributes import check_against, infer_schema
from lookserve.client.catalog.build import embed_records
from lookserve.client.catalog.directory import Catalog
from lookserve.client.catalog.embedder import Embedder, TritonEmbedder
from lookserve.client.catalog.index import (
    SPACE,
    TRUTH_SPARE,
    ef_for_truth,
    exact_truth,
    merge_truth,
    new_index,
    tune_ef_with_truth,
)
from lookserve.client.catalog.records import PhotoRecord
from lookserve.client.catalog.root import CURRENT, read_current, set_current
from lookserve.client.catalog.store import (
    DATABASE,
    MANIFEST,
    CategoryInfo,
    Manifest,
    delta_file,
    file_checksums,
    index_file,
    insert_products,
    link_verified,
    load_truth,
    photo_sha256,
    save_truth,
    save_vectors,
    switch_into_place,
    truth_file,
    vectors_file,
    write_schema,
)
from lookserve.errors import CatalogError, CatalogVersionMismatch, InvalidInputError, LookserveError
from lookserve.fsutil import BackgroundSha256, atomic_write_json, fsync_dir
from lookserve.images import DEFAULT_LIMITS, DecodeLimits
from lookserve.taxonomy import CATEGORIES

log = logging.getLogger(__name__)

REBUILD_FRACTION = 0.2
#: rows added since a category's base vectors file may reach this fraction of its rows before an
#: update writes them into a new base, instead of a delta file beside the previous base
DELTA_FRACTION = 0.1


@dataclass(frozen=True)
class UpdateResult:
    """What an update did."""

    path: Path  # the new catalog version's directory
    manifest: Manifest
    parent: str  # the version it was made from
    added_products: int = 0
    replaced_products: int = 0
    removed_products: int = 0
    embedded_photos: int = 0  # sent to the embedder
    reused_photos: int = 0  # of replaced products, vector kept
    removed_photos: int = 0
    rebuilt: tuple[str, ...] = ()  # categories whose index was rebuilt from stored vectors
    seconds: dict[str, float] = field(default_factory=dict)
    #: per updated category, how ef's exact ground truth was had: "merged" (only added rows
    #: searched), "searched" (every row, the stored queries), "sampled" (every row, new queries)
    tuning: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "parent": self.parent, "added_products": self.added_products,
            "replaced_products": self.replaced_products, "removed_products": self.removed_products,
            "embedded_photos": self.embedded_photos, "reused_photos": self.reused_photos,
            "removed_photos": self.removed_photos, "rebuilt": list(self.rebuilt), "seconds": dict(self.seconds),
            "tuning": dict(self.tuning),
            "counts": dict(self.manifest.counts),
        }


# --- the target: a root's next version, or a plain directory ---------------------------------
def _is_root(path: Path) -> bool:
    return not (path / MANIFEST).exists() and (path / CURRENT).is_symlink()


def next_version_dir(root: Path, current: Path) -> Path:
    """``<root>/<base>-u<N+1>``: base = the current name without its ``-u<N>`` suffix."""
    base = re.sub(r"-u\d+$", "", current.name)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(re.escape(base) + r"-u(\d+)", p.name))]
    return root / f"{base}-u{max(taken, default=0) + 1}"


def _prune(root: Path, keep: int) -> None:
    """Remove update versions older than the newest ``keep`` that ``current`` does not name."""
    current = read_current(root).resolve()
    base = re.sub(r"-u\d+$", "", current.name)
    series = sorted(((int(m.group(1)), p) for p in root.iterdir()
                     if (m := re.fullmatch(re.escape(base) + r"-u(\d+)", p.name))), key=lambda t: t[0])
    for _, p in series[:-keep] if keep > 0 else series:
        if p.resolve() != current:
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed old catalog version %s", p)


# --- the update ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    remove: frozenset[int]  # products whose rows go (removed and replaced)
    new_products: tuple[PhotoRecord, ...]  # one record per added/replaced product
    new_photos: tuple[PhotoRecord, ...]  # every photo of added/replaced products, in order
    reuse: dict[int, tuple[str, int]]  # index in new_photos -> (category, old label) whose vector is kept
    schema: dict[str, str]


def _plan(old: Catalog, add: Sequence[PhotoRecord], replace_: Sequence[PhotoRecord], remove: Sequence[int]) -> _Plan:
    add_ids = {r.product_id for r in add}
    rep_ids = {r.product_id for r in replace_}
    rem_ids = {int(p) for p in remove}
    live = _live_products(old, add_ids | rep_ids | rem_ids)  # of the named ones only
    for a, b, what in ((add_ids, rep_ids, "--add and --replace"), (add_ids, rem_ids, "--add and --remove"),
                       (rep_ids, rem_ids, "--replace and --remove")):
        both = sorted(a & b)
        if both:
            raise InvalidInputError(f"product(s) {both[:10]} are in both {what}; name each product once")
    present = sorted(add_ids & live.keys())
    if present:
        raise InvalidInputError(f"--add: product(s) {present[:10]} are already in the catalog; use --replace to change them")
    absent = sorted((rep_ids | rem_ids) - live.keys())
    if absent:
        raise InvalidInputError(f"product(s) {absent[:10]} are not in the catalog, so they cannot be replaced or removed")
    firsts: dict[int, PhotoRecord] = {}
    for r in (*add, *replace_):
        first = firsts.setdefault(r.product_id, r)
        if first.category != r.category:
            raise InvalidInputError(f"product {r.product_id} is in two categories: {first.category}, {r.category}")
    schema = dict(old.manifest.attributes)
    for p in firsts.values():
        check_against(schema, p.product_id, p.attributes)
    schema = {**infer_schema((p.product_id, p.attributes) for p in firsts.values()), **schema}
    # photos of replaced products that keep their image name and file checksum keep their vector
    reuse: dict[int, tuple[str, int]] = {}
    photos = tuple((*add, *replace_))
    if rep_ids:
        known = _old_photos(old, rep_ids)
        for i, r in enumerate(photos):
            if r.product_id in rep_ids:
                hit = known.get((r.product_id, r.image))
                if hit is not None and hit[2] is not None and hit[0] == r.category and photo_sha256(r) == hit[2]:
                    reuse[i] = (hit[0], hit[1])
    return _Plan(frozenset(rep_ids | rem_ids), tuple(firsts.values()), photos, reuse, dict(sorted(schema.items())))


def _live_products(old: Catalog, ids: set[int]) -> dict[int, str]:
    """The category of each of ``ids`` that has a photo in ``old`` (looked up by product, not by
    reading every photo row)."""
    out: dict[int, str] = {}
    db = sqlite3.connect(f"file:{old.path / DATABASE}?mode=ro", uri=True)
    try:
        chunk = sorted(ids)
        for s in range(0, len(chunk), 500):
            part = chunk[s : s + 500]
            for pid, cat in db.execute(
                f"SELECT DISTINCT product_id, category FROM photos WHERE product_id IN ({','.join('?' * len(part))})", part,
            ):
                out[int(pid)] = cat
    finally:
        db.close()
    return out


def _old_photos(old: Catalog, ids: set[int]) -> dict[tuple[int, str], tuple[str, int, str | None]]:
    out: dict[tuple[int, str], tuple[str, int, str | None]] = {}
    db = sqlite3.connect(f"file:{old.path / DATABASE}?mode=ro", uri=True)
    try:
        chunk = sorted(ids)
        for s in range(0, len(chunk), 500):
            part = chunk[s : s + 500]
            for cat, label, pid, image, sha in db.execute(
                f"SELECT category, label, product_id, image, sha256 FROM photos WHERE product_id IN ({','.join('?' * len(part))})",
                part,
            ):
                out[(int(pid), image)] = (cat, int(label), sha)
    finally:
        db.close()
    return out


def apply_update(
    old: Catalog,
    out_dir: Path,
    remove: frozenset[int] | set[int],
    new_products: Sequence[PhotoRecord],
    new_photos: Sequence[PhotoRecord],
    new_vectors: np.ndarray,
    schema: dict[str, str] | None = None,
    rebuild_fraction: float = REBUILD_FRACTION,
    switch=None,
    consume: bool = False,
    incremental_tuning: bool = True,
    tuning: dict[str, str] | None = None,
) -> tuple[Manifest, tuple[str, ...], int]:
    """Write the catalog ``old`` less the products ``remove``, plus ``new_photos`` (one row of
    ``new_vectors`` each; ``new_products``: their product rows), at ``out_dir`` through a
    temporary directory, then ``switch(tmp, out_dir)`` (default: a rename for a new
    directory, :func:`switch_into_place` for an existing one). ``consume``: update ``old``'s
    loaded HNSW indexes in place instead of loading them again (``old`` must not be searched
    afterwards; :func:`update_catalog` opens a private one). ``incremental_tuning``: merge the
    stored ground truth of ef's tuning (else search every row again); ``tuning``, when given,
    receives how each updated category's was had (see :attr:`UpdateResult.tuning`).

    Returns (manifest, categories rebuilt from stored vectors, photos removed)."""
    m = old.manifest
    new_vectors = np.asarray(new_vectors, dtype=np.float32).reshape(len(new_photos), -1) if len(new_photos) else \
        np.zeros((0, m.dim), np.float32)
    if new_vectors.shape[1] != m.dim:
        raise CatalogError(f"new vectors are {new_vectors.shape[1]}-d, the catalog's are {m.dim}-d")
    if not np.isfinite(new_vectors).all():
        raise CatalogError("embeddings contain NaN or infinity")
    if not 0 < rebuild_fraction <= 1:
        raise CatalogError(f"rebuild_fraction must be in (0, 1], got {rebuild_fraction}")
    params = m.params
    rng = np.random.default_rng([params.seed, int(old.version[:8], 16)])  # seeded by the parent version
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    rebuilt: list[str] = []
    removed_photos = 0
    files: dict[str, dict] = {}  # the manifest's record of each file known without hashing it again
    try:
        shutil.copyfile(old.path / DATABASE, tmp / DATABASE)
        db = sqlite3.connect(tmp / DATABASE)
        try:
            # a private copy, thrown away whole if the update fails: its rollback journal can stay in
            # memory (the commit still syncs the file before the version is switched in)
            db.execute("PRAGMA journal_mode=MEMORY")
            db.execute("PRAGMA cache_size=-65536")
            _upgrade(db)
            removed = sorted(remove)
            gone: dict[str, list[int]] = {}
            gone_products: dict[str, set[int]] = {}
            for s in range(0, len(removed), 500):
                part = removed[s : s + 500]
                marks = ",".join("?" * len(part))
                for cat, label, pid in db.execute(
                        f"SELECT category, label, product_id FROM photos WHERE product_id IN ({marks})", part):
                    gone.setdefault(cat, []).append(int(label))
                    gone_products.setdefault(cat, set()).add(int(pid))
                for table, col in (("photos", "product_id"), ("attributes", "product_id"), ("products", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", part)
            insert_products(db, list(new_products))
            write_schema(db, schema if schema is not None else dict(m.attributes))
            adds: dict[str, list[int]] = {}
            for i, r in enumerate(new_photos):
                adds.setdefault(r.category, []).append(i)
            cats: dict[str, CategoryInfo] = {}
            for category in CATEGORIES:
                info = m.categories.get(category)
                dead = gone.get(category, [])
                new_rows = adds.get(category, [])
                removed_photos += len(dead)
                if info is None and not new_rows:
                    continue
                if info is not None and not dead and not new_rows:  # untouched: the same files
                    for name in (index_file(category), vectors_file(category), delta_file(category),
                                 truth_file(category)):
                        if name not in m.files:  # no delta, or a catalog written before ground truth files
                            continue
                        files[name] = link_verified(old.path / name, tmp / name, m.files[name], name in old.verified)
                    cats[category] = info
                    continue
                cats_info = _update_category(db, old, tmp, category, info, dead, new_rows, new_photos, new_vectors,
                                             params, rng, rebuild_fraction, files, consume, incremental_tuning,
                                             len(gone_products.get(category, ())))
                if cats_info is None:
                    log.info("%s: every product removed; the category leaves the catalog", category)
                    continue
                info2, was_rebuilt, how = cats_info
                if tuning is not None:
                    tuning[category] = how
                cats[category] = info2
                if was_rebuilt:
                    rebuilt.append(category)
            if not cats:
                raise CatalogError("the update removes every product; a catalog needs at least one")
            products = db.execute("SELECT COUNT(*) FROM products").fetchone()[0]
            photos = db.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
            # the new index files (all that is not yet known but the database) hash while it commits
            hashing = BackgroundSha256(p for p in tmp.iterdir() if p.name not in files and p.name != DATABASE)
            db.commit()
        finally:
            db.close()
        files.update({p.name: {"sha256": digest, "bytes": size} for p, (digest, size) in hashing.result().items()})
        manifest = replace(
            m, categories=cats, counts={"photos": int(photos), "products": int(products), "categories": len(cats)},
            files=file_checksums(tmp, files), created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            attributes=schema if schema is not None else dict(m.attributes), parent=old.version,
        )
        atomic_write_json(tmp / MANIFEST, manifest.to_dict(), sort_keys=True)
        (switch or _switch)(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, tuple(rebuilt), removed_photos


def _upgrade(db: sqlite3.Connection) -> None:
    """Give a products.sqlite written before typed attributes (no attribute tables, no photo
    checksums) what an update writes."""
    if "sha256" not in {row[1] for row in db.execute("PRAGMA table_info(photos)")}:
        db.execute("ALTER TABLE photos ADD COLUMN sha256 TEXT")
    db.execute("CREATE TABLE IF NOT EXISTS attribute_schema (name TEXT PRIMARY KEY, type TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS attributes (product_id INTEGER NOT NULL REFERENCES products(id), "
               "name TEXT NOT NULL, num REAL, text TEXT)")


def _switch(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        switch_into_place(tmp, out_dir)
    else:
        os.replace(tmp, out_dir)


def _update_category(db, old: Catalog, tmp: Path, category: str, info: CategoryInfo | None, dead: list[int],
                     new_rows: list[int], new_photos: Sequence[PhotoRecord], new_vectors: np.ndarray, params,
                     rng, rebuild_fraction: float, files: dict[str, dict], consume: bool = False,
                     incremental_tuning: bool = True, dead_products: int = 0) -> tuple[CategoryInfo, bool, str] | None:
    dim = old.dim
    add_v = new_vectors[new_rows]
    if info is not None:
        count, deleted = info.count, info.deleted + len(dead)
    else:
        count, deleted = 0, 0
    live_after = count - deleted + len(new_rows)
    if live_after == 0:
        return None
    total = count + len(new_rows)
    rebuild = info is None or deleted / total > rebuild_fraction
    if rebuild:
        # relabel the live photos 0..n-1 (old ones in label order, then the new ones); the photo
        # rows left in db (the removed ones are deleted already) are the live old labels
        rows = db.execute("SELECT label, product_id, image, sha256 FROM photos WHERE category = ?", (category,)).fetchall()
        keep = np.sort(np.array([r[0] for r in rows], np.int64))
        vectors = np.concatenate([old.vector_rows(category, keep), add_v]) if count else add_v
        if count:
            mapping = np.full(count, -1, np.int64)
            mapping[keep] = np.arange(len(keep))
            db.execute("DELETE FROM photos WHERE category = ?", (category,))
            db.executemany("INSERT INTO photos VALUES (?, ?, ?, ?, ?)",
                           [(category, int(mapping[label]), pid, image, sha) for label, pid, image, sha in rows])
        first_new = len(keep)
        index = new_index(dim, len(vectors), params)
        index.add_items(vectors, np.arange(len(vectors)), num_threads=params.build_threads)
        blocks = (vectors,)
        deleted_mask = None
        count, deleted = len(vectors), 0
    else:
        if consume:
            index = old._indexes[category]
        else:
            index = hnswlib.Index(space=SPACE, dim=dim)
            index.load_index(str(old.path / index_file(category)), max_elements=count)
        for label in dead:
            index.mark_deleted(int(label))
        if new_rows:
            index.resize_index(total)
            index.add_items(add_v, np.arange(count, total), num_threads=params.build_threads)
        # the stored rows (base: a memory map; delta) then the new ones: the base kept, the others
        # written as the new delta; joined into one array only for a search of every row
        base, delta = old.vector_segments(category)
        blocks = (base, delta if delta is not None else np.zeros((0, dim), np.float32), add_v)
        first_new = count
        # the removed labels (this update's and earlier ones): the old labels left without a photo
        # row in db — read only when every row is searched, since a merge does not need them
        deleted_mask = None if incremental_tuning and truth_file(category) in old.manifest.files else \
            _removed_mask(db, category, count, total)
        count = total
    db.executemany("INSERT INTO photos VALUES (?, ?, ?, ?, ?)",
                   [(category, first_new + j, new_photos[i].product_id, new_photos[i].image, photo_sha256(new_photos[i]))
                    for j, i in enumerate(new_rows)])
    # ef's ground truth: the stored one with this update merged in, else an exact search of the
    # stored rows with the removed labels masked (the same tuning queries as their live rows)
    stored_name = truth_file(category)
    n_live = live_after
    start = None if rebuild else info.ef  # an updated graph keeps its ef while that reaches the target
    if rebuild or not incremental_tuning or stored_name not in old.manifest.files:
        ef, recall, truth = tune_ef_with_truth(index, np.concatenate(blocks), params, rng, deleted=deleted_mask,
                                               start=start)
        how = "sampled"
    else:
        stored = load_truth(old.path / stored_name, old.manifest.files[stored_name], dim, info.count)
        truth = merge_truth(stored, np.asarray(dead, np.int64), add_v, first_new, min(params.k, n_live))
        how = "merged"
        if truth is None:
            log.info("%s: a tuning query lost more than %d of its stored neighbours; searching every row again",
                     category, stored.depth - min(params.k, n_live))
            truth = exact_truth(np.concatenate(blocks), stored.queries, max(stored.depth, params.k + TRUTH_SPARE),
                                _removed_mask(db, category, first_new, count))
            how = "searched"
        ef, recall = ef_for_truth(index, truth, params, n_live, start)
    sample = len(truth.queries)
    index.save_index(str(tmp / index_file(category)))
    _save_vectors(old, tmp, category, blocks, files)
    files[stored_name] = save_truth(tmp / stored_name, truth)
    # a product's photos are all in one category: its products less the removed, plus the new
    products = (info.products if info is not None else 0) - dead_products + len({new_photos[i].product_id for i in new_rows})
    log.info("%s: %d live photos (%d labels, %d deleted)%s, ef=%d, recall@%d=%.4f (ground truth %s)", category,
             n_live, count, deleted, ", rebuilt" if rebuild else "", ef, min(params.k, n_live), recall,
             how)
    return CategoryInfo(count=int(count), products=int(products), ef=int(ef), recall_at_k=round(float(recall), 6),
                        k=min(params.k, n_live), tune_sample=sample, deleted=int(deleted)), rebuild, how


def _save_vectors(old: Catalog, tmp: Path, category: str, blocks: tuple[np.ndarray, ...], files: dict[str, dict]) -> None:
    """Write a category's vectors: ``blocks`` = (base rows, *rows after them). A single block
    (a rebuild), or rows after the base passing :data:`DELTA_FRACTION` of it, are written as one
    new base file; otherwise the base file is the previous version's (a link) and the rows after
    it are the new delta file."""
    base, rest = blocks[0], blocks[1:]
    after = sum(len(b) for b in rest)
    name = vectors_file(category)
    if not rest or after > DELTA_FRACTION * len(base):
        files[name] = save_vectors(tmp / name, *blocks)
        return
    files[name] = link_verified(old.path / name, tmp / name, old.manifest.files[name], name in old.verified)
    if after:
        files[delta_file(category)] = save_vectors(tmp / delta_file(category), *rest)


def _removed_mask(db, category: str, old_count: int, total: int) -> np.ndarray:
    """Over ``total`` labels, True for the first ``old_count`` (the previous version's) that have
    no photo row in ``db`` (removed by this update or an earlier one); the new ones are live."""
    mask = np.zeros(total, bool)
    mask[:old_count] = True
    rows = db.execute("SELECT label FROM photos WHERE category = ? AND label < ?", (category, old_count))
    mask[np.fromiter((r[0] for r in rows), np.int64)] = False
    return mask


def served_embedder(client, catalog: Catalog) -> TritonEmbedder:
    """The served embedder pinned to the catalog's version; :class:`CatalogVersionMismatch`
    naming the versions served when that one is not."""
    e = catalog.embedder
    try:
        served = client.model_metadata(e.name).versions
    except LookserveError as err:
        raise CatalogVersionMismatch(f"the server does not serve {e.name!r} ({err}); the catalog needs version {e.version}") from err
    if str(e.version) not in {str(v) for v in served}:
        raise CatalogVersionMismatch(
            f"the catalog is bound to {e.name} version {e.version}, which the server does not serve (it serves "
            f"{', '.join(map(str, served)) or 'none'}): new photos must be embedded by version {e.version}; load it, "
            "or rebuild the catalog with lookserve catalog build"
        )
    return TritonEmbedder(client, e.name, str(e.version))


def update_catalog(
    address: str | os.PathLike,
    client=None,
    *,
    add: Sequence[PhotoRecord] = (),
    replace: Sequence[PhotoRecord] = (),
    remove: Sequence[int] = (),
    embedder: Embedder | None = None,
    new_vectors: np.ndarray | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    rebuild_fraction: float = REBUILD_FRACTION,
    keep: int = 3,
    limits: DecodeLimits = DEFAULT_LIMITS,
    progress: bool = False,
    verify: bool = True,
    incremental_tuning: bool = True,
) -> UpdateResult:
    """Add, replace and remove products of the catalog at ``address`` (a catalog root or a
    catalog directory), writing a new version (see the module docstring).

    ``client`` (a :class:`~lookserve.client.core.TritonClient`) embeds the new photos with the
    catalog's embedder version; ``embedder`` overrides it (it must answer with that version);
    ``new_vectors`` (one row per photo of ``add`` then ``replace``, already embedded by that
    version, e.g. the synthetic vectors of ``lookserve bench catalog-update``) skips embedding.
    In a root, update versions older than the newest ``keep`` are removed (never the current one).
    ``incremental_tuning=False`` searches every row for ef's ground truth, as before it was stored.
    """
    t0 = time.perf_counter()
    address = Path(address)
    root = address if _is_root(address) else None
    base = read_current(root) if root is not None else address
    # private: its loaded indexes are updated in place, and it is never searched (no photo rows read)
    old = Catalog.open(base, verify=verify, attributes=False, photos=False)
    plan = _plan(old, add, replace, remove)
    if not plan.remove and not plan.new_photos:
        raise InvalidInputError("nothing to update: give products to add, replace or remove")
    t1 = time.perf_counter()
    todo = [i for i in range(len(plan.new_photos)) if i not in plan.reuse]
    vectors = np.zeros((len(plan.new_photos), old.dim), np.float32)
    skipped: list[str] = []
    if todo and new_vectors is not None:
        given = np.asarray(new_vectors, dtype=np.float32)
        if given.shape != (len(plan.new_photos), old.dim):
            raise CatalogError(f"new_vectors must be [{len(plan.new_photos)}, {old.dim}], got {given.shape}")
        vectors[todo] = given[todo]
    elif todo:
        if embedder is None:
            if client is None:
                raise CatalogError("new photos need the embedder: pass a client (or an embedder)")
            embedder = served_embedder(client, old)
        partial = base.with_name(f".{base.name}.update-partial")
        records = [plan.new_photos[i] for i in todo]
        got, version, skipped = embed_records(records, embedder, partial, batch_size, concurrency, limits, progress)
        if str(version) != str(old.embedder.version):
            raise CatalogVersionMismatch(
                f"embedder version {version} answered, but the catalog is bound to version {old.embedder.version}; "
                "its vectors are not comparable"
            )
        vectors[todo] = got
        shutil.rmtree(partial, ignore_errors=True)
    for i, (category, label) in plan.reuse.items():
        vectors[i] = old.vector_rows(category, [label])[0]
    t2 = time.perf_counter()
    keep_rows = [i for i, r in enumerate(plan.new_photos) if r.image not in set(skipped) or i in plan.reuse]
    if skipped:
        log.warning("%d new photo(s) could not be read and are left out: %s", len(skipped), ", ".join(skipped[:5]))
    photos = [plan.new_photos[i] for i in keep_rows]
    kept_products = {r.product_id for r in photos}
    products = [p for p in plan.new_products if p.product_id in kept_products]
    target = next_version_dir(root, base) if root is not None else address
    tuning: dict[str, str] = {}
    manifest, rebuilt, removed_photos = apply_update(
        old, target, plan.remove, products, photos, vectors[keep_rows], plan.schema, rebuild_fraction, consume=True,
        incremental_tuning=incremental_tuning, tuning=tuning)
    if root is not None:
        set_current(root, target.name)
        _prune(root, keep)
    t3 = time.perf_counter()
    rep_ids = {r.product_id for r in replace}
    return UpdateResult(
        path=target, manifest=manifest, parent=old.version,
        added_products=len({r.product_id for r in add}), replaced_products=len(rep_ids),
        removed_products=len(set(map(int, remove))), embedded_photos=len(todo), reused_photos=len(plan.reuse),
        removed_photos=removed_photos, rebuilt=rebuilt,
        seconds={"plan": round(t1 - t0, 3), "embed": round(t2 - t1, 3), "write": round(t3 - t2, 3)}, tuning=tuning,
    )


__all__ = ["DELTA_FRACTION", "REBUILD_FRACTION", "UpdateResult", "apply_update", "next_version_dir", "served_embedder", "update_catalog"]
