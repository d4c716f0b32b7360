"""Safe image decoding and the geometry the client chains need.

Everything a client sends to Triton starts here: an untrusted file or byte string is decoded
with limits (bytes before decoding, pixels before the pixel data is read, an allow-list of
formats), its EXIF orientation is applied, any Pillow mode becomes RGB uint8, and then it is
letterboxed for the detector or cropped and resized for the embedder.

This module is the one pixel path of the project: training (``lookserve.training``: its
``read_rgb`` is :func:`decode_image`, the embedder's street crops are :func:`crop_box`, the
detector's inputs are :func:`letterbox`), evaluation (detector masks by :func:`paste_mask` at
:meth:`Letterbox.to_original` boxes), export's parity samples and serving all call these
functions, so models are scored on the pixels they are served. The pose gate's turned person
crops (MediaPipe's ROI) are :func:`crop_rotated`, bilinear like MediaPipe's. The letterbox is centred on
black with ``scale = S / max(h, w)``; every resize (letterbox, crops, whole photos) uses one
rule, OpenCV's ``INTER_AREA`` when shrinking and ``INTER_LINEAR`` when enlarging (:func:`_interp`).

Boxes are ``(x1, y1, x2, y2)`` in pixels throughout.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookserve.errors import InvalidInputError

log = logging.getLogger(__name__)

#: formats a client accepts (Pillow's format names).
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "BMP"})

ImageSource = bytes | bytearray | memoryview | str | os.PathLike


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked before any pixel data is decoded."""

    max_bytes: int = 32 * 1024 * 1024  # encoded size
    max_pixels: int = 40_000_000  # width × height (a 40 MP photo)
    max_side: int = 16_384
    formats: frozenset[str] = ALLOWED_FORMATS

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0 or self.max_side <= 0:
            raise ValueError("decode limits must be positive")


DEFAULT_LIMITS = DecodeLimits()

