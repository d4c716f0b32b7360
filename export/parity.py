"""The parity gate's comparisons: source-framework outputs against onnxruntime's.

A per-model tolerance table, as tf2onnx's own tests keep one (``tests/backend_test_base.py``):

* embedder — the cosine between the two embeddings of every row is ≥ 0.9999;
* view classifier — probabilities differ by at most 1e-4 (max absolute difference);
* detector — the same detections after matching (each detection paired one-to-one with one of
  the same class and box IoU ≥ 0.5; none left without a partner), then over the pairs: boxes
  within 0.5 px, scores within 1e-4 and masks (thresholded at 0.5) with IoU ≥ 0.99 — and, on the
  sample sets that count (the data set's street photos), at least ``min_detections_per_row``
  reference detections per photo: matching nothing against nothing proves nothing, so a gate
  whose source detects (almost) nothing refuses the export.

Everything here is numpy; nothing imports TensorFlow or onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lookserve.errors import ParityError

#: metrics and whether larger values are better
_HIGHER_IS_BETTER = {"min_cosine": True, "min_mask_iou": True, "max_abs_diff": False, "max_scaled_diff": False,
                     "max_box_px": False, "mismatched": False, "count": True}


@dataclass(frozen=True)
class Tolerance:
    """One output's limit: ``metric`` is ``max_abs_diff``, ``max_scaled_diff`` (the max abs diff
    divided by ``max(1, max |source|)``: absolute for outputs within ±1, relative to the output's
    largest magnitude beyond), ``min_cosine`` or ``mismatched`` (exact)."""

    metric: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in ("max_abs_diff", "max_scaled_diff", "min_cosine", "mismatched"):
            raise ValueError(f"unknown parity metric {self.metric!r}")


@dataclass(frozen=True)
class DetectionTolerance:
    """The detector's limits (its outputs are compared together, after matching detections)."""

    box_px: float = 0.5
    score: float = 1e-4
    mask_iou: float = 0.99
    mask_threshold: float = 0.5
    #: two detections can only be the same one when their class agrees and their boxes overlap this much
    match_iou: float = 0.5
    #: the source must detect at least this many objects per photo (on average) of a sample set
    #: that counts, or the figures above rest on too little to mean anything
    min_detections_per_row: float = 2.0


Tolerances = Mapping[str, Tolerance] | DetectionTolerance

#: the gate for FP32 exports, by model kind
TOLERANCES: dict[str, Tolerances] = {
    "embedder": {"embedding": Tolerance("min_cosine", 0.9999)},
    "view_classifier": {"type_probs": Tolerance("max_abs_diff", 1e-4), "best_view": Tolerance("max_abs_diff", 1e-4)},
    "detector": DetectionTolerance(),
}

#: the looser gate of the reduced-precision variants (their figure is what export.json records)
VARIANT_TOLERANCES: dict[str, dict[str, Tolerances]] = {
    "fp16": {
        "embedder": {"embedding": Tolerance("min_cosine", 0.999)},
        "view_classifier": {"type_probs": Tolerance("max_abs_diff", 1e-2), "best_view": Tolerance("max_abs_diff", 1e-2)},
        "detector": DetectionTolerance(box_px=2.0, score=1e-2, mask_iou=0.9),
    },
    "int8": {
        "embedder": {"embedding": Tolerance("min_cosine", 0.98)},
        "view_classifier": {"type_probs": Tolerance("max_abs_diff", 0.05), "best_view": Tolerance("max_abs_diff", 0.05)},
        "detector": DetectionTolerance(box_px=8.0, score=0.05, mask_iou=0.8),
    },
}

#: a reduced-precision embedder must keep the held-out retrieval top-1 of its source within this
#: (absolute, either way): its cosine limit alone (int8: 0.98, about 11°) would let rankings change
RETRIEVAL_TOP1_CHANGE = 0.01

