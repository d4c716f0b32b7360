"""``lookserve bench catalog-backends``: hnswlib in the process vs Milvus as a server, one run,
side by side, on the search bench's synthetic vectors.

Both engines index the same ``n`` vectors (:func:`lookserve.bench.search.clustered_vectors`:
clustered, L2-normalised; queries are fresh draws of the same mixture) with the same HNSW
parameters (M, efConstruction, ef, inner product). Milvus is the embedded standalone server of
the ``milvus`` wheel, started on 127.0.0.1 by :func:`lookserve.client.catalog.milvus_server.start_milvus`
(so every Milvus call also crosses that module's loopback relay), queried with pymilvus.

Per engine:

* **build**: hnswlib ``add_items`` on ``threads`` threads; Milvus insert (batches) + flush,
  index build (until every row is indexed) and load — the time until the first search can run;
* **recall@k** of single queries against exact inner-product search (numpy);
* **single client**: one query per call, one thread (:class:`lookserve.bench.load.ClosedLoop`
  with concurrency 1): q/s, p50 and p99; hnswlib and Milvus alternate in blocks of ``block``
  queries, so load drift on a shared machine hits both alike;
* **concurrent**: ``concurrency`` client threads for ``duration_s`` (ClosedLoop), alternating too;
* **filtered**: the same single-client measurement with a 5 % filter (``bucket == 3``), run as
  each backend runs one: the hnswlib catalog's policy (:class:`~lookserve.client.catalog.FilteredSearch`:
  exact search over the kept rows at this selectivity), Milvus's boolean expression; recall
  against exact filtered search;
* **memory**: hnswlib — RSS growth of this process during the build and hnswlib's layout
  estimate; Milvus — RSS of its processes (psutil) before the collection and after the load.

For Milvus also: the latency floor of a call that searches nothing (``get_server_version``: client,
relay and gRPC), and single queries at ``Strong`` consistency (the default here is ``Bounded``:
the data is static after the flush; Strong makes each search wait for the server's time tick).
Exact search (numpy, one query per call) is the trivial baseline beside both.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import typer

from lookserve.bench.load import ClosedLoop, latency_summary
from lookserve.bench.report import (
    atomic_write_json,
    atomic_write_text,
    command_line,
    environment,
    markdown_table,
    package_versions,
    save_figure,
)
from lookserve.bench.search import clustered_vectors, exact_single, exact_topk, recall_at_k
from lookserve.client.catalog import FilteredSearch, exact_search
from lookserve.client.catalog.milvus_server import start_milvus
from lookserve.cliutil import handle_errors, stderr_console
from lookserve.errors import ConfigError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

ENGINES = ("hnswlib", "milvus")
BUCKETS = 20  # the filter keeps bucket == FILTER_BUCKET: 1 row in BUCKETS (5 %)
FILTER_BUCKET = 3
COLLECTION = "bench_catalog_backends"


@dataclass(frozen=True)
class BackendsSpec:
    n: int = 1_000_000
    dim: int = 128
    queries: int = 1000  # single-client queries per engine (recall is over these)
    filtered_queries: int = 200
    k: int = 10
    clusters: int = 256
    latent_dim: int = 24
    noise: float = 0.05
    seed: int = 0
    m: int = 16
    ef_construction: int = 100
    ef: int = 160
    threads: int = 2  # hnswlib build threads (Milvus builds with its own pool)
    concurrency: int = 4
    duration_s: float = 10.0  # per engine, for the concurrent measurement (two alternating halves)
    block: int = 100  # single-client queries per alternating block
    insert_batch: int = 10_000
    floor_calls: int = 200
    strong_queries: int = 100
    exact_queries: int = 50
    engines: tuple[str, ...] = ENGINES

    def __post_init__(self) -> None:
        if self.n < 1 or self.dim < 1 or self.queries < 1 or self.filtered_queries < 1:
            raise ConfigError(f"n, dim, queries and filtered_queries must be positive, got n={self.n} dim={self.dim} "
                              f"queries={self.queries} filtered_queries={self.filtered_queries}")
        if not 1 <= self.k <= self.n // BUCKETS:
            raise ConfigError(f"k must be in 1..n/{BUCKETS} ({self.n // BUCKETS}: the filter keeps 1 row in "
                              f"{BUCKETS}), got {self.k}")
        if self.ef < self.k:
            raise ConfigError(f"ef must be ≥ k ({self.k}), got {self.ef}")
        if min(self.threads, self.concurrency, self.block, self.insert_batch) < 1 or self.duration_s <= 0:
            raise ConfigError("threads, concurrency, block and insert_batch must be ≥ 1 and duration_s > 0")
        unknown = set(self.engines) - set(ENGINES)
        if unknown or not self.engines:
            raise ConfigError(f"engines must be some of {', '.join(ENGINES)}, got {list(self.engines)}")


# --- the two engines behind one small interface -------------------------------------------
class HnswlibEngine:
    """An hnswlib index in this process."""

    name = "hnswlib"

    def __init__(self, spec: BackendsSpec, base: np.ndarray, buckets: np.ndarray) -> None:
        import psutil  # the [bench] extra

        self.spec, self.buckets = spec, buckets
        gc.collect()
        rss0 = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        self.index = hnswlib.Index(space="ip", dim=spec.dim)
        self.index.init_index(max_elements=len(base), ef_construction=spec.ef_construction, M=spec.m,
                              random_seed=spec.seed)
        self.index.add_items(base, np.arange(len(base)), num_threads=spec.threads)
        self.index.set_ef(spec.ef)
        build_s = time.perf_counter() - t0
        level0 = (2 * spec.m + 1) * 4 + spec.dim * 4 + 8  # links + count, vector, label
        self.build = {"seconds": build_s, "add_items_s": build_s, "threads": spec.threads}
        self.memory = {"rss_delta_bytes": psutil.Process().memory_info().rss - rss0,
                       "index_bytes_estimate": int(len(base) * level0 * (1 + 1 / spec.m)),
                       "measured_as": "RSS growth of this process during the build; estimate from hnswlib's layout"}
        # Filtered search as the hnswlib catalog runs it (FilteredSearch): exact search over the
        # kept rows' vectors (gathered once per filter, as the catalog caches them) when the
        # filter keeps few enough, else hnswlib's filter callback with a raised ef.
        mask = buckets == FILTER_BUCKET
        self._keep = lambda label: bool(mask[label])
        self._kept = np.flatnonzero(mask)
        policy = FilteredSearch()
        self.filter_path = ("exact" if len(self._kept) <= max(policy.exact_rows, policy.exact_fraction * len(base))
                            else "hnsw")
        self._kept_vectors = base[self._kept] if self.filter_path == "exact" else None
        self._filter_ef = policy.ef_for(spec.ef, len(self._kept) / len(base))

    def search(self, q: np.ndarray) -> np.ndarray:
        labels, _ = self.index.knn_query(q[None, :], k=self.spec.k, num_threads=1)
        return labels[0]

    def search_filtered(self, q: np.ndarray) -> np.ndarray:
        if self.filter_path == "exact":
            rows, _ = exact_search(self._kept_vectors, q[None, :], self.spec.k, normalized=True)
            return self._kept[rows[0]]
        self.index.set_ef(self._filter_ef)  # filtered queries run one at a time, never beside others
        try:
            labels, _ = self.index.knn_query(q[None, :], k=self.spec.k, num_threads=1, filter=self._keep)
        finally:
            self.index.set_ef(self.spec.ef)
        return labels[0]

    def close(self) -> None:
        self.index = None


def _process_tree_rss(pid: int) -> int:
    import psutil  # the [bench] extra

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in (root, *root.children(recursive=True)))
    except psutil.NoSuchProcess:
        return 0


class MilvusEngine:
    """A collection in a Milvus server (the embedded one, on loopback), queried with pymilvus."""

    name = "milvus"

    def __init__(self, spec: BackendsSpec, base: np.ndarray, buckets: np.ndarray, data_dir: Path,
                 progress: Callable[[str], None]) -> None:
        from pymilvus import DataType, MilvusClient  # the [milvus] extra

        self.spec = spec
        t0 = time.perf_counter()
        self.server = start_milvus(data_dir)
        self.start_s = time.perf_counter() - t0
        try:
            self.client = MilvusClient(uri=self.server.uri)
            if self.client.has_collection(COLLECTION):
                self.client.drop_collection(COLLECTION)
            rss_empty = _process_tree_rss(self.server.milvus_pid)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("bucket", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dim)
            self.client.create_collection(COLLECTION, schema=schema, consistency_level="Bounded")

            t0 = time.perf_counter()
            for start in range(0, len(base), spec.insert_batch):
                stop = min(start + spec.insert_batch, len(base))
                self.client.insert(COLLECTION, [{"id": i, "bucket": int(buckets[i]), "vector": base[i]}
                                                for i in range(start, stop)])
            insert_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.client.flush(COLLECTION)
            flush_s = time.perf_counter() - t0
            progress(f"milvus: inserted {len(base):,} rows in {insert_s:.1f} s, flushed in {flush_s:.1f} s; indexing")

            t0 = time.perf_counter()
            index_params = self.client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                                   params={"M": spec.m, "efConstruction": spec.ef_construction})
            self.client.create_index(COLLECTION, index_params)
            self._wait_indexed(len(base))
            index_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.client.load_collection(COLLECTION)
            load_s = time.perf_counter() - t0
            rss_loaded = _process_tree_rss(self.server.milvus_pid)
        except BaseException:
            self.close()
            raise
        self.build = {"seconds": insert_s + flush_s + index_s + load_s, "insert_s": insert_s, "flush_s": flush_s,
                      "index_s": index_s, "load_s": load_s, "server_start_s": self.start_s,
                      "insert_batch": spec.insert_batch}
        self.memory = {"rss_empty_bytes": rss_empty, "rss_loaded_bytes": rss_loaded,
                       "rss_delta_bytes": rss_loaded - rss_empty,
                       "measured_as": "RSS of the Milvus process tree (psutil): empty server, then collection loaded"}
        self._params = {"metric_type": "IP", "params": {"ef": spec.ef}}
        self._filter = f"bucket == {FILTER_BUCKET}"

    def _wait_indexed(self, rows: int, timeout_s: float = 3600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.client.describe_index(COLLECTION, "vector")
            if int(info.get("indexed_rows", 0)) >= rows and int(info.get("pending_index_rows", 0)) == 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f"Milvus indexed {info.get('indexed_rows')} of {rows} rows within {timeout_s:.0f} s")

    def _ids(self, hits: list[list[dict]]) -> np.ndarray:
        ids = np.full(self.spec.k, -1, np.int64)
        row = [h["id"] for h in hits[0]]
        ids[:len(row)] = row
        return ids

    def search(self, q: np.ndarray, consistency: str = "Bounded") -> np.ndarray:
        return self._ids(self.client.search(COLLECTION, [q], limit=self.spec.k, search_params=self._params,
                                            consistency_level=consistency))

    def search_filtered(self, q: np.ndarray) -> np.ndarray:
        return self._ids(self.client.search(COLLECTION, [q], filter=self._filter, limit=self.spec.k,
                                            search_params=self._params))

    def floor(self) -> str:
        return self.client.get_server_version()

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            try:
                client.drop_collection(COLLECTION)
            except Exception as e:  # noqa: BLE001 - the server stops next anyway
                log.debug("could not drop %s: %s", COLLECTION, e)
            client.close()
        self.server.stop()


# --- measuring ----------------------------------------------------------------------------
def _loop(call: Callable[[int], Any], concurrency: int, *, requests: int | None = None,
          seconds: float = 3600.0) -> tuple[list, float]:
    """One ClosedLoop run: its outcomes and wall seconds."""
    load = ClosedLoop(lambda worker, i: call(i), concurrency, max_requests=requests, max_s=seconds,
                      name="catalog-backends")
    t0 = time.perf_counter()
    outcomes = load.start().wait()
    return outcomes, time.perf_counter() - t0


def _single(engines: dict[str, Any], queries: np.ndarray, truth: np.ndarray, k: int, block: int,
            method: str) -> dict[str, dict[str, Any]]:
    """Single-client queries, one per call, engines alternating block by block; figures per engine."""
    found = {name: np.full((len(queries), k), -1, np.int64) for name in engines}
    latencies: dict[str, list[float]] = {name: [] for name in engines}
    busy = dict.fromkeys(engines, 0.0)
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        for name, engine in engines.items():
            search = getattr(engine, method)
            outcomes, seconds = _loop(lambda i, s=search, o=start: s(queries[o + i]), 1, requests=stop - start)
            for o in outcomes:
                found[name][start + o.index] = o.value
                latencies[name].append(o.latency_s)
            busy[name] += seconds
    return {name: {"queries": len(queries), "qps": len(queries) / busy[name],
                   "recall": recall_at_k(found[name], truth, k), **_percentiles(latencies[name])}
            for name in engines}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    s = latency_summary(seconds)
    return {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "mean_ms": s["mean_ms"]}


def _concurrent(engines: dict[str, Any], queries: np.ndarray, concurrency: int, duration_s: float) -> dict[str, dict[str, Any]]:
    """``concurrency`` threads per engine, two alternating halves of ``duration_s`` each."""
    latencies: dict[str, list[float]] = {name: [] for name in engines}
    busy = dict.fromkeys(engines, 0.0)
    for _ in range(2):
        for name, engine in engines.items():
            outcomes, seconds = _loop(lambda i, s=engine.search: s(queries[i % len(queries)]), concurrency,
                                      seconds=duration_s / 2)
            latencies[name] += [o.latency_s for o in outcomes]
            busy[name] += seconds
    return {name: {"threads": concurrency, "requests": len(latencies[name]), "seconds": busy[name],
                   "qps": len(latencies[name]) / busy[name], **_percentiles(latencies[name])} for name in engines}


def _exact_baseline(base: np.ndarray, queries: np.ndarray, k: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits  # the [bench] extra

    with threadpool_limits(limits=1, user_api="blas"):
        exact_single(base, queries[0], k)
        latencies = []
        for q in queries:
            t0 = time.perf_counter()
            exact_single(base, q, k)
            latencies.append(time.perf_counter() - t0)
    return {"engine": "exact (numpy, 1 thread)", "queries": len(queries), "qps": len(queries) / sum(latencies),
            "recall": 1.0, **_percentiles(latencies)}


def run_catalog_backends_bench(spec: BackendsSpec, work_dir: Path | None = None,
                               progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Build both engines over the same vectors and measure them side by side; the report (JSON-ready)."""
    from threadpoolctl import threadpool_limits  # the [bench] extra

    base = clustered_vectors(spec.n, spec.dim, clusters=spec.clusters, latent_dim=spec.latent_dim,
                             noise=spec.noise, seed=spec.seed, stream=0)
    queries = clustered_vectors(spec.queries, spec.dim, clusters=spec.clusters, latent_dim=spec.latent_dim,
                                noise=spec.noise, seed=spec.seed, stream=1)
    buckets = np.random.default_rng([spec.seed, 7]).integers(0, BUCKETS, spec.n)
    with threadpool_limits(limits=spec.threads, user_api="blas"):
        truth = exact_topk(base, queries, spec.k)
        kept = np.flatnonzero(buckets == FILTER_BUCKET)
        truth_filtered = kept[exact_topk(base[kept], queries[:spec.filtered_queries], spec.k)]
    exact = _exact_baseline(base, queries[:spec.exact_queries], spec.k)
    progress(f"{spec.n:,} × {spec.dim} vectors, exact baseline {exact['qps']:.1f} q/s; building")

    engines: dict[str, Any] = {}
    own_work = work_dir is None
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="lookserve-bench-milvus-"))
    try:
        if "hnswlib" in spec.engines:
            engines["hnswlib"] = HnswlibEngine(spec, base, buckets)
            progress(f"hnswlib: built in {engines['hnswlib'].build['seconds']:.1f} s")
        if "milvus" in spec.engines:
            engines["milvus"] = MilvusEngine(spec, base, buckets, work / "milvus", progress)
            progress(f"milvus: ready in {engines['milvus'].build['seconds']:.1f} s "
                     f"(server start {engines['milvus'].start_s:.1f} s not counted)")
        for engine in engines.values():  # warm both before anything is timed
            for q in queries[:20]:
                engine.search(q)
                engine.search_filtered(q)
        single = _single(engines, queries, truth, spec.k, spec.block, "search")
        progress("single client: " + ", ".join(f"{n} {r['qps']:.0f} q/s recall {r['recall']:.4f}" for n, r in single.items()))
        filtered = _single(engines, queries[:spec.filtered_queries], truth_filtered, spec.k, spec.block, "search_filtered")
        concurrent = _concurrent(engines, queries, spec.concurrency, spec.duration_s)
        progress(f"{spec.concurrency} threads: " + ", ".join(f"{n} {r['qps']:.0f} q/s" for n, r in concurrent.items()))
        results: dict[str, dict[str, Any]] = {}
        for name, engine in engines.items():
            results[name] = {"build": engine.build, "memory": engine.memory, "single": single[name],
                             "filtered": {**filtered[name], "selectivity": 1 / BUCKETS, "kept": len(kept),
                                          "path": getattr(engine, "filter_path", "milvus expression")},
                             "concurrent": concurrent[name]}
        if "milvus" in engines:
            milvus = engines["milvus"]
            outcomes, _ = _loop(lambda i: milvus.floor(), 1, requests=spec.floor_calls)
            results["milvus"]["floor_rpc"] = {"call": "get_server_version", "calls": len(outcomes),
                                              **_percentiles([o.latency_s for o in outcomes])}
            strong = queries[:spec.strong_queries]
            outcomes, seconds = _loop(lambda i: milvus.search(strong[i], consistency="Strong"), 1, requests=len(strong))
            found = np.stack([o.value for o in sorted(outcomes, key=lambda o: o.index)])
            results["milvus"]["single_strong"] = {"queries": len(strong), "qps": len(strong) / seconds,
                                                  "recall": recall_at_k(found, truth[:len(strong)], spec.k),
                                                  **_percentiles([o.latency_s for o in outcomes])}
    finally:
        for engine in engines.values():
            engine.close()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    report = {"kind": "catalog_backends", "spec": asdict(spec), "exact": exact, "engines": results,
              "params": {"hnsw": {"M": spec.m, "efConstruction": spec.ef_construction, "ef": spec.ef, "metric": "IP"},
                         "milvus_consistency": "Bounded", "filter": f"bucket == {FILTER_BUCKET}"},
              "packages": package_versions(("hnswlib", "pymilvus", "milvus"))}
    if {"hnswlib", "milvus"} <= set(results):
        h, m = results["hnswlib"], results["milvus"]
        report["ratios_hnswlib_over_milvus"] = {
            "single_qps": h["single"]["qps"] / m["single"]["qps"],
            "concurrent_qps": h["concurrent"]["qps"] / m["concurrent"]["qps"],
            "filtered_qps": h["filtered"]["qps"] / m["filtered"]["qps"],
            "single_p99": m["single"]["p99_ms"] / h["single"]["p99_ms"],
            "build_s": m["build"]["seconds"] / h["build"]["seconds"],
        }
    return report


