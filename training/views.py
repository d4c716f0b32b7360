"""The footwear view classifier (seed 000), trained from unsupervised cluster labels.

Served model: ``images`` UINT8 [B, 224, 224, 3] → ``{"type_probs": [B, 6] (softmax over
FOOTWEAR_TYPES), "best_view": [B, 1] (sigmoid)}``. A small CNN at 112 px by default
(``--size large``: ResNet50 at 224 px, random init, for GPU).

:func:`run` is the whole job: features of the train-split view images → KMeans sweep with
silhouette/SSE plot (and the comparison backbones' curves) → chosen k → contact sheets → a
labels file (a person's, or — evaluation only — one named from the generated ground truth) →
per-image targets → the classifier → held-out figures (:func:`evaluate`).

No flips are used in augmentation: a mirrored left view IS a right view.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lookserve.errors import ConfigError, DataError
from lookserve.taxonomy import FOOTWEAR_TYPES
from lookserve.training import clustering as C
from lookserve.training.common import (
    SERVED_SIZE,
    AugmentConfig,
    atomic_write_json,
    augment_batch,
    build_backbone,
    dataclass_from_dict,
    dataclass_to_dict,
    keras_module,
    pool_uint8,
    pooling_factor,
    read_config,
    save_weights,
    served_front,
    set_seed,
    warm_start,
)

log = logging.getLogger(__name__)

KIND = "view_classifier"
SIZES = ("small", "large")


def _no_flip_augment() -> AugmentConfig:
    return AugmentConfig(dropout=0.01, blur_sigma=1.0, hflip=0.0, vflip=0.0, equalize=0.3, channel_shuffle=0.8)


@dataclass(frozen=True)
class ViewConfig:
    backbone: str = "small"
    width: int = 24
    internal_size: int = 112
    batch_size: int = 32
    steps: int = 400
    lr1: float = 2e-3
    lr2: float = 5e-4
    stage1_fraction: float = 0.6
    augment: AugmentConfig = field(default_factory=_no_flip_augment)
    #: filters of a learned stride-2 stem (0: none). With ``internal_size`` 224 the network sees
    #: the full-resolution image (closure details survive) at about the cost of 112 px stages.
    stem: int = 0
    #: when the labels name ``closure_types``: the fraction of the steps after which each such
    #: shoe keeps one best view, the one its type head is surest of (:func:`closure_relabel`)
    relabel_fraction: float = 0.5

    def __post_init__(self) -> None:
        pooling_factor(self.internal_size)
        if self.stem < 0:
            raise ConfigError(f"stem must be >= 0, got {self.stem}")
        if not 0.0 < self.relabel_fraction < 1.0:
            raise ConfigError(f"relabel_fraction must be in (0, 1), got {self.relabel_fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.augment.hflip or self.augment.vflip:
            raise ConfigError("the view classifier must not flip images: a mirrored left view is a right view")

    @classmethod
    def preset(cls, size: str, **overrides: Any) -> ViewConfig:
        if size == "small":
            base = cls()
        elif size == "large":
            base = cls(backbone="resnet50", internal_size=224, lr1=1e-4, lr2=5e-5, steps=3000)
        else:
            raise ConfigError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewConfig:
        return dataclass_from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def build_core(config: ViewConfig):
    keras = keras_module()
    from keras import layers

    bb = build_backbone(
        config.backbone, config.internal_size, width=config.width, spatial_pool=2, prefix="view", stem=config.stem
    )
    inp = keras.Input((config.internal_size, config.internal_size, 3), dtype="float32", name="pooled")
    x = bb(inp)
    x = layers.Dropout(0.3, name="view_dropout")(x)
    x = layers.Dense(64, activation="relu", name="view_hidden")(x)
    t = layers.Dense(len(FOOTWEAR_TYPES), activation="softmax", name="type_probs")(x)
    b = layers.Dense(1, activation="sigmoid", name="best_view")(x)
    return keras.Model(inp, {"type_probs": t, "best_view": b}, name="view_core")


def build_model(config: ViewConfig | None = None):
    """``images`` UINT8 [B, 224, 224, 3] → ``{"type_probs": [B, 6], "best_view": [B, 1]}``."""
    keras = keras_module()
    config = config or ViewConfig()
    inp, x = served_front(config.internal_size, "images")
    out = build_core(config)(x)
    return keras.Model(inp, {"type_probs": out["type_probs"], "best_view": out["best_view"]}, name="view_classifier")


def core_of(model):
    return model.get_layer("view_core")


def load_config(weights_dir: str | os.PathLike) -> ViewConfig:
    return ViewConfig.from_dict(read_config(weights_dir, KIND))


def load_model(weights_dir: str | os.PathLike):
    model = build_model(load_config(weights_dir))
    model.load_weights(str(Path(weights_dir) / "model.weights.h5"))
    return model


def _masked_ce_class():
    keras = keras_module()

    class MaskedSparseCE(keras.losses.Loss):
        """Sparse categorical cross-entropy; targets < 0 (type unknown) contribute nothing."""

        def call(self, y_true, y_pred):
            from keras import ops

            y = ops.reshape(ops.cast(y_true, "int32"), (-1,))
            mask = ops.cast(ops.greater_equal(y, 0), y_pred.dtype)
            ce = keras.losses.sparse_categorical_crossentropy(ops.maximum(y, 0), y_pred)
            return ce * mask

    return MaskedSparseCE


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    model: Any
    config: ViewConfig
    history: dict[str, list[float]]
    seconds: float
    steps: int


def train(
    images: np.ndarray,
    best: np.ndarray,
    types: np.ndarray,
    config: ViewConfig,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    relabel: Callable[[Any, np.ndarray], np.ndarray] | None = None,
    init_weights: str | os.PathLike | None = None,
) -> TrainResult:
    """Train on uint8 [N, 224, 224, 3] images (or already pooled to ``internal_size``) with
    best-view targets (0/1) and type indices (−1 = unknown).

    ``relabel(core, images)`` → new best-view targets, called once after
    ``config.relabel_fraction`` of the steps (see :func:`closure_relabel`). ``init_weights``: a
    weights directory of the same architecture to continue from (fresh optimizer and schedule)."""
    keras = keras_module()

    if not (len(images) == len(best) == len(types)) or len(images) == 0:
        raise DataError(f"need equal, non-empty images/targets, got {len(images)}, {len(best)}, {len(types)}")
    set_seed(seed)
    if images.shape[1] == SERVED_SIZE and config.internal_size != SERVED_SIZE:
        images = pool_uint8(images, pooling_factor(config.internal_size))
    model = build_model(config)
    if init_weights is not None:
        warm_start(model, config, load_config(init_weights), init_weights, ("backbone", "width", "internal_size", "stem"))
    core = core_of(model)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [max(1, int(config.steps * config.stage1_fraction))], [config.lr1, config.lr2]
    )
    core.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss={"type_probs": _masked_ce_class()(), "best_view": keras.losses.BinaryCrossentropy()},
    )
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"loss": []}
    t0 = time.monotonic()
    steps = 0
    relabel_at = max(1, int(config.steps * config.relabel_fraction)) if relabel is not None else -1
    best = np.asarray(best, np.float32)
    with Progress(
        TextColumn("[bold]view classifier[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task("", total=config.steps)
        for _ in range(config.steps):
            idx = rng.choice(len(images), size=min(config.batch_size, len(images)), replace=False)
            x = augment_batch(images[idx], config.augment, rng).astype(np.float32)
            logs = core.train_on_batch(
                x, {"type_probs": types[idx].astype(np.float32), "best_view": best[idx].reshape(-1, 1)}, return_dict=True
            )
            history["loss"].append(float(logs["loss"]))
            steps += 1
            if steps % 10 == 0:
                bar.update(task, description=f"loss {np.mean(history['loss'][-50:]):.4f}")
                log.info("step %d/%d loss %.4f", steps, config.steps, float(np.mean(history["loss"][-50:])))
            bar.advance(task)
            if steps == relabel_at or (
                relabel is not None and relabel_at > steps and max_seconds is not None
                and time.monotonic() - t0 > config.relabel_fraction * max_seconds
            ):
                new = np.asarray(relabel(core, images), np.float32)
                log.info("relabelled after %d steps: %d best-view targets changed", steps, int((new != best).sum()))
                best, relabel_at = new, -1
                history["relabel_step"] = [float(steps)]
            if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                log.warning("time budget %.0f s reached after %d of %d steps", max_seconds, steps, config.steps)
                break
    return TrainResult(model, config, history, time.monotonic() - t0, steps)


def closure_relabel(
    core, images: np.ndarray, best: np.ndarray, types: np.ndarray, shoes: np.ndarray, closure_types: tuple[str, ...],
    batch_size: int = 64,
) -> np.ndarray:
    """For shoes of a type whose best view is only the view showing its closure (a zip shows on
    one side only): among the shoe's views that its labels call best, keep best = 1 only on the
    one where the classifier's type head gives the shoe's (catalogue) type the highest
    probability — the view on which the closure is seen. Other shoes keep their targets."""
    idx_types = {FOOTWEAR_TYPES.index(t) for t in closure_types}
    cand = np.flatnonzero((best > 0.5) & np.isin(types, list(idx_types)))
    out = best.copy()
    if len(cand) == 0:
        return out
    probs = []
    for i in range(0, len(cand), batch_size):
        chunk = images[cand[i : i + batch_size]].astype(np.float32)
        probs.append(np.asarray(core(chunk, training=False)["type_probs"]))
    p = np.concatenate(probs)[np.arange(len(cand)), types[cand]]
    by_shoe: dict[str, list[int]] = {}
    for j, i in enumerate(cand.tolist()):
        by_shoe.setdefault(str(shoes[i]), []).append(j)
    for js in by_shoe.values():
        keep = js[int(np.argmax(p[js]))]
        for j in js:
            out[cand[j]] = 1.0 if j == keep else 0.0
    return out


def predict(model, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(type_probs [N, 6], best_view [N]) for uint8 [N, 224, 224, 3]."""
    tp, bv = [], []
    for i in range(0, len(images), batch_size):
        out = model(images[i : i + batch_size], training=False)
        tp.append(np.asarray(out["type_probs"]))
        bv.append(np.asarray(out["best_view"]).reshape(-1))
    return np.concatenate(tp), np.concatenate(bv)


