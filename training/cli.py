"""``lookserve train ...`` and ``lookserve eval ...`` (nothing heavy imported at module level)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lookserve.cliutil import fail
from lookserve.data import synth
from lookserve.errors import LookserveError
from lookserve.training import embedder as E
from lookserve.training import views as V
from lookserve.training.common import atomic_write_json, atomic_write_text
from lookserve.training.detector import evaluate_detector as _eval
from lookserve.training.detector import train_detector as _train
from lookserve.training.embedder import scores_table

app = typer.Typer(no_args_is_help=True, help="Train the detector, the embedder and the view classifier.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate trained models on held-out data.")

DATA = typer.Option(..., "--data", help="Data set root (street2shop layout, e.g. from `lookserve data synth`).")
OUT = typer.Option(..., "--out", help="Directory to write weights (model.weights.h5 + config.json) and reports.")
SEED = typer.Option(0, "--seed", help="Seed of everything random.")
SIZE = typer.Option("small", "--size", help="small (CPU, minutes) or large (ResNet50 backbone, GPU).")
MAX_MIN = typer.Option(None, "--max-minutes", help="Stop training after this many minutes (weights so far are kept).")


def _console():
    return Console()


def _machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, {platform.system()} {platform.release()}".replace("  ", " ")


def _retrieval_table(title: str, scores) -> Any:

    t = Table(title=title)
    for col in ("category", "queries", "gallery", "top-1", "recall@6", "recall@20"):
        t.add_column(col, justify="right" if col != "category" else "left")
    for row in scores_table(scores):
        t.add_row(*row)
    return t




# --------------------------------------------------------------------------------------------
# embedder
# --------------------------------------------------------------------------------------------
@app.command("embedder")
def train_embedder(
    data: Path = DATA,
    out: Path = OUT,
    seed: int = SEED,
    size: str = SIZE,
    mining: str = typer.Option("random", help="random (the original's) | semi-hard | batch-hard"),
    dim: int = typer.Option(128, help="Embedding dimension."),
    margin: float = typer.Option(None, help="Triplet margin on squared distances (default: the preset's)."),
    products_per_batch: int = typer.Option(None, help="Products per batch (one category per batch)."),
    internal_size: int = typer.Option(None, help="Side the network sees after in-graph pooling of the 224 input (224, 112, 56)."),
    steps_per_epoch: int = typer.Option(None, help="Steps per epoch (default: the preset's)."),
    stage1_epochs: int = typer.Option(None, help="Epochs at lr1."),
    stage2_epochs: int = typer.Option(None, help="Epochs at lr2."),
    lr1: float = typer.Option(None, help="Learning rate of stage 1 (default: the preset's)."),
    lr2: float = typer.Option(None, help="Learning rate of stage 2 (default: the preset's)."),
    init: Path = typer.Option(None, "--init", help="Warm start from this embedder weights directory (same architecture)."),
    eval_split: str = typer.Option("val", help="Held-out split scored after training: val (to choose runs) | test."),
    max_minutes: float = MAX_MIN,
) -> None:
    """Train the triplet embedder on the train split, then print held-out (val by default) retrieval figures."""

    try:
        over = {k: v for k, v in dict(mining=mining, dim=dim, margin=margin, steps_per_epoch=steps_per_epoch,
                                      products_per_batch=products_per_batch, internal_size=internal_size,
                                      stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs,
                                      lr1=lr1, lr2=lr2).items() if v is not None}
        cfg = E.EmbedderConfig.preset(size, **over)
        t0 = time.monotonic()
        train_data = E.load_triplet_data(data, ("train",), cfg.internal_size)
        res = E.train(train_data, cfg, seed=seed, max_seconds=max_minutes * 60 if max_minutes else None, init_weights=init)
        scores = E.evaluate(res.model, E.load_eval_data(data, split=eval_split))
        E.save(res, out, {"seed": seed, "data": str(data), "machine": _machine(), "init": str(init) if init else None,
                          "eval_split": eval_split, "eval": {k: vars(v) for k, v in scores.items()},
                          "total_seconds": round(time.monotonic() - t0, 1)})
    except LookserveError as e:
        fail(e)
    c = _console()
    c.print(f"trained {res.steps} steps in {res.seconds:.0f} s ({cfg.mining}); weights in {out}")
    c.print(_retrieval_table(f"held-out ({eval_split} split) street→shop retrieval", scores))


@app.command("embedder-mining")
def compare_mining(
    data: Path = DATA,
    out: Path = OUT,
    seed: int = SEED,
    size: str = SIZE,
    steps_per_epoch: int = typer.Option(None, help="Steps per epoch (default: the preset's)."),
    stage1_epochs: int = typer.Option(None, help="Epochs at lr1."),
    stage2_epochs: int = typer.Option(None, help="Epochs at lr2."),
    products_per_batch: int = typer.Option(None, help="Products per batch (one category per batch)."),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Time budget PER variant."),
) -> None:
    """Train one embedder per mining variant with the same budget; print one comparison table."""


    rows = []
    try:
        over = {k: v for k, v in dict(steps_per_epoch=steps_per_epoch, stage1_epochs=stage1_epochs,
                                      stage2_epochs=stage2_epochs, products_per_batch=products_per_batch).items() if v is not None}
        base = E.EmbedderConfig.preset(size, **over)
        train_data = E.load_triplet_data(data, ("train",), base.internal_size)
        eval_data = E.load_eval_data(data)
        for mining in E.MINING:
            cfg = E.EmbedderConfig.preset(size, mining=mining, **over)
            res = E.train(train_data, cfg, seed=seed, max_seconds=max_minutes * 60 if max_minutes else None)
            s = E.evaluate(res.model, eval_data)["overall"]
            rows.append({"mining": mining, "steps": res.steps, "seconds": round(res.seconds, 1),
                         "final_loss": round(float(sum(res.history["loss"][-50:]) / len(res.history["loss"][-50:])), 4),
                         "top1": round(s.top1, 4), "recall6": round(s.recall6, 4), "recall20": round(s.recall20, 4),
                         "queries": s.n})
            E.save(res, Path(out) / mining, {"seed": seed, "data": str(data), "machine": _machine(),
                                             "eval": {k: vars(v) for k, v in E.evaluate(res.model, eval_data).items()}})
    except LookserveError as e:
        fail(e)
    t = Table(title="mining variants, same data/seed/steps; held-out (test split) overall")
    for col in ("mining", "steps", "seconds", "final_loss", "top1", "recall6", "recall20", "queries"):
        t.add_column(col)
    for r in rows:
        t.add_row(*(str(r[c]) for c in ("mining", "steps", "seconds", "final_loss", "top1", "recall6", "recall20", "queries")))
    _console().print(t)
    atomic_write_json(Path(out) / "mining_table.json", rows)
    md = ["| mining | steps | seconds | final loss | top-1 | recall@6 | recall@20 | queries |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['mining']} | {r['steps']} | {r['seconds']} | {r['final_loss']} | {r['top1']:.3f} | {r['recall6']:.3f} | {r['recall20']:.3f} | {r['queries']} |" for r in rows]
    atomic_write_text(Path(out) / "mining_table.md", "\n".join(md) + "\n")


@eval_app.command("embedder")
def eval_embedder(
    data: Path = DATA,
    weights: Path = typer.Option(..., "--weights", help="Weights directory (model.weights.h5 + config.json)."),
    gallery: str = typer.Option("test", help="test: the held-out products' shop photos; all: every split's as distractors."),
    split: str = typer.Option("test", help="Held-out split of the queries: test | val."),
) -> None:
    """Print held-out retrieval figures: top-1 (the original's accuracy), recall@6, recall@20."""

    try:
        model = E.load_model(weights)
        scores = E.evaluate(model, E.load_eval_data(data, gallery, split))
    except LookserveError as e:
        fail(e)
    _console().print(_retrieval_table(f"held-out ({split} split) street→shop retrieval, gallery={gallery}", scores))


# --------------------------------------------------------------------------------------------
# view classifier
# --------------------------------------------------------------------------------------------
def _print_views(report: dict[str, Any]) -> None:
    c = _console()
    if report.get("named_by") and "ground-truth" in report["named_by"]:
        c.print("[yellow]clusters were named from the GENERATED GROUND TRUTH — for evaluation only, not a person's labels[/]")
    t = Table(title="footwear views")
    t.add_column("figure")
    t.add_column("value", justify="right")
    flat: dict[str, Any] = {}
    for k, v in report.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[f"{k}.{k2}"] = v2
        else:
            flat[k] = v
    for k, v in flat.items():
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    c.print(t)


@app.command("views")
def train_views(
    data: Path = DATA,
    out: Path = OUT,
    seed: int = SEED,
    size: str = SIZE,
    features: str = typer.Option("hog", help="Clustering features: hog | random-cnn | embedder | histogram."),
    pca_dims: int = typer.Option(8, help="PCA dimensions before KMeans."),
    types_from: str = typer.Option("catalogue", help="catalogue: each shoe's type is known metadata (as in the original); clusters: only from the labels file."),
    compare: str = typer.Option("", help="Comma-separated other feature backbones whose silhouette curves go on the same plot."),
    k_min: int = typer.Option(2, help="Smallest k of the sweep."),
    k_max: int = typer.Option(20, help="Largest k of the sweep."),
    k: int = typer.Option(None, help="Use this k instead of the rule's."),
    k_rule: str = typer.Option("silhouette", help="How k is chosen: silhouette (best score) | elbow (SSE knee)."),
    labels: Path = typer.Option(None, help="A person's labels file (cluster → best_view, type)."),
    name_from_ground_truth: bool = typer.Option(False, "--name-from-ground-truth", help="EVALUATION ONLY: name clusters from the generated ground truth."),
    embedder_weights: Path = typer.Option(Path("training/weights/embedder"), help="Embedder weights for --features embedder."),
    steps: int = typer.Option(None, help="Classifier training steps (default: the preset's)."),
    internal_size: int = typer.Option(None, help="Side the classifier sees (224, 112, 56; default: the preset's)."),
    stem: int = typer.Option(None, help="Filters of a learned stride-2 stem (0: none; use with --internal-size 224)."),
    width: int = typer.Option(None, help="Width of the small backbone (default: the preset's)."),
    batch_size: int = typer.Option(None, help="Batch size (default: the preset's)."),
    eval_split: str = typer.Option("val", help="Held-out split the report scores: val (to choose runs) | test."),
    by_type: bool = typer.Option(True, "--by-type/--no-by-type", help="Ground-truth naming: also name best views per footwear type."),
    lr1: float = typer.Option(None, help="Learning rate of stage 1 (default: the preset's)."),
    lr2: float = typer.Option(None, help="Learning rate of stage 2 (default: the preset's)."),
    init: Path = typer.Option(None, "--init", help="Continue from this view-classifier weights directory (same architecture)."),
    max_minutes: float = MAX_MIN,
) -> None:
    """Cluster the view images, write contact sheets and (given labels) train the classifier."""

    try:
        over = {k2: v for k2, v in dict(steps=steps, internal_size=internal_size, stem=stem, width=width,
                                        batch_size=batch_size, lr1=lr1, lr2=lr2).items() if v is not None}
        cfg = V.ViewConfig.preset(size, **over)
        report = V.run(
            data, out, cfg, seed, features, tuple(x for x in compare.split(",") if x), (k_min, k_max), k, labels,
            name_from_ground_truth, embedder_weights, max_minutes * 60 if max_minutes else None, k_rule,
            pca_dims, types_from, eval_split, by_type, init,
        )
    except LookserveError as e:
        fail(e)
    report["machine"] = _machine()
    _print_views(report)
    if "next" in report:
        _console().print(f"[bold]next:[/] {report['next']}")


@eval_app.command("views")
def eval_views(
    data: Path = DATA,
    weights: Path = typer.Option(..., "--weights", help="Weights directory of the view classifier."),
    split: str = typer.Option("test", help="Held-out split: test | val."),
) -> None:
    """Print held-out figures: type accuracy (per image, per shoe), best-view accuracy, thumbnail choice, view purity."""

    try:
        report = V.evaluate(data, weights, split)
    except LookserveError as e:
        fail(e)
    _print_views(report)


# --------------------------------------------------------------------------------------------
# detector: thin wrappers over lookserve.training.detector (owned by its developer)
# --------------------------------------------------------------------------------------------
@app.command("detector")
def train_detector(
    data: Path = DATA,
    out: Path = OUT,
    seed: int = SEED,
    size: str = SIZE,
    steps: int = typer.Option(None, help="Training steps (default: the preset's)."),
    max_minutes: float = MAX_MIN,
    init_weights: Path = typer.Option(None, "--init-weights", help="Continue from this weights directory "
                                      "(same architecture; fresh optimizer and schedule)."),
) -> None:
    """Train the Mask R-CNN detector (see lookserve.training.detector.train_detector)."""

    try:
        result = _train(data, out, seed=seed, size=size, steps=steps, max_minutes=max_minutes,
                        init_weights=init_weights)
    except LookserveError as e:
        fail(e)
    if result is not None:
        _console().print_json(json.dumps(result, default=str))


@eval_app.command("detector")
def eval_detector(
    data: Path = DATA,
    weights: Path = typer.Option(..., "--weights", help="Weights directory of the detector."),
    split: str = typer.Option("test", help="Which split's street photos to evaluate on."),
) -> None:
    """Evaluate the detector on held-out street photos (see lookserve.training.detector.evaluate_detector)."""

    try:
        result = _eval(data, weights, split)
    except LookserveError as e:
        fail(e)
    if result is not None:
        _console().print_json(json.dumps(result, default=str))


# --------------------------------------------------------------------------------------------
# everything (make train)
# --------------------------------------------------------------------------------------------
@app.command("all")
def train_all(
    data: Path = typer.Option(Path("runs/data"), "--data", help="Data set root; generated first when missing."),
    seed: int = SEED,
    preset: str = typer.Option("small", help="Data preset used when the data set has to be generated."),
    out_root: Path = typer.Option(Path("runs/weights"), help="Writes <out-root>/{detector,embedder,view_classifier}."),
    max_minutes: float = typer.Option(20.0, "--max-minutes", help="Time budget per model."),
    skip_detector: bool = typer.Option(False, help="Train only the embedder and the view classifier."),
) -> None:
    """Regenerate the data (if missing) and retrain all three models from one seed.

    The view classifier's clusters are named from the generated ground truth here (evaluation-only
    naming, said in its report), so the run needs no person; the reference weights were made the same way.
    """
    if not (data / "photos" / "photos.txt").exists():
        _console().print(f"generating the {preset} data set into {data} (seed {seed})")
        synth.generate(data, synth.SynthConfig.preset(preset), seed)
    if not skip_detector:
        train_detector(data=data, out=out_root / "detector", seed=seed, size="small", steps=None, max_minutes=max_minutes)
    train_embedder(
        data=data, out=out_root / "embedder", seed=seed, size="small", mining="random", dim=128, margin=None,
        products_per_batch=16, internal_size=None, steps_per_epoch=None, stage1_epochs=None, stage2_epochs=None,
        lr1=None, lr2=None, init=None, eval_split="val", max_minutes=max_minutes,
    )
    train_views(
        data=data, out=out_root / "view_classifier", seed=seed, size="small", features="hog", pca_dims=8,
        types_from="catalogue", compare="random-cnn,histogram", k_min=2, k_max=15, k=None, k_rule="silhouette",
        labels=None, name_from_ground_truth=True, embedder_weights=out_root / "embedder", steps=None,
        internal_size=None, stem=None, width=None, batch_size=None, eval_split="val", by_type=True,
        lr1=None, lr2=None, init=None,
        max_minutes=max_minutes,
    )
