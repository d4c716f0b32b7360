"""Search bench: recall arithmetic on hand-made cases, exact top-k against a full sort, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lookserve.bench.search import (
    SearchSpec,
    bench_hnswlib,
    clustered_vectors,
    exact_single,
    exact_topk,
    recall_at_k,
    run_search_bench,
    write_search_report,
)
from lookserve.cli import app
from lookserve.errors import ConfigError


def test_recall_at_k_counts_overlap_when_hand_made_case():
    found = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    truth = np.array([[3, 2, 10], [4, 5, 6], [0, 1, 2]])
    # query 0: {2, 3} of 3; query 1: {4, 5} of 3 (-1 = not found); query 2: none
    assert recall_at_k(found, truth, 3) == pytest.approx(4 / 9)
    assert recall_at_k(found[:, :1], truth[:, :1], 1) == pytest.approx(1 / 3)  # only 4 == 4


def test_recall_at_k_refuses_when_truth_shorter_than_k():
    with pytest.raises(ConfigError, match="recall@5"):
        recall_at_k(np.zeros((2, 5), int), np.zeros((2, 3), int), 5)


def test_exact_topk_matches_full_sort_when_chunked(rng):
    base = rng.normal(size=(1000, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    expected = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    got = exact_topk(base, queries, 10, chunk=128)  # many chunks, merged
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(exact_single(base, queries[3], 10), expected[3])


def test_clustered_vectors_are_normalised_and_seeded_when_generated():
    a = clustered_vectors(500, 32, clusters=8, latent_dim=4, seed=3)
    b = clustered_vectors(500, 32, clusters=8, latent_dim=4, seed=3)
    q = clustered_vectors(50, 32, clusters=8, latent_dim=4, seed=3, stream=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.isin(q.view([("", q.dtype)] * 32), a.view([("", a.dtype)] * 32)).any()  # queries are held out


def test_search_spec_rejects_when_k_exceeds_n():
    with pytest.raises(ConfigError, match="k must be"):
        SearchSpec(n=5, k=10)


def test_run_search_bench_reaches_high_recall_when_tiny_n(tmp_path):
    spec = SearchSpec(n=3000, dim=32, queries=40, k=10, clusters=16, latent_dim=8, efs=(10, 200), threads=1,
                      exact_single_queries=10, m=12, ef_construction=100)
    report = run_search_bench(spec)
    assert [e["engine"] for e in report["engines"]] == ["hnswlib", "faiss"]
    for engine in report["engines"]:
        assert [p["ef"] for p in engine["points"]] == [10, 200]
        assert engine["points"][1]["recall"] >= 0.95
        assert engine["points"][1]["recall"] >= engine["points"][0]["recall"] - 0.02
        assert engine["build_s"] > 0 and all(p["single_qps"] > 0 for p in engine["points"])
    assert set(report["goal"]) >= {"hnswlib", "faiss", "met", "target_recall"}
    paths = write_search_report(report, tmp_path, stem="tiny", command="test")
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert json.loads(paths[0].read_text())["spec"]["n"] == 3000


def test_bench_hnswlib_recall_is_measured_against_the_given_truth_when_tiny_n():
    spec = SearchSpec(n=2000, dim=16, queries=30, k=10, clusters=8, latent_dim=4, efs=(10, 200), threads=1,
                      exact_single_queries=5, m=12, ef_construction=100)
    base = clustered_vectors(spec.n, spec.dim, clusters=8, latent_dim=4, seed=0)
    queries = clustered_vectors(spec.queries, spec.dim, clusters=8, latent_dim=4, seed=0, stream=1)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]  # by full sort, not by the bench's exact search
    points = bench_hnswlib(spec, base, queries, truth).points
    assert points[1]["recall"] >= 0.95
    # against the truth of other queries the same answers score near zero: the figure is a measurement
    wrong = bench_hnswlib(spec, base, queries, np.roll(truth, 1, axis=0)).points
    assert wrong[1]["recall"] < 0.5


def test_cli_bench_search_writes_to_runs_bench_with_readable_numbers_and_explains_the_goal_when_small_n(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "search", "--n", "3000", "--dim", "16", "--queries", "20", "--efs", "10,40",
                                      "--engines", "hnswlib", "--clusters", "8", "--exact-single-queries", "5",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "runs" / "bench").iterdir()} == {"search.json", "search.md", "search.png"}
    assert not (tmp_path / "bench").exists()
    text = (tmp_path / "runs" / "bench" / "search.md").read_text()
    assert "e+" not in text and "e+" not in result.output
    assert "The goal is stated for N = 1,000,000" in text
    assert "expect" in result.output
