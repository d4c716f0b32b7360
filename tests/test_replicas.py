"""Several Triton replicas behind one client: gRPC's round_robin spreads requests, its retry
policy moves a request off a replica that died, a restarted replica gets traffic back, a rolling
promote swaps versions replica by replica with no failed and no mixed answer, and
``lookserve serve --replicas`` starts and stops them (issue 20).

One pair of replicas for the module (tiny models); the tests run in file order and share it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_look_chain import CROP, DIM, D, M, S, shop_photo, street_photo, tiny_detector
from test_models_embedder_swap import FAST, PHOTO_SLOTS, _assert_never_mixed, _Clients
from test_models_swap import LoadThreads

from lookserve import contracts, errors
from lookserve.client.catalog import (
    PhotoRecord,
    TritonEmbedder,
    build_catalog,
    read_current,
    set_current,
)
from lookserve.client.core import ClientOptions, RetryPolicy, TritonClient, each_replica
from lookserve.client.models import ModelRepository
from lookserve.client.swap import swap_embedder, version_requests
from lookserve.server.launcher import REPLICA_PORT_STEP, ServerOptions, TritonReplicas, free_port
from tinymodels import gated_export, projection_embedder, run_onnx, write_model

SIZE = CROP
THREADS = 3


def _served_count(client: TritonClient, version: str = "") -> int:
    """Successful inferences of the embedder (all versions, or ``version``) this replica answered."""
    stats = client.statistics("embedder", version)
    return sum(int(s.get("inference_stats", {}).get("success", {}).get("count", 0) or 0)
               for s in stats.get("model_stats", []))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two replicas of one repository (detector, embedder v1 serving; a gated v2 candidate beside it)."""
    root = tmp_path_factory.mktemp("replicas")
    repo = root / "repo"
    write_model(repo, replace(contracts.detector_config(input_size=S, max_detections=D, mask_size=M), warmup=()), tiny_detector)
    config = replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=())
    write_model(repo, config, lambda p: projection_embedder(p, size=SIZE, dim=DIM, seed=1))
    candidate = gated_export(projection_embedder(root / "v2.onnx", size=SIZE, dim=DIM, seed=2), root / "candidate").onnx_path
    group = TritonReplicas(ServerOptions(repo, grpc_port=0, load_models=("detector", "embedder"), work_dir=root / "triton",
                                         exit_timeout_s=5, ready_timeout_s=120), replicas=2)
    group.start()
    group.repo, group.candidate = repo, candidate
    try:
        yield group
    finally:
        group.stop()


class Load(LoadThreads):
    """``THREADS`` client threads, each with one client for the whole load (the replica list), each
    sending its own crop; every answer is checked against onnxruntime on the file of the version it
    says answered it (a "mixed" answer: right version label, another version's numbers)."""

    def __init__(self, url: str, references: dict[str, Path], retry: RetryPolicy | None = None) -> None:
        self.options = ClientOptions(url=url, timeout_s=10, retry=retry or RetryPolicy())
        self.crops = [np.random.default_rng(i).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8) for i in range(THREADS)]
        self.expected = {v: [run_onnx(path, {"crops": c})[0] for c in self.crops] for v, path in references.items()}
        self.records: list[tuple[float, str]] = []  # (sent at, answering version)
        self.mixed = 0
        super().__init__(THREADS)

    def _run(self, i: int) -> None:
        deadline = time.monotonic() + 60  # bounded, whatever happens
        with TritonClient(self.options) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                # A record carries when its request was SENT: the answer to a request sent just
                # before a swap may arrive after it, and says nothing about the swap.
                sent = time.monotonic()
                try:
                    r = client.infer("embedder", {"crops": self.crops[i]})
                except errors.LookserveError as e:
                    self.failures.append(e)
                    continue
                want = self.expected.get(r.model_version)
                if want is None or not np.allclose(r.outputs["embedding"], want[i], atol=1e-5):
                    self.mixed += 1
                self.records.append((sent, r.model_version))