# --- the report -----------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    spec, exact, e = report["spec"], report["exact"], report["engines"]
    names = [n for n in ENGINES if n in e]
    share = f"{100 / BUCKETS:g} %"
    lines = [f"# Catalog backends: hnswlib vs Milvus, N={spec['n']:,} × {spec['dim']}, recall@{spec['k']}\n",
             f"Data: the search bench's Gaussian mixture ({spec['clusters']} clusters, latent dim {spec['latent_dim']}, "
             f"noise {spec['noise']}, seed {spec['seed']}), L2-normalised; held-out queries. HNSW M={spec['m']}, "
             f"efConstruction={spec['ef_construction']}, ef={spec['ef']}, inner product, both engines. Milvus: the "
             f"embedded standalone server (milvus wheel) on 127.0.0.1 behind lookserve's loopback relay, pymilvus, "
             f"consistency Bounded. Single-client figures alternate the engines in blocks of {spec['block']} queries.\n"]

    def cell(name: str, path: tuple[str, ...], fmt: str = "{:.4g}") -> str:
        value: Any = e[name]
        for p in path:
            value = value.get(p) if isinstance(value, dict) else None
        return "" if value is None else fmt.format(value)

    rows = [
        ["build until searchable, s", *(cell(n, ("build", "seconds"), "{:.1f}") for n in names), "-"],
        ["recall@k (single queries)", *(cell(n, ("single", "recall")) for n in names), f"{exact['recall']:.4g}"],
        ["single client q/s", *(cell(n, ("single", "qps"), "{:,.0f}") for n in names), f"{exact['qps']:.1f}"],
        ["single client p50 ms", *(cell(n, ("single", "p50_ms")) for n in names), f"{exact['p50_ms']:.4g}"],
        ["single client p99 ms", *(cell(n, ("single", "p99_ms")) for n in names), f"{exact['p99_ms']:.4g}"],
        [f"{spec['concurrency']} client threads q/s", *(cell(n, ("concurrent", "qps"), "{:,.0f}") for n in names), "-"],
        [f"{spec['concurrency']} client threads p99 ms", *(cell(n, ("concurrent", "p99_ms")) for n in names), "-"],
        [f"filtered ({share}) path", *(cell(n, ("filtered", "path"), "{}") for n in names), "-"],
        [f"filtered ({share}) recall@k", *(cell(n, ("filtered", "recall")) for n in names), "-"],
        [f"filtered ({share}) single q/s", *(cell(n, ("filtered", "qps"), "{:,.0f}") for n in names), "-"],
        [f"filtered ({share}) p99 ms", *(cell(n, ("filtered", "p99_ms")) for n in names), "-"],
        ["memory growth, MiB", *(f"{e[n]['memory']['rss_delta_bytes'] / 2**20:.0f}" for n in names),
         f"{spec['n'] * spec['dim'] * 4 / 2**20:.0f} (vectors)"],
    ]
    lines.append(markdown_table(["", *names, "exact (numpy, 1 thread)"], rows))
    if "milvus" in e:
        m = e["milvus"]
        b = m["build"]
        lines.append(f"Milvus build: insert {b['insert_s']:.1f} s (batches of {b['insert_batch']:,}), flush "
                     f"{b['flush_s']:.1f} s, index {b['index_s']:.1f} s, load {b['load_s']:.1f} s; the server's own start "
                     f"({b['server_start_s']:.1f} s) is not counted. Memory: the Milvus processes' RSS "
                     f"{m['memory']['rss_empty_bytes'] / 2**20:.0f} MiB empty, {m['memory']['rss_loaded_bytes'] / 2**20:.0f} "
                     "MiB with the collection loaded.\n")
        if "floor_rpc" in m:
            f = m["floor_rpc"]
            lines.append(f"Floor of one Milvus call that searches nothing ({f['call']}: pymilvus, relay, gRPC): "
                         f"p50 {f['p50_ms']:.3g} ms, p99 {f['p99_ms']:.3g} ms.\n")
        if "single_strong" in m:
            s = m["single_strong"]
            lines.append(f"Milvus single client at consistency Strong ({s['queries']} queries): {s['qps']:,.0f} q/s, "
                         f"p50 {s['p50_ms']:.3g} ms, p99 {s['p99_ms']:.3g} ms (Bounded above).\n")
    if "hnswlib" in e:
        mem = e["hnswlib"]["memory"]
        lines.append(f"hnswlib memory: RSS +{mem['rss_delta_bytes'] / 2**20:.0f} MiB during the build; layout estimate "
                     f"{mem['index_bytes_estimate'] / 2**20:.0f} MiB.\n")
    r = report.get("ratios_hnswlib_over_milvus")
    if r:
        lines.append(f"Ratios (same run): hnswlib/Milvus single-client q/s {r['single_qps']:.1f}×, "
                     f"{spec['concurrency']}-thread q/s {r['concurrent_qps']:.1f}×, filtered q/s {r['filtered_qps']:.1f}×; "
                     f"Milvus/hnswlib p99 {r['single_p99']:.1f}×, build time {r['build_s']:.2f}×.\n")
    env = report.get("environment", {})
    if env:
        lines.append(f"Machine: {env.get('host_cpu')}, {env.get('cpu_count')} CPUs, load average at start "
                     f"{report.get('load_start')}, at end {env.get('load_average_1_5_15')} (a shared machine).\n")
    if report.get("command"):
        lines.append(f"Command: `{report['command']}`\n")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = report["engines"]
    names = [n for n in ENGINES if n in e]
    spec = report["spec"]
    panels = (("queries per second", [("single", "qps"), ("concurrent", "qps"), ("filtered", "qps")],
               ["single client", f"{spec['concurrency']} threads", f"filtered {100 / BUCKETS:g} %"]),
              ("latency, ms", [("single", "p50_ms"), ("single", "p99_ms"), ("concurrent", "p99_ms")],
               ["single p50", "single p99", f"{spec['concurrency']} threads p99"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(names)
    for ax, (ylabel, keys, labels) in zip(axes, panels, strict=True):
        xs = np.arange(len(keys))
        for j, name in enumerate(names):
            ys = [e[name][a][b] for a, b in keys]
            ax.bar(xs + j * width, ys, width, label=name)
        ax.set_xticks(xs + width * (len(names) - 1) / 2, labels)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend()
    axes[0].axhline(report["exact"]["qps"], color="grey", linestyle="--", label="exact (numpy)")
    axes[0].legend()
    fig.suptitle(f"hnswlib vs Milvus, N={spec['n']:,} × {spec['dim']}, ef={spec['ef']}")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    return [atomic_write_json(out_dir / f"{stem}.json", report), atomic_write_text(out_dir / f"{stem}.md", markdown(report)),
            plot(report, out_dir / f"{stem}.png")]


@app.command("catalog-backends")
@handle_errors
def catalog_backends_bench(
    ctx: typer.Context,
    n: int = typer.Option(1_000_000, "--n", min=100, help="Vectors in the catalog."),
    dim: int = typer.Option(128, "--dim", min=1),
    queries: int = typer.Option(1000, "--queries", min=1, help="Single-client queries per engine."),
    filtered_queries: int = typer.Option(200, "--filtered-queries", min=1),
    k: int = typer.Option(10, "--k", min=1),
    m: int = typer.Option(16, "--m", min=2, help="HNSW M (both engines)."),
    ef_construction: int = typer.Option(100, "--ef-construction", min=1),
    ef: int = typer.Option(160, "--ef", min=1, help="HNSW search ef (both engines)."),
    threads: int = typer.Option(2, "--build-threads", min=1, help="hnswlib build threads."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Client threads of the concurrent measurement."),
    duration: float = typer.Option(10.0, "--duration", min=0.1, help="Seconds per engine of the concurrent measurement."),
    block: int = typer.Option(100, "--block", min=1, help="Single-client queries per block; the engines alternate by block."),
    engines: str = typer.Option("hnswlib,milvus", "--engines", help="Comma-separated: hnswlib, milvus."),
    seed: int = typer.Option(0, "--seed"),
    work: Path | None = typer.Option(None, "--work", help="Milvus data folder (default: a temp folder, removed)."),
    out: Path = typer.Option(Path("bench/results"), "--out", help="Folder for <stem>.json, .md and .png."),
    stem: str = typer.Option("catalog_backends", "--stem"),
) -> None:
    """hnswlib vs Milvus on the same vectors, one run: build time, recall@k, single-client and
    concurrent q/s with p50/p99, a filtered query, memory."""
    spec = BackendsSpec(n=n, dim=dim, queries=queries, filtered_queries=filtered_queries, k=k, m=m,
                        ef_construction=ef_construction, ef=ef, threads=threads, concurrency=concurrency,
                        duration_s=duration, block=block, seed=seed,
                        engines=tuple(x.strip() for x in engines.split(",") if x.strip()))
    console = stderr_console()
    load_start = list(os.getloadavg())
    report = run_catalog_backends_bench(spec, work, progress=lambda msg: console.print(f"[{time.strftime('%H:%M:%S')}] {msg}"))
    report["command"] = command_line(ctx)
    report["load_start"] = load_start
    report["environment"] = environment()
    for path in write_report(report, out, stem):
        console.print(f"wrote {path}")
