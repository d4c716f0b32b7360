"""The Mask R-CNN detector: box arithmetic, the served graph's post-processing and contract,
training on tiny hand-drawn data, and the tf2onnx export parity."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lookserve.contracts import detector_config
from lookserve.errors import ConfigError, InvalidInputError
from lookserve.images import paste_mask  # the one paste_mask, used by evaluation and serving
from lookserve.taxonomy import CATEGORIES
from lookserve.training import detector_ops as ops
from lookserve.training.common import set_seed
from lookserve.training.detector import (
    DetectorConfig,
    DetectorTrainConfig,
    _batched_nms_topn,
    build_model,
    evaluate_detector,
    load_model,
    train_detector,
)
from lookserve.training.detector_data import load_samples, read_letterboxed

# --------------------------------------------------------------------------------------------
# tiny hand-drawn data: coloured rectangles ("bags") and ellipses ("dresses") on grey
# --------------------------------------------------------------------------------------------
SHAPES = {"rect": CATEGORIES.index("bags") + 1, "ellipse": CATEGORIES.index("dresses") + 1}


def write_tiny_coco(root: Path, n_train: int = 8, n_test: int = 4, side: int = 96, seed: int = 0) -> Path:
    """A street2shop-shaped data set: images/<id>.jpg + annotations/instances_{train,test}.json."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)]
    next_id, ann_id = 1, 1
    for split, n in (("train", n_train), ("test", n_test)):
        images, anns = [], []
        for _ in range(n):
            img = np.full((side, side, 3), 128, np.uint8)
            for _k in range(int(rng.integers(1, 3))):
                kind = "rect" if rng.random() < 0.5 else "ellipse"
                w, h = (int(v) for v in rng.integers(side // 4, side // 2, size=2))
                x0, y0 = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
                m = np.zeros((side, side), np.uint8)
                if kind == "rect":
                    m[y0 : y0 + h, x0 : x0 + w] = 1
                else:
                    cv2.ellipse(m, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
                colour = (220, 40, 40) if kind == "rect" else (40, 40, 220)
                img[m > 0] = colour
                rle = mask_utils.encode(np.asfortranarray(m))
                ys, xs = np.nonzero(m)
                bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
                anns.append(
                    {
                        "id": ann_id, "image_id": next_id, "category_id": SHAPES[kind], "iscrowd": 0,
                        "bbox": bbox, "area": float(m.sum()),
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                        "product_id": ann_id,
                    }
                )
                ann_id += 1
            cv2.imwrite(str(root / "images" / f"{next_id}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({"id": next_id, "file_name": f"images/{next_id}.jpg", "width": side, "height": side})
            next_id += 1
        doc = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def tiny_config(**overrides):
    kw = dict(
        input_size=128, anchor_sizes=(16.0, 32.0, 64.0, 128.0), backbone_width=8, fpn_channels=16,
        rpn_channels=16, head_dim=32, mask_channels=16, rpn_pre_nms_train=200, rpn_post_nms_train=32,
        rpn_pre_nms_test=100, rpn_post_nms_test=20,
    )
    kw.update(overrides)
    return DetectorConfig(**kw)


def tiny_train_config(steps: int, **overrides):
    kw = dict(model=tiny_config(), batch_size=2, steps=steps, learning_rate=3e-3, warmup_steps=2, mask_rois_per_image=4)
    kw.update(overrides)
    return DetectorTrainConfig(**kw)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_coco(tmp_path_factory.mktemp("street"), n_train=16, n_test=4)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny detector trained for 120 steps (~15 s) and its training summary."""

    out = tmp_path_factory.mktemp("weights")
    summary = train_detector(tiny_data, out, seed=0, config=tiny_train_config(120), progress=False)
    return out, summary


# --------------------------------------------------------------------------------------------
# box arithmetic (numpy, no TensorFlow)
# --------------------------------------------------------------------------------------------
def test_generate_anchors_counts_and_centres_when_two_levels():
    a = ops.generate_anchors(64, (16, 32), (32.0, 64.0), (0.5, 1.0, 2.0))
    assert a.shape == ((4 * 4 + 2 * 2) * 3, 4)
    # first anchor: level 0, cell (0, 0), ratio 0.5 → centred at (8, 8), area 32²
    cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    assert (cx[0], cy[0]) == (8.0, 8.0)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    np.testing.assert_allclose(w[:3] * h[:3], 32.0**2, rtol=1e-5)
    np.testing.assert_allclose(h[:3] / w[:3], [0.5, 1.0, 2.0], rtol=1e-5)
    # order is row-major: the 4th position (index 3 · 3 anchors) is cell (row 0, col 3)
    assert (cx[9], cy[9]) == (56.0, 8.0)
    assert (cx[12], cy[12]) == (8.0, 24.0)


def test_generate_anchors_raises_when_stride_does_not_divide():
    with pytest.raises(ConfigError, match="not divisible"):
        ops.generate_anchors(100, (16,), (32.0,), (1.0,))


@pytest.mark.parametrize("weights", [ops.RPN_WEIGHTS, ops.RCNN_WEIGHTS])
def test_encode_decode_round_trip_when_random_boxes(weights):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 400, (200, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 200, (200, 2))], axis=1).astype(np.float32)
    xy2 = rng.uniform(0, 400, (200, 2))
    boxes = np.concatenate([xy2, xy2 + rng.uniform(4, 200, (200, 2))], axis=1).astype(np.float32)
    deltas = ops.encode_boxes(boxes, anchors, weights)
    np.testing.assert_allclose(ops.decode_boxes(deltas, anchors, weights), boxes, atol=1e-3)


def test_encode_boxes_raises_when_box_is_empty():
    with pytest.raises(InvalidInputError, match="positive width"):
        ops.encode_boxes(np.array([[5, 5, 5, 9]]), np.array([[0, 0, 10, 10]]))


def test_rpn_targets_marks_best_anchor_positive_and_samples_when_one_box():
    anchors = ops.generate_anchors(128, (8, 16, 32, 64), (16.0, 32.0, 64.0, 128.0), (0.5, 1.0, 2.0))
    gt = np.array([[30.0, 40.0, 70.0, 100.0]], np.float32)
    labels, deltas = ops.rpn_targets(anchors, gt, np.random.default_rng(0), batch=64)
    iou = ops.iou_matrix(anchors, gt)[:, 0]
    assert labels[iou.argmax()] == 1
    assert (labels >= 0).sum() == 64
    pos = labels == 1
    np.testing.assert_allclose(ops.decode_boxes(deltas[pos], anchors[pos]), np.repeat(gt, pos.sum(), 0), atol=1e-3)
    assert np.all(deltas[~pos] == 0)


def test_rpn_targets_all_background_when_no_boxes():
    anchors = ops.generate_anchors(64, (16,), (32.0,), (1.0,))
    labels, _ = ops.rpn_targets(anchors, np.zeros((0, 4)), np.random.default_rng(0), batch=8)
    assert set(labels.tolist()) <= {0, -1} and (labels == 0).sum() == 8


def test_letterbox_maps_points_back_when_image_is_wide():
    img = np.zeros((60, 120, 3), np.uint8)
    img[10:20, 30:50] = 255
    sq, scale, px, py = ops.letterbox(img, 240)
    assert sq.shape == (240, 240, 3) and scale == 2.0 and (px, py) == (0, 60)
    ys, xs = np.nonzero(sq[..., 0] > 127)
    back = ops.unletterbox_boxes(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]), scale, px, py)
    np.testing.assert_allclose(back, [30, 10, 50, 20], atol=0.5)


def test_letterbox_raises_when_not_rgb():
    with pytest.raises(InvalidInputError, match="RGB"):
        ops.letterbox(np.zeros((10, 10), np.uint8), 32)


def test_detector_config_raises_when_backbone_unknown():
    with pytest.raises(ConfigError, match="backbone"):
        DetectorConfig(backbone="vgg")
    with pytest.raises(ConfigError, match="size"):
        DetectorConfig.for_size("huge")


def test_paste_mask_fills_box_when_mask_is_all_ones():
    canvas = paste_mask(np.ones((28, 28), np.float32), np.array([10.0, 20.0, 30.0, 60.0]), 64, 64)
    assert canvas.sum() == 20 * 40 and canvas[20:60, 10:30].all()


# --------------------------------------------------------------------------------------------
# the served graph (TensorFlow)
# --------------------------------------------------------------------------------------------
@pytest.mark.tf
def test_batched_nms_suppresses_within_key_only_and_pads_when_few_boxes():
    import tensorflow as tf


    # image 0: boxes 0/1 overlap (IoU 0.81) with the same key, box 2 overlaps box 0 with
    # another key; box 3 is below the score threshold. image 1: box 0 of image 0 again.
    boxes = np.array(
        [
            [[10, 10, 50, 50], [12, 12, 50, 50], [10, 10, 50, 50], [60, 60, 90, 90]],
            [[10, 10, 50, 50], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]],
        ],
        np.float32,
    )
    scores = np.array([[0.9, 0.8, 0.7, 0.05], [0.6, 0.0, 0.0, 0.0]], np.float32)
    key = np.array([[0, 0, 1, 1], [2, 2, 2, 2]], np.int32)
    out_boxes, out_scores, valid, idx = _batched_nms_topn(
        tf.constant(boxes), tf.constant(scores), tf.constant(key), 3, 0.5, 0.1, 128.0, return_index=True
    )
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(out_scores.numpy()[0, :2], [0.9, 0.7])
    np.testing.assert_array_equal(idx.numpy()[0, :2], [0, 2])
    np.testing.assert_allclose(out_boxes.numpy()[1, 0], [10, 10, 50, 50])


@pytest.mark.tf
def test_served_graph_matches_contract_and_zero_pads_when_untrained():
    set_seed(0)
    det = build_model(tiny_config(score_threshold=0.083, max_detections=20))
    images = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    out = det(images)
    specs = {t.name: t for t in detector_config(input_size=128).outputs}
    np_dtype = {"FP32": np.float32, "INT32": np.int32}
    assert set(out) == set(specs)
    for name, spec in specs.items():
        assert out[name].shape == (3, *spec.dims), name
        assert out[name].dtype == np_dtype[spec.dtype], name
    n = out["num_detections"][:, 0]
    assert np.all((n >= 0) & (n <= 20))
    for b in range(3):
        k = n[b]
        assert np.all(out["scores"][b, :k] >= 0.083) and np.all(np.diff(out["scores"][b, :k]) <= 0)
        for name in ("boxes", "scores", "classes", "masks"):
            assert not np.any(out[name][b, k:]), f"{name} padding of image {b} is not zero"
        assert np.all((out["classes"][b, :k] >= 0) & (out["classes"][b, :k] < len(CATEGORIES)))
        assert np.all((out["masks"][b, :k] >= 0) & (out["masks"][b, :k] <= 1))
        bx = out["boxes"][b, :k]
        assert np.all((bx >= 0) & (bx <= 128)) and np.all(bx[:, 2] >= bx[:, 0]) and np.all(bx[:, 3] >= bx[:, 1])


@pytest.mark.tf
def test_detector_call_raises_when_input_is_float():
    det = build_model(tiny_config())
    with pytest.raises(InvalidInputError, match="UINT8"):
        det(np.zeros((1, 128, 128, 3), np.float32))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@pytest.mark.tf
def test_train_detector_loss_falls_when_tiny_data(trained):
    out, summary = trained
    assert summary["steps_run"] == 120
    assert summary["last_loss"]["total"] < 0.5 * summary["first_loss"]["total"]
    for k in ("rpn_cls", "rcnn_cls", "mask"):
        assert summary["last_loss"][k] < summary["first_loss"][k], k
    assert (out / "model.weights.h5").is_file() and (out / "config.json").is_file() and (out / "loss.png").is_file()


@pytest.mark.tf
def test_train_detector_is_deterministic_when_same_seed(tiny_data, tmp_path):
    runs = []
    for i in range(2):
        train_detector(tiny_data, tmp_path / str(i), seed=3, config=tiny_train_config(3), progress=False)
        runs.append(json.loads((tmp_path / str(i) / "training.json").read_text())["history"])
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][-1]


@pytest.mark.tf
def test_load_model_reproduces_outputs_when_saved(trained, tiny_data):
    out, _ = trained
    a, b = load_model(out), load_model(out)
    img = read_letterboxed(load_samples(tiny_data, "test")[0], 128)[0][None]
    ra, rb = a(img), b(img)
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])


@pytest.mark.tf
def test_load_model_raises_when_directory_is_not_a_detector(tmp_path):
    with pytest.raises(ConfigError, match="weights directory"):
        load_model(tmp_path)


@pytest.mark.tf
def test_evaluate_detector_reports_box_and_mask_ap_when_trained(trained, tiny_data):
    out, _ = trained
    res = evaluate_detector(tiny_data, out, progress=False)
    assert res["images"] == 4 and res["instances"] >= 4
    for kind in ("box", "mask"):
        for k in ("AP", "AP50", "AP75"):
            assert 0.0 <= res[kind][k] <= 1.0
    # two well-separated colours and shapes: a detector trained for 120 steps finds some
    assert res["box"]["AP50"] > 0.2 and res["mask"]["AP50"] > 0.2


# --------------------------------------------------------------------------------------------
# export parity
# --------------------------------------------------------------------------------------------
@pytest.mark.tf
def test_tf2onnx_export_matches_tensorflow_when_trained_detector(trained, tiny_data, tmp_path):
    import onnxruntime as ort
    import tf2onnx


    out, _ = trained
    det = load_model(out)
    fn = det.serving_fn
    path = tmp_path / "detector.onnx"
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17, output_path=str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    images = np.stack([read_letterboxed(s, 128)[0] for s in load_samples(tiny_data, "test")])
    names = [o.name for o in sess.get_outputs()]
    for batch in (images[:1], images):
        ref = det(batch)
        got = dict(zip(names, sess.run(None, {"images": batch}), strict=True))
        np.testing.assert_array_equal(got["num_detections"], ref["num_detections"])
        np.testing.assert_array_equal(got["classes"], ref["classes"])
        np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=0.5)
        np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
        np.testing.assert_allclose(got["masks"], ref["masks"], atol=1e-3)
        assert ref["num_detections"].sum() > 0


@pytest.mark.tf
@pytest.mark.slow
def test_large_detector_builds_resnet50_fpn_and_serves_contract_when_untrained():
    det = build_model(DetectorConfig.large())
    assert det.keras_model.count_params() > 25_000_000
    out = det(np.zeros((1, 512, 512, 3), np.uint8))
    assert out["boxes"].shape == (1, 20, 4) and out["masks"].shape == (1, 20, 28, 28)
    assert out["num_detections"].shape == (1, 1)


@pytest.mark.tf
def test_committed_reference_weights_load_and_serve_contract_when_present():
    weights = Path(__file__).resolve().parents[1] / "training" / "weights" / "detector"
    if not (weights / "model.weights.h5").is_file():
        pytest.skip("no committed detector weights")
    assert (weights / "model.weights.h5").stat().st_size <= 10 * 2**20
    assert (weights / "MODEL_CARD.md").is_file()
    det = load_model(weights)
    out = det(np.zeros((2, 512, 512, 3), np.uint8))
    for spec in detector_config().outputs:
        assert out[spec.name].shape == (2, *spec.dims)


@pytest.mark.tf
def test_train_detector_continues_from_init_weights_when_given(trained, tiny_data, tmp_path):
    out, first = trained
    cont = train_detector(tiny_data, tmp_path / "c", seed=0, config=tiny_train_config(2), progress=False, init_weights=out)
    # starting from trained weights, the first step's loss is far below a fresh start's (~0.5x here)
    assert cont["first_loss"]["total"] < 0.75 * first["first_loss"]["total"]
    with pytest.raises(ConfigError, match="another configuration"):
        train_detector(tiny_data, tmp_path / "d", seed=0, config=tiny_train_config(2, model=tiny_config(head_dim=16)),
                       progress=False, init_weights=out)
