"""The HNSW index of one category: its parameters, building it (:func:`new_index`), tuning its
search breadth ``ef`` to a recall target (:func:`tune_ef`) and the exact search it is measured
against (:func:`exact_search` with its exact :func:`top_k`, :func:`recall_at_k`).

The tuning queries' exact neighbours are kept as a :class:`GroundTruth` (top-(k +
:data:`TRUTH_SPARE`) labels and similarities), which a catalog stores per category, so that an
update re-tunes ef against exact search without searching every row again: it drops the removed
labels and exact-searches only the added rows (:func:`merge_truth`), and searches everything
again only when a query has lost so many stored neighbours that its exact top-k is no longer
known."""

from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np

from lookserve.errors import CatalogError, ConfigError

SPACE = "cosine"


@dataclass(frozen=True)
class IndexParams:
    M: int = 16
    ef_construction: int = 200
    k: int = 6  # the K of recall@K used to tune ef
    recall_target: float = 0.99
    tune_sample: int = 256  # queries per category used to tune ef
    query_noise: float = 1.0  # largest norm of the noise that turns an indexed (unit) vector into a query
    # steps of at most 25 % above 32: an update that must raise ef raises recall by little more than needed
    ef_candidates: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
                                      448, 512, 640, 768, 1024)
    seed: int = 0
    build_threads: int = 1  # >1 is faster but makes the graph depend on thread timing

    def __post_init__(self) -> None:
        if self.M < 2 or self.ef_construction < 1 or self.k < 1:
            raise ConfigError(f"invalid HNSW parameters M={self.M}, ef_construction={self.ef_construction}, k={self.k}")
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall_target must be in (0, 1], got {self.recall_target}")


@dataclass(frozen=True)
class FilteredSearch:
    """How a filtered search runs (:meth:`~lookserve.client.catalog.directory.Catalog.search`).

    A filter keeping at most ``max(exact_rows, exact_fraction × photos)`` photos is answered by
    exact search over those photos (cost ∝ photos kept; their vectors are gathered once per
    filter); a broader one by hnswlib's ``knn_query(filter=...)``, asking for
    ``ef / selectivity ** ef_power`` candidates (at least the tuned ef) since fewer of the nodes
    it visits count. The threshold comes from ``lookserve bench catalog-update``
    (bench/results/catalog_update.md, 500k photos): the filtered graph walk's cost grows about
    as 1/selectivity (Python calls the filter for every node it visits: 3.7 ms a query at 50 %,
    8 ms at 10 %, 270 ms at 1 %) while the exact scan's grows with the photos kept (about 4 ms
    for 50k of 128-d), so they cross near 10 % at that size.
    """

    exact_rows: int = 4096
    exact_fraction: float = 0.1
    ef_power: float = 0.5
    max_ef: int = 2048
    cache: int = 64  # filter masks kept per catalog
    gather_bytes: int = 256 << 20  # kept photos' vectors gathered for exact search, kept per catalog

    def ef_for(self, ef: int, selectivity: float) -> int:
        return int(min(self.max_ef, max(ef, np.ceil(ef / max(selectivity, 1e-9) ** self.ef_power))))


