"""Publishing a version that fails mid-write (disk full, interrupted) while Triton serves under
load: the repository is left as it was, the serving version keeps answering, even through a
reload of the model."""

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
from lookserve.client.core import TritonClient
from lookserve.client.models import ModelRepository
from tinymodels import projection_embedder, write_model

pytestmark = pytest.mark.triton
SIZE, DIM = 16, 8


def _disk_full(src, dst, *args, **kwargs):
    Path(dst).write_bytes(Path(src).read_bytes()[:100])  # a partial write, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")


def _interrupted(src, dst, *args, **kwargs):
    Path(dst).write_bytes(Path(src).read_bytes()[:100])
    raise KeyboardInterrupt("interrupted mid-copy")


@pytest.mark.parametrize(("copy", "raises"), [(_disk_full, (OSError, errors.PublishError)), (_interrupted, KeyboardInterrupt)],
                         ids=["disk-full", "interrupted"])
def test_publish_failing_mid_write_leaves_the_serving_version_answering_when_under_load(
    tmp_path: Path, triton_factory, monkeypatch, copy, raises
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=()),
                lambda p: projection_embedder(p, size=SIZE, dim=DIM, seed=1))
    candidate = projection_embedder(tmp_path / "candidate.onnx", size=SIZE, dim=DIM, seed=2)
    server = triton_factory(repo, models=["embedder"])
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file() and p.name != "config.pbtxt"}
    records: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        crops = np.zeros((1, SIZE, SIZE, 3), np.uint8)
        end = time.monotonic() + 60
        with TritonClient(server.grpc_url, timeout_s=20) as client:
            while not stop.is_set() and time.monotonic() < end:
                try:
                    records.append(client.infer("embedder", {"crops": crops}).model_version)
                except errors.LookserveError as e:
                    failures.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        with monkeypatch.context() as m:
            m.setattr(shutil_module, "copyfile", copy)
            with pytest.raises(raises):
                ModelRepository(repo).publish("embedder", candidate)
        after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file() and p.name != "config.pbtxt"}
        assert after == before  # no version directory, no staging left behind
        with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
            admin.load_model("embedder")  # an operator's reload reads the repository as left
            admin.wait_model_ready("embedder", deadline_s=30)
            assert ModelRepository(repo).loaded_versions(admin, "embedder") == (1,)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert records and set(records) == {"1"}
    # and the same file publishes once the disk has room again
    assert ModelRepository(repo).publish("embedder", candidate).version == 2
