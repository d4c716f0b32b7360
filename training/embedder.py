"""The street-to-shop triplet embedder (seed 004), Keras 3.

One shared-weight network maps a UINT8 crop ``[B, 224, 224, 3]`` to an L2-normalised
embedding ``{"embedding": [B, dim]}`` (normalisation inside the graph). It is trained with a
triplet loss: anchor = a street crop from its box, positive = a shop photo of the same product,
negative = a shop photo of another product of the same category. Every batch holds ``P``
products of ONE category (one street crop and one shop photo each), so every in-batch negative
is a same-category negative, and the triplets are mined in the batch:

* ``random`` — the original's: one uniformly random negative per anchor (the data pipeline
  draws it, so it is seeded);
* ``semi-hard`` — FaceNet's: the closest negative farther than the positive; if none exists,
  the farthest negative;
* ``batch-hard`` — Hermans et al.: the farthest positive and the closest negative.

Distances are squared Euclidean between unit vectors (``2 − 2·cos``, in [0, 4]). Two learning
rate stages as the original (1e-4 then 5e-5 there; here ``lr1`` then ``lr2``).

Evaluation (:func:`evaluate`) follows the original's "accuracy": for a held-out street crop,
a hit when a shop photo of its product is the most similar (cosine) of all shop photos of
that category in the gallery; plus recall@6 and recall@20, per category and overall.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
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

from lookserve.data import street2shop
from lookserve.errors import ConfigError, DataError
from lookserve.images import crop_box, resize_square
from lookserve.taxonomy import CATEGORIES
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
    read_rgb,
    save_weights,
    served_front,
    set_seed,
    warm_start,
)

log = logging.getLogger(__name__)

KIND = "embedder"
MINING = ("random", "semi-hard", "batch-hard")
SIZES = ("small", "large")


@dataclass(frozen=True)
class EmbedderConfig:
    """Architecture and training configuration (saved beside the weights as JSON)."""

    dim: int = 128
    backbone: str = "small"
    width: int = 32
    internal_size: int = 112
    mining: str = "random"
    margin: float = 0.5
    products_per_batch: int = 16
    steps_per_epoch: int = 50
    stage1_epochs: int = 10
    stage2_epochs: int = 10
    lr1: float = 1e-3
    lr2: float = 3e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.mining not in MINING:
            raise ConfigError(f"unknown mining {self.mining!r}; expected one of {', '.join(MINING)}")
        if self.dim < 2:
            raise ConfigError(f"embedding dim must be >= 2, got {self.dim}")
        if self.margin <= 0:
            raise ConfigError(f"margin must be > 0, got {self.margin}")
        if self.products_per_batch < 2:
            raise ConfigError(f"products_per_batch must be >= 2, got {self.products_per_batch}")
        pooling_factor(self.internal_size)

    @classmethod
    def preset(cls, size: str, **overrides: Any) -> EmbedderConfig:
        """``small``: a ~0.4 M-parameter CNN at 112 px (CPU); ``large``: ResNet50 at 224 px (GPU)."""
        if size == "small":
            base = cls()
        elif size == "large":
            base = cls(backbone="resnet50", internal_size=224, lr1=1e-4, lr2=5e-5, stage1_epochs=10, stage2_epochs=20, steps_per_epoch=150)
        else:
            raise ConfigError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        return dataclass_from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def build_core(config: EmbedderConfig):
    """float [B, s, s, 3] in [0, 255] → L2-normalised [B, dim] (the trainable part)."""
    keras = keras_module()
    from keras import layers

    bb = build_backbone(config.backbone, config.internal_size, width=config.width, prefix="emb")
    inp = keras.Input((config.internal_size, config.internal_size, 3), dtype="float32", name="pooled")
    x = bb(inp)
    x = layers.Dense(config.dim, name="emb_proj")(x)
    x = layers.UnitNormalization(axis=-1, name="l2norm")(x)
    return keras.Model(inp, x, name="embedder_core")


def build_model(config: EmbedderConfig | None = None):
    """The served model: ``crops`` UINT8 [B, 224, 224, 3] → ``{"embedding": [B, dim]}``."""
    keras = keras_module()
    config = config or EmbedderConfig()
    inp, x = served_front(config.internal_size, "crops")
    core = build_core(config)
    emb = core(x)
    return keras.Model(inp, {"embedding": emb}, name="embedder")


def core_of(model):
    return model.get_layer("embedder_core")


def load_model(weights_dir: str | os.PathLike):
    """Rebuild the served model from ``config.json`` and load ``model.weights.h5``."""
    cfg = EmbedderConfig.from_dict(read_config(weights_dir, KIND))
    model = build_model(cfg)
    model.load_weights(str(Path(weights_dir) / "model.weights.h5"))
    return model


def load_config(weights_dir: str | os.PathLike) -> EmbedderConfig:
    return EmbedderConfig.from_dict(read_config(weights_dir, KIND))


# --------------------------------------------------------------------------------------------
# triplet losses (keras.ops; per-anchor values)
# --------------------------------------------------------------------------------------------
def pairwise_sq_dist(a, b):
    """Squared Euclidean distances between rows of ``a`` [N, D] and ``b`` [M, D]."""
    from keras import ops

    a2 = ops.sum(ops.square(a), axis=1, keepdims=True)
    b2 = ops.sum(ops.square(b), axis=1, keepdims=True)
    d = a2 - 2.0 * ops.matmul(a, ops.transpose(b)) + ops.transpose(b2)
    return ops.maximum(d, 0.0)


def triplet_losses(anchors, shops, labels, margin: float, mining: str, neg_index=None):
    """Per-anchor triplet loss for anchors [B, D] against the in-batch shop embeddings [B, D].

    ``labels`` [B] are product labels (shop j is a positive of anchor i iff labels equal).
    ``neg_index`` [B] (random mining only) names each anchor's negative shop row.
    """
    from keras import ops

    if mining not in MINING:
        raise ConfigError(f"unknown mining {mining!r}; expected one of {', '.join(MINING)}")
    d = pairwise_sq_dist(anchors, shops)
    labels = ops.reshape(labels, (-1,))
    pos = ops.cast(ops.equal(labels[:, None], labels[None, :]), d.dtype)
    neg = 1.0 - pos
    big = 1e4
    # hardest (farthest) positive; with one shop photo per product this is the only positive
    d_ap = ops.max(d * pos - big * neg, axis=1)
    if mining == "batch-hard":
        d_an = ops.min(d + big * pos, axis=1)
    elif mining == "semi-hard":
        beyond = neg * ops.cast(ops.greater(d, d_ap[:, None]), d.dtype)
        semi = ops.min(d + big * (1.0 - beyond), axis=1)
        farthest = ops.max(d * neg - big * pos, axis=1)
        has = ops.greater(ops.sum(beyond, axis=1), 0.0)
        d_an = ops.where(has, semi, farthest)
    else:
        if neg_index is None:
            raise ConfigError("random mining needs neg_index")
        idx = ops.cast(ops.reshape(neg_index, (-1,)), "int32")
        d_an = ops.take_along_axis(d, idx[:, None], axis=1)[:, 0]
    return ops.maximum(d_ap - d_an + margin, 0.0)


def _triplet_loss_class():
    keras = keras_module()

    class TripletLoss(keras.losses.Loss):
        """y_true [B, 2] = (product label, random negative index); y_pred [B, 2, D] = (anchor, shop)."""

        def __init__(self, margin: float, mining: str, name: str = "triplet"):
            super().__init__(name=name)
            self.margin = margin
            self.mining = mining

        def call(self, y_true, y_pred):
            from keras import ops

            y_true = ops.reshape(y_true, (-1, 2))
            return triplet_losses(
                y_pred[:, 0], y_pred[:, 1], y_true[:, 0], self.margin, self.mining, neg_index=y_true[:, 1]
            )

    return TripletLoss


def build_training_model(model, config: EmbedderConfig):
    """anchor, shop (uint8 at internal size) → stacked embeddings [B, 2, D], sharing ``model``'s core."""
    keras = keras_module()
    from keras import ops

    s = config.internal_size
    a_in = keras.Input((s, s, 3), dtype="uint8", name="anchor")
    p_in = keras.Input((s, s, 3), dtype="uint8", name="shop")
    x = ops.cast(ops.concatenate([a_in, p_in], axis=0), "float32")
    e = core_of(model)(x)
    out = ops.transpose(ops.reshape(e, (2, -1, config.dim)), (1, 0, 2))
    return keras.Model({"anchor": a_in, "shop": p_in}, out, name="embedder_triplet")