@dataclass(frozen=True)
class ViewScores:
    images: int
    shoes: int
    type_accuracy: float  # per image
    type_accuracy_shoe: float  # mean of the shoe's views' probabilities (the thumbnail client's rule)
    best_view_accuracy: float  # per image, threshold 0.5
    thumbnail_accuracy: float  # per shoe: argmax best_view is a true best view
    #: per shoe: argmax of the SUM of the views' log-probabilities (independent views' evidence)
    type_accuracy_shoe_logsum: float = float("nan")
    #: per image, on the views that show a type cue (not the sole; the back only for back-strap)
    type_accuracy_cue_views: float = float("nan")


def score_predictions(type_probs: np.ndarray, best_prob: np.ndarray, shoes: np.ndarray, truths: list[C.ViewTruth]) -> ViewScores:
    true_type = np.array([FOOTWEAR_TYPES.index(t.type) for t in truths])
    true_best = np.array([t.best for t in truths])
    type_acc = float(np.mean(type_probs.argmax(1) == true_type))
    best_acc = float(np.mean((best_prob >= 0.5) == true_best))
    shoe_ids = sorted(set(shoes.tolist()))
    thumb_hits, shoe_type_hits, logsum_hits = 0, 0, 0
    logp = np.log(np.clip(type_probs, 1e-12, 1.0))
    for s in shoe_ids:
        m = np.flatnonzero(shoes == s)
        thumb_hits += bool(true_best[m[np.argmax(best_prob[m])]])
        shoe_type_hits += int(type_probs[m].mean(0).argmax() == true_type[m[0]])
        logsum_hits += int(logp[m].sum(0).argmax() == true_type[m[0]])
    n = len(shoe_ids)
    cue = np.array([shows_type_cue(t) for t in truths], bool)
    cue_acc = float(np.mean(type_probs.argmax(1)[cue] == true_type[cue])) if cue.any() else float("nan")
    return ViewScores(len(shoes), n, type_acc, shoe_type_hits / n, best_acc, thumb_hits / n, logsum_hits / n, cue_acc)


