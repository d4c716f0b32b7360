"""The triplet embedder: mining on hand-made embeddings, retrieval metrics, tiny training runs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lookserve.errors import ConfigError, DataError
from lookserve.training import embedder as E
from lookserve.training.common import AugmentConfig


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- mining on hand-made embeddings ---------------------------------------------------------
# anchors a0, a1, a2 and shops s0, s1, s2 (s_i is a_i's product), 2-D unit vectors at angles.
ANG_A = np.deg2rad([0.0, 90.0, 180.0])
ANG_S = np.deg2rad([20.0, 150.0, 185.0])
A = _unit(np.stack([np.cos(ANG_A), np.sin(ANG_A)], 1))
S = _unit(np.stack([np.cos(ANG_S), np.sin(ANG_S)], 1))
LABELS = np.array([0.0, 1.0, 2.0], np.float32)


def _d(i, j):
    return float(np.sum((A[i] - S[j]) ** 2))


def _np_loss(mining, margin, neg=None):
    return np.asarray(E.triplet_losses(A, S, LABELS, margin, mining, neg_index=neg))


def test_batch_hard_picks_closest_negative_when_labels_are_unique():
    got = _np_loss("batch-hard", 1.0)
    want = [max(_d(i, i) - min(_d(i, j) for j in range(3) if j != i) + 1.0, 0.0) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_semi_hard_picks_closest_negative_beyond_positive_else_farthest():
    margin = 1.0
    got = _np_loss("semi-hard", margin)
    want = []
    for i in range(3):
        dap = _d(i, i)
        negs = [_d(i, j) for j in range(3) if j != i]
        beyond = [d for d in negs if d > dap]
        dan = min(beyond) if beyond else max(negs)
        want.append(max(dap - dan + margin, 0.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a1 at 90°: its positive s1 is 60° away, negatives s0 (70°) and s2 (95°) are both beyond it,
    # so the semi-hard negative is the closer one, s0
    assert got[1] == pytest.approx(max(_d(1, 1) - _d(1, 0) + margin, 0.0), abs=1e-6)


def test_semi_hard_falls_back_to_farthest_negative_when_all_negatives_are_closer():
    a = _unit([[1.0, 0.0]])
    s = _unit([[-1.0, 0.0], [1.0, 0.1], [0.9, 0.5]])  # the positive is the farthest shop
    labels = np.array([0.0, 1.0, 2.0], np.float32)
    anchors = np.repeat(a, 3, 0)
    got = np.asarray(E.triplet_losses(anchors, s, labels, 0.5, "semi-hard"))
    d = lambda j: float(np.sum((a[0] - s[j]) ** 2))  # noqa: E731
    assert got[0] == pytest.approx(d(0) - max(d(1), d(2)) + 0.5, abs=1e-5)


def test_random_mining_uses_the_given_negative_index():
    neg = np.array([2, 0, 1], np.float32)
    got = _np_loss("random", 0.3, neg)
    want = [max(_d(i, i) - _d(i, int(neg[i])) + 0.3, 0.0) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_losses_are_zero_when_positives_are_far_closer_than_negatives():
    a = _unit(np.eye(4, dtype=np.float32))
    for mining in E.MINING:
        got = np.asarray(E.triplet_losses(a, a, np.arange(4.0), 0.5, mining, neg_index=np.array([1, 2, 3, 0.0])))
        assert np.all(got == 0.0), mining


def test_config_rejects_unknown_mining_when_misspelled():
    with pytest.raises(ConfigError, match="mining"):
        E.EmbedderConfig(mining="hardest")


# --- retrieval metrics ------------------------------------------------------------------------
def test_retrieval_scores_count_hits_at_k_when_ranks_are_known():
    # gallery: 25 products on distinct directions; the query's product sits at rank 0, 3 and 10
    rng = np.random.default_rng(0)
    g = rng.normal(size=(25, 8)).astype(np.float32)
    gp = np.arange(25)
    q = []
    for rank_target in (0, 3, 10):
        v = rng.normal(size=8)
        sims = _unit(g) @ (v / np.linalg.norm(v))
        order = np.argsort(-sims)
        q.append((v, order[rank_target]))
    qe = np.stack([v for v, _ in q])
    qp = np.array([p for _, p in q])
    s = E.retrieval_scores(qe, qp, g, gp)
    assert (s.top1, s.recall6, s.recall20) == pytest.approx((1 / 3, 2 / 3, 1.0))


def test_evaluate_embeddings_restricts_gallery_to_query_category():
    # a product of category 1 identical to the query would win, but is in another category
    q = _unit([[1.0, 0.0]])
    g = _unit([[1.0, 0.01], [0.5, 0.5], [1.0, 0.0]])
    res = E.evaluate_embeddings(q, np.array([7]), np.array([0]), g, np.array([7, 8, 9]), np.array([0, 0, 1]))
    assert res["bags"].top1 == 1.0 and res["bags"].gallery == 2
    assert res["overall"].n == 1


# --- tiny training --------------------------------------------------------------------------
def _tiny_data(n_prod=8, size=32, seed=0):
    """Products = distinct colour blobs; street crops are noisy, shifted versions of the shop photo."""
    rng = np.random.default_rng(seed)
    shop, street = [], []
    for p in range(n_prod):
        colour = rng.integers(0, 256, size=3)
        img = np.full((size, size, 3), 200, np.uint8)
        r = size // 4 + p % 3
        img[size // 2 - r : size // 2 + r, size // 2 - r : size // 2 + r] = colour
        shop.append(img)
        st = np.roll(img, rng.integers(-2, 3), axis=1).astype(np.int16) + rng.integers(-20, 21, img.shape)
        street.append(np.clip(st, 0, 255).astype(np.uint8))
    prods = np.arange(100, 100 + n_prod)
    cats = np.zeros(n_prod, int)
    return E.TripletData(np.stack(street), prods, cats, np.stack(shop), prods.copy(), cats.copy())


def _tiny_config(**kw):
    base = dict(
        dim=16, width=4, internal_size=32, products_per_batch=8, steps_per_epoch=6, stage1_epochs=2,
        stage2_epochs=1, lr1=3e-3, lr2=1e-3, augment=AugmentConfig.none(), margin=0.5,
    )
    base.update(kw)
    return E.EmbedderConfig(**base)


@pytest.mark.tf
def test_build_model_outputs_unit_embeddings_when_given_uint8_batch():
    model = E.build_model(_tiny_config())
    x = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    out = model(x)
    assert set(out) == {"embedding"}
    emb = np.asarray(out["embedding"])
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.tf
@pytest.mark.parametrize("mining", E.MINING)
def test_train_loss_falls_when_trained_a_few_steps(mining):
    res = E.train(_tiny_data(), _tiny_config(mining=mining), seed=1, progress=False)
    loss = np.array(res.history["loss"])
    assert res.steps == 18
    assert loss[-6:].mean() < loss[:6].mean()


@pytest.mark.tf
def test_train_is_deterministic_when_seed_is_fixed(tmp_path):
    cfg = _tiny_config(stage1_epochs=1, stage2_epochs=0, augment=AugmentConfig())
    data = _tiny_data()
    r1 = E.train(data, cfg, seed=3, progress=False)
    r2 = E.train(data, cfg, seed=3, progress=False)
    assert r1.history["loss"] == r2.history["loss"]
    x = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(r1.model(x)["embedding"]), np.asarray(r2.model(x)["embedding"]))


@pytest.mark.tf
def test_load_model_restores_the_same_outputs_when_saved(tmp_path):
    res = E.train(_tiny_data(), _tiny_config(stage1_epochs=1, stage2_epochs=0), seed=0, progress=False)
    E.save(res, tmp_path / "w")
    loaded = E.load_model(tmp_path / "w")
    x = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        np.asarray(loaded(x)["embedding"]), np.asarray(res.model(x)["embedding"]), rtol=1e-5, atol=1e-6
    )


def test_load_model_names_the_problem_when_directory_is_not_weights(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        E.load_model(tmp_path)


# --- reading the street2shop layout ------------------------------------------------------------
def _write_layout(root, n_train=3, n_test=2):
    """A minimal data set in the data contract's layout: one category, solid-colour photos."""


    (root / "photos").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "meta" / "json").mkdir(parents=True)
    photos, products, retr, pairs = [], [], [], {"train": [], "test": []}
    pid = 1
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        prod = 500 + i
        shop = np.full((64, 64, 3), 10 * i, np.uint8)
        cv2.imwrite(str(root / f"images/{pid}.png.jpg"), shop)
        photos.append(f"{pid},images/{pid}.png.jpg")
        retr.append({"product": prod, "photo": pid})
        street = np.zeros((96, 96, 3), np.uint8)
        street[10:50, 20:60] = 200  # the garment's box is bright, the rest black
        cv2.imwrite(str(root / f"images/{pid + 1}.png.jpg"), street)
        photos.append(f"{pid + 1},images/{pid + 1}.png.jpg")
        pairs[split].append({"photo": pid + 1, "product": prod, "bbox": {"left": 20, "top": 10, "width": 40, "height": 40}})
        products.append({"id": prod, "category": "hats", "split": split})
        pid += 2
    (root / "photos" / "photos.txt").write_text("\n".join(photos) + "\n")
    for split, p in pairs.items():
        (root / "meta" / "json" / f"{split}_pairs_hats.json").write_text(json.dumps(p))
    (root / "meta" / "json" / "retrieval_hats.json").write_text(json.dumps(retr))
    (root / "products.json").write_text(json.dumps(products))