#: exact search scores at most this many (query, vector) pairs at once (× 4 bytes of memory)
EXACT_CHUNK = 1 << 24
#: columns per group in :func:`top_k`'s threshold (a group's maximum bounds its members)
_GROUP = 32


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, normalized: bool = False,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k with numpy: (indices [n, k], similarities [n, k]), best first.
    ``normalized``: ``vectors`` rows are unit already (not normalised again). ``exclude``: a
    boolean mask over the rows of ``vectors`` that are never returned (e.g. removed labels),
    which saves gathering the others into a copy."""
    if normalized:
        v = vectors
    else:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))  # no n × dim temporary, unlike linalg.norm
        v = vectors * (1.0 / np.maximum(norms, 1e-12))[:, None]
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    n = v.shape[0]
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != (n,):
            raise CatalogError(f"exclude must be a mask of {n} rows, got shape {exclude.shape}")
    k = min(k, n - (int(exclude.sum()) if exclude is not None else 0))
    idx = np.zeros((len(q), max(k, 0)), np.int64)
    sims = np.zeros((len(q), max(k, 0)), np.result_type(q, v))
    step = max(1, EXACT_CHUNK // max(n, 1))
    for s in range(0, len(q), step):
        block = q[s : s + step] @ v.T
        if exclude is not None:
            block[:, exclude] = -np.inf
        idx[s : s + step] = top_k(block, k)
        sims[s : s + step] = np.take_along_axis(block, idx[s : s + step], axis=1)
    return idx, sims


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest scores, best first (ties: lower index first).

    Exact, and cheaper than an ``argpartition`` of every row: the columns are cut into groups of
    ``_GROUP``; the k-th largest group maximum is a lower bound of the k-th largest score (k
    groups hold a score at least that large), so only the scores reaching it are candidates,
    usually about k per row. Fewer than k groups, or a row with fewer candidates (NaN scores),
    sort whole rows."""
    r, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.zeros((r, 0), np.int64)
    groups = n // _GROUP
    if groups >= k and r:
        # group g = columns g, g + groups, g + 2·groups, …: a maximum of contiguous rows
        maxima = scores[:, : groups * _GROUP].reshape(r, _GROUP, groups).max(axis=1)
        bound = np.partition(maxima, groups - k, axis=1)[:, groups - k]
        rows, cols = np.nonzero(scores >= bound[:, None])
        counts = np.bincount(rows, minlength=r)
        if (counts >= k).all():
            order = np.lexsort((cols, -scores[rows, cols], rows))
            starts = np.cumsum(counts) - counts
            return cols[order][starts[:, None] + np.arange(k)].astype(np.int64)
    # few columns, or a row without k candidates: sort whole rows (NaN last)
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)
    return order[:, :k].astype(np.int64)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found among the approximate top-k."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def new_index(dim: int, n: int, params: IndexParams):
    """An empty hnswlib index (space cosine) for up to ``n`` vectors of ``dim``, seeded by ``params``."""
    index = hnswlib.Index(space=SPACE, dim=dim)
    index.init_index(max_elements=max(n, 1), M=params.M, ef_construction=params.ef_construction, random_seed=params.seed)
    return index


#: neighbours stored beyond k per tuning query: an update may remove up to this many of a
#: query's stored neighbours before its exact top-k has to be searched for again
TRUTH_SPARE = 16


@dataclass(frozen=True)
class GroundTruth:
    """The tuning queries of one category and their exact neighbours among its live rows.

    ``labels[i]`` are query ``i``'s best rows, best first (ties: lower label first), ``-1``
    past the ones known; every live row not listed ranks after the last listed one.
    ``complete[i]``: the listed rows are every live row."""

    queries: np.ndarray  # [q, dim] float32
    labels: np.ndarray  # [q, depth] int64
    sims: np.ndarray  # [q, depth] float32, -inf past the known ones
    complete: np.ndarray  # [q] bool

    def __post_init__(self) -> None:
        q = len(self.queries)
        if (self.queries.ndim != 2 or self.labels.ndim != 2 or self.labels.shape != self.sims.shape
                or self.labels.shape[0] != q or self.complete.shape != (q,)):
            raise CatalogError(f"ground truth arrays disagree: queries {self.queries.shape}, labels "
                               f"{self.labels.shape}, sims {self.sims.shape}, complete {self.complete.shape}")

    @property
    def depth(self) -> int:
        return self.labels.shape[1]

    def known(self) -> np.ndarray:
        """Labels listed per query."""
        return (self.labels >= 0).sum(axis=1)

    def top(self, k: int) -> np.ndarray:
        """The exact top-``k`` labels of every query ([q, k]);
        :class:`CatalogError` when a query's are not all known."""
        known = self.known()
        short = (known < k) & ~self.complete
        if short.any():
            raise CatalogError(f"ground truth knows fewer than {k} neighbours of {int(short.sum())} tuning queries")
        return self.labels[:, :k]


