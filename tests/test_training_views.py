"""Footwear view labelling (clustering, labels) and the two-headed view classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookserve import contracts
from lookserve.data import synth
from lookserve.errors import ConfigError
from lookserve.taxonomy import FOOTWEAR_TYPES, VIEWS
from lookserve.training import clustering as C
from lookserve.training import embedder as E
from lookserve.training import views as V
from lookserve.training.common import AugmentConfig, save_weights


def _blobs(n_per=20, centers=5, dim=12, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)) * 3
    y = np.repeat(np.arange(centers), n_per)
    return c[y] + rng.normal(scale=spread, size=(len(y), dim)), y


# --- clustering -------------------------------------------------------------------------------
def test_sweep_chooses_true_k_and_purity_is_one_when_clusters_are_separated():
    x, y = _blobs()
    xr, _ = C.reduce_features(x, seed=0, dims=8)
    s = C.sweep(xr, range(2, 9), seed=0, progress=False)
    assert s.ks == tuple(range(2, 9)) and len(s.silhouette) == len(s.sse) == 7
    assert C.choose_k(s) == 5
    assert all(a >= b for a, b in zip(s.sse, s.sse[1:], strict=False))  # SSE falls with k
    assert C.purity(C.kmeans(xr, 5).labels_, y) == 1.0


def test_purity_counts_majority_class_when_clusters_are_mixed():
    clusters = np.array([0, 0, 0, 1, 1, 1, 1])
    truth = np.array([1, 1, 2, 3, 3, 4, 4])
    assert C.purity(clusters, truth) == pytest.approx((2 + 2) / 7)


def test_histogram_features_are_mirror_invariant_when_image_is_flipped():
    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(C.histogram_features(img), C.histogram_features(img[:, :, ::-1]))


def test_plot_sweep_writes_png_when_given_two_backbones(tmp_path):
    x, _ = _blobs()
    s1 = C.sweep(x, range(2, 6), progress=False)
    s2 = C.sweep(x + np.random.default_rng(1).normal(size=x.shape) * 3, range(2, 6), progress=False)
    p = C.plot_sweep({"a": s1, "b": s2}, tmp_path / "p" / "sweep.png", {"a": 5})
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contact_sheets_write_one_png_per_cluster_and_template(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (10, 224, 224, 3), dtype=np.uint8)
    clusters = np.array([0, 1, 2] * 3 + [2])
    paths = C.contact_sheets(imgs, clusters, tmp_path)
    assert [p.name for p in paths] == ["cluster_00.png", "cluster_01.png", "cluster_02.png"]
    tpl = json.loads((tmp_path / "labels_template.json").read_text())
    assert tpl["clusters"]["2"] == {"best_view": None, "type": None, "size": 4}


def _truths(views, types, best, shoes):
    return [C.ViewTruth(s, v, t, "train", b) for v, t, b, s in zip(views, types, best, shoes, strict=True)]


def test_name_from_ground_truth_names_type_only_when_cluster_is_type_pure():
    clusters = np.array([0, 0, 0, 1, 1, 1])
    truths = _truths(
        ["left"] * 3 + ["sole"] * 3, ["zip", "zip", "zip", "zip", "buckle", "lace-up"], [1, 1, 0, 0, 0, 0], list("abcabc")
    )
    lab = C.name_from_ground_truth(clusters, truths)
    assert lab == {0: C.ClusterLabel(True, "zip"), 1: C.ClusterLabel(False, None)}


def test_labels_for_images_propagate_type_over_the_shoes_views():
    clusters = np.array([0, 1, 0, 1])
    shoes = np.array(["a", "a", "b", "b"])
    labels = {0: C.ClusterLabel(True, None), 1: C.ClusterLabel(False, "buckle")}
    best, types = C.labels_for_images(clusters, shoes, labels)
    np.testing.assert_array_equal(best, [1, 0, 1, 0])
    np.testing.assert_array_equal(types, [FOOTWEAR_TYPES.index("buckle")] * 4)
    best, types = C.labels_for_images(np.array([0, 0]), np.array(["c", "c"]), labels)
    np.testing.assert_array_equal(types, [-1, -1])


def test_labels_for_images_refuse_when_a_cluster_is_unnamed():
    with pytest.raises(ConfigError, match=r"\[2\]"):
        C.labels_for_images(np.array([0, 2]), np.array(["a", "a"]), {0: C.ClusterLabel(True, None)})


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"clusters": {}}, "non-empty"),
        ({"clusters": {"x": {"best_view": True, "type": None}}}, "not an integer"),
        ({"clusters": {"0": {"best_view": "yes", "type": None}}}, "best_view"),
        ({"clusters": {"0": {"best_view": True, "type": "sandal"}}}, "sandal"),
    ],
)
def test_read_labels_names_the_problem_when_file_is_bad(tmp_path, doc, match):
    p = tmp_path / "labels.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=match):
        C.read_labels(p)


def test_write_then_read_labels_round_trips(tmp_path):
    labels = {0: C.ClusterLabel(True, "zip"), 1: C.ClusterLabel(False, None)}
    C.write_labels(tmp_path / "l.json", labels, C.GROUND_TRUTH_NAMING, 2, "random-cnn")
    assert C.read_labels(tmp_path / "l.json") == (labels, C.GROUND_TRUTH_NAMING)


def test_score_predictions_counts_thumbnail_hits_per_shoe():
    shoes = np.array(["a", "a", "b", "b"])
    truths = _truths(["front", "sole", "front", "sole"], ["zip"] * 4, [True, False, True, False], list(shoes))
    tp = np.zeros((4, 6))
    tp[:, FOOTWEAR_TYPES.index("zip")] = 1
    tp[3] = np.eye(6)[0]
    s = V.score_predictions(tp, np.array([0.9, 0.1, 0.2, 0.8]), shoes, truths)
    assert (s.thumbnail_accuracy, s.type_accuracy, s.shoes) == (0.5, 0.75, 2)


def test_view_config_refuses_flips():
    with pytest.raises(ConfigError, match="flip"):
        V.ViewConfig(augment=AugmentConfig(hflip=0.5))


# --- the classifier ---------------------------------------------------------------------------
def _tiny_views(n_shoes=12, size=32, seed=0):
    """View v of a shoe = a bar at a view-specific place; type = the bar's colour."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (len(FOOTWEAR_TYPES), 3))
    imgs, best, types = [], [], []
    for s in range(n_shoes):
        t = s % len(FOOTWEAR_TYPES)
        for v in range(len(VIEWS)):
            im = np.full((size, size, 3), 235, np.uint8)
            o = 2 + v * 6
            im[o : o + 5, 4:28] = palette[t]
            imgs.append(np.clip(im + rng.integers(-8, 9, im.shape), 0, 255).astype(np.uint8))
            best.append(float(v == 0))
            types.append(t)
    return np.stack(imgs), np.array(best, np.float32), np.array(types, np.int32)


