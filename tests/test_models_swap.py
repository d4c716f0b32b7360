"""Publishing and hot-swapping model versions on real Triton, under load."""

from __future__ import annotations

import errno
import shutil as shutil_module
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookserve import contracts, errors
from lookserve.client.catalog import EmbedderInfo, PhotoRecord, set_current, write_catalog
from lookserve.client.core import TritonClient
from lookserve.client.models import ModelRepository
from lookserve.client.swap import SwapOptions, swap_embedder
from tinymodels import gated_export, projection_embedder, write_model

SIZE = 16
DIM = 8


def _repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository serving embedder v1, and a v2 candidate outside it that went through the export
    path's parity gate (``candidate/embedder/1/{model.onnx, export.json}``: publish verifies it)."""
    repo = tmp_path / "repo"
    config = replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=())
    write_model(repo, config, lambda p: projection_embedder(p, size=SIZE, dim=DIM, seed=1))
    source = projection_embedder(tmp_path / "source.onnx", size=SIZE, dim=DIM, seed=2)
    candidate = gated_export(source, tmp_path / "candidate").onnx_path
    return repo, candidate


def test_publish_writes_a_new_immutable_version_when_the_file_matches_the_config(tmp_path: Path) -> None:
    repo, candidate = _repo(tmp_path)
    models = ModelRepository(repo)
    info = models.publish("embedder", candidate)
    assert info.version == 2
    assert (repo / "embedder" / "2" / "model.onnx").read_bytes() == candidate.read_bytes()
    assert len(info.export["sha256"]) == 64 and info.export["verification"]["status"] == "verified"
    with pytest.raises(errors.PublishError, match="immutable"):
        models.publish("embedder", candidate, version=2)
    assert [e.action for e in models.history("embedder")] == ["publish"]


@pytest.mark.parametrize(
    ("make_bad", "fragment"),
    [
        (lambda d: (d / "m.onnx").write_bytes(b"\x08\x01garbage") and d / "m.onnx", "not a valid ONNX model"),
        (lambda d: projection_embedder(d / "m.onnx", size=SIZE, dim=DIM + 1), "shape"),
        (lambda d: projection_embedder(d / "m.onnx", size=SIZE, dim=DIM, input_name="pixels"), "inputs are"),
    ],
)
def test_publish_refuses_and_writes_nothing_when_the_file_is_bad(tmp_path: Path, make_bad, fragment: str) -> None:
    repo, _ = _repo(tmp_path)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = make_bad(bad_dir)
    before = sorted(p.name for p in (repo / "embedder").iterdir())
    with pytest.raises(errors.PublishError, match=fragment):
        ModelRepository(repo).publish("embedder", bad)
    assert sorted(p.name for p in (repo / "embedder").iterdir()) == before


class LoadThreads:
    """Client threads (``_run(i)`` each) sending requests while the ``with`` block runs; a
    subclass's ``_run`` calls :meth:`_loop` with one request. Records failures."""

    def __init__(self, threads: int = 3) -> None:
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        raise NotImplementedError

    def _loop(self, request) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                request()
            except errors.LookserveError as e:
                self.failures.append(e)

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