def tuning_queries(vectors: np.ndarray, params: IndexParams, rng: np.random.Generator,
                   deleted: np.ndarray | None = None) -> np.ndarray:
    """``params.tune_sample`` queries (fewer when fewer rows are live): noisy copies of sampled
    live rows of ``vectors`` (``deleted``: a mask of the rows that are not)."""
    live = np.flatnonzero(~np.asarray(deleted, dtype=bool)) if deleted is not None else None
    n, dim = (len(live), vectors.shape[1]) if live is not None else vectors.shape
    m = min(params.tune_sample, n)
    picks = rng.choice(n, size=m, replace=False)
    if live is not None:
        picks = live[picks]
    # Queries at several distances from their source vector (a street crop is rarely as close
    # to its shop photo as a near-duplicate): noise norms cycle through 1/3, 2/3 and 1 × query_noise.
    noise = rng.normal(size=(m, dim)).astype(np.float32)
    levels = params.query_noise * (1 + np.arange(m) % 3) / 3
    noise *= (levels / np.maximum(np.linalg.norm(noise, axis=1), 1e-12))[:, None]
    unit = vectors[picks] / np.maximum(np.linalg.norm(vectors[picks], axis=1, keepdims=True), 1e-12)
    return (unit + noise).astype(np.float32)


def exact_truth(vectors: np.ndarray, queries: np.ndarray, depth: int, deleted: np.ndarray | None = None) -> GroundTruth:
    """The exact top-``depth`` of ``queries`` among the rows of ``vectors`` (``deleted``: a mask
    of rows that are not live), by a full :func:`exact_search`."""
    n = len(vectors) - (int(np.count_nonzero(deleted)) if deleted is not None else 0)
    idx, sims = exact_search(vectors, queries, depth, exclude=deleted)
    labels = np.full((len(queries), depth), -1, np.int64)
    out = np.full((len(queries), depth), -np.inf, np.float32)
    labels[:, : idx.shape[1]], out[:, : idx.shape[1]] = idx, sims
    return GroundTruth(np.asarray(queries, np.float32), labels, out, np.full(len(queries), n <= depth))


def _before(sims: np.ndarray, labels: np.ndarray, sim: float, label: int) -> np.ndarray:
    """Which (sim, label) pairs rank before or at (sim, label): higher similarity, then lower label."""
    return (sims > sim) | ((sims == sim) & (labels <= label))


def merge_truth(truth: GroundTruth, removed: np.ndarray, added: np.ndarray, first_label: int, k: int) -> GroundTruth | None:
    """``truth`` after an update that removed the labels ``removed`` and added the rows
    ``added`` as labels ``first_label, first_label + 1, …``: only the added rows are searched
    (exactly, for the same queries), then merged with the stored neighbours that remain.

    A merged list is cut where an unlisted old row could rank (after the last stored neighbour,
    removed or not), so every listed label is exact; the added rows need no cut, since any of
    them in the merged top-``depth`` is among their own top-``depth``, which were all searched.
    None when a query then knows fewer than ``k`` and its list is not complete: its exact top-k
    needs a full search."""
    depth = truth.depth
    removed = np.asarray(removed, np.int64)
    q = len(truth.queries)
    if len(added):
        a_idx, a_sims = exact_search(added, truth.queries, depth)
        a_labels, a_sims = a_idx + first_label, a_sims.astype(np.float32)
        added_complete = len(added) <= depth
    else:
        a_labels, a_sims = np.zeros((q, 0), np.int64), np.zeros((q, 0), np.float32)
        added_complete = True
    valid = truth.labels >= 0
    survive = valid & ~np.isin(truth.labels, removed)
    labels = np.full((q, depth), -1, np.int64)
    sims = np.full((q, depth), -np.inf, np.float32)
    complete = np.zeros(q, bool)
    for i in range(q):
        cand_l = np.concatenate([truth.labels[i, survive[i]], a_labels[i]])
        cand_s = np.concatenate([truth.sims[i, survive[i]], a_sims[i]])
        order = np.lexsort((cand_l, -cand_s))
        cand_l, cand_s = cand_l[order], cand_s[order]
        cut = len(cand_l)
        if not truth.complete[i]:
            last = np.flatnonzero(valid[i])
            cut = 0 if not len(last) else min(cut, int(_before(cand_s, cand_l, truth.sims[i, last[-1]],
                                                                truth.labels[i, last[-1]]).sum()))
        complete[i] = bool(truth.complete[i] and added_complete and len(cand_l) <= depth)
        cut = min(cut, depth)
        if cut < k and not complete[i]:
            return None
        labels[i, :cut], sims[i, :cut] = cand_l[:cut], cand_s[:cut]
    return GroundTruth(truth.queries, labels, sims, complete)