def test_load_triplet_data_crops_by_bbox_and_keeps_splits_apart(tmp_path):
    _write_layout(tmp_path)
    tr = E.load_triplet_data(tmp_path, ("train",), 112)
    te = E.load_triplet_data(tmp_path, ("test",), 224)
    assert tr.street.shape == (3, 112, 112, 3) and te.street.shape == (2, 224, 224, 3)
    assert set(tr.street_product) == {500, 501, 502} and set(te.shop_product) == {503, 504}
    assert tr.street.min() > 150  # only the bright box survives the crop
    assert set(tr.street_category) == {5}


def test_load_triplet_data_reads_real_layout_when_products_json_is_absent(tmp_path, caplog):
    """The real street2shop layout has no products.json: the shared reader
    (lookserve.data.street2shop) takes each pair's split from its file and skips, and logs, a
    row whose street image is missing."""
    _write_layout(tmp_path)
    (tmp_path / "products.json").unlink()
    (tmp_path / "images" / "2.png.jpg").unlink()  # the first train pair's street photo
    with caplog.at_level("WARNING"):
        tr = E.load_triplet_data(tmp_path, ("train",), 112)
    assert set(tr.street_product) == {501, 502} and set(tr.shop_product) == {501, 502}
    assert "street image missing" in caplog.text


