"""The garment segmenter: a Mask R-CNN (backbone + FPN, RPN, ROIAlign, box and mask heads).

Served graph (what :func:`load_model` returns and the export converts with tf2onnx)::

    images UINT8 [B, 512, 512, 3] (letterboxed RGB)
      → float, scaled to [-1, 1]                      (inside the graph)
      → backbone (C3, C4, C5) → FPN (P3..P6, strides 8..64)
      → RPN (3 anchors per position and level) → top-k, NMS → proposals [B, P]
      → ROIAlign (``tf.image.crop_and_resize``, 2×2 samples per bin, FPN level by box size)
      → box head: 12-way softmax (background + 11 categories), class-agnostic box deltas
      → score threshold, per-class NMS, top-20 per image
      → ROIAlign on the detections → mask head → the detected class's 28×28 mask
    outputs  boxes FP32 [B, 20, 4] (x1, y1, x2, y2 pixels of the 512 input)
             scores FP32 [B, 20], classes INT32 [B, 20] (0-based indices into CATEGORIES)
             masks FP32 [B, 20, 28, 28] (probabilities), num_detections INT32 [B, 1]
    rows past num_detections are zeros.

Batched NMS without loops: the boxes of different images (and, in the final stage, of
different classes) are shifted apart by a multiple of ``2 × input_size`` so one
``tf.image.non_max_suppression`` call never suppresses across them; the survivors are scattered
back into a ``[B, N]`` score matrix and ``tf.math.top_k`` picks each image's best. Every op used
(NonMaxSuppressionV3, CropAndResize, TopKV2, ScatterNd) converts with tf2onnx at opset 17.

Training (:func:`train_detector`) and evaluation (:func:`evaluate_detector`, pycocotools box
and segm AP) work on the COCO annotations of a street2shop-format data set
(``annotations/instances_{train,val,test}.json``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookserve.contracts import DETECTOR_INPUT_SIZE, DETECTOR_MAX_DETECTIONS, MASK_SIZE
from lookserve.errors import ConfigError, DataError, InvalidInputError
from lookserve.taxonomy import CATEGORIES
from lookserve.training import detector_ops as ops

log = logging.getLogger(__name__)

KIND = "detector"
SIZES = ("small", "large")
#: output names in the order of ``contracts.detector_config()``.
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks", "num_detections")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and inference post-processing of the detector.

    ``backbone``: ``small`` (a 5-stage strided conv net, ~0.3 M parameters at width 16, for
    CPU) or ``resnet50`` (Keras' ResNet50, no pretrained weights exist here, for GPU).
    ``score_threshold``/``nms_iou``/``max_detections`` are the served graph's post-processing
    (the client's own 0.75 filter comes after it). ``rpn_*_train`` / ``rpn_*_test`` bound the
    proposals kept before and after the RPN's NMS.
    """

    backbone: str = "small"
    backbone_width: int = 16
    input_size: int = DETECTOR_INPUT_SIZE
    num_classes: int = len(CATEGORIES)
    fpn_channels: int = 64
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 64
    rpn_pre_nms_train: int = 1000
    rpn_post_nms_train: int = 128
    rpn_pre_nms_test: int = 500
    rpn_post_nms_test: int = 50
    rpn_nms_iou: float = 0.7
    roi_size: int = 7
    mask_roi_size: int = 14
    head_dim: int = 256
    mask_convs: int = 2
    mask_channels: int = 64
    mask_size: int = MASK_SIZE
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = DETECTOR_MAX_DETECTIONS

    #: FPN levels P3..P6: strides of the anchor levels; ROIAlign pools from P3..P5.
    strides: tuple[int, ...] = (8, 16, 32, 64)

    def __post_init__(self) -> None:
        if self.backbone not in ("small", "resnet50"):
            raise ConfigError(f"unknown detector backbone {self.backbone!r}; expected 'small' or 'resnet50'")
        if self.input_size % self.strides[-1]:
            raise ConfigError(f"input_size {self.input_size} must be a multiple of {self.strides[-1]}")
        if len(self.anchor_sizes) != len(self.strides):
            raise ConfigError(f"need one anchor size per FPN level ({len(self.strides)}), got {self.anchor_sizes}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 < self.nms_iou <= 1.0 or not 0.0 < self.rpn_nms_iou <= 1.0:
            raise ConfigError("NMS IoU thresholds must be in (0, 1]")
        if self.mask_size != 2 * self.mask_roi_size:
            raise ConfigError(f"mask_size ({self.mask_size}) must be 2 × mask_roi_size ({self.mask_roi_size})")
        if self.rpn_post_nms_test * self.num_classes < self.max_detections:
            raise ConfigError("rpn_post_nms_test × num_classes must be ≥ max_detections")
        if self.rpn_pre_nms_test < self.rpn_post_nms_test or self.rpn_pre_nms_train < self.rpn_post_nms_train:
            raise ConfigError("rpn pre-NMS counts must be ≥ the post-NMS counts")

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_ratios)

    @classmethod
    def small(cls) -> DetectorConfig:
        return cls()

    @classmethod
    def large(cls) -> DetectorConfig:
        """ResNet50-FPN with the usual Mask R-CNN head widths (GPU)."""
        return cls(
            backbone="resnet50",
            fpn_channels=256,
            rpn_channels=256,
            head_dim=1024,
            mask_convs=4,
            mask_channels=256,
            rpn_pre_nms_train=2000,
            rpn_post_nms_train=512,
            rpn_pre_nms_test=1000,
            rpn_post_nms_test=100,
        )

    @classmethod
    def for_size(cls, size: str) -> DetectorConfig:
        if size not in SIZES:
            raise ConfigError(f"unknown detector size {size!r}; expected one of {', '.join(SIZES)}")
        return cls.small() if size == "small" else cls.large()


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Training schedule. ``max_minutes`` bounds the wall time (training stops early, keeping
    the weights it has); ``steps`` is the planned length the learning-rate schedule spans."""

    model: DetectorConfig = field(default_factory=DetectorConfig)
    batch_size: int = 4
    steps: int = 1500
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    clipnorm: float = 5.0
    max_minutes: float = 28.0
    hflip: float = 0.5
    max_instances: int = 8
    rpn_batch: int = 256
    roi_positive_iou: float = 0.5
    mask_rois_per_image: int = 8
    gt_mask_size: int = 56
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be ≥ 1")
        if self.learning_rate <= 0 or self.max_minutes <= 0:
            raise ConfigError("learning_rate and max_minutes must be > 0")
        if not 0.0 <= self.hflip <= 1.0:
            raise ConfigError(f"hflip is a probability, got {self.hflip}")

    @classmethod
    def for_size(cls, size: str) -> DetectorTrainConfig:
        if size == "large":
            return cls(model=DetectorConfig.large(), batch_size=8, steps=6000, learning_rate=1e-3, max_minutes=120.0)
        return cls(model=DetectorConfig.for_size(size))


def config_to_dict(cfg: DetectorConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> DetectorConfig:
    from dataclasses import fields

    names = {f.name for f in fields(DetectorConfig)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown DetectorConfig fields: {', '.join(sorted(unknown))}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return DetectorConfig(**kw)


# --------------------------------------------------------------------------------------------
# the Keras parts
# --------------------------------------------------------------------------------------------
def _keras():
    from lookserve.training.common import keras_module

    return keras_module()


def _build_backbone_fpn(cfg: DetectorConfig):
    """float [B, S, S, 3] in [-1, 1] → [P3, P4, P5, P6]."""
    keras = _keras()
    from keras import layers

    s = cfg.input_size
    inp = keras.Input((s, s, 3), dtype="float32", name="bb_input")
    if cfg.backbone == "small":
        w = cfg.backbone_width

        def block(x, f, name, sep=True):
            x = layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False, name=f"{name}_down")(x)
            x = layers.BatchNormalization(name=f"{name}_bn1")(x)
            x = layers.ReLU(name=f"{name}_r1")(x)
            if sep:
                x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
                x = layers.BatchNormalization(name=f"{name}_bn2")(x)
                x = layers.ReLU(name=f"{name}_r2")(x)
            return x

        x = block(inp, w, "s1", sep=False)  # /2
        x = block(x, 2 * w, "s2")  # /4
        c3 = block(x, 4 * w, "s3")  # /8
        c4 = block(c3, 6 * w, "s4")  # /16
        c5 = block(c4, 8 * w, "s5")  # /32
    else:
        resnet = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=inp)
        c3 = resnet.get_layer("conv3_block4_out").output
        c4 = resnet.get_layer("conv4_block6_out").output
        c5 = resnet.get_layer("conv5_block3_out").output
    f = cfg.fpn_channels
    l5 = layers.Conv2D(f, 1, name="fpn_l5")(c5)
    l4 = layers.Add(name="fpn_add4")([layers.Conv2D(f, 1, name="fpn_l4")(c4), layers.UpSampling2D(2, name="fpn_up5")(l5)])
    l3 = layers.Add(name="fpn_add3")([layers.Conv2D(f, 1, name="fpn_l3")(c3), layers.UpSampling2D(2, name="fpn_up4")(l4)])
    p3 = layers.Conv2D(f, 3, padding="same", name="fpn_p3")(l3)
    p4 = layers.Conv2D(f, 3, padding="same", name="fpn_p4")(l4)
    p5 = layers.Conv2D(f, 3, padding="same", name="fpn_p5")(l5)
    p6 = layers.MaxPooling2D(1, strides=2, name="fpn_p6")(p5)
    return keras.Model(inp, [p3, p4, p5, p6], name="backbone_fpn")


def _build_rpn_head(cfg: DetectorConfig):
    """One head shared by the levels: [B, h, w, C] → logits [B, h, w, A], deltas [B, h, w, 4A]."""
    keras = _keras()
    from keras import initializers, layers

    inp = keras.Input((None, None, cfg.fpn_channels), name="rpn_input")
    x = layers.Conv2D(cfg.rpn_channels, 3, padding="same", activation="relu", name="rpn_conv")(inp)
    logits = layers.Conv2D(
        cfg.num_anchors, 1, name="rpn_logits", kernel_initializer=initializers.RandomNormal(stddev=0.01)
    )(x)
    deltas = layers.Conv2D(
        4 * cfg.num_anchors, 1, name="rpn_deltas", kernel_initializer=initializers.RandomNormal(stddev=0.001)
    )(x)
    return keras.Model(inp, [logits, deltas], name="rpn_head")


def _build_box_head(cfg: DetectorConfig):
    """[R, 7, 7, C] → class logits [R, 1 + classes], class-agnostic deltas [R, 4]."""
    keras = _keras()
    from keras import initializers, layers

    n = cfg.roi_size
    inp = keras.Input((n, n, cfg.fpn_channels), name="box_input")
    x = layers.Flatten(name="box_flat")(inp)
    x = layers.Dense(cfg.head_dim, activation="relu", name="box_fc1")(x)
    x = layers.Dense(cfg.head_dim, activation="relu", name="box_fc2")(x)
    logits = layers.Dense(
        cfg.num_classes + 1, name="box_cls", kernel_initializer=initializers.RandomNormal(stddev=0.01)
    )(x)
    deltas = layers.Dense(4, name="box_deltas", kernel_initializer=initializers.RandomNormal(stddev=0.001))(x)
    return keras.Model(inp, [logits, deltas], name="box_head")


def _build_mask_head(cfg: DetectorConfig):
    """[R, 14, 14, C] → mask logits [R, 28, 28, classes]."""
    keras = _keras()
    from keras import layers

    n = cfg.mask_roi_size
    inp = keras.Input((n, n, cfg.fpn_channels), name="mask_input")
    x = inp
    for i in range(cfg.mask_convs):
        x = layers.Conv2D(cfg.mask_channels, 3, padding="same", activation="relu", name=f"mask_conv{i}")(x)
    x = layers.Conv2DTranspose(cfg.mask_channels, 2, strides=2, activation="relu", name="mask_up")(x)
    logits = layers.Conv2D(cfg.num_classes, 1, name="mask_logits")(x)
    return keras.Model(inp, logits, name="mask_head")


class Detector:
    """A Mask R-CNN: the four Keras sub-models plus the graph glue around them.

    ``keras_model`` groups the trainable parts (for saving); :attr:`serving_fn` is the
    ``tf.function`` with the served signature; calling the detector on a UINT8 batch returns
    the dict of named outputs.
    """

    def __init__(self, cfg: DetectorConfig):
        keras = _keras()
        import tensorflow as tf

        self.config = cfg
        self.backbone_fpn = _build_backbone_fpn(cfg)
        self.rpn_head = _build_rpn_head(cfg)
        self.box_head = _build_box_head(cfg)
        self.mask_head = _build_mask_head(cfg)
        # one Keras model that owns every weight, for save_weights/load_weights
        s = cfg.input_size
        img = keras.Input((s, s, 3), dtype="float32", name="image")
        feats = self.backbone_fpn(img)
        rpn_out = [self.rpn_head(p) for p in feats]
        roi = keras.Input((cfg.roi_size, cfg.roi_size, cfg.fpn_channels), name="roi")
        mroi = keras.Input((cfg.mask_roi_size, cfg.mask_roi_size, cfg.fpn_channels), name="mask_roi")
        self.keras_model = keras.Model(
            [img, roi, mroi],
            [*feats, *[t for pair in rpn_out for t in pair], *self.box_head(roi), self.mask_head(mroi)],
            name="mask_rcnn",
        )
        anchors = ops.generate_anchors(s, cfg.strides, cfg.anchor_sizes, cfg.anchor_ratios)
        # a numpy array: each traced graph embeds it as its own constant (a captured eager
        # tensor would become an extra graph input in the ONNX export)
        self.anchors_np = anchors
        self._serving_fn = None

    # ---- graph pieces --------------------------------------------------------------------
    def features(self, images_float, training: bool = False):
        return self.backbone_fpn(images_float, training=training)

    def rpn(self, feats, training: bool = False):
        """→ objectness logits [B, A], deltas [B, A, 4] in anchor order."""
        import tensorflow as tf

        logits, deltas = [], []
        for p in feats:
            lg, dl = self.rpn_head(p, training=training)
            b = tf.shape(lg)[0]
            logits.append(tf.reshape(lg, [b, -1]))
            deltas.append(tf.reshape(dl, [b, -1, 4]))
        return tf.concat(logits, axis=1), tf.concat(deltas, axis=1)

    def proposals(self, logits, deltas, pre_nms: int, post_nms: int):
        """Top-``pre_nms`` anchors per image → decoded, clipped → NMS → best ``post_nms``.

        Returns boxes [B, post_nms, 4] and a validity mask [B, post_nms] (float 0/1).
        """
        import tensorflow as tf

        cfg = self.config
        s = float(cfg.input_size)
        n_anchors = self.anchors_np.shape[0]
        k = min(pre_nms, n_anchors)
        b = tf.shape(logits)[0]
        top_logits, top_idx = tf.math.top_k(logits, k=k, sorted=True)
        flat_idx = top_idx + tf.range(b)[:, None] * n_anchors
        d = tf.gather(tf.reshape(deltas, [-1, 4]), flat_idx)
        a = tf.gather(tf.constant(self.anchors_np), top_idx)
        boxes = tf.clip_by_value(ops.tf_decode_boxes(d, a, ops.RPN_WEIGHTS), 0.0, s)
        scores = tf.sigmoid(top_logits)
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        scores = tf.where((w >= 1.0) & (h >= 1.0), scores, tf.zeros_like(scores))
        key = tf.tile(tf.range(b)[:, None], [1, k])
        sel_boxes, sel_scores, valid = _batched_nms_topn(boxes, scores, key, post_nms, cfg.rpn_nms_iou, 0.0, s)
        return sel_boxes, valid

    def roi_align(self, feats, boxes, box_image, out_size: int):
        """ROIAlign (2×2 samples per bin) of ``boxes`` [R, 4] from the FPN level of their size."""
        import tensorflow as tf

        cfg = self.config
        levels = feats[:3]  # P3, P4, P5
        w = tf.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
        h = tf.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
        lvl = tf.floor(4.0 + tf.math.log(tf.sqrt(w * h) / 224.0) / math.log(2.0))
        lvl = tf.clip_by_value(lvl, 3.0, 5.0) - 3.0
        n2 = 2 * out_size
        # bin centres of a 2n grid, as crop_and_resize samples end points inclusively
        x1 = boxes[:, 0] + 0.5 * w / n2
        x2 = boxes[:, 2] - 0.5 * w / n2
        y1 = boxes[:, 1] + 0.5 * h / n2
        y2 = boxes[:, 3] - 0.5 * h / n2
        out = None
        for i, feat in enumerate(levels):
            stride = float(cfg.strides[i])
            side = float(cfg.input_size // cfg.strides[i])
            norm = tf.stack(
                [
                    (y1 / stride - 0.5) / (side - 1.0),
                    (x1 / stride - 0.5) / (side - 1.0),
                    (y2 / stride - 0.5) / (side - 1.0),
                    (x2 / stride - 0.5) / (side - 1.0),
                ],
                axis=1,
            )
            crops = tf.image.crop_and_resize(feat, norm, box_image, [n2, n2])
            crops = tf.nn.avg_pool2d(crops, 2, 2, "VALID")
            sel = tf.cast(tf.equal(lvl, float(i)), crops.dtype)[:, None, None, None]
            out = crops * sel if out is None else out + crops * sel
        return out

    # ---- inference -------------------------------------------------------------------------
    def infer(self, images):
        """UINT8 [B, S, S, 3] → the dict of served outputs."""
        import tensorflow as tf

        cfg = self.config
        s = float(cfg.input_size)
        c = cfg.num_classes
        x = tf.cast(images, tf.float32) * (1.0 / 127.5) - 1.0
        feats = self.features(x, training=False)
        logits, deltas = self.rpn(feats, training=False)
        props, pvalid = self.proposals(logits, deltas, cfg.rpn_pre_nms_test, cfg.rpn_post_nms_test)
        b = tf.shape(images)[0]
        p = cfg.rpn_post_nms_test
        flat_props = tf.reshape(props, [-1, 4])
        box_image = tf.reshape(tf.tile(tf.range(b)[:, None], [1, p]), [-1])
        rois = self.roi_align(feats, flat_props, box_image, cfg.roi_size)
        cls_logits, box_deltas = self.box_head(rois, training=False)
        probs = tf.nn.softmax(cls_logits, axis=-1)[:, 1:] * tf.reshape(pvalid, [-1, 1])  # [B*P, C]
        boxes = tf.clip_by_value(ops.tf_decode_boxes(box_deltas, flat_props, ops.RCNN_WEIGHTS), 0.0, s)
        # candidates: every (proposal, class) pair of an image, [B, P*C]
        cand_boxes = tf.reshape(tf.tile(boxes[:, None, :], [1, c, 1]), [b, p * c, 4])
        cand_scores = tf.reshape(probs, [b, p * c])
        cand_class = tf.tile(tf.range(c)[None, :], [p, 1])  # [P, C]
        cand_class = tf.tile(tf.reshape(cand_class, [1, p * c]), [b, 1])
        key = tf.range(b)[:, None] * c + cand_class
        det_boxes, det_scores, valid, det_idx = _batched_nms_topn(
            cand_boxes, cand_scores, key, cfg.max_detections, cfg.nms_iou, cfg.score_threshold, s, return_index=True
        )
        det_class = tf.gather(tf.reshape(cand_class, [-1]), tf.reshape(det_idx, [-1]))
        det_class = tf.reshape(det_class, [b, cfg.max_detections]) * tf.cast(valid, tf.int32)
        # masks of the detections
        n = cfg.max_detections
        flat_det = tf.reshape(det_boxes, [-1, 4])
        det_image = tf.reshape(tf.tile(tf.range(b)[:, None], [1, n]), [-1])
        mrois = self.roi_align(feats, flat_det, det_image, cfg.mask_roi_size)
        mlogits = self.mask_head(mrois, training=False)  # [B*N, 28, 28, C]
        onehot = tf.one_hot(tf.reshape(det_class, [-1]), c, dtype=mlogits.dtype)
        mlogit = tf.reduce_sum(mlogits * onehot[:, None, None, :], axis=-1)
        masks = tf.sigmoid(mlogit) * tf.reshape(valid, [-1, 1, 1])
        masks = tf.reshape(masks, [b, n, cfg.mask_size, cfg.mask_size])
        return {
            "boxes": tf.identity(det_boxes * valid[..., None], name="boxes"),
            "scores": tf.identity(det_scores * valid, name="scores"),
            "classes": tf.identity(det_class, name="classes"),
            "masks": tf.identity(masks, name="masks"),
            "num_detections": tf.identity(
                tf.reduce_sum(tf.cast(valid, tf.int32), axis=1, keepdims=True), name="num_detections"
            ),
        }

    @property
    def serving_fn(self):
        """``tf.function`` UINT8 images [None, S, S, 3] named ``images`` → outputs dict."""
        if self._serving_fn is None:
            import tensorflow as tf

            s = self.config.input_size

            @tf.function(input_signature=[tf.TensorSpec([None, s, s, 3], tf.uint8, name="images")])
            def serve(images):
                return self.infer(images)

            self._serving_fn = serve
        return self._serving_fn

    def __call__(self, images) -> dict[str, Any]:
        """Run the served graph on a UINT8 batch (numpy or tensor); returns numpy arrays."""
        arr = np.asarray(images)
        s = self.config.input_size
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (s, s, 3):
            raise InvalidInputError(f"detector expects UINT8 [B, {s}, {s}, 3], got {arr.dtype} {arr.shape}")
        out = self.serving_fn(arr)
        return {k: v.numpy() for k, v in out.items()}

    # ---- weights -----------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        from lookserve.training.common import atomic_write_json, save_weights

        out = save_weights(self.keras_model, config_to_dict(self.config), out_dir, KIND)
        if extra is not None:
            atomic_write_json(Path(out) / "training.json", extra)
        return out


def _batched_nms_topn(boxes, scores, key, n: int, iou: float, score_threshold: float, size: float, return_index=False):
    """Per-(image, key) NMS then the best ``n`` per image.

    ``boxes`` [B, K, 4], ``scores`` [B, K], ``key`` [B, K] int (boxes with different keys never
    suppress each other; the key must already be unique per image). Returns boxes [B, n, 4],
    scores [B, n], valid [B, n] (float 0/1) and, with ``return_index``, the index into K.
    """
    import tensorflow as tf

    b = tf.shape(boxes)[0]
    k = boxes.shape[1]
    flat = tf.reshape(boxes, [-1, 4])
    flat_scores = tf.reshape(scores, [-1])
    offset = tf.cast(tf.reshape(key, [-1]), tf.float32) * (2.0 * size)
    shifted = flat + offset[:, None]
    total = tf.shape(flat_scores)[0]
    sel = tf.image.non_max_suppression(
        ops.tf_xyxy_to_yxyx(shifted), flat_scores, max_output_size=total, iou_threshold=iou,
        score_threshold=score_threshold,
    )
    keep = tf.scatter_nd(sel[:, None], tf.ones_like(sel, dtype=tf.float32), shape=[total])
    kept_scores = tf.reshape(keep * flat_scores - (1.0 - keep), [b, k])  # suppressed → -1
    top_scores, top_idx = tf.math.top_k(kept_scores, k=n, sorted=True)
    valid = tf.cast(top_scores > -0.5, tf.float32)
    if score_threshold > 0:
        valid = valid * tf.cast(top_scores >= score_threshold, tf.float32)
    flat_idx = top_idx + tf.range(b)[:, None] * k
    out_boxes = tf.gather(flat, flat_idx)
    out_scores = tf.maximum(top_scores, 0.0)
    if return_index:
        return out_boxes, out_scores, valid, top_idx
    return out_boxes, out_scores, valid


def build_model(config: DetectorConfig | None = None) -> Detector:
    """A fresh (untrained) detector; weights initialised by the current Keras seed."""
    return Detector(config or DetectorConfig())


def load_model(weights_dir: str | os.PathLike) -> Detector:
    """Load a detector written by :func:`train_detector` (``config.json`` + ``model.weights.h5``)."""
    from lookserve.training.common import WEIGHTS_FILE, read_config

    cfg = config_from_dict(read_config(weights_dir, KIND))
    det = Detector(cfg)
    try:
        det.keras_model.load_weights(str(Path(weights_dir) / WEIGHTS_FILE))
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot load detector weights from {weights_dir}: {e}") from e
    return det
