"""Who is in a photo, and is it a full shot? MediaPipe BlazePose's post-processing in numpy.

    image → letterbox 224 (black, [-1, 1]) → ``pose_detector`` (2254 SSD anchors × 12 coords, 1 score)
      → sigmoid scores ≥ 0.5 → weighted NMS (IoU 0.3) → letterbox removal
      → per person: ROI (hip centre, 2 × distance to the full-body scale point, turned so the
        body is upright, × 1.25) → turned crop 256 ([0, 1]) → ``pose_landmarks`` (39 × 5 values,
        pose flag) → landmarks in original pixels → :class:`Person` → :class:`PoseVerdict`

The constants are those of MediaPipe's graphs (google/mediapipe at 9d88077, July 2024, the
0.10.14 wheel's models): ``modules/pose_detection/pose_detection_cpu.pbtxt`` (ImageToTensor 224
keep-aspect BORDER_ZERO [-1, 1]; SsdAnchorsCalculator num_layers 5, min_scale 0.1484375,
max_scale 0.75, strides 8, 16, 32, 32, 32, anchor offset 0.5, aspect ratio 1.0,
fixed_anchor_size, interpolated aspect 1.0 by default → 2 anchors per cell, 28²·2 + 14²·2 + 7²·6
= 2254; TensorsToDetections num_coords 12, reverse_output_order → x, y, w, h then 4 keypoints
x, y, scale 224, sigmoid with clipping at ±100, min_score_thresh 0.5; NonMaxSuppression
WEIGHTED, IoU 0.3), ``modules/pose_landmark/pose_detection_to_roi.pbtxt``
(AlignmentPointsRects keypoints 0 → 1, target angle 90°; RectTransformation scale 1.25,
square_long), ``pose_landmark_by_roi_cpu.pbtxt`` (ImageToTensor 256 [0, 1], default
BORDER_REPLICATE) and ``tensors_to_pose_landmarks_and_segmentation.pbtxt`` (pose flag
thresholded at 0.5 as given — no activation; 39 landmarks, sigmoid visibility and presence).
Pixels go through lookserve's one pixel path: the detector's letterbox is
:func:`lookserve.images.letterbox` (INTER_AREA when shrinking, where MediaPipe's CPU path warps
bilinearly), the turned crop :func:`lookserve.images.crop_rotated` (bilinear, as MediaPipe).
Left out: RefineLandmarksFromHeatmap (a ≤ few-pixel refinement of x, y; the verdicts depend
on visibility) and the temporal filters of the video graph.

Several persons: MediaPipe's pose graph keeps the first detection; here every detection after
NMS (up to :attr:`PoseConfig.max_persons`) gets its landmarks.

The verdict of a person (:func:`person_kind`): ``full_shot`` when a head landmark (nose, an
eye or an ear), both shoulders, hips, knees and ankles are visible (visibility ≥
:attr:`PoseConfig.visibility_threshold`) and inside the photo; ``upper_body`` when a head
landmark and both shoulders are; else ``partial``. The photo's verdict is the best of its
persons', or ``no_person``.

The models are reached through :class:`PoseModels`: :class:`TflitePoseModels` (TensorFlow's
TFLite interpreter, the reference) or :class:`TritonPoseModels` (the served ``pose_detector``
and ``pose_landmarks``); the look chain calls the steps itself (:class:`PoseSteps`), so its
sync and asyncio clients share them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lookserve import contracts
from lookserve.errors import ConfigError, ContractMismatch, InvalidRequest
from lookserve.images import Letterbox, crop_rotated, letterbox
from lookserve.training.detector_ops import iou_matrix

log = logging.getLogger(__name__)

# --- MediaPipe's constants (see the module docstring for where each comes from) -------------
DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
NUM_BOXES = 2254
NUM_COORDS = 12
NUM_KEYPOINTS = 4
SCORE_CLIP = 100.0
ROI_SCALE = 1.25
TARGET_ANGLE = math.pi / 2  # 90°
NUM_LANDMARKS = 39  # 33 body landmarks, then 6 auxiliary
_STRIDES = (8, 16, 32, 32, 32)

#: MediaPipe's names of the 33 body landmarks (the auxiliary 33..38 have none)
LANDMARK_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
_IDX = {n: i for i, n in enumerate(LANDMARK_NAMES)}
#: any one of these visible counts as "the head"
HEAD = tuple(_IDX[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"))
SHOULDERS = (_IDX["left_shoulder"], _IDX["right_shoulder"])
#: all of these visible (with the head) make a full shot
BODY = tuple(_IDX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip", "left_knee", "right_knee",
                               "left_ankle", "right_ankle"))
#: the skeleton drawn by :func:`lookserve.client.render.render_poses` (MediaPipe's POSE_CONNECTIONS, body part)
CONNECTIONS = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27),
               (24, 26), (26, 28), (27, 29), (29, 31), (27, 31), (28, 30), (30, 32), (28, 32), (0, 2), (0, 5),
               (2, 7), (5, 8), (9, 10))

KINDS = ("full_shot", "upper_body", "partial")  # a person's kinds, best first
VERDICTS = (*KINDS, "no_person")
GATES = ("off", "person", "full-shot")


@dataclass(frozen=True)
class PoseConfig:
    """The thresholds of the gate; the detector's and the pose flag's are MediaPipe's."""

    min_score: float = 0.5  # detector score (after sigmoid)
    nms_threshold: float = 0.3  # IoU above which detections merge (weighted)
    presence_threshold: float = 0.5  # the landmark model's pose flag
    visibility_threshold: float = 0.5  # a landmark counts as visible
    max_persons: int = 5
    detector: str = contracts.POSE_DETECTOR
    landmarks: str = contracts.POSE_LANDMARKS

    def __post_init__(self) -> None:
        for name in ("min_score", "nms_threshold", "presence_threshold", "visibility_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"pose {name} must be in [0, 1], got {v}")
        if self.max_persons < 1:
            raise ConfigError(f"pose max_persons must be ≥ 1, got {self.max_persons}")


@dataclass(frozen=True)
class Detection:
    """One person box of the detector after NMS, in ORIGINAL pixels."""

    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    keypoints: np.ndarray  # [4, 2] x, y: hip centre, full-body scale point, shoulder centre, upper-body point


@dataclass(frozen=True)
class Roi:
    """MediaPipe's ROI of a person in original pixels: a square turned by ``rotation`` radians."""

    x: float
    y: float
    side: float
    rotation: float

    def corners(self) -> list[tuple[float, float]]:
        """The turned square's corners, in order around it."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        h = self.side / 2
        return [(self.x + c * u - s * v, self.y + s * u + c * v) for u, v in ((-h, -h), (h, -h), (h, h), (-h, h))]


@dataclass(frozen=True)
class Person:
    score: float  # detector
    box: tuple[float, float, float, float]
    roi: Roi
    presence: float  # the landmark model's pose flag
    landmarks: np.ndarray  # [39, 5]: x, y (original pixels), z (pixels, relative to the hips), visibility, presence
    kind: str  # one of KINDS
    missing: tuple[str, ...]  # the full shot's landmarks not visible or outside the photo

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": round(self.score, 4), "presence": round(self.presence, 4),
                "box": [round(v, 1) for v in self.box], "missing": list(self.missing),
                "roi": {"x": round(self.roi.x, 1), "y": round(self.roi.y, 1), "side": round(self.roi.side, 1),
                        "rotation": round(self.roi.rotation, 4)}}


@dataclass(frozen=True)
class PoseVerdict:
    verdict: str  # one of VERDICTS
    persons: tuple[Person, ...]
    width: int
    height: int
    detections: int = 0  # persons the detector found (before the pose flag)
    timings_ms: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)  # the served versions that answered this photo

    def passes(self, gate: str) -> bool:
        check_gate(gate)
        if gate == "off":
            return True
        if gate == "person":
            return bool(self.persons)
        return self.verdict == "full_shot"

    def reason(self, gate: str) -> str:
        """Why the photo fails ``gate`` ("" when it passes)."""
        if self.passes(gate):
            return ""
        if not self.persons:
            return f"no person found (the detector found {self.detections}, none with a pose)"
        parts = [f"person {i} is {p.kind}, missing {', '.join(p.missing)}" for i, p in enumerate(self.persons)]
        return "not a full shot: " + "; ".join(parts)

    def to_dict(self, gate: str = "off") -> dict[str, Any]:
        d = {"verdict": self.verdict, "persons": [p.to_dict() for p in self.persons]}
        if gate != "off":
            d.update(gate=gate, passed=self.passes(gate), reason=self.reason(gate))
        return d


def check_gate(gate: str) -> str:
    if gate not in GATES:
        raise ConfigError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
    return gate


# ------------------------------------------------------------------------------------------
# Detector: anchors, decoding, weighted NMS
# ------------------------------------------------------------------------------------------
def ssd_anchors(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = _STRIDES) -> np.ndarray:
    """Anchor centres ``[N, 2]`` (x, y in 0..1) in SsdAnchorsCalculator's order; with
    ``fixed_anchor_size`` every anchor is 1 × 1. Layers of one stride share their cells, each
    cell holding 2 anchors (aspect 1.0 and the interpolated scale) per layer."""
    out = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = 2 * (last - layer)
        fm = math.ceil(size / strides[layer])
        ys, xs = np.meshgrid((np.arange(fm) + 0.5) / fm, (np.arange(fm) + 0.5) / fm, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(cells, per_cell, axis=0))
        layer = last
    return np.concatenate(out).astype(np.float32)


_ANCHORS = ssd_anchors()


def decode_boxes(raw_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``[2254, 12]`` → boxes ``[N, 4]`` (x1, y1, x2, y2) and keypoints ``[N, 4, 2]``, in 0..1
    of the detector's square."""
    raw = np.asarray(raw_boxes, dtype=np.float32).reshape(-1, NUM_COORDS)
    if len(raw) != len(_ANCHORS):
        raise InvalidRequest(f"pose detector gave {len(raw)} boxes, expected {len(_ANCHORS)}")
    a = _ANCHORS
    cx = raw[:, 0] / DETECTOR_SIZE + a[:, 0]
    cy = raw[:, 1] / DETECTOR_SIZE + a[:, 1]
    w = raw[:, 2] / DETECTOR_SIZE
    h = raw[:, 3] / DETECTOR_SIZE
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kp = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / DETECTOR_SIZE + a[:, None, :]
    return boxes, kp


def decode_scores(raw_scores: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(raw_scores, dtype=np.float64).reshape(-1), -SCORE_CLIP, SCORE_CLIP)
    return (1.0 / (1.0 + np.exp(-s))).astype(np.float32)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float,
                 ) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """NonMaxSuppressionCalculator's WEIGHTED algorithm: take the best remaining detection, merge
    every remaining one whose IoU with it is > ``threshold`` (box corners and keypoints averaged,
    weighted by score; the best one's score kept)."""
    order = np.argsort(-scores, kind="stable")
    out = []
    while len(order):
        best = order[0]
        sim = iou_matrix(boxes[best], boxes[order])[0]
        sim[0] = 1.0  # the best one is in its own group, even if its box is degenerate
        group, order = order[sim > threshold], order[sim <= threshold]
        wts = scores[group][:, None]
        total = float(wts.sum())
        box = (boxes[group] * wts).sum(axis=0) / total
        kp = (keypoints[group] * wts[:, :, None]).sum(axis=0) / total
        out.append((float(scores[best]), box, kp))
    return out


