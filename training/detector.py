"""The garment segmenter: a Mask R-CNN (backbone + FPN, RPN, ROIAlign, box and mask heads).

Served graph (what :func:`load_model` returns and the export converts with tf2onnx)::

    images UINT8 [B, 512, 512, 3] (letterboxed RGB)
      → float, scaled to [-1, 1]                      (inside the graph)
      → backbone (C3, C4, C5) → FPN (P3..P6, strides 8..64)
      → RPN (5 aspect ratios per position and level) → top-k, NMS → proposals [B, P]
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

import contextlib
import io
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookserve.contracts import DETECTOR_INPUT_SIZE, DETECTOR_MAX_DETECTIONS, MASK_SIZE
from lookserve.errors import ConfigError, DataError, InvalidInputError
from lookserve.fsutil import atomic_output
from lookserve.images import Letterbox, paste_mask
from lookserve.taxonomy import CATEGORIES
from lookserve.training import detector_ops as ops
from lookserve.training.common import (
    WEIGHTS_FILE,
    atomic_write_json,
    keras_module,
    read_config,
    save_weights,
    set_seed,
)
from lookserve.training.detector_data import (
    category_map,
    letterbox_sample,
    load_coco,
    load_samples,
    make_batch,
)

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

    ``backbone``: ``small`` (a 5-stage strided conv net with GroupNorm — batch statistics of
    2–4 images make BatchNorm's train/test gap large when training from scratch — for CPU) or ``resnet50`` (Keras' ResNet50, no pretrained weights exist here, for GPU).
    ``score_threshold``/``nms_iou``/``max_detections`` are the served graph's post-processing
    (the client's own 0.75 filter comes after it). ``rpn_*_train`` / ``rpn_*_test`` bound the
    proposals kept before and after the RPN's NMS.
    """

    backbone: str = "small"
    backbone_width: int = 16
    input_size: int = DETECTOR_INPUT_SIZE
    num_classes: int = len(CATEGORIES)
    fpn_channels: int = 64
    #: anchor side per level and aspect ratios h / w: street2shop's belts are ~10:1, eyewear,
    #: hats and footwear ~3:1, trousers 1:2 (measured on the generated street photos)
    anchor_sizes: tuple[float, ...] = (24.0, 48.0, 96.0, 192.0)
    anchor_ratios: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
    rpn_channels: int = 64
    rpn_pre_nms_train: int = 1000
    rpn_post_nms_train: int = 64
    rpn_pre_nms_test: int = 500
    rpn_post_nms_test: int = 80
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
    steps: int = 2000
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    clipnorm: float = 5.0
    max_minutes: float = 28.0
    hflip: float = 0.5
    max_instances: int = 12
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
    return asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> DetectorConfig:
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
            x = layers.GroupNormalization(groups=min(8, f), name=f"{name}_gn1")(x)
            x = layers.ReLU(name=f"{name}_r1")(x)
            if sep:
                x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
                x = layers.GroupNormalization(groups=min(8, f), name=f"{name}_gn2")(x)
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

    cfg = config_from_dict(read_config(weights_dir, KIND))
    det = Detector(cfg)
    try:
        det.keras_model.load_weights(str(Path(weights_dir) / WEIGHTS_FILE))
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot load detector weights from {weights_dir}: {e}") from e
    return det


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
LOSS_NAMES = ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "mask")


