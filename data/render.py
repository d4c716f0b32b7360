"""Procedural drawing of fashion products, street scenes and footwear view sets.

Everything here is numpy + OpenCV, seeded by the caller's ``numpy.random.Generator`` and free
of global state, so the same generator state gives the same pixels.

Geometry of the person-like figure: coordinates are in *figure units* — x relative to the body's
centre line, y from the top of the head (0) to the soles (1), both as fractions of the figure's
height. Every garment is a set of polygons in those units, so it lands at a plausible body
position in a street photo, and the same polygons, scaled to fit, make its shop photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from lookserve.taxonomy import CATEGORIES, FOOTWEAR_TYPES, VIEWS

#: named dominant colours (RGB); products sharing category + colour name are hard negatives
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (236, 236, 230),
    "grey": (128, 128, 132),
    "navy": (30, 40, 90),
    "blue": (50, 100, 200),
    "red": (190, 30, 40),
    "burgundy": (110, 20, 40),
    "green": (40, 140, 60),
    "olive": (110, 110, 50),
    "beige": (215, 195, 160),
    "brown": (110, 70, 40),
    "pink": (235, 140, 170),
    "yellow": (230, 200, 40),
    "orange": (230, 120, 30),
    "purple": (110, 50, 140),
    "teal": (30, 130, 130),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)

PATTERNS: tuple[str, ...] = ("solid", "stripes", "checks", "dots", "zigzag", "blobs")

#: shape parameters per category (each in [0, 1]); their meaning is in ``garment_polygons``
SHAPE_PARAMS: dict[str, tuple[str, ...]] = {
    "bags": ("width", "height", "taper", "handle", "flap"),
    "belts": ("thickness", "buckle", "studs"),
    "dresses": ("flare", "length", "sleeve", "neck"),
    "eyewear": ("size", "roundness", "bridge"),
    "footwear": ("heel", "toe", "height"),
    "hats": ("crown", "brim", "band"),
    "leggings": ("length", "tightness", "waistband"),
    "outerwear": ("length", "flare", "collar", "buttons", "pockets"),
    "pants": ("width", "length", "flare", "pockets"),
    "skirts": ("flare", "length", "pleats"),
    "tops": ("sleeve", "flare", "neck", "length"),
}

#: canonical product patch resolution: pixels per figure height
PATCH_RES = 420


@dataclass(frozen=True)
class ProductLook:
    """The procedural identity of one catalog product."""

    id: int
    category: str
    colour: str  # dominant colour name
    rgb: tuple[int, int, int]  # dominant colour
    rgb2: tuple[int, int, int]  # pattern colour
    pattern: str
    pattern_params: dict[str, float] = field(hash=False)
    shape: dict[str, float] = field(hash=False)
    texture_seed: int = 0
    texture_amp: float = 8.0


# --------------------------------------------------------------------------------------------
# polygons in figure units
# --------------------------------------------------------------------------------------------
def _mirror(right: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A left-right symmetric polygon from its right half (listed top to bottom)."""
    return right + [(-x, y) for x, y in reversed(right)]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28, a0: float = 0, a1: float = 360):
    t = np.radians(np.linspace(a0, a1, n, endpoint=a1 - a0 < 360))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in t]


