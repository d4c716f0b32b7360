"""The pose gate: MediaPipe BlazePose post-processing (lookserve.client.pose) against TensorFlow's
TFLite interpreter on real photos, the served models against the interpreter, and the gate in
the look chain (client chain and CLI) over real Triton.

The real models come from :func:`lookserve.data.pretrained.mediapipe_model` and the photos from
:mod:`lookserve.data.photos` (both prepared by ``make test-data``); a test that needs one that is
absent skips with the reason. The look-chain tests serve tiny ONNX stand-ins of the two pose
models (built here, their answers set by the photo's brightness) next to a tiny garment
detector and embedder, so they run without TensorFlow.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.cli import app
from lookserve.client import pose
from lookserve.client.catalog import PhotoRecord, TritonEmbedder, build_catalog, open_for_client
from lookserve.client.core import AsyncTritonClient, TritonClient
from lookserve.client.look import AsyncLookPipeline, LookConfig, LookPipeline
from lookserve.client.look_remote import (
    RemoteLook,
    config_for_request,
    request_tensors,
    result_from_dict,
    server_message,
)
from lookserve.data import photos
from lookserve.data.pretrained import mediapipe_model
from lookserve.errors import ConfigError, InvalidInputError, ServerError
from lookserve.export.models import export_pose_models
from lookserve.images import crop_rotated, decode_image
from lookserve.modelconfig import ModelConfig, TensorSpec
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.server.pipelines.repository import write_pipeline_models
from tinymodels import _save, projection_embedder, write_model

# ------------------------------------------------------------------------------------------
# Real models and photos (skipped with the reason when absent)
# ------------------------------------------------------------------------------------------
EXPECTED = {  # photo → (verdict, the persons' kinds): looked at (lookserve.data.photos says what each shows)
    "messi5": ("full_shot", ["full_shot"]),
    "basketball1": ("full_shot", ["full_shot"]),
    "basketball2": ("full_shot", ["full_shot", "upper_body"]),
    "grace_hopper": ("upper_body", ["upper_body"]),
    "fruits": ("no_person", []),
    "baboon": ("no_person", []),
}


def _tflite(relpath: str) -> Path:
    try:
        return mediapipe_model(relpath)
    except Exception as e:  # noqa: BLE001 - any reason the file cannot be had is a skip, with that reason
        pytest.skip(f"MediaPipe model {relpath} unavailable ({type(e).__name__}: {e}); run make test-data")


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory) -> dict[str, Path]:
    try:
        return photos.prepare()
    except photos.PhotosUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def interpreter():
    pytest.importorskip("tensorflow")
    return pose.TflitePoseModels(_tflite("pose_detection/pose_detection.tflite"),
                                 _tflite("pose_landmark/pose_landmark_full.tflite"))


@pytest.fixture(scope="module")
def reference(interpreter, real_photos) -> dict[str, pose.PoseVerdict]:
    """Every photo's verdict through the interpreter (computed once for the module)."""
    return {name: pose.analyse(decode_image(path), interpreter) for name, path in real_photos.items()}


# ------------------------------------------------------------------------------------------
# Decoding (no model)
# ------------------------------------------------------------------------------------------
def test_ssd_anchors_follow_mediapipe_layout_when_generated() -> None:
    a = pose.ssd_anchors()
    assert a.shape == (pose.NUM_BOXES, 2)  # 28²·2 + 14²·2 + 7²·6
    assert a[0] == pytest.approx([0.5 / 28, 0.5 / 28]) and a[1] == pytest.approx(a[0])  # 2 anchors per 28×28 cell
    assert a[2] == pytest.approx([1.5 / 28, 0.5 / 28])
    assert a[28 * 28 * 2] == pytest.approx([0.5 / 14, 0.5 / 14])
    stride32 = a[28 * 28 * 2 + 14 * 14 * 2:]
    assert len(stride32) == 7 * 7 * 6 and (stride32[:6] == stride32[0]).all()  # 3 layers × 2 share one cell
    assert a[-1] == pytest.approx([6.5 / 7, 6.5 / 7])


