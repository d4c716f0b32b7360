"""One export function per source: lookserve's three trained models, and any Keras, SavedModel
or TFLite model.

Each returns an :class:`~lookserve.export.core.ExportResult`; :mod:`lookserve.export.cli` is a
thin shell over them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import contracts
from lookserve.data.pretrained import POSE_DETECTION, POSE_LANDMARK_FULL, mediapipe_model
from lookserve.errors import ExportError, InvalidInputError, ParityError
from lookserve.export import parity
from lookserve.export.core import (
    DEFAULT_OPSET,
    ExportResult,
    _numpy_outputs,
    _session,
    _tf,
    export_function,
    export_keras_model,
    fixed_batch_of,
    keras_input_specs,
    rename_tensors,
    sha256_path,
    sha256_weights,
)
from lookserve.export.tflite import densified_path
from lookserve.modelconfig import TensorSpec
from lookserve.taxonomy import CATEGORIES, FOOTWEAR_TYPES
from lookserve.training.detector import load_model as load_detector
from lookserve.training.embedder import embed, evaluate_embeddings
from lookserve.training.embedder import load_model as load_embedder
from lookserve.training.views import load_model as load_view_classifier

log = logging.getLogger(__name__)


def _output_dim(model, output: str) -> int:
    shape = model.output[output].shape if isinstance(model.output, Mapping) else model.output.shape
    return int(shape[-1])


# --------------------------------------------------------------------------------------------
# lookserve's models
# --------------------------------------------------------------------------------------------
def export_embedder(
    model,
    repository: str | os.PathLike = "model_repository",
    version: int = 1,
    *,
    weights: str | os.PathLike | None = None,
    eval_data=None,
    **kwargs,
) -> ExportResult:
    """Export the triplet embedder (``crops`` UINT8 → ``embedding`` FP32, L2-normalised).

    ``eval_data`` (a :class:`lookserve.training.embedder.TripletData` of held-out street crops and
    shop photos) adds the retrieval top-1 of the source and of the ONNX model, and their change,
    to export.json, and refuses the export when the change exceeds
    :data:`~lookserve.export.parity.RETRIEVAL_TOP1_CHANGE` either way. A reduced-precision
    variant (``variant`` fp16 or int8) requires it: that is the figure such a variant is judged by.
    """
    variant = kwargs.get("variant", "fp32")
    if variant != "fp32" and eval_data is None:
        raise ExportError(
            f"the {variant} embedder is judged by held-out retrieval: give the held-out data "
            "(lookserve export embedder --eval-data DATA_ROOT; eval_data= from Python), whose top-1 "
            f"may change by at most {parity.RETRIEVAL_TOP1_CHANGE:g}"
        )
    dim = _output_dim(model, "embedding")
    size = int(model.inputs[0].shape[1])
    template = contracts.embedder_config(dim=dim, crop_size=size)
    accuracy = None
    if eval_data is not None:
        def accuracy(model_bytes: bytes) -> dict[str, Any]:
            return enforce_retrieval(_retrieval_change(model, model_bytes, eval_data), contracts.EMBEDDER)
    return export_keras_model(
        model, contracts.EMBEDDER, template.inputs, repository, version, kind="embedder", template=template,
        source_path=weights, extra={"embedding_dim": dim, "class_names": list(CATEGORIES)}, accuracy=accuracy, **kwargs,
    )


def enforce_retrieval(figures: Mapping[str, Any], name: str,
                      limit: float = parity.RETRIEVAL_TOP1_CHANGE) -> dict[str, Any]:
    """``figures`` (``{"retrieval": {...top1_change...}}``) with the limit and verdict recorded;
    :class:`ParityError` when the held-out top-1 moved by more than ``limit``."""
    retrieval = dict(figures["retrieval"])
    change = float(retrieval["top1_change"])
    retrieval.update(top1_change_limit=limit, passed=bool(np.isfinite(change) and abs(change) <= limit))
    if not retrieval["passed"]:
        raise ParityError(
            f"{name}: held-out retrieval top-1 changes by {change:+.4f} ({retrieval['top1_source']:.4f} → "
            f"{retrieval['top1_onnx']:.4f} on {retrieval['queries']} queries), over the limit of ±{limit:g}"
        )
    return {**figures, "retrieval": retrieval}


def _retrieval_change(model, model_bytes: bytes, data) -> dict[str, Any]:
    """Top-1 (the original's accuracy) of the Keras model and of the ONNX model on held-out data."""

    session = _session(model_bytes)

    def onnx_embed(images: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(["embedding"], {"crops": images[i:i + 64]})[0]
                               for i in range(0, len(images), 64)])

    scores = {}
    for label, fn in (("source", lambda x: embed(model, x)), ("onnx", onnx_embed)):
        q, g = fn(data.street), fn(data.shop)
        s = evaluate_embeddings(q, data.street_product, data.street_category, g, data.shop_product, data.shop_category)
        scores[label] = s["overall"]
    return {"retrieval": {
        "queries": scores["source"].n, "gallery": scores["source"].gallery,
        "top1_source": scores["source"].top1, "top1_onnx": scores["onnx"].top1,
        "top1_change": scores["onnx"].top1 - scores["source"].top1,
        "recall6_source": scores["source"].recall6, "recall6_onnx": scores["onnx"].recall6,
    }}


