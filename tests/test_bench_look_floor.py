"""``lookserve bench look-floor`` on the tiny models: one real Triton, the three variants interleaved."""

from __future__ import annotations

import numpy as np
import pytest
from test_look_chain import (
    CROP,
    shop_records,
    street_photo,
    write_look_models,
)
from test_look_server import PHOTOS, _png
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.bench.load import stats_snapshot
from lookserve.bench.look_floor import GOAL_RATIO, OrtClient, markdown, measure
from lookserve.bench.look_server import ready_look
from lookserve.cli import app
from lookserve.client.catalog import TritonEmbedder, build_catalog
from lookserve.client.core import TritonClient

pytestmark = pytest.mark.triton

ROUNDS = 2


@pytest.fixture
def served(tmp_path, triton_factory):
    repo = tmp_path / "repo"
    write_look_models(repo)
    server = triton_factory(repo, models=["detector", "embedder"])
    shop = tmp_path / "shop"
    records = shop_records(shop, ["tops"] * 8 + ["bags"] * 6 + ["hats"] * 4, np.random.default_rng(5))
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as client:
        build_catalog(records, tmp_path / "catalog", TritonEmbedder(client), batch_size=6, model_repository=repo,
                      images_root=shop)
    ready_look(server, repo, tmp_path / "catalog")
    photos = []
    for seed, slots in enumerate(PHOTOS):
        photos.append(tmp_path / f"street-{seed}.png")
        photos[-1].write_bytes(_png(street_photo(slots, seed=seed)))
    return server, repo, tmp_path / "catalog", photos


def test_look_floor_report_puts_floor_below_chain_and_ratios_match_p50s_when_run_on_tiny_models(served) -> None:
    server, repo, catalog, photos = served
    models = (contracts.DETECTOR, contracts.EMBEDDER, contracts.LOOK)
    with TritonClient(server.grpc_url) as client:
        before = stats_snapshot(client, models)
        report = measure(server.grpc_url, repo, catalog, photos, rounds=ROUNDS)
        after = stats_snapshot(client, models)
    n = len(photos) * ROUNDS
    v, r, g = report["variants"], report["ratios"], report["goal"]
    assert {name: v[name]["photos"] for name in v} == {"floor_2t": n, "floor_1t": n, "chain": n, "look": n}
    best = report["floor"]
    assert best in ("floor_2t", "floor_1t")
    assert v[best]["latency"]["p50_ms"] == min(v["floor_2t"]["latency"]["p50_ms"], v["floor_1t"]["latency"]["p50_ms"])
    # the floor does the chain's work (same answers) without Triton: the detector answered the chain's
    # and look's photos (+1 warm-up each), none of the floor's
    assert set(report["answers_equal_floor"].values()) == {n} and len(report["answers_equal_floor"]) == 3
    assert report["answers_compared"] == n
    detector = after[contracts.DETECTOR]["success_count"] - before[contracts.DETECTOR]["success_count"]
    assert detector == 2 * (n + 1)
    assert after[contracts.LOOK]["success_count"] - before[contracts.LOOK]["success_count"] == n + 1
    for floor in ("floor_2t", "floor_1t"):
        assert v[floor]["triton"] == {} and v[floor]["mean_steps_ms"]["detect"] > 0
        assert v[floor]["mean_steps_ms"]["embed"] > 0 and v[floor]["mean_steps_ms"]["search"] > 0
    # Triton's statistics were framed per call: exactly one detector request per photo on both paths
    assert v["chain"]["triton"][contracts.DETECTOR]["requests_per_photo"] == 1
    assert v["look"]["triton"][contracts.LOOK]["requests_per_photo"] == 1
    assert v["look"]["triton"][contracts.DETECTOR]["requests_per_photo"] == 1
    # the figures: the floor is below both served paths, and the ratios are those of the p50s
    floor_p50 = v[best]["latency"]["p50_ms"]
    for name in ("chain", "look"):
        assert floor_p50 < v[name]["latency"]["p50_ms"]
        assert r[name]["p50_over_floor_p50"] == pytest.approx(v[name]["latency"]["p50_ms"] / floor_p50)
        assert r[name]["p99_over_floor_p99"] == pytest.approx(v[name]["latency"]["p99_ms"] / v[best]["latency"]["p99_ms"])
        assert r[name]["median_paired_ratio"] > 1
        split = report["gap"][name]
        assert split["gap_ms"] == pytest.approx(v[name]["latency"]["mean_ms"] - v[best]["latency"]["mean_ms"])
        assert split["queue_ms"] + split["compute_over_floor_ms"] + split["rest_ms"] == pytest.approx(split["gap_ms"])
        assert split["model_compute_ms"] > 0
    assert g["ratio"] == r["chain"]["p50_over_floor_p50"] and g["met"] == (g["ratio"] <= GOAL_RATIO)
    text = markdown(report)
    assert f"chain p50 is **{g['ratio']:.2f}×** the floor's (`{best}`)" in text
    # the in-process client answers as the served model does
    crops = np.random.default_rng(0).integers(0, 256, (3, CROP, CROP, 3), dtype=np.uint8)
    ort = OrtClient(repo, threads=2)
    with TritonClient(server.grpc_url) as client:
        want = client.infer(contracts.EMBEDDER, {"crops": crops}).outputs["embedding"]
        assert ort.model_metadata(contracts.EMBEDDER).inputs == client.model_metadata(contracts.EMBEDDER).inputs
    got = ort.infer(contracts.EMBEDDER, {"crops": crops}, version="1")
    assert got.model_version == "1"
    np.testing.assert_allclose(got.outputs["embedding"], want, atol=1e-5)




def test_bench_look_floor_is_mounted_when_lookserve_bench_is_asked_for_help() -> None:
    res = CliRunner().invoke(app, ["bench", "--help"])
    assert res.exit_code == 0 and "look-floor" in res.output