def _tiny_cfg(**kw):
    base = dict(width=4, internal_size=32, batch_size=16, steps=20, lr1=5e-3, lr2=2e-3, augment=AugmentConfig.none())
    base.update(kw)
    return V.ViewConfig(**base)


@pytest.mark.tf
def test_build_model_outputs_named_heads_when_given_uint8_batch():
    model = V.build_model(_tiny_cfg())
    out = model(np.zeros((3, 224, 224, 3), np.uint8))
    assert set(out) == {"type_probs", "best_view"}
    assert tuple(out["type_probs"].shape) == (3, 6) and tuple(out["best_view"].shape) == (3, 1)
    np.testing.assert_allclose(np.asarray(out["type_probs"]).sum(1), 1.0, rtol=1e-5)


@pytest.mark.tf
def test_train_loss_falls_and_unknown_types_are_ignored():
    imgs, best, types = _tiny_views()
    types[::3] = -1
    res = V.train(imgs, best, types, _tiny_cfg(), seed=0, progress=False)
    loss = np.array(res.history["loss"])
    assert res.steps == 20 and np.all(np.isfinite(loss))
    assert loss[-5:].mean() < loss[:5].mean()


@pytest.mark.tf
def test_train_is_deterministic_and_reloads_when_seed_is_fixed(tmp_path):
    imgs, best, types = _tiny_views()
    cfg = _tiny_cfg(steps=5, augment=AugmentConfig(hflip=0.0, vflip=0.0))
    r1 = V.train(imgs, best, types, cfg, seed=4, progress=False)
    r2 = V.train(imgs, best, types, cfg, seed=4, progress=False)
    assert r1.history["loss"] == r2.history["loss"]
    save_weights(r1.model, cfg.to_dict(), tmp_path, V.KIND)
    x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    a, b = V.predict(V.load_model(tmp_path), x), V.predict(r1.model, x)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)


