"""End-to-end exports of tiny models of every kind (lookserve's own model builders, random weights),
the parity gate refusing an altered graph, variants, the generic Keras/SavedModel/TFLite paths, the
CLI, and real Triton serving what the export wrote."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lookserve.client.core import TritonClient
from lookserve.errors import ExportError, ParityError
from lookserve.export.cli import app
from lookserve.export.models import (
    export_detector,
    export_embedder,
    export_tflite,
    export_view_classifier,
)
from lookserve.export.samples import synthetic_photos
from lookserve.modelconfig import ModelConfig, VersionPolicy
from lookserve.taxonomy import CATEGORIES, FOOTWEAR_TYPES
from lookserve.training import detector, embedder, views
from lookserve.training.common import save_weights
from lookserve.training.embedder import EmbedderConfig, TripletData
from lookserve.training.views import ViewConfig

pytestmark = [pytest.mark.tf, pytest.mark.timeout(300)]


def _randomise(weights: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Seeded non-trivial weights (as after training): BN statistics and scales away from 0/1."""
    rng = np.random.default_rng(seed)
    out = []
    for w in weights:
        noise = rng.normal(0, 0.2, w.shape).astype(w.dtype)
        out.append(np.abs(w + noise) + 0.5 if np.all(w == 1) else w + noise)  # variances/gammas stay > 0
    return out


def EMBEDDER_CONFIG():  # noqa: N802 - a constant that needs a lazy import
    return EmbedderConfig(width=8, internal_size=56, dim=16)


def VIEW_CONFIG():  # noqa: N802
    return ViewConfig(width=8, internal_size=56)


@pytest.fixture(scope="module")
def tiny():
    """Tiny models of the three kinds, built by lookserve's own training code."""
    import keras


    keras.utils.set_random_seed(7)
    emb = embedder.build_model(EMBEDDER_CONFIG())
    emb.set_weights(_randomise(emb.get_weights(), 1))
    view = views.build_model(VIEW_CONFIG())
    view.set_weights(_randomise(view.get_weights(), 2))
    det = detector.build_model(detector.DetectorConfig(
        input_size=128, backbone_width=8, fpn_channels=16, rpn_channels=16, head_dim=32, mask_channels=16,
        rpn_pre_nms_test=100, rpn_post_nms_test=20,
    ))
    return {"embedder": emb, "view_classifier": view, "detector": det}


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """The three tiny models exported as version 1 into one repository."""

    repo = tmp_path_factory.mktemp("exported") / "model_repository"
    results = {
        "embedder": export_embedder(tiny["embedder"], repo, 1),
        "view_classifier": export_view_classifier(tiny["view_classifier"], repo, 1),
        "detector": export_detector(tiny["detector"], repo, 1),
    }
    return repo, results


def test_export_embedder_writes_a_checked_version_when_parity_holds(exported) -> None:
    import onnx

    repo, results = exported
    r = results["embedder"]
    assert r.onnx_path == repo / "embedder" / "1" / "model.onnx"
    model = onnx.load(r.onnx_path)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    info = json.loads(r.export_json.read_text())
    assert info["opset"] == 17 and info["variant"] == "fp32" and info["embedding_dim"] == 16
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"} <= set(info["libraries"])
    assert len(info["source"]["weights_sha256"]) == 64
    assert info["inputs"] == [{"name": "crops", "dtype": "UINT8", "dims": [-1, 224, 224, 3]}]
    assert info["outputs"] == [{"name": "embedding", "dtype": "FP32", "dims": [-1, 16]}]
    assert info["parity"]["passed"] and {f["samples"] for f in info["parity"]["figures"]} == {"random", "photos"}
    assert all(f["metric"] == "min_cosine" and f["value"] >= 0.9999 for f in info["parity"]["figures"])
    config = ModelConfig.read(repo / "embedder" / "config.pbtxt")
    assert config.output("embedding").dims == (16,)
    assert ModelConfig.read(repo / "embedder" / "configs" / "gpu.pbtxt").instance_groups[0].kind == "KIND_GPU"


def test_export_view_classifier_records_types_when_probabilities_match(exported) -> None:
    _, results = exported
    r = results["view_classifier"]
    info = r.metadata
    assert info["class_names"] == list(FOOTWEAR_TYPES)
    assert {(f.output, f.metric) for f in r.figures} == {("type_probs", "max_abs_diff"), ("best_view", "max_abs_diff")}
    assert all(f.value <= 1e-4 for f in r.figures)
    assert [t.name for t in r.config.outputs] == ["type_probs", "best_view"]


def test_export_detector_matches_detections_when_converted(exported) -> None:
    _, results = exported
    r = results["detector"]
    figures = {(f.output, f.samples): f for f in r.figures}
    assert figures[("detections", "photos")].value == 0 and figures[("detections", "street")].value == 0
    street = r.metadata["parity"]["samples"]["street"]
    assert street["counts"] and "street photos of a generated data set" in street["source"]
    assert figures[("reference_detections", "street")].value == street["reference_detections"] >= 2 * street["rows"]
    assert figures[("boxes", "random")].value <= 0.5 and figures[("masks", "photos")].value >= 0.99
    assert r.metadata["class_names"] == list(CATEGORIES)
    assert r.config.input("images").dims == (128, 128, 3)
    assert r.config.output("masks").dims == (20, 28, 28)