#: file suffixes lookserve treats as photos when it lists a folder (the formats it decodes)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_source(source: ImageSource, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """The encoded bytes of ``source`` (a path or bytes), refusing anything over ``max_bytes``
    before it is read into memory."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > limits.max_bytes:
            raise InvalidInputError(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
        return data
    path = Path(source)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InvalidInputError(f"cannot read image {path}: {e.strerror or e}") from e
    if not path.is_file():
        raise InvalidInputError(f"image {path} is not a regular file")
    if size > limits.max_bytes:
        raise InvalidInputError(f"image {path} is {size} bytes, over the limit of {limits.max_bytes}")
    with path.open("rb") as f:
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:  # grew while we looked
        raise InvalidInputError(f"image {path} is over the limit of {limits.max_bytes} bytes")
    return data


def decode_image(source: ImageSource, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an image into RGB uint8 ``[H, W, 3]`` with its EXIF orientation applied.

    Raises :class:`InvalidInputError` naming the problem for: too many bytes, a format outside
    the allow-list, too many pixels (a decompression bomb), a truncated or corrupt file.
    """

    name = str(source) if isinstance(source, str | os.PathLike) else "image bytes"
    data = read_source(source, limits)
    if not data:
        raise InvalidInputError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and over 2× its limit raises) for decompression bombs; make both errors.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=sorted(limits.formats))
            w, h = img.size
            fmt = img.format
            if fmt not in limits.formats:  # pragma: no cover - Image.open(formats=...) already refuses
                raise InvalidInputError(f"{name}: format {fmt} is not allowed ({', '.join(sorted(limits.formats))})")
            if w < 1 or h < 1:
                raise InvalidInputError(f"{name} has no pixels ({w}x{h})")
            if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
                raise InvalidInputError(
                    f"{name} is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels} pixels "
                    f"(or {limits.max_side} per side): refusing a possible decompression bomb"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated PNG/WebP: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except InvalidInputError:
        raise
    except UnidentifiedImageError as e:
        sniffed = sniff_format(data)
        allowed = ", ".join(sorted(limits.formats))
        if sniffed in limits.formats:
            raise InvalidInputError(f"{name} is truncated or corrupt (it starts like a {sniffed} file)") from e
        if sniffed is not None:
            raise InvalidInputError(f"{name} is a {sniffed} image; the allowed formats are {allowed}") from e
        raise InvalidInputError(f"{name} is not an image in an allowed format ({allowed})") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(f"{name}: refusing a possible decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError.
        raise InvalidInputError(f"{name} is truncated or corrupt: {e}") from e


#: leading bytes of the formats Pillow reads that a client may meet (for clearer refusals)
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("WEBP", b"WEBP", 8),
    ("BMP", b"BM", 0),
    ("GIF", b"GIF8", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)


def sniff_format(data: bytes) -> str | None:
    """The format ``data``'s first bytes announce (Pillow's name), or None; nothing is decoded."""
    for fmt, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (fmt != "WEBP" or data[:4] == b"RIFF"):
            return fmt
    return None


def to_rgb(img) -> np.ndarray:
    """Any Pillow image mode → RGB uint8 ``[H, W, 3]``.

    16/32-bit greys keep their top 8 bits; transparency is composited on white (shop photos sit
    on plain light backgrounds); palettes, CMYK, YCbCr, LAB, HSV and 1-bit go through Pillow.
    """

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.int64)
        grey = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        hi = float(a.max()) if a.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0
        grey = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    try:
        if mode == "La":  # premultiplied grey + alpha: Pillow converts it to LA only
            img = img.convert("LA")
            mode = "LA"
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
            mode = "RGBA"
        if mode in ("RGBA", "LA", "PA", "RGBa"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        rgb = img.convert("RGB") if img.mode != "RGB" else img
    except ValueError as e:
        raise InvalidInputError(f"cannot convert an image of mode {mode} to RGB: {e}") from e
    out = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(out)


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidInputError(f"expected an RGB uint8 image [H, W, 3], got {getattr(image, 'dtype', type(image))} {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInputError(f"image has no pixels: shape {image.shape}")


def _interp(src_w: int, src_h: int, dst_w: int, dst_h: int) -> int:
    return cv2.INTER_AREA if dst_w < src_w or dst_h < src_h else cv2.INTER_LINEAR


@dataclass(frozen=True)
class Letterbox:
    """Where an image went inside its letterboxed square.

    A point ``(x, y)`` of the original is at ``(x · scale + pad_x, y · scale + pad_y)``.
    """

    size: int
    scale: float
    pad_x: int
    pad_y: int
    width: int  # original width
    height: int  # original height

    def to_original(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Map ``(x1, y1, x2, y2)`` boxes of the square back to the original's pixels."""
        b = np.asarray(boxes, dtype=np.float32).copy()
        if b.size and b.shape[-1] != 4:
            raise InvalidInputError(f"boxes must end in 4 coordinates, got shape {b.shape}")
        b[..., [0, 2]] = (b[..., [0, 2]] - self.pad_x) / self.scale
        b[..., [1, 3]] = (b[..., [1, 3]] - self.pad_y) / self.scale
        if clip:
            b[..., [0, 2]] = np.clip(b[..., [0, 2]], 0, self.width)
            b[..., [1, 3]] = np.clip(b[..., [1, 3]], 0, self.height)
        return b

    def to_square(self, boxes: np.ndarray) -> np.ndarray:
        """Map boxes of the original into the square (the inverse of :meth:`to_original`)."""
        b = np.asarray(boxes, dtype=np.float32).copy()
        b[..., [0, 2]] = b[..., [0, 2]] * self.scale + self.pad_x
        b[..., [1, 3]] = b[..., [1, 3]] * self.scale + self.pad_y
        return b


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Fit an RGB uint8 image into a ``size``×``size`` square, centred on black."""

    _check_rgb(image)
    if size < 1:
        raise InvalidInputError(f"letterbox size must be positive, got {size}")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=_interp(w, h, nw, nh)) if (nw, nh) != (w, h) else image
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[pad_y : pad_y + nh, pad_x : pad_x + nw] = resized
    return out, Letterbox(size=size, scale=scale, pad_x=pad_x, pad_y=pad_y, width=w, height=h)


def box_pixels(box: np.ndarray, width: int, height: int, min_side: int = 2) -> tuple[int, int, int, int]:
    """Integer pixel bounds ``(x0, y0, x1, y1)`` of a float box, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise InvalidInputError(f"box {box} has non-finite coordinates")
    ix0, iy0 = max(0, int(round(x1))), max(0, int(round(y1)))
    ix1, iy1 = min(width, int(round(x2))), min(height, int(round(y2)))
    if ix1 - ix0 < min_side or iy1 - iy0 < min_side:
        raise InvalidInputError(f"box ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) is empty inside a {width}x{height} image")
    return ix0, iy0, ix1, iy1


def resize_square(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Stretch an RGB uint8 image to ``size``×``size`` (as the models were trained)."""

    _check_rgb(image)
    h, w = image.shape[:2]
    if (w, h) == (size, size):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (size, size), interpolation=_interp(w, h, size, size))


def crop_box(image: np.ndarray, box: np.ndarray, size: int = 224) -> np.ndarray:
    """Crop ``box`` (original pixels, x1 y1 x2 y2) and stretch it to ``size``×``size``."""
    _check_rgb(image)
    x0, y0, x1, y1 = box_pixels(box, image.shape[1], image.shape[0])
    return resize_square(image[y0:y1, x0:x1], size)


def rotated_crop_matrix(center: tuple[float, float], side: float, rotation: float, size: int) -> np.ndarray:
    """The 2×3 affine matrix taking a ``size``×``size`` crop's pixel coordinates to the original's:
    the crop is the square of ``side`` pixels centred on ``center`` (x, y), turned by ``rotation``
    radians (clockwise on screen, y down; MediaPipe's ``NormalizedRect.rotation``). Crop corner
    (0, 0) is the square's top-left corner, (size, size) its bottom-right, as in MediaPipe's
    ImageToTensorCalculator."""
    if not side > 0 or size < 1 or not all(math.isfinite(v) for v in (*center, side, rotation)):
        raise InvalidInputError(f"rotated crop needs a finite side > 0 and size ≥ 1, got side {side}, size {size}, "
                                f"center {center}, rotation {rotation}")
    c, s = math.cos(rotation), math.sin(rotation)
    k = side / size
    r = np.array([[c, -s], [s, c]], dtype=np.float64)
    offset = np.asarray(center, dtype=np.float64) - r @ np.array([side / 2, side / 2])
    return np.hstack([r * k, offset[:, None]])


def crop_rotated(
    image: np.ndarray, center: tuple[float, float], side: float, rotation: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a turned square (see :func:`rotated_crop_matrix`) into ``size``×``size`` RGB uint8,
    bilinear, edge pixels replicated beyond the border (MediaPipe's default ``BORDER_REPLICATE``).
    Returns the crop and the matrix taking crop pixels to the original's."""
    _check_rgb(image)
    matrix = rotated_crop_matrix(center, side, rotation, size)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix


def paste_mask(mask: np.ndarray, box: np.ndarray, width: int, height: int, threshold: float = 0.5) -> np.ndarray:
    """Paste an ``[m, m]`` mask probability map (relative to its box) into a ``height``×``width``
    canvas → bool. The map is sampled bilinearly at the centre of every pixel the box touches
    (``floor(x1)..ceil(x2)``), its edge values replicated beyond its border. Serving (crops,
    renderings) and the detector's evaluation both paste with this function."""

    canvas = np.zeros((height, width), dtype=bool)
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise InvalidInputError(f"mask must be a square [m, m] map, got shape {m.shape}")
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    ix1, iy1 = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
    ix2, iy2 = min(width, int(math.ceil(x2))), min(height, int(math.ceil(y2)))
    if ix2 - ix1 < 1 or iy2 - iy1 < 1:
        return canvas
    bw, bh = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    n = m.shape[0]
    xs = ((np.arange(ix1, ix2) + 0.5 - x1) / bw * n - 0.5).astype(np.float32)
    ys = ((np.arange(iy1, iy2) + 0.5 - y1) / bh * n - 0.5).astype(np.float32)
    mx, my = np.meshgrid(xs, ys)
    vals = cv2.remap(m, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    canvas[iy1:iy2, ix1:ix2] = vals >= threshold
    return canvas


def crop_mask(
    image: np.ndarray, box: np.ndarray, mask: np.ndarray, size: int = 224, fill: int = 255, threshold: float = 0.5
) -> np.ndarray:
    """Crop ``box`` with the pixels outside the instance mask set to ``fill`` (white, like the
    shop photos' backgrounds), stretched to ``size``×``size``.

    ``mask`` is either the detector's ``[m, m]`` map relative to the box or a full-image
    ``[H, W]`` mask.
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    mask = np.asarray(mask)
    if mask.shape == (h, w):
        full = mask.astype(np.float32) >= threshold if mask.dtype != bool else mask
    else:
        full = paste_mask(mask, box, w, h, threshold)
    x0, y0, x1, y1 = box_pixels(box, w, h)
    region = image[y0:y1, x0:x1].copy()
    region[~full[y0:y1, x0:x1]] = fill
    return resize_square(region, size)


__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "Letterbox",
    "box_pixels",
    "crop_box",
    "crop_mask",
    "crop_rotated",
    "decode_image",
    "letterbox",
    "paste_mask",
    "read_source",
    "resize_square",
    "rotated_crop_matrix",
    "sniff_format",
    "to_rgb",
]
