"""The detector's parity gate refuses what it cannot judge: a source that detects (almost) nothing on
the data set's street photos, and a detector whose graph was tampered with (one class's weights zeroed).

The first tests run a detector-shaped ONNX graph (built here with onnx.helper, no TensorFlow) that
answers ``n`` fixed detections per image, against itself: the comparison is perfect, so only the
reference-detection minimum can refuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookserve.data.synth import SynthConfig, generate
from lookserve.errors import ExportError, ParityError
from lookserve.export import parity
from lookserve.export.core import ParitySamples, run_parity_gate
from lookserve.export.samples import STREET_SEED, street_photos
from lookserve.modelconfig import TensorSpec

SIZE, MAX_DET, MASK = 64, 6, 8


def _constant_detector(n: int) -> bytes:
    """A detector-shaped graph: ``images`` UINT8 [B, S, S, 3] → ``n`` fixed detections per image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, SIZE / 2, (MAX_DET, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, SIZE / 2, (MAX_DET, 2))], axis=1).astype(np.float32)
    inits = [
        numpy_helper.from_array(boxes, "box_values"),
        numpy_helper.from_array(np.linspace(0.9, 0.1, MAX_DET).astype(np.float32), "score_values"),
        numpy_helper.from_array(np.arange(MAX_DET, dtype=np.int32) % 11, "class_values"),
        numpy_helper.from_array(rng.uniform(0, 1, (MAX_DET, MASK, MASK)).astype(np.float32), "mask_values"),
        numpy_helper.from_array(np.array([n], np.int32), "n_value"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]

    def per_image(out: str, values: str, rank: int, dtype: int) -> list:
        """``values`` repeated for every image of the batch: ConstantOfShape([B, 1, ...]) + values."""
        ones = [helper.make_tensor(f"{out}_ones", TensorProto.INT64, [rank], [1] * rank)]
        return [
            helper.make_node("Constant", [], [f"{out}_rest"], value=ones[0]),
            helper.make_node("Concat", ["batch", f"{out}_rest"], [f"{out}_shape"], axis=0),
            helper.make_node("ConstantOfShape", [f"{out}_shape"], [f"{out}_zeros"],
                             value=helper.make_tensor("v", dtype, [1], [0])),
            helper.make_node("Add", [f"{out}_zeros", values], [out]),
        ]

    nodes = [
        helper.make_node("Shape", ["images"], ["image_shape"]),
        helper.make_node("Slice", ["image_shape", "zero", "one"], ["batch"]),
        *per_image("boxes", "box_values", 2, TensorProto.FLOAT),
        *per_image("scores", "score_values", 1, TensorProto.FLOAT),
        *per_image("classes", "class_values", 1, TensorProto.INT32),
        *per_image("masks", "mask_values", 3, TensorProto.FLOAT),
        *per_image("num_detections", "n_value", 1, TensorProto.INT32),
    ]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", MAX_DET, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", MAX_DET]),
        helper.make_tensor_value_info("classes", TensorProto.INT32, ["B", MAX_DET]),
        helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["B", MAX_DET, MASK, MASK]),
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["B", 1]),
    ]
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", SIZE, SIZE, 3])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _gate(n: int, street_batch: int = 3):
    import onnxruntime as ort

    model = _constant_detector(n)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def reference(feeds):  # the source answers exactly what the ONNX graph answers
        return dict(zip(names, session.run(None, feeds), strict=True))

    specs = (TensorSpec("images", "UINT8", (SIZE, SIZE, 3)),)
    return run_parity_gate(model, reference, specs, None, "detector", "detector", ParitySamples(street_batch=street_batch))


def test_detector_gate_refuses_when_the_source_detects_nothing_on_street_photos() -> None:
    # before the fix: 0 unmatched, box Δ 0, mask IoU 1.0 — every figure passed on nothing at all
    with pytest.raises(ParityError, match=r"reference_detections: 0 on street \(need ≥ 6; the source detects too little"):
        _gate(0)


def test_detector_gate_refuses_to_run_when_asked_for_no_street_photos() -> None:
    with pytest.raises(ExportError, match="judged on street photos; street_batch must be ≥ 1"):
        _gate(5, street_batch=0)  # 0 rows would need 0 detections: a minimum that cannot fail


def test_detector_gate_refuses_when_the_source_detects_fewer_than_two_per_photo() -> None:
    with pytest.raises(ParityError, match=r"reference_detections: 3 on street \(need ≥ 6"):
        _gate(1)


def test_detector_gate_passes_and_records_the_count_when_the_source_detects_enough() -> None:
    figures, described = _gate(2)
    counts = {f.samples: f for f in figures if f.output == "reference_detections"}
    assert set(counts) == {"street"}, "random noise and shape scenes stay extra checks without a minimum"
    assert counts["street"].value == 6 and counts["street"].limit == 6 and counts["street"].passed
    assert described["street"]["reference_detections"] == 6 and described["street"]["counts"] is True
    assert described["random"]["counts"] is False
    assert f"seed {STREET_SEED}" in described["street"]["source"]


def test_compare_detections_fails_the_count_when_nothing_is_detected_on_a_set_that_counts() -> None:
    empty = {"boxes": np.zeros((2, 4, 4), np.float32), "scores": np.zeros((2, 4), np.float32),
             "classes": np.zeros((2, 4), np.int32), "masks": np.zeros((2, 4, 8, 8), np.float32),
             "num_detections": np.zeros((2, 1), np.int32)}
    figures = {f.output: f for f in parity.compare_detections(empty, empty, parity.DetectionTolerance(), "street")}
    assert not figures["reference_detections"].passed and figures["reference_detections"].limit == 4
    assert all(f.passed for name, f in figures.items() if name != "reference_detections")
    extra = parity.compare_detections(empty, empty, parity.DetectionTolerance(), "random", require_detections=False)
    assert "reference_detections" not in {f.output for f in extra}


def test_street_photos_are_seeded_letterboxed_data_set_photos_when_read_from_a_root(tmp_path: Path) -> None:
    root = generate(tmp_path / "data", SynthConfig(n_products=11, n_street=5, n_shoes=0), seed=3)
    a, source = street_photos(4, 96, seed=1, data_root=root)
    b, _ = street_photos(4, 96, seed=1, data_root=root)
    assert a.shape == (4, 96, 96, 3) and a.dtype == np.uint8 and str(root) in source
    np.testing.assert_array_equal(a, b)
    assert a.std() > 10  # photos, not blank padding
    generated, label = street_photos(2, 96, seed=1)
    assert generated.shape == (2, 96, 96, 3) and f"seed {STREET_SEED}" in label