def garment_polygons(cat: str, s: dict[str, float]) -> list[list[tuple[float, float]]]:
    """Silhouette polygons of a product in figure units (see module doc)."""
    if cat == "tops":
        y_end = 0.23 + 0.28 * s["sleeve"]
        hem = 0.43 + 0.07 * s["length"]
        neck = 0.03 + 0.02 * s["neck"]
        right = [(neck, 0.163), (0.135, 0.178), (0.175 + 0.02 * s["sleeve"], y_end), (0.132 + 0.01 * s["sleeve"], y_end + 0.01),
                 (0.118, 0.26), (0.108 + 0.04 * s["flare"], hem)]
        poly = _mirror(right)
        poly.insert(len(right), (0.0, hem))
        return [[(0.0, 0.172 + 0.05 * s["neck"])] + poly]
    if cat == "outerwear":
        hem = 0.52 + 0.12 * s["length"]
        y_end = 0.47 + 0.03 * s["length"]
        right = [(0.045, 0.155 - 0.01 * s["collar"]), (0.15, 0.175), (0.195, y_end), (0.145, y_end + 0.012), (0.128, 0.27),
                 (0.12 + 0.05 * s["flare"], hem)]
        return [[(0.0, 0.2 + 0.08 * s["collar"])] + _mirror(right)]
    if cat == "dresses":
        hem = 0.6 + 0.2 * s["length"]
        y_end = 0.18 + 0.12 * s["sleeve"]
        neck = 0.03 + 0.02 * s["neck"]
        right = [(neck, 0.165), (0.125, 0.178), (0.15 + 0.02 * s["sleeve"], y_end), (0.118, y_end + 0.02), (0.112, 0.3),
                 (0.095, 0.41), (0.115 + 0.12 * s["flare"], hem)]
        return [[(0.0, 0.175 + 0.05 * s["neck"])] + _mirror(right)]
    if cat == "skirts":
        hem = 0.56 + 0.2 * s["length"]
        right = [(0.1, 0.405), (0.115 + 0.11 * s["flare"], hem)]
        return [_mirror(right)]
    if cat in ("pants", "leggings"):
        if cat == "pants":
            hem = 0.8 + 0.135 * s["length"]
            out_x = 0.09 + 0.04 * s["width"] + 0.02 * s["flare"]
            in_x = 0.012 + 0.01 * s["flare"]
            hip = 0.125
        else:
            hem = 0.84 + 0.1 * s["length"]
            out_x = 0.092 - 0.01 * s["tightness"]
            in_x = 0.022 + 0.005 * s["tightness"]
            hip = 0.115
        right = [(0.112, 0.405), (hip, 0.5), (out_x, hem), (in_x, hem), (0.0, 0.535)]
        left = [(-x, y) for x, y in reversed(right[:-1])]
        return [right + left]
    if cat == "belts":
        t = 0.012 + 0.014 * s["thickness"]
        return [[(-0.108, 0.41 - t / 2), (0.108, 0.41 - t / 2), (0.11, 0.41 + t / 2), (-0.11, 0.41 + t / 2)]]
    if cat == "footwear":
        top = 0.935 - 0.02 * s["height"]
        toe = 0.025 + 0.02 * s["toe"]
        polys = []
        for sx in (-1, 1):
            cx = 0.058 * sx
            polys.append([(cx - 0.03, top), (cx + 0.03, top), (cx + 0.034, 0.97), (cx + 0.03 + toe * 0.2, 0.99), (cx, 0.995),
                          (cx - 0.03 - toe * 0.2, 0.99), (cx - 0.034, 0.97)])
        return polys
    if cat == "hats":
        cw = 0.065 + 0.02 * s["crown"]
        ch = 0.04 + 0.035 * s["crown"]
        bw = 0.075 + 0.06 * s["brim"]
        crown = [(-cw, 0.052), (-cw * 0.85, 0.052 - ch), (cw * 0.85, 0.052 - ch), (cw, 0.052)]
        brim = _ellipse(0.0, 0.055, bw, 0.012 + 0.006 * s["brim"])
        return [crown, brim]
    if cat == "eyewear":
        r = 0.016 + 0.008 * s["size"]
        out = []
        for sx in (-1, 1):
            cx = (0.024 + 0.003 * s["bridge"]) * sx
            if s["roundness"] > 0.5:
                out.append(_ellipse(cx, 0.072, r, r * 0.85))
            else:
                out.append([(cx - r, 0.072 - r * 0.7), (cx + r, 0.072 - r * 0.7), (cx + r * 0.9, 0.072 + r * 0.75),
                            (cx - r * 0.9, 0.072 + r * 0.75)])
        out.append([(-0.012, 0.068), (0.012, 0.068), (0.012, 0.073), (-0.012, 0.073)])
        return out
    if cat == "bags":
        w = 0.09 + 0.07 * s["width"]
        h = 0.07 + 0.07 * s["height"]
        x0, y0 = 0.13, 0.52
        tp = 0.02 * s["taper"]
        body = [(x0 + tp, y0), (x0 + w - tp, y0), (x0 + w, y0 + h), (x0, y0 + h)]
        hh = 0.02 + 0.04 * s["handle"]
        outer = _ellipse(x0 + w / 2, y0, w / 2 - 0.01, hh, n=16, a0=180, a1=360)
        inner = _ellipse(x0 + w / 2, y0, w / 2 - 0.022, hh - 0.01, n=16, a0=180, a1=360)
        handle = outer + list(reversed(inner))
        return [body, handle]
    raise ValueError(f"unknown category {cat!r}")