def _v1(replicas) -> dict[str, Path]:
    return {"1": replicas.repo / "embedder" / "1" / "model.onnx"}


@pytest.mark.triton
def test_round_robin_spreads_requests_over_both_replicas_when_given_a_list(replicas) -> None:
    crops = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    with TritonClient(replicas.grpc_url, timeout_s=10) as client:
        client.wait_ready(deadline_s=10)
        with each_replica(client) as each:
            before = [_served_count(c) for c in each]
            total_before = version_requests(client, "embedder", 1)
            for _ in range(40):
                client.infer("embedder", {"crops": crops})
            served = [_served_count(c) - b for c, b in zip(each, before, strict=True)]
            total = version_requests(client, "embedder", 1) - total_before
    assert sum(served) == 40
    assert min(served) >= 15, f"requests per replica {served}: not spread"
    assert total == 40, "the swap's drain count (version_requests) must sum every replica"


@pytest.mark.triton
def test_sigkill_of_one_replica_under_load_fails_no_request_and_traffic_returns_after_restart(replicas) -> None:
    victim = replicas.servers[0]
    # lookserve's own retry off: the requests on the killed replica must be moved by gRPC's retry policy
    load = Load(replicas.grpc_url, _v1(replicas), retry=RetryPolicy(attempts=1))
    with load:
        time.sleep(0.6)
        killed = time.monotonic()
        victim.kill()
        time.sleep(1.0)
        victim.start()
        restarted = time.monotonic()
        with TritonClient(victim.grpc_url, timeout_s=5) as alone:
            end = time.monotonic() + 15
            while _served_count(alone) < 10 and time.monotonic() < end:
                time.sleep(0.1)
            back = _served_count(alone)
    assert load.failures == [], f"{len(load.failures)} failed, first: {load.failures[:1]}"
    assert load.mixed == 0
    assert sum(1 for t, _ in load.records if killed < t < restarted) > 10, "no answers while one replica was dead"
    assert back >= 10, f"the restarted replica answered {back} requests in 15 s: traffic did not return"


@pytest.mark.triton
def test_rolling_promote_under_load_fails_no_request_and_mixes_no_versions(replicas) -> None:
    models = ModelRepository(replicas.repo)
    models.publish("embedder", replicas.candidate)
    references = {**_v1(replicas), "2": replicas.repo / "embedder" / "2" / "model.onnx"}
    admin_options = ClientOptions(url=replicas.grpc_url, repository_key=replicas.repository_key, timeout_s=30)
    with TritonClient(admin_options) as admin, Load(replicas.grpc_url, references) as load:
        assert models.promote(admin, "embedder", 2) == (2,)
        promoted = time.monotonic()
        time.sleep(0.5)
        assert models.loaded_versions(admin, "embedder") == (2,)
        with each_replica(admin) as each:
            warmed = [_served_count(c, "2") for c in each]
    assert load.failures == [], f"{len(load.failures)} failed, first: {load.failures[:1]}"
    assert load.mixed == 0
    assert {v for _, v in load.records} == {"1", "2"}
    assert all(v == "2" for t, v in load.records if t > promoted)
    assert min(warmed) >= 1, f"version 2 answers per replica {warmed}"


