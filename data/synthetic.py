"""Photo-like images from the generator without writing a data set (e.g. export parity samples)."""

from __future__ import annotations

import cv2
import numpy as np

from lookserve.data import render as R
from lookserve.data import synth as S


def render_photos(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` street photos (uint8 RGB [n, height, width, 3]): a figure wearing 2–5 catalog
    products on a cluttered background, as ``lookserve data synth`` makes them."""
    if n < 0 or height < 8 or width < 8:
        raise ValueError(f"render_photos: need n >= 0 and sides >= 8, got n={n}, {height}x{width}")
    config = S.SynthConfig.tiny()
    looks = S.make_catalog(config, seed)
    patches = {lk.id: R.render_product(lk) for lk in looks}
    by_id = {lk.id: lk for lk in looks}
    plan = S.plan_street(S.SynthConfig(n_products=config.n_products, n_street=max(n, 1), n_shoes=0,
                                       split_fractions=(1.0, 0.0, 0.0)), seed, looks, {lk.id: "train" for lk in looks})
    size = 384
    bank = R.make_noise_bank(seed, size)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        img, _, _ = R.street_photo([(by_id[p], patches[p]) for p in plan[i][2]], np.random.default_rng([seed, 2, i]), size, bank)
        out[i] = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if max(height, width) < size else cv2.INTER_LINEAR)
    return out
