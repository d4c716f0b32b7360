"""TFLite sources made convertible: sparse (DENSIFY) weights densified.

**Sparse weights.** A TFLite model may store constant tensors sparse (TFLite's
``SparsityParameters``: a traversal order, an optional block map, and per traversed dimension
either DENSE with a ``dense_size`` or SPARSE_CSR with ``array_segments``/``array_indices``);
a ``DENSIFY`` op turns each into a dense tensor at run time. tf2onnx 1.17 reads the sparse
buffer as if it were dense (``cannot reshape array of size 96 into shape (16,1,1,24)``).
:func:`densify_model` rewrites the flatbuffer (TensorFlow's own object API,
``tensorflow.lite.tools.flatbuffer_utils``): each DENSIFY op's output tensor gets the dense
values as its constant buffer and the op is removed, so the model computes exactly what it
computed before (its consumers read the same values) — and tf2onnx, or TFLite's interpreter,
reads an ordinary dense model. :func:`densify` is the numpy twin of TFLite's
``tensorflow/lite/kernels/internal/utils/sparsity_format_converter.cc`` (``SparseToDense``).

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookserve.errors import ExportError

log = logging.getLogger(__name__)

#: SparsityParameters' DimensionType
DENSE, SPARSE_CSR = 0, 1

#: TFLite TensorType → numpy dtype (the types a constant weight tensor can have)
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8,
                  10: np.float64}


@dataclass(frozen=True)
class DimMetadata:
    """One traversed dimension: DENSE (``dense_size``) or SPARSE_CSR (``segments``, ``indices``)."""

    format: int
    dense_size: int = 0
    segments: tuple[int, ...] = ()
    indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Sparsity:
    """A sparse tensor's layout, as TFLite's ``SparsityParameters`` give it (the interpreter
    reports the same in ``get_tensor_details()[i]["sparsity_parameters"]``)."""

    traversal_order: tuple[int, ...]
    dim_metadata: tuple[DimMetadata, ...]
    block_map: tuple[int, ...] = ()

    @classmethod
    def from_flatbuffer(cls, sp) -> Sparsity:
        """From a ``schema_py_generated.SparsityParametersT``."""
        dims = []
        for m in sp.dimMetadata:
            segments = () if m.arraySegments is None else tuple(int(v) for v in m.arraySegments.values)
            indices = () if m.arrayIndices is None else tuple(int(v) for v in m.arrayIndices.values)
            dims.append(DimMetadata(int(m.format), int(m.denseSize), segments, indices))
        block_map = () if sp.blockMap is None else tuple(int(v) for v in sp.blockMap)
        return cls(tuple(int(v) for v in sp.traversalOrder), tuple(dims), block_map)


def densify(values: np.ndarray, shape: Sequence[int], sparsity: Sparsity) -> np.ndarray:
    """The dense tensor of ``shape`` whose non-zero ``values`` (in traversal order) ``sparsity`` locates.

    TFLite's ``FormatConverter::SparseToDense``: the traversed dimensions are walked in order; a
    DENSE level visits every index below its ``dense_size``, a SPARSE_CSR level the
    ``indices[segments[p]:segments[p + 1]]`` of its parent position ``p``; the first ``rank``
    levels are the (blocked) original dimensions in ``traversal_order``, the levels after them
    block dimensions, whose index refines the original dimension ``block_map`` names
    (``orig = orig * block_size + index``). Each leaf takes the next value.
    """
    shape = tuple(int(d) for d in shape)
    rank = len(shape)
    order, meta = sparsity.traversal_order, sparsity.dim_metadata
    if len(order) != len(meta) or sorted(order) != list(range(len(order))) or len(order) != rank + len(sparsity.block_map):
        raise ExportError(f"sparse tensor of shape {shape}: traversal order {order} does not fit {len(meta)} "
                          f"dimension metadata and block map {sparsity.block_map}")
    block_size = [0] * len(sparsity.block_map)
    for level, dim in enumerate(order):
        if dim >= rank:
            block_size[dim - rank] = meta[level].dense_size
    values = np.asarray(values).reshape(-1)
    # walk the levels breadth-first, each parent expanded into its children in order: the leaves
    # come out in the depth-first order of TFLite's Populate, the order the values are stored in
    parent = np.zeros(1, np.int64)            # position of each node at the level above
    index = np.zeros((1, 0), np.int64)        # the index of each node at every level so far
    for level, m in enumerate(meta):
        if m.format == DENSE:
            size = m.dense_size
            child = (parent[:, None] * size + np.arange(size)[None, :]).reshape(-1)
            here = np.tile(np.arange(size), len(parent))
            index = np.repeat(index, size, axis=0)
        elif m.format == SPARSE_CSR:
            segments = np.asarray(m.segments, np.int64)
            indices = np.asarray(m.indices, np.int64)
            if len(parent) and parent.max() + 1 >= len(segments):
                raise ExportError(f"sparse tensor of shape {shape}: level {level} has {len(segments)} segment "
                                  f"bounds, position {int(parent.max())} needs {int(parent.max()) + 2}")
            start, stop = segments[parent], segments[parent + 1]
            counts = stop - start
            if (counts < 0).any() or (len(counts) and stop.max() > len(indices)):
                raise ExportError(f"sparse tensor of shape {shape}: level {level}'s segments {m.segments[:8]}... "
                                  f"do not fit its {len(indices)} indices")
            # the positions start[k] .. stop[k]-1 of every parent k, concatenated in order
            child = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            here = indices[child]
            index = np.repeat(index, counts, axis=0)
        else:
            raise ExportError(f"sparse tensor of shape {shape}: unknown dimension format {m.format} at level {level}")
        index = np.concatenate([index, here[:, None]], axis=1)
        parent = child
    if len(index) != len(values):
        raise ExportError(f"sparse tensor of shape {shape}: its metadata addresses {len(index)} of its {len(values)} values")
    orig = np.zeros((len(index), rank), np.int64)
    for level in range(rank):
        orig[:, order[level]] = index[:, level]
    for level in range(rank, len(order)):
        b = order[level] - rank
        d = sparsity.block_map[b]
        orig[:, d] = orig[:, d] * block_size[b] + index[:, level]
    if ((orig < 0) | (orig >= np.asarray(shape))).any():
        raise ExportError(f"sparse tensor of shape {shape}: its metadata addresses an element outside the shape")
    out = np.zeros(shape, values.dtype)
    out.reshape(-1)[np.ravel_multi_index(orig.T, shape)] = values
    return out


def _schema():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def densify_model(model_bytes: bytes) -> tuple[bytes, int]:
    """``model_bytes`` with every DENSIFY op replaced by the dense constant it computes; returns the
    new flatbuffer and how many ops were removed (0: the bytes come back unchanged)."""
    schema, fb = _schema()
    model = fb.convert_bytearray_to_object(bytearray(model_bytes))
    densify_codes = {i for i, c in enumerate(model.operatorCodes)
                     if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.DENSIFY}
    if not densify_codes:
        return model_bytes, 0
    removed = 0
    released: set[int] = set()
    for graph in model.subgraphs:
        keep = []
        for op in graph.operators:
            if op.opcodeIndex not in densify_codes:
                keep.append(op)
                continue
            src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
            name = src.name.decode() if isinstance(src.name, bytes) else str(src.name)
            if src.sparsity is None or src.buffer == 0 or model.buffers[src.buffer].data is None:
                raise ExportError(f"DENSIFY op on tensor {name!r}: its input is not a sparse constant")
            if src.type not in _TFLITE_DTYPES:
                raise ExportError(f"DENSIFY op on tensor {name!r}: tensor type {src.type} is not supported")
            values = np.frombuffer(bytes(bytearray(model.buffers[src.buffer].data)), _TFLITE_DTYPES[src.type])
            dense = densify(values, [int(d) for d in src.shape], Sparsity.from_flatbuffer(src.sparsity))
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(dense.astype(dense.dtype.newbyteorder("<")).tobytes(), np.uint8)
            model.buffers.append(buffer)
            dst.buffer = len(model.buffers) - 1
            dst.sparsity = None
            released.add(src.buffer)
            # the sparse tensor stays (tensor indices are positions) but empty: no reader sees its values
            src.buffer, src.sparsity = 0, None
            removed += 1
        graph.operators = keep
    in_use = {t.buffer for g in model.subgraphs for t in g.tensors}
    for b in released - in_use:
        model.buffers[b].data = None
    log.info("densified %d sparse constant tensor(s)", removed)
    return bytes(fb.convert_object_to_bytearray(model)), removed


def densified_path(path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, int]:
    """``path`` itself when it has no DENSIFY op, else a densified copy written into ``out_dir``."""
    path = Path(path)
    data, removed = densify_model(path.read_bytes())
    if not removed:
        return path, 0
    out = Path(out_dir) / f"{path.stem}.dense.tflite"
    out.write_bytes(data)
    return out, removed