class DetectorTrainer:
    """Owns the optimizer and the compiled train step of one :class:`Detector`."""

    def __init__(self, det: Detector, tcfg: DetectorTrainConfig, seed: int):
        keras = _keras()

        self.det = det
        self.tcfg = tcfg
        self.seed = seed
        self.optimizer = keras.optimizers.AdamW(
            learning_rate=tcfg.learning_rate, weight_decay=tcfg.weight_decay, global_clipnorm=tcfg.clipnorm
        )
        self.variables = det.keras_model.trainable_variables
        self.optimizer.build(self.variables)
        self._step_fn = None

    def learning_rate(self, step: int, time_fraction: float = 0.0) -> float:
        """Linear warm-up, then a cosine decay to 2 % over the run's progress: the larger of the
        step fraction and ``time_fraction`` (the share of ``max_minutes`` used), so a run cut by
        its time budget still ends at a low learning rate. Runs that finish their steps inside the
        budget follow the step schedule alone, and so are deterministic."""
        t = self.tcfg
        if step < t.warmup_steps:
            return t.learning_rate * (0.1 + 0.9 * step / max(t.warmup_steps, 1))
        frac = (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1)
        frac = min(1.0, max(frac, time_fraction))
        return t.learning_rate * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def losses(self, images, rpn_labels, rpn_deltas, gt_boxes, gt_classes, gt_valid, gt_masks, step):
        import tensorflow as tf

        det, cfg, tcfg = self.det, self.det.config, self.tcfg
        x = tf.cast(images, tf.float32) * (1.0 / 127.5) - 1.0
        feats = det.features(x, training=True)
        logits, deltas = det.rpn(feats, training=True)
        # --- RPN: sampled anchors
        sampled = tf.cast(rpn_labels >= 0, tf.float32)
        pos = tf.cast(rpn_labels == 1, tf.float32)
        n_sampled = tf.maximum(tf.reduce_sum(sampled), 1.0)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=pos, logits=logits)
        rpn_cls = tf.reduce_sum(bce * sampled) / n_sampled
        rpn_box = tf.reduce_sum(_huber(deltas - rpn_deltas, 1.0 / 9.0) * pos[..., None]) / n_sampled
        # --- proposals (no gradient) + the ground truth boxes as extra RoIs
        props, pvalid = det.proposals(
            tf.stop_gradient(logits), tf.stop_gradient(deltas), cfg.rpn_pre_nms_train, cfg.rpn_post_nms_train
        )
        rois = tf.concat([props, gt_boxes], axis=1)  # [B, R, 4]
        rvalid = tf.concat([pvalid, gt_valid], axis=1)
        b = tf.shape(rois)[0]
        r = rois.shape[1]
        iou = ops.tf_iou(rois, gt_boxes)  # [B, R, G]
        iou = tf.where(gt_valid[:, None, :] > 0, iou, -tf.ones_like(iou))
        best = tf.reduce_max(iou, axis=-1)
        arg = tf.argmax(iou, axis=-1, output_type=tf.int32)
        matched_box = tf.gather(gt_boxes, arg, batch_dims=1)
        matched_cls = tf.gather(gt_classes, arg, batch_dims=1)
        is_pos = tf.cast(best >= tcfg.roi_positive_iou, tf.float32) * rvalid
        labels = tf.cast(is_pos, tf.int32) * matched_cls
        flat_rois = tf.reshape(rois, [-1, 4])
        roi_image = tf.reshape(tf.tile(tf.range(b)[:, None], [1, r]), [-1])
        roi_feats = det.roi_align(feats, flat_rois, roi_image, cfg.roi_size)
        cls_logits, box_deltas = det.box_head(roi_feats, training=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.reshape(labels, [-1]), logits=cls_logits)
        flat_valid = tf.reshape(rvalid, [-1])
        rcnn_cls = tf.reduce_sum(ce * flat_valid) / tf.maximum(tf.reduce_sum(flat_valid), 1.0)
        targets = ops.tf_encode_boxes(tf.reshape(matched_box, [-1, 4]), flat_rois, ops.RCNN_WEIGHTS)
        flat_pos = tf.reshape(is_pos, [-1])
        n_pos = tf.maximum(tf.reduce_sum(flat_pos), 1.0)
        rcnn_box = tf.reduce_sum(_huber(box_deltas - targets, 1.0) * flat_pos[:, None]) / n_pos
        # --- masks: a random subset of the positive RoIs of each image
        m = tcfg.mask_rois_per_image
        noise = tf.random.stateless_uniform(tf.shape(is_pos), seed=tf.stack([tf.cast(self.seed, tf.int64), step]))
        _, pick = tf.math.top_k(is_pos * (1.0 + noise), k=m)
        m_pos = tf.reshape(tf.gather(is_pos, pick, batch_dims=1), [-1])
        m_rois = tf.reshape(tf.gather(rois, pick, batch_dims=1), [-1, 4])
        m_gt = tf.gather(arg, pick, batch_dims=1)  # [B, M]
        m_cls = tf.reshape(tf.gather(matched_cls, pick, batch_dims=1), [-1])
        m_image = tf.reshape(tf.tile(tf.range(b)[:, None], [1, m]), [-1])
        m_feats = det.roi_align(feats, m_rois, m_image, cfg.mask_roi_size)
        m_logits = det.mask_head(m_feats, training=True)
        onehot = tf.one_hot(tf.maximum(m_cls - 1, 0), cfg.num_classes, dtype=m_logits.dtype)
        m_logit = tf.reduce_sum(m_logits * onehot[:, None, None, :], axis=-1)  # [B*M, 28, 28]
        g = gt_boxes.shape[1]
        gt_idx = tf.reshape(m_gt + tf.range(b)[:, None] * g, [-1])
        m_gt_box = tf.gather(tf.reshape(gt_boxes, [-1, 4]), gt_idx)
        target = _mask_targets(gt_masks, m_rois, m_gt_box, gt_idx, cfg.mask_size)
        mbce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=m_logit), axis=[1, 2])
        mask = tf.reduce_sum(mbce * m_pos) / tf.maximum(tf.reduce_sum(m_pos), 1.0)
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box, "mask": mask}

    @property
    def step_fn(self):
        if self._step_fn is None:
            import tensorflow as tf

            @tf.function(reduce_retracing=True)
            def step_fn(images, rpn_labels, rpn_deltas, gt_boxes, gt_classes, gt_valid, gt_masks, step):
                with tf.GradientTape() as tape:
                    parts = self.losses(images, rpn_labels, rpn_deltas, gt_boxes, gt_classes, gt_valid, gt_masks, step)
                    total = tf.add_n(list(parts.values()))
                grads = tape.gradient(total, self.variables)
                grads = [tf.zeros_like(v) if gr is None else gr for gr, v in zip(grads, self.variables, strict=True)]
                self.optimizer.apply(grads, self.variables)
                return total, parts

            self._step_fn = step_fn
        return self._step_fn

    def train_step(self, batch, step: int, time_fraction: float = 0.0) -> dict[str, float]:
        import tensorflow as tf

        lr = self.learning_rate(step, time_fraction)
        self.optimizer.learning_rate.assign(lr)
        total, parts = self.step_fn(*batch.as_tuple(), tf.constant(step, tf.int64))
        out = {k: float(v) for k, v in parts.items()}
        out["total"] = float(total)
        out["lr"] = lr
        return out


