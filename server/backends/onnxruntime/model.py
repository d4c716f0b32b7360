"""lookserve's python-based Triton backend named ``onnxruntime``.

Triton loads this file for every model whose config says ``backend: "onnxruntime"`` when the
backend directory has no native ``libtriton_onnxruntime.so`` (Triton's "Python-based backends"
feature). On the NGC container the same config loads Triton's native C++ onnxruntime backend.

It honours the model config as the native backend does, where it can:

* ``<version>/model.onnx`` (or ``default_model_filename``) is run with onnxruntime;
* ``max_batch_size`` + dynamic batching: all requests of one ``execute`` call are concatenated
  along the batch axis and run as one batch, then split back per request;
* ``instance_group`` kind: KIND_GPU uses CUDAExecutionProvider (and TensorRT when the config asks
  for the ``tensorrt`` GPU accelerator) if onnxruntime-gpu is installed, else the CPU;
* ``parameters``: ``intra_op_thread_count`` (default 1), ``inter_op_thread_count`` (default 1; a
  sequential graph uses one), ``allow_spinning`` (``1``: idle intra-op and inter-op threads spin, onnxruntime's own default;
  ``0``: they sleep; default ``0`` when ``intra_op_thread_count`` > 1, since served models share
  their cores with each other, the python stubs and gRPC), ``enable_mem_arena`` / ``graph_optimization_level``
  (``0``..``3``).

A KIND_GPU instance without CUDA (onnxruntime, not onnxruntime-gpu, or no device) runs on the
CPU and says so once in Triton's log (``KIND_GPU requested ... falling back to CPU``).

The hot path copies nothing it can avoid: inputs are read with ``as_numpy()`` (a view of the
request's shared memory) and cast only when the dtype differs; one request skips the grouping and
concatenation; outputs are passed on as onnxruntime returned them (contiguous, already the
config's dtype) without an ``astype``/``ascontiguousarray`` copy; what remains is the stub's own
transfer of each tensor into the response.

This module runs inside Triton's python backend stub, not in lookserve's process; it imports only
numpy, onnxruntime and ``triton_python_backend_utils``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

_GRAPH_LEVELS = {
    "0": "ORT_DISABLE_ALL",
    "1": "ORT_ENABLE_BASIC",
    "2": "ORT_ENABLE_EXTENDED",
    "3": "ORT_ENABLE_ALL",
}


def _log_warn(message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_warn(message)
    else:  # older python backends: the stub's stderr lands in Triton's log
        sys.stderr.write(message + "\n")


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    if value is None:
        return None
    return value.get("string_value") if isinstance(value, dict) else str(value)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        self.config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.version = args["model_version"]
        filename = self.config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(
                f"{self.model_name} version {self.version}: {filename} not found at {path}"
            )

        options = ort.SessionOptions()
        intra = _param(self.config, "intra_op_thread_count")
        inter = _param(self.config, "inter_op_thread_count")
        options.intra_op_num_threads = int(intra) if intra else 1
        options.inter_op_num_threads = int(inter) if inter else 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spinning = _param(self.config, "allow_spinning")
        if spinning is None and options.intra_op_num_threads > 1:
            # onnxruntime's default is to spin; served, the pool's idle threads then compete with
            # the other models, the python stubs and gRPC (bench/README.md, "Threads vs instances")
            spinning = "0"
        if spinning is not None:
            if spinning not in ("0", "1"):
                raise pb_utils.TritonModelException(
                    f"{self.model_name}: parameter allow_spinning must be \"0\" or \"1\", got {spinning!r}")
            for pool in ("intra_op", "inter_op"):
                options.add_session_config_entry(f"session.{pool}.allow_spinning", spinning)
        level = _param(self.config, "graph_optimization_level")
        if level in _GRAPH_LEVELS:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[level])
        if _param(self.config, "enable_mem_arena") == "0":
            options.enable_cpu_mem_arena = False

        providers = self._providers(args, ort.get_available_providers())
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.batching = int(self.config.get("max_batch_size", 0)) > 0

        onnx_inputs = {i.name: i for i in self.session.get_inputs()}
        self.inputs = []
        for spec in self.config["input"]:
            if spec["name"] not in onnx_inputs:
                raise pb_utils.TritonModelException(
                    f"{self.model_name}: config input {spec['name']!r} is not an input of {filename} "
                    f"(it has {sorted(onnx_inputs)})"
                )
            self.inputs.append((spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"])))
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        self.outputs = []
        for spec in self.config["output"]:
            if spec["name"] not in onnx_outputs:
                raise pb_utils.TritonModelException(
                    f"{self.model_name}: config output {spec['name']!r} is not an output of {filename} "
                    f"(it has {sorted(onnx_outputs)})"
                )
            self.outputs.append((spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"])))
        self.output_names = [name for name, _ in self.outputs]

    def _providers(self, args: dict, available: list[str]) -> list:
        kind = args.get("model_instance_kind", "CPU")
        if kind != "GPU":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in available:
            import onnxruntime as ort

            _log_warn(f"{self.model_name} v{self.version}: KIND_GPU requested but onnxruntime {ort.__version__} has "
                      f"no CUDAExecutionProvider (providers: {', '.join(available)}); falling back to CPU "
                      f"(install lookserve[gpu], i.e. onnxruntime-gpu, on a CUDA machine)")
            return ["CPUExecutionProvider"]
        device = int(args.get("model_instance_device_id", 0))
        providers: list = []
        accelerators = (
            self.config.get("optimization", {})
            .get("execution_accelerators", {})
            .get("gpu_execution_accelerator", [])
        )
        for acc in accelerators:
            if acc.get("name") == "tensorrt" and "TensorrtExecutionProvider" in available:
                params = acc.get("parameters", {})
                providers.append(
                    (
                        "TensorrtExecutionProvider",
                        {
                            "device_id": device,
                            "trt_fp16_enable": params.get("precision_mode") == "FP16",
                            "trt_max_workspace_size": int(params.get("max_workspace_size_bytes", 1 << 30)),
                        },
                    )
                )
        providers.append(("CUDAExecutionProvider", {"device_id": device}))
        providers.append("CPUExecutionProvider")
        return providers

    def _read(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            array = tensor.as_numpy()  # a view of the request's shared memory, no copy
            feeds[name] = array if array.dtype == dtype else array.astype(dtype)
        return feeds

    def _respond(self, results: list[np.ndarray]):
        tensors = []
        for (name, dtype), value in zip(self.outputs, results, strict=True):
            if value.dtype != dtype:
                value = value.astype(dtype)
            if not value.flags.c_contiguous:
                value = np.ascontiguousarray(value)
            tensors.append(pb_utils.Tensor(name, value))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        if len(requests) == 1:  # the common case at low load: no grouping, no concatenation
            request = requests[0]
            try:
                feeds = self._read(request)
            except Exception as e:  # noqa: BLE001 - the request's error
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))]
            try:
                return [self._respond(self.session.run(self.output_names, feeds))]
            except Exception as e:  # noqa: BLE001 - reported to the client as the request's error
                return [pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.model_name} v{self.version}: onnxruntime failed: {e}"))]
        feeds_per_request = []
        responses: list = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                feeds_per_request.append((i, self._read(request)))
            except Exception as e:  # noqa: BLE001 - every failure becomes that request's error
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))

        # One onnxruntime run for all requests whose non-batch shapes agree (dynamic batching).
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, feeds in feeds_per_request:
            key = tuple((n, feeds[n].shape[1:] if self.batching else feeds[n].shape) for n, _ in self.inputs)
            groups.setdefault(key, []).append((i, feeds))
        for members in groups.values():
            try:
                if self.batching and len(members) > 1:
                    sizes = [feeds[self.inputs[0][0]].shape[0] for _, feeds in members]
                    merged = {
                        n: np.concatenate([feeds[n] for _, feeds in members], axis=0) for n, _ in self.inputs
                    }
                    outputs = self.session.run(self.output_names, merged)
                    splits = np.cumsum(sizes)[:-1]
                    per_output = [np.split(o, splits, axis=0) for o in outputs]
                    for k, (i, _) in enumerate(members):
                        responses[i] = self._respond([parts[k] for parts in per_output])
                else:
                    for i, feeds in members:
                        responses[i] = self._respond(self.session.run(self.output_names, feeds))
            except Exception as e:  # noqa: BLE001 - reported to the client as the request's error
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{self.model_name} v{self.version}: onnxruntime failed: {e}")
                    )
        return responses

    def finalize(self) -> None:
        self.session = None