def export_view_classifier(
    model, repository: str | os.PathLike = "model_repository", version: int = 1, *,
    weights: str | os.PathLike | None = None, **kwargs,
) -> ExportResult:
    """Export the view classifier (``images`` UINT8 → ``type_probs`` [6], ``best_view`` [1])."""
    size = int(model.inputs[0].shape[1])
    template = contracts.view_classifier_config(image_size=size)
    return export_keras_model(
        model, contracts.VIEW_CLASSIFIER, template.inputs, repository, version, kind="view_classifier",
        template=template, source_path=weights, class_names=FOOTWEAR_TYPES, **kwargs,
    )


def export_detector(
    detector, repository: str | os.PathLike = "model_repository", version: int = 1, *,
    weights: str | os.PathLike | None = None, extra: Mapping[str, Any] | None = None, **kwargs,
) -> ExportResult:
    """Export the Mask R-CNN (:class:`lookserve.training.detector.Detector`): its ``serving_fn`` in, the
    five contract outputs out; the gate matches detections (boxes, scores, masks)."""
    cfg = detector.config
    template = contracts.detector_config(input_size=cfg.input_size, max_detections=cfg.max_detections,
                                         mask_size=cfg.mask_size)
    fn = detector.serving_fn

    def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _numpy_outputs(detector(feeds["images"]))

    source: dict[str, Any] = {"framework": "keras", "model": "mask_rcnn"}
    if weights is not None:
        source.update(path=str(weights), sha256=sha256_path(weights))
    else:
        source["weights_sha256"] = sha256_weights(detector.keras_model.get_weights())
    info = {"class_names": list(CATEGORIES), "input_size": cfg.input_size, "max_detections": cfg.max_detections,
            "score_threshold": cfg.score_threshold, **dict(extra or {})}
    return export_function(fn, contracts.DETECTOR, repository, version, reference=reference, kind="detector",
                           template=template, source=source, extra=info, **kwargs)


def _load_trained(kind: str, weights: str | os.PathLike):
    weights = Path(weights)
    if not weights.is_dir():
        raise InvalidInputError(f"--weights {weights}: not a directory of trained weights (config.json + model.weights.h5)")
    loaders = {"detector": load_detector, "embedder": load_embedder, "view_classifier": load_view_classifier}
    if kind not in loaders:
        raise ExportError(f"unknown model kind {kind!r}")
    return loaders[kind](weights)