def ef_for_truth(index, truth: GroundTruth, params: IndexParams, n: int, start: int | None = None) -> tuple[int, float]:
    """The smallest candidate ef whose recall@K (K = min(params.k, n), ``n`` live rows) on
    ``truth``'s queries reaches ``params.recall_target``: (ef, measured recall). ``start``: try
    this ef first and only larger candidates after it — an update keeps its parent's ef while
    that still reaches the target (one search of the queries instead of one per smaller
    candidate, and no drift of recall or latency with every small update); a build or rebuild
    tunes from the smallest candidate."""
    k = min(params.k, n)
    exact = truth.top(k)
    best = (max(params.ef_candidates[-1], n), 0.0)
    grid = {max(e, k) for e in params.ef_candidates} | {max(n, k)}
    if start is not None:
        grid = {max(start, k)} | {e for e in grid if e > start}
    for ef in sorted(grid):
        index.set_ef(ef)
        labels, _ = index.knn_query(truth.queries, k=k, num_threads=params.build_threads)
        recall = recall_at_k(labels.astype(np.int64), exact)
        if recall >= params.recall_target:
            return ef, recall
        best = (ef, recall)
        if ef >= n:
            break
    raise CatalogError(
        f"recall@{k} of the HNSW graph stays below {params.recall_target} at every ef (best {best[1]:.4f} at "
        f"ef={best[0]}); build with a larger M or ef_construction (now M={params.M}, "
        f"ef_construction={params.ef_construction})"
    )


def tune_ef_with_truth(index, vectors: np.ndarray, params: IndexParams, rng: np.random.Generator,
                       deleted: np.ndarray | None = None, start: int | None = None) -> tuple[int, float, GroundTruth]:
    """:func:`tune_ef` against a full exact search (rows = labels; ``deleted``: the removed
    ones), also returning the ground truth it measured against, top-(k + :data:`TRUTH_SPARE`)
    deep, for a later update to merge into (:func:`merge_truth`); ``start`` as in
    :func:`ef_for_truth`."""
    n = len(vectors) - (int(np.count_nonzero(deleted)) if deleted is not None else 0)
    queries = tuning_queries(vectors, params, rng, deleted)
    truth = exact_truth(vectors, queries, params.k + TRUTH_SPARE, deleted)
    ef, recall = ef_for_truth(index, truth, params, n, start)
    return ef, recall, truth


def tune_ef(index, vectors: np.ndarray, params: IndexParams, rng: np.random.Generator,
            labels: np.ndarray | None = None, deleted: np.ndarray | None = None) -> tuple[int, float, int]:
    """The smallest candidate ef with recall@K ≥ target on noisy copies of sampled vectors
    (against exact search). ``labels``: the index label of each row of ``vectors`` (default:
    the row number; an updated index holds removed labels the rows skip). ``deleted``: instead,
    ``vectors`` holds every label's row and this mask marks the removed ones (neither sampled
    nor found; the same queries as passing the live rows and their labels, without copying
    them). Returns (ef, measured recall, sample size)."""
    if deleted is not None and labels is not None:
        raise CatalogError("tune_ef takes labels or a deleted mask, not both")
    n = len(vectors) - (int(np.count_nonzero(deleted)) if deleted is not None else 0)
    k = min(params.k, n)
    queries = tuning_queries(vectors, params, rng, deleted)
    truth = exact_truth(vectors, queries, k, deleted)
    if labels is not None:
        mapped = np.asarray(labels, dtype=np.int64)[np.maximum(truth.labels, 0)]
        truth = GroundTruth(queries, np.where(truth.labels >= 0, mapped, -1), truth.sims, truth.complete)
    ef, recall = ef_for_truth(index, truth, params, n)
    return ef, recall, len(queries)