@pytest.mark.triton
def test_swap_embedder_across_replicas_fails_no_look_and_mixes_no_versions_when_under_load(replicas, tmp_path: Path) -> None:
    """After the rolling promote above (version 2 serves): swap to a version 3 with its catalog, the
    look chain running through the replica list meanwhile; every answer pairs the embedder version
    that answered with the catalog built by it."""
    repo, url = replicas.repo, replicas.grpc_url
    rng = np.random.default_rng(7)
    shop = tmp_path / "shop"
    shop.mkdir()
    records = []
    for i, category in enumerate(["tops"] * 6 + ["bags"] * 4):
        Image.fromarray(shop_photo(rng)).save(shop / f"{i}.png")
        records.append(PhotoRecord(100 + i, category, f"{i}.png", shop / f"{i}.png", f"{category} #{i}"))
    root = tmp_path / "catalogs"
    with TritonClient(url) as client:
        build_catalog(records, root / "catalog-v2", TritonEmbedder(client, version="2"), batch_size=5,
                      model_repository=repo, images_root=shop)
    set_current(root, "catalog-v2")
    street = tmp_path / "street.png"
    Image.fromarray(street_photo(PHOTO_SLOTS)).save(street)
    candidate = projection_embedder(tmp_path / "candidate" / "model.onnx", size=CROP, dim=DIM, seed=3)
    admin_options = ClientOptions(url=url, repository_key=replicas.repository_key, timeout_s=30)
    with TritonClient(admin_options) as admin, _Clients(url, root, street) as load:
        report = swap_embedder(admin, repo, root, records, onnx_path=candidate, options=FAST, images_root=shop)
        done = time.time()
        time.sleep(0.4)
        loaded = ModelRepository(repo).loaded_versions(admin, "embedder")
    assert load.failures == [], f"{len(load.failures)} failed, first: {load.failures[:1]}"
    _assert_never_mixed(load.results)
    assert {r[2] for r in load.results} == {"2", "3"}
    assert all(r[2] == "3" for r in load.results if r[0] > done)
    assert (report.old_version, report.new_version, report.serving, report.drained) == (2, 3, (3,), True)
    assert loaded == (3,), "a replica kept another version"
    assert read_current(root).name == "catalog-v3"


@pytest.mark.triton
def test_rolling_promote_swaps_the_done_replicas_back_when_a_later_replica_cannot_load(replicas) -> None:
    """After the swap above (version 3 serves): the second replica's onnxruntime backend file is
    taken away, so it cannot load a model; a rolling promote to version 2 loads it on the first,
    fails on the second and puts version 3 back on the first, with no failed request meanwhile."""
    models = ModelRepository(replicas.repo)
    backend = replicas.servers[1].work_dir / "backends" / "onnxruntime" / "model.py"
    saved = backend.read_bytes()
    references = {v: replicas.repo / "embedder" / v / "model.onnx" for v in ("2", "3")}
    admin_options = ClientOptions(url=replicas.grpc_url, repository_key=replicas.repository_key, timeout_s=30)
    changes = len(models.history("embedder"))
    backend.unlink()
    try:
        with TritonClient(admin_options) as admin, Load(replicas.grpc_url, references) as load:
            with pytest.raises(errors.PublishError, match=rf"on {re.escape(replicas.servers[1].grpc_url)} \(1 replicas swapped"):
                models.promote(admin, "embedder", 2, timeout_s=30)
            failed = time.monotonic()
            time.sleep(0.5)
            loaded = models.loaded_versions(admin, "embedder")
    finally:
        backend.write_bytes(saved)
    assert load.failures == [], f"{len(load.failures)} failed, first: {load.failures[:1]}"
    assert load.mixed == 0
    assert loaded == (3,) and models.serving_versions("embedder") == (3,)
    assert all(v == "3" for t, v in load.records if t > failed)
    assert len(models.history("embedder")) == changes, "a failed promote was recorded"


@pytest.mark.triton
def test_check_contract_asks_every_replica_when_one_of_the_list_is_down(replicas) -> None:
    dead = f"127.0.0.1:{free_port()}"
    expected = contracts.embedder_config(dim=DIM, crop_size=CROP)
    with TritonClient(replicas.servers[1].grpc_url + "," + dead, timeout_s=3, retry=RetryPolicy(attempts=1)) as client:
        client.model_metadata("embedder")  # a balanced call: the live replica answers
        with pytest.raises(errors.ServerUnavailable, match=re.escape(dead)):
            client.check_contract(expected)


