"""Real tritonserver (from the nvidia-pytriton wheel) serving ONNX through lookserve's backend."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookserve import contracts
from lookserve.client.core import TritonClient
from lookserve.errors import PermissionDenied, ServerStartError
from lookserve.modelconfig import DynamicBatching, ModelConfig, TensorSpec
from lookserve.server.launcher import ServerOptions, TritonServer, log_errors
from tinymodels import projection_embedder, run_onnx, write_model

pytestmark = pytest.mark.triton

SIZE = 32


def _config(**changes) -> ModelConfig:
    config = replace(contracts.embedder_config(dim=16, crop_size=SIZE), warmup=())
    return replace(config, **changes)


def _repo(tmp_path: Path, config: ModelConfig | None = None) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, config or _config(), lambda p: projection_embedder(p, size=SIZE, dim=16))
    return repo


def test_server_answers_equal_onnxruntime_when_serving_a_model(tmp_path: Path, triton_factory, rng) -> None:
    repo = _repo(tmp_path)
    server = triton_factory(repo, models=["embedder"])
    crops = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    with TritonClient(server.grpc_url) as client:
        result = client.infer("embedder", {"crops": crops})
    (expected,) = run_onnx(repo / "embedder" / "1" / "model.onnx", {"crops": crops})
    assert result.model_version == "1"
    np.testing.assert_array_equal(result.outputs["embedding"], expected)


def test_server_merges_concurrent_requests_when_dynamic_batching_is_on(tmp_path: Path, triton_factory, rng) -> None:
    config = _config(dynamic_batching=DynamicBatching(max_queue_delay_microseconds=200_000))
    server = triton_factory(_repo(tmp_path, config), models=["embedder"])
    crops = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    with TritonClient(server.grpc_url) as client:
        threads = [threading.Thread(target=client.infer, args=("embedder", {"crops": crops})) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stats = client.statistics("embedder")["model_stats"][0]
    assert int(stats["inference_count"]) == 8
    assert int(stats["execution_count"]) < 8, stats  # fewer model runs than requests: batched
    assert max(int(b["batch_size"]) for b in stats["batch_stats"]) > 1


def test_server_refuses_repository_calls_when_key_is_missing_and_accepts_them_with_it(
    tmp_path: Path, triton_factory
) -> None:
    server = triton_factory(_repo(tmp_path), models=["embedder"])
    with TritonClient(server.grpc_url) as anonymous, pytest.raises(PermissionDenied, match="restricts"):
        anonymous.repository_index()
    with TritonClient(server.grpc_url, repository_key="wrong") as wrong, pytest.raises(PermissionDenied):
        wrong.unload_model("embedder")
    with TritonClient(server.grpc_url, repository_key=server.repository_key) as admin:
        admin.unload_model("embedder")
        admin.load_model("embedder")
        admin.wait_model_ready("embedder", deadline_s=30)
        assert {m["name"] for m in admin.repository_index()} == {"embedder"}


def test_server_finishes_inflight_requests_when_sent_sigterm(tmp_path: Path, triton_factory, rng) -> None:
    # A long queue delay keeps requests in flight while the server is told to stop.
    config = _config(dynamic_batching=DynamicBatching(max_queue_delay_microseconds=1_500_000, preferred_batch_sizes=(32,)))
    server = triton_factory(_repo(tmp_path, config), models=["embedder"])
    crops = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    results: list = []
    failures: list = []

    def send(client: TritonClient) -> None:
        try:
            results.append(client.infer("embedder", {"crops": crops}, timeout_s=20))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            failures.append(e)

    with TritonClient(server.grpc_url) as client:
        threads = [threading.Thread(target=send, args=(client,)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # requests are queued in the dynamic batcher now
        code = server.stop(timeout_s=30)
        for t in threads:
            t.join(30)
    assert failures == []
    assert len(results) == 4
    assert code == 0


def test_server_start_fails_naming_tritons_cause_from_its_log_when_a_model_cannot_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = ModelConfig("broken", (TensorSpec("x", "UINT8", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    config.write(repo / "broken" / "config.pbtxt")
    (repo / "broken" / "1").mkdir()
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = TritonServer(
        ServerOptions(repo, grpc_port=0, load_models=("broken",), work_dir=tmp_path / "w", ready_timeout_s=60)
    )
    with pytest.raises(ServerStartError, match="during start-up: .*failed to load 'broken' version 1: .*INVALID_PROTOBUF"):
        server.start()  # the cause is read from Triton's log
    assert not server.is_alive()


def test_server_start_refuses_without_starting_triton_when_the_grpc_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(ServerOptions(tmp_path, grpc_port=port, work_dir=tmp_path / "w"))
        with pytest.raises(ServerStartError, match=f"gRPC port 127.0.0.1:{port} is already in use"):
            server.start()
    assert server.pid is None  # refused before any process was started


def test_server_start_fails_with_tritons_cause_when_another_server_answers_on_its_port(
    tmp_path: Path, triton_factory, monkeypatch
) -> None:
    first = triton_factory(_repo(tmp_path), models=["embedder"])
    # Past the port check (as in a race with another process): the other server answers the
    # readiness probe at once, but only the child's own readiness counts.
    monkeypatch.setattr("lookserve.server.launcher.check_port_free", lambda *a, **k: None)
    second = TritonServer(ServerOptions(tmp_path / "repo", grpc_port=first.grpc_port, work_dir=tmp_path / "w2",
                                        ready_timeout_s=60))
    with pytest.raises(ServerStartError, match="exited with code 1 during start-up: .*Address already in use"):
        second.start()
    assert first.is_alive()


def test_server_stop_removes_its_temp_work_dir_when_triton_exits_cleanly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = TritonServer(ServerOptions(_repo(tmp_path), grpc_port=0, load_models=("embedder",), exit_timeout_s=5))
    server.start()
    assert (server.work_dir / "backends").is_dir()
    assert server.stop() == 0
    assert not server.work_dir.exists()


def test_log_errors_gives_each_error_message_first_line_unquoted_without_gpu_noise_when_parsing_a_log() -> None:
    text = (
        "I1201 20:20:13.000001 77 server.cc:1] started\n"
        'E1201 20:20:13.000002 77 pinned_memory_manager.cc:1] "CudaDriverHelper has not been initialized."\n'
        'E1201 20:20:13.000003 77 model_lifecycle.cc:1] "failed to load \'m\' version 1: bad\\n\\nAt:\\n  x.py(1)"\n'
        "E1201 20:20:13.000004 77 main.cc:1] UNKNOWN:Address already in use\n"
    )
    assert log_errors(text) == ["failed to load 'm' version 1: bad", "UNKNOWN:Address already in use"]


def test_server_command_binds_loopback_and_hides_the_key_when_logged(tmp_path: Path) -> None:
    server = TritonServer(ServerOptions(tmp_path, grpc_port=0, repository_key="s3cret-key"))
    command = server.command()
    assert "--grpc-address=127.0.0.1" in command
    assert "--allow-http=false" in command
    assert "--model-control-mode=explicit" in command
    assert any(a.startswith("--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:") for a in command)
    assert "s3cret-key" not in " ".join(server._redacted(command))
