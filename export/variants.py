"""Reduced-precision variants of an exported graph, each published as its own version.

* ``fp16`` (for GPUs): weights and activations in float16, inputs and outputs kept as in the
  contract (UINT8 in, FP32 out), with onnxruntime's own converter
  (``onnxruntime.transformers.float16``, the same code as ``onnxconverter-common``). Ops that
  have no float16 kernel or lose too much (NMS, crop-and-resize, top-k, resize, range) stay
  in float32.
* ``int8`` (for CPUs): dynamic quantization of MatMul/Gemm/Conv weights with
  ``onnxruntime.quantization.quantize_dynamic`` (activations quantized on the fly).

Both pass through the same parity gate as the FP32 export, with the looser limits of
:data:`lookserve.export.parity.VARIANT_TOLERANCES`; the measured figures go into export.json.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from lookserve.errors import ExportError

log = logging.getLogger(__name__)

#: ops kept in float32 in the fp16 variant (besides the converter's own default list)
FP16_KEEP_FP32 = (
    "NonMaxSuppression", "CropAndResize", "RoiAlign", "TopK", "Range", "ScatterND", "GatherND",
    "Gather", "Where", "ReduceSum", "ReduceMean", "ReduceL2", "Softmax", "Sigmoid", "Exp", "Log", "Div",
    "LpNormalization",
)


def to_fp16(proto):
    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as e:
        raise ExportError(f"the fp16 variant needs onnxruntime.transformers.float16: {e}") from e
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    converted = convert_float_to_float16(proto, keep_io_types=True, op_block_list=block, disable_shape_infer=False)
    return _sorted(converted)


def to_int8(proto):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="lookserve-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # the quantizer logs every tensor through the root logger
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        except Exception as e:  # the quantizer raises bare exceptions on graphs it cannot handle
            raise ExportError(f"dynamic int8 quantization failed: {type(e).__name__}: {e}") from e
        finally:
            root.setLevel(level)
        return _sorted(onnx.load(dst))


def _sorted(proto):
    """Nodes in topological order, subgraphs too (the converters append their Cast/quantize nodes
    out of order, and onnxruntime's own sorter ignores the names a Loop/If body reads from outside)."""
    _toposort_graph(proto.graph, set())
    return proto


def _subgraphs(node):
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_names(graph) -> set[str]:
    """Names a (sub)graph reads that it does not define itself."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for g in _subgraphs(node):
            used |= _outer_names(g)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def _toposort_graph(graph, outer: set[str]) -> None:
    available = set(outer) | {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    needs = []
    for node in nodes:
        need = set(node.input)
        for g in _subgraphs(node):
            need |= _outer_names(g)
        needs.append(need)
    producers = {o for node in nodes for o in node.output}
    order, done = [], [False] * len(nodes)
    progress = True
    while progress and len(order) < len(nodes):
        progress = False
        for k, node in enumerate(nodes):
            if not done[k] and all(n in available or n not in producers for n in needs[k]):
                order.append(node)
                available.update(node.output)
                done[k] = progress = True
    if len(order) != len(nodes):
        raise ExportError(f"graph {graph.name!r} has a cycle; cannot order {len(nodes) - len(order)} node(s)")
    for node in order:
        for g in _subgraphs(node):
            _toposort_graph(g, available)
    del graph.node[:]
    graph.node.extend(order)


def apply_variant(proto, variant: str, kind: str | None = None):
    """The ``variant`` (``fp16`` or ``int8``) of a converted FP32 ModelProto."""
    log.info("making the %s variant%s", variant, f" of the {kind}" if kind else "")
    if variant == "fp16":
        return to_fp16(proto)
    if variant == "int8":
        return to_int8(proto)
    raise ExportError(f"unknown variant {variant!r}; expected fp16 or int8")
