"""The swap bench's figures and outputs, on seeded synthetic samples (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from lookserve.bench.swap import Sample, markdown, windows_report, write_report


def _samples(seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate(np.arange(0.0, 30.0, 0.1)):
        during = 10 <= t <= 12
        version = "1" if t < 11 else "2"
        out.append(Sample(float(t), float(rng.uniform(50, 60) + (100 if during else 0)), True, embedder=version,
                          catalog=version, detector="1", items=1))
        if i == 5:
            out.append(Sample(float(t), 5.0, False, error="ServerUnavailable: x"))
    out.append(Sample(20.0, 55.0, True, embedder="2", catalog="1", items=1))  # a mixed result
    return sorted(out, key=lambda s: s.t)


def test_windows_report_splits_latency_and_counts_failures_and_mixed_results_when_given_operation_spans() -> None:
    events = [{"name": "embedder swap", "start": 10.0, "end": 12.0}]
    w = windows_report(_samples(), events, warmup_s=1.0)
    assert w["during_swaps"]["requests"] == 21 and w["during_swaps"]["p50_ms"] > 150
    assert w["outside_swaps"]["p99_ms"] < 61
    assert w["all"]["failed"] == 0  # the failure fell in the warm-up
    assert w["all"]["mixed_version"] == 1 and w["outside_swaps"]["mixed_version"] == 1
    assert w["per_kind"][0]["windows"] == 1 and w["per_kind"][0]["requests"] == 21
    assert windows_report(_samples(), events, warmup_s=0.0)["all"]["failed"] == 1


def test_write_report_writes_json_markdown_and_plot_when_the_run_is_done(tmp_path: Path) -> None:
    samples = _samples()
    events = [{"name": "detector promote", "start": 5.0, "end": 6.0},
              {"name": "embedder swap v1→v2 (publish + build)", "start": 10.0, "end": 12.0},
              {"name": "load_both", "start": 10.0, "end": 10.5, "step": True},
              {"name": "flip", "start": 11.0, "end": 11.0, "step": True}]
    report = {
        "config": {"concurrency": 2, "photos": 4, "warmup_s": 1.0, "catalog_photos": 10},
        "environment": {"host_cpu": "cpu", "cpu_affinity": 2, "gpus": []},
        "events": events,
        "windows": windows_report(samples, [e for e in events if not e.get("step")], 1.0),
        "embedder_swaps": [{"old_version": 1, "new_version": 2, "old_requests_after_flip": 0,
                            "steps": [{"name": "flip", "started": 11.0, "ended": 11.01}]}],
        "versions_seen": {"detector": ["1"], "embedder": ["1", "2"], "embedded": len(samples)},
        "samples": {"t": [s.t for s in samples], "latency_ms": [s.latency_ms for s in samples], "ok": [s.ok for s in samples],
                    "embedder": [s.embedder for s in samples]},
        "command": "lookserve bench swap --photos data",
    }
    paths = write_report(report, tmp_path, "swap_test")
    assert [p.name for p in paths] == ["swap_test.json", "swap_test.md", "swap_test.png"]
    assert json.loads(paths[0].read_text())["windows"]["all"]["mixed_version"] == 1
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown(report)
    assert "`lookserve bench swap --photos data`" in text and "| during embedder swap v1→v2 (publish + build)" in text


def test_bench_swap_command_is_mounted_in_the_bench_group_when_the_cli_loads() -> None:
    from lookserve.cli import app

    result = CliRunner().invoke(app, ["bench", "swap", "--help"])
    assert result.exit_code == 0 and "--embedder-onnx" in result.output