def test_decode_boxes_reads_xywh_then_keypoints_when_offsets_are_given() -> None:
    raw = np.zeros((pose.NUM_BOXES, 12), np.float32)
    raw[0, :4] = [22.4, -11.2, 44.8, 22.4]  # dx, dy, w, h in 224ths
    raw[0, 4:6] = [11.2, 0.0]  # keypoint 0
    boxes, kp = pose.decode_boxes(raw)
    cx, cy = 0.5 / 28 + 0.1, 0.5 / 28 - 0.05
    assert boxes[0] == pytest.approx([cx - 0.1, cy - 0.05, cx + 0.1, cy + 0.05], abs=1e-6)
    assert kp[0, 0] == pytest.approx([0.5 / 28 + 0.05, 0.5 / 28], abs=1e-6)
    assert pose.decode_scores(np.array([1e4, -1e4, 0.0])) == pytest.approx([1 / (1 + math.exp(-100)),
                                                                          1 / (1 + math.exp(100)), 0.5])


def test_weighted_nms_averages_by_score_when_boxes_overlap() -> None:
    boxes = np.array([[0, 0, 1, 1], [0.1, 0, 1.1, 1], [5, 5, 6, 6]], np.float32)
    kp = np.array([[[0, 0]], [[1, 1]], [[9, 9]]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    out = pose.weighted_nms(boxes, kp, scores, 0.3)
    assert [round(s, 2) for s, _, _ in out] == [0.9, 0.7]  # the best one's score; the far box alone
    assert out[0][1] == pytest.approx((boxes[0] * 0.6 + boxes[1] * 0.9) / 1.5)
    assert out[0][2] == pytest.approx(np.array([[0.6, 0.6]]))
    assert len(pose.weighted_nms(boxes, kp, scores, 0.95)) == 3  # IoU 0.82 is not above 0.95


def test_roi_turns_body_upright_when_scale_point_is_beside_the_hips() -> None:
    up = pose.roi_from_detection(pose.Detection(1.0, (0, 0, 1, 1), np.array([[50, 80], [50, 40], [0, 0], [0, 0]])))
    assert (up.x, up.y, up.side, up.rotation) == pytest.approx((50, 80, 2 * 40 * 1.25, 0.0))
    lying = pose.roi_from_detection(pose.Detection(1.0, (0, 0, 1, 1), np.array([[50, 80], [90, 80], [0, 0], [0, 0]])))
    assert lying.rotation == pytest.approx(math.pi / 2)  # head to the right: turned a quarter clockwise


def test_crop_rotated_maps_crop_pixels_to_the_original_when_turned() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    image[30, 70] = 255  # one bright pixel
    crop, matrix = crop_rotated(image, (60.0, 50.0), 64.0, math.pi / 2, 64)
    y, x = np.unravel_index(np.argmax(crop[..., 0]), crop.shape[:2])
    assert matrix @ np.array([x, y, 1.0]) == pytest.approx([70, 30], abs=1.0)
    plain, m0 = crop_rotated(image, (60.0, 50.0), 64.0, 0.0, 64)
    assert (plain == image[18:82, 28:92]).all() and m0 == pytest.approx(np.array([[1, 0, 28], [0, 1, 18]]))


def test_person_kind_names_what_is_missing_when_legs_are_out_of_the_photo() -> None:
    lm = np.zeros((pose.NUM_LANDMARKS, 5), np.float32)
    lm[:, :2], lm[:, 3] = [50, 50], 0.9
    assert pose.person_kind(lm, 100, 100, 0.5) == ("full_shot", ())
    lm[pose.BODY[-1], 1] = 120  # right ankle below the photo
    assert pose.person_kind(lm, 100, 100, 0.5) == ("upper_body", ("right_ankle",))
    lm[list(pose.HEAD), 3] = 0.1
    assert pose.person_kind(lm, 100, 100, 0.5)[0] == "partial"


def test_configs_refuse_when_gate_or_thresholds_are_wrong() -> None:
    with pytest.raises(ConfigError, match="gate must be one of off, person, full-shot"):
        LookConfig(gate="fullshot")
    with pytest.raises(ConfigError, match="visibility_threshold"):
        pose.PoseConfig(visibility_threshold=2.0)
    with pytest.raises(InvalidInputError, match="look request: gate must be"):
        config_for_request(LookConfig(), gate="everyone")
    assert config_for_request(LookConfig(), gate="person").gate == "person"
    assert request_tensors(b"x", gate="full-shot")["gate"].tolist() == [[b"full-shot"]]


def test_photos_skip_with_reason_when_package_is_absent(tmp_path: Path, monkeypatch) -> None:
    gone = replace(photos.PHOTOS[0], source=tmp_path / "absent" / "messi5.jpg")
    monkeypatch.setattr(photos, "PHOTOS", (gone,))
    with pytest.raises(photos.PhotosUnavailable, match="opencv-doc is not installed.*apt-get install -y opencv-doc"):
        photos.prepare(tmp_path / "cache")
    assert photos.main(["--cache", str(tmp_path / "cache")]) == 0  # make test-data goes on without them


# ------------------------------------------------------------------------------------------
# Real photos through TensorFlow's TFLite interpreter
# ------------------------------------------------------------------------------------------
@pytest.mark.tf
def test_pose_verdicts_match_the_photos_when_run_by_the_interpreter(reference) -> None:
    got = {name: (v.verdict, [p.kind for p in v.persons]) for name, v in reference.items()}
    assert got == EXPECTED


@pytest.mark.tf
def test_pose_detector_hip_keypoint_lies_between_hip_landmarks_when_decoded(interpreter, real_photos) -> None:
    image = decode_image(real_photos["messi5"])
    square, lb = pose.detector_input(image)
    raw_boxes, raw_scores, _ = interpreter.detect(square)
    (det,) = pose.detections_from_outputs(raw_boxes, raw_scores, lb, pose.PoseConfig())
    roi = pose.roi_from_detection(det)
    crop, matrix = pose.landmark_input(image, roi)
    raw, flag, _ = interpreter.landmarks(crop)
    lm = pose.decode_landmarks(raw, matrix)
    hips = lm[[23, 24], :2].mean(axis=0)
    assert np.hypot(*(det.keypoints[0] - hips)) < 0.05 * roi.side  # the detector's hip centre = the landmarks'
    x1, y1, x2, y2 = det.box  # BlazePose's box is the face's: the nose is inside it
    assert x1 <= lm[0, 0] <= x2 and y1 <= lm[0, 1] <= y2
    assert float(np.asarray(flag).reshape(-1)[0]) > 0.9


@pytest.mark.tf
def test_pose_landmarks_follow_the_photo_when_it_is_turned_a_quarter(interpreter, real_photos, reference) -> None:
    image = decode_image(real_photos["messi5"])
    turned = np.ascontiguousarray(np.rot90(image, k=-1))  # clockwise: (x, y) → (h - 1 - y, x)
    v = pose.analyse(turned, interpreter)
    (a,), (b,) = reference["messi5"].persons, v.persons
    assert b.kind == "full_shot" and b.roi.rotation == pytest.approx(a.roi.rotation + math.pi / 2, abs=0.35)
    h = image.shape[0]
    expected = np.column_stack([h - 1 - a.landmarks[:33, 1], a.landmarks[:33, 0]])
    seen = (a.landmarks[:33, 3] > 0.8) & (b.landmarks[:33, 3] > 0.8)
    err = np.hypot(*(b.landmarks[:33, :2] - expected)[seen].T)
    assert seen.sum() >= 20 and np.median(err) < 0.03 * a.roi.side


# ------------------------------------------------------------------------------------------
# The served models (H4's export) against the interpreter
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_pose(tmp_path_factory):
    """Triton serving pose_detector and pose_landmarks exported by lookserve's export path (once per module)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    _tflite("pose_detection/pose_detection.tflite")
    root = tmp_path_factory.mktemp("pose")
    export_pose_models(root / "repo", 1)
    server = TritonServer(ServerOptions(model_repository=root / "repo", load_models=(contracts.POSE_DETECTOR, contracts.POSE_LANDMARKS),
                                        grpc_port=0, work_dir=root / "triton", ready_timeout_s=120.0, exit_timeout_s=10))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.tf
@pytest.mark.triton
@pytest.mark.slow  # the export (once per module) takes ~45 s on the shared 2-core box
def test_pose_verdicts_equal_the_interpreter_when_served_by_triton(served_pose, real_photos, reference) -> None:
    with TritonClient(served_pose.grpc_url) as client:
        models = pose.TritonPoseModels(client)
        for name, path in real_photos.items():
            v = pose.analyse(decode_image(path), models)
            want = reference[name]
            assert (v.verdict, [p.kind for p in v.persons]) == (want.verdict, [p.kind for p in want.persons]), name
            for p, q in zip(v.persons, want.persons, strict=True):
                assert np.abs(p.landmarks[:33, :2] - q.landmarks[:33, :2]).max() < 0.01 * q.roi.side, name
                assert np.abs(p.landmarks[:33, 3] - q.landmarks[:33, 3]).max() < 0.01, name
            assert v.model_versions == ({contracts.POSE_DETECTOR: "1", contracts.POSE_LANDMARKS: "1"} if want.detections
                                        else {contracts.POSE_DETECTOR: "1"}), name


# ------------------------------------------------------------------------------------------
# The gate in the look chain: tiny stand-ins of the pose models, a tiny garment detector
# ------------------------------------------------------------------------------------------
SIDE = 64  # garment detector input
CROP, DIM = 32, 16
ANKLE_VIS = [27 * 5 + 3, 28 * 5 + 3]  # the ankles' visibility logits in the 195 values


def _tiny_pose_detector(path: Path) -> Path:
    """One person (anchor 0) whose score logit is 200·mean(x) + 100 (x in [-1, 1]): a black photo has none."""
    raw = np.zeros((1, pose.NUM_BOXES, 12), np.float32)
    a0 = pose.ssd_anchors()[0] * 224
    raw[0, 0, :4] = [112 - a0[0], 80 - a0[1], 150, 150]
    raw[0, 0, 4:8] = [112 - a0[0], 130 - a0[1], 112 - a0[0], 30 - a0[1]]  # hips (112, 130), scale point above
    bias = np.full((1, pose.NUM_BOXES, 1), -1000.0, np.float32)
    bias[0, 0, 0] = 100.0
    nodes = [
        helper.make_node("ReduceMean", ["input_1"], ["m"], axes=[1, 2, 3], keepdims=1),  # [1,1,1,1]
        helper.make_node("Reshape", ["m", "s111"], ["m3"]),
        helper.make_node("Mul", ["m3", "c200"], ["m200"]),
        helper.make_node("Add", ["m200", "bias"], ["Identity_1"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "raw"], ["Identity"]),
    ]
    consts = {"s111": np.array([1, 1, 1], np.int64), "c200": np.array(200.0, np.float32), "bias": bias,
              "zero": np.array(0.0, np.float32), "raw": raw}
    graph = helper.make_graph(
        nodes, "tiny_pose_detector", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, 224, 224, 3])],
        [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, [1, pose.NUM_BOXES, 12]),
         helper.make_tensor_value_info("Identity_1", TensorProto.FLOAT, [1, pose.NUM_BOXES, 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return _save(graph, path)


def _tiny_pose_landmarks(path: Path) -> Path:
    """39 landmarks down the crop's middle, all visible except the ankles, whose visibility logit is
    40·mean(crop) − 30 (crop in [0, 1]): a white photo is a full shot, a half-white one is not."""
    base = np.zeros((1, 195), np.float32)
    lm = base.reshape(39, 5)
    lm[:, 0], lm[:, 1], lm[:, 3], lm[:, 4] = 128, np.linspace(60, 200, 39), 10.0, 10.0
    mask = np.zeros((1, 195), np.float32)
    mask[0, ANKLE_VIS] = 1.0
    base[0, ANKLE_VIS] = -30.0
    nodes = [
        helper.make_node("ReduceMean", ["input_1"], ["m"], axes=[1, 2, 3], keepdims=0),  # [1]
        helper.make_node("Reshape", ["m", "s11"], ["m2"]),  # [1, 1]
        helper.make_node("Mul", ["m2", "c40"], ["m40"]),
        helper.make_node("Mul", ["m40", "mask"], ["ankles"]),
        helper.make_node("Add", ["ankles", "base"], ["Identity"]),
        helper.make_node("Mul", ["m2", "zero"], ["z"]),
        helper.make_node("Add", ["z", "one"], ["Identity_1"]),
    ]
    consts = {"s11": np.array([1, 1], np.int64), "c40": np.array(40.0, np.float32), "mask": mask, "base": base,
              "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)}
    graph = helper.make_graph(
        nodes, "tiny_pose_landmarks", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, 256, 256, 3])],
        [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, [1, 195]),
         helper.make_tensor_value_info("Identity_1", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return _save(graph, path)


def _tiny_garment_detector(path: Path) -> Path:
    """Always one "bags" (class 0, score 0.9) in the middle of the square."""
    d = 2
    consts = {"zero": np.array(0.0, np.float32),
              "boxes_c": np.array([[[8, 8, 56, 56], [0, 0, 4, 4]]], np.float32),
              "scores_c": np.array([[0.9, 0.0]], np.float32), "classes_c": np.array([[0, 0]], np.float32),
              "masks_c": np.ones((1, d, 28, 28), np.float32), "n_c": np.array([[1]], np.float32)}
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["m"], axes=[1, 2, 3], keepdims=0),  # [B]
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Unsqueeze", ["z", "ax1"], ["z2"]),  # [B, 1]
             helper.make_node("Unsqueeze", ["z2", "ax2"], ["z3"]),
             helper.make_node("Unsqueeze", ["z3", "ax3"], ["z4"]),
             helper.make_node("Add", ["z3", "boxes_c"], ["boxes"]),
             helper.make_node("Add", ["z2", "scores_c"], ["scores"]),
             helper.make_node("Add", ["z2", "classes_c"], ["cf"]),
             helper.make_node("Cast", ["cf"], ["classes"], to=TensorProto.INT32),
             helper.make_node("Add", ["z4", "masks_c"], ["masks"]),
             helper.make_node("Add", ["z2", "n_c"], ["nf"]),
             helper.make_node("Cast", ["nf"], ["num_detections"], to=TensorProto.INT32)]
    consts.update(ax1=np.array([1], np.int64), ax2=np.array([2], np.int64), ax3=np.array([3], np.int64))
    graph = helper.make_graph(
        nodes, "tiny_garment_detector", [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, d, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, d]),
         helper.make_tensor_value_info("classes", TensorProto.INT32, [None, d]),
         helper.make_tensor_value_info("masks", TensorProto.FLOAT, [None, d, 28, 28]),
         helper.make_tensor_value_info("num_detections", TensorProto.INT32, [None, 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return _save(graph, path)


def _pose_config(name: str, side: int, outputs: tuple[TensorSpec, ...]) -> ModelConfig:
    return ModelConfig(name=name, max_batch_size=0, inputs=(TensorSpec("input_1", "FP32", (1, side, side, 3)),),
                       outputs=outputs, dynamic_batching=None)


def _photo(kind: str) -> np.ndarray:
    img = np.full((96, 96, 3), 255 if kind != "black" else 0, np.uint8)
    if kind == "half":
        img[48:] = 0
    return img


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """One Triton: the tiny pose stand-ins, garment detector, embedder, and a catalog built through them."""
    root = tmp_path_factory.mktemp("gate")
    repo = root / "repo"
    write_model(repo, _pose_config(contracts.POSE_DETECTOR, 224, (TensorSpec("Identity", "FP32", (1, pose.NUM_BOXES, 12)),
                                                                  TensorSpec("Identity_1", "FP32", (1, pose.NUM_BOXES, 1)))),
                _tiny_pose_detector)
    write_model(repo, _pose_config(contracts.POSE_LANDMARKS, 256, (TensorSpec("Identity", "FP32", (1, 195)),
                                                                   TensorSpec("Identity_1", "FP32", (1, 1)))),
                _tiny_pose_landmarks)
    write_model(repo, replace(contracts.detector_config(input_size=SIDE, max_detections=2, mask_size=28), warmup=()),
                _tiny_garment_detector)
    write_model(repo, replace(contracts.embedder_config(dim=DIM, crop_size=CROP), warmup=()),
                lambda p: projection_embedder(p, size=CROP, dim=DIM, seed=3))
    server = TritonServer(ServerOptions(model_repository=repo, grpc_port=0, work_dir=root / "triton",
                                        load_models=("detector", "embedder", contracts.POSE_DETECTOR,
                                                     contracts.POSE_LANDMARKS),
                                        ready_timeout_s=120.0, exit_timeout_s=10))
    server.start()
    try:
        rng = np.random.default_rng(5)
        shop = root / "shop"
        shop.mkdir()
        records = []
        for i in range(6):
            path = shop / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
            records.append(PhotoRecord(100 + i, "bags", path.name, path, f"bags #{i}", {"i": i}))
        with TritonClient(server.grpc_url, repository_key=server.repository_key) as client:
            build_catalog(records, root / "catalog", TritonEmbedder(client), batch_size=6, concurrency=1,
                          model_repository=repo, images_root=shop)
            write_pipeline_models(repo, catalog=str(root / "catalog"))
            client.load_model(contracts.LOOK)
        photos_dir = root / "photos"
        photos_dir.mkdir()
        for kind in ("white", "half", "black"):
            Image.fromarray(_photo(kind)).save(photos_dir / f"{kind}.png")
        yield {"server": server, "repo": repo, "catalog": root / "catalog", "photos": photos_dir}
    finally:
        server.stop()


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.triton
def test_look_answers_the_reason_and_searches_nothing_when_photo_fails_the_gate(chain) -> None:
    with TritonClient(chain["server"].grpc_url) as client:
        catalog = open_for_client(chain["catalog"], client, chain["repo"])
        person = LookPipeline(client, catalog, LookConfig(gate="person"))
        full = LookPipeline(client, catalog, LookConfig(gate="full-shot"))
        black = person.run(_png(_photo("black")))
        assert black.items == () and black.gate["passed"] is False and black.gate["verdict"] == "no_person"
        assert black.gate["reason"].startswith("no person found")
        assert "detector" not in black.model_versions and "embed" not in black.timings_ms  # not searched
        assert black.model_versions[contracts.POSE_DETECTOR] == "1"
        half = full.run(_png(_photo("half")))
        assert half.items == () and half.gate["verdict"] == "upper_body"
        assert half.gate["reason"] == "not a full shot: person 0 is upper_body, missing left_ankle, right_ankle"
        assert person.run(_png(_photo("half"))).items  # a person: the person gate lets it through
        white = full.run(_png(_photo("white")))
        assert white.gate["passed"] is True and [i.detection.category for i in white.items] == ["bags"]
        assert white.items[0].matches and "embed" in white.timings_ms
        assert white.model_versions[contracts.POSE_LANDMARKS] == "1"
        after = full.run(_png(_photo("black")))  # each result names only the models that answered it
        assert contracts.POSE_LANDMARKS not in after.model_versions


@pytest.mark.triton
def test_look_output_is_unchanged_when_the_gate_is_off(chain) -> None:
    with TritonClient(chain["server"].grpc_url) as client:
        catalog = open_for_client(chain["catalog"], client, chain["repo"])
        off = LookPipeline(client, catalog, LookConfig()).run(_png(_photo("white"))).to_dict()
        gated = LookPipeline(client, catalog, LookConfig(gate="full-shot")).run(_png(_photo("white")))
    assert result_from_dict(json.loads(gated.to_json())).gate == gated.gate  # the look model's JSON carries it
    on = gated.to_dict()
    assert "gate" not in off and contracts.POSE_DETECTOR not in off["model_versions"]
    assert on.pop("gate")["passed"] is True
    for d in (off, on):
        d.pop("timings_ms")
        for name in (contracts.POSE_DETECTOR, contracts.POSE_LANDMARKS):
            d["model_versions"].pop(name, None)
    assert on == off


@pytest.mark.triton
def test_look_async_gate_equals_sync_when_photos_are_pipelined(chain) -> None:
    images = [_png(_photo(k)) for k in ("white", "half", "black")]
    with TritonClient(chain["server"].grpc_url) as client:
        catalog = open_for_client(chain["catalog"], client, chain["repo"])
        sync = [r.gate for r in LookPipeline(client, catalog, LookConfig(gate="full-shot")).run_many(images)]

    async def run():
        async with AsyncTritonClient(chain["server"].grpc_url) as client:
            pipe = await AsyncLookPipeline.create(client, catalog, LookConfig(gate="full-shot"))
            return [r.gate for r in await pipe.run_many(images)]

    assert asyncio.run(run()) == sync and [g["passed"] for g in sync] == [True, False, False]


@pytest.mark.triton
def test_look_cli_reports_the_gate_reason_when_run_with_gate(chain, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["look", str(chain["photos"]), "--catalog", str(chain["catalog"]), "--url", chain["server"].grpc_url,
            "--model-repository", str(chain["repo"]), "--no-render", "--out"]
    gated = runner.invoke(app, [*args, str(tmp_path / "gated"), "--gate", "person"])
    assert gated.exit_code == 0, gated.output
    assert "gate: no person found" in " ".join(gated.output.split())
    doc = json.loads((tmp_path / "gated" / "black.json").read_text())
    assert doc["items"] == [] and doc["gate"]["passed"] is False
    assert json.loads((tmp_path / "gated" / "white.json").read_text())["items"]
    plain = runner.invoke(app, [*args, str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert "gate" not in json.loads((tmp_path / "plain" / "black.json").read_text())
    server = runner.invoke(app, [*args, str(tmp_path / "server"), "--gate", "person", "--server"])
    assert server.exit_code == 0, server.output
    assert "gate: no person found" in " ".join(server.output.split())
    assert json.loads((tmp_path / "server" / "black.json").read_text())["gate"] == doc["gate"]
    bad = runner.invoke(app, [*args, str(tmp_path / "bad"), "--gate", "legs"])
    assert bad.exit_code == 2 and "gate must be one of off, person, full-shot" in bad.output


@pytest.mark.triton
def test_look_server_answers_the_client_chains_gate_when_sent_the_gate_knob(chain) -> None:
    def without_timings(doc: dict) -> dict:
        return {k: v for k, v in doc.items() if k != "timings_ms"}

    with TritonClient(chain["server"].grpc_url) as client:
        catalog = open_for_client(chain["catalog"], client, chain["repo"])
        for gate, kind, passed in (("person", "black", False), ("full-shot", "half", False), ("full-shot", "white", True)):
            data = _png(_photo(kind))
            remote = RemoteLook(client, LookConfig(gate=gate)).run(data)
            local = LookPipeline(client, catalog, LookConfig(gate=gate)).run(data).to_dict()
            assert remote["gate"]["passed"] is passed and bool(remote["items"]) is passed, (gate, kind)
            assert without_timings(remote) == without_timings(local), (gate, kind)
        with pytest.raises(ServerError) as refused:
            client.infer(contracts.LOOK, request_tensors(data, gate="legs"), outputs=["look_json"])
        assert "InvalidInputError: look request: gate must be one of" in server_message(refused.value)


@pytest.mark.triton
def test_pose_cli_counts_photos_passing_and_fails_the_batch_when_one_is_unreadable(chain, tmp_path: Path) -> None:
    for kind in ("white", "half", "black"):
        (tmp_path / f"{kind}.png").write_bytes((chain["photos"] / f"{kind}.png").read_bytes())
    runner = CliRunner()
    args = ["pose", str(tmp_path), "--url", chain["server"].grpc_url, "--json", str(tmp_path / "out" / "v.json")]
    ok = runner.invoke(app, [*args, "--gate", "person"])
    assert ok.exit_code == 0, ok.output
    assert "2 of 3 photos pass the person gate" in ok.output
    docs = json.loads((tmp_path / "out" / "v.json").read_text())
    assert {Path(k).stem: v["verdict"] for k, v in docs.items()} == {
        "white": "full_shot", "half": "upper_body", "black": "no_person"}
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    partial = runner.invoke(app, [*args, "--gate", "full-shot"])
    assert partial.exit_code == 1 and "1 of 3 photos pass the full-shot gate" in partial.output
    assert "broken.png" in partial.output and "1 of 4 images failed" in partial.output
