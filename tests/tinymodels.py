"""Tiny ONNX models built with onnx's helper API (no TensorFlow), and repository writers.

They honour lookserve's tensor contracts with cheap, deterministic graphs, so serving tests can
compare Triton's answers with onnxruntime's run on the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lookserve.export.core import export_function
from lookserve.modelconfig import ModelConfig


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def projection_embedder(path: Path, size: int = 224, dim: int = 128, seed: int = 0, input_name: str = "crops",
                        output_name: str = "embedding", input_type: int = TensorProto.UINT8) -> Path:
    """embedding = l2norm(mean-pool-4x4(x/255) @ W): a fixed random projection of pooled pixels."""
    rng = np.random.default_rng(seed)
    cells = 4
    w = rng.normal(size=(cells * cells * 3, dim)).astype(np.float32)
    k = size // cells
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "c255"], ["xn"]),
        helper.make_node("Transpose", ["xn"], ["xc"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["xc"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["proj"]),
        helper.make_node("ReduceL2", ["proj"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["safe"]),
        helper.make_node("Div", ["proj", "safe"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "projection_embedder",
        [helper.make_tensor_value_info(input_name, input_type, [None, size, size, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, dim])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
            numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
        ],
    )
    return _save(graph, path)


def write_model(repository: Path, config: ModelConfig, onnx_path_builder, version: int = 1) -> Path:
    """Write ``<repository>/<name>/<version>/model.onnx`` and ``config.pbtxt``; returns the model dir."""
    model_dir = repository / config.name
    onnx_path_builder(model_dir / str(version) / "model.onnx")
    config.write(model_dir / "config.pbtxt")
    return model_dir


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort  # noqa: PLC0415 - heavy, lazy as everywhere (TID253 is off here for onnx)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def gated_export(onnx_path: Path, repository: Path, name: str = "embedder", version: int = 1,
                 reference_path: Path | None = None, kind: str | None = "embedder", source: dict | None = None):
    """Run ``onnx_path`` through lookserve's real export path and parity gate (no TensorFlow: the
    source is onnxruntime on ``reference_path``, default the same file) into ``repository``;
    returns the :class:`~lookserve.export.core.ExportResult` (its export.json records the gate)."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy, lazy as everywhere (TID253 is off here for onnx)


    session = ort.InferenceSession(str(reference_path or onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def reference(feeds):
        return dict(zip(names, session.run(None, feeds), strict=True))

    return export_function(None, name, repository, version, proto=onnx.load(str(onnx_path)), reference=reference,
                           kind=kind, source=source)
