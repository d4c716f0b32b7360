"""The generic TFLite export on real MediaPipe models: fixed batch, sparse (DENSIFY) weights, refusals.

The ``.tflite`` files come from the mediapipe 0.10.14 wheel through
:func:`lookserve.data.pretrained.mediapipe_model` (``make test-data`` fetches them once); the
module skips, saying why, when they cannot be fetched. Each model is converted once per module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookserve.data.pretrained import (
    FACE_DETECTION_SHORT_RANGE,
    PALM_DETECTION_LITE,
    POSE_DETECTION,
    POSE_LANDMARK_FULL,
    SELFIE_SEGMENTATION,
    mediapipe_model,
)
from lookserve.errors import DataError, ExportError
from lookserve.export import parity
from lookserve.export.core import ParitySamples, export_keras_model
from lookserve.export.models import export_pose_models, export_saved_model, export_tflite
from lookserve.export.samples import synthetic_photos
from lookserve.export.tflite import (
    DENSE,
    SPARSE_CSR,
    DimMetadata,
    Sparsity,
    densified_path,
    densify,
)
from lookserve.modelconfig import ModelConfig

pytestmark = [pytest.mark.tf, pytest.mark.slow]

#: fewer rows than the CLI's gate (3 + 3): the module's time budget; every row is still compared
SMALL = ParitySamples(random_batch=1, photo_batch=2)


@pytest.fixture(scope="module")
def tflite() -> dict[str, Path]:
    try:
        return {k: mediapipe_model(k) for k in (FACE_DETECTION_SHORT_RANGE, PALM_DETECTION_LITE, POSE_DETECTION,
                                                POSE_LANDMARK_FULL, SELFIE_SEGMENTATION)}
    except DataError as e:
        pytest.skip(f"the MediaPipe models cannot be fetched (run `make test-data` where the registry is reachable): {e}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tflite-repo")


@pytest.fixture(scope="module")
def pose(tflite, repo):
    return export_pose_models(repo, 1, samples=SMALL)


def _interpreter_outputs(path: Path, image: np.ndarray, builtin: bool = True) -> list[np.ndarray]:
    import tensorflow as tf

    kind = tf.lite.experimental.OpResolverType
    it = tf.lite.Interpreter(str(path), experimental_op_resolver_type=kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                             if builtin else kind.AUTO)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], image)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def _smooth_image(size: int, seed: int) -> np.ndarray:
    return synthetic_photos(1, size, size, seed=seed).astype(np.float32) / 255.0


# --- the densifier -------------------------------------------------------------------------
def test_densify_puts_each_value_where_the_csr_metadata_says_when_given_a_hand_made_tensor() -> None:
    # rows dense (3), columns CSR: row 0 has columns 1 and 3, row 1 none, row 2 column 0
    sparsity = Sparsity((0, 1), (DimMetadata(DENSE, 3), DimMetadata(SPARSE_CSR, segments=(0, 2, 2, 3), indices=(1, 3, 0))))
    dense = densify(np.array([1.5, -2.0, 7.0], np.float16), (3, 4), sparsity)
    want = np.array([[0, 1.5, 0, -2.0], [0, 0, 0, 0], [7.0, 0, 0, 0]], np.float16)
    assert dense.dtype == np.float16 and np.array_equal(dense, want)


def test_densify_fills_whole_blocks_when_the_layout_is_block_sparse() -> None:
    # a 4×4 of 2×2 blocks: block rows dense, block columns CSR (block (0,0) and block (1,1)), blocks dense
    sparsity = Sparsity((0, 1, 2, 3), (DimMetadata(DENSE, 2), DimMetadata(SPARSE_CSR, segments=(0, 1, 2), indices=(0, 1)),
                                       DimMetadata(DENSE, 2), DimMetadata(DENSE, 2)), block_map=(0, 1))
    dense = densify(np.arange(1, 9, dtype=np.float32), (4, 4), sparsity)
    want = np.array([[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 5, 6], [0, 0, 7, 8]], np.float32)
    assert np.array_equal(dense, want)


def test_densify_refuses_when_the_metadata_addresses_fewer_values_than_stored() -> None:
    sparsity = Sparsity((0, 1), (DimMetadata(DENSE, 2), DimMetadata(SPARSE_CSR, segments=(0, 1, 1), indices=(2,))))
    with pytest.raises(ExportError, match="addresses 1 of its 2 values"):
        densify(np.ones(2, np.float32), (2, 3), sparsity)


def test_densified_pose_detection_computes_exactly_what_the_sparse_one_does_when_run_by_tflite(tflite, tmp_path) -> None:
    dense_path, removed = densified_path(tflite[POSE_DETECTION], tmp_path)
    assert removed == 38 and dense_path != tflite[POSE_DETECTION]
    image = _smooth_image(224, seed=5)
    for a, b in zip(_interpreter_outputs(tflite[POSE_DETECTION], image), _interpreter_outputs(dense_path, image), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)  # same kernels, same weights: bit-exact


# --- the limit -----------------------------------------------------------------------------
def test_tflite_limit_is_relative_to_the_output_scale_when_the_output_exceeds_one() -> None:
    tol = {"pixels": parity.TFLITE_FLOAT, "probs": parity.TFLITE_FLOAT}
    ref = {"pixels": np.array([[500.0, -3.0]]), "probs": np.array([[0.5, 0.1]])}
    near = {"pixels": np.array([[500.4, -3.0]]), "probs": np.array([[0.5009, 0.1]])}
    far = {"pixels": np.array([[500.6, -3.0]]), "probs": np.array([[0.5011, 0.1]])}
    figures = {f.output: f for f in parity.compare_tensors(ref, near, tol, "t")}
    assert figures["pixels"].value == pytest.approx(0.4 / 500) and figures["pixels"].passed
    assert figures["probs"].value == pytest.approx(9e-4) and figures["probs"].passed  # absolute within ±1
    assert not any(f.passed for f in parity.compare_tensors(ref, far, tol, "t"))


# --- fixed batch ---------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "size", "outputs"), [
    (FACE_DETECTION_SHORT_RANGE, 128, {"regressors": (1, 896, 16), "classificators": (1, 896, 1)}),
    (PALM_DETECTION_LITE, 192, {"Identity": (1, 2016, 18), "Identity_1": (1, 2016, 1)}),
])
def test_export_tflite_keeps_the_fixed_batch_when_the_source_fixes_it(tflite, repo, key, size, outputs) -> None:
    name = Path(key).stem
    r = export_tflite(tflite[key], name, repo, 1, samples=SMALL)
    config = ModelConfig.read(r.config_path)
    assert r.batch == 1 and config.max_batch_size == 0 and config.dynamic_batching is None
    assert [t.dims for t in config.inputs] == [(1, size, size, 3)]
    assert {t.name: t.dims for t in config.outputs} == outputs
    assert config.warmup[0].batch_size == 1 and config.warmup[0].inputs[0].dims == (1, size, size, 3)
    assert r.metadata["batch"] == {"fixed": 1, "max_batch_size": 0}
    assert r.figures and all(f.passed and f.limit == 1e-3 for f in r.figures)
    import onnxruntime as ort

    session = ort.InferenceSession(str(r.onnx_path), providers=["CPUExecutionProvider"])
    image = _smooth_image(size, seed=11)  # not one the gate saw
    got = session.run(None, {config.inputs[0].name: image})
    for want, have in zip(_interpreter_outputs(tflite[key], image), got, strict=True):
        assert float(np.max(np.abs(want - have))) <= 1e-3


# --- the pose models (export_pose_models) ---------------------------------------------------
def test_export_pose_models_writes_both_models_when_given_a_repository(pose, repo) -> None:
    assert set(pose) == {"pose_detector", "pose_landmarks"}
    det, lmk = pose["pose_detector"], pose["pose_landmarks"]
    assert det.version_dir == repo / "pose_detector" / "1" and lmk.version_dir == repo / "pose_landmarks" / "1"
    assert [(t.name, t.dims) for t in det.config.inputs] == [("input_1", (1, 224, 224, 3))]
    assert [(t.name, t.dims) for t in lmk.config.inputs] == [("input_1", (1, 256, 256, 3))]
    assert {t.name: t.dims for t in lmk.config.outputs} == {
        "Identity": (1, 195), "Identity_1": (1, 1), "Identity_2": (1, 256, 256, 1), "Identity_3": (1, 64, 64, 39),
        "Identity_4": (1, 117)}
    assert det.metadata["source"]["densified_tensors"] == 38 and lmk.metadata["source"]["densified_tensors"] == 0
    for r in (det, lmk):
        assert r.figures and all(f.passed for f in r.figures), [f.describe() for f in r.figures]


@pytest.mark.parametrize(("name", "key", "size"), [("pose_detector", POSE_DETECTION, 224),
                                                    ("pose_landmarks", POSE_LANDMARK_FULL, 256)])
def test_exported_pose_model_matches_the_interpreter_when_given_a_fresh_image(pose, tflite, name, key, size) -> None:
    import onnxruntime as ort

    image = _smooth_image(size, seed=21)
    session = ort.InferenceSession(str(pose[name].onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_1": image})
    for want, have in zip(_interpreter_outputs(tflite[key], image), got, strict=True):
        scale = max(1.0, float(np.max(np.abs(want))))  # landmarks are pixels (±600), segmentation logits (−1500)
        assert want.shape == have.shape and float(np.max(np.abs(want - have))) / scale <= 1e-3


# --- refusals ------------------------------------------------------------------------------
def test_export_tflite_names_the_op_when_tf2onnx_cannot_convert_it(tflite, tmp_path) -> None:
    with pytest.raises(ExportError, match=r"cannot convert the TFLite op\(s\) Convolution2DTransposeBias \(×1\)"):
        export_tflite(tflite[SELFIE_SEGMENTATION], "selfie", tmp_path, 1, samples=SMALL)
    assert not (tmp_path / "selfie").exists()


# --- fixed batch in the other generic sources ----------------------------------------------------
def test_export_keras_model_keeps_the_fixed_batch_when_the_input_fixes_it(tmp_path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), batch_size=2, name="x")
    mixed = keras.ops.reshape(keras.ops.reshape(inp, (1, 8)) * 2.0, (2, 4))  # the batch baked into the graph
    model = keras.Model(inp, {"y": keras.layers.Dense(3, name="y")(mixed)})
    r = export_keras_model(model, "fixed2", repository=tmp_path, version=1)
    config = ModelConfig.read(r.config_path)
    assert r.batch == 2 and config.max_batch_size == 0 and config.inputs[0].dims == (2, 4)
    assert config.outputs[0].dims == (2, 3)
    assert r.metadata["parity"]["samples"]["random"]["rows"] == 4  # 3 rows rounded up to whole batches of 2
    assert r.figures and all(f.passed for f in r.figures)


def test_export_saved_model_keeps_the_fixed_batch_when_the_signature_fixes_it(tmp_path) -> None:
    import tensorflow as tf

    class Mixer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 6], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.reshape(tf.reverse(tf.reshape(x, [6]), [0]), [1, 6])}

    module = Mixer()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    r = export_saved_model(tmp_path / "sm", "mixer", tmp_path / "repo", 1)
    config = ModelConfig.read(r.config_path)
    assert r.batch == 1 and config.max_batch_size == 0 and config.inputs[0].dims == (1, 6)
    assert r.figures and all(f.passed for f in r.figures)
