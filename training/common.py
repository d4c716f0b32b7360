"""Shared pieces of the lookserve models: image I/O, augmentations, backbones, saving.

Image I/O is the served pixel path: :func:`read_rgb` is :func:`lookserve.images.decode_image`
(with a ``DataError``) and ``resize_square`` is :func:`lookserve.images.resize_square`, so
training sees the pixels a client sends (crops: :func:`lookserve.images.crop_box`).

Everything here that touches Keras imports it lazily (inside functions), so importing this
module is cheap. Models are written with Keras 3 layers and ``keras.ops`` only, so they run on
the TensorFlow backend (which tf2onnx exports) and could train on JAX.

The served models take UINT8 ``[B, 224, 224, 3]``. Inside the graph the batch is cast to float,
optionally average-pooled by an integer factor (224 → 112 for the small models; an exact 2×2
box filter, which converts to ONNX as ``AveragePool`` and is reproduced bit-for-bit in numpy by
:func:`pool_uint8`) and scaled to [-1, 1]. Training feeds the backbone the pooled images directly
(cached in memory as uint8), which is why the front of the graph is split from the backbone.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lookserve import fsutil
from lookserve.errors import ConfigError, DataError, InvalidInputError
from lookserve.fsutil import (
    atomic_write_text as atomic_write_text,  # re-exported for training's writers
)
from lookserve.images import decode_image
from lookserve.images import resize_square as resize_square  # re-exported: the served resize

log = logging.getLogger(__name__)

#: the side of the square UINT8 image every served model takes.
SERVED_SIZE = 224
#: backbones known to :func:`build_backbone`.
BACKBONES = ("small", "resnet50")


# --------------------------------------------------------------------------------------------
# image I/O: the served pixel path (lookserve.images), never a second decoder or resizer
# --------------------------------------------------------------------------------------------
def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3] exactly as a client does
    (:func:`lookserve.images.decode_image`: limits, EXIF orientation, any mode → RGB,
    transparency on white); raises DataError naming the file."""
    try:
        return decode_image(path)
    except InvalidInputError as e:
        raise DataError(f"cannot read training image: {e}") from e


def pool_uint8(batch: np.ndarray, factor: int) -> np.ndarray:
    """The graph's ``AveragePooling2D(factor)`` on uint8 images, in numpy, rounded back to uint8."""
    if factor == 1:
        return batch
    b, h, w, c = batch.shape
    if h % factor or w % factor:
        raise InvalidInputError(f"image side {h}x{w} is not divisible by the pooling factor {factor}")
    x = batch.reshape(b, h // factor, factor, w // factor, factor, c).astype(np.float32).mean(axis=(2, 4))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def check_uint8_batch(images: np.ndarray, size: int = SERVED_SIZE) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise InvalidInputError(
            f"expected a UINT8 batch [B, {size}, {size}, 3], got {images.dtype} {images.shape}"
        )


