"""Load generator against real Triton: report schema, and the bench's counts against Triton's statistics."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.bench.load import (
    ClosedLoop,
    LoadSpec,
    Workload,
    compare,
    latency_summary,
    model_workload,
    read_report,
    run_load,
    write_load_report,
)
from lookserve.bench.variants import (
    embedder_variants,
    run_variants,
    synthetic_embedder,
    write_synthetic_repository,
    write_variant_repository,
)
from lookserve.cli import app
from lookserve.client.core import TritonClient
from lookserve.errors import ConfigError, InvalidInputError
from lookserve.modelconfig import ModelConfig
from tinymodels import projection_embedder, run_onnx, write_model

POINT_KEYS = {"level", "requests", "ok", "errors", "elapsed_s", "throughput_rps", "throughput_items_per_s", "latency",
              "latency_all", "service_latency", "triton", "breakdown", "agreement"}
LATENCY_KEYS = {"mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"}
STAGE_KEYS = {"requests", "failed", "inferences", "executions", "mean_batch", "batch_sizes", "versions", "server_ms",
              "queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms"}


@pytest.fixture
def embedder_server(tmp_path, triton_factory):
    repo = tmp_path / "repo"
    config = replace(contracts.embedder_config(), warmup=())
    write_model(repo, config, lambda p: projection_embedder(p, size=224, dim=128))
    return triton_factory(repo, models=["embedder"])


def _client(server):
    return TritonClient(server.grpc_url, timeout_s=10)


def _check_point(point: dict, model: str = "embedder") -> None:
    assert POINT_KEYS <= set(point)
    assert LATENCY_KEYS <= set(point["latency"]) and LATENCY_KEYS <= set(point["service_latency"])
    stats = point["triton"][model]
    assert STAGE_KEYS <= set(stats)
    assert point["errors"] == {} and point["ok"] == point["requests"] > 0
    # every request the bench sent, and only those, shows in Triton's statistics delta
    assert stats["requests"] == point["requests"] and stats["failed"] == 0
    assert point["agreement"]["counts_match"] is True
    assert stats["inferences"] == point["ok"]  # batch size 1 per request
    assert sum(int(size) * n for size, n in stats["batch_sizes"].items()) == stats["inferences"]
    assert sum(stats["batch_sizes"].values()) == stats["executions"]
    # Triton's time inside the server is part of what the client saw
    assert 0 < stats["server_ms"] <= point["service_latency"]["mean_ms"]
    # the split is Triton's own per-request stage times (one model request per bench request),
    # and client + network is what the client saw beyond Triton's request time
    b = point["breakdown"]
    compute = stats["compute_input_ms"] + stats["compute_infer_ms"] + stats["compute_output_ms"]
    assert b["compute_ms"] == pytest.approx(compute) and b["queue_ms"] == pytest.approx(stats["queue_ms"])
    assert b["client_network_ms"] == pytest.approx(point["service_latency"]["mean_ms"] - stats["server_ms"])
    assert b["client_network_ms"] > 0 and b["compute_ms"] > 0 and b["queue_ms"] >= 0
    assert b["queue_ms"] + b["compute_ms"] <= stats["server_ms"] * 1.001  # the stages lie inside the request
    assert point["latency"]["p50_ms"] <= point["latency"]["p99_ms"] <= point["latency"]["max_ms"]
    assert point["latency_all"] == point["latency"]  # no failures: every request is an answered one


@pytest.mark.triton
def test_closed_loop_counts_agree_with_triton_statistics_when_sweeping(embedder_server, tmp_path):
    spec = LoadSpec(mode="closed", levels=(1, 3), duration_s=1.5, max_requests=60, warmup_s=0.2)
    with _client(embedder_server) as client:
        workload = model_workload(client, "embedder", batch_size=1, pool=4)
        report = run_load(client, workload, spec, variant="test", progress=False)
    assert [p["level"] for p in report["points"]] == [1, 3]
    for point in report["points"]:
        _check_point(point)
        assert point["requests"] <= 60
    assert report["environment"]["models"] == {"embedder": {"versions": ["1"]}}
    assert report["workload"]["config"]["dynamic_batching"] is not None
    assert "synthetic" in report["workload"]["inputs"] or "lookserve.data" in report["workload"]["inputs"]
    paths = write_load_report(report, tmp_path / "out", "closed", command="test")
    assert read_report(paths[0])["points"][0]["requests"] == report["points"][0]["requests"]
    assert paths[2].stat().st_size > 0


@pytest.mark.triton
def test_open_loop_measures_from_intended_send_time_when_poisson(embedder_server):
    spec = LoadSpec(mode="poisson", levels=(40.0,), duration_s=1.0, max_requests=30, warmup_s=0.2, seed=3)
    with _client(embedder_server) as client:
        report = run_load(client, model_workload(client, "embedder", pool=4), spec, progress=False)
    point = report["points"][0]
    _check_point(point)
    assert point["requests"] <= 30
    # latency from the intended send time includes any wait to be sent: never below the service time
    assert point["latency"]["mean_ms"] >= point["service_latency"]["mean_ms"] - 1e-6


@pytest.mark.triton
def test_model_workload_sends_photos_not_zeros_when_image_input(embedder_server):
    with _client(embedder_server) as client:
        workload = model_workload(client, "embedder", batch_size=2, pool=3)
        with pytest.raises(ConfigError, match="max_batch_size"):
            model_workload(client, "embedder", batch_size=64)
        result = workload.call(0)
    assert result.outputs["embedding"].shape == (2, 128)
    assert np.isfinite(result.outputs["embedding"]).all()


@pytest.mark.triton
def test_cli_bench_model_writes_reports_and_compare_gives_ratios_when_two_runs(embedder_server, tmp_path):
    runner = CliRunner()
    out = tmp_path / "results"
    for stem in ("a", "b"):
        result = runner.invoke(app, ["bench", "model", "embedder", "--url", embedder_server.grpc_url, "--levels", "1,2",
                                     "--duration", "0.7", "--max-requests", "25", "--warmup", "0.1", "--out", str(out),
                                     "--stem", stem])
        assert result.exit_code == 0, result.output
        assert {p.name for p in out.glob(f"{stem}.*")} == {f"{stem}.json", f"{stem}.md", f"{stem}.png"}
    a, b = read_report(out / "a.json"), read_report(out / "b.json")
    for point in a["points"] + b["points"]:
        _check_point(point)
    assert a["command"].startswith("lookserve bench model embedder")
    c = compare(a, b)
    assert [r["level"] for r in c["rows"]] == [1, 2]
    row = c["rows"][0]["throughput_rps"]
    assert row["ratio"] == pytest.approx(row["b"] / row["a"])
    result = runner.invoke(app, ["bench", "compare", str(out / "a.json"), str(out / "b.json"), "--out", str(out / "ab")])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "ab.json").read_text())["rows"][0]["level"] == 1


def test_compare_refuses_when_not_a_load_report(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"kind": "search"}))
    with pytest.raises(InvalidInputError, match="not a lookserve load report"):
        read_report(path)
    with pytest.raises(InvalidInputError, match="not JSON"):
        (tmp_path / "y.json").write_text("{")
        read_report(tmp_path / "y.json")


def test_load_spec_rejects_when_bad_levels():
    with pytest.raises(ConfigError, match="integers"):
        LoadSpec(mode="closed", levels=(1.5,))
    with pytest.raises(ConfigError, match="mode"):
        LoadSpec(mode="burst")


def test_variants_are_typed_replacements_of_the_contract_when_written(tmp_path):
    variants = embedder_variants()
    base = contracts.embedder_config()
    assert variants["batching_on"].config == base
    assert variants["batching_off"].config == replace(base, dynamic_batching=None)
    assert variants["instances_2"].config.instance_groups[0].count == 2
    model = synthetic_embedder()
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    outs = {}
    for name in ("batching_on", "fp32_input"):
        repo = write_variant_repository(variants[name], model, tmp_path / name)
        config = ModelConfig.read(repo / "embedder" / "config.pbtxt")
        assert config == variants[name].config
        feed = pixels.astype(config.inputs[0].np_dtype)
        outs[name] = run_onnx(repo / "embedder" / "1" / "model.onnx", {"crops": feed})[0]
    np.testing.assert_allclose(outs["fp32_input"], outs["batching_on"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(outs["batching_on"], axis=1), 1.0, atol=1e-5)


def test_synthetic_repository_honours_contracts_when_written(tmp_path):
    repo = write_synthetic_repository(tmp_path / "repo")
    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    for config in (contracts.embedder_config(), contracts.view_classifier_config()):
        assert ModelConfig.read(repo / config.name / "config.pbtxt") == config
        outs = run_onnx(repo / config.name / "1" / "model.onnx", {config.inputs[0].name: pixels})
        assert [o.shape[1:] for o in outs] == [t.dims for t in config.outputs]
        assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.triton
def test_run_variants_interleaves_levels_and_counts_agree_when_two_variants():
    spec = LoadSpec(mode="closed", levels=(1, 2), duration_s=0.5, max_requests=15, warmup_s=0.1)
    reports = run_variants(["batching_on", "batching_off"], spec, ready_timeout_s=120.0)
    assert list(reports) == ["batching_on", "batching_off"]
    for name, report in reports.items():
        assert report["variant"] == name and [p["level"] for p in report["points"]] == [1, 2]
        for point in report["points"]:
            _check_point(point)
    assert reports["batching_on"]["workload"]["config"]["dynamic_batching"] is not None
    assert reports["batching_off"]["workload"]["config"]["dynamic_batching"] is None
    assert all(p["triton"]["embedder"]["mean_batch"] == 1.0 for p in reports["batching_off"]["points"])
    c = compare(reports["batching_on"], reports["batching_off"])
    assert [r["level"] for r in c["rows"]] == [1, 2]


@pytest.mark.triton
def test_latency_all_shows_slow_failures_that_success_only_percentiles_drop_when_some_requests_fail(embedder_server,
                                                                                                  tmp_path):
    with _client(embedder_server) as client:
        good = model_workload(client, "embedder", pool=2)

        def call(i: int):
            if i % 4 == 3:  # a request that fails after 0.3 s (as a deadline would)
                time.sleep(0.3)
                raise errors.DeadlineExceeded("simulated deadline")
            return good.call(i)

        workload = Workload(name="embedder", kind="model", models=("embedder",), call=call)
        report = run_load(client, workload, LoadSpec(mode="closed", levels=(1,), duration_s=1.5, max_requests=12,
                                                     warmup_s=0.0), progress=False)
    point = report["points"][0]
    assert point["requests"] == 12 and point["errors"] == {"DeadlineExceeded": 3} and point["ok"] == 9
    assert point["latency"]["max_ms"] < 300 <= point["latency_all"]["p99_ms"]
    assert "p99 all ms" in write_load_report(report, tmp_path / "out", "f")[1].read_text()
    # the three failures never reached Triton: the bench's count and Triton's disagree, and it says so
    assert point["agreement"]["counts_match"] is False and point["agreement"]["triton_requests"] == {"embedder": 9}


@pytest.mark.triton
def test_cli_bench_model_names_the_served_models_at_once_when_the_name_is_unknown(embedder_server, tmp_path):
    start = time.monotonic()
    result = CliRunner().invoke(app, ["bench", "model", "embeder", "-u", embedder_server.grpc_url, "--levels", "1",
                                      "--duration", "0.2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "'embeder' is not served" in result.output and "served models: embedder" in result.output
    assert time.monotonic() - start < 10  # not the 60 s readiness wait
    assert not (tmp_path / "out").exists()


def test_closed_loop_counts_untyped_errors_or_raises_them_and_stops_at_max_requests_when_told():
    def call(worker: int, i: int):
        if i % 3 == 1:
            raise errors.ServerUnavailable("down")
        if i % 3 == 2:
            raise KeyError("a bug")
        return i

    load = ClosedLoop(call, 2, max_requests=30, max_s=10, untyped="count").start()
    outcomes = load.wait()
    acc = load.accounting(wrong=lambda o: o.value == 0)
    assert len(outcomes) == 30 == acc["sent"] and acc["accounted"]
    assert (acc["ok"], acc["wrong"], acc["failed_typed"], acc["untyped"]) == (9, 1, 10, 10)
    assert sorted(o.index for o in outcomes) == list(range(30))
    with pytest.raises(KeyError):
        ClosedLoop(call, 2, max_requests=30, max_s=10, untyped="raise").start().wait()
    bounded = ClosedLoop(lambda w, i: time.sleep(0.01), 2, max_s=0.2).start().wait()
    assert 0 < len(bounded) < 60


def test_latency_summary_is_empty_when_nothing_answered():
    assert latency_summary([]) == {"mean_ms": None, "p50_ms": None, "p90_ms": None, "p95_ms": None, "p99_ms": None,
                                   "max_ms": None}
    assert latency_summary([0.001, 0.003])["max_ms"] == pytest.approx(3.0)