def detections_from_outputs(raw_boxes: np.ndarray, raw_scores: np.ndarray, lb: Letterbox,
                            config: PoseConfig) -> list[Detection]:
    """The detector's raw outputs → persons in original pixels, best first."""
    boxes, kp = decode_boxes(raw_boxes)
    scores = decode_scores(raw_scores)
    keep = scores >= config.min_score
    merged = weighted_nms(boxes[keep], kp[keep], scores[keep], config.nms_threshold)[: config.max_persons]
    out = []
    for score, box, points in merged:
        sq = np.asarray(box, np.float32) * lb.size
        orig = lb.to_original(sq[None], clip=False)[0]
        pts = (np.asarray(points, np.float64) * lb.size - [lb.pad_x, lb.pad_y]) / lb.scale
        out.append(Detection(score, tuple(float(v) for v in orig), pts))
    return out


# ------------------------------------------------------------------------------------------
# ROI, landmark crop, landmark decoding
# ------------------------------------------------------------------------------------------
def normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def roi_from_detection(d: Detection) -> Roi:
    """AlignmentPointsRectsCalculator (keypoint 0 centre, keypoint 1 scale, target 90°) then
    RectTransformationCalculator (× 1.25, square_long; the rect is already square in pixels)."""
    (x0, y0), (x1, y1) = d.keypoints[0], d.keypoints[1]
    side = 2.0 * math.hypot(x1 - x0, y1 - y0)
    rotation = normalize_radians(TARGET_ANGLE - math.atan2(-(y1 - y0), x1 - x0))
    return Roi(float(x0), float(y0), side * ROI_SCALE, rotation)