class _Load(LoadThreads):
    """Client threads sending requests continuously; records versions and failures."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.records: list[tuple[float, str]] = []
        super().__init__(threads)

    def _run(self, seed: int) -> None:
        crops = np.random.default_rng(seed).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
        with TritonClient(self.url, timeout_s=20) as client:
            self._loop(lambda: self.records.append(
                (time.monotonic(), client.infer("embedder", {"crops": crops}).model_version)))


@pytest.mark.triton
def test_promote_and_rollback_swap_versions_with_zero_failed_requests_when_under_load(
    tmp_path: Path, triton_factory
) -> None:
    repo, candidate = _repo(tmp_path)
    server = triton_factory(repo, models=["embedder"])
    models = ModelRepository(repo)
    models.publish("embedder", candidate)
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin, _Load(server.grpc_url) as load:
        t_promote = time.monotonic()
        assert models.promote(admin, "embedder", 2) == (2,)
        t_promoted = time.monotonic()
        time.sleep(0.5)
        t_rollback = time.monotonic()
        assert models.rollback(admin, "embedder") == (1,)
        t_rolled_back = time.monotonic()
        time.sleep(0.5)
    assert load.failures == []
    versions = [v for _, v in load.records]
    assert set(versions) == {"1", "2"}
    assert all(v == "1" for t, v in load.records if t < t_promote)
    assert all(v == "2" for t, v in load.records if t_promoted < t < t_rollback)
    assert all(v == "1" for t, v in load.records if t > t_rolled_back)
    assert [e.action for e in models.history("embedder")] == ["publish", "promote", "rollback"]


@pytest.mark.triton
def test_promote_refuses_an_unverified_version_and_keeps_the_old_one_serving_unless_allowed(
    tmp_path: Path, triton_factory
) -> None:
    repo, _ = _repo(tmp_path)
    server = triton_factory(repo, models=["embedder"])
    models = ModelRepository(repo)
    catalogs = tmp_path / "catalogs"  # a catalog built with v1, serving
    write_catalog(catalogs / "catalog-v1", [PhotoRecord(i, "tops", f"{i}.png", None) for i in range(4)],
                  np.eye(4, DIM, dtype=np.float32), EmbedderInfo("embedder", "1"))
    set_current(catalogs, "catalog-v1")
    # the right signature and finite outputs, random weights, no gate: swap-embedder --onnx publishes
    # it as version 2, unverified, and stops before loading it
    random_model = projection_embedder(tmp_path / "random.onnx", size=SIZE, dim=DIM, seed=5)
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
        with pytest.raises(errors.PublishError, match="swap aborted.*version 2 is unverified.*--allow-unverified"):
            swap_embedder(admin, repo, catalogs, None, onnx_path=random_model, options=SwapOptions(quiet_s=0.2, max_wait_s=5))
        assert models.loaded_versions(admin, "embedder") == (1,)
    assert (catalogs / "current").resolve().name == "catalog-v1"
    assert models.versions("embedder")[-1].export["verification"]["status"] == "unverified"
    # and a file Triton cannot load, put in place behind publish's back (no export.json either)
    (repo / "embedder" / "3").mkdir()
    (repo / "embedder" / "3" / "model.onnx").write_bytes(b"corrupt")
    config_before = (repo / "embedder" / "config.pbtxt").read_text()
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin, _Load(server.grpc_url) as load:
        for version in (2, 3):
            with pytest.raises(errors.PublishError, match=f"version {version} is unverified.*--allow-unverified"):
                models.promote(admin, "embedder", version)
        assert (repo / "embedder" / "config.pbtxt").read_text() == config_before
        assert models.loaded_versions(admin, "embedder") == (1,)
        # allowed explicitly, Triton itself still refuses the corrupt one; the old version keeps serving
        with pytest.raises(errors.PublishError, match="previous versions keep serving"):
            models.promote(admin, "embedder", 3, allow_unverified=True)
        time.sleep(0.3)
        assert (repo / "embedder" / "config.pbtxt").read_text() == config_before
        assert models.promote(admin, "embedder", 2, allow_unverified=True) == (2,)
        time.sleep(0.3)
    assert load.failures == []
    assert {v for _, v in load.records} == {"1", "2"}
    last = models.history("embedder")[-1]
    assert last.action == "promote" and "version 2 unverified, allowed" in last.detail


def test_publish_leaves_the_repository_as_it_was_when_the_disk_fills_mid_write(tmp_path: Path, monkeypatch) -> None:
    repo, candidate = _repo(tmp_path)
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    def full_disk(src, dst, *args, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])  # a partial write, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil_module, "copyfile", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ModelRepository(repo).publish("embedder", candidate)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    # the config may be pinned to the serving version, which serves the same; nothing else changed
    assert {k: v for k, v in after.items() if k.name != "config.pbtxt"} == {
        k: v for k, v in before.items() if k.name != "config.pbtxt"
    }
    assert not any(p.name.startswith(".publish") for p in (repo / "embedder").iterdir())
    assert ModelRepository(repo).serving_versions("embedder") == (1,)