# --------------------------------------------------------------------------------------------
# augmentations (the original's: pixel dropout, Gaussian blur, flips, histogram equalisation)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """Per-image augmentation, as the original's imgaug pipeline (applied to uint8 RGB).

    ``dropout``: fraction of pixels set to 0 (imgaug ``Dropout(p=0.01)``); ``blur_sigma``: the
    upper bound of a uniform Gaussian-blur sigma (``GaussianBlur(sigma=(0, 3))`` at 224 px, so
    1.5 at the 112 px the small models see); ``hflip``/``vflip``: flip probabilities (0.8 in the
    original; lower here because short CPU runs learn invariances slower); ``equalize``: the
    probability of blending the image with its per-channel histogram-equalised self by a
    uniform alpha (``Alpha((0, 1), AllChannelsHistogramEqualization())``).
    """

    dropout: float = 0.01
    blur_sigma: float = 1.5
    hflip: float = 0.5
    vflip: float = 0.5
    equalize: float = 0.5
    #: probability of a random permutation of the RGB channels (not in the original; used by the
    #: view classifier, where a shoe's colour says nothing about its view or type)
    channel_shuffle: float = 0.0

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(dropout=0.0, blur_sigma=0.0, hflip=0.0, vflip=0.0, equalize=0.0)


def augment(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Augment one uint8 RGB image with ``cfg``; deterministic for a given ``rng`` state."""

    out = img
    if cfg.hflip and rng.random() < cfg.hflip:
        out = out[:, ::-1]
    if cfg.vflip and rng.random() < cfg.vflip:
        out = out[::-1]
    if cfg.channel_shuffle and rng.random() < cfg.channel_shuffle:
        out = out[..., rng.permutation(3)]
    out = np.ascontiguousarray(out)
    if cfg.equalize and rng.random() < cfg.equalize:
        eq = np.stack([cv2.equalizeHist(out[..., c]) for c in range(3)], axis=-1)
        alpha = rng.random()
        out = np.clip(alpha * eq.astype(np.float32) + (1 - alpha) * out, 0, 255).astype(np.uint8)
    if cfg.blur_sigma > 0:
        sigma = rng.uniform(0.0, cfg.blur_sigma)
        if sigma > 0.1:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)
    if cfg.dropout > 0:
        mask = rng.random(out.shape[:2]) < cfg.dropout
        out = out.copy()
        out[mask] = 0
    return out