def shows_type_cue(t: C.ViewTruth) -> bool:
    """Whether a view can show its shoe's type at all (generated data's rule; for the report):
    never the sole; the back only for back-strap shoes; a zip only on its best side."""
    if t.view == "sole":
        return False
    if t.view == "back":
        return t.type == "back-strap"
    if t.type == "zip":
        return t.best
    return not (t.view == "front" and t.type == "back-strap")


def product_type(type_probs: np.ndarray) -> int:
    """A product's type from its views' ``type_probs`` [V, 6]: argmax of the summed log-probabilities."""
    return int(np.log(np.clip(np.asarray(type_probs, np.float64), 1e-12, 1.0)).sum(0).argmax())


# --------------------------------------------------------------------------------------------
# the whole job
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabellingResult:
    features: str
    k: int
    sweeps: dict[str, C.Sweep]
    labels: dict[int, C.ClusterLabel] | None
    named_by: str | None
    train_purity: float | None  # against the true view (ground truth read for the report only)
    heldout_purity: float | None
    plot: Path
    sheets_dir: Path
    compared: dict[str, dict[str, float]] = field(default_factory=dict)
    closure_types: tuple[str, ...] = ()


def label_views(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    features: str = "hog",
    compare: tuple[str, ...] = (),
    k_range: tuple[int, int] = (2, 20),
    k: int | None = None,
    labels_file: str | os.PathLike | None = None,
    name_from_ground_truth: bool = False,
    embedder_weights: str | os.PathLike | None = None,
    train_views: C.ViewImages | None = None,
    test_views: C.ViewImages | None = None,
    k_rule: str = "silhouette",
    pca_dims: int = 8,
    by_type: bool = True,
) -> tuple[LabellingResult, np.ndarray]:
    """Clustering stages (1–5 of the module doc) on the train split; returns the result and the
    cluster of every train image. Purity against the true view is computed for the report.
    ``test_views``: the held-out images whose view purity is reported (the val split while
    choosing between runs). ``by_type``: the ground-truth naming (evaluation only) also names
    best views per footwear type, as a person naming the clusters per type would."""
    import joblib

    out = Path(out_dir)
    truth = C.read_ground_truth(root)
    tr = train_views or C.load_view_images(root, C.shoes_in_split(root, "train"))
    feats = C.extract_features(tr.images, features, seed, embedder_weights)
    x, pipe = C.reduce_features(feats, seed, pca_dims)
    sweeps = {features: C.sweep(x, range(k_range[0], k_range[1] + 1), seed)}
    chosen = k or C.choose_k(sweeps[features], k_rule)
    tr_truth = [truth[p] for p in tr.paths]
    compared: dict[str, dict[str, float]] = {}
    for other in compare:
        if other == features:
            continue
        fo = C.extract_features(tr.images, other, seed, embedder_weights)
        xo = C.reduce_features(fo, seed, pca_dims)[0]
        sweeps[other] = C.sweep(xo, range(k_range[0], k_range[1] + 1), seed)
        own_k = C.choose_k(sweeps[other], k_rule)
        # purity against the true view (ground truth read for this comparison only)
        compared[other] = {
            "own_k": own_k,
            "view_purity_at_own_k": C.purity(C.kmeans(xo, own_k, seed).labels_, C.view_index(tr_truth)),
            f"view_purity_at_k{chosen}": C.purity(C.kmeans(xo, chosen, seed).labels_, C.view_index(tr_truth)),
        }
    plot = C.plot_sweep(sweeps, out / "clustering" / "silhouette_sse.png", {features: chosen})
    km = C.kmeans(x, chosen, seed)
    clusters = km.labels_
    sheets = out / "clustering" / "sheets"
    C.contact_sheets(tr.images, clusters, sheets, seed=seed)
    joblib.dump({"pipe": pipe, "kmeans": km, "features": features, "seed": seed}, out / "clustering" / "kmeans.joblib")
    atomic_write_json(out / "clustering" / "sweeps.json", {"chosen_k": chosen, "features": features, "sweeps": {n: s.to_dict() for n, s in sweeps.items()}})
    train_purity = C.purity(clusters, C.view_index(tr_truth))
    heldout_purity = None
    te = test_views
    if te is not None:
        fte = C.extract_features(te.images, features, seed, embedder_weights)
        heldout_purity = C.purity(km.predict(pipe.transform(fte).astype(np.float32)), C.view_index([truth[p] for p in te.paths]))
    labels, named_by, closure = None, None, ()
    if labels_file is not None:
        doc = C.read_labels_doc(labels_file)
        labels, named_by, closure = doc.labels, doc.named_by, doc.closure_types
    elif name_from_ground_truth:
        if by_type:
            doc = C.name_from_ground_truth_by_type(clusters, tr_truth)
            labels, closure = doc.labels, doc.closure_types
        else:
            labels = C.name_from_ground_truth(clusters, tr_truth)
        named_by = C.GROUND_TRUTH_NAMING
        log.warning("clusters named from the generated ground truth — for evaluation only")
        C.write_labels(out / "clustering" / "labels.json", labels, named_by, chosen, features, closure)
    res = LabellingResult(
        features, chosen, sweeps, labels, named_by, train_purity, heldout_purity, plot, sheets, compared, closure
    )
    return res, clusters


