"""The reliability bench's fault phases on one private Triton per module (small, bounded), and
the checks that make an "ok" answer mean a right one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from lookserve.bench import reliability as rel
from lookserve.bench.load import Outcome, accounting
from lookserve.bench.variants import synthetic_embedder
from lookserve.client.core import TritonClient

SPEC = rel.ReliabilitySpec(concurrency=2, steady_s=1.0, fault_s=0.6, down_s=0.4, max_requests=2000, max_phase_s=30.0,
                           timeout_s=2.0, retries=3, bad_images=20, bad_json=24, seed=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with rel.environment(tmp_path_factory.mktemp("reliability"), SPEC) as e:
        yield e


def _assert_passed(result: dict) -> dict:
    acc = result["accounting"]
    assert result is not None and rel._passed(result), json.dumps({k: result[k] for k in result if k != "timeline"},
                                                                   default=str)[:3000]
    assert acc["accounted"] and acc["sent"] == acc["ok"] + acc["wrong"] + acc["failed_typed"] + acc["untyped"]
    assert acc["wrong"] == 0 and acc["untyped"] == 0
    return acc


def test_accounting_is_false_when_the_counts_do_not_add_up() -> None:
    outcomes = [Outcome(0.0, 0.01, 0.01, "ok", True, value={"right": True}),
                Outcome(0.1, 0.01, 0.01, "ok", True, value={"right": False}),
                Outcome(0.2, 2.0, 2.0, "DeadlineExceeded", True), Outcome(0.3, 0.1, 0.1, "KeyError", False)]
    acc = accounting(4, outcomes, rel._wrong)
    assert acc == {"sent": 4, "ok": 1, "wrong": 1, "failed_typed": 1, "untyped": 1, "accounted": True}
    assert accounting(5, outcomes, rel._wrong)["accounted"] is False  # one request never came back
    assert rel._tally(3, ok=1, failed_typed=1)["accounted"] is False


def test_judge_tells_a_changed_meaning_from_skipped_rows_when_documents_load() -> None:
    original = {"pairs": ["a", "b"], "shop": {}, "category": {}, "split": {}, "missing": 0}
    assert rel._judge(original, dict(original)) == rel.SAME
    assert rel._judge(original, {**original, "pairs": ["a"], "missing": 1}) == rel.SKIPPED
    assert rel._judge(original, {**original, "pairs": ["a", "c"]}) == rel.DIFFERENT  # another pair, unreported
    assert rel._judge(original, {**original, "pairs": ["a"]}) == rel.DIFFERENT  # a row lost silently
    assert rel._judge({"embedder": {"version": "1"}}, {"embedder": {"version": "7"}}) == rel.DIFFERENT


@pytest.mark.triton
def test_steady_counts_wrong_answers_when_the_served_model_differs_from_the_reference(env, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    onnx.save(synthetic_embedder(size=rel.SIZE, dim=rel.DIM, seed=5), other)
    result = rel.phase_steady(dataclasses.replace(env, spec=dataclasses.replace(SPEC, steady_s=0.5),
                                                  reference=rel.Reference(other)))
    acc = result["accounting"]
    assert acc["wrong"] == acc["sent"] > 0 and acc["ok"] == 0 and acc["accounted"]
    assert not rel._passed(result) and result["client_saw"] == {"wrong answer": acc["sent"]}


@pytest.mark.triton
def test_reference_matches_the_served_embedding_when_same_file(env) -> None:
    crops = np.random.default_rng(3).integers(0, 256, (1, rel.SIZE, rel.SIZE, 3), dtype=np.uint8)
    with TritonClient(env.url, timeout_s=10) as client:
        served = client.infer("embedder", {"crops": crops}).outputs["embedding"]
    assert env.reference.matches(crops, served)
    assert not env.reference.matches(crops, served[:, ::-1].copy())  # the same numbers in another order


@pytest.mark.triton
def test_sigkill_phase_recovers_the_same_clients_when_tritonserver_is_killed(env) -> None:
    result = rel.phase_sigkill(env)
    acc = _assert_passed(result)
    assert result["after_recovery"]["requests"] > 0 and set(result["after_recovery"]["by_kind"]) == {"ok"}
    assert acc["ok"] > 0 and set(result["while_down"]["by_kind"]) <= {"ServerUnavailable"}
    assert result["after_recovery"]["p99_all_ms"] is not None


@pytest.mark.triton
def test_stub_kill_phase_heals_the_model_when_its_stubs_are_killed(env) -> None:
    result = rel.phase_stub_kill(env)
    _assert_passed(result)
    assert result["checks"]["watchdog reloaded the model"] and result["time_to_heal_s"] < 30


@pytest.mark.triton
def test_bad_publish_phase_refuses_and_keeps_version_1_answering_when_files_are_corrupt(env) -> None:
    result = rel.phase_bad_publish(env)
    acc = _assert_passed(result)
    assert set(result["client_saw_versions"]) == {"1"} and acc["failed_typed"] == 0
    assert result["refusals"]["publish corrupt file"].startswith("PublishError")


@pytest.mark.triton
def test_catalog_tamper_phase_refuses_every_damaged_copy_when_opened(env) -> None:
    result = rel.phase_catalog_tamper(env)
    acc = _assert_passed(result)
    assert acc["failed_typed"] == acc["sent"] == len(result["cases"]) and acc["ok"] == 0


@pytest.mark.triton
def test_interrupted_build_phase_leaves_the_live_catalog_intact_when_killed_mid_way(env) -> None:
    result = rel.phase_interrupted_build(env)
    acc = _assert_passed(result)
    assert acc == {"sent": 1, "ok": 1, "wrong": 0, "failed_typed": 0, "untyped": 0, "accounted": True}
    assert result["checks"]["killed mid-way"] and result["checks"]["rerun completes"]


@pytest.fixture(scope="module")
def bad_json(env) -> dict:
    return rel.phase_bad_json(env)


@pytest.mark.triton
def test_bad_json_phase_lets_only_documented_errors_escape_and_accounts_for_every_document_when_mutated(bad_json) -> None:
    acc = bad_json["accounting"]
    assert acc["accounted"] and acc["sent"] == 24 and acc["untyped"] == 0
    saw = bad_json["client_saw"]
    assert sum(v for c in saw.values() for v in c.values()) == 24
    assert set(saw["street2shop pairs"]) <= {"DataError", rel.SAME, rel.SKIPPED}
    assert acc["wrong"] == sum(c.get(rel.DIFFERENT, 0) for c in saw.values())


@pytest.mark.triton
def test_bad_json_phase_accepts_only_documents_that_mean_the_same_when_mutated(bad_json) -> None:
    _assert_passed(bad_json)


@pytest.mark.triton
def test_replicas_phase_fails_no_request_and_mixes_no_version_when_one_replica_is_killed_and_versions_roll(env) -> None:
    result = rel.phase_replicas(dataclasses.replace(env, spec=dataclasses.replace(SPEC, max_requests=10_000)))
    acc = _assert_passed(result)
    assert acc["failed_typed"] == 0 and acc["ok"] > 0
    assert result["per_replica"]["restarted replica answered after its restart"] > 0
    assert set(result["answers_by_version"]) == {"1", "2"}