def test_elbow_k_finds_the_knee_when_sse_drops_then_flattens():
    s = C.Sweep(ks=(2, 3, 4, 5, 6, 7, 8), silhouette=(0.1,) * 7, sse=(100.0, 60.0, 30.0, 10.0, 9.0, 8.0, 7.0))
    assert C.choose_k(s, "elbow") == 5
    with pytest.raises(ConfigError, match="rule"):
        C.choose_k(s, "gap")


def test_hog_features_tell_a_view_from_its_mirror_when_shape_is_asymmetric():
    img = np.full((1, 224, 224, 3), 240, np.uint8)
    img[0, 100:160, 20:200] = 30
    img[0, 40:100, 140:200] = 30  # a boot shaft on the right: not mirror symmetric
    f = C.extract_features(img, "hog")
    g = C.extract_features(img[:, :, ::-1], "hog")
    assert f.shape == g.shape and not np.allclose(f, g)


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("synth"), synth.SynthConfig.tiny(), seed=0)


@pytest.mark.tf
def test_run_labels_trains_and_scores_when_given_generated_tiny_data(tiny_synth, tmp_path):
    report = V.run(tiny_synth, tmp_path, _tiny_cfg(steps=3), seed=0, k_range=(2, 6), name_from_ground_truth=True)
    assert report["named_by"] == C.GROUND_TRUTH_NAMING
    assert 0.0 <= report["heldout_view_purity"] <= 1.0 and report["heldout"]["shoes"] > 0
    assert (tmp_path / "clustering" / "silhouette_sse.png").is_file()
    assert set(V.evaluate(tiny_synth, tmp_path)) >= {"heldout", "heldout_view_purity", "k"}


def test_run_stops_after_contact_sheets_when_no_labels_are_given(tiny_synth, tmp_path):
    report = V.run(tiny_synth, tmp_path, _tiny_cfg(steps=3), seed=0, k_range=(2, 5))
    assert "next" in report and "heldout" not in report
    assert (tmp_path / "clustering" / "sheets" / "labels_template.json").is_file()


@pytest.mark.tf
@pytest.mark.parametrize("kind", ["embedder", "view_classifier"])
def test_committed_reference_weights_load_and_match_the_contract(kind):

    weights = Path(__file__).resolve().parents[1] / "training" / "weights" / kind
    model = (E if kind == "embedder" else V).load_model(weights)
    cfg = contracts.embedder_config() if kind == "embedder" else contracts.view_classifier_config()
    out = model(np.zeros((2, 224, 224, 3), np.uint8))
    assert {t.name: (2, *t.dims) for t in cfg.outputs} == {k: tuple(v.shape) for k, v in out.items()}


# --- per-type naming, closure relabelling, product-level type -------------------------------
def test_name_from_ground_truth_by_type_marks_zip_sides_as_closure_views_when_half_are_best():
    # cluster 0: side views — lace-up shoes always best, zip shoes best only on the zip side
    # cluster 1: front views — best for lace-up, never for zip
    views = ["left"] * 8 + ["front"] * 8
    types = ["lace-up"] * 4 + ["zip"] * 4 + ["lace-up"] * 4 + ["zip"] * 4
    best = [1, 1, 1, 1, 1, 0, 1, 0] + [1, 1, 1, 1, 0, 0, 0, 0]
    clusters = np.array([0] * 8 + [1] * 8)
    doc = C.name_from_ground_truth_by_type(clusters, _truths(views, types, best, list("abcdefgh") * 2))
    assert doc.closure_types == ("zip",) and doc.named_by == C.GROUND_TRUTH_NAMING
    assert doc.labels[0].best_for(FOOTWEAR_TYPES.index("zip")) is True
    assert doc.labels[1].best_for(FOOTWEAR_TYPES.index("lace-up")) is True
    assert doc.labels[1].best_for(FOOTWEAR_TYPES.index("zip")) is False
    assert doc.labels[1].best_for(-1) == doc.labels[1].best_view


