"""lookserve bench catalog-update at a small N: the report's figures, goals and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve.bench.catalog_update import UpdateBenchSpec, run_catalog_update_bench
from lookserve.cli import app


def test_catalog_update_bench_reports_update_rebuild_and_filtered_figures_when_run_small(tmp_path: Path) -> None:
    spec = UpdateBenchSpec(n=3000, dim=16, queries=60, filtered_queries=30, build_threads=1)
    report = run_catalog_update_bench(spec, tmp_path / "work")
    u, rb = report["update"], report["full_rebuild"]
    assert (u["added"], u["removed"], u["photos_embedded"]) == (30, 30, 30)
    assert u["embedder_requests"] == 1 + 1 and rb["embedder_requests"] == 1 + -(-3000 // 32)
    assert u["category_after"]["deleted"] == 30 and u["category_after"]["count"] == 3030
    assert u["recall_before"] >= 0.99 and u["recall_after"] >= 0.99 and rb["recall"] >= 0.99
    assert [r["selectivity"] for r in report["filtered"]] == [0.5, 0.1, 0.01, 0.001]
    for row in report["filtered"]:
        kept = row["policy"]["kept"]
        assert abs(kept - row["selectivity"] * 3000) <= max(3, 0.1 * row["selectivity"] * 3000)
        assert row["exact"]["path"] == "exact" and row["hnsw_filter"]["path"] == "hnsw"
        assert row["exact"]["recall"] == 1.0 and row["policy"]["recall"] >= 0.99
    goals = report["goals"]
    assert goals["filtered_recall"]["met"] and goals["recall_unchanged"]["met"]
    baseline = min(rb["seconds"], report["full_build"]["seconds"])  # the faster of the two full builds
    assert goals["update_le_1_20_of_rebuild"]["speedup"] == pytest.approx(baseline / u["seconds"], rel=0.1)
    # both ways of tuning ef ran from the same version, interleaved, and the merged one is reported
    uf = report["update_full_tuning"]
    assert u["tuning"] == {"tops": "merged"} and uf["tuning"] == {"tops": "sampled"}
    assert len(u["runs"]) == len(uf["runs"]) == spec.repeats and uf["tuned_recall"] >= 0.99
    assert uf["merged_faster"] == pytest.approx(uf["seconds"] / u["seconds"], rel=0.1)


def test_bench_catalog_update_command_writes_json_and_markdown_with_its_command(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "catalog-update", "--n", "500", "--dim", "8", "--queries", "20",
                                 "--filtered-queries", "10", "--build-threads", "1", "--work", str(tmp_path / "w"),
                                 "--out", str(tmp_path / "out"), "--stem", "cu"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "cu.json").read_text())
    assert report["spec"]["n"] == 500 and report["environment"]["load_average_1_5_15"]
    md = (tmp_path / "out" / "cu.md").read_text()
    assert "catalog-update --n 500" in md and "| selectivity |" in md and not (tmp_path / "w").exists()
    assert "every row searched for ef's ground truth" in md and report["update_full_tuning"]["runs"]