def test_load_triplet_data_names_the_problem_when_photos_txt_is_missing(tmp_path):
    with pytest.raises(DataError, match="photos.txt"):
        E.load_triplet_data(tmp_path, ("train",), 112)


# --- warm start -----------------------------------------------------------------------------
@pytest.mark.tf
def test_train_starts_from_init_weights_when_given(tmp_path):
    first = E.train(_tiny_data(), _tiny_config(stage1_epochs=1, stage2_epochs=0), seed=0, progress=False)
    E.save(first, tmp_path / "w")
    # a negligible learning rate: the warm-started kernels stay those of the saved model
    cfg = _tiny_config(mining="semi-hard", stage1_epochs=1, stage2_epochs=0, lr1=1e-12, lr2=1e-12)
    warm = E.train(_tiny_data(), cfg, seed=5, progress=False, init_weights=tmp_path / "w")
    cold = E.train(_tiny_data(), cfg, seed=5, progress=False)
    k_first = E.core_of(first.model).get_layer("emb_proj").get_weights()[0]
    np.testing.assert_allclose(E.core_of(warm.model).get_layer("emb_proj").get_weights()[0], k_first, atol=1e-6)
    assert not np.allclose(E.core_of(cold.model).get_layer("emb_proj").get_weights()[0], k_first, atol=1e-3)


@pytest.mark.tf
def test_train_refuses_init_weights_when_architecture_differs(tmp_path):
    first = E.train(_tiny_data(), _tiny_config(stage1_epochs=1, stage2_epochs=0), seed=0, progress=False)
    E.save(first, tmp_path / "w")
    with pytest.raises(ConfigError, match="dim"):
        E.train(_tiny_data(), _tiny_config(dim=8), seed=0, progress=False, init_weights=tmp_path / "w")


def test_load_eval_data_names_the_problem_when_split_is_unknown(tmp_path):
    with pytest.raises(ConfigError, match="split"):
        E.load_eval_data(tmp_path, split="train")
