"""Publishing needs the parity gate's record: a model.onnx with the right signature but no export.json
recording *this file* and a passed gate is published as unverified, shown as such, and promote refuses
it unless told ``allow_unverified`` (Triton-level promote tests: tests/test_models_swap.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.client.models import ModelRepository, verify_export
from lookserve.client.models_cli import app
from lookserve.demo import _needs_export
from lookserve.errors import ParityError
from lookserve.export.core import sha256_path
from tinymodels import gated_export, projection_embedder, write_model

SIZE, DIM = 16, 8


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=()),
                lambda p: projection_embedder(p, size=SIZE, dim=DIM, seed=1))
    return repo


def _exported(tmp_path: Path, seed: int = 2) -> Path:
    """A candidate that went through the real export path and gate: <out>/embedder/1/{model.onnx, export.json}."""
    src = projection_embedder(tmp_path / f"src-{seed}.onnx", size=SIZE, dim=DIM, seed=seed)
    return gated_export(src, tmp_path / f"exported-{seed}").onnx_path


def test_publish_records_unverified_when_a_random_model_of_the_right_signature_has_no_export_json(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    random_model = projection_embedder(tmp_path / "random" / "model.onnx", size=SIZE, dim=DIM, seed=5)
    models = ModelRepository(repo)
    info = models.publish("embedder", random_model)  # every structural check passes on random weights
    assert info.export["verification"]["status"] == "unverified"
    assert "did not come through lookserve export" in info.export["verification"]["reason"]
    assert json.loads((repo / "embedder" / "2" / "export.json").read_text())["verification"]["status"] == "unverified"
    assert not models.verification("embedder", 2).verified
    assert "unverified: no export.json" in models.history("embedder")[-1].detail
    with pytest.raises(errors.PublishError, match=r"version 2 is unverified: no export\.json.*--allow-unverified"):
        models.promote(None, "embedder", 2)  # refused before the server is asked anything
    assert models.serving_versions("embedder") == (1,)


def test_publish_records_verified_when_the_export_json_beside_the_file_records_its_passed_gate(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    candidate = _exported(tmp_path)
    info = ModelRepository(repo).publish("embedder", candidate)
    assert info.export["verification"] == {"status": "verified", "reason": ""}
    assert info.export["onnx"]["sha256"] == info.export["sha256"] and info.export["parity"]["passed"] is True
    assert ModelRepository(repo).verification("embedder", 2).verified
    assert "unverified" not in ModelRepository(repo).history("embedder")[-1].detail
    # the file replaced behind the repository's back is no longer the one the gate passed
    projection_embedder(repo / "embedder" / "2" / "model.onnx", size=SIZE, dim=DIM, seed=6)
    with pytest.raises(errors.PublishError, match="not the file the parity gate passed.*--allow-unverified"):
        ModelRepository(repo).promote(None, "embedder", 2)


def test_publish_records_unverified_when_the_file_is_not_the_one_the_gate_passed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    exported = _exported(tmp_path)
    swapped = tmp_path / "swapped" / "model.onnx"  # a passed gate's export.json beside another (random) file
    projection_embedder(swapped, size=SIZE, dim=DIM, seed=9)
    shutil.copyfile(exported.with_name("export.json"), swapped.with_name("export.json"))
    info = ModelRepository(repo).publish("embedder", swapped)
    assert info.export["verification"]["status"] == "unverified"
    assert "not the file the parity gate passed" in info.export["verification"]["reason"]


def test_publish_records_unverified_when_the_export_json_records_a_failed_gate(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    exported = _exported(tmp_path)
    record = json.loads(exported.with_name("export.json").read_text())
    record["parity"]["figures"][0]["passed"] = False
    forged = tmp_path / "failed.export.json"
    forged.write_text(json.dumps(record))
    info = ModelRepository(repo).publish("embedder", exported, export_json=forged)
    assert info.export["verification"]["status"] == "unverified"
    assert "does not record a passed parity gate (failed: embedding on random)" in info.export["verification"]["reason"]
    with pytest.raises(errors.PublishError, match="export record .* does not exist"):
        ModelRepository(repo).publish("embedder", exported, export_json=tmp_path / "nope.json")


def test_gated_export_refuses_and_writes_nothing_when_the_candidate_is_not_the_source(tmp_path: Path) -> None:
    src = projection_embedder(tmp_path / "src.onnx", size=SIZE, dim=DIM, seed=2)
    other = projection_embedder(tmp_path / "other.onnx", size=SIZE, dim=DIM, seed=3)
    with pytest.raises(ParityError, match="embedding: min_cosine"):
        gated_export(other, tmp_path / "out", reference_path=src)
    assert not (tmp_path / "out" / "embedder" / "1").exists()


def test_verify_export_names_what_is_missing_when_the_record_is_incomplete(tmp_path: Path) -> None:
    path = projection_embedder(tmp_path / "m.onnx", size=SIZE, dim=DIM)
    assert "no export.json" in verify_export(path, None).reason
    assert "records no onnx.sha256" in verify_export(path, {"parity": {"passed": True}}).reason


def test_models_list_shows_unverified_versions_when_published_without_a_gate(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    result = CliRunner().invoke(app, ["publish", "embedder", str(projection_embedder(tmp_path / "r.onnx", size=SIZE, dim=DIM, seed=4)),
                                      "-r", str(repo)])
    assert result.exit_code == 0, result.output
    assert "UNVERIFIED" in result.output and "--allow-unverified" in result.output
    ok = CliRunner().invoke(app, ["publish", "embedder", str(_exported(tmp_path)), "-r", str(repo)])
    assert ok.exit_code == 0 and "version 3 (verified)" in ok.output
    listed = CliRunner().invoke(app, ["list", "-r", str(repo)])
    # version 1 was written by hand (no export.json) and version 2 published without one
    assert "embedder: versions [1, 2, 3], config serves [1], unverified [1, 2]" in listed.output, listed.output


def test_demo_exports_again_when_model_onnx_is_not_the_file_its_export_json_recorded(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.weights.h5").write_bytes(b"reference weights")
    repo = tmp_path / "repository"
    source = projection_embedder(tmp_path / "src.onnx", size=SIZE, dim=DIM, seed=2)
    gated_export(source, repo, source={"sha256": sha256_path(weights)})
    assert not _needs_export(repo, "embedder", weights)  # these weights, this file, a passed gate
    (weights / "model.weights.h5").write_bytes(b"retrained")
    assert _needs_export(repo, "embedder", weights)  # the weights' own hash still counts
    (weights / "model.weights.h5").write_bytes(b"reference weights")
    assert not _needs_export(repo, "embedder", weights)
    projection_embedder(repo / "embedder" / "1" / "model.onnx", size=SIZE, dim=DIM, seed=8)  # replaced since
    assert _needs_export(repo, "embedder", weights)
