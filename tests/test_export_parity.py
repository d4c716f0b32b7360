"""The parity gate's comparisons, sample inputs and version writing (numpy and onnx only; no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lookserve import contracts
from lookserve.errors import ExportError, InvalidInputError, ParityError
from lookserve.export import parity
from lookserve.export.core import (
    check_contract,
    run_parity_gate,
    serving_config,
    sha256_path,
    write_version,
)
from lookserve.export.models import enforce_retrieval
from lookserve.export.samples import photo_inputs, random_inputs, synthetic_photos
from lookserve.modelconfig import TensorSpec
from tinymodels import projection_embedder


def _detections(rng: np.random.Generator, batch: int = 2, n: int = 20, valid: int = 5) -> dict[str, np.ndarray]:
    xy = rng.uniform(0, 400, (batch, n, 2)).astype(np.float32)
    wh = rng.uniform(20, 100, (batch, n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=-1)
    scores = np.sort(rng.uniform(0.1, 1, (batch, n)).astype(np.float32), axis=1)[:, ::-1].copy()
    classes = rng.integers(0, 11, (batch, n)).astype(np.int32)
    masks = rng.uniform(0, 1, (batch, n, 28, 28)).astype(np.float32)
    for arr in (boxes, scores, classes, masks):
        arr[:, valid:] = 0
    return {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks,
            "num_detections": np.full((batch, 1), valid, np.int32)}


def _permuted(dets: dict[str, np.ndarray], valid: int) -> dict[str, np.ndarray]:
    order = np.r_[np.arange(valid)[::-1], np.arange(valid, dets["boxes"].shape[1])]
    return {k: (v[:, order] if k != "num_detections" else v.copy()) for k, v in dets.items()}


def test_compare_detections_passes_when_same_detections_come_in_another_order(rng) -> None:
    ref = _detections(rng)
    figures = parity.compare_detections(ref, _permuted(ref, 5), parity.DetectionTolerance(), "random")
    assert all(f.passed for f in figures), [f.describe() for f in figures]
    assert {f.output: f.value for f in figures}["detections"] == 0


def test_compare_detections_fails_when_a_box_moves_more_than_half_a_pixel(rng) -> None:
    ref = _detections(rng)
    got = {k: v.copy() for k, v in ref.items()}
    got["boxes"][1, 2, 0] += 0.6
    figures = {f.output: f for f in parity.compare_detections(ref, got, parity.DetectionTolerance(), "photos")}
    assert not figures["boxes"].passed
    assert figures["boxes"].value == pytest.approx(0.6, abs=1e-4)
    assert figures["scores"].passed and figures["masks"].passed


def test_compare_detections_counts_mismatch_when_a_class_or_count_differs(rng) -> None:
    ref = _detections(rng)
    got = {k: v.copy() for k, v in ref.items()}
    got["classes"][0, 0] = (got["classes"][0, 0] + 1) % 11
    got["num_detections"][1] = 4
    figures = {f.output: f for f in parity.compare_detections(ref, got, parity.DetectionTolerance(), "random")}
    assert figures["detections"].value == 2 + 1  # the re-classed pair (one on each side), the dropped one
    assert not figures["detections"].passed


def test_compare_detections_fails_when_a_mask_changes(rng) -> None:
    ref = _detections(rng)
    got = {k: v.copy() for k, v in ref.items()}
    got["masks"][0, 3, :14] = 1.0 - got["masks"][0, 3, :14]
    figures = {f.output: f for f in parity.compare_detections(ref, got, parity.DetectionTolerance(), "random")}
    assert figures["masks"].value < 0.99 and not figures["masks"].passed


def test_compare_tensors_measures_cosine_per_row_when_embeddings_differ(rng) -> None:
    a = rng.normal(size=(4, 16)).astype(np.float32)
    b = a.copy()
    b[2] += rng.normal(size=16).astype(np.float32) * 0.05
    (fig,) = parity.compare_tensors({"embedding": a}, {"embedding": b}, parity.TOLERANCES["embedder"], "random")
    expected = float(a[2] @ b[2] / np.linalg.norm(a[2]) / np.linalg.norm(b[2]))
    assert fig.value == pytest.approx(expected, abs=1e-6)
    assert not fig.passed


def test_enforce_names_the_output_and_the_divergence_when_a_figure_fails() -> None:
    figures = [parity.Figure("type_probs", "max_abs_diff", 3e-3, 1e-4, "photos"),
               parity.Figure("best_view", "max_abs_diff", 1e-7, 1e-4, "photos")]
    with pytest.raises(ParityError, match=r"type_probs: max_abs_diff = 0\.003 on photos") as e:
        parity.enforce(figures, "view_classifier")
    assert "best_view" not in str(e.value)


def test_synthetic_photos_are_seeded_and_photo_like_when_generated() -> None:
    a, b = synthetic_photos(3, 64, 48, seed=5), synthetic_photos(3, 64, 48, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 64, 48, 3) and a.dtype == np.uint8
    # photos are smooth: neighbouring pixels differ far less than in uniform noise (~85)
    assert np.abs(np.diff(a.astype(int), axis=2)).mean() < 30
    assert not np.array_equal(a, synthetic_photos(3, 64, 48, seed=6))


def test_sample_inputs_follow_the_specs_when_asked_for_random_and_photos() -> None:
    specs = (TensorSpec("crops", "UINT8", (32, 32, 3)),)
    feeds = random_inputs(specs, 2, seed=1)
    assert feeds["crops"].shape == (2, 32, 32, 3) and feeds["crops"].dtype == np.uint8
    photos, source = photo_inputs(specs, 2, seed=1)
    assert photos["crops"].shape == (2, 32, 32, 3) and source
    assert photo_inputs((TensorSpec("ids", "INT64", (7,)),), 2, seed=1) is None


def test_parity_gate_refuses_when_the_onnx_model_differs_from_the_reference(tmp_path: Path) -> None:
    path = projection_embedder(tmp_path / "m.onnx", size=32, dim=16, seed=0)
    other = projection_embedder(tmp_path / "o.onnx", size=32, dim=16, seed=1)
    import onnxruntime as ort

    ref_session = ort.InferenceSession(str(other), providers=["CPUExecutionProvider"])
    specs = (TensorSpec("crops", "UINT8", (32, 32, 3)),)
    with pytest.raises(ParityError, match="embedding: min_cosine"):
        run_parity_gate(path.read_bytes(), lambda f: {"embedding": ref_session.run(None, f)[0]}, specs, None,
                        "embedder", "embedder")
    same = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    figures, samples = run_parity_gate(path.read_bytes(), lambda f: {"embedding": same.run(None, f)[0]}, specs, None,
                                       "embedder", "embedder")
    assert {f.samples for f in figures} == {"random", "photos"} and all(f.value == pytest.approx(1.0, abs=1e-6) for f in figures)
    assert samples["photos"]["rows"] == 3


def test_write_version_refuses_when_the_version_exists_and_leaves_no_temp(tmp_path: Path) -> None:
    model_dir = tmp_path / "embedder"
    write_version(model_dir, 1, b"onnx-bytes", {"version": 1})
    with pytest.raises(ExportError, match="already exists"):
        write_version(model_dir, 1, b"other", {"version": 1})
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert json.loads((model_dir / "1" / "export.json").read_text()) == {"version": 1}
    write_version(model_dir, 1, b"new", {"version": 1}, overwrite=True)
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def test_write_version_writes_nothing_when_the_info_cannot_be_serialised(tmp_path: Path) -> None:
    model_dir = tmp_path / "embedder"
    info: dict = {}  # a circular dict: json.dump fails half-way through export.json
    info["self"] = info
    with pytest.raises(ValueError):
        write_version(model_dir, 2, b"onnx", info)
    assert list(model_dir.iterdir()) == []


def test_check_contract_names_the_difference_when_an_output_is_wrong() -> None:
    template = contracts.embedder_config(dim=16, crop_size=32)
    good = serving_config("embedder", template.inputs, template.outputs, template)
    check_contract(good, template)
    bad = serving_config("embedder", template.inputs, (TensorSpec("embedding", "FP32", (8,)),), template)
    with pytest.raises(ExportError, match=r"output 'embedding' has dims \(8,\), the contract says \(16,\)"):
        check_contract(bad, template)
    renamed = serving_config("embedder", template.inputs, (TensorSpec("emb", "FP32", (16,)),), template)
    with pytest.raises(ExportError, match="missing output 'embedding'"):
        check_contract(renamed, template)


def test_photo_inputs_come_from_a_directory_when_one_is_given(tmp_path: Path) -> None:

    for i, img in enumerate(synthetic_photos(3, 40, 60, seed=9)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    specs = (TensorSpec("images", "UINT8", (32, 32, 3)),)
    feeds, source = photo_inputs(specs, 4, seed=2, photo_dir=tmp_path)
    again, _ = photo_inputs(specs, 4, seed=2, photo_dir=tmp_path)
    assert feeds["images"].shape == (4, 32, 32, 3) and str(tmp_path) in source
    np.testing.assert_array_equal(feeds["images"], again["images"])
    with pytest.raises(InvalidInputError, match="holds no images"):
        photo_inputs(specs, 2, seed=2, photo_dir=tmp_path / "empty")


def test_enforce_retrieval_refuses_when_the_held_out_top1_moves_by_more_than_a_hundredth() -> None:
    def figures(source: float, onnx: float) -> dict:
        return {"retrieval": {"queries": 400, "gallery": 900, "top1_source": source, "top1_onnx": onnx,
                              "top1_change": onnx - source}}

    kept = enforce_retrieval(figures(0.60, 0.5925), "embedder")["retrieval"]  # 3 of 400 queries flipped
    assert kept["passed"] and kept["top1_change_limit"] == parity.RETRIEVAL_TOP1_CHANGE == 0.01
    with pytest.raises(ParityError, match=r"embedder: held-out retrieval top-1 changes by -0\.0150 \(0\.6000 → 0\.5850 on 400"):
        enforce_retrieval(figures(0.60, 0.585), "embedder")
    with pytest.raises(ParityError, match=r"changes by \+0\.0200"):  # either way: it is no longer the same model
        enforce_retrieval(figures(0.60, 0.62), "embedder")
    with pytest.raises(ParityError):
        enforce_retrieval(figures(0.60, float("nan")), "embedder")


def test_sha256_path_of_a_weights_dir_changes_with_the_weights_but_not_when_its_card_is_edited(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"kind": "embedder"}')
    (tmp_path / "model.weights.h5").write_bytes(b"weights")
    (tmp_path / "MODEL_CARD.md").write_text("# card")
    before = sha256_path(tmp_path)
    (tmp_path / "MODEL_CARD.md").write_text("# card, with figures")
    (tmp_path / "loss.png").write_bytes(b"png")
    assert sha256_path(tmp_path) == before
    (tmp_path / "model.weights.h5").write_bytes(b"retrained")
    assert sha256_path(tmp_path) != before
    other = tmp_path / "saved_model"  # any other directory: every file counts
    other.mkdir()
    (other / "saved_model.pb").write_bytes(b"pb")
    first = sha256_path(other)
    (other / "notes.txt").write_text("x")
    assert sha256_path(other) != first
