"""Sample inputs for the parity gate: fresh random tensors and photo-like images.

Random UINT8 noise exercises every pixel value but is nothing like a photo (a detector finds
little in it, a classifier is unsure of everything); photo-like images exercise the paths real
traffic takes. The photo set comes from a directory of images when one is given (e.g. the
images of a data set made by ``lookserve data``), otherwise from structured synthetic scenes
drawn here (a lit background, garment-like shapes, texture, blur); all choices are seeded.

The detector's gate rests on :func:`street_photos`: street photos of a street2shop-format data
set (a given root, or a small seeded one generated on the fly with a seed the reference models
were not trained on), decoded and letterboxed as the served pipeline does it
(:mod:`lookserve.images`), so that the source detects real objects the comparison can pair.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lookserve.data import street2shop
from lookserve.data.synth import SynthConfig, generate
from lookserve.errors import InvalidInputError
from lookserve.images import IMAGE_SUFFIXES, decode_image, letterbox, resize_square
from lookserve.modelconfig import TensorSpec

log = logging.getLogger(__name__)


def synthetic_photos(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` photo-like RGB UINT8 images [n, H, W, 3]: gradients, filled shapes, stripes, noise, blur."""

    rng = np.random.default_rng(seed)
    out = np.empty((n, height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(60, 230, 3), rng.uniform(60, 230, 3)
        t = (xx / max(width - 1, 1) * rng.uniform(0.2, 1.0) + yy / max(height - 1, 1) * rng.uniform(0.2, 1.0)) / 2.0
        img = (c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]).astype(np.float32)
        for _ in range(int(rng.integers(2, 6))):
            color = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
            sx = int(rng.integers(max(width // 10, 1), max(width // 3, 2)))
            sy = int(rng.integers(max(height // 10, 1), max(height // 2, 2)))
            shape = rng.integers(0, 3)
            if shape == 0:
                cv2.rectangle(img, (cx - sx, cy - sy), (cx + sx, cy + sy), color, thickness=-1)
            elif shape == 1:
                cv2.ellipse(img, (cx, cy), (sx, sy), float(rng.uniform(0, 180)), 0, 360, color, thickness=-1)
            else:
                pts = np.stack([rng.integers(0, width, 5), rng.integers(0, height, 5)], axis=1).astype(np.int32)
                cv2.fillPoly(img, [pts], color)
            if rng.random() < 0.5:  # stripes: a texture inside the last shape's box
                period = int(rng.integers(3, 9))
                x0, x1 = max(cx - sx, 0), min(cx + sx, width)
                y0, y1 = max(cy - sy, 0), min(cy + sy, height)
                img[y0:y1, x0:x1][(xx[y0:y1, x0:x1].astype(int) // period) % 2 == 0] *= 0.7
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        k = int(rng.choice([1, 3, 5]))
        if k > 1:
            img = cv2.GaussianBlur(img, (k, k), 0)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if height == width:
        return resize_square(image, height)

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def photos_from_dir(directory: str | os.PathLike, n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` images picked (seeded) from ``directory`` (recursively), RGB, resized to ``height``×``width``
    (decoded by :func:`lookserve.images.decode_image`, as a client decodes them)."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if directory.is_dir() else []
    if not files:
        raise InvalidInputError(f"photo directory {directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(files), size=n, replace=len(files) < n)
    out = np.empty((n, height, width, 3), np.uint8)
    for i, k in enumerate(picks):
        out[i] = _fit(decode_image(files[k]), height, width)
    return out


#: the seed of the street photos generated for the detector's gate (the reference models were
#: trained on seed 0, the demo uses 7)
STREET_SEED = 2026


def street_photos(n: int, size: int, seed: int = 0, data_root: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    """``n`` street photos (picked by ``seed``) of the street2shop-format data set at ``data_root``,
    letterboxed to ``size``×``size`` as the served pipeline feeds the detector; with no
    ``data_root``, of a small data set generated now (seed :data:`STREET_SEED`) in a temp dir.
    Returns the images and where they came from."""
    if data_root is None:
        config = SynthConfig(n_products=11, n_street=max(n, 1), n_shoes=0, split_fractions=(0.0, 0.0, 1.0))
        with tempfile.TemporaryDirectory(prefix="lookserve-parity-street-") as tmp:
            root = generate(Path(tmp) / "data", config, seed=STREET_SEED)
            images, _ = street_photos(n, size, seed, root)
        return images, f"street photos of a generated data set (seed {STREET_SEED}, {config.n_street} photos)"
    data = street2shop.load(data_root)
    files = sorted({p.street_path for p in data.pairs})
    if not files:
        raise InvalidInputError(f"the data set {data_root} has no street photos with pairs")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(files), size=n, replace=len(files) < n)
    out = np.stack([letterbox(decode_image(files[k]), size)[0] for k in picks]) if n else np.empty((0, size, size, 3), np.uint8)
    return out, f"street photos of {data_root} ({len(files)} photos)"


def photos(n: int, height: int, width: int, seed: int = 0, photo_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    """Photo-like images and where they came from: ``photo_dir`` (e.g. a generated data set's
    images) when given, otherwise seeded synthetic scenes."""
    if photo_dir is not None:
        return photos_from_dir(photo_dir, n, height, width, seed), f"photos from {photo_dir}"
    return synthetic_photos(n, height, width, seed=seed), "synthetic scenes"


def _concrete_shape(spec: TensorSpec, batch: int, fill: int = 32) -> tuple[int, ...]:
    return (batch, *(fill if d == -1 else d for d in spec.dims))


def random_inputs(specs: Sequence[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Uniform random tensors for every input (full range for integers, [0, 1) for floats)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = _concrete_shape(spec, batch)
        dt = spec.np_dtype
        if dt == np.uint8:
            feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif np.issubdtype(dt, np.integer):
            feeds[spec.name] = rng.integers(0, 100, shape).astype(dt)
        elif dt == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            feeds[spec.name] = rng.random(shape).astype(dt)
    return feeds


def photo_inputs(specs: Sequence[TensorSpec], batch: int, seed: int,
                 photo_dir: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], str] | None:
    """Photo-like inputs when every input is an image ``[H, W, 3]`` (UINT8, or float scaled to [0, 1]); else None."""
    feeds, source = {}, ""
    for k, spec in enumerate(specs):
        dims = spec.dims
        if len(dims) != 3 or dims[-1] != 3:
            return None
        h = 224 if dims[0] == -1 else dims[0]
        w = 224 if dims[1] == -1 else dims[1]
        imgs, source = photos(batch, h, w, seed=seed + k, photo_dir=photo_dir)
        if spec.np_dtype == np.uint8:
            feeds[spec.name] = imgs
        elif np.issubdtype(spec.np_dtype, np.floating):
            feeds[spec.name] = (imgs.astype(np.float32) / 255.0).astype(spec.np_dtype)
        else:
            return None
    return feeds, source