# --------------------------------------------------------------------------------------------
# data (street2shop layout, see the data contract)
# --------------------------------------------------------------------------------------------
@dataclass
class TripletData:
    """Images cached in memory (uint8 at one size) and who matches whom."""

    street: np.ndarray  # [N, s, s, 3]
    street_product: np.ndarray  # [N] product ids
    street_category: np.ndarray  # [N] category index
    shop: np.ndarray  # [M, s, s, 3]
    shop_product: np.ndarray  # [M]
    shop_category: np.ndarray  # [M]

    def categories(self) -> list[int]:
        return sorted(set(self.street_category.tolist()))


def load_triplet_data(
    root: str | os.PathLike,
    splits: tuple[str, ...],
    size: int,
    categories: tuple[str, ...] | None = None,
    max_per_category: int | None = None,
) -> TripletData:
    """Read street crops (by bbox) and shop photos of the products in ``splits``, cropped and
    resized to 224 by the client's own functions (:func:`lookserve.images.crop_box`, after
    :func:`lookserve.images.decode_image`) and box-pooled to ``size`` — exactly what the graph
    sees when served. The data set is read by :func:`lookserve.data.street2shop.load` (rows
    whose images are missing are logged and skipped there)."""
    from tqdm import tqdm

    wanted = tuple(c for c in CATEGORIES if categories is None or c in categories)
    ds = street2shop.load(root, categories=wanted)
    factor = pooling_factor(size)
    street, s_prod, s_cat, shop, p_prod, p_cat = [], [], [], [], [], []
    jobs: list[tuple[str, Path, int, int, np.ndarray | None]] = []
    for ci, cat in enumerate(CATEGORIES):
        if cat not in wanted:
            continue
        products_here: set[int] = set()
        for pair in ds.pairs_of(category=cat):
            if pair.split not in splits:
                continue
            if max_per_category is not None and pair.product not in products_here and len(products_here) >= max_per_category:
                continue
            products_here.add(pair.product)
            jobs.append(("street", pair.street_path, pair.product, ci, np.array(pair.bbox.xyxy(), np.float64)))
        for prod, photos in ds.shop.items():
            if prod in products_here:
                jobs.extend(("shop", ds.shop_path(photo), prod, ci, None) for photo in photos)
    if not jobs:
        raise DataError(f"no street/shop photos for splits {splits} under {root}")
    for kind, path, prod, ci, box in tqdm(jobs, desc=f"loading {'+'.join(splits)} images", unit="img", leave=False):
        img = read_rgb(path)
        # street: the box crop a client sends (client/look.py); shop: the whole photo stretched,
        # as the catalog builder does (client/catalog.py)
        img = crop_box(img, box, SERVED_SIZE) if box is not None else resize_square(img, SERVED_SIZE)
        img = pool_uint8(img[None], factor)[0]
        if kind == "street":
            street.append(img), s_prod.append(prod), s_cat.append(ci)
        else:
            shop.append(img), p_prod.append(prod), p_cat.append(ci)
    if not street or not shop:
        raise DataError(f"splits {splits} under {root} have {len(street)} street crops and {len(shop)} shop photos")
    return TripletData(
        np.stack(street), np.array(s_prod), np.array(s_cat), np.stack(shop), np.array(p_prod), np.array(p_cat)
    )


