"""The part of :class:`~lookserve.client.core.TritonClient` the look and thumbnail chains use,
over Triton's Business Logic Scripting: a pipeline model calls ``detector``, ``embedder`` and
``view_classifier`` in the same server, with no network hop and no serialisation of tensors.

Runs only inside Triton's python stub (it imports ``triton_python_backend_utils``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from lookserve.client.core import InferResult, ModelMetadata
from lookserve.modelconfig import ModelConfig
from lookserve.server.pipelines.repository import (
    error_from_message,
    latest_version,
    metadata_from_config,
    read_config,
)


class BlsClient:
    """``model_metadata``, ``model_config`` and ``infer`` as the chains call them, thread-safe.

    A request without a version is pinned to the latest version on disk, so every answer names
    the version that computed it (BLS responses do not say), as a gRPC answer does."""

    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)
        self._configs: dict[str, ModelConfig] = {}
        self._lock = threading.Lock()

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        with self._lock:
            if name not in self._configs:
                self._configs[name] = read_config(self.repository, name)
            return self._configs[name]

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        return metadata_from_config(self.model_config(name, version))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
              version: str = "", timeout_s: float | None = None) -> InferResult:
        names = list(outputs) if outputs else [t.name for t in self.model_config(model).outputs]
        version = str(version) if version else latest_version(self.repository, model)
        request = pb_utils.InferenceRequest(
            model_name=model,
            model_version=int(version),
            requested_output_names=names,
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in inputs.items()],
        )
        response = request.exec()
        if response.has_error():
            raise error_from_message(f"inference on {model!r} version {version}", response.error().message())
        got = {}
        for n in names:
            tensor = pb_utils.get_output_tensor_by_name(response, n)
            if tensor is None:
                raise error_from_message(f"inference on {model!r} version {version}", f"output {n!r} is missing")
            got[n] = np.array(tensor.as_numpy(), copy=True)
        return InferResult(model, version, got)