#: for models of no known kind: every floating output within 1e-4, every integer output exact
DEFAULT_FLOAT = Tolerance("max_abs_diff", 1e-4)
DEFAULT_INT = Tolerance("mismatched", 0)

#: a TFLite source's floating outputs (lookserve.export.models.export_tflite), against TFLite's
#: built-in CPU kernels: within 1e-3 absolute where the output stays within ±1, else within 1e-3
#: of its largest magnitude — MediaPipe's outputs are often pixels or logits in the hundreds
#: (pose_landmark_full: landmarks ±600, segmentation logits down to −1500, where TFLite's own
#: XNNPACK and built-in kernels differ by 0.002 and 1.7)
TFLITE_FLOAT = Tolerance("max_scaled_diff", 1e-3)


@dataclass(frozen=True)
class Figure:
    """One measured figure: ``output``'s ``metric`` on the ``samples`` set against ``limit``."""

    output: str
    metric: str
    value: float
    limit: float
    samples: str

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.value):
            return False
        return self.value >= self.limit if _HIGHER_IS_BETTER[self.metric] else self.value <= self.limit

    def describe(self) -> str:
        op = "≥" if _HIGHER_IS_BETTER[self.metric] else "≤"
        if self.metric == "count":
            return (f"{self.output}: {self.value:g} on {self.samples} (need {op} {self.limit:g}; "
                    "the source detects too little there for the comparison to mean anything)")
        return f"{self.output}: {self.metric} = {self.value:.6g} on {self.samples} (limit {op} {self.limit:g})"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def tolerances_for(kind: str | None, outputs: Mapping[str, np.ndarray], variant: str = "fp32") -> Tolerances:
    """The table for ``kind`` (and ``variant``), or the default per-output limits."""
    table = TOLERANCES if variant == "fp32" else VARIANT_TOLERANCES.get(variant, {})
    if kind in table:
        return table[kind]
    if variant != "fp32":
        scale = {"fp16": 1e-2, "int8": 5e-2}.get(variant, 1e-2)
        return {k: (Tolerance("max_abs_diff", scale) if np.issubdtype(v.dtype, np.floating) else DEFAULT_INT)
                for k, v in outputs.items()}
    return {k: (DEFAULT_FLOAT if np.issubdtype(v.dtype, np.floating) else DEFAULT_INT) for k, v in outputs.items()}


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


