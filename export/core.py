"""Export a TensorFlow/Keras model to a versioned Triton ONNX model, behind a parity gate.

The library half (tf2onnx's style: functions that return their artifacts; :mod:`.cli` is a thin
shell over them). The path of every export::

    tf.function with an explicit input_signature (dynamic batch)
      → tf2onnx.convert.from_function (opset recorded)
      → onnx.checker + strict shape inference
      → optional variant (FP16 / dynamic int8)
      → parity gate: onnxruntime vs the source on fresh random inputs and on photo-like images
        (the detector: also on a data set's street photos, where the source must detect enough)
      → <repository>/<name>/<N>/ written in a temp directory and renamed into place
        (model.onnx, export.json), then config.pbtxt and configs/gpu.pbtxt

A failing gate raises :class:`lookserve.errors.ParityError` and writes nothing. TensorFlow,
tf2onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lookserve.contracts import contract_problems, gpu_variant
from lookserve.errors import ExportError, ParityError
from lookserve.export import parity
from lookserve.export.samples import photo_inputs, random_inputs, street_photos
from lookserve.export.variants import apply_variant
from lookserve.fsutil import atomic_write_json
from lookserve.modelconfig import (
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    Warmup,
    WarmupInput,
    triton_dtype,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
VARIANTS = ("fp32", "fp16", "int8")
EXPORT_JSON = "export.json"
MODEL_FILE = "model.onnx"

#: ONNX TensorProto element types → Triton dtype names
_ONNX_DTYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL",
                10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64"}


@dataclass(frozen=True)
class ParitySamples:
    """How many rows the gate runs: ``random_batch`` random rows and ``photo_batch`` photo-like ones
    (from ``photo_dir`` when given, else synthetic scenes); for a detector also ``street_batch``
    street photos of the street2shop-format data set at ``street_data`` (else of a small seeded
    one generated for the gate) — the set whose reference detections must be numerous enough
    (``DetectionTolerance.min_detections_per_row``); random and scene sets are extra checks there."""

    random_batch: int = 3
    photo_batch: int = 3
    seed: int = 0
    photo_dir: Path | None = None
    street_batch: int = 4
    street_data: Path | None = None

    def __post_init__(self) -> None:
        if min(self.random_batch, self.photo_batch, self.street_batch) < 0:
            raise ExportError("sample counts must be non-negative")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote (paths) and measured (parity figures)."""

    name: str
    version: int
    variant: str
    version_dir: Path
    onnx_path: Path
    export_json: Path
    config_path: Path
    gpu_config_path: Path
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    figures: tuple[parity.Figure, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: the fixed batch the model was exported with (``max_batch_size: 0``, the batch inside the
    #: config's dims), or None: a dynamic batch. ``inputs``/``outputs`` dims never include it.
    batch: int | None = None

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.read(self.config_path)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "tensorflow-cpu" in out:
        out.setdefault("tensorflow", out.pop("tensorflow-cpu"))
    return out


#: the files of a lookserve weights directory that define the model; its card, logs and plots
#: beside them do not (editing a MODEL_CARD.md must not make an export look stale)
WEIGHTS_FILES = ("config.json", "model.weights.h5")


def sha256_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory (its files' relative paths and contents, sorted) —
    of a lookserve weights directory only its :data:`WEIGHTS_FILES`."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
        root = path.parent
    elif path.is_dir():
        if all((path / name).is_file() for name in WEIGHTS_FILES):
            files = [path / name for name in WEIGHTS_FILES]
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file())
        root = path
    else:
        raise ExportError(f"source {path} does not exist")
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_weights(weights: Sequence[Any]) -> str:
    """SHA-256 of a model's weights (for a model that has no file behind it)."""
    h = hashlib.sha256()
    for w in weights:
        arr = np.ascontiguousarray(np.asarray(w))
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def tensor_specs_of_graph(values, batch: int | None = None) -> tuple[TensorSpec, ...]:
    """TensorSpecs (batch dimension stripped; unknown dims → -1) of ONNX graph inputs or outputs.

    The batch dimension must be dynamic, or, with ``batch``, fixed at exactly that size."""
    specs = []
    for v in values:
        tt = v.type.tensor_type
        if tt.elem_type not in _ONNX_DTYPES:
            raise ExportError(f"ONNX tensor {v.name!r} has element type {tt.elem_type}, which Triton cannot serve")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if not dims:
            raise ExportError(f"ONNX tensor {v.name!r} has no batch dimension (rank 0)")
        if batch is None and dims[0] != -1:
            raise ExportError(f"ONNX tensor {v.name!r}: the batch dimension is fixed at {dims[0]}; export with a dynamic "
                              "batch, or say the batch is fixed (batch=...)")
        if batch is not None and dims[0] != batch:
            raise ExportError(f"ONNX tensor {v.name!r}: the batch dimension is {'dynamic' if dims[0] == -1 else dims[0]}, "
                              f"the model's fixed batch is {batch}")
        rest = tuple(dims[1:])
        if not rest:
            # Triton describes a [B] tensor as dims [1]; the native backend also wants
            # ``reshape { shape: [] }``, which lookserve's ModelConfig cannot say yet
            log.warning("ONNX tensor %r is [batch] only; its config dims are [1] (served as [batch, 1] by Triton's native backend)", v.name)
            rest = (1,)
        specs.append(TensorSpec(v.name, _ONNX_DTYPES[tt.elem_type], rest))
    return tuple(specs)


def rename_tensors(proto, mapping: Mapping[str, str]) -> None:
    """Rename tensors everywhere in a ModelProto (graph inputs/outputs, nodes, initializers, subgraphs)."""
    if not mapping:
        return

    def graph(g) -> None:
        for v in (*g.input, *g.output, *g.value_info, *g.initializer):
            v.name = mapping.get(v.name, v.name)
        for node in g.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            node.output[:] = [mapping.get(n, n) for n in node.output]
            for attr in node.attribute:
                if attr.g.node:
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(proto.graph)


# --------------------------------------------------------------------------------------------
# conversion and graph checks
# --------------------------------------------------------------------------------------------
def keras_serving_function(model, input_specs: Sequence[TensorSpec] | None = None, batch: int | None = None):
    """A ``tf.function`` over a Keras model with an explicit input signature (batch dynamic, or ``batch``).

    ``input_specs`` default to the model's own inputs (names, dtypes, shapes without the batch).
    The function returns a dict of named outputs: the model's own dict, or its ``output_names``.
    """
    tf = _tf()
    if input_specs is None:
        input_specs = keras_input_specs(model)
    signature = [tf.TensorSpec([batch, *(None if d == -1 else d for d in s.dims)], tf.as_dtype(s.np_dtype), name=s.name)
                 for s in input_specs]
    names = [s.name for s in input_specs]
    output_names = list(getattr(model, "output_names", None) or [])

    def _named(out):
        if isinstance(out, Mapping):
            return {str(k): tf.identity(v, name=str(k)) for k, v in out.items()}
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        keys = output_names if len(output_names) == len(outs) else [f"output_{i}" for i in range(len(outs))]
        return {k: tf.identity(v, name=k) for k, v in zip(keys, outs, strict=True)}

    if len(names) == 1:
        @tf.function(input_signature=signature)
        def serve(x):
            return _named(model(x, training=False))
    else:
        @tf.function(input_signature=signature)
        def serve(*xs):
            return _named(model(dict(zip(names, xs, strict=True)), training=False))
    return serve


def keras_fixed_batch(model) -> int | None:
    """The batch the Keras model's inputs are fixed at (``keras.Input(batch_size=...)``), or None."""
    return fixed_batch_of([tuple(t.shape)[0] if len(tuple(t.shape)) else None for t in model.inputs], "Keras model")


def fixed_batch_of(first_dims: Sequence[int | None], what: str) -> int | None:
    """The one fixed batch of a source's inputs (their first dims; None or -1: dynamic), or None.

    Inputs that disagree (one fixed and one dynamic, or two sizes) are an error: the export keeps
    one batch dimension for all inputs."""
    batches = {None if d is None or int(d) < 0 else int(d) for d in first_dims}
    if len(batches) > 1:
        raise ExportError(f"the {what}'s inputs disagree on their batch dimension "
                          f"({sorted(batches, key=lambda b: -1 if b is None else b)}); lookserve exports one batch "
                          "dimension for all inputs")
    return next(iter(batches), None)


def keras_input_specs(model) -> tuple[TensorSpec, ...]:
    """The model's inputs as TensorSpecs (batch stripped)."""
    specs = []
    for t in model.inputs:
        shape = tuple(t.shape)[1:]
        name = getattr(t, "name", None) or "input"
        name = name.split(":")[0]
        dtype = getattr(t.dtype, "name", t.dtype)
        specs.append(TensorSpec(name, triton_dtype(str(dtype)), tuple(-1 if d is None else d for d in shape)))
    return tuple(specs)


def convert_function(fn, opset: int = DEFAULT_OPSET, batch: int | None = None):
    """tf2onnx's ``from_function`` on a ``tf.function`` with an ``input_signature``; returns the ModelProto.

    Every input's batch dimension must be None (dynamic), or ``batch`` when the batch is fixed."""
    _tf()
    import tf2onnx

    signature = getattr(fn, "input_signature", None)
    if not signature:
        raise ExportError("the function to export needs an explicit input_signature (a tf.function with input_signature=...)")
    for spec in signature:
        if spec.shape.rank is None or spec.shape.rank == 0 or spec.shape[0] != batch:
            want = "None (dynamic)" if batch is None else f"{batch} (the fixed batch)"
            raise ExportError(f"input {spec.name!r}: the signature's batch dimension must be {want}, got {spec.shape}")
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    except Exception as e:  # tf2onnx raises bare ValueError/RuntimeError/KeyError on unsupported graphs
        raise ExportError(f"tf2onnx could not convert the function at opset {opset}: {type(e).__name__}: {e}") from e
    return proto


def check_graph(proto):
    """``onnx.checker`` (full) and strict shape inference; returns the inferred ModelProto."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph {proto.graph.name!r} fails ONNX validation: {e}") from e
    return inferred


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph classes from pybind
        raise ExportError(f"onnxruntime cannot load the exported model: {e}") from e


def _numpy_outputs(out) -> dict[str, np.ndarray]:
    if isinstance(out, Mapping):
        return {str(k): np.asarray(v) for k, v in out.items()}
    raise ExportError(f"the reference function must return a dict of named outputs, got {type(out).__name__}")


def _image_input(inputs: Sequence[TensorSpec], name: str) -> TensorSpec:
    """The detector's one input: UINT8 square images ``[S, S, 3]``."""
    if len(inputs) != 1 or inputs[0].dtype != "UINT8" or len(inputs[0].dims) != 3 or inputs[0].dims[-1] != 3 \
            or inputs[0].dims[0] != inputs[0].dims[1] or inputs[0].dims[0] < 1:
        raise ExportError(f"{name}: a detector takes one UINT8 [S, S, 3] image input, got "
                          f"{[(t.name, t.dtype, t.dims) for t in inputs]}")
    return inputs[0]


def run_parity_gate(
    model_bytes: bytes,
    reference: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    inputs: Sequence[TensorSpec],
    tolerances: parity.Tolerances | None,
    kind: str | None,
    name: str,
    samples: ParitySamples = ParitySamples(),
    variant: str = "fp32",
    batch: int | None = None,
) -> tuple[list[parity.Figure], dict[str, Any]]:
    """Compare onnxruntime with ``reference`` on random and photo-like inputs; raise ParityError on divergence.

    With a fixed ``batch`` both sides are fed batches of exactly that size (each sample set's rows
    rounded up to a multiple of it) and their outputs concatenated before the comparison.
    Returns every figure (per output, metric and sample set) and a description of the sample sets.
    """
    session = _session(model_bytes)
    output_names = [o.name for o in session.get_outputs()]
    if batch is not None:
        if batch < 1:
            raise ExportError(f"{name}: a fixed batch is a positive size, got {batch}")
        samples = replace(samples, **{k: -(-getattr(samples, k) // batch) * batch
                                      for k in ("random_batch", "photo_batch", "street_batch")})

    def run_onnx(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(None, feeds), strict=True))

    def in_batches(run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
                   feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if batch is None:
            return _numpy_outputs(run(feeds))
        rows = len(next(iter(feeds.values())))
        parts = [_numpy_outputs(run({k: v[r:r + batch] for k, v in feeds.items()})) for r in range(0, rows, batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    detector = kind == "detector" or isinstance(tolerances, parity.DetectionTolerance)
    # (label, feeds, whether a detector's reference must detect enough there: street photos only)
    sets = [("random", random_inputs(inputs, samples.random_batch, samples.seed), False)]
    described: dict[str, dict[str, Any]] = {"random": {"rows": samples.random_batch, "seed": samples.seed}}
    photo = photo_inputs(inputs, samples.photo_batch, samples.seed + 1, samples.photo_dir) if samples.photo_batch else None
    if photo is not None:
        sets.append(("photos", photo[0], False))
        described["photos"] = {"rows": samples.photo_batch, "seed": samples.seed + 1, "source": photo[1]}
    if detector:
        if samples.street_batch < 1:
            raise ExportError(f"{name}: the detector's gate is judged on street photos; street_batch must be ≥ 1")
        image = _image_input(inputs, name)
        images, source = street_photos(samples.street_batch, image.dims[0], samples.seed + 2, samples.street_data)
        sets.append(("street", {image.name: images}, True))
        described["street"] = {"rows": samples.street_batch, "seed": samples.seed + 2, "source": source}
    figures: list[parity.Figure] = []
    for label, feeds, counts in sets:
        ref = in_batches(reference, feeds)
        got = in_batches(run_onnx, feeds)
        missing = sorted(set(ref) - set(got))
        if missing:
            raise ParityError(f"{name}: the ONNX model lacks output(s) {missing} that the source returns")
        tol = tolerances if tolerances is not None else parity.tolerances_for(kind, ref, variant)
        figures += parity.compare(ref, got, tol, label, require_detections=counts)
        if isinstance(tol, parity.DetectionTolerance):  # how much the detection figures rest on
            described[label]["reference_detections"] = int(np.asarray(ref["num_detections"]).sum())
            described[label]["counts"] = counts
    for f in parity.worst(figures):
        log.info("parity %s %s", name, f.describe())
    parity.enforce(figures, name)
    return figures, described


# --------------------------------------------------------------------------------------------
# writing a version
# --------------------------------------------------------------------------------------------
def write_version(model_dir: Path, version: int, model_bytes: bytes, info: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write ``<model_dir>/<version>/{model.onnx, export.json}`` in a temp directory, renamed into place."""
    if version < 1:
        raise ExportError(f"a Triton model version is a positive integer, got {version}")
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists; pick a new version (versions are immutable) or pass overwrite")
    tmp = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir))
    old = None
    try:
        (tmp / MODEL_FILE).write_bytes(model_bytes)
        atomic_write_json(tmp / EXPORT_JSON, info, sort_keys=True, default=str)
        if final.exists():
            if not overwrite:  # another export wrote it since the check above
                raise ExportError(f"{final} appeared while exporting; versions are immutable, pick a new one")
            old = Path(tempfile.mkdtemp(prefix=f".old-{version}-", dir=model_dir))
            os.replace(final, old / "v")
        try:
            os.replace(tmp, final)
        except OSError as e:  # a non-empty directory appeared at the last moment
            raise ExportError(f"cannot move the new version into {final}: {e.strerror}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old / "v", final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def serving_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    template: ModelConfig | None = None,
    max_batch_size: int = 8,
    queue_delay_us: int = 1000,
    batch: int | None = None,
) -> ModelConfig:
    """The model's config: ``template``'s settings (batching, instances) with the graph's real tensors.

    Outputs keep the template's order where names agree; warm-up uses random data for every input
    so a new version is only ready once warm. ``inputs``/``outputs`` dims exclude the batch; a
    fixed ``batch`` (a graph that only runs batches of that size) gives ``max_batch_size: 0``, no
    dynamic batching, and dims that start with the batch, as Triton describes a non-batching model.
    """
    if template is not None:
        order = {t.name: i for i, t in enumerate(template.outputs)}
        outputs = sorted(outputs, key=lambda t: order.get(t.name, len(order)))
        base = replace(template, name=name)
    else:
        base = ModelConfig(name=name, inputs=tuple(inputs), outputs=tuple(outputs), max_batch_size=max_batch_size,
                           dynamic_batching=DynamicBatching(max_queue_delay_microseconds=queue_delay_us))
    if batch is not None:
        inputs = tuple(replace(t, dims=(batch, *t.dims)) for t in inputs)
        outputs = tuple(replace(t, dims=(batch, *t.dims)) for t in outputs)
        base = replace(base, max_batch_size=0, dynamic_batching=None)
    warmup = (Warmup("random_sample", 1, tuple(WarmupInput(t.name, t.dtype, tuple(32 if d == -1 else d for d in t.dims), random=True)
                                               for t in inputs)),)
    return replace(base, inputs=tuple(inputs), outputs=tuple(outputs), warmup=warmup)


# How the export words an exported graph's differences from its contract (contracts.contract_problems).
_CONTRACT_WORDS = {
    "missing": "missing {kind} {name!r}",
    "dtype": "{kind} {name!r} is {got}, the contract says {want}",
    "shape": "{kind} {name!r} has dims {got}, the contract says {want}",
    "unexpected": "unexpected {kind}(s) {names}",
}


def check_contract(config: ModelConfig, template: ModelConfig | None) -> None:
    """The exported graph's tensors must be the contract's (names, dtypes, dims; -1 matches anything)."""
    if template is None:
        return
    problems = []
    for kind, got, want in (("input", config.inputs, template.inputs), ("output", config.outputs, template.outputs)):
        problems += contract_problems(kind, [(t.name, t.dtype, t.dims) for t in want],
                                      [(t.name, t.dtype, t.dims) for t in got], _CONTRACT_WORDS)
    if problems:
        raise ExportError(f"model {template.name!r} does not meet its tensor contract: " + "; ".join(problems))


def _keep_serving_state(model_dir: Path, config: ModelConfig, overwrite: bool) -> ModelConfig:
    """Keep the version policy of a config already in the repository (a publish/promote may have
    pinned the serving versions), and refuse a graph whose tensors differ from the served ones
    (one config serves every version) unless ``overwrite``."""
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return config
    current = ModelConfig.read(path)
    if (current.inputs, current.outputs) != (config.inputs, config.outputs) and not overwrite:
        raise ExportError(
            f"{path} serves other tensors than the new graph has (served: "
            f"{[(t.name, t.dtype, t.dims) for t in (*current.inputs, *current.outputs)]}; new: "
            f"{[(t.name, t.dtype, t.dims) for t in (*config.inputs, *config.outputs)]}); every version of a model "
            "shares one config: export under another name, or pass overwrite to replace the config"
        )
    if current.version_policy != config.version_policy:
        log.info("keeping %s's version policy (%s)", path, current.version_policy)
    return replace(config, version_policy=current.version_policy)


def write_configs(model_dir: Path, config: ModelConfig) -> tuple[Path, Path]:
    cfg = config.write(model_dir / "config.pbtxt")
    gpu = gpu_variant(config).write(model_dir / "configs" / "gpu.pbtxt")
    return cfg, gpu


# --------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------
def export_function(
    fn,
    name: str,
    repository: str | os.PathLike,
    version: int,
    *,
    reference: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    kind: str | None = None,
    template: ModelConfig | None = None,
    opset: int = DEFAULT_OPSET,
    variant: str = "fp32",
    tolerances: parity.Tolerances | None = None,
    samples: ParitySamples = ParitySamples(),
    source: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    tamper: Callable[[Any], None] | None = None,
    accuracy: Callable[[bytes], Mapping[str, Any]] | None = None,
    proto=None,
    batch: int | None = None,
) -> ExportResult:
    """Export a ``tf.function`` (explicit input signature) as ``<repository>/<name>/<version>``.

    ``reference(feeds) -> {output: array}`` is what the gate compares against (default: ``fn``
    itself, run by TensorFlow). ``kind`` selects the tolerance table (``embedder``,
    ``view_classifier``, ``detector``; None: per-output defaults) unless ``tolerances`` is given;
    ``template`` is the contract config whose batching and instance settings the written config
    keeps. ``variant`` is ``fp32``, ``fp16`` or ``int8``. ``tamper`` (tests only) may alter the
    converted ModelProto in place before the gate, to prove the gate refuses it. ``accuracy``
    (``model_bytes -> dict``) adds task figures (e.g. retrieval top-1) to export.json after the
    gate. ``proto``: an already converted ModelProto (``fn`` is then unused; ``reference`` is required).

    ``batch``: the source's fixed batch (None: dynamic). A graph whose batch is fixed is exported
    as it is — ``max_batch_size: 0`` with the batch in the config's dims (see :func:`serving_config`)
    — and the gate feeds both sides batches of exactly that size (:func:`run_parity_gate`).
    """
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if opset < 13:
        raise ExportError(f"opset {opset} is too old; use 13 or newer (default {DEFAULT_OPSET})")
    repository = Path(repository)
    model_dir = repository / name
    if (model_dir / str(version)).exists() and not overwrite:
        raise ExportError(f"{model_dir / str(version)} already exists; pick a new version (versions are immutable)")

    if proto is None:
        log.info("converting %s with tf2onnx (opset %d)", name, opset)
        proto = convert_function(fn, opset=opset, batch=batch)
    elif reference is None:
        raise ExportError("exporting a converted ModelProto needs a reference function for the parity gate")
    proto.graph.name = name
    check_graph(proto)
    if variant != "fp32":
        proto = apply_variant(proto, variant, kind=kind)
        check_graph(proto)
    if tamper is not None:
        tamper(proto)
    inputs = tensor_specs_of_graph(proto.graph.input, batch)
    outputs = tensor_specs_of_graph(proto.graph.output, batch)
    config = serving_config(name, inputs, outputs, template, batch=batch)
    check_contract(config, template)
    config = _keep_serving_state(model_dir, config, overwrite)
    model_bytes = proto.SerializeToString()

    if reference is None:
        def reference(feeds):
            out = fn(*[feeds[s.name] for s in inputs])
            return {k: v.numpy() for k, v in out.items()}

    log.info("parity gate for %s (%s)", name, variant)
    figures, sample_info = run_parity_gate(model_bytes, reference, inputs, tolerances, kind, name, samples, variant,
                                           batch=batch)
    task_figures = dict(accuracy(model_bytes)) if accuracy is not None else {}

    info = {
        "name": name,
        "version": version,
        "kind": kind,
        "variant": variant,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source": dict(source or {}),
        "libraries": library_versions(),
        "opset": opset,
        "onnx": {"sha256": hashlib.sha256(model_bytes).hexdigest(), "bytes": len(model_bytes),
                 "producer": f"{proto.producer_name} {proto.producer_version}".strip(), "ir_version": proto.ir_version},
        "inputs": [{"name": t.name, "dtype": t.dtype, "dims": [-1 if batch is None else batch, *t.dims]} for t in inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "dims": [-1 if batch is None else batch, *t.dims]} for t in outputs],
        "batch": {"fixed": batch, "max_batch_size": config.max_batch_size},
        "parity": {"passed": True, "samples": sample_info, "figures": [f.to_dict() for f in figures]},
        **dict(extra or {}),
        **task_figures,
    }
    version_dir = write_version(model_dir, version, model_bytes, info, overwrite=overwrite)
    cfg_path, gpu_path = write_configs(model_dir, config)
    log.info("wrote %s (%d bytes)", version_dir / MODEL_FILE, len(model_bytes))
    return ExportResult(
        name=name, version=version, variant=variant, version_dir=version_dir, onnx_path=version_dir / MODEL_FILE,
        export_json=version_dir / EXPORT_JSON, config_path=cfg_path, gpu_config_path=gpu_path, opset=opset,
        inputs=inputs, outputs=outputs, figures=tuple(figures), metadata=info, batch=batch,
    )


def export_keras_model(
    model,
    name: str,
    input_specs: Sequence[TensorSpec] | None = None,
    repository: str | os.PathLike = "model_repository",
    version: int = 1,
    *,
    kind: str | None = None,
    template: ModelConfig | None = None,
    source_path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    **kwargs,
) -> ExportResult:
    """Export a Keras 3 model (``model(batch)`` returns a tensor, a list or a dict of named outputs).

    ``input_specs`` default to the model's inputs; every input's batch dimension is dynamic, unless
    the model's inputs fix it (``keras.Input(..., batch_size=1)``): that batch is kept
    (``max_batch_size: 0``, see :func:`export_function`).
    Keyword arguments pass on to :func:`export_function` (``opset``, ``variant``, ``tolerances``,
    ``samples``, ``overwrite``).
    """
    batch = keras_fixed_batch(model)
    fn = keras_serving_function(model, input_specs, batch)
    source: dict[str, Any] = {"framework": "keras", "model": getattr(model, "name", type(model).__name__)}
    if source_path is not None:
        source.update(path=str(source_path), sha256=sha256_path(source_path))
    else:
        source["weights_sha256"] = sha256_weights(model.get_weights())
    info = dict(extra or {})
    if class_names is not None:
        info["class_names"] = list(class_names)
    return export_function(fn, name, repository, version, kind=kind, template=template, source=source, extra=info,
                           batch=batch, **kwargs)


__all__ = [
    "DEFAULT_OPSET", "VARIANTS", "ExportResult", "ParitySamples", "ParityError", "check_contract", "check_graph",
    "convert_function", "export_function", "export_keras_model", "keras_serving_function", "library_versions",
    "run_parity_gate", "serving_config", "sha256_path", "tensor_specs_of_graph", "write_version",
]