def export_trained(kind: str, weights: str | os.PathLike, repository: str | os.PathLike = "model_repository",
                   version: int = 1, **kwargs) -> ExportResult:
    """Load lookserve's trained ``kind`` from ``weights`` and export it."""
    model = _load_trained(kind, weights)
    fn = {"detector": export_detector, "embedder": export_embedder, "view_classifier": export_view_classifier}[kind]
    return fn(model, repository, version, weights=weights, **kwargs)


def find_trained(weights_root: str | os.PathLike) -> dict[str, Path]:
    """``{kind: weights dir}`` for the trained models in ``weights_root``'s sub-directories.

    A weights directory is recognised by its ``config.json`` (``{"kind": ..., "config": ...}``,
    as lookserve's training writes it); two directories of one kind are an error.
    """

    root = Path(weights_root)
    if not root.is_dir():
        raise InvalidInputError(f"--weights-root {root}: no such directory")
    found: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        try:
            kind = json.loads((sub / "config.json").read_text()).get("kind")
        except (json.JSONDecodeError, AttributeError) as e:
            raise InvalidInputError(f"{sub / 'config.json'} is not a lookserve weights config: {e}") from e
        if kind not in ("detector", "embedder", "view_classifier"):
            continue
        if kind in found:
            raise InvalidInputError(f"two {kind} weight directories under {root}: {found[kind]} and {sub}; export them one by one")
        found[kind] = sub
    return found


def export_all(weights_root: str | os.PathLike, repository: str | os.PathLike = "model_repository",
               version: int = 1, **kwargs) -> dict[str, ExportResult]:
    """Export every trained model under ``weights_root`` (see :func:`find_trained`) as ``version``.

    Each model passes its own gate; one that fails raises before the models after it are exported
    (those before it stay written: every version directory is complete on its own).
    """
    found = find_trained(weights_root)
    if not found:
        raise InvalidInputError(f"no trained weights under {weights_root} (sub-directories with config.json + model.weights.h5)")
    return {kind: export_trained(kind, path, repository, version, **kwargs) for kind, path in found.items()}


# --------------------------------------------------------------------------------------------
# generic sources
# --------------------------------------------------------------------------------------------
def export_keras_file(path: str | os.PathLike, name: str, repository: str | os.PathLike = "model_repository",
                      version: int = 1, **kwargs) -> ExportResult:
    """A ``.keras`` file (Keras 3's format; no custom objects) exported under ``name``."""
    _tf()
    import keras

    path = Path(path)
    if not path.is_file() or path.suffix not in (".keras", ".h5"):
        raise InvalidInputError(f"{path}: expected an existing .keras (or legacy .h5) model file")
    try:
        model = keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as e:
        raise ExportError(f"cannot load the Keras model {path}: {e}") from e
    return export_keras_model(model, name, keras_input_specs(model), repository, version, source_path=path, **kwargs)


def _signature_function(concrete, input_specs: Sequence[TensorSpec] | None):
    """A tf.function with an explicit signature over a SavedModel signature, and its fixed batch:
    the batch dimension is dynamic unless the signature fixes it (then it keeps that size)."""
    tf = _tf()
    structured = concrete.structured_input_signature[1]
    batch = fixed_batch_of([spec.shape.as_list()[0] if spec.shape.rank else None for spec in structured.values()],
                           "SavedModel signature")
    if input_specs is None:
        input_specs = []
        for key, spec in sorted(structured.items()):
            dims = tuple(-1 if d is None else d for d in spec.shape.as_list()[1:])
            input_specs.append(TensorSpec(key, spec.dtype.name, dims))
    signature = [tf.TensorSpec([batch, *(None if d == -1 else d for d in s.dims)], tf.as_dtype(s.np_dtype), name=s.name)
                 for s in input_specs]
    names = [s.name for s in input_specs]

    @tf.function(input_signature=signature)
    def serve(*xs):
        out = concrete(**dict(zip(names, xs, strict=True)))
        return {k: tf.identity(v, name=k) for k, v in out.items()}

    return serve, tuple(input_specs), batch


