"""Unsupervised labelling of footwear views (seed 000): features → KMeans sweep → a labels file.

The steps, each a function (and a ``lookserve train views`` stage):

1. :func:`extract_features` — a feature vector per view image from a backbone:
   ``hog`` (OpenCV's histogram of oriented gradients on a 64×64 grey image — hand-crafted,
   colour-blind, layout-aware; the default because, with no pretrained CNN available, it clusters
   views best of those measured), ``random-cnn`` (the small CNN with random weights, a 2×2 grid of its last feature map — no
   pretrained weights exist here), ``embedder`` (the trained street2shop embedder's backbone,
   same grid) or ``histogram`` (per-channel colour histograms; layout-blind, a baseline).
2. :func:`sweep` — KMeans (scikit-learn) for every k in a range on standardised, PCA-reduced
   features; silhouette score and SSE (inertia) per k; :func:`plot_sweep` draws both curves
   (several backbones on one figure to compare them, as the original compared VGG16/ResNet50).
3. :func:`choose_k` — the k of the best silhouette score (or the one a person gives).
4. :func:`contact_sheets` — one PNG per cluster for a person to look at, plus a labels template.
5. A labels file (:func:`read_labels`): ``{"clusters": {"<c>": {"best_view": bool, "type": str|null}}}``,
   written by a person — or, for evaluation only, by :func:`name_from_ground_truth`, which says so
   in the file (``"named_by": "ground-truth (evaluation only)"``).
6. :func:`labels_for_images` — per image: best-view (from its cluster) and type (its cluster's, or
   propagated over the shoe's other views, whose folder is known).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from lookserve.data.footwear import ViewTruth, shoes_in_splits
from lookserve.data.footwear import read_ground_truth as read_ground_truth
from lookserve.errors import ConfigError, DataError, InvalidInputError
from lookserve.fsutil import atomic_output
from lookserve.taxonomy import FOOTWEAR_TYPES, VIEWS
from lookserve.training import embedder as E
from lookserve.training.common import (
    SERVED_SIZE,
    atomic_write_json,
    build_backbone,
    keras_module,
    pool_uint8,
    read_rgb,
    resize_square,
    set_seed,
)

log = logging.getLogger(__name__)

FEATURES = ("hog", "random-cnn", "embedder", "histogram")
GROUND_TRUTH_NAMING = "ground-truth (evaluation only)"


# --------------------------------------------------------------------------------------------
# data: DIR/footwear/views/<shoe>/<name>.jpg and DIR/footwear/ground_truth.json (read by
# lookserve.data.footwear, the one reader of that file: ViewTruth and read_ground_truth come from it)
# --------------------------------------------------------------------------------------------
@dataclass
class ViewImages:
    """The view images (uint8 [N, 224, 224, 3]) with their shoe ids and relative paths."""

    images: np.ndarray
    shoes: np.ndarray  # [N] str
    paths: list[str]  # relative to DIR/footwear


def list_view_files(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """(shoe id, path) of every view image, sorted (file names reveal nothing)."""
    views = Path(root) / "footwear" / "views"
    if not views.is_dir():
        raise DataError(f"{root} has no footwear views: {views} is missing")
    out = [(p.parent.name, p) for p in sorted(views.glob("*/*.jpg"))]
    if not out:
        raise DataError(f"no view images under {views}")
    return out


def _rel_key(path: str) -> str:
    """Normalise an image path to ``views/<shoe>/<name>.jpg``."""
    parts = Path(path).parts
    if "views" in parts:
        parts = parts[parts.index("views") :]
    else:
        parts = ("views", *parts[-2:])
    return "/".join(parts)


def load_view_images(root: str | os.PathLike, shoes: set[str] | None = None) -> ViewImages:
    from tqdm import tqdm

    files = [(s, p) for s, p in list_view_files(root) if shoes is None or s in shoes]
    if not files:
        raise DataError(f"no view images of the requested shoes under {root}")
    imgs = [resize_square(read_rgb(p), SERVED_SIZE) for _, p in tqdm(files, desc="loading views", unit="img", leave=False)]
    return ViewImages(np.stack(imgs), np.array([s for s, _ in files]), [_rel_key(str(p)) for _, p in files])


def shoes_in_split(root: str | os.PathLike, split: str | tuple[str, ...]) -> set[str]:
    """Shoe ids of a split — read from the ground truth, which tells only the split here."""
    return shoes_in_splits(root, split)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def hog_features(images: np.ndarray, side: int = 64) -> np.ndarray:
    """OpenCV HOG (16×16 blocks, 8×8 stride and cells, 9 bins) of the grey image at ``side`` px."""

    hog = cv2.HOGDescriptor((side, side), (16, 16), (8, 8), (8, 8), 9)
    return np.array(
        [hog.compute(cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (side, side), interpolation=cv2.INTER_AREA)).ravel() for im in images],
        np.float32,
    )


def histogram_features(images: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel colour histograms (L1-normalised), [N, 3·bins]."""
    n = len(images)
    out = np.zeros((n, 3 * bins), np.float32)
    for i, im in enumerate(images):
        for c in range(3):
            h = np.bincount(im[..., c].ravel() // (256 // bins), minlength=bins)[:bins]
            out[i, c * bins : (c + 1) * bins] = h
    return out / out.sum(axis=1, keepdims=True).clip(1)


def cnn_features(images: np.ndarray, backbone_model, internal_size: int, batch_size: int = 64) -> np.ndarray:
    """Backbone features of uint8 [N, 224, 224, 3] images (pooled to ``internal_size``)."""
    factor = SERVED_SIZE // internal_size
    out = []
    for i in range(0, len(images), batch_size):
        x = pool_uint8(images[i : i + batch_size], factor).astype(np.float32)
        out.append(np.asarray(backbone_model(x, training=False)))
    return np.concatenate(out)


def extract_features(images: np.ndarray, kind: str, seed: int = 0, embedder_weights: str | os.PathLike | None = None) -> np.ndarray:
    """Feature vectors of the view images from backbone ``kind`` (see module doc)."""
    if kind not in FEATURES:
        raise ConfigError(f"unknown feature backbone {kind!r}; expected one of {', '.join(FEATURES)}")
    if kind == "histogram":
        return histogram_features(images)
    if kind == "hog":
        return hog_features(images)

    keras = keras_module()
    if kind == "random-cnn":
        set_seed(seed)
        bb = build_backbone("small", 112, width=32, spatial_pool=2, prefix="rnd")
        return cnn_features(images, bb, 112)
    if embedder_weights is None:
        raise ConfigError("feature backbone 'embedder' needs the embedder weights directory")

    model = E.load_model(embedder_weights)
    cfg = E.load_config(embedder_weights)
    bb = E.core_of(model).get_layer(f"emb_{cfg.backbone}")
    last = bb.layers[-2].output  # the last feature map, before global pooling
    size = last.shape[1]
    grid = keras.layers.AveragePooling2D(max(1, size // 2))(last)
    feat = keras.Model(bb.input, keras.layers.Flatten()(grid))
    return cnn_features(images, feat, cfg.internal_size)


# --------------------------------------------------------------------------------------------
# KMeans sweep
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sweep:
    ks: tuple[int, ...]
    silhouette: tuple[float, ...]
    sse: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "silhouette": list(self.silhouette), "sse": list(self.sse)}


def reduce_features(features: np.ndarray, seed: int = 0, dims: int = 8):
    """Standardise and PCA-reduce; returns (reduced features, fitted sklearn pipeline)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if features.ndim != 2 or len(features) < 3:
        raise InvalidInputError(f"need a 2-D feature matrix with at least 3 rows, got {features.shape}")
    dims = min(dims, features.shape[1], len(features) - 1)
    pipe = make_pipeline(StandardScaler(), PCA(n_components=dims, random_state=seed))
    return pipe.fit_transform(features).astype(np.float32), pipe


def kmeans(x: np.ndarray, k: int, seed: int = 0):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, random_state=seed, n_init=4).fit(x)


def sweep(x: np.ndarray, ks: range | list[int], seed: int = 0, progress: bool = True) -> Sweep:
    """KMeans for every k: silhouette score (Euclidean) and SSE (inertia)."""
    from sklearn.metrics import silhouette_score
    from tqdm import tqdm

    ks = [k for k in ks if 2 <= k < len(x)]
    if not ks:
        raise InvalidInputError(f"no k in range for {len(x)} samples (need 2 <= k < n)")
    sil, sse = [], []
    for k in tqdm(ks, desc="kmeans sweep", unit="k", disable=not progress, leave=False):
        km = kmeans(x, k, seed)
        sil.append(float(silhouette_score(x, km.labels_, metric="euclidean")))
        sse.append(float(km.inertia_))
    return Sweep(tuple(ks), tuple(sil), tuple(sse))


K_RULES = ("silhouette", "elbow")


def elbow_k(s: Sweep) -> int:
    """The elbow of the SSE curve: the k farthest below the chord from the first to the last
    point, both axes scaled to [0, 1] (the "kneedle" rule)."""
    if len(s.ks) < 3:
        return s.ks[0]
    k = np.asarray(s.ks, np.float64)
    e = np.asarray(s.sse, np.float64)
    kx = (k - k[0]) / (k[-1] - k[0])
    ey = (e - e.min()) / max(e.max() - e.min(), 1e-12)
    chord = ey[0] + (ey[-1] - ey[0]) * kx
    return s.ks[int(np.argmax(chord - ey))]


def choose_k(s: Sweep, rule: str = "silhouette") -> int:
    """``silhouette``: the k with the highest silhouette score (ties: the smaller k);
    ``elbow``: the elbow of the SSE curve (:func:`elbow_k`)."""
    if rule == "silhouette":
        return s.ks[int(np.argmax(s.silhouette))]
    if rule == "elbow":
        return elbow_k(s)
    raise ConfigError(f"unknown k rule {rule!r}; expected one of {', '.join(K_RULES)}")


def plot_sweep(sweeps: dict[str, Sweep], path: str | os.PathLike, chosen: dict[str, int] | None = None) -> Path:
    """Silhouette and SSE (elbow) curves per backbone, side by side, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in sweeps.items():
        ax1.plot(s.ks, s.silhouette, marker="o", label=name)
        sse = np.asarray(s.sse)
        ax2.plot(s.ks, sse / sse[0], marker="o", label=name)
        if chosen and name in chosen:
            ax1.axvline(chosen[name], ls=":", color=ax1.lines[-1].get_color())
    ax1.set(xlabel="k", ylabel="silhouette score", title="silhouette per k")
    ax2.set(xlabel="k", ylabel="SSE / SSE(k_min)", title="SSE (elbow) per k")
    ax1.legend(), ax2.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def purity(clusters: np.ndarray, truth: np.ndarray) -> float:
    """Cluster purity: Σ_clusters max_class |cluster ∩ class| / N."""
    if len(clusters) != len(truth) or len(clusters) == 0:
        raise InvalidInputError(f"purity needs equal, non-empty label arrays ({len(clusters)} vs {len(truth)})")
    total = 0
    for c in np.unique(clusters):
        total += Counter(truth[clusters == c].tolist()).most_common(1)[0][1]
    return total / len(clusters)


# --------------------------------------------------------------------------------------------
# contact sheets and labels
# --------------------------------------------------------------------------------------------
def contact_sheets(
    images: np.ndarray, clusters: np.ndarray, out_dir: str | os.PathLike, per_sheet: int = 30, thumb: int = 96, seed: int = 0
) -> list[Path]:
    """One PNG per cluster (a sample of its images) and ``labels_template.json`` to fill in."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cols = 6
    paths = []
    template = {}
    for c in sorted(np.unique(clusters).tolist()):
        idx = np.flatnonzero(clusters == c)
        pick = rng.choice(idx, size=min(per_sheet, len(idx)), replace=False)
        rows = (len(pick) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * thumb, rows * thumb + 20), "white")
        ImageDraw.Draw(sheet).text((4, 4), f"cluster {c}: {len(idx)} images", fill="black")
        for j, i in enumerate(pick):
            im = Image.fromarray(images[i]).resize((thumb, thumb))
            sheet.paste(im, ((j % cols) * thumb, 20 + (j // cols) * thumb))
        p = out / f"cluster_{c:02d}.png"
        with atomic_output(p) as tmp:
            sheet.save(tmp)
        paths.append(p)
        template[str(c)] = {"best_view": None, "type": None, "size": int(len(idx))}
    atomic_write_json(
        out / "labels_template.json",
        {
            "named_by": "person",
            "instructions": "For each cluster set best_view to true/false and type to one of "
            + ", ".join(FOOTWEAR_TYPES)
            + " or null when the cluster mixes types; save as labels.json.",
            "clusters": template,
        },
    )
    return paths


@dataclass(frozen=True)
class ClusterLabel:
    """A person's name for one cluster: best view or not, its type when the cluster is type-pure,
    and optionally a per-footwear-type best-view answer (``best_by_type``: ((type, bool), ...)),
    as the original named clusters "best view" / "not best view" per footwear type."""

    best_view: bool
    type: str | None
    best_by_type: tuple[tuple[str, bool], ...] = ()

    def best_for(self, type_index: int) -> bool:
        """Best view for a shoe of type ``type_index`` (−1 = unknown: the cluster's answer)."""
        if type_index >= 0:
            for t, b in self.best_by_type:
                if t == FOOTWEAR_TYPES[type_index]:
                    return b
        return self.best_view


@dataclass(frozen=True)
class LabelsDoc:
    """A labels file: cluster names, who named them, and the footwear types whose best view is
    only the view that shows their closure (``closure_types``: one best view per shoe, picked by
    the classifier's own type head among the views its cluster names call best; see
    :func:`lookserve.training.views.closure_relabel`)."""

    labels: dict[int, ClusterLabel]
    named_by: str
    closure_types: tuple[str, ...] = ()


def read_labels(path: str | os.PathLike) -> tuple[dict[int, ClusterLabel], str]:
    """A labels file → ({cluster: ClusterLabel}, named_by); every problem named."""
    doc = read_labels_doc(path)
    return doc.labels, doc.named_by


def read_labels_doc(path: str | os.PathLike) -> LabelsDoc:
    """A labels file → :class:`LabelsDoc`. Besides ``best_view`` and ``type`` a cluster may carry
    ``best_view_by_type`` ({type: bool}); the file may list ``closure_types``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"labels file {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"labels file {path} is not valid JSON: {e}") from e
    clusters = doc.get("clusters") if isinstance(doc, dict) else None
    if not isinstance(clusters, dict) or not clusters:
        raise ConfigError(f"labels file {path} needs a non-empty 'clusters' object")
    out: dict[int, ClusterLabel] = {}
    for key, v in clusters.items():
        try:
            c = int(key)
        except ValueError as e:
            raise ConfigError(f"labels file {path}: cluster key {key!r} is not an integer") from e
        if not isinstance(v, dict) or not isinstance(v.get("best_view"), bool):
            raise ConfigError(f"labels file {path}: cluster {key} needs best_view true or false")
        t = v.get("type")
        if t is not None and t not in FOOTWEAR_TYPES:
            raise ConfigError(f"labels file {path}: cluster {key} has type {t!r}; expected one of {', '.join(FOOTWEAR_TYPES)} or null")
        by_type = v.get("best_view_by_type") or {}
        if not isinstance(by_type, dict) or any(
            k not in FOOTWEAR_TYPES or not isinstance(b, bool) for k, b in by_type.items()
        ):
            raise ConfigError(
                f"labels file {path}: cluster {key} best_view_by_type must map types ({', '.join(FOOTWEAR_TYPES)}) to true/false"
            )
        out[c] = ClusterLabel(v["best_view"], t, tuple(sorted(by_type.items())))
    closure = doc.get("closure_types") or []
    if not isinstance(closure, list) or any(t not in FOOTWEAR_TYPES for t in closure):
        raise ConfigError(f"labels file {path}: closure_types must be a list of types from {', '.join(FOOTWEAR_TYPES)}")
    return LabelsDoc(out, str(doc.get("named_by", "person")), tuple(closure))


def name_from_ground_truth(
    clusters: np.ndarray, truths: list[ViewTruth], type_purity: float = 0.8
) -> dict[int, ClusterLabel]:
    """FOR EVALUATION ONLY: name each cluster from the generated ground truth, as a person looking
    at its contact sheet would: best view when most members are best views; its type when at least
    ``type_purity`` of its members share one type, else null."""
    out = {}
    for c in sorted(np.unique(clusters).tolist()):
        members = [truths[i] for i in np.flatnonzero(clusters == c)]
        best = sum(t.best for t in members) * 2 > len(members)
        t, n = Counter(t.type for t in members).most_common(1)[0]
        out[int(c)] = ClusterLabel(best, t if n >= type_purity * len(members) else None)
    return out


def name_from_ground_truth_by_type(
    clusters: np.ndarray, truths: list[ViewTruth], type_purity: float = 0.8, min_members: int = 3, ambiguous: float = 0.25
) -> LabelsDoc:
    """FOR EVALUATION ONLY: as :func:`name_from_ground_truth`, plus a best-view answer per
    footwear type in each cluster (from the members of that type, when at least ``min_members``)
    — what a person naming "best view" per footwear type would write. A (cluster, type) whose
    members are neither mostly best nor mostly not (best fraction within ``ambiguous`` of 0.5,
    e.g. the side views of zip shoes: only the side showing the zip is best) is named best and its
    type listed in ``closure_types``: one best view per such shoe, the one showing the closure —
    but only when the cluster's other types are clearly named (a cluster that mixes views is
    ambiguous for every type, and that is no property of one type)."""
    base = name_from_ground_truth(clusters, truths, type_purity)
    out: dict[int, ClusterLabel] = {}
    closure: set[str] = set()
    for c, lab in base.items():
        members = [truths[i] for i in np.flatnonzero(clusters == c)]
        by_type = {}
        for t in FOOTWEAR_TYPES:
            mt = [m for m in members if m.type == t]
            others = [m for m in members if m.type != t]
            if len(mt) < min_members:
                continue
            frac = sum(m.best for m in mt) / len(mt)
            frac_others = sum(m.best for m in others) / len(others) if others else 0.5
            if abs(frac - 0.5) < ambiguous and abs(frac_others - 0.5) >= ambiguous:
                closure.add(t)
                b = True
            else:
                b = frac > 0.5
            if b != lab.best_view:
                by_type[t] = b
        out[c] = ClusterLabel(lab.best_view, lab.type, tuple(sorted(by_type.items())))
    return LabelsDoc(out, GROUND_TRUTH_NAMING, tuple(t for t in FOOTWEAR_TYPES if t in closure))


def write_labels(
    path: str | os.PathLike, labels: dict[int, ClusterLabel], named_by: str, k: int, features: str,
    closure_types: tuple[str, ...] = (),
) -> Path:
    path = Path(path)
    clusters = {}
    for c, lab in sorted(labels.items()):
        clusters[str(c)] = {"best_view": lab.best_view, "type": lab.type}
        if lab.best_by_type:
            clusters[str(c)]["best_view_by_type"] = dict(lab.best_by_type)
    doc = {"named_by": named_by, "k": k, "features": features, "clusters": clusters}
    if closure_types:
        doc["closure_types"] = list(closure_types)
    atomic_write_json(path, doc)
    return path


def best_targets(clusters: np.ndarray, types: np.ndarray, labels: dict[int, ClusterLabel]) -> np.ndarray:
    """Per image best-view target (0/1) from its cluster's name for its shoe's type (−1: the cluster's)."""
    missing = sorted(set(np.unique(clusters).tolist()) - set(labels))
    if missing:
        raise ConfigError(f"the labels file does not name clusters {missing}")
    return np.array([1.0 if labels[int(c)].best_for(int(t)) else 0.0 for c, t in zip(clusters, types, strict=True)], np.float32)


def labels_for_images(clusters: np.ndarray, shoes: np.ndarray, labels: dict[int, ClusterLabel]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: best-view target (0/1) and type index (−1 when unknown).

    The type comes from the image's cluster, or — since all views of one shoe share its type and
    the folder names the shoe — from the majority type of the shoe's typed views.
    """
    missing = sorted(set(np.unique(clusters).tolist()) - set(labels))
    if missing:
        raise ConfigError(f"the labels file does not name clusters {missing}")
    best = np.array([1.0 if labels[int(c)].best_view else 0.0 for c in clusters], np.float32)
    votes: dict[str, Counter] = defaultdict(Counter)
    for c, s in zip(clusters.tolist(), shoes.tolist(), strict=True):
        t = labels[int(c)].type
        if t is not None:
            votes[s][t] += 1
    types = np.array(
        [FOOTWEAR_TYPES.index(votes[s].most_common(1)[0][0]) if votes[s] else -1 for s in shoes.tolist()], np.int32
    )
    return best, types


def view_index(truths: list[ViewTruth]) -> np.ndarray:
    return np.array([VIEWS.index(t.view) if t.view in VIEWS else -1 for t in truths])