def augment_batch(batch: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    return np.stack([augment(im, cfg, rng) for im in batch]) if len(batch) else batch


# --------------------------------------------------------------------------------------------
# Keras pieces
# --------------------------------------------------------------------------------------------
def keras_module():
    """Import Keras on the TensorFlow backend (default) with TensorFlow's logs quieted."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def set_seed(seed: int) -> None:
    """Seed Python, numpy and the backend; on TensorFlow also ask for deterministic ops."""
    keras = keras_module()
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.experimental.enable_op_determinism()
        except Exception as e:  # noqa: BLE001 - older TF lacks it; determinism is best effort
            log.debug("op determinism unavailable: %s", e)


def pooling_factor(internal_size: int) -> int:
    if internal_size <= 0 or SERVED_SIZE % internal_size:
        raise ConfigError(f"internal_size {internal_size} must divide {SERVED_SIZE} (224, 112, 56, 32, ...)")
    return SERVED_SIZE // internal_size


def build_backbone(
    name: str, internal_size: int, width: int = 32, spatial_pool: int = 0, prefix: str = "bb", stem: int = 0
):
    """A feature extractor: float [B, s, s, 3] in [0, 255] → float [B, F].

    ``small``: four conv-BN-ReLU stages (``width``·{1, 2, 4, 8} filters, stride 2 each, a
    separable second conv) — ~0.3 M parameters at width 32. ``resnet50``: Keras' ResNet50
    without pretrained weights (none exist here), for GPU. ``spatial_pool`` > 0 keeps a coarse
    ``p×p`` grid of the last feature map instead of a global average (layout-sensitive).
    ``stem`` > 0 (``small`` only) puts a learned stride-2 ``stem``-filter conv in front of the
    four stages: the network sees the full ``internal_size`` (fine details such as laces survive)
    for about the cost of the stages at half that side.
    """
    keras = keras_module()
    from keras import layers

    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    inp = keras.Input((internal_size, internal_size, 3), dtype="float32", name=f"{prefix}_input")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{prefix}_scale")(inp)
    if stem < 0 or (stem and name != "small"):
        raise ConfigError(f"stem must be 0, or > 0 with the small backbone; got stem={stem} with {name!r}")
    if stem:
        x = layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, name=f"{prefix}_stem")(x)
        x = layers.BatchNormalization(name=f"{prefix}_stem_bn")(x)
        x = layers.ReLU(name=f"{prefix}_stem_r")(x)
    if name == "small":
        for i, mult in enumerate((1, 2, 4, 8)):
            f = width * mult
            x = layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False, name=f"{prefix}_c{i}a")(x)
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}a")(x)
            x = layers.ReLU(name=f"{prefix}_r{i}a")(x)
            x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"{prefix}_c{i}b")(x)
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}b")(x)
            x = layers.ReLU(name=f"{prefix}_r{i}b")(x)
    else:
        resnet = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=(internal_size, internal_size, 3)
        )
        x = resnet(x)
    if spatial_pool > 0:
        size = x.shape[1]
        if size < spatial_pool:
            raise ConfigError(f"feature map side {size} is smaller than spatial_pool {spatial_pool}")
        # a p×p grid of averages (the last row/column is dropped when the side is not divisible)
        x = layers.AveragePooling2D(size // spatial_pool, name=f"{prefix}_grid")(x)
        x = layers.Flatten(name=f"{prefix}_flat")(x)
    else:
        x = layers.GlobalAveragePooling2D(name=f"{prefix}_gap")(x)
    return keras.Model(inp, x, name=f"{prefix}_{name}")


def served_front(internal_size: int, input_name: str):
    """UINT8 [B, 224, 224, 3] input → float [B, s, s, 3] in [0, 255] (cast + exact box pooling)."""
    keras = keras_module()
    from keras import layers

    inp = keras.Input((SERVED_SIZE, SERVED_SIZE, 3), dtype="uint8", name=input_name)
    x = keras.ops.cast(inp, "float32")
    factor = pooling_factor(internal_size)
    if factor > 1:
        x = layers.AveragePooling2D(factor, name="downsample")(x)
    return inp, x


# --------------------------------------------------------------------------------------------
# saving: <dir>/model.weights.h5 + <dir>/config.json, written atomically
# --------------------------------------------------------------------------------------------
WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"


def atomic_write_json(path: Path, obj: Any) -> None:
    """Training's JSON outputs (configs, logs, reports): sorted keys, written atomically."""
    fsutil.atomic_write_json(path, obj, sort_keys=True)


def save_weights(model, config_dict: dict[str, Any], out_dir: str | os.PathLike, kind: str) -> Path:
    """Write ``model.weights.h5`` and ``config.json`` (with ``kind``) into ``out_dir`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with fsutil.atomic_output(out / WEIGHTS_FILE) as tmp:
        model.save_weights(tmp, overwrite=True)
    atomic_write_json(out / CONFIG_FILE, {"kind": kind, "config": config_dict})
    return out


def read_config(weights_dir: str | os.PathLike, kind: str) -> dict[str, Any]:
    d = Path(weights_dir)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise ConfigError(f"{d} is not a {kind} weights directory: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        doc = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path} is not valid JSON: {e}") from e
    if doc.get("kind") != kind:
        raise ConfigError(f"{cfg_path} holds a {doc.get('kind')!r} model, not a {kind!r}")
    return doc["config"]


def warm_start(model, config, init_config, init_weights: str | os.PathLike, arch: tuple[str, ...]) -> None:
    """Load ``init_weights``' weights into ``model`` (built from ``config``), refusing when its
    config (``init_config``) differs in any of the architecture fields ``arch``."""
    diff = [f"{a}: {getattr(init_config, a)} vs {getattr(config, a)}" for a in arch if getattr(init_config, a) != getattr(config, a)]
    if diff:
        raise ConfigError(f"init weights {init_weights} have another architecture ({'; '.join(diff)})")
    model.load_weights(str(Path(init_weights) / WEIGHTS_FILE))
    log.info("warm start from %s", init_weights)


def dataclass_from_dict(cls, data: dict[str, Any]):
    """Build a frozen dataclass from a dict, refusing unknown keys by name."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    kwargs = dict(data)
    for f in fields(cls):
        if f.name in kwargs and f.name == "augment" and isinstance(kwargs[f.name], dict):
            kwargs[f.name] = AugmentConfig(**kwargs[f.name])
    return cls(**kwargs)


def dataclass_to_dict(obj) -> dict[str, Any]:
    return asdict(obj)