def export_saved_model(path: str | os.PathLike, name: str, repository: str | os.PathLike = "model_repository",
                       version: int = 1, *, signature: str = "serving_default",
                       input_specs: Sequence[TensorSpec] | None = None, **kwargs) -> ExportResult:
    """A TensorFlow SavedModel directory, by its ``signature`` (inputs and outputs keep its names).

    A batch the signature fixes is kept (``max_batch_size: 0``, see :func:`export_tflite`)."""
    tf = _tf()
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise InvalidInputError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot load the SavedModel {path}: {e}") from e
    if signature not in loaded.signatures:
        raise InvalidInputError(f"{path} has no signature {signature!r}; it has {sorted(loaded.signatures)}")
    fn, _, batch = _signature_function(loaded.signatures[signature], input_specs)
    source = {"framework": "tensorflow-savedmodel", "path": str(path), "sha256": sha256_path(path), "signature": signature}
    return export_function(fn, name, repository, version, source=source, batch=batch, **kwargs)


def export_tflite(path: str | os.PathLike, name: str, repository: str | os.PathLike = "model_repository",
                  version: int = 1, *, opset: int = DEFAULT_OPSET, **kwargs) -> ExportResult:
    """A ``.tflite`` flatbuffer (tf2onnx's TFLite front end); the gate compares with TF's TFLite interpreter.

    * **Batch.** The batch the source declares is kept. Inputs whose ``shape_signature`` batch is
      -1 get a dynamic batch dimension (``max_batch_size`` > 0; the interpreter runs one row at a
      time). Inputs fixed at a batch ``B`` (MediaPipe's models: 1) are exported as they are:
      ``max_batch_size: 0`` and the full shape (``[B, ...]``) in the Triton config, and the gate
      feeds both sides batches of exactly ``B``. Such graphs often bake the batch into their
      reshapes (``[1, -1, 16]``), so making their batch dynamic would silently mix the rows of a
      batch; Triton then queues requests instead of batching them.
    * **Sparse weights.** DENSIFY ops (sparse constant weights, e.g. ``pose_detection.tflite``)
      are replaced by their dense constants before conversion (:mod:`lookserve.export.tflite`);
      the gate still compares with the original file.
    * **Limits.** The reference is TFLite's interpreter with its built-in kernels (not the
      XNNPACK delegate, another implementation of the same ops). Floating outputs within
      :data:`~lookserve.export.parity.TFLITE_FLOAT` (``max_scaled_diff`` ≤ 1e-3: the max abs
      diff, divided by the output's largest magnitude when that exceeds 1 — MediaPipe's outputs
      are pixels and logits in the hundreds), integer outputs exact — unless ``tolerances`` is given.
    * **Names.** The signature's input/output names when the file has a signature, else the
      interpreter's tensor names (``input_1``, ``Identity``).
    """
    import tf2onnx

    tf = _tf()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such TFLite file")
    try:
        # TFLite's built-in kernels: the XNNPACK delegate (TFLite's default) is another
        # implementation of the same ops, itself up to ~1e-3 of an output's scale away from them
        interpreter = tf.lite.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"TensorFlow's TFLite interpreter cannot load {path}: {e}") from e
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    batch = fixed_batch_of([d["shape_signature"][0] if len(d["shape_signature"]) else None for d in in_details],
                           f"TFLite model {path}")
    with tempfile.TemporaryDirectory(prefix="lookserve-tflite-") as tmp:
        dense, densified = densified_path(path, tmp)
        try:
            proto, _ = tf2onnx.convert.from_tflite(str(dense), opset=opset)
        except Exception as e:  # tf2onnx raises bare errors on unsupported graphs
            raise ExportError(f"tf2onnx could not convert the TFLite model {path}: {type(e).__name__}: {e}") from e
    unconverted = Counter(n.op_type.removeprefix("TFL_") for n in proto.graph.node if n.op_type.startswith("TFL_"))
    if unconverted:  # tf2onnx leaves an op it has no handler for in the graph, under its TFLite name
        raise ExportError(f"tf2onnx cannot convert the TFLite op(s) "
                          f"{', '.join(f'{op} (×{k})' for op, k in sorted(unconverted.items()))} of {path}")
    if batch is None:
        _dynamic_batch(proto)

    signatures = interpreter.get_signature_list()
    runner = None
    if signatures:
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        runner = interpreter.get_signature_runner(key)
        # tf2onnx names tensors after TFLite's (``serving_default_image:0``); serve the signature's names
        by_index = {d["index"]: d["name"] for d in (*in_details, *out_details)}
        mapping = {by_index[d["index"]]: n for n, d in (*runner.get_input_details().items(),
                                                        *runner.get_output_details().items())}
        rename_tensors(proto, mapping)
    onnx_in = [i.name for i in proto.graph.input]
    onnx_out = [o.name for o in proto.graph.output]
    step = batch or 1  # a dynamic-batch TFLite graph still runs one row at a time here

    def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        outs: dict[str, list[np.ndarray]] = {n: [] for n in onnx_out}
        for r in range(0, rows, step):
            if runner is not None:
                got = runner(**{n: feeds[n][r:r + step] for n in onnx_in})
                for n in onnx_out:
                    outs[n].append(np.asarray(got[n]))
                continue
            interpreter.allocate_tensors()
            for d, n in zip(in_details, onnx_in, strict=True):
                interpreter.set_tensor(d["index"], feeds[n][r:r + step])
            interpreter.invoke()
            for d, n in zip(out_details, onnx_out, strict=True):
                outs[n].append(interpreter.get_tensor(d["index"]))
        return {n: np.concatenate(v) for n, v in outs.items()}

    if kwargs.get("tolerances") is None and kwargs.get("kind") is None:
        kwargs["tolerances"] = {o.name: parity.TFLITE_FLOAT if o.type.tensor_type.elem_type in (1, 10, 11)
                                else parity.DEFAULT_INT for o in proto.graph.output}
    source = {"framework": "tflite", "path": str(path), "sha256": sha256_path(path), "densified_tensors": densified}
    return export_function(None, name, repository, version, proto=proto, reference=reference, source=source,
                           opset=opset, batch=batch, **kwargs)