def run(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ViewConfig,
    seed: int = 0,
    features: str = "hog",
    compare: tuple[str, ...] = (),
    k_range: tuple[int, int] = (2, 20),
    k: int | None = None,
    labels_file: str | os.PathLike | None = None,
    name_from_ground_truth: bool = False,
    embedder_weights: str | os.PathLike | None = None,
    max_seconds: float | None = None,
    k_rule: str = "silhouette",
    pca_dims: int = 8,
    types_from: str = "catalogue",
    eval_split: str = "val",
    by_type: bool = True,
    init_weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The whole job. Without a labels file (and without the ground-truth option) it stops after
    the contact sheets: a person names the clusters, then runs it again with ``labels_file``.

    ``types_from``: ``catalogue`` — the footwear type of each shoe is catalogue metadata, as in
    the original (its supplier CSV had a class column and clustering only found the views); here it
    is read from the per-shoe ``type`` of the data set's ground truth of the TRAIN split.
    ``clusters`` — only the types that the labels file gives clusters (propagated over each
    shoe's views); unknown types are masked out of the loss.

    ``eval_split``: the held-out split whose figures the report gives — ``val`` (default) to
    choose between runs; the test split is for :func:`evaluate` of the chosen weights only."""
    if types_from not in ("catalogue", "clusters"):
        raise ConfigError(f"types_from must be 'catalogue' or 'clusters', got {types_from!r}")
    if eval_split not in ("val", "test"):
        raise ConfigError(f"eval_split must be 'val' or 'test', got {eval_split!r}")
    out = Path(out_dir)
    t0 = time.monotonic()
    tr = C.load_view_images(root, C.shoes_in_split(root, "train"))
    te = C.load_view_images(root, C.shoes_in_split(root, eval_split))
    lab, clusters = label_views(
        root, out, seed, features, compare, k_range, k, labels_file, name_from_ground_truth, embedder_weights, tr, te, k_rule,
        pca_dims, by_type,
    )
    report: dict[str, Any] = {
        "features": lab.features,
        "pca_dims": pca_dims,
        "k": lab.k,
        "k_rule": "given" if k else k_rule,
        "silhouette_at_k": {n: dict(zip(s.ks, s.silhouette, strict=True)).get(lab.k) for n, s in lab.sweeps.items()},
        "best_silhouette": {n: max(s.silhouette) for n, s in lab.sweeps.items()},
        "train_view_purity": lab.train_purity,
        **{f"compare.{n}": v for n, v in lab.compared.items()},
        "heldout_view_purity": lab.heldout_purity,
        "plot": str(lab.plot),
        "sheets": str(lab.sheets_dir),
        "named_by": lab.named_by,
        "heldout_split": eval_split,
        "closure_types": list(lab.closure_types),
    }
    if lab.labels is None:
        report["next"] = f"name the clusters in {lab.sheets_dir}/labels_template.json, save it as labels.json and rerun with --labels"
        return report
    if len(set(lab.labels)) != lab.k:
        raise ConfigError(f"the labels file names {len(lab.labels)} clusters but k = {lab.k}; pass --k {len(lab.labels)}")
    _, types = C.labels_for_images(clusters, tr.shoes, lab.labels)
    report["types_from"] = types_from
    if types_from == "catalogue":
        truth_tr = C.read_ground_truth(root)
        types = np.array([FOOTWEAR_TYPES.index(truth_tr[p].type) for p in tr.paths], np.int32)
    best = C.best_targets(clusters, types, lab.labels)
    report["train_images"] = int(len(best))
    report["train_images_with_type"] = int((types >= 0).sum())
    relabel = None
    if lab.closure_types:
        def relabel(core, imgs):  # noqa: E306 - closes over this run's targets
            return closure_relabel(core, imgs, best, types, tr.shoes, lab.closure_types)
    result = train(tr.images, best, types, config, seed, max_seconds, relabel=relabel, init_weights=init_weights)
    report["init_weights"] = str(init_weights) if init_weights else None
    save_weights(result.model, config.to_dict(), out, KIND)
    atomic_write_json(out / "train_log.json", {"seconds": round(result.seconds, 1), "steps": result.steps,
                                               "relabel_step": result.history.get("relabel_step"),
                                               "loss": [round(v, 5) for v in result.history["loss"]]})
    truth = C.read_ground_truth(root)
    tp, bp = predict(result.model, te.images)
    report["heldout"] = dataclass_to_dict(score_predictions(tp, bp, te.shoes, [truth[p] for p in te.paths]))
    report["train_seconds"] = round(result.seconds, 1)
    report["total_seconds"] = round(time.monotonic() - t0, 1)
    atomic_write_json(out / "report.json", report)
    return report


def evaluate(root: str | os.PathLike, weights_dir: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """Held-out (``split``: test by default, or val) figures of a trained classifier, plus view
    purity of its clustering when ``clustering/kmeans.joblib`` is beside the weights."""
    import joblib

    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    truth = C.read_ground_truth(root)
    shoes = C.shoes_in_split(root, split)
    if not shoes:
        raise DataError(f"{root} has no footwear in the {split} split")
    te = C.load_view_images(root, shoes)
    model = load_model(weights_dir)
    tp, bp = predict(model, te.images)
    te_truth = [truth[p] for p in te.paths]
    out: dict[str, Any] = {"split": split, "heldout": dataclass_to_dict(score_predictions(tp, bp, te.shoes, te_truth))}
    kj = Path(weights_dir) / "clustering" / "kmeans.joblib"
    if kj.is_file():
        st = joblib.load(kj)
        emb_w = Path(weights_dir).parent / "embedder" if st["features"] == "embedder" else None
        f = C.extract_features(te.images, st["features"], st["seed"], emb_w)
        cl = st["kmeans"].predict(st["pipe"].transform(f).astype(np.float32))
        out["heldout_view_purity"] = C.purity(cl, C.view_index(te_truth))
        out["k"] = int(st["kmeans"].n_clusters)
        out["features"] = st["features"]
    return out