def test_labels_doc_round_trips_when_it_names_best_views_per_type(tmp_path):
    labels = {0: C.ClusterLabel(True, None, (("zip", False),)), 1: C.ClusterLabel(False, "buckle")}
    C.write_labels(tmp_path / "l.json", labels, "person", 2, "hog", ("zip",))
    doc = C.read_labels_doc(tmp_path / "l.json")
    assert (doc.labels, doc.named_by, doc.closure_types) == (labels, "person", ("zip",))
    best = C.best_targets(np.array([0, 0, 1]), np.array([FOOTWEAR_TYPES.index("zip"), 0, -1]), labels)
    np.testing.assert_array_equal(best, [0.0, 1.0, 0.0])


def test_read_labels_doc_names_the_problem_when_per_type_answer_is_bad(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"clusters": {"0": {"best_view": True, "best_view_by_type": {"clog": True}}}}))
    with pytest.raises(ConfigError, match="best_view_by_type"):
        C.read_labels_doc(tmp_path / "l.json")


def test_closure_relabel_keeps_the_view_where_the_type_is_surest_when_shoe_has_a_closure_type():
    zip_i, lace_i = FOOTWEAR_TYPES.index("zip"), FOOTWEAR_TYPES.index("lace-up")
    # images: "brightness" = the type head's confidence in zip for this fake core
    images = np.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.3], np.float32).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    shoes = np.array(["z", "z", "z", "l", "l", "l"])
    types = np.array([zip_i] * 3 + [lace_i] * 3)
    best = np.array([1, 1, 0, 1, 1, 0], np.float32)

    def core(x, training=False):
        p = np.full((len(x), len(FOOTWEAR_TYPES)), 0.0, np.float32)
        p[:, zip_i] = x[:, 0, 0, 0]
        p[:, lace_i] = x[:, 0, 0, 0]
        return {"type_probs": p}

    out = V.closure_relabel(core, images, best, types, shoes, ("zip",))
    np.testing.assert_array_equal(out, [0, 1, 0, 1, 1, 0])  # lace-up shoe untouched


def test_score_predictions_sums_log_probabilities_per_shoe_when_views_disagree():
    shoes = np.array(["a"] * 3)
    truths = _truths(["left", "front", "sole"], ["zip"] * 3, [True, False, False], list(shoes))
    zip_i, buckle_i = FOOTWEAR_TYPES.index("zip"), FOOTWEAR_TYPES.index("buckle")
    tp = np.full((3, 6), 0.004)
    tp[0, zip_i], tp[0, buckle_i] = 0.9, 0.001  # the view that shows the zip rules buckle out
    tp[1, buckle_i], tp[1, zip_i] = 0.9, 0.08  # two others lean to buckle, never rule zip out
    tp[2, buckle_i], tp[2, zip_i] = 0.9, 0.08
    tp /= tp.sum(1, keepdims=True)
    s = V.score_predictions(tp, np.array([0.9, 0.2, 0.1]), shoes, truths)
    assert s.type_accuracy_shoe_logsum == 1.0 and s.type_accuracy_shoe == 0.0
    assert V.product_type(tp) == zip_i and s.type_accuracy_cue_views == 1.0


@pytest.mark.tf
def test_build_model_with_stem_sees_full_resolution_and_keeps_the_contract():
    model = V.build_model(_tiny_cfg(internal_size=224, stem=4))
    assert "downsample" not in [layer.name for layer in model.layers]
    out = model(np.zeros((2, 224, 224, 3), np.uint8))
    assert tuple(out["type_probs"].shape) == (2, 6) and tuple(out["best_view"].shape) == (2, 1)


def test_view_config_refuses_bad_stem_and_relabel_fraction():
    with pytest.raises(ConfigError, match="stem"):
        V.ViewConfig(stem=-1)
    with pytest.raises(ConfigError, match="relabel_fraction"):
        V.ViewConfig(relabel_fraction=1.0)
