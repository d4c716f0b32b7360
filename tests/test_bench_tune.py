"""``lookserve bench tune``: the config search (bench/tune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.bench.tune import Candidate, choose, grid, write_winner
from lookserve.cli import app
from lookserve.modelconfig import ModelConfig
from tinymodels import projection_embedder, write_model


def _report(points: list[tuple[int, float, float]]) -> dict:
    return {"points": [{"level": lv, "throughput_rps": rps, "latency": {"p99_ms": p99}, "errors": {}}
                       for lv, rps, p99 in points]}


def test_grid_keeps_only_candidates_within_the_thread_budget_when_threads_times_instances_exceed_it() -> None:
    got = grid((1, 2), (1, 2), (0,), (8,), thread_budget=2)
    assert {(c.instances, c.threads) for c in got} == {(1, 1), (1, 2), (2, 1)}
    with pytest.raises(errors.ConfigError, match="no candidate fits"):
        grid((2,), (2,), (0,), (8,), thread_budget=2)


def test_grid_varies_spinning_only_for_multi_thread_candidates_and_configs_carry_it_when_asked() -> None:
    got = grid((1, 2), (1, 2), (100,), (4,), thread_budget=2, spinning=(True, False))
    assert [c.name for c in got] == ["i1_t1_d100_b4", "i1_t2_d100_b4_spin", "i1_t2_d100_b4_nospin", "i2_t1_d100_b4"]
    base = contracts.detector_config()
    params = {c.name: c.config(base).parameters for c in got}
    assert params["i1_t2_d100_b4_spin"]["allow_spinning"] == "1"
    assert params["i1_t2_d100_b4_nospin"]["allow_spinning"] == "0"
    assert params["i1_t2_d100_b4_nospin"]["intra_op_thread_count"] == "2"
    assert params["i1_t1_d100_b4"] == {**base.parameters, "intra_op_thread_count": "1"}  # the base config's own


def test_choose_takes_the_fastest_candidate_meeting_p99_at_every_level_when_latency_objective() -> None:
    reports = {"fast_but_slow_tail": _report([(1, 100, 5.0), (8, 400, 30.0)]),
               "meets": _report([(1, 90, 4.0), (8, 300, 9.0)]),
               "meets_slower": _report([(1, 95, 3.0), (8, 250, 8.0)])}
    winner, summary = choose(reports, "latency", p99_ms=10.0)
    assert winner == "meets" and not summary["fast_but_slow_tail"]["meets"]
    assert choose(reports, "throughput")[0] == "fast_but_slow_tail"
    assert choose(reports, "latency", p99_ms=1.0)[0] is None
    with pytest.raises(errors.ConfigError, match="p99"):
        choose(reports, "latency")


def test_write_winner_writes_a_variant_and_leaves_config_pbtxt_when_not_applied(tmp_path: Path) -> None:
    base = contracts.embedder_config()
    model_dir = tmp_path / "embedder"
    base.write(model_dir / "config.pbtxt")
    before = (model_dir / "config.pbtxt").read_text()
    winner = Candidate(2, 1, 0, 16)
    result = {"winner": winner.name, "winner_config": winner.config(base).to_pbtxt(), "objective": "throughput",
              "p99_ms": None, "candidates": {}, "reports": {}}
    write_winner(result, model_dir, "tuned", command="lookserve bench tune embedder")
    tuned = ModelConfig.read(model_dir / "configs" / "tuned.pbtxt")
    assert tuned.instance_groups[0].count == 2 and tuned.max_batch_size == 16
    assert tuned.parameters["intra_op_thread_count"] == "1" and tuned.dynamic_batching.max_queue_delay_microseconds == 0
    assert (model_dir / "config.pbtxt").read_text() == before
    assert json.loads((model_dir / "configs" / "tuned.json").read_text())["command"] == "lookserve bench tune embedder"
    write_winner(result, model_dir, "tuned", command="c", apply=True)
    assert ModelConfig.read(model_dir / "config.pbtxt").instance_groups[0].count == 2
    with pytest.raises(errors.ConfigError, match="no candidate met"):
        write_winner({**result, "winner": None}, model_dir, "tuned", command="c")


@pytest.mark.triton
def test_cli_bench_tune_measures_each_candidate_and_writes_the_winner_variant_when_served(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "repo", contracts.embedder_config(), projection_embedder)
    before = (model_dir / "config.pbtxt").read_text()
    result = CliRunner().invoke(app, ["bench", "tune", "embedder", "--repository", str(tmp_path / "repo"),
                                      "--instances", "1,2", "--threads", "1", "--delays", "0", "--objective",
                                      "throughput", "--levels", "1,2", "--duration", "0.5", "--warmup", "0.2"])
    assert result.exit_code == 0, result.output
    measured = json.loads((model_dir / "configs" / "tuned.json").read_text())
    assert set(measured["candidates"]) == {"i1_t1_d0_b32", "i2_t1_d0_b32"}
    assert measured["winner"] in measured["candidates"]
    assert all(c["throughput_rps_at_top"] > 0 for c in measured["candidates"].values())
    assert ModelConfig.read(model_dir / "configs" / "tuned.pbtxt").dynamic_batching.max_queue_delay_microseconds == 0
    assert (model_dir / "config.pbtxt").read_text() == before


def test_cli_bench_tune_refuses_naming_the_option_when_spinning_is_not_0_or_1(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", contracts.embedder_config(), projection_embedder)
    result = CliRunner().invoke(app, ["bench", "tune", "embedder", "--repository", str(tmp_path / "repo"),
                                      "--threads", "2", "--spinning", "1,yes"])
    assert result.exit_code == 2
    assert "--spinning" in result.output and "'yes'" in result.output
