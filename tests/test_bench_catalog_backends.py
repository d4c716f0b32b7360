"""lookserve bench catalog-backends at a tiny size: every figure of the report is computed, for
hnswlib always and for Milvus against the real embedded server (marker ``milvus``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve.bench.catalog_backends import BUCKETS, BackendsSpec, run_catalog_backends_bench
from lookserve.cli import app

TINY = {"n": 3000, "dim": 16, "queries": 60, "filtered_queries": 30, "duration_s": 1.0, "block": 30,
        "floor_calls": 20, "strong_queries": 5, "exact_queries": 10, "threads": 1, "concurrency": 2}


def _check_engine(result: dict, spec: BackendsSpec) -> None:
    single, filtered, concurrent = result["single"], result["filtered"], result["concurrent"]
    assert single["queries"] == spec.queries and filtered["queries"] == spec.filtered_queries
    assert 0.9 <= single["recall"] <= 1.0 and 0.9 <= filtered["recall"] <= 1.0
    assert single["qps"] > 0 and 0 < single["p50_ms"] <= single["p99_ms"]
    assert abs(filtered["kept"] - spec.n / BUCKETS) < 0.3 * spec.n / BUCKETS
    assert concurrent["threads"] == spec.concurrency and concurrent["requests"] > spec.concurrency
    assert concurrent["qps"] == pytest.approx(concurrent["requests"] / concurrent["seconds"])
    assert result["build"]["seconds"] > 0 and isinstance(result["memory"]["rss_delta_bytes"], int)


def test_bench_catalog_backends_writes_hnswlib_figures_and_its_command_when_run_tiny(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "catalog-backends", "--engines", "hnswlib", "--n", "3000", "--dim", "16",
                                 "--queries", "60", "--filtered-queries", "30", "--duration", "1",
                                 "--build-threads", "1", "--concurrency", "2", "--block", "25", "--out", str(tmp_path),
                                 "--stem", "cb"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "cb.json").read_text())
    spec = BackendsSpec(**{**report["spec"], "engines": tuple(report["spec"]["engines"])})
    assert list(report["engines"]) == ["hnswlib"] and "ratios_hnswlib_over_milvus" not in report
    assert report["engines"]["hnswlib"]["memory"]["index_bytes_estimate"] > 3000 * 16 * 4
    _check_engine(report["engines"]["hnswlib"], spec)
    assert report["engines"]["hnswlib"]["filtered"]["path"] == "exact"  # 5 % of 3000: the catalog's exact path
    assert report["exact"]["recall"] == 1.0 and report["exact"]["queries"] == spec.exact_queries
    md = (tmp_path / "cb.md").read_text()
    assert "catalog-backends --n 3000" in md and "| single client q/s |" in md
    assert (tmp_path / "cb.png").stat().st_size > 0


@pytest.mark.milvus
@pytest.mark.slow  # ~30 s: the embedded server's start (~9 s) and stop (~6 s) are most of it
def test_catalog_backends_bench_measures_milvus_beside_hnswlib_when_run_against_the_embedded_server(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus", reason="needs the [milvus] extra")
    pytest.importorskip("milvus", reason="needs the [milvus] extra (the embedded server)")
    spec = BackendsSpec(**TINY)
    report = run_catalog_backends_bench(spec, tmp_path / "work")
    h, m = report["engines"]["hnswlib"], report["engines"]["milvus"]
    for result in (h, m):
        _check_engine(result, spec)
    assert m["filtered"]["path"] == "milvus expression"
    b = m["build"]
    assert b["seconds"] == pytest.approx(b["insert_s"] + b["flush_s"] + b["index_s"] + b["load_s"])
    assert m["memory"]["rss_loaded_bytes"] > m["memory"]["rss_empty_bytes"] > 0
    assert m["floor_rpc"]["calls"] == spec.floor_calls and m["floor_rpc"]["p50_ms"] > 0
    assert m["single_strong"]["queries"] == spec.strong_queries and m["single_strong"]["recall"] >= 0.9
    ratios = report["ratios_hnswlib_over_milvus"]
    assert ratios["single_qps"] == pytest.approx(h["single"]["qps"] / m["single"]["qps"])
    assert ratios["build_s"] == pytest.approx(b["seconds"] / h["build"]["seconds"])
    assert not (tmp_path / "work" / "milvus" / "lookserve-milvus.json").exists(), "the server was stopped"
