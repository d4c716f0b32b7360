"""The client core against real Triton: error mapping, contracts, retries, asyncio twin."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from lookserve import contracts, errors
from lookserve.client.core import (
    AsyncTritonClient,
    ClientOptions,
    RetryPolicy,
    TritonClient,
    map_error,
    status_code,
)
from lookserve.server.launcher import ServerOptions, TritonServer, free_port
from tinymodels import projection_embedder, write_model

SIZE = 32


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the read-only tests of this module."""

    tmp = tmp_path_factory.mktemp("client")
    config = replace(contracts.embedder_config(dim=16, crop_size=SIZE), warmup=())
    write_model(tmp / "repo", config, lambda p: projection_embedder(p, size=SIZE, dim=16))
    server = TritonServer(ServerOptions(tmp / "repo", grpc_port=0, load_models=("embedder",), work_dir=tmp / "w"))
    with server:
        yield server, config


def _crops(n: int = 2, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3)).astype(dtype)


@pytest.mark.triton
@pytest.mark.parametrize(
    ("model", "inputs", "error", "fragment"),
    [
        ("embedder", {"crops": _crops(dtype=np.float32)}, errors.InvalidRequest, "data-type"),
        ("embedder", {"crops": _crops()[:, :7]}, errors.InvalidRequest, "shape"),
        ("embedder", {"pixels": _crops()}, errors.InvalidRequest, "pixels"),
        ("no_such_model", {"crops": _crops()}, errors.ModelNotFound, "no_such_model"),
    ],
)
def test_client_raises_mapped_error_when_request_is_wrong(served, model, inputs, error, fragment) -> None:
    server, _ = served
    with TritonClient(server.grpc_url) as client, pytest.raises(error, match=fragment) as caught:
        client.infer(model, inputs)
    assert isinstance(caught.value.__cause__, InferenceServerException)  # raised from the gRPC error


@pytest.mark.triton
def test_client_accepts_contract_when_served_model_matches(served) -> None:
    server, config = served
    with TritonClient(server.grpc_url) as client:
        meta = client.check_contract(config)
        assert meta.inputs[0].shape == (-1, SIZE, SIZE, 3)


@pytest.mark.triton
def test_client_names_every_difference_when_contract_does_not_match(served) -> None:
    server, config = served
    expected = contracts.embedder_config(dim=128, crop_size=224)
    with TritonClient(server.grpc_url) as client, pytest.raises(errors.ContractMismatch) as caught:
        client.check_contract(expected)
    message = str(caught.value)
    assert "input 'crops' has shape [-1, 32, 32, 3], expected [-1, 224, 224, 3]" in message
    assert "output 'embedding' has shape [-1, 16], expected [-1, 128]" in message


@pytest.mark.triton
def test_client_reports_deadline_exceeded_when_deadline_is_too_short(served) -> None:
    server, _ = served
    with TritonClient(server.grpc_url) as client, pytest.raises(errors.DeadlineExceeded):
        client.infer("embedder", {"crops": _crops(8)}, timeout_s=1e-6)


@pytest.mark.triton
def test_async_client_returns_same_answers_as_sync_when_requests_run_concurrently(served) -> None:
    server, _ = served
    crops = _crops(1)
    with TritonClient(server.grpc_url) as client:
        expected = client.infer("embedder", {"crops": crops}).outputs["embedding"]

    async def main():
        async with AsyncTritonClient(server.grpc_url) as client:
            await client.wait_ready(10)
            return await asyncio.gather(*(client.infer("embedder", {"crops": crops}) for _ in range(6)))

    results = asyncio.run(main())
    assert [r.model_version for r in results] == ["1"] * 6
    for r in results:
        np.testing.assert_array_equal(r.outputs["embedding"], expected)


def test_client_gives_up_with_server_unavailable_after_bounded_retries_when_nothing_listens() -> None:
    options = ClientOptions(url=f"127.0.0.1:{free_port()}", timeout_s=1.0, retry=RetryPolicy(attempts=3, base_s=0.01))
    start = time.monotonic()
    with TritonClient(options) as client, pytest.raises(errors.ServerUnavailable, match="lookserve serve"):
        client.infer("embedder", {"crops": _crops(1)})
    assert time.monotonic() - start < 10


def test_client_options_repr_hides_the_repository_key_when_printed() -> None:
    assert "hunter2" not in repr(ClientOptions(repository_key="hunter2"))


def test_status_code_reads_the_grpc_enum_when_tritonclient_wraps_the_error() -> None:
    error = InferenceServerException("nope", status="StatusCode.NOT_FOUND")
    assert status_code(error) is grpc.StatusCode.NOT_FOUND
    assert isinstance(map_error(error, "x"), errors.ModelNotFound)


def test_retry_policy_delays_grow_and_stay_bounded_when_attempts_increase() -> None:
    policy = RetryPolicy(attempts=5, base_s=0.1, max_s=0.5)
    rng = random.Random(0)
    delays = [max(policy.delay(a, rng) for _ in range(200)) for a in range(5)]
    assert all(d <= 0.5 for d in delays)
    assert delays[0] <= 0.1 < delays[2]


@pytest.mark.parametrize(("url", "fragment"), [
    ("http://127.0.0.1:8001", "it has a scheme (http://); gRPC wants host:port"),
    ("grpc://127.0.0.1:8001", "it has a scheme (grpc://)"),
    ("127.0.0.1:8001/v2", "it has a path"),
    ("127.0.0.1", "it is not host:port"),
    (":8001", "it is not host:port"),
    ("127.0.0.1:99999", "its port '99999' is not a number from 1 to 65535"),
    ("127.0.0.1:http", "its port 'http' is not a number"),
], ids=["http-scheme", "grpc-scheme", "path", "no-port", "no-host", "port-range", "port-text"])
def test_client_refuses_a_malformed_url_at_construction_when_it_is_not_host_port(url: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidInputError, match="is malformed") as caught:
        TritonClient(url)
    assert fragment in str(caught.value)


def test_client_accepts_host_port_urls_when_well_formed() -> None:
    for url in ("127.0.0.1:8001", "localhost:1", "[::1]:8001", "triton.internal:65535"):
        assert ClientOptions(url=url).url == url


def test_wait_ready_fails_in_about_a_second_naming_the_address_when_nothing_listens() -> None:
    url = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with TritonClient(url) as client, pytest.raises(errors.ServerUnavailable, match=f"nothing answers at {url}"):
        client.wait_ready(deadline_s=30)
    assert time.monotonic() - start < 5  # the grace is 1 s; the 30 s deadline is for a server that answers


def test_async_wait_ready_fails_in_about_a_second_when_nothing_listens() -> None:
    url = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        async with AsyncTritonClient(url) as client:
            await client.wait_ready(deadline_s=30)

    start = time.monotonic()
    with pytest.raises(errors.ServerUnavailable, match="nothing answers"):
        asyncio.run(main())
    assert time.monotonic() - start < 5