def test_export_refuses_and_writes_nothing_when_an_initializer_is_perturbed(tiny, tmp_path: Path) -> None:
    from onnx import numpy_helper


    def perturb(proto) -> None:
        init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight tensor
        arr = numpy_helper.to_array(init).copy()
        arr.flat[: arr.size // 4] *= 1.5
        init.CopyFrom(numpy_helper.from_array(arr, init.name))

    repo = tmp_path / "model_repository"
    with pytest.raises(ParityError, match=r"embedder: .*embedding: min_cosine = 0\.\d+ on (random|photos)"):
        export_embedder(tiny["embedder"], repo, 1, tamper=perturb)
    assert not (repo / "embedder").exists() or list((repo / "embedder").iterdir()) == []


def test_export_detector_refuses_when_one_class_of_the_onnx_graph_is_zeroed(exported, tiny, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper


    repo, results = exported
    proto = onnx.load(results["detector"].onnx_path)  # the converted graph that passed; no new conversion
    classes = tiny["detector"].config.num_classes + 1
    zeroed = []

    def zero_one_class(model) -> None:
        for init in model.graph.initializer:  # the box head's class logits: [head_dim, classes]
            if list(init.dims) == [32, classes]:
                w = numpy_helper.to_array(init).copy()
                w[:, 3] = 0.0  # class 3 (of 1..11; 0 is the background)
                init.CopyFrom(numpy_helper.from_array(w, init.name))
                zeroed.append(init.name)

    out = tmp_path / "model_repository"
    with pytest.raises(ParityError, match=r"detector: the ONNX model diverges .*on street"):
        export_detector(tiny["detector"], out, 1, proto=proto, tamper=zero_one_class)
    assert len(zeroed) == 1, f"expected one class-logit kernel, zeroed {zeroed}"
    assert not (out / "detector" / "1").exists()


def test_export_refuses_before_converting_when_the_version_exists(exported, tiny) -> None:
    repo, _ = exported
    before = (repo / "embedder" / "1" / "model.onnx").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_embedder(tiny["embedder"], repo, 1)
    assert (repo / "embedder" / "1" / "model.onnx").read_bytes() == before


def test_export_variants_write_their_own_versions_with_figures_when_reduced(tiny, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 12
    street = synthetic_photos(n, 224, 224, seed=11)
    shop = np.clip(street.astype(int) + rng.integers(-20, 21, street.shape), 0, 255).astype(np.uint8)
    products = np.arange(n)
    cats = np.repeat([0, 1], n // 2)
    data = TripletData(street, products, cats, shop, products, cats)
    repo = tmp_path / "model_repository"
    fp32 = export_embedder(tiny["embedder"], repo, 1, eval_data=data)
    with pytest.raises(ExportError, match="the int8 embedder is judged by held-out retrieval.*--eval-data"):
        export_embedder(tiny["embedder"], repo, 2, variant="int8")  # the retrieval check is not optional
    int8 = export_embedder(tiny["embedder"], repo, 2, variant="int8", eval_data=data)
    fp16 = export_embedder(tiny["embedder"], repo, 3, variant="fp16", eval_data=data)
    assert sorted(p.name for p in (repo / "embedder").iterdir() if p.is_dir()) == ["1", "2", "3", "configs"]
    assert fp32.metadata["retrieval"]["top1_change"] == 0.0
    retrieval = int8.metadata["retrieval"]
    assert retrieval["queries"] == n and retrieval["top1_change"] == retrieval["top1_onnx"] - retrieval["top1_source"]
    assert retrieval["passed"] and retrieval["top1_change_limit"] == 0.01 and abs(retrieval["top1_change"]) <= 0.01
    assert fp16.metadata["retrieval"]["passed"]
    assert int8.metadata["variant"] == "int8" and all(f.limit == 0.98 for f in int8.figures)
    assert fp16.metadata["variant"] == "fp16" and all(f.value >= 0.999 for f in fp16.figures)
    assert int8.onnx_path.stat().st_size < fp32.onnx_path.stat().st_size
    types = {n.op_type for n in __import__("onnx").load(int8.onnx_path).graph.node}
    assert types & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def test_export_tflite_goes_through_the_generic_path_when_made_by_the_converter(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf


    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), dtype="float32", name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    r = export_tflite(path, "tiny_tflite", tmp_path / "repo", 1)
    assert [t.name for t in r.inputs] == ["image"] and r.outputs[0].dims == (3,)
    assert all(f.value <= 1e-4 for f in r.figures)
    assert r.metadata["source"]["framework"] == "tflite" and len(r.metadata["source"]["sha256"]) == 64
    import onnxruntime as ort

    batch = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)  # a batch the .tflite never had
    (got,) = ort.InferenceSession(str(r.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": batch})
    np.testing.assert_allclose(got, model.predict(batch, verbose=0), atol=1e-4)


def test_cli_exports_a_keras_file_and_a_saved_model_when_given_paths(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf


    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 255)(keras.ops.cast(inp, "float32"))
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, {"score": keras.layers.Dense(2, name="score")(x)})
    model.save(tmp_path / "m.keras")
    repo = tmp_path / "repo"
    runner = CliRunner()
    result = runner.invoke(app, ["keras", str(tmp_path / "m.keras"), "--name", "scorer", "--repository", str(repo)])
    assert result.exit_code == 0, result.output
    assert "parity gate: scorer v1" in result.output and (repo / "scorer" / "1" / "model.onnx").is_file()

    module = tf.Module()
    module.model = model  # tracked, so its variables are saved
    module.f = tf.function(lambda pixels: {"score": model(pixels)["score"]},
                           input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.uint8, name="pixels")])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.f})
    result = runner.invoke(app, ["saved-model", str(tmp_path / "sm"), "--name", "scorer_sm", "--repository", str(repo)])
    assert result.exit_code == 0, result.output
    config = ModelConfig.read(repo / "scorer_sm" / "config.pbtxt")
    assert [t.name for t in config.inputs] == ["pixels"] and [t.name for t in config.outputs] == ["score"]

    again = runner.invoke(app, ["keras", str(tmp_path / "m.keras"), "--name", "scorer", "--repository", str(repo)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_exports_every_trained_model_when_given_a_weights_root(tiny, tmp_path: Path) -> None:

    root = tmp_path / "weights"
    save_weights(tiny["embedder"], EMBEDDER_CONFIG().to_dict(), root / "emb", "embedder")
    save_weights(tiny["view_classifier"], VIEW_CONFIG().to_dict(), root / "views", "view_classifier")
    (root / "notes").mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()

    for i, img in enumerate(synthetic_photos(2, 300, 200, seed=8)):
        cv2.imwrite(str(photos / f"{i}.jpg"), img[..., ::-1])
    repo = tmp_path / "repo"
    result = CliRunner().invoke(app, ["all", "--weights-root", str(root), "--version", "4", "--repository", str(repo),
                                      "--photos", str(photos)])
    assert result.exit_code == 0, result.output
    assert f"photos from {photos}" in result.output
    for name, weights in (("embedder", root / "emb"), ("view_classifier", root / "views")):
        info = json.loads((repo / name / "4" / "export.json").read_text())
        assert info["source"]["path"] == str(weights) and len(info["source"]["sha256"]) == 64
    single = CliRunner().invoke(app, ["embedder", "--weights", str(root / "emb"), "--version", "5", "--repository", str(repo)])
    assert single.exit_code == 0, single.output
    # the model exported from disk answers as the in-memory model whose weights were saved
    import onnxruntime as ort

    crops = synthetic_photos(2, 224, 224, seed=4)
    session = ort.InferenceSession(str(repo / "embedder" / "5" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"crops": crops})[0],
                               np.asarray(tiny["embedder"](crops)["embedding"]), atol=1e-5)
    missing = CliRunner().invoke(app, ["embedder", "--weights", str(tmp_path / "nope"), "--version", "1"])
    assert missing.exit_code == 2 and "not a directory of trained weights" in missing.output


@pytest.mark.triton
def test_triton_serves_every_exported_model_with_onnxruntimes_answers(exported, triton_factory) -> None:
    import onnxruntime as ort


    repo, results = exported
    server = triton_factory(repo, models=sorted(results))
    with TritonClient(server.grpc_url) as client:
        for name, r in results.items():
            (spec,) = r.inputs
            batch = synthetic_photos(2, spec.dims[0], spec.dims[1], seed=21)
            answer = client.infer(name, {spec.name: batch})
            assert answer.model_version == "1"
            session = ort.InferenceSession(str(r.onnx_path), providers=["CPUExecutionProvider"])
            expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {spec.name: batch}), strict=True))
            assert set(answer.outputs) == set(expected), name
            for out, value in expected.items():
                np.testing.assert_allclose(answer.outputs[out], value, rtol=1e-5, atol=1e-6, err_msg=f"{name}.{out}")
            client.check_contract(r.config)


def test_export_keeps_a_pinned_version_policy_and_refuses_other_tensors_when_a_config_exists(tiny, tmp_path: Path) -> None:

    repo = tmp_path / "model_repository"
    first = export_embedder(tiny["embedder"], repo, 1)
    pinned = replace(first.config, version_policy=VersionPolicy("specific", versions=(1,)))
    pinned.write(first.config_path)  # as `lookserve models publish` pins what serves
    second = export_embedder(tiny["embedder"], repo, 2)
    assert second.config.version_policy == VersionPolicy("specific", versions=(1,))  # v2 waits for a promote
    assert ModelConfig.read(second.gpu_config_path).version_policy == second.config.version_policy

    other = replace(first.config, outputs=(replace(first.config.outputs[0], dims=(32,)),))
    other.write(first.config_path)
    with pytest.raises(ExportError, match="serves other tensors than the new graph has"):
        export_embedder(tiny["embedder"], repo, 3)
    assert not (repo / "embedder" / "3").exists()
