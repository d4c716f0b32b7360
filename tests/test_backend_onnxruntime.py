"""lookserve's python-based ``onnxruntime`` backend on a real tritonserver (tiny models)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from lookserve import contracts
from lookserve.client.core import TritonClient
from lookserve.modelconfig import DynamicBatching, InstanceGroup
from lookserve.server.launcher import cuda_devices_visible
from tinymodels import projection_embedder, run_onnx, write_model

BACKEND = Path(__file__).parents[1] / "server" / "backends" / "onnxruntime" / "model.py"


def _crops(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)


@pytest.mark.triton
def test_server_serves_gpu_variant_from_cpu_config_and_logs_the_fallback_when_no_gpu(
        tmp_path: Path, triton_factory, caplog) -> None:
    """``--model-config-name gpu`` (KIND_GPU) on a machine without a GPU: Triton would refuse the
    model; the launcher falls back to config.pbtxt and says so, and the model answers."""

    if cuda_devices_visible():
        pytest.skip("this machine has a GPU: the test is about one without")
    base = contracts.embedder_config()
    model_dir = write_model(tmp_path / "repo", base, projection_embedder)
    contracts.gpu_variant(base, tensorrt_fp16=False).write(model_dir / "configs" / "gpu.pbtxt")
    with caplog.at_level(logging.WARNING, logger="lookserve.server.launcher"):
        server = triton_factory(tmp_path / "repo", models=["embedder"], model_config_name="gpu")
    assert "asks for KIND_GPU (embedder) but no GPU is visible" in caplog.text
    assert "falling back to each model's config.pbtxt (CPU)" in caplog.text
    crops = _crops(2, 0)
    with TritonClient(server.grpc_url) as client:
        client.wait_model_ready("embedder", deadline_s=60)
        got = client.infer("embedder", {"crops": crops}, outputs=["embedding"]).outputs["embedding"]
    np.testing.assert_allclose(got, run_onnx(model_dir / "1" / "model.onnx", {"crops": crops})[0], atol=1e-5)


class _TritonModelException(Exception):
    pass


def _backend_module(monkeypatch, warnings: list[str]) -> types.ModuleType:
    """The backend's ``model.py`` loaded outside Triton, beside a stand-in ``triton_python_backend_utils``
    (what it needs of it: the logger, the exception, the config dtype names)."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Logger = types.SimpleNamespace(log_warn=warnings.append)
    fake.TritonModelException = _TritonModelException
    fake.triton_string_to_numpy = lambda name: np.dtype(name.removeprefix("TYPE_").lower().replace("fp", "float"))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("lookserve_backend_under_test", BACKEND)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _initialized(module: types.ModuleType, model_dir: Path, parameters: dict[str, str]):
    """``initialize`` as Triton calls it: the model config as Triton's JSON (proto field names)."""
    config = replace(contracts.embedder_config(), parameters=parameters)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(config.to_proto(), preserving_proto_field_name=True),
                      "model_name": "embedder", "model_version": "1", "model_repository": str(model_dir),
                      "model_instance_kind": "CPU"})
    return model


def test_backend_session_gets_threads_and_spinning_from_config_parameters_when_given(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """The config's ``parameters`` reach the onnxruntime session itself (its options, read back from
    the live session): thread counts, ``allow_spinning`` for both the intra- and inter-op pools, and
    idle threads sleeping by default when there are several intra-op threads."""
    module = _backend_module(monkeypatch, [])
    model_dir = write_model(tmp_path / "repo", contracts.embedder_config(), projection_embedder)
    for spinning in ("0", "1"):
        model = _initialized(module, model_dir, {"intra_op_thread_count": "2", "inter_op_thread_count": "1",
                                                 "allow_spinning": spinning})
        options = model.session.get_session_options()
        assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == spinning
    crops = _crops(2, 0)
    np.testing.assert_allclose(model.session.run(None, {"crops": crops})[0],
                               run_onnx(model_dir / "1" / "model.onnx", {"crops": crops})[0], atol=1e-6)
    options = _initialized(module, model_dir, {"intra_op_thread_count": "2"}).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # sleeping is the default
    with pytest.raises(RuntimeError, match="does not have configuration"):  # one thread: onnxruntime's own default
        _initialized(module, model_dir, {"intra_op_thread_count": "1"}).session.get_session_options() \
            .get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(_TritonModelException, match=r"allow_spinning must be \"0\" or \"1\", got 'off'"):
        _initialized(module, model_dir, {"allow_spinning": "off"})


def test_backend_picks_cpu_and_logs_why_when_kind_gpu_but_onnxruntime_has_no_cuda(monkeypatch) -> None:
    """The backend's own fallback (a GPU machine with onnxruntime instead of onnxruntime-gpu): a
    provider choice inside Triton's stub, checked with a stand-in ``triton_python_backend_utils``
    (Triton cannot run a KIND_GPU instance on a machine without a GPU to show it)."""
    warnings: list[str] = []
    module = _backend_module(monkeypatch, warnings)
    model = module.TritonPythonModel()
    model.config, model.model_name, model.version = {}, "embedder", "1"
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "0"}
    assert model._providers(gpu, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert len(warnings) == 1 and "KIND_GPU requested but onnxruntime" in warnings[0]
    assert "falling back to CPU" in warnings[0] and "lookserve[gpu]" in warnings[0]
    with_cuda = model._providers(gpu, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert with_cuda[0] == ("CUDAExecutionProvider", {"device_id": 0}) and len(warnings) == 1
    assert model._providers({"model_instance_kind": "CPU"}, ["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.triton
def test_backend_answers_each_request_as_onnxruntime_does_when_requests_are_batched_or_single(
        tmp_path: Path, triton_factory) -> None:
    """Concurrent requests of 1 and 3 rows (batched together by a 20 ms queue delay) and a lone
    request (the single-request fast path) each get exactly their own rows' embeddings."""

    config = replace(contracts.embedder_config(), dynamic_batching=DynamicBatching(20_000),
                     instance_groups=(InstanceGroup("KIND_CPU", 1),), parameters={"allow_spinning": "0"})
    model_dir = write_model(tmp_path / "repo", config, projection_embedder)
    server = triton_factory(tmp_path / "repo", models=["embedder"])
    batches = [_crops(1 + 2 * (i % 2), seed=i) for i in range(8)]
    want = [run_onnx(model_dir / "1" / "model.onnx", {"crops": b})[0] for b in batches]
    with TritonClient(server.grpc_url) as client:
        client.wait_model_ready("embedder", deadline_s=60)
        lone = client.infer("embedder", {"crops": batches[0]}, outputs=["embedding"]).outputs["embedding"]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda b: client.infer("embedder", {"crops": b}, outputs=["embedding"]).outputs["embedding"],
                                batches))
        stats = client.statistics("embedder")["model_stats"][0]
    np.testing.assert_allclose(lone, want[0], atol=1e-5)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)
    executions = int(stats["execution_count"])
    inferences = int(stats["inference_stats"]["success"]["count"])
    assert executions < inferences, f"no request was batched ({executions} executions for {inferences} requests)"