def landmark_input(image: np.ndarray, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
    """The landmark model's input ``[1, 256, 256, 3]`` float in [0, 1] and the crop→image matrix."""
    crop, matrix = crop_rotated(image, (roi.x, roi.y), roi.side, roi.rotation, LANDMARK_SIZE)
    return (crop.astype(np.float32) / 255.0)[None], matrix


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_landmarks(raw: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """TensorsToLandmarksCalculator + the projection back: raw ``[195]`` → ``[39, 5]`` (x, y in
    original pixels, z scaled like x, sigmoid visibility and presence)."""
    r = np.asarray(raw, dtype=np.float32).reshape(-1)
    if r.size != NUM_LANDMARKS * 5:
        raise InvalidRequest(f"pose landmark model gave {r.size} values, expected {NUM_LANDMARKS * 5}")
    r = r.reshape(NUM_LANDMARKS, 5).astype(np.float64)
    xy1 = np.concatenate([r[:, :2], np.ones((NUM_LANDMARKS, 1))], axis=1)
    xy = xy1 @ np.asarray(matrix, np.float64).T
    z = r[:, 2] * math.hypot(matrix[0, 0], matrix[1, 0])
    return np.column_stack([xy, z, _sigmoid(r[:, 3]), _sigmoid(r[:, 4])]).astype(np.float32)


def person_kind(landmarks: np.ndarray, width: int, height: int, threshold: float) -> tuple[str, tuple[str, ...]]:
    """The person's kind and the full shot's landmarks it lacks (see the module docstring)."""
    lm = np.asarray(landmarks)
    ok = (lm[:, 3] >= threshold) & (lm[:, 0] >= 0) & (lm[:, 0] < width) & (lm[:, 1] >= 0) & (lm[:, 1] < height)
    head = bool(ok[list(HEAD)].any())
    missing = ([] if head else ["head"]) + [LANDMARK_NAMES[i] for i in BODY if not ok[i]]
    if not missing:
        return "full_shot", ()
    if head and all(ok[i] for i in SHOULDERS):
        return "upper_body", tuple(missing)
    return "partial", tuple(missing)


def person_from_outputs(image_size: tuple[int, int], d: Detection, roi: Roi, matrix: np.ndarray, raw_landmarks,
                        raw_flag, config: PoseConfig) -> Person | None:
    """A person from the landmark model's outputs, or None when its pose flag is below threshold."""
    presence = float(np.asarray(raw_flag, dtype=np.float32).reshape(-1)[0])
    if presence < config.presence_threshold:
        return None
    w, h = image_size
    lm = decode_landmarks(raw_landmarks, matrix)
    kind, missing = person_kind(lm, w, h, config.visibility_threshold)
    return Person(d.score, d.box, roi, presence, lm, kind, missing)


def verdict_of(persons: list[Person], width: int, height: int, detections: int,
               timings: dict[str, float] | None = None) -> PoseVerdict:
    best = min((KINDS.index(p.kind) for p in persons), default=None)
    return PoseVerdict("no_person" if best is None else KINDS[best], tuple(persons), width, height, detections,
                       dict(timings or {}))


# ------------------------------------------------------------------------------------------
# The models
# ------------------------------------------------------------------------------------------
#: what a pose model call answers: its two outputs and the version that answered ("" for the interpreter)
Answer = tuple[np.ndarray, np.ndarray, str]


class PoseModels(Protocol):
    def detect(self, square: np.ndarray) -> Answer:
        """``[1, 224, 224, 3]`` float in [-1, 1] → raw boxes ``[2254, 12]``, raw scores ``[2254, 1]``, version."""

    def landmarks(self, crop: np.ndarray) -> Answer:
        """``[1, 256, 256, 3]`` float in [0, 1] → raw landmarks ``[195]``, pose flag ``[1]``, version."""


def detector_input(image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
    """The detector's input ``[1, 224, 224, 3]`` float in [-1, 1] (letterboxed on black) and the letterbox."""
    square, lb = letterbox(image, DETECTOR_SIZE)
    return (square.astype(np.float32) / 127.5 - 1.0)[None], lb


def _by_last_dim(outputs: dict[str, np.ndarray], size: int, what: str) -> np.ndarray:
    hits = [v for v in outputs.values() if np.asarray(v).shape[-1:] == (size,)]
    if len(hits) != 1:
        shapes = {k: list(np.asarray(v).shape) for k, v in outputs.items()}
        raise ContractMismatch(f"pose model outputs {shapes}: expected exactly one {what} of last size {size}")
    return np.asarray(hits[0])


def detector_outputs(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(raw boxes, raw scores) among a detector's outputs, told apart by their last dimension."""
    return _by_last_dim(outputs, NUM_COORDS, "box tensor"), _by_last_dim(outputs, 1, "score tensor")


def landmark_outputs(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(raw landmarks, pose flag) among a landmark model's outputs (last dimension 195 and 1)."""
    flags = {k: v for k, v in outputs.items() if np.asarray(v).ndim == 2}
    return _by_last_dim(outputs, NUM_LANDMARKS * 5, "landmark tensor"), _by_last_dim(flags, 1, "pose flag")


class TflitePoseModels:
    """The reference: TensorFlow's TFLite interpreter on MediaPipe's ``.tflite`` files."""

    def __init__(self, detector: str | Path, landmarks: str | Path) -> None:
        import tensorflow as tf  # lazy: the client never needs TensorFlow

        self._det = tf.lite.Interpreter(model_path=str(detector))
        self._lm = tf.lite.Interpreter(model_path=str(landmarks))
        for it in (self._det, self._lm):
            it.allocate_tensors()

    @staticmethod
    def _run(it, x: np.ndarray) -> dict[str, np.ndarray]:
        it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x, dtype=np.float32))
        it.invoke()
        return {d["name"]: it.get_tensor(d["index"]).copy() for d in it.get_output_details()}

    def detect(self, square: np.ndarray) -> Answer:
        return (*detector_outputs(self._run(self._det, square)), "")

    def landmarks(self, crop: np.ndarray) -> Answer:
        return (*landmark_outputs(self._run(self._lm, crop)), "")


def served_tensors(detector_meta, landmarks_meta) -> tuple[tuple[str, str], tuple[list[str], list[str]]]:
    """From the two served models' metadata: their input names and the outputs the gate reads
    (the detector's [.., 12] and [.., 1]; the landmark model's [1, 195] and [1, 1], not its
    segmentation or heatmap)."""
    def pick(meta, wanted: tuple[tuple[int, int], ...]) -> list[str]:
        names = []
        for rank, last in wanted:
            hits = [t.name for t in meta.outputs if len(t.shape) == rank and t.shape[-1] == last]
            if len(hits) != 1:
                raise ContractMismatch(f"pose model {meta.name!r}: expected one output of rank {rank} ending in {last}, "
                                       f"has {[(t.name, list(t.shape)) for t in meta.outputs]}")
            names += hits
        return names

    inputs = (single_input(detector_meta), single_input(landmarks_meta))
    outputs = (pick(detector_meta, ((3, NUM_COORDS), (3, 1))), pick(landmarks_meta, ((2, NUM_LANDMARKS * 5), (2, 1))))
    return inputs, outputs


class _ServedPoseModels:
    """What the sync and asyncio clients of the served pose models share: each request's model and
    inputs, and its answer (the outputs picked by :func:`served_tensors`, in their order)."""

    client: Any
    config: PoseConfig
    timeout_s: float | None
    inputs: tuple[str, str]
    outputs: tuple[list[str], list[str]]

    def _request(self, which: int, x: np.ndarray) -> dict[str, Any]:
        return {"model": (self.config.detector, self.config.landmarks)[which], "inputs": {self.inputs[which]: x},
                "outputs": self.outputs[which], "timeout_s": self.timeout_s}

    def _answer(self, which: int, r) -> Answer:
        first, second = self.outputs[which]
        return r.outputs[first], r.outputs[second], str(r.model_version)


class TritonPoseModels(_ServedPoseModels):
    """The served ``pose_detector`` and ``pose_landmarks`` over a
    :class:`~lookserve.client.core.TritonClient`; their tensors come from their metadata
    (:func:`served_tensors`)."""

    def __init__(self, client, config: PoseConfig | None = None, timeout_s: float | None = None) -> None:
        self.client = client
        self.config = config or PoseConfig()
        self.timeout_s = timeout_s
        self.inputs, self.outputs = served_tensors(client.model_metadata(self.config.detector),
                                                   client.model_metadata(self.config.landmarks))

    def detect(self, square: np.ndarray) -> Answer:
        return self._answer(0, self.client.infer(**self._request(0, square)))

    def landmarks(self, crop: np.ndarray) -> Answer:
        return self._answer(1, self.client.infer(**self._request(1, crop)))


class AsyncTritonPoseModels(_ServedPoseModels):
    """The asyncio twin of :class:`TritonPoseModels` (``await AsyncTritonPoseModels.create(...)``)."""

    def __init__(self, client, config: PoseConfig, timeout_s: float | None, tensors) -> None:
        self.client, self.config, self.timeout_s = client, config, timeout_s
        self.inputs, self.outputs = tensors

    @classmethod
    async def create(cls, client, config: PoseConfig | None = None, timeout_s: float | None = None):
        config = config or PoseConfig()
        tensors = served_tensors(await client.model_metadata(config.detector),
                                 await client.model_metadata(config.landmarks))
        return cls(client, config, timeout_s, tensors)

    async def detect(self, square: np.ndarray) -> Answer:
        return self._answer(0, await self.client.infer(**self._request(0, square)))

    async def landmarks(self, crop: np.ndarray) -> Answer:
        return self._answer(1, await self.client.infer(**self._request(1, crop)))


def single_input(meta) -> str:
    """The one FP32 4-D input of a served pose model (its metadata), else ContractMismatch."""
    ins = [t for t in meta.inputs if t.datatype == "FP32" and len(t.shape) == 4]
    if len(ins) != 1:
        raise ContractMismatch(f"pose model {meta.name!r} should have one FP32 [1, S, S, 3] input, has {meta.inputs}")
    return ins[0].name


# ------------------------------------------------------------------------------------------
# One photo: the steps, and two drivers (sync, asyncio) that send the steps' requests
# ------------------------------------------------------------------------------------------
Analysis = Generator[tuple[str, np.ndarray], tuple[np.ndarray, np.ndarray], PoseVerdict]


def analysis(image: np.ndarray, config: PoseConfig) -> Analysis:
    """The whole per-photo chain without I/O: yields ``("detect", square)`` and then
    ``("landmarks", crop)`` per person, is sent each model's (two) outputs, returns the verdict."""
    t0 = time.perf_counter()
    square, lb = detector_input(image)
    raw_boxes, raw_scores = yield "detect", square
    dets = detections_from_outputs(raw_boxes, raw_scores, lb, config)
    h, w = image.shape[:2]
    persons = []
    for d in dets:
        roi = roi_from_detection(d)
        crop, matrix = landmark_input(image, roi)
        raw_lm, flag = yield "landmarks", crop
        p = person_from_outputs((w, h), d, roi, matrix, raw_lm, flag, config)
        if p is not None:
            persons.append(p)
    return verdict_of(persons, w, h, len(dets), {"gate": (time.perf_counter() - t0) * 1e3})


def _answered(config: PoseConfig, kind: str, answer: Answer, versions: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b, version = answer
    if version:
        versions[config.detector if kind == "detect" else config.landmarks] = version
    return a, b


def _step(steps: Generator, value: Any) -> tuple[tuple[str, np.ndarray] | None, PoseVerdict | None]:
    """Send ``value`` to :func:`analysis`: (its next request, None), or (None, the verdict) when it
    is done — a return value, not a StopIteration, which an asyncio future refuses."""
    try:
        return steps.send(value), None
    except StopIteration as done:
        return None, done.value


def analyse(image: np.ndarray, models: PoseModels, config: PoseConfig | None = None) -> PoseVerdict:
    """Persons and the verdict of one RGB uint8 photo, through ``models``; the verdict records
    the versions that answered this photo's requests."""
    config = config or PoseConfig()
    steps, versions = analysis(image, config), {}
    request, verdict = _step(steps, None)
    while request is not None:
        kind, x = request
        answer = models.detect(x) if kind == "detect" else models.landmarks(x)
        request, verdict = _step(steps, _answered(config, kind, answer, versions))
    return replace(verdict, model_versions=versions)


async def analyse_async(image: np.ndarray, models: AsyncTritonPoseModels, config: PoseConfig | None = None,
                        ) -> PoseVerdict:
    """:func:`analyse` over async models (the same steps; the pixel work — letterbox, crops,
    decoding — in a worker thread, off the event loop)."""
    config = config or PoseConfig()
    steps, versions = analysis(image, config), {}
    request, verdict = await asyncio.to_thread(_step, steps, None)
    while request is not None:
        kind, x = request
        answer = await (models.detect(x) if kind == "detect" else models.landmarks(x))
        request, verdict = await asyncio.to_thread(lambda k=kind, a=answer: _step(steps, _answered(config, k, a, versions)))
    return replace(verdict, model_versions=versions)


__all__ = [
    "BODY", "CONNECTIONS", "Detection", "GATES", "HEAD", "KINDS", "LANDMARK_NAMES", "Person", "PoseConfig",
    "AsyncTritonPoseModels", "PoseModels", "PoseVerdict", "Roi", "TflitePoseModels", "TritonPoseModels", "VERDICTS",
    "analyse", "analyse_async", "analysis", "check_gate",
    "decode_boxes", "decode_landmarks", "decode_scores", "detections_from_outputs", "detector_input",
    "detector_outputs", "landmark_input", "landmark_outputs", "person_from_outputs", "person_kind",
    "roi_from_detection", "served_tensors", "single_input", "ssd_anchors", "verdict_of", "weighted_nms",
]
