"""Box arithmetic of the Mask R-CNN detector: anchors, IoU, box encoding, letterboxing.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the letterboxed square input everywhere in
lookserve; the TensorFlow ops that want ``(y1, x1, y2, x2)`` get a swapped copy at the call.
The numpy functions here build training targets; the ``tf_*`` twins run inside the graph
(TensorFlow is imported inside them, so importing this module stays cheap).
"""

from __future__ import annotations

import math

import numpy as np

from lookserve.errors import ConfigError, InvalidInputError
from lookserve.images import letterbox as _letterbox

#: Faster R-CNN's clip of the log-size deltas (boxes at most 1000/16 times their anchor).
BBOX_CLIP = math.log(1000.0 / 16.0)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


# --------------------------------------------------------------------------------------------
# anchors
# --------------------------------------------------------------------------------------------
def generate_anchors(
    image_size: int,
    strides: tuple[int, ...],
    sizes: tuple[float, ...],
    ratios: tuple[float, ...],
) -> np.ndarray:
    """All anchors ``[A, 4]`` (x1, y1, x2, y2), ordered level → row → column → anchor.

    Level ``i`` has stride ``strides[i]`` and anchor side ``sizes[i]``; each position holds one
    anchor per aspect ratio ``h / w`` in ``ratios``, centred on the cell centre
    ``((c + 0.5) · stride)``. This order is the order of the RPN head's flattened outputs.
    """
    if len(strides) != len(sizes):
        raise ConfigError(f"{len(strides)} anchor strides but {len(sizes)} anchor sizes")
    if not ratios or any(r <= 0 for r in ratios):
        raise ConfigError(f"anchor ratios must be positive, got {ratios}")
    out = []
    for stride, size in zip(strides, sizes, strict=True):
        if image_size % stride:
            raise ConfigError(f"image size {image_size} is not divisible by stride {stride}")
        n = image_size // stride
        centres = (np.arange(n, dtype=np.float64) + 0.5) * stride
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        ws = np.array([size / math.sqrt(r) for r in ratios])
        hs = np.array([size * math.sqrt(r) for r in ratios])
        x1 = cx[..., None] - ws / 2
        y1 = cy[..., None] - hs / 2
        x2 = cx[..., None] + ws / 2
        y2 = cy[..., None] + hs / 2
        out.append(np.stack([x1, y1, x2, y2], axis=-1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------------------------
# numpy box ops
# --------------------------------------------------------------------------------------------
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] → [N, M]."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray, weights=RPN_WEIGHTS) -> np.ndarray:
    """Faster R-CNN deltas ``(dx, dy, dw, dh)`` that move ``anchors`` onto ``boxes``."""
    boxes = np.asarray(boxes, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    bw = boxes[..., 2] - boxes[..., 0]
    bh = boxes[..., 3] - boxes[..., 1]
    if np.any(aw <= 0) or np.any(ah <= 0) or np.any(bw <= 0) or np.any(bh <= 0):
        raise InvalidInputError("boxes and anchors must have positive width and height to be encoded")
    wx, wy, ww, wh = weights
    dx = wx * ((boxes[..., 0] + 0.5 * bw) - (anchors[..., 0] + 0.5 * aw)) / aw
    dy = wy * ((boxes[..., 1] + 0.5 * bh) - (anchors[..., 1] + 0.5 * ah)) / ah
    dw = ww * np.log(bw / aw)
    dh = wh * np.log(bh / ah)
    return np.stack([dx, dy, dw, dh], axis=-1).astype(np.float32)


def decode_boxes(deltas: np.ndarray, anchors: np.ndarray, weights=RPN_WEIGHTS) -> np.ndarray:
    """Inverse of :func:`encode_boxes` (log-size deltas clipped at ``log(1000/16)``)."""
    deltas = np.asarray(deltas, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    cx = anchors[..., 0] + 0.5 * aw + deltas[..., 0] / wx * aw
    cy = anchors[..., 1] + 0.5 * ah + deltas[..., 1] / wy * ah
    w = aw * np.exp(np.minimum(deltas[..., 2] / ww, BBOX_CLIP))
    h = ah * np.exp(np.minimum(deltas[..., 3] / wh, BBOX_CLIP))
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1).astype(np.float32)


def rpn_targets(
    anchors: np.ndarray,
    gt_boxes: np.ndarray,
    rng: np.random.Generator,
    batch: int = 256,
    positive_fraction: float = 0.5,
    pos_iou: float = 0.7,
    neg_iou: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """RPN labels ``[A]`` (1 object, 0 background, -1 ignored) and deltas ``[A, 4]``.

    Positive: IoU ≥ ``pos_iou`` with some ground-truth box, or the best anchor of a box;
    negative: best IoU < ``neg_iou``. At most ``batch`` anchors are kept labelled (a
    ``positive_fraction`` of them positive at most), sampled with ``rng``.
    """
    n = len(anchors)
    labels = np.full(n, -1, dtype=np.int32)
    deltas = np.zeros((n, 4), dtype=np.float32)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    if len(gt_boxes) == 0:
        labels[:] = 0
    else:
        iou = iou_matrix(anchors, gt_boxes)
        best = iou.max(axis=1)
        arg = iou.argmax(axis=1)
        labels[best < neg_iou] = 0
        labels[best >= pos_iou] = 1
        gt_best = iou.max(axis=0)
        for g in range(len(gt_boxes)):
            if gt_best[g] > 0:
                hits = np.flatnonzero(iou[:, g] >= gt_best[g] - 1e-6)
                labels[hits] = 1
                arg[hits] = g
        pos = np.flatnonzero(labels == 1)
        deltas[pos] = encode_boxes(gt_boxes[arg[pos]], anchors[pos], RPN_WEIGHTS)
    pos = np.flatnonzero(labels == 1)
    max_pos = int(batch * positive_fraction)
    if len(pos) > max_pos:
        labels[rng.choice(pos, len(pos) - max_pos, replace=False)] = -1
    n_pos = int((labels == 1).sum())
    neg = np.flatnonzero(labels == 0)
    max_neg = batch - n_pos
    if len(neg) > max_neg:
        labels[rng.choice(neg, len(neg) - max_neg, replace=False)] = -1
    deltas[labels != 1] = 0.0
    return labels, deltas


# --------------------------------------------------------------------------------------------
# letterboxing (what a client does before calling the detector)
# --------------------------------------------------------------------------------------------
def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Fit an RGB uint8 image into a ``size``×``size`` square, centred on black — exactly the
    clients' :func:`lookserve.images.letterbox`, so training sees what serving sees.

    Returns ``(square, scale, pad_x, pad_y)``: a point ``(x, y)`` of the original image is at
    ``(x · scale + pad_x, y · scale + pad_y)`` in the square.
    """

    out, lb = _letterbox(img, size)
    return out, lb.scale, lb.pad_x, lb.pad_y


def unletterbox_boxes(boxes: np.ndarray, scale: float, pad_x: int, pad_y: int) -> np.ndarray:
    """Map (x1, y1, x2, y2) boxes of the letterboxed square back to the original image."""
    b = np.asarray(boxes, dtype=np.float32).copy()
    b[..., [0, 2]] = (b[..., [0, 2]] - pad_x) / scale
    b[..., [1, 3]] = (b[..., [1, 3]] - pad_y) / scale
    return b


# --------------------------------------------------------------------------------------------
# TensorFlow twins (used inside the graph)
# --------------------------------------------------------------------------------------------
def tf_decode_boxes(deltas, anchors, weights=RPN_WEIGHTS):
    import tensorflow as tf

    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    cx = anchors[..., 0] + 0.5 * aw + deltas[..., 0] / wx * aw
    cy = anchors[..., 1] + 0.5 * ah + deltas[..., 1] / wy * ah
    w = aw * tf.exp(tf.minimum(deltas[..., 2] / ww, BBOX_CLIP))
    h = ah * tf.exp(tf.minimum(deltas[..., 3] / wh, BBOX_CLIP))
    return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def tf_encode_boxes(boxes, anchors, weights=RPN_WEIGHTS):
    import tensorflow as tf

    wx, wy, ww, wh = weights
    aw = tf.maximum(anchors[..., 2] - anchors[..., 0], 1e-3)
    ah = tf.maximum(anchors[..., 3] - anchors[..., 1], 1e-3)
    bw = tf.maximum(boxes[..., 2] - boxes[..., 0], 1e-3)
    bh = tf.maximum(boxes[..., 3] - boxes[..., 1], 1e-3)
    dx = wx * ((boxes[..., 0] + 0.5 * bw) - (anchors[..., 0] + 0.5 * aw)) / aw
    dy = wy * ((boxes[..., 1] + 0.5 * bh) - (anchors[..., 1] + 0.5 * ah)) / ah
    dw = ww * tf.math.log(bw / aw)
    dh = wh * tf.math.log(bh / ah)
    return tf.stack([dx, dy, dw, dh], axis=-1)


def tf_iou(a, b):
    """IoU of ``a`` [..., N, 4] with ``b`` [..., M, 4] → [..., N, M]."""
    import tensorflow as tf

    area_a = tf.maximum(a[..., 2] - a[..., 0], 0.0) * tf.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = tf.maximum(b[..., 2] - b[..., 0], 0.0) * tf.maximum(b[..., 3] - b[..., 1], 0.0)
    ix1 = tf.maximum(a[..., :, None, 0], b[..., None, :, 0])
    iy1 = tf.maximum(a[..., :, None, 1], b[..., None, :, 1])
    ix2 = tf.minimum(a[..., :, None, 2], b[..., None, :, 2])
    iy2 = tf.minimum(a[..., :, None, 3], b[..., None, :, 3])
    inter = tf.maximum(ix2 - ix1, 0.0) * tf.maximum(iy2 - iy1, 0.0)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def tf_xyxy_to_yxyx(boxes):
    import tensorflow as tf

    return tf.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3], boxes[..., 2]], axis=-1)
