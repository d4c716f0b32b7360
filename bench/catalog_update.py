"""``lookserve bench catalog-update``: an incremental catalog update vs a full rebuild, and
filtered search at several selectivities, on the search bench's synthetic vectors.

One category of ``n`` products (one photo each, vectors from
:func:`lookserve.bench.search.clustered_vectors`), each with a ``rank`` attribute (a random
permutation), so ``rank < s × total`` keeps the fraction ``s``. Steps, each timed:

1. full build (:func:`~lookserve.client.catalog.write_catalog`) → recall@K of the served search
   against exact search;
2. update: add ``change`` × n new products and remove ``change`` × n (below 10 % the added
   rows' vectors go to a delta file beside the linked base; see ``DELTA_FRACTION``)
   (:func:`~lookserve.client.catalog.update_catalog` with pre-computed vectors) → recall@K;
   ``repeats`` times each way, interleaved, from the same built version: with ef's ground truth
   merged from the stored one (the default) and with every row searched again
   (``incremental_tuning=False``, how updates tuned before), so their ratio is from one run;
3. the full rebuild of the same updated product set, the baseline of (2);
4. filtered search per selectivity, three ways — the catalog's policy, hnswlib's filter alone,
   exact search over the filtered photos alone — QPS one query at a time and recall@K against
   exact filtered search; these figures are what :class:`~lookserve.client.catalog.FilteredSearch`'s
   threshold is chosen from.

Embedding is outside every timing (the vectors are synthetic): the embedder requests are those
each path would send at ``batch_size`` (one probe + one per batch; the count itself is checked
against Triton's statistics in ``tests/test_catalog_update.py``), and a real rebuild would also
embed every photo again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from lookserve.bench.report import (
    atomic_write_json,
    atomic_write_text,
    command_line,
    environment,
    markdown_table,
)
from lookserve.bench.search import clustered_vectors, exact_topk, recall_at_k
from lookserve.client.catalog import (
    Catalog,
    EmbedderInfo,
    FilteredSearch,
    IndexParams,
    PhotoRecord,
    set_current,
    update_catalog,
    write_catalog,
)
from lookserve.cliutil import handle_errors, stderr_console
from lookserve.errors import ConfigError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

EMB = EmbedderInfo("embedder", "1")
GOAL_SPEEDUP = 20.0  # an update in ≤ 1/20 of a full rebuild's time
GOAL_RECALL_DELTA = 0.002
GOAL_FILTERED_RECALL = 0.99


@dataclass(frozen=True)
class UpdateBenchSpec:
    n: int = 1_000_000
    dim: int = 128
    change: float = 0.01  # fraction of n added, and fraction removed
    queries: int = 300
    filtered_queries: int = 200
    forced_queries: int = 50  # for the two forced paths (the slow side of each is slow)
    k: int = 10
    selectivities: tuple[float, ...] = (0.5, 0.1, 0.01, 0.001)
    seed: int = 0
    m: int = 16
    ef_construction: int = 100
    build_threads: int = 2
    batch_size: int = 32  # of the embedder requests counted
    repeats: int = 2  # updates each way (merged / full exact tuning), interleaved

    def __post_init__(self) -> None:
        if self.n < 100 or self.dim < 1 or self.queries < 1 or self.filtered_queries < 1 or self.repeats < 1:
            raise ConfigError(f"n ≥ 100, dim, queries, filtered_queries and repeats ≥ 1, got {self}")
        if not 0 < self.change < 0.5:
            raise ConfigError(f"change must be in (0, 0.5), got {self.change}")
        if not self.selectivities or any(not 0 < s <= 1 for s in self.selectivities):
            raise ConfigError(f"selectivities must be in (0, 1], got {self.selectivities}")

    @property
    def params(self) -> IndexParams:
        return IndexParams(M=self.m, ef_construction=self.ef_construction, k=self.k, build_threads=self.build_threads,
                           seed=self.seed)


def _requests(photos: int, batch: int) -> int:
    return 1 + -(-photos // batch) if photos else 0


def _recall(catalog: Catalog, vectors_live: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int) -> float:
    labels, _ = catalog.search_labels("tops", queries, k)
    truth = live[exact_topk(vectors_live, queries, k)]
    return recall_at_k(labels, truth, k)


def _filtered(catalog: Catalog, queries: np.ndarray, k: int, text: str) -> dict[str, Any]:
    """QPS one query at a time and recall@k of the catalog's filtered search, against exact
    search over the photos the filter keeps."""
    mask = catalog.allowed("tops", text)  # computes and caches the mask: outside the timing
    kept = np.flatnonzero(mask)
    vectors = np.asarray(catalog.vectors_mapped("tops"))
    truth = kept[exact_topk(vectors[kept], queries, min(k, len(kept)))]
    catalog.search_labels_filtered("tops", queries[:1], k, text)  # warm
    before = dict(catalog.filtered_paths)
    found = np.full((len(queries), k), -1, np.int64)
    t0 = time.perf_counter()
    for i in range(len(queries)):
        labels, _ = catalog.search_labels_filtered("tops", queries[i : i + 1], k, text)
        found[i, : labels.shape[1]] = labels[0, :k]
    seconds = time.perf_counter() - t0
    assert mask[found[found >= 0]].all(), "a filtered search returned a photo the filter rejects"
    paths = {p: catalog.filtered_paths[p] - before[p] for p in before}
    return {"kept": int(len(kept)), "qps": round(len(queries) / seconds, 1), "ms_per_query": round(seconds / len(queries) * 1e3, 3),
            "recall": round(recall_at_k(found, truth, min(k, len(kept))), 4), "path": max(paths, key=paths.get)}


def run_catalog_update_bench(spec: UpdateBenchSpec, work_dir: Path, progress=None) -> dict[str, Any]:
    say = progress or (lambda msg: log.info("%s", msg))
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    n_change = max(1, int(round(spec.n * spec.change)))
    total_ids = spec.n + n_change
    rng = np.random.default_rng(spec.seed)
    rank = rng.permutation(total_ids)
    base = clustered_vectors(spec.n, spec.dim, seed=spec.seed, stream=0)
    queries = clustered_vectors(spec.queries, spec.dim, seed=spec.seed, stream=1)
    added = clustered_vectors(n_change, spec.dim, seed=spec.seed, stream=2)

    def record(pid: int) -> PhotoRecord:
        return PhotoRecord(pid, "tops", f"{pid}.jpg", None, "", {"rank": int(rank[pid])})

    records = [record(i) for i in range(spec.n)]
    root = work_dir / "catalogs"
    say(f"full build of {spec.n:,} vectors")
    t0 = time.perf_counter()
    write_catalog(root / "catalog-v1", records, base, EMB, spec.params)
    build_s = time.perf_counter() - t0
    set_current(root, "catalog-v1")
    catalog = Catalog.open(root)
    recall_before = _recall(catalog, base, np.arange(spec.n), queries, spec.k)
    info_before = asdict(catalog.manifest.categories["tops"])

    removed = np.sort(rng.choice(spec.n, n_change, replace=False))
    new_records = [record(spec.n + i) for i in range(n_change)]
    runs: dict[str, list[float]] = {"full": [], "merged": []}
    results = {}
    # each update from the same built version, in the order full, merged, merged, full, … (neither
    # way always second, when the page cache and write-back of the one before weigh on it); every
    # version is kept until the last merged one is made current again
    for rep in range(spec.repeats):
        for way in ("full", "merged") if rep % 2 == 0 else ("merged", "full"):
            set_current(root, "catalog-v1")
            say(f"update {rep + 1}/{spec.repeats} ({way} ground truth): add {n_change:,}, remove {n_change:,}")
            t0 = time.perf_counter()
            results[way] = update_catalog(root, add=new_records, remove=removed.tolist(), new_vectors=added,
                                          keep=2 * spec.repeats, incremental_tuning=way == "merged")
            runs[way].append(time.perf_counter() - t0)
    result, full_result = results["merged"], results["full"]
    set_current(root, result.path.name)
    update_s, full_s = float(np.median(runs["merged"])), float(np.median(runs["full"]))
    updated = Catalog.open(root)
    live = updated.live_labels("tops")
    live_vectors = np.asarray(updated.vectors_mapped("tops"))[live]
    recall_after = _recall(updated, live_vectors, live, queries, spec.k)
    info_after = asdict(updated.manifest.categories["tops"])

    keep = np.setdiff1d(np.arange(spec.n), removed)
    final_records = [records[i] for i in keep] + new_records
    final_vectors = np.concatenate([base[keep], added])
    say(f"full rebuild of the updated {len(final_records):,} vectors (baseline)")
    t0 = time.perf_counter()
    write_catalog(work_dir / "rebuild", final_records, final_vectors, EMB, spec.params)
    rebuild_s = time.perf_counter() - t0
    rebuilt = Catalog.open(work_dir / "rebuild")
    recall_rebuilt = _recall(rebuilt, final_vectors, np.arange(len(final_vectors)), queries, spec.k)

    fq = queries[: spec.filtered_queries]
    policy = updated.filtered
    ways = {"policy": updated, "hnsw_filter": updated.with_filtered_search(FilteredSearch(exact_rows=0, exact_fraction=0.0)),
            "exact": updated.with_filtered_search(FilteredSearch(exact_rows=10**12))}
    filtered = []
    for s in spec.selectivities:
        text = f"rank < {int(round(s * total_ids))}"
        row: dict[str, Any] = {"selectivity": s, "filter": text}
        for name, cat in ways.items():
            say(f"filtered search, selectivity {s:g}, {name}")
            row[name] = _filtered(cat, fq if name == "policy" else fq[: spec.forced_queries], spec.k, text)
        row["kept_fraction"] = round(row["policy"]["kept"] / len(live), 6)
        filtered.append(row)

    # the baseline: the faster of the two full builds of (nearly) the same size, the build before the
    # updates and the rebuild after them, since the machine's load may change between them
    baseline_s = min(build_s, rebuild_s)
    speedup = baseline_s / update_s
    full_info = full_result.manifest.categories["tops"]
    # seconds to 0.1 ms: the ratios below stay what their seconds give even for a small update
    report = {
        "bench": "catalog-update",
        "spec": {**asdict(spec), "selectivities": list(spec.selectivities)},
        "policy": asdict(policy),
        "update": {
            "seconds": round(update_s, 4), "phases": result.seconds, "added": n_change, "removed": n_change,
            "embedder_requests": _requests(result.embedded_photos, spec.batch_size), "photos_embedded": result.embedded_photos,
            "rebuilt_categories": list(result.rebuilt), "recall_before": round(recall_before, 4),
            "recall_after": round(recall_after, 4), "category_before": info_before, "category_after": info_after,
            "tuning": dict(result.tuning), "runs": [round(x, 4) for x in runs["merged"]],
        },
        "update_full_tuning": {
            "seconds": round(full_s, 4), "runs": [round(x, 4) for x in runs["full"]], "phases": full_result.seconds,
            "tuning": dict(full_result.tuning), "ef": full_info.ef, "tuned_recall": full_info.recall_at_k,
            "speedup": round(baseline_s / full_s, 1), "merged_faster": round(full_s / update_s, 2),
        },
        "full_build": {"seconds": round(build_s, 4), "photos": spec.n},
        "full_rebuild": {"seconds": round(rebuild_s, 4), "photos": len(final_records),
                         "embedder_requests": _requests(len(final_records), spec.batch_size),
                         "recall": round(recall_rebuilt, 4)},
        "filtered": filtered,
        "goals": {
            "update_le_1_20_of_rebuild": {"speedup": round(speedup, 1), "goal": GOAL_SPEEDUP, "met": speedup >= GOAL_SPEEDUP,
                                          "baseline_seconds": round(baseline_s, 4),
                                          "vs_rebuild": round(rebuild_s / update_s, 1),
                                          "vs_build": round(build_s / update_s, 1)},
            "recall_unchanged": {"delta": round(recall_after - recall_before, 4), "goal": GOAL_RECALL_DELTA,
                                 "met": abs(recall_after - recall_before) <= GOAL_RECALL_DELTA},
            "recall_not_degraded": {"delta": round(recall_after - recall_before, 4), "goal": -GOAL_RECALL_DELTA,
                                    "met": recall_after - recall_before >= -GOAL_RECALL_DELTA},
            "filtered_recall": {"min": min(r["policy"]["recall"] for r in filtered), "goal": GOAL_FILTERED_RECALL,
                                "met": all(r["policy"]["recall"] >= GOAL_FILTERED_RECALL for r in filtered)},
        },
    }
    return report


def markdown(report: dict[str, Any]) -> str:
    s, u, fb, rb, env = report["spec"], report["update"], report["full_build"], report["full_rebuild"], report["environment"]
    uf = report["update_full_tuning"]
    lines = [
        f"# Catalog update vs full rebuild, and filtered search (N = {s['n']:,}, dim {s['dim']})",
        "",
        f"Command: `{report.get('command', '')}`  ",
        f"Machine: {env.get('host_cpu')}, {env.get('cpu_count')} cores; load average (1/5/15 min) at the start "
        f"{report.get('load_start')}, at the end {env.get('load_average_1_5_15')}; niceness {report.get('niceness')}, with "
        "other work on the machine, so absolute times are noisy; the update/rebuild ratio is from one run.",
        "",
        f"One category of {s['n']:,} synthetic vectors ({s['dim']}-d, the search bench's clustered mixture), HNSW "
        f"M={s['m']}, ef_construction={s['ef_construction']}, {s['build_threads']} build threads, ef tuned to "
        f"recall@{s['k']} ≥ 0.99. Embedding is outside every timing; requests are those each path sends at batch "
        f"{s['batch_size']} (1 probe + 1 per batch).",
        "",
        markdown_table(
            ["", "wall time (s)", "embedder requests", f"recall@{s['k']}"],
            [
                ["full build (before)", fb["seconds"], "-", u["recall_before"]],
                [f"update: +{u['added']:,} / -{u['removed']:,} (ef's ground truth merged)", u["seconds"],
                 u["embedder_requests"], u["recall_after"]],
                ["the same update, every row searched for ef's ground truth", uf["seconds"], u["embedder_requests"], "-"],
                ["full rebuild of the same set", rb["seconds"], rb["embedder_requests"], rb["recall"]],
            ],
        ),
        "",
        f"Update phases (s): {u['phases']}; index rebuilt from stored vectors: {u['rebuilt_categories'] or 'no'}; "
        f"ef {u['category_before']['ef']} → {u['category_after']['ef']}, deleted labels {u['category_after']['deleted']}.",
        "",
        f"Each way {s['repeats']}× from the same built version, interleaved (full, merged, merged, full, …; the "
        f"median is shown): merged {u['runs']} s (ground truth {u['tuning']}), full {uf['runs']} s (ground truth "
        f"{uf['tuning']}, ef {uf['ef']} at tuned recall {uf['tuned_recall']}): merging is {uf['merged_faster']}× "
        f"faster; the full-tuning update is {uf['speedup']}× faster than the baseline.",
        "",
        f"Baseline: the faster of the full build before the updates ({fb['seconds']} s) and the full rebuild of the "
        f"updated set after them ({rb['seconds']} s), both of ~{s['n']:,} vectors, as the load may change between them: "
        f"the merged update is {report['goals']['update_le_1_20_of_rebuild']['vs_build']}× faster than the build, "
        f"{report['goals']['update_le_1_20_of_rebuild']['vs_rebuild']}× than the rebuild.",
        "",
        f"## Filtered search (one query at a time, 1 thread; {s['filtered_queries']} queries for the policy, "
        f"{s['forced_queries']} for each forced path)",
        "",
        f"Policy: exact search over the kept photos when they are ≤ max({report['policy']['exact_rows']}, "
        f"{report['policy']['exact_fraction']} × photos), else hnswlib `knn_query(filter=...)`.",
        "",
        markdown_table(
            ["selectivity", "kept", "policy path", "policy QPS", "policy recall", "hnsw-filter QPS", "hnsw-filter recall",
             "exact QPS", "exact recall"],
            [[r["selectivity"], r["policy"]["kept"], r["policy"]["path"], r["policy"]["qps"], r["policy"]["recall"],
              r["hnsw_filter"]["qps"], r["hnsw_filter"]["recall"], r["exact"]["qps"], r["exact"]["recall"]]
             for r in report["filtered"]],
        ),
        "",
        "## Goals",
        "",
        markdown_table(["goal", "measured", "met"], [
            ["update ≤ 1/20 of a full rebuild (the faster full build)",
             f"{report['goals']['update_le_1_20_of_rebuild']['speedup']}× faster",
             report["goals"]["update_le_1_20_of_rebuild"]["met"]],
            [f"recall@{s['k']} unchanged (±0.002)", f"{report['goals']['recall_unchanged']['delta']:+.4f}",
             report["goals"]["recall_unchanged"]["met"]],
            [f"recall@{s['k']} not below the build's − 0.002", f"{report['goals']['recall_not_degraded']['delta']:+.4f}",
             report["goals"]["recall_not_degraded"]["met"]],
            [f"filtered recall@{s['k']} ≥ 0.99 at every selectivity", report["goals"]["filtered_recall"]["min"],
             report["goals"]["filtered_recall"]["met"]],
        ]),
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    return [atomic_write_json(out_dir / f"{stem}.json", report), atomic_write_text(out_dir / f"{stem}.md", markdown(report))]


@app.command("catalog-update")
@handle_errors
def catalog_update_bench(
    ctx: typer.Context,
    n: int = typer.Option(1_000_000, "--n", min=100, help="Vectors in the catalog (one category)."),
    dim: int = typer.Option(128, "--dim", min=1),
    change: float = typer.Option(0.01, "--change", help="Fraction of n added, and fraction removed."),
    queries: int = typer.Option(300, "--queries", min=1),
    filtered_queries: int = typer.Option(200, "--filtered-queries", min=1, help="Queries per filtered measurement."),
    forced_queries: int = typer.Option(50, "--forced-queries", min=1,
                                       help="Queries per measurement of each forced path (hnsw filter alone, exact alone)."),
    k: int = typer.Option(10, "--k", min=1),
    threads: int = typer.Option(2, "--build-threads", min=1),
    seed: int = typer.Option(0, "--seed"),
    repeats: int = typer.Option(2, "--repeats", min=1,
                                help="Updates each way (merged / full exact ground truth), interleaved; medians reported."),
    work: Path = typer.Option(Path("runs/bench/catalog_update"), "--work", help="Scratch folder (replaced)."),
    out: Path = typer.Option(Path("bench/results"), "--out", help="Folder for <stem>.json and <stem>.md."),
    stem: str = typer.Option("catalog_update", "--stem"),
) -> None:
    """An incremental catalog update (add and remove 1 %) vs a full rebuild, and filtered search
    QPS and recall at 50 %, 10 %, 1 % and 0.1 % selectivity."""
    spec = UpdateBenchSpec(n=n, dim=dim, change=change, queries=queries, filtered_queries=filtered_queries,
                           forced_queries=forced_queries, k=k,
                           build_threads=threads, seed=seed, repeats=repeats)
    console = stderr_console()
    load_start = list(os.getloadavg())
    report = run_catalog_update_bench(spec, work, progress=lambda msg: console.print(f"[{time.strftime('%H:%M:%S')}] {msg}"))
    report["command"] = command_line(ctx)
    report["load_start"] = load_start
    report["niceness"] = os.nice(0)
    report["environment"] = environment()
    for path in write_report(report, out, stem):
        console.print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
