"""Server faults on real Triton: SIGKILL under load, restart, a crashed backend stub, TLS."""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lookserve import contracts, errors
from lookserve.client.core import ClientOptions, RetryPolicy, TritonClient
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.server.watchdog import StubWatchdog, stubs_of
from tinymodels import projection_embedder, write_model

pytestmark = pytest.mark.triton
SIZE = 16


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    config = replace(contracts.embedder_config(dim=8, crop_size=SIZE), warmup=())
    write_model(repo, config, lambda p: projection_embedder(p, size=SIZE, dim=8))
    return repo


def _crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)


def test_clients_fail_fast_when_triton_is_killed_and_recover_without_recreation_when_it_restarts(
    tmp_path: Path, triton_factory
) -> None:
    server = triton_factory(_repo(tmp_path), models=["embedder"])
    timeout_s = 2.0
    options = ClientOptions(url=server.grpc_url, timeout_s=timeout_s, retry=RetryPolicy(attempts=3, base_s=0.05, max_s=0.2))
    outcomes: list[tuple[float, float, str]] = []  # (start, duration, outcome)
    stop = threading.Event()

    def load(client: TritonClient) -> None:
        end = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < end:
            start = time.monotonic()
            try:
                client.infer("embedder", {"crops": _crops()})
                outcomes.append((start, time.monotonic() - start, "ok"))
            except errors.LookserveError as e:
                outcomes.append((start, time.monotonic() - start, type(e).__name__))
                time.sleep(0.05)

    clients = [TritonClient(options) for _ in range(3)]
    threads = [threading.Thread(target=load, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    time.sleep(0.5)
    killed_at = time.monotonic()
    server.kill()
    time.sleep(1.5)
    restarted_at = time.monotonic()
    server.start()  # same ports, same repository
    for c in clients:
        c.wait_ready(30)
    ready_at = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()

    during = [o for o in outcomes if killed_at + 0.1 < o[0] < restarted_at]
    after = [o for o in outcomes if o[0] > ready_at]
    assert during and all(kind == "ServerUnavailable" for _, _, kind in during), during[:5]
    # no hang: each failing call returned within its deadline plus the bounded retries
    assert max(d for _, d, _ in during) < timeout_s * 3 + 1
    assert after and all(kind == "ok" for _, _, kind in after), after[:5]


def test_watchdog_reloads_a_model_when_its_python_backend_stub_dies(tmp_path: Path, triton_factory) -> None:
    import psutil

    # a model whose stub died cannot drain: keep the exit timeout short
    server = triton_factory(_repo(tmp_path), models=["embedder"], exit_timeout_s=2)
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
        with StubWatchdog(server.pid, admin, interval_s=0.5) as watchdog:
            (stub,) = stubs_of(server.pid).values()
            assert stub.model == "embedder" and stub.version == "1"
            psutil.Process(stub.pid).kill()
            with pytest.raises(errors.InternalServerError):
                admin.infer("embedder", {"crops": _crops()})
            deadline = time.monotonic() + 30
            while "embedder" not in watchdog.healed and time.monotonic() < deadline:
                time.sleep(0.2)
        assert watchdog.healed == ["embedder"]
        assert admin.infer("embedder", {"crops": _crops()}).outputs["embedding"].shape == (1, 8)
        assert stub.pid not in stubs_of(server.pid)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_client_talks_to_tls_server_and_plaintext_client_is_refused_when_tls_is_on(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    options = ServerOptions(_repo(tmp_path), grpc_port=0, load_models=("embedder",), work_dir=tmp_path / "w",
                            ssl_cert=cert, ssl_key=key, exit_timeout_s=5)
    with TritonServer(options) as server:
        secure = ClientOptions(url=server.grpc_url, ssl=True, root_certificates=str(cert), timeout_s=10)
        with TritonClient(secure) as client:
            assert client.infer("embedder", {"crops": _crops()}).outputs["embedding"].shape == (1, 8)
        plain = ClientOptions(url=server.grpc_url, timeout_s=2, retry=RetryPolicy(attempts=1))
        with TritonClient(plain) as client, pytest.raises(errors.ServerUnavailable):
            client.infer("embedder", {"crops": _crops()})
