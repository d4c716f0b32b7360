"""Access control on real Triton: the gRPC port listens on loopback only, and every restricted
protocol (model-repository, shared-memory, logging, trace) refuses calls without the key."""

from __future__ import annotations

import socket
from dataclasses import replace

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lookserve import contracts
from lookserve.keys import RESTRICTED_HEADER
from lookserve.server.launcher import ServerOptions, TritonServer
from tinymodels import projection_embedder, write_model

pytestmark = pytest.mark.triton


def _non_loopback_ipv4() -> str | None:
    """An address of this host that is not 127.0.0.0/8 (the one used to reach other hosts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_triton_listens_on_loopback_only_when_started_with_defaults(served) -> None:
    host, port = served.grpc_url.rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
        pass  # reachable on loopback
    other = _non_loopback_ipv4()
    if other is None:
        pytest.skip("this host has no non-loopback IPv4 address to probe")
    with pytest.raises(OSError), socket.create_connection((other, int(port)), timeout=2):
        pass  # refused on the host's network address


CALLS = {
    "model-repository": lambda c, h: c.get_model_repository_index(headers=h),
    "shared-memory": lambda c, h: c.get_system_shared_memory_status(headers=h),
    "logging": lambda c, h: c.get_log_settings(headers=h),
    "trace": lambda c, h: c.get_trace_settings(headers=h),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server, started with the default host, for every case here."""

    tmp = tmp_path_factory.mktemp("access")
    write_model(tmp / "repo", replace(contracts.embedder_config(dim=8, crop_size=16), warmup=()),
                lambda p: projection_embedder(p, size=16, dim=8))
    with TritonServer(ServerOptions(tmp / "repo", grpc_port=0, load_models=("embedder",), work_dir=tmp / "w",
                                    exit_timeout_s=5)) as server:
        yield server


@pytest.mark.parametrize("protocol", sorted(CALLS))
def test_restricted_protocol_refuses_without_the_key_and_answers_with_it(served, protocol: str) -> None:
    call = CALLS[protocol]
    client = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        for headers in (None, {RESTRICTED_HEADER: "not-the-key"}):
            with pytest.raises(InferenceServerException) as caught:
                call(client, headers)
            assert caught.value.status() == str(grpc.StatusCode.UNAVAILABLE)
            assert "restricted" in caught.value.message().lower() or "protocol" in caught.value.message().lower()
        assert call(client, {RESTRICTED_HEADER: served.repository_key}) is not None
        # inference and health stay open to everyone
        assert client.is_server_live() and client.is_model_ready("embedder")
    finally:
        client.close()