def compare_tensors(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
    tolerances: Mapping[str, Tolerance], samples: str,
) -> list[Figure]:
    figures = []
    for name, tol in tolerances.items():
        if name not in reference or name not in candidate:
            missing = "the source" if name not in reference else "the ONNX model"
            raise ParityError(f"output {name!r} is missing from {missing}'s outputs")
        ref = np.asarray(reference[name])
        got = np.asarray(candidate[name])
        if ref.shape != got.shape:
            raise ParityError(f"output {name!r} has shape {got.shape} in ONNX but {ref.shape} in the source ({samples})")
        if tol.metric == "min_cosine":
            value = float(_row_cosine(ref, got).min())
        elif tol.metric in ("max_abs_diff", "max_scaled_diff"):
            value = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if ref.size else 0.0
            if tol.metric == "max_scaled_diff" and ref.size:
                value /= max(1.0, float(np.max(np.abs(ref.astype(np.float64)))))
        else:
            value = float(np.count_nonzero(ref != got))
        figures.append(Figure(name, tol.metric, value, tol.limit, samples))
    return figures


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` [N, 4] and ``b`` [M, 4] (x1, y1, x2, y2)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_detections(ref_boxes, ref_classes, got_boxes, got_classes, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching, highest IoU first, between detections of the same class whose
    boxes overlap with IoU ≥ ``min_iou``. Returns ``(reference index, candidate index)`` pairs;
    detections left out have no partner."""
    if len(ref_boxes) == 0 or len(got_boxes) == 0:
        return []
    iou = _iou_matrix(ref_boxes.astype(np.float64), got_boxes.astype(np.float64))
    iou[ref_classes[:, None] != got_classes[None, :]] = -1.0
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < min_iou:
            return pairs
        pairs.append((int(i), int(j)))
        iou[i, :] = -1.0
        iou[:, j] = -1.0


def _mask_iou(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    ma, mb = a >= threshold, b >= threshold
    union = np.count_nonzero(ma | mb)
    return 1.0 if union == 0 else np.count_nonzero(ma & mb) / union


def compare_detections(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
    tol: DetectionTolerance, samples: str, require_detections: bool = True,
) -> list[Figure]:
    """The detector's figures: detections without a partner (both sides), and over the matched
    pairs the largest box difference in pixels, the largest score difference and the smallest mask IoU.

    With ``require_detections`` (a sample set that counts) a ``reference_detections`` figure
    too: the source's detections over the set, which must reach ``min_detections_per_row`` × rows."""
    for name in ("boxes", "scores", "classes", "masks", "num_detections"):
        for side, outs in (("source", reference), ("ONNX model", candidate)):
            if name not in outs:
                raise ParityError(f"detector output {name!r} is missing from the {side}'s outputs")
    unmatched = found = 0
    box_px = score = 0.0
    mask_iou = 1.0
    rows = len(reference["boxes"])
    for b in range(rows):
        n_ref = int(np.asarray(reference["num_detections"][b]).reshape(-1)[0])
        n_got = int(np.asarray(candidate["num_detections"][b]).reshape(-1)[0])
        ref_boxes, got_boxes = reference["boxes"][b][:n_ref], candidate["boxes"][b][:n_got]
        ref_cls, got_cls = reference["classes"][b][:n_ref], candidate["classes"][b][:n_got]
        pairs = match_detections(ref_boxes, ref_cls, got_boxes, got_cls, tol.match_iou)
        found += n_ref
        unmatched += (n_ref - len(pairs)) + (n_got - len(pairs))
        for i, j in pairs:
            box_px = max(box_px, float(np.max(np.abs(ref_boxes[i].astype(np.float64) - got_boxes[j]))))
            score = max(score, abs(float(reference["scores"][b][i]) - float(candidate["scores"][b][j])))
            mask_iou = min(mask_iou, _mask_iou(reference["masks"][b][i], candidate["masks"][b][j], tol.mask_threshold))
    figures = [
        Figure("detections", "mismatched", float(unmatched), 0.0, samples),
        Figure("boxes", "max_box_px", box_px, tol.box_px, samples),
        Figure("scores", "max_abs_diff", score, tol.score, samples),
        Figure("masks", "min_mask_iou", mask_iou, tol.mask_iou, samples),
    ]
    if require_detections:
        need = float(np.ceil(tol.min_detections_per_row * rows))
        figures.append(Figure("reference_detections", "count", float(found), need, samples))
    return figures


def compare(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], tolerances: Tolerances, samples: str,
    require_detections: bool = True,
) -> list[Figure]:
    if isinstance(tolerances, DetectionTolerance):
        return compare_detections(reference, candidate, tolerances, samples, require_detections)
    return compare_tensors(reference, candidate, tolerances, samples)


def worst(figures: Sequence[Figure]) -> list[Figure]:
    """One figure per (output, metric): the worst over the sample sets."""
    best: dict[tuple[str, str], Figure] = {}
    for f in figures:
        key = (f.output, f.metric)
        if key not in best:
            best[key] = f
            continue
        cur = best[key]
        worse = (f.value < cur.value) if _HIGHER_IS_BETTER[f.metric] else (f.value > cur.value)
        if worse or not np.isfinite(f.value):
            best[key] = f
    return list(best.values())


def enforce(figures: Sequence[Figure], model: str) -> None:
    """Raise :class:`ParityError` naming every output that diverged and by how much."""
    failed = [f for f in figures if not f.passed]
    if failed:
        raise ParityError(
            f"{model}: the ONNX model diverges from the source: " + "; ".join(f.describe() for f in failed)
        )