#: the served name of each MediaPipe BlazePose model (:mod:`lookserve.data.pretrained` keys)
POSE_MODELS = {"pose_detector": POSE_DETECTION, "pose_landmarks": POSE_LANDMARK_FULL}


def export_pose_models(repository: str | os.PathLike = "model_repository", version: int = 1,
                       **kwargs) -> dict[str, ExportResult]:
    """MediaPipe BlazePose as two Triton models, through :func:`export_tflite`.

    ``pose_detector`` (``pose_detection.tflite``: ``input_1`` FP32 [1, 224, 224, 3] in [0, 1] →
    ``Identity`` [1, 2254, 12] box/keypoint regressors, ``Identity_1`` [1, 2254, 1] scores; its 38
    sparse weight tensors densified) and ``pose_landmarks`` (``pose_landmark_full.tflite``:
    ``input_1`` FP32 [1, 256, 256, 3] → ``Identity`` [1, 195] landmarks, ``Identity_1`` [1, 1]
    presence, ``Identity_2`` [1, 256, 256, 1] segmentation, ``Identity_3`` [1, 64, 64, 39]
    heatmap, ``Identity_4`` [1, 117] world landmarks); both with their fixed batch of 1
    (``max_batch_size: 0``). The files come from :func:`lookserve.data.pretrained.mediapipe_model`
    (downloaded once, sha256-checked). Keyword arguments pass on to :func:`export_tflite`
    (``overwrite``, ``samples``, ``opset``). Returns ``{name: ExportResult}``.
    """
    return {name: export_tflite(mediapipe_model(rel), name, repository, version, **kwargs)
            for name, rel in POSE_MODELS.items()}


def _dynamic_batch(proto) -> None:
    for v in (*proto.graph.input, *proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"