@pytest.mark.triton
def test_dns_name_serves_through_the_replicas_it_resolves_to_when_given_dns_scheme(replicas) -> None:
    port = replicas.servers[0].grpc_port
    with TritonClient(f"dns:///localhost:{port}", timeout_s=10) as client:
        assert client.options.endpoints() == (f"127.0.0.1:{port}",)
        result = client.infer("embedder", {"crops": np.zeros((1, SIZE, SIZE, 3), np.uint8)})
    assert result.outputs["embedding"].shape == (1, DIM)


def test_client_retries_stop_at_the_request_deadline_when_nothing_answers() -> None:
    dead = f"127.0.0.1:{free_port()}"
    options = ClientOptions(url=dead, timeout_s=0.3, retry=RetryPolicy(attempts=60, base_s=0.1, max_s=0.1))
    with TritonClient(options) as client:
        start = time.monotonic()
        with pytest.raises(errors.ServerUnavailable):
            client.infer("embedder", {"crops": np.zeros((1, SIZE, SIZE, 3), np.uint8)})
        took = time.monotonic() - start
    # 60 attempts would take ~3 s (jittered 0-0.1 s apart); the deadline stops them after ~0.3 s
    assert took < 1.5, f"retried for {took:.2f} s past a 0.3 s deadline"


def test_client_options_name_the_bad_entry_when_a_replica_list_has_one() -> None:
    with pytest.raises(errors.InvalidInputError, match=r"entry 2 of 3 \('127\.0\.0\.1'\) is malformed: it is not host:port"):
        ClientOptions(url="127.0.0.1:8001,127.0.0.1,127.0.0.1:8021")
    with pytest.raises(errors.InvalidInputError, match=r"entry 1 of 2 \('shop:8001'\).*dns:///"):
        ClientOptions(url="shop:8001,127.0.0.1:8011")
    assert ClientOptions(url="127.0.0.1:8001, 127.0.0.1:8011").endpoints() == ("127.0.0.1:8001", "127.0.0.1:8011")


@pytest.mark.triton
def test_replicas_stop_the_started_ones_and_name_the_failed_one_when_one_cannot_start(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=()),
                lambda p: projection_embedder(p, size=SIZE, dim=DIM))
    base = free_port()
    with socket.socket() as busy:  # the second replica's port is taken
        busy.bind(("127.0.0.1", base + REPLICA_PORT_STEP))
        busy.listen()
        group = TritonReplicas(ServerOptions(repo, grpc_port=base, work_dir=tmp_path / "t", exit_timeout_s=3), replicas=2)
        try:
            with pytest.raises(errors.ServerStartError, match=rf"replica 2 of 2 \(127\.0\.0\.1:{base + REPLICA_PORT_STEP}\).*in use"):
                group.start()
            assert group.dead() == group.servers, "the replica that started was left running"
        finally:
            group.stop()


@pytest.mark.triton
def test_serve_replicas_starts_two_and_sigint_stops_both(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=()),
                lambda p: projection_embedder(p, size=SIZE, dim=DIM))
    command = [sys.executable, "-m", "lookserve.cli", "serve", "-r", str(repo), "-m", "embedder", "--grpc-port", "0",
               "--replicas", "2", "--exit-timeout", "3"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LOOKSERVE_REPOSITORY_KEY": ""})
    lines: list[str] = []
    pids: list[int] = []
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "replicas ready; clients: --url" in line:
                break
        text = "".join(lines)
        match = re.search(r"--url (\S+)", text)
        assert match, text
        url = match.group(1)
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        assert len(pids) == 2 and len(url.split(",")) == 2, text
        # the one key of both replicas is found for the combined address
        listed = subprocess.run([sys.executable, "-m", "lookserve.cli", "models", "list", "-r", str(repo), "--url", url],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "LOOKSERVE_REPOSITORY_KEY": ""})
        assert listed.returncode == 0 and "loaded [1]" in listed.stdout, listed.stdout + listed.stderr
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text + out
        assert out.count("stopped (exit code 0)") == 2, out
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in pids:  # never leave a replica behind when a check above failed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