class TripletBatches:
    """Seeded batches: P products of one category, one street crop + one shop photo each."""

    def __init__(self, data: TripletData, config: EmbedderConfig, seed: int):
        self.data = data
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.street_by_prod: dict[int, list[int]] = defaultdict(list)
        self.shop_by_prod: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(data.street_product.tolist()):
            self.street_by_prod[p].append(i)
        for i, p in enumerate(data.shop_product.tolist()):
            self.shop_by_prod[p].append(i)
        prods_by_cat: dict[int, set[int]] = defaultdict(set)
        for p, c in zip(data.street_product.tolist(), data.street_category.tolist(), strict=True):
            if p in self.shop_by_prod:
                prods_by_cat[c].add(p)
        self.prods_by_cat = {c: sorted(ps) for c, ps in prods_by_cat.items() if len(ps) >= 2}
        if not self.prods_by_cat:
            raise DataError("no category has two products with both street and shop photos")
        self.cats = sorted(self.prods_by_cat)
        w = np.array([len(self.prods_by_cat[c]) for c in self.cats], dtype=np.float64)
        self.cat_p = w / w.sum()

    def next(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        rng, cfg = self.rng, self.config
        c = self.cats[rng.choice(len(self.cats), p=self.cat_p)]
        prods = self.prods_by_cat[c]
        chosen = rng.choice(len(prods), size=min(cfg.products_per_batch, len(prods)), replace=False)
        a_idx = [rng.choice(self.street_by_prod[prods[k]]) for k in chosen]
        s_idx = [rng.choice(self.shop_by_prod[prods[k]]) for k in chosen]
        n = len(chosen)
        # random mining: a uniformly random other product of the batch (same category)
        neg = (np.arange(n) + rng.integers(1, n, size=n)) % n
        anchors = augment_batch(self.data.street[a_idx], cfg.augment, rng)
        shops = augment_batch(self.data.shop[s_idx], cfg.augment, rng)
        y = np.stack([np.arange(n), neg], axis=1).astype(np.float32)
        return {"anchor": anchors, "shop": shops}, y


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    model: Any
    config: EmbedderConfig
    history: dict[str, list[float]]
    seconds: float
    steps: int


def train(
    data: TripletData,
    config: EmbedderConfig,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    init_weights: str | os.PathLike | None = None,
) -> TrainResult:
    """Train from scratch — or, with ``init_weights`` (a weights directory of the same
    architecture), continue from those weights with a fresh optimizer and schedule, e.g. to
    warm-start semi-hard / batch-hard mining from a random-mining model. Stops early (keeping
    the weights so far) after ``max_seconds``."""
    keras = keras_module()

    set_seed(seed)
    model = build_model(config)
    if init_weights is not None:
        warm_start(model, config, load_config(init_weights), init_weights, ("dim", "backbone", "width", "internal_size"))
    tmodel = build_training_model(model, config)
    spe = config.steps_per_epoch
    total = spe * (config.stage1_epochs + config.stage2_epochs)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [spe * config.stage1_epochs], [config.lr1, config.lr2]
    )
    opt = keras.optimizers.Adam(learning_rate=schedule)
    tmodel.compile(optimizer=opt, loss=_triplet_loss_class()(config.margin, config.mining))
    batches = TripletBatches(data, config, seed)
    history: dict[str, list[float]] = {"loss": []}
    t0 = time.monotonic()
    steps = 0
    with Progress(
        TextColumn("[bold]embedder[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{config.mining}", total=total)
        for _ in range(total):
            x, y = batches.next()
            logs = tmodel.train_on_batch(x, y, return_dict=True)
            history["loss"].append(float(logs["loss"]))
            steps += 1
            if steps % 10 == 0:
                last = history["loss"][-spe:]
                bar.update(task, description=f"{config.mining} loss {np.mean(last):.4f}")
                log.info("step %d/%d loss %.4f", steps, total, float(np.mean(last)))
            bar.advance(task)
            if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                log.warning("time budget %.0f s reached after %d of %d steps", max_seconds, steps, total)
                break
    return TrainResult(model, config, history, time.monotonic() - t0, steps)


def save(result: TrainResult, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    out = save_weights(result.model, result.config.to_dict(), out_dir, KIND)

    atomic_write_json(
        Path(out) / "train_log.json",
        {"seconds": round(result.seconds, 1), "steps": result.steps, "loss": [round(v, 5) for v in result.history["loss"]], **(extra or {})},
    )
    return out


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def embed(model, images: np.ndarray, batch_size: int = 64, pooled: bool = False) -> np.ndarray:
    """Embeddings of uint8 images: full 224 px through the served model, or (``pooled``)
    already box-pooled images through its core."""
    out = []
    core = core_of(model) if pooled else None
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        if pooled:
            out.append(np.asarray(core(chunk.astype(np.float32), training=False)))
        else:
            out.append(np.asarray(model(chunk, training=False)["embedding"]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class RetrievalScores:
    n: int
    top1: float
    recall6: float
    recall20: float
    gallery: int


def retrieval_scores(
    q_emb: np.ndarray, q_prod: np.ndarray, g_emb: np.ndarray, g_prod: np.ndarray
) -> RetrievalScores:
    """Cosine ranking of one category's gallery for each query; a hit at K when a gallery photo of
    the query's product is among the K most similar (top-1 = the original's accuracy)."""
    if len(q_emb) == 0:
        return RetrievalScores(0, float("nan"), float("nan"), float("nan"), len(g_emb))
    qn = q_emb / np.linalg.norm(q_emb, axis=1, keepdims=True).clip(1e-12)
    gn = g_emb / np.linalg.norm(g_emb, axis=1, keepdims=True).clip(1e-12)
    sim = qn @ gn.T
    order = np.argsort(-sim, axis=1, kind="stable")
    match = g_prod[order] == q_prod[:, None]
    first = np.where(match.any(axis=1), match.argmax(axis=1), np.iinfo(np.int64).max)
    return RetrievalScores(
        len(q_emb), float(np.mean(first < 1)), float(np.mean(first < 6)), float(np.mean(first < 20)), len(g_emb)
    )


def evaluate_embeddings(
    q_emb: np.ndarray, q_prod: np.ndarray, q_cat: np.ndarray, g_emb: np.ndarray, g_prod: np.ndarray, g_cat: np.ndarray
) -> dict[str, RetrievalScores]:
    """Per category (gallery = that category's shop photos) and ``overall`` (query-weighted)."""
    out: dict[str, RetrievalScores] = {}
    hits = np.zeros(3)
    n = 0
    for c in sorted(set(q_cat.tolist())):
        qm, gm = q_cat == c, g_cat == c
        s = retrieval_scores(q_emb[qm], q_prod[qm], g_emb[gm], g_prod[gm])
        out[CATEGORIES[c]] = s
        hits += np.array([s.top1, s.recall6, s.recall20]) * s.n
        n += s.n
    if n:
        out["overall"] = RetrievalScores(n, *(hits / n).tolist(), gallery=len(g_emb))
    return out


def evaluate(model, data: TripletData, pooled: bool = False) -> dict[str, RetrievalScores]:
    """Held-out retrieval scores of ``model`` on ``data`` (street crops vs shop photos)."""
    q = embed(model, data.street, pooled=pooled)
    g = embed(model, data.shop, pooled=pooled)
    return evaluate_embeddings(q, data.street_product, data.street_category, g, data.shop_product, data.shop_category)


def load_eval_data(root: str | os.PathLike, gallery: str = "test", split: str = "test") -> TripletData:
    """Queries: street crops of held-out products (``split``: test, or val to choose between runs)
    at 224 px. ``gallery``: ``test`` (shop photos of the same held-out products, the held-out
    catalog) or ``all`` (every split's shop photos as distractors)."""
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    q = load_triplet_data(root, (split,), SERVED_SIZE)
    if gallery == "test":
        return q
    if gallery != "all":
        raise ConfigError(f"gallery must be 'test' or 'all', got {gallery!r}")
    g = load_triplet_data(root, ("train", "val", "test"), SERVED_SIZE)
    return TripletData(q.street, q.street_product, q.street_category, g.shop, g.shop_product, g.shop_category)


def scores_table(scores: dict[str, RetrievalScores]) -> list[list[str]]:
    rows = []
    for name, s in scores.items():
        rows.append([name, str(s.n), str(s.gallery), f"{s.top1:.3f}", f"{s.recall6:.3f}", f"{s.recall20:.3f}"])
    return rows
