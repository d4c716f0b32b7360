"""The swap bench: its figures and outputs on seeded samples, its mixed-version accounting on
answers checked against the catalogs on disk, and one small run on real Triton."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_look_chain import CROP, DIM, D, M, S, shop_photo, street_photo, tiny_detector
from test_models_embedder_swap import PHOTO_SLOTS
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.bench.swap import (
    PointerLog,
    Sample,
    look_load,
    markdown,
    run_swap_bench,
    samples_of,
    windows_report,
    write_report,
)
from lookserve.cli import app
from tinymodels import projection_embedder, write_model


def _samples(seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate(np.arange(0.0, 30.0, 0.1)):
        during = 10 <= t <= 12
        version = "1" if t < 11 else "2"
        out.append(Sample(float(t), float(rng.uniform(50, 60) + (100 if during else 0)), True, embedder=version,
                          catalog=version, detector="1", items=1, searched=version, disk=(version,)))
        if i == 5:
            out.append(Sample(float(t), 5.0, False, error="ServerUnavailable: x"))
    # a mixed result: v2 answered, the searched catalog's manifest on disk says v1
    out.append(Sample(20.0, 55.0, True, embedder="2", catalog="2", items=1, searched="1", disk=("2",)))
    return sorted(out, key=lambda s: s.t)


def test_windows_report_splits_latency_and_counts_failures_and_mixed_results_when_given_operation_spans() -> None:
    events = [{"name": "embedder swap", "start": 10.0, "end": 12.0}]
    w = windows_report(_samples(), events, warmup_s=1.0)
    assert w["during_swaps"]["requests"] == 21 and w["during_swaps"]["p50_ms"] > 150
    assert w["outside_swaps"]["p99_ms"] < 61
    assert w["all"]["failed"] == 0  # the failure fell in the warm-up
    assert w["all"]["mixed_version"] == 1 and w["outside_swaps"]["mixed_version"] == 1
    assert w["all"]["ok"] == w["all"]["requests"] - w["all"]["failed"] - 1  # the mixed one is not ok
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
    result = CliRunner().invoke(app, ["bench", "swap", "--help"])
    assert result.exit_code == 0 and "--embedder-onnx" in result.output


def _catalog_root(tmp_path: Path) -> Path:
    """A catalog root on disk: catalog-v1 and catalog-v2 (manifests only), current → catalog-v1."""
    root = tmp_path / "catalogs"
    for v in ("1", "2"):
        (root / f"catalog-v{v}").mkdir(parents=True)
        (root / f"catalog-v{v}" / "manifest.json").write_text(json.dumps({"embedder": {"name": "embedder", "version": v}}))
    os.symlink("catalog-v1", root / "current")
    return root


class _AnsweringPipeline:
    """Answers like LookPipeline.run: embedder ``answered`` replied, the search went to ``searched``
    (whose pipeline-side object claims ``claimed``: a mix the pipeline's own check missed)."""

    config = SimpleNamespace(detector="detector")

    def __init__(self, searched: Path, answered: str, claimed: str) -> None:
        self.searched, self.answered, self.claimed = searched, answered, claimed

    def run(self, photo: bytes):
        return SimpleNamespace(model_versions={"detector": "1", "embedder": self.answered},
                               catalog_embedder={"name": "embedder", "version": self.claimed},
                               catalog=str(self.searched), items=[object()])


def _account(root: Path, pipeline) -> dict:
    t0 = time.perf_counter()
    pointer = PointerLog(root, t0)
    load = look_load(pipeline, [b"photo"], concurrency=1, t0=t0, max_s=0.2).start()
    return windows_report(samples_of(load.wait(), pointer, lag_s=0.15), [], warmup_s=0.0)["all"]


def test_swap_accounting_counts_a_mixed_answer_as_mixed_not_ok_nor_failed_when_the_disk_manifest_differs(
        tmp_path: Path) -> None:
    root = _catalog_root(tmp_path)
    mixed = _account(root, _AnsweringPipeline(root / "catalog-v1", answered="2", claimed="2"))
    assert mixed["requests"] > 0 and mixed["mixed_version"] == mixed["requests"]
    assert mixed["ok"] == 0 and mixed["failed"] == 0
    right = _account(root, _AnsweringPipeline(root / "catalog-v1", answered="1", claimed="1"))
    assert right["requests"] > 0 and right["mixed_version"] == 0 and right["ok"] == right["requests"]
    assert right["stale_catalog"] == 0
    # a consistent pair, but not the catalog the pointer names: stale, not mixed
    stale = _account(root, _AnsweringPipeline(root / "catalog-v2", answered="2", claimed="2"))
    assert stale["mixed_version"] == 0 and stale["stale_catalog"] == stale["requests"] > 0


def test_pointer_log_records_a_flip_when_the_current_pointer_moves(tmp_path: Path) -> None:
    root = _catalog_root(tmp_path)
    t0 = time.perf_counter()
    pointer = PointerLog(root, t0, interval_s=0.005).start()
    time.sleep(0.05)
    flip = time.perf_counter() - t0
    os.symlink("catalog-v2", root / "current.new")
    os.replace(root / "current.new", root / "current")
    time.sleep(0.1)
    pointer.stop()
    assert [v for _, v in pointer.changes] == ["1", "2"]
    assert pointer.versions_between(0.0, flip - 0.01) == ("1",)
    assert pointer.versions_between(flip - 0.01, flip + 0.08) == ("1", "2")
    assert pointer.versions_between(flip + 0.08, flip + 0.09) == ("2",)


def _street2shop(root: Path, rng) -> None:
    """A street2shop-format folder: 6 shop photos (tops, bags), 2 street photos the tiny detector reads."""

    (root / "images").mkdir(parents=True)
    (root / "meta" / "json").mkdir(parents=True)
    lines = []
    for pid in range(100, 106):
        Image.fromarray(shop_photo(rng)).save(root / "images" / f"{pid}.png")
        lines.append(f"{pid},images/{pid}.png")
    for sid in (1, 2):
        Image.fromarray(street_photo(PHOTO_SLOTS, seed=sid)).save(root / "images" / f"{sid}.png")
        lines.append(f"{sid},images/{sid}.png")
    (root / "photos").mkdir()
    (root / "photos" / "photos.txt").write_text("\n".join(lines) + "\n")
    bbox = {"left": 1, "top": 1, "width": 20, "height": 20}
    for category, products in (("tops", (100, 101, 102)), ("bags", (103, 104, 105))):
        (root / "meta" / "json" / f"retrieval_{category}.json").write_text(
            json.dumps([{"product": p, "photo": p} for p in products]))
        (root / "meta" / "json" / f"test_pairs_{category}.json").write_text(
            json.dumps([{"photo": 1 if category == "tops" else 2, "product": products[0], "bbox": bbox}]))


@pytest.mark.triton
@pytest.mark.slow
def test_run_swap_bench_counts_every_request_across_a_swap_when_run_small(tmp_path: Path) -> None:

    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.detector_config(input_size=S, max_detections=D, mask_size=M), warmup=()),
                tiny_detector)
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=CROP), warmup=()),
                lambda p: projection_embedder(p, size=CROP, dim=DIM, seed=1))
    photos = tmp_path / "s2s"
    _street2shop(photos, np.random.default_rng(3))
    report = run_swap_bench(repo, photos, tmp_path / "work", concurrency=2, photos=2, warmup_s=0.5, gap_s=0.6,
                            quiet_s=0.3, max_s=90.0, progress=False, allow_unverified=True)  # tiny models: no gate
    w = report["windows"]["all"]
    assert w["requests"] > 0 and w["failed"] == 0 and w["mixed_version"] == 0 and w["ok"] == w["requests"]
    assert report["versions_seen"]["embedder"] == ["1", "2"] and report["versions_seen"]["embedded"] > 0
    assert [s["new_version"] for s in report["embedder_swaps"]] == [2]
    assert [v for _, v in report["pointer_changes"]] == ["2"]
    assert {e["name"] for e in report["events"]} >= {"detector publish", "detector promote", "detector rollback", "flip"}
    # every request sent before the warm-up's end is left out of the windows, every later one counted
    # (the report's times are rounded to 0.1 ms, so one sent just before 0.5 s may read 0.5)
    ts = report["samples"]["t"]
    assert sum(t < 0.5 for t in ts) <= len(ts) - w["requests"] <= sum(t <= 0.5 for t in ts)
    paths = write_report(report, tmp_path / "out", "swap")
    assert [p.name for p in paths] == ["swap.json", "swap.md", "swap.png"]