# --------------------------------------------------------------------------------------------
# patterns and products
# --------------------------------------------------------------------------------------------
def pattern_mask(look: ProductLook, h: int, w: int, res: float) -> np.ndarray:
    """Where the pattern colour goes (bool [h, w]); coordinates in figure units so the pattern
    keeps its size from shop to street photo."""
    p = look.pattern_params
    if look.pattern == "solid":
        return np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / res
    period = p["period"]
    a = p["angle"]
    u = xx * math.cos(a) + yy * math.sin(a)
    v = -xx * math.sin(a) + yy * math.cos(a)
    if look.pattern == "stripes":
        return (u / period) % 1.0 < p["duty"]
    if look.pattern == "checks":
        d = p["duty"] * 0.6  # two crossing stripe sets: ≤ 1 - (1 - 0.21)² ≈ 38% of the area
        return ((u / period) % 1.0 < d) | ((v / period) % 1.0 < d)
    if look.pattern == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return du * du + dv * dv < p["duty"] * 0.35
    if look.pattern == "zigzag":
        tri = np.abs((v / (period * 1.5)) % 1.0 - 0.5)
        return ((u / period + tri) % 1.0) < p["duty"]
    if look.pattern == "blobs":
        r = np.random.default_rng(look.texture_seed + 7)
        m = np.zeros((h, w), np.uint8)
        n = int(h * w / (res * period) ** 2 * 1.5) + 1
        for _ in range(min(n, 400)):
            cx, cy = r.uniform(0, w), r.uniform(0, h)
            rad = max(1, int(res * period * p["duty"] * r.uniform(0.3, 0.6)))
            cv2.ellipse(m, (int(cx), int(cy)), (rad, max(1, rad // 2)), float(r.uniform(0, 180)), 0, 360, 1, -1)
        return m.astype(bool)
    raise ValueError(f"unknown pattern {look.pattern!r}")


def _texture(seed: int, h: int, w: int, amp: float) -> np.ndarray:
    r = np.random.default_rng(seed)
    low = r.normal(0, 1, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
    fine = r.normal(0, 0.35, (max(2, h // 4), max(2, w // 4))).astype(np.float32)
    t = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) + cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)
    return t * amp


def _to_px(poly, x0: float, y0: float, res: float) -> np.ndarray:
    return np.round((np.asarray(poly, np.float32) - (x0, y0)) * res * 4).astype(np.int32)  # shift=2


def render_product(look: ProductLook, res: float = PATCH_RES) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The product as an RGB patch (uint8 [h, w, 3]), its mask (uint8 0/1) and the figure-unit
    position of the patch's top-left pixel."""
    polys = garment_polygons(look.category, look.shape)
    pts = np.concatenate([np.asarray(p, np.float32) for p in polys])
    pad = 3 / res
    x0, y0 = pts.min(0) - pad
    x1, y1 = pts.max(0) + pad
    w, h = int(math.ceil((x1 - x0) * res)), int(math.ceil((y1 - y0) * res))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [_to_px(p, x0, y0, res) for p in polys], 1, lineType=cv2.LINE_8, shift=2)
    img = np.empty((h, w, 3), np.float32)
    img[:] = look.rgb
    pm = pattern_mask(look, h, w, res)
    img[pm] = look.rgb2
    # folds: soft vertical shading that follows the garment
    xs = np.linspace(0, 1, w, dtype=np.float32)
    shade = 1.0 + 0.07 * np.sin(xs * math.pi * (2 + 3 * look.shape.get(next(iter(look.shape)), 0.5)))[None, :]
    img *= shade[..., None]
    img += _texture(look.texture_seed, h, w, look.texture_amp)[..., None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    _details(out, look, x0, y0, res)
    return out, mask, (float(x0), float(y0))


def _darker(rgb, f=0.55):
    return tuple(int(c * f) for c in rgb)


def _lighter(rgb, f=0.45):
    return tuple(int(c + (255 - c) * f) for c in rgb)


def _contrast(rgb):
    return _darker(rgb, 0.4) if sum(rgb) > 330 else _lighter(rgb, 0.55)


def _details(img: np.ndarray, look: ProductLook, x0: float, y0: float, res: float) -> None:
    """Category details (seams, buttons, buckles, lenses...) drawn in place: shape cues."""
    s = look.shape

    def P(x, y):
        return int(round((x - x0) * res)), int(round((y - y0) * res))

    line = _contrast(look.rgb)
    lw = max(1, int(res / 200))
    c = look.category
    if c == "outerwear":
        hem = 0.52 + 0.12 * s["length"]
        cv2.line(img, P(0, 0.2 + 0.08 * s["collar"]), P(0, hem), line, lw)
        for i in range(2 + int(s["buttons"] * 4)):
            cv2.circle(img, P(-0.012, 0.24 + i * 0.055), max(1, int(res * 0.006)), _contrast(look.rgb2), -1)
        if s["pockets"] > 0.4:
            for sx in (-1, 1):
                cv2.rectangle(img, P(sx * 0.04 - 0.025, 0.42), P(sx * 0.04 + 0.025, 0.45), line, lw)
        cv2.line(img, P(0.045, 0.155), P(0.0, 0.2 + 0.08 * s["collar"]), line, lw)
        cv2.line(img, P(-0.045, 0.155), P(0.0, 0.2 + 0.08 * s["collar"]), line, lw)
    elif c == "tops":
        cv2.line(img, P(-0.118, 0.26), P(-0.135, 0.178), line, lw)
        cv2.line(img, P(0.118, 0.26), P(0.135, 0.178), line, lw)
    elif c == "dresses":
        cv2.line(img, P(-0.095, 0.41), P(0.095, 0.41), line, lw)
    elif c == "skirts":
        hem = 0.56 + 0.2 * s["length"]
        for i in range(int(s["pleats"] * 6)):
            t = (i + 1) / (int(s["pleats"] * 6) + 1) * 2 - 1
            cv2.line(img, P(t * 0.1, 0.42), P(t * (0.115 + 0.11 * s["flare"]), hem), _darker(look.rgb, 0.8), lw)
    elif c == "pants":
        cv2.line(img, P(0, 0.41), P(0, 0.535), line, lw)
        if s["pockets"] > 0.5:
            for sx in (-1, 1):
                cv2.line(img, P(sx * 0.11, 0.425), P(sx * 0.08, 0.47), line, lw)
    elif c == "leggings":
        if s["waistband"] > 0.4:
            cv2.rectangle(img, P(-0.112, 0.405), P(0.112, 0.425), _darker(look.rgb, 0.7), -1)
    elif c == "belts":
        bw = 0.012 + 0.02 * s["buckle"]
        t = 0.012 + 0.014 * s["thickness"]
        cv2.rectangle(img, P(-bw, 0.41 - t * 0.8), P(bw, 0.41 + t * 0.8), (200, 190, 120), max(1, lw + 1))
        for i in range(int(s["studs"] * 8)):
            for sx in (-1, 1):
                cv2.circle(img, P(sx * (0.035 + i * 0.009), 0.41), max(1, lw), (210, 210, 215), -1)
    elif c == "eyewear":
        r = 0.016 + 0.008 * s["size"]
        tint = _darker(look.rgb2, 0.35)
        for sx in (-1, 1):
            cx = (0.024 + 0.003 * s["bridge"]) * sx
            cv2.ellipse(img, P(cx, 0.072), (int(r * res * 0.75), int(r * res * 0.6)), 0, 0, 360, tint, -1)
    elif c == "hats":
        if s["band"] > 0.3:
            cw = 0.065 + 0.02 * s["crown"]
            cv2.rectangle(img, P(-cw, 0.04), P(cw, 0.05), look.rgb2, -1)
    elif c == "footwear":
        for sx in (-1, 1):
            cx = 0.058 * sx
            cv2.line(img, P(cx - 0.034, 0.985), P(cx + 0.034, 0.985), _contrast(look.rgb), max(1, lw + 1))
    elif c == "bags":
        w = 0.09 + 0.07 * s["width"]
        if s["flap"] > 0.4:
            cv2.fillPoly(img, [np.array([P(0.13 + 0.01, 0.52), P(0.13 + w - 0.01, 0.52), P(0.13 + w / 2, 0.52 + 0.05)])],
                         _darker(look.rgb, 0.75))
        cv2.circle(img, P(0.13 + w / 2, 0.545), max(1, lw + 1), (205, 195, 130), -1)


# --------------------------------------------------------------------------------------------
# shop photos
# --------------------------------------------------------------------------------------------
def shop_photo(patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A catalog photo: the product centred on a plain light background, with small pose,
    scale and light variation."""
    bg = np.array([rng.uniform(228, 250)] * 3, np.float32) + rng.uniform(-6, 6, 3)
    out = np.empty((size, size, 3), np.float32)
    out[:] = bg
    h, w = mask.shape
    scale = size * rng.uniform(0.72, 0.86) / max(h, w)  # ~1 when the patch was rendered for the shop size
    angle = rng.uniform(-6, 6)
    cx, cy = size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6)
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    M[:, 2] += (cx - w / 2, cy - h / 2)
    M[0, 1] += rng.uniform(-0.04, 0.04) * scale  # a slight shear: another pose
    wi = cv2.warpAffine(patch, M, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    wm = cv2.warpAffine(mask * 255, M, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255
    # a soft drop shadow
    sh = cv2.GaussianBlur(np.roll(wm[..., 0], (4, 4), (0, 1)), (0, 0), 4)[..., None]
    out *= 1 - 0.25 * sh
    out = out * (1 - wm) + wi.astype(np.float32) * rng.uniform(0.9, 1.1) * wm
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# street photos
# --------------------------------------------------------------------------------------------
def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered scene: gradient sky/wall, a floor, and random shapes."""
    c1 = rng.uniform(40, 220, 3)
    c2 = rng.uniform(40, 220, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    col = (c1 * (1 - t) + c2 * t).astype(np.uint8)  # [size, 1, 3]
    horizon = int(size * rng.uniform(0.55, 0.8))
    col[horizon:] = (col[horizon:] * 0.5 + rng.uniform(30, 160, 3) * 0.5).astype(np.uint8)
    img = cv2.resize(col, (size, size), interpolation=cv2.INTER_NEAREST)
    for _ in range(int(rng.integers(14, 30))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(size // 30, size // 5))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + r, y + int(rng.integers(r // 2, 2 * r))), col, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), r // 2, col, -1)
        elif kind == 2:
            cv2.line(img, (x, y), tuple(int(v) for v in rng.integers(0, size, 2)), col, int(rng.integers(1, 6)))
        else:
            pts = (rng.integers(-r, r, (5, 2)) + (x, y)).astype(np.int32)
            cv2.fillPoly(img, [pts], col)
    return cv2.GaussianBlur(img, (3, 3), 0)


SKIN = ((235, 200, 170), (200, 150, 110), (150, 100, 70), (95, 60, 40), (250, 220, 195))


def draw_figure(img: np.ndarray, rng: np.random.Generator, to_px) -> None:
    """A person-like figure: head, hair, neck, torso, arms and legs (label 0: not a product)."""
    skin = SKIN[int(rng.integers(len(SKIN)))]
    skin = tuple(int(np.clip(c + rng.integers(-10, 10), 0, 255)) for c in skin)
    base = tuple(int(v) for v in rng.integers(60, 200, 3))  # underwear/bodysuit tone
    hair = tuple(int(v) for v in rng.integers(10, 120, 3))
    P = to_px

    def thick(u):
        return max(1, int(round(u * to_px.scale)))

    for sx in (-1, 1):  # legs
        cv2.line(img, P(0.06 * sx, 0.5), P(0.058 * sx, 0.95), skin, thick(0.065))
    torso = [(-0.13, 0.17), (0.13, 0.17), (0.1, 0.4), (0.115, 0.52), (-0.115, 0.52), (-0.1, 0.4)]
    cv2.fillPoly(img, [np.array([P(*p) for p in torso], np.int32)], base)
    cv2.line(img, P(0, 0.12), P(0, 0.17), skin, thick(0.05))
    for sx in (-1, 1):  # arms
        cv2.line(img, P(0.14 * sx, 0.19), P(0.165 * sx, 0.5), skin, thick(0.04))
    cv2.circle(img, P(0, 0.075), thick(0.058), hair, -1)
    cv2.ellipse(img, P(0, 0.082), (thick(0.047), thick(0.058)), 0, 0, 360, skin, -1)


@dataclass
class _ToPx:
    """figure units → pixels of the canvas."""

    cx: float
    top: float
    scale: float

    def __call__(self, x: float, y: float) -> tuple[int, int]:
        return int(round(self.cx + x * self.scale)), int(round(self.top + y * self.scale))


#: painting order of categories (later ones cover earlier ones)
DEPTH = ("leggings", "pants", "footwear", "skirts", "tops", "dresses", "belts", "outerwear", "bags", "hats", "eyewear")


def paste(canvas: np.ndarray, labels: np.ndarray, patch: np.ndarray, mask: np.ndarray, M: np.ndarray, label: int,
          gain: np.ndarray | float = 1.0) -> int:
    """Warp ``patch`` by the 2×3 affine ``M`` onto ``canvas`` (only its ROI) and write ``label``;
    returns the number of pixels painted."""
    h, w = mask.shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float32) @ M.T
    S = canvas.shape[0]
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, canvas.shape[1]), min(y1, S)
    if x1 <= x0 or y1 <= y0:
        return 0
    Mr = M.copy()
    Mr[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    wi = cv2.warpAffine(patch, Mr, size, flags=cv2.INTER_LINEAR)
    wm = cv2.warpAffine(mask, Mr, size, flags=cv2.INTER_NEAREST).astype(bool)
    roi = canvas[y0:y1, x0:x1]
    if not np.isscalar(gain) or gain != 1.0:
        wi = np.clip(wi.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    roi[wm] = wi[wm]
    labels[y0:y1, x0:x1][wm] = label
    return int(np.count_nonzero(wm))


def street_photo(
    items: list[tuple[ProductLook, tuple[np.ndarray, np.ndarray, tuple[float, float]]]],
    rng: np.random.Generator,
    size: int,
    noise_bank: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A street photo of a figure wearing ``items`` (look, rendered patch). Returns the RGB
    image (before JPEG), the instance label map (0 = no product, i = items[i - 1]) and, per
    item, the fraction of it left visible by occlusion (float [len(items)])."""
    canvas = background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    fig_h = size * rng.uniform(0.62, 0.95)
    cx = size / 2 + rng.uniform(-0.18, 0.18) * size
    top = rng.uniform(0.02, max(0.03, (size - fig_h) / size - 0.01)) * size
    to_px = _ToPx(cx, top, fig_h)
    draw_figure(canvas, rng, to_px)
    order = sorted(range(len(items)), key=lambda i: DEPTH.index(items[i][0].category))
    painted = np.zeros(len(items), np.float64)
    for i in order:
        look, (patch, mask, (px0, py0)) = items[i]
        s = fig_h / PATCH_RES * rng.uniform(0.97, 1.03)
        ang = rng.uniform(-4, 4)
        ph, pw = mask.shape
        # patch pixel (u, v) → figure unit (px0 + u/res, py0 + v/res) → canvas
        M = cv2.getRotationMatrix2D((pw / 2, ph / 2), ang, s)
        ccx, ccy = to_px(px0 + pw / 2 / PATCH_RES, py0 + ph / 2 / PATCH_RES)
        M[:, 2] += (ccx - pw / 2 + rng.uniform(-1.5, 1.5), ccy - ph / 2 + rng.uniform(-1.5, 1.5))
        painted[i] = paste(canvas, labels, patch, mask, M, i + 1, gain=rng.uniform(0.85, 1.12, 3).astype(np.float32))
    # partial occlusion by a foreground object (a pole, a sign, a passer-by's shoulder)
    if rng.random() < 0.4:
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            x = int(cx + rng.uniform(-0.25, 0.25) * fig_h)
            wdt = int(rng.uniform(0.02, 0.07) * size)
            cv2.rectangle(canvas, (x, 0), (x + wdt, size), col, -1)
            labels[:, max(x, 0):max(x + wdt + 1, 0)] = 0
        else:
            c = (int(cx + rng.choice([-1, 1]) * rng.uniform(0.15, 0.35) * fig_h), int(top + rng.uniform(0.3, 0.9) * fig_h))
            ax = (int(rng.uniform(0.05, 0.14) * size), int(rng.uniform(0.08, 0.2) * size))
            m = np.zeros_like(labels)
            cv2.ellipse(m, c, ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            canvas[m.astype(bool)] = col
            labels[m.astype(bool)] = 0
    left = np.bincount(labels.ravel(), minlength=len(items) + 1)[1:]
    visible = np.divide(left, painted, out=np.zeros_like(painted), where=painted > 0)
    flip = rng.random() < 0.5  # mirror: the bag in the other hand
    # perspective + rotation + zoom of the whole photo (the mirror folded in)
    a = math.radians(rng.uniform(-9, 9))
    z = rng.uniform(0.92, 1.12)
    src = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    ctr = size / 2
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32) * z
    dst = (src - ctr) @ R.T + ctr + rng.uniform(-0.05, 0.05, (4, 2)).astype(np.float32) * size
    H = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    if flip:
        H = H @ np.array([[-1, 0, size - 1], [0, 1, 0], [0, 0, 1]], np.float64)
    canvas = cv2.warpPerspective(canvas, H, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    labels = cv2.warpPerspective(labels, H, (size, size), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # light: colour cast + brightness gradient (a separable ramp, built small and resized)
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    ramp = np.linspace(-0.5, 0.5, 2, dtype=np.float32)
    corners = (1.0 + gx * ramp[None, :] + gy * ramp[:, None])[..., None] * gain  # [2, 2, 3]
    light = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    img = cv2.multiply(canvas, light, dtype=cv2.CV_32F)
    # blur
    if rng.random() < 0.6:
        if rng.random() < 0.7:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.4))
        else:
            k = int(rng.integers(3, 8))
            ker = np.zeros((k, k), np.float32)
            ker[k // 2] = 1.0 / k
            ker = cv2.warpAffine(ker, cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1), (k, k))
            img = cv2.filter2D(img, -1, ker / max(ker.sum(), 1e-6))
    # sensor noise from a seeded bank, at a random offset
    nb = noise_bank[int(rng.integers(len(noise_bank)))]
    oy, ox = (int(v) for v in rng.integers(0, nb.shape[0] - size + 1, 2))
    img = cv2.scaleAdd(nb[oy:oy + size, ox:ox + size], float(rng.uniform(0.3, 1.6)), img)
    return cv2.convertScaleAbs(np.maximum(img, 0, out=img)), labels, visible


def make_noise_bank(seed: int, size: int, n: int = 4) -> np.ndarray:
    r = np.random.default_rng([seed, 991])
    return r.normal(0, 6, (n, size + 32, size + 32, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# footwear view sets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShoeLook:
    id: str
    type: str  # one of FOOTWEAR_TYPES
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]  # trim / straps
    sole_rgb: tuple[int, int, int]
    heel: float
    toe: float
    shaft: float
    zip_side: str  # "left" or "right": the side view that shows the zip (zip shoes)


def best_views(shoe: ShoeLook) -> tuple[str, ...]:
    """The views that make a good thumbnail: front or side; for zip shoes the zip's side."""
    return (shoe.zip_side,) if shoe.type == "zip" else ("front", "left", "right")


def shoe_view(shoe: ShoeLook, view: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One view of a shoe on a plain background. Closure cues are visible from some views only:
    laces (front, sides), elastic gussets (sides), buckle (outer=left side, front strap),
    hook-and-loop straps (front, sides), back strap (back, sides), zip (one side only)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    if shoe.type not in FOOTWEAR_TYPES:
        raise ValueError(f"unknown footwear type {shoe.type!r}")
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.clip(rng.uniform(225, 250) + rng.uniform(-5, 5, 3), 0, 255).astype(np.uint8)
    S = size
    c, c2, cs = shoe.rgb, shoe.rgb2, shoe.sole_rgb
    dark = _contrast(c)
    lw = max(2, S // 80)
    t = shoe.type

    def p(x, y):  # unit square → pixels
        return int(round(x * S)), int(round(y * S))

    if view in ("left", "right"):
        top = 0.42 - 0.12 * shoe.shaft
        heel_h = 0.03 + 0.08 * shoe.heel
        sole_y = 0.7
        upper = [p(0.16, sole_y - heel_h), p(0.17, top), p(0.36, top + 0.02), p(0.5, 0.5 - 0.04 * shoe.shaft),
                 p(0.7, 0.56), p(0.84 + 0.04 * shoe.toe, 0.62), p(0.86 + 0.04 * shoe.toe, sole_y - 0.02), p(0.2, sole_y - 0.02)]
        cv2.fillPoly(img, [np.array(upper, np.int32)], c)
        cv2.rectangle(img, p(0.15, sole_y - 0.03), p(0.88 + 0.04 * shoe.toe, sole_y), cs, -1)
        cv2.rectangle(img, p(0.15, sole_y - heel_h), p(0.27, sole_y), cs, -1)
        cv2.circle(img, p(0.3, top + 0.05), max(2, S // 60), _darker(c, 0.3), -1)  # the ankle opening
        outer = view == "left"
        if t == "lace-up":
            for i in range(4):
                x = 0.42 + i * 0.06
                cv2.line(img, p(x, 0.5 + i * 0.012 - 0.04), p(x + 0.04, 0.52 + i * 0.012), c2, lw)
        elif t == "slip-on":
            cv2.fillPoly(img, [np.array([p(0.38, top + 0.03), p(0.44, top + 0.04), p(0.41, 0.56)], np.int32)], _darker(c, 0.4))
        elif t == "buckle":
            cv2.line(img, p(0.45, 0.47), p(0.5, 0.64), c2, lw * 2)
            if outer:
                cv2.rectangle(img, p(0.455, 0.53), p(0.51, 0.58), (215, 200, 120), lw)
        elif t == "hook-and-loop":
            for i in range(2):
                cv2.line(img, p(0.42 + 0.1 * i, 0.48 + 0.02 * i), p(0.47 + 0.1 * i, 0.64), c2, lw * 3)
        elif t == "back-strap":
            cv2.fillPoly(img, [np.array([p(0.16, top - 0.01), p(0.32, top + 0.01), p(0.3, 0.58), p(0.16, 0.6)], np.int32)],
                         img[2, 2].tolist())
            cv2.line(img, p(0.17, 0.5), p(0.34, 0.45), c2, lw)
        elif t == "zip" and view == shoe.zip_side:
            x = 0.3
            for k in range(9):
                cv2.line(img, p(x - 0.008, top + 0.04 + k * 0.027), p(x + 0.008, top + 0.04 + k * 0.027), (200, 200, 205), lw)
            cv2.rectangle(img, p(x - 0.015, top + 0.02), p(x + 0.015, top + 0.06), (220, 220, 225), -1)
        if view == "right":
            img = np.ascontiguousarray(img[:, ::-1])
    elif view == "front":
        top = 0.3 - 0.12 * shoe.shaft
        cv2.ellipse(img, p(0.5, 0.62), (int(S * (0.17 + 0.02 * shoe.toe)), int(S * 0.14)), 0, 0, 360, c, -1)
        cv2.rectangle(img, p(0.36, top), p(0.64, 0.62), c, -1)
        cv2.ellipse(img, p(0.5, top + 0.02), (int(S * 0.1), int(S * 0.04)), 0, 0, 360, _darker(c, 0.3), -1)
        cv2.rectangle(img, p(0.32, 0.74), p(0.68, 0.78), cs, -1)
        if t == "lace-up":
            for i in range(5):
                y = top + 0.08 + i * 0.045
                cv2.line(img, p(0.44, y), p(0.56, y + 0.03), c2, lw)
                cv2.line(img, p(0.56, y), p(0.44, y + 0.03), c2, lw)
        elif t == "buckle":
            cv2.line(img, p(0.35, top + 0.16), p(0.65, top + 0.16), c2, lw * 2)
        elif t == "hook-and-loop":
            for i in range(2):
                cv2.rectangle(img, p(0.36, top + 0.1 + i * 0.1), p(0.64, top + 0.15 + i * 0.1), c2, -1)
        elif t == "slip-on":
            cv2.ellipse(img, p(0.5, top + 0.2), (int(S * 0.1), int(S * 0.03)), 0, 180, 360, dark, lw)
    elif view == "back":
        top = 0.3 - 0.12 * shoe.shaft
        heel_h = 0.03 + 0.08 * shoe.heel
        cv2.rectangle(img, p(0.36, top), p(0.64, 0.72 - heel_h), c, -1)
        cv2.ellipse(img, p(0.5, 0.72 - heel_h), (int(S * 0.14), int(S * 0.05)), 0, 0, 180, c, -1)
        cv2.rectangle(img, p(0.42, 0.72 - heel_h), p(0.58, 0.74), cs, -1)
        cv2.rectangle(img, p(0.47, top - 0.03), p(0.53, top + 0.05), _darker(c, 0.7), -1)  # heel tab
        if t == "back-strap":
            cv2.rectangle(img, p(0.38, top), p(0.62, 0.5), img[2, 2].tolist(), -1)
            cv2.line(img, p(0.36, 0.45), p(0.64, 0.45), c2, lw * 2)
    else:  # sole: outline and tread, no closure cue
        cv2.ellipse(img, p(0.5, 0.35), (int(S * 0.14), int(S * 0.2)), 0, 0, 360, cs, -1)
        cv2.ellipse(img, p(0.5, 0.7), (int(S * 0.11), int(S * 0.13)), 0, 0, 360, cs, -1)
        cv2.rectangle(img, p(0.39, 0.35), p(0.61, 0.7), cs, -1)
        tread = _darker(cs, 0.6)
        for i in range(12):
            y = 0.18 + i * 0.055
            cv2.line(img, p(0.4, y), p(0.6, y + 0.02), tread, lw)
    # pose / scale / light
    M = cv2.getRotationMatrix2D((S / 2, S / 2), rng.uniform(-7, 7), rng.uniform(0.88, 1.08))
    M[:, 2] += rng.uniform(-8, 8, 2)
    img = cv2.warpAffine(img, M, (S, S), borderMode=cv2.BORDER_REPLICATE)
    f = rng.uniform(0.85, 1.1) * rng.uniform(0.95, 1.05, 3)
    noise = rng.normal(0, 2.5, img.shape)
    return np.clip(img * f + noise, 0, 255).astype(np.uint8)


def category_ids() -> dict[str, int]:
    return {c: i + 1 for i, c in enumerate(CATEGORIES)}
