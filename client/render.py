"""PNGs of the client chains' answers (matplotlib, Agg backend; written atomically).

* :func:`render_look` — like the original article's final figure: the street photo with every
  kept instance's mask and box, and per item a row of its top-K shop photos with similarity.
* :func:`render_thumbnails` — a contact sheet: one row per product, its views ordered by
  best-view probability, the chosen thumbnail framed, the footwear type in the row title.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lookserve.client.pose import CONNECTIONS
from lookserve.errors import InvalidInputError
from lookserve.fsutil import atomic_output
from lookserve.images import decode_image, paste_mask

log = logging.getLogger(__name__)

#: The colour of item n is COLOURS[n % len(COLOURS)] (RGB in 0..1): masks, boxes and rows agree.
COLOURS = [(0.89, 0.10, 0.11), (0.22, 0.49, 0.72), (0.30, 0.69, 0.29), (0.60, 0.31, 0.64), (1.0, 0.5, 0.0),
           (0.65, 0.34, 0.16), (0.97, 0.51, 0.75), (0.4, 0.4, 0.4), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    return path


def _load(image_path: Path | None) -> np.ndarray | None:
    if image_path is None:
        return None
    try:
        return decode_image(image_path)
    except InvalidInputError as e:
        log.warning("cannot show %s: %s", image_path, e)
        return None


def overlay(image: np.ndarray, result, alpha: float = 0.45) -> np.ndarray:
    """The photo with each item's mask tinted in its colour (uint8 RGB)."""
    out = image.astype(np.float32)
    h, w = image.shape[:2]
    for n, item in enumerate(result.items):
        d = item.detection
        if d.mask is None:
            continue
        m = paste_mask(d.mask, np.array(d.box), w, h)
        colour = np.array(COLOURS[n % len(COLOURS)], np.float32) * 255
        out[m] = (1 - alpha) * out[m] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def render_look(result, image, catalog, path: str | os.PathLike, k: int | None = None) -> Path:
    """Write the shop-the-look figure for ``result`` (``image``: the photo, decoded or a source)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    photo = image if isinstance(image, np.ndarray) else decode_image(image)
    items = list(result.items)
    k = k or max((len(i.matches) for i in items), default=1) or 1
    rows = max(len(items), 1)
    fig = plt.figure(figsize=(4 + 1.6 * k, max(4.0, 1.9 * rows)))
    grid = fig.add_gridspec(rows, k + 2, width_ratios=[2.5, 2.5] + [1] * k)
    ax = fig.add_subplot(grid[:, :2])
    ax.imshow(overlay(photo, result))
    for n, item in enumerate(items):
        d = item.detection
        colour = COLOURS[n % len(COLOURS)]
        x1, y1, x2, y2 = d.box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2))
        ax.text(x1, y1, f"{d.category} {d.score:.2f}", color="white", fontsize=8, va="bottom",
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    versions = ", ".join(f"{m} v{v}" for m, v in result.model_versions.items())
    ax.set_title(f"{Path(result.source).name}  ({versions})" if versions else Path(result.source).name, fontsize=9)
    ax.axis("off")
    if not items:
        ax.text(0.5, -0.05, "no garment detected", transform=ax.transAxes, ha="center", fontsize=10)
    for r, item in enumerate(items):
        colour = COLOURS[r % len(COLOURS)]
        for c in range(k):
            sub = fig.add_subplot(grid[r, c + 2])
            sub.axis("off")
            if c >= len(item.matches):
                continue
            m = item.matches[c]
            shop = _load(catalog.image_path(m.photo_image)) if catalog is not None else None
            if shop is not None:
                sub.imshow(shop)
            else:
                sub.text(0.5, 0.5, "(no image)", ha="center", va="center", fontsize=7, transform=sub.transAxes)
            sub.set_title(f"#{m.product_id}\nsim {m.similarity:.3f}", fontsize=7, color=colour)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def render_thumbnails(results: Sequence, path: str | os.PathLike, max_products: int = 30) -> Path:
    """Contact sheet of thumbnail decisions (views sorted by best-view probability)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    shown = list(results)[:max_products]
    if not shown:
        raise InvalidInputError("no thumbnail results to draw")
    cols = max(len(r.views) for r in shown)
    fig, axes = plt.subplots(len(shown), cols, figsize=(1.8 * cols, 2.0 * len(shown)), squeeze=False)
    for row, r in enumerate(shown):
        views = sorted(r.views, key=lambda v: -v.best_view)
        for c in range(cols):
            ax = axes[row, c]
            ax.axis("off")
            if c >= len(views):
                continue
            v = views[c]
            img = _load(Path(v.image)) if Path(v.image).is_file() else None
            if img is not None:
                ax.imshow(img)
                if v.image == r.thumbnail:
                    h, w = img.shape[:2]
                    ax.add_patch(Rectangle((1, 1), w - 3, h - 3, fill=False, edgecolor=(0.1, 0.7, 0.2), linewidth=4))
            ax.set_title(f"best {v.best_view:.2f}", fontsize=7)
        axes[row, 0].text(-0.1, 0.5, f"{r.product}\n{r.footwear_type} {r.type_probability:.2f}", fontsize=8,
                          ha="right", va="center", transform=axes[row, 0].transAxes)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def render_poses(shots: Sequence[tuple[str, np.ndarray, object]], path: str | os.PathLike, visibility: float = 0.5,
                 cols: int = 3) -> Path:
    """A sheet of photos with their pose verdicts (``shots``: title, RGB image,
    :class:`~lookserve.client.pose.PoseVerdict`): per person its turned ROI, the skeleton between
    landmarks visible ≥ ``visibility`` and those landmarks as dots, the verdict in the title."""
    plt = _pyplot()
    from matplotlib.patches import Polygon

    shots = list(shots)
    if not shots:
        raise InvalidInputError("no photos to draw")
    rows = -(-len(shots) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (title, image, verdict) in enumerate(shots):
        ax = axes.ravel()[n]
        ax.imshow(image)
        for i, person in enumerate(verdict.persons):
            colour = COLOURS[i % len(COLOURS)]
            ax.add_patch(Polygon(person.roi.corners(), closed=True, fill=False, edgecolor=colour, linewidth=1, linestyle="--"))
            lm = person.landmarks
            seen = lm[:, 3] >= visibility
            for a, b in CONNECTIONS:
                if seen[a] and seen[b]:
                    ax.plot([lm[a, 0], lm[b, 0]], [lm[a, 1], lm[b, 1]], color=colour, linewidth=1.5)
            body = np.arange(len(lm)) < 33
            ax.scatter(lm[seen & body, 0], lm[seen & body, 1], s=6, color=colour, zorder=3)
            x1, y1 = (min(max(v, 0.0), hi) for v, hi in ((person.box[0], image.shape[1]), (person.box[1], image.shape[0])))
            ax.text(x1, y1, f"{i}: {person.kind}", color="white", fontsize=7, ha="left", va="bottom", clip_on=True,
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.set_title(f"{title}: {verdict.verdict} ({len(verdict.persons)} person{'s' if len(verdict.persons) != 1 else ''})",
                     fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


__all__ = ["overlay", "render_look", "render_poses", "render_thumbnails"]