def _huber(x, delta: float):
    import tensorflow as tf

    a = tf.abs(x)
    return tf.where(a < delta, 0.5 * x * x / delta, a - 0.5 * delta)


def _mask_targets(gt_masks, rois, gt_box, gt_idx, size: int):
    """Binary targets [R, size, size] of ``rois`` from box-local gt masks [B, G, m, m]."""
    import tensorflow as tf

    m = gt_masks.shape[-1]
    flat = tf.reshape(gt_masks, [-1, m, m, 1])
    gw = tf.maximum(gt_box[:, 2] - gt_box[:, 0], 1e-3)
    gh = tf.maximum(gt_box[:, 3] - gt_box[:, 1], 1e-3)
    rw = rois[:, 2] - rois[:, 0]
    rh = rois[:, 3] - rois[:, 1]
    # sample the centres of a size×size grid over the RoI, in the gt mask's pixel frame
    x1 = rois[:, 0] + 0.5 * rw / size
    x2 = rois[:, 2] - 0.5 * rw / size
    y1 = rois[:, 1] + 0.5 * rh / size
    y2 = rois[:, 3] - 0.5 * rh / size

    def norm(v, origin, extent):
        return ((v - origin) / extent * m - 0.5) / (m - 1.0)

    boxes = tf.stack(
        [norm(y1, gt_box[:, 1], gh), norm(x1, gt_box[:, 0], gw), norm(y2, gt_box[:, 1], gh), norm(x2, gt_box[:, 0], gw)],
        axis=1,
    )
    crops = tf.image.crop_and_resize(flat, boxes, gt_idx, [size, size], extrapolation_value=0.0)
    return tf.cast(crops[..., 0] >= 0.5, tf.float32)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def train_detector(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    config: DetectorTrainConfig | None = None,
    *,
    size: str = "small",
    steps: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    limit: int | None = None,
    init_weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train a detector on ``data_dir``'s ``instances_train.json`` and save it into ``out_dir``.

    ``config`` wins over ``size``; ``steps``/``max_minutes`` override the config's.
    ``init_weights``: a weights directory of the same architecture to continue training from
    (a fresh optimizer and schedule; e.g. to extend a run that its time budget cut short). Returns a
    summary (steps run, wall seconds, first/last losses) that is also written to
    ``out_dir/training.json`` next to the weights, with a loss plot ``loss.png``.
    """

    tcfg = config or DetectorTrainConfig.for_size(size)
    if steps is not None:
        tcfg = replace(tcfg, steps=int(steps))
    if max_minutes is not None:
        tcfg = replace(tcfg, max_minutes=float(max_minutes))
    set_seed(seed)
    cfg = tcfg.model
    t_load = time.perf_counter()
    samples = load_samples(data_dir, "train", mask_size=tcfg.gt_mask_size, limit=limit)
    samples = [s for s in samples if len(s.boxes)] or samples
    log.info("detector: %d training images loaded in %.1fs", len(samples), time.perf_counter() - t_load)
    if init_weights is not None:
        det = load_model(init_weights)
        if det.config != cfg:
            raise ConfigError(f"{init_weights} holds a detector of another configuration than the one to train")
    else:
        det = build_model(cfg)
    trainer = DetectorTrainer(det, tcfg, seed)
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    deadline = t0 + 60.0 * tcfg.max_minutes
    order: list[int] = []
    bar = _progress(tcfg.steps, "train detector", progress)
    stopped_early = False
    try:
        for step in range(tcfg.steps):
            if time.perf_counter() > deadline:
                stopped_early = True
                log.warning("detector: time budget of %.1f min reached after %d steps", tcfg.max_minutes, step)
                break
            if len(order) < tcfg.batch_size:
                order += list(rng.permutation(len(samples)))
            idx, order = order[: tcfg.batch_size], order[tcfg.batch_size :]
            batch = make_batch(
                [samples[i] for i in idx], det.anchors_np, cfg.input_size, tcfg.max_instances,
                tcfg.gt_mask_size, rng, hflip=tcfg.hflip, rpn_batch=tcfg.rpn_batch,
            )
            elapsed = time.perf_counter() - t0
            # Only a run that its budget will cut follows the clock (so it still ends at a low
            # learning rate); a run on course to finish its steps in time follows the step
            # schedule alone, and so is deterministic however loaded the machine is.
            on_course = elapsed / max(step, 1) * tcfg.steps <= deadline - t0
            time_fraction = 0.0 if on_course or step < tcfg.warmup_steps else elapsed / (deadline - t0)
            losses = trainer.train_step(batch, step, time_fraction)
            if not math.isfinite(losses["total"]):
                raise DataError(f"detector training diverged at step {step}: losses {losses}")
            history.append(losses)
            bar.update(1)
            if step % tcfg.log_every == 0 or step == tcfg.steps - 1:
                bar.set_postfix(loss=f"{losses['total']:.3f}")
                log.info("detector step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    summary = {
        "seed": seed,
        "data_dir": str(data_dir),
        "init_weights": None if init_weights is None else str(init_weights),
        "train_images": len(samples),
        "steps_planned": tcfg.steps,
        "steps_run": len(history),
        "stopped_early": stopped_early,
        "wall_seconds": round(wall, 1),
        "train_config": _train_config_dict(tcfg),
        "first_loss": history[0] if history else None,
        "last_loss": _mean_last(history, 20),
        "history": [{k: round(v, 5) for k, v in h.items()} for h in history],
    }
    det.save(out_dir, extra=summary)
    if history:
        _plot_losses(history, Path(out_dir) / "loss.png")
    log.info("detector: %d steps in %.0fs, saved to %s", len(history), wall, out_dir)
    return {k: v for k, v in summary.items() if k != "history"}


def _train_config_dict(tcfg: DetectorTrainConfig) -> dict[str, Any]:
    return asdict(tcfg)


def _mean_last(history: list[dict[str, float]], n: int) -> dict[str, float] | None:
    if not history:
        return None
    tail = history[-n:]
    return {k: float(np.mean([h[k] for h in tail])) for k in tail[0]}


def _plot_losses(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(len(history))
    win = max(1, len(history) // 50)
    for k in (*LOSS_NAMES, "total"):
        v = np.array([h[k] for h in history])
        if win > 1:
            v = np.convolve(v, np.ones(win) / win, mode="valid")
        ax.plot(steps[: len(v)], v, label=k, lw=2 if k == "total" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean over {win})")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("detector training losses")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def predict_samples(det: Detector, samples, batch_size: int = 4, progress: bool = True) -> list[dict[str, Any]]:
    """COCO result dicts (original image pixels, RLE masks) of ``det`` on ``samples``: each
    photo decoded and letterboxed as a client does it (:func:`detector_data.letterbox_sample`),
    the outputs mapped back by :func:`coco_results` as a client maps them."""

    s = det.config.input_size
    results: list[dict[str, Any]] = []
    bar = _progress(len(samples), "detect", progress)
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            boxed = [letterbox_sample(x, s) for x in chunk]
            out = det(np.stack([square for square, _ in boxed]))
            for j, sample in enumerate(chunk):
                results += coco_results(out, j, boxed[j][1], sample.image_id)
            bar.update(len(chunk))
    finally:
        bar.close()
    return results


def coco_results(outputs: dict[str, np.ndarray], row: int, lb: Letterbox, image_id: int) -> list[dict[str, Any]]:
    """COCO result dicts of batch row ``row`` of the detector's outputs, in the original photo's
    pixels exactly as served: boxes by :meth:`lookserve.images.Letterbox.to_original` (clipped,
    as ``client.look.filter_detections``), masks pasted into the photo by
    :func:`lookserve.images.paste_mask` at those boxes (as ``crop_mask`` and the look renderer)."""
    from pycocotools import mask as mask_utils

    n = int(outputs["num_detections"][row, 0])
    boxes = lb.to_original(np.asarray(outputs["boxes"][row, :n]))
    results = []
    for d in range(n):
        full = paste_mask(outputs["masks"][row, d], boxes[d], lb.width, lb.height)
        rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = (float(v) for v in boxes[d])
        results.append(
            {
                "image_id": image_id,
                "category_id": int(outputs["classes"][row, d]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(outputs["scores"][row, d]),
                "segmentation": rle,
            }
        )
    return results


def evaluate_detector(
    data_dir: str | os.PathLike,
    weights_dir: str | os.PathLike,
    split: str = "test",
    *,
    batch_size: int = 4,
    limit: int | None = None,
    progress: bool = True,
    detector: Detector | None = None,
) -> dict[str, Any]:
    """pycocotools box and mask AP of a trained detector on the held-out street photos.

    Runs the served graph (same post-processing as in Triton) on ``split``'s letterboxed
    photos, maps boxes and masks back to the photos' pixels and scores them against
    ``annotations/instances_<split>.json``. Returns ``{"box": {...}, "mask": {...}, ...}``.
    """

    det = detector if detector is not None else load_model(weights_dir)
    coco = load_coco(data_dir, split)
    cmap = category_map(coco)
    samples = load_samples(data_dir, split, limit=limit)
    if limit is not None:
        coco.imgs = {k: v for k, v in coco.imgs.items() if k in {s.image_id for s in samples}}
    t0 = time.perf_counter()
    results = predict_samples(det, samples, batch_size=batch_size, progress=progress)
    secs = time.perf_counter() - t0
    img_ids = sorted(s.image_id for s in samples)
    box = _eval_on(coco, results, "bbox", cmap, img_ids)
    segm = _eval_on(coco, results, "segm", cmap, img_ids)
    return {
        "split": split,
        "images": len(samples),
        "instances": int(sum(len(s.boxes) for s in samples)),
        "detections": len(results),
        "seconds_per_image": round(secs / max(len(samples), 1), 4),
        "score_threshold": det.config.score_threshold,
        "box": box,
        "mask": segm,
        "goals": {"box_AP50": 0.90, "mask_AP50": 0.85},
        "goals_met": {"box_AP50": box["AP50"] >= 0.90, "mask_AP50": segm["AP50"] >= 0.85},
    }


def _eval_on(coco, results, iou_type, cmap, img_ids):
    from pycocotools.cocoeval import COCOeval

    inv = {v: k for k, v in cmap.items()}
    res = [dict(r, category_id=inv[r["category_id"]]) for r in results if r["category_id"] in inv]
    if iou_type == "bbox":
        res = [{k: v for k, v in r.items() if k != "segmentation"} for r in res]
    if not res:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "per_category_AP50": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(res)
        ev = COCOeval(coco, dt, iou_type)
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    per_cat = {}
    for k_i, cat_id in enumerate(ev.params.catIds):
        p = prec[0, :, k_i, 0, -1]
        p = p[p > -1]
        if p.size:
            per_cat[CATEGORIES[cmap[cat_id] - 1]] = round(float(p.mean()), 4)
    return {
        "AP": round(float(ev.stats[0]), 4),
        "AP50": round(float(ev.stats[1]), 4),
        "AP75": round(float(ev.stats[2]), 4),
        "per_category_AP50": per_cat,
    }
