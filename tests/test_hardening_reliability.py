"""The reliability report command (``lookserve bench reliability``) on real Triton, and its
seeded bad-image corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve.bench.reliability import app, image_corpus
from lookserve.errors import InvalidInputError
from lookserve.images import decode_image


def test_image_corpus_is_the_same_when_seeded_alike_and_its_ordinary_photos_decode() -> None:
    a, b = image_corpus(60, seed=3), image_corpus(60, seed=3)
    assert len(a) == 60 and a == b
    assert image_corpus(60, seed=4) != a
    for kind, data, must_decode in a:
        if must_decode:
            assert decode_image(data).ndim == 3, kind
        elif kind in ("20000x1 png", "9000x9000 1-bit png", "33 MB file", "empty"):
            with pytest.raises(InvalidInputError):
                decode_image(data)


@pytest.mark.triton
def test_reliability_command_accounts_for_every_request_when_phases_run(tmp_path: Path) -> None:
    out = tmp_path / "results"
    res = CliRunner().invoke(app, ["reliability", "--phase", "steady", "--phase", "deadline", "--phase", "bad_images",
                                   "--phase", "access", "--steady-s", "1", "--bad-images", "40", "--concurrency", "2",
                                   "--work", str(tmp_path / "work"), "--out", str(out), "--stem", "rel"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "rel.json").read_text())
    assert [p["phase"] for p in report["phases"]] == ["steady", "deadline", "bad_images", "access"]
    for phase in report["phases"]:
        acc = phase["accounting"]
        assert phase["passed"] and acc["accounted"] and acc["untyped"] == 0, phase
        assert acc["sent"] == acc["ok"] + acc["failed_typed"] + acc["untyped"] > 0
        assert phase["command"].startswith("lookserve bench reliability") and f"--phase {phase['phase']}" in phase["command"]
    steady, deadline, bad, access = report["phases"]
    assert steady["client_saw"] == {"ok": steady["accounting"]["sent"]}
    assert deadline["client_saw"] == {"DeadlineExceeded": 8}
    assert bad["accounting"]["sent"] == 40 and bad["good_load"]["failed_typed"] == 0
    assert access["client_saw"] == {"PermissionDenied": 6} and all(access["checks"].values())
    text = (out / "rel.md").read_text()
    assert "Reproduce: `lookserve bench reliability" in text and "| steady | pass |" in text
