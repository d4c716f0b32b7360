"""``lookserve export ...``: a thin shell over :mod:`lookserve.export.models`.

Nothing heavy is imported at module level: TensorFlow, tf2onnx and onnxruntime load inside the
commands.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lookserve.cliutil import fail
from lookserve.errors import LookserveError
from lookserve.export.core import ParitySamples
from lookserve.export.models import (
    export_keras_file,
    export_saved_model,
    export_tflite,
    export_trained,
    find_trained,
)
from lookserve.training.embedder import load_eval_data

app = typer.Typer(no_args_is_help=True, help="Export trained models to ONNX behind a parity gate.")

WEIGHTS = typer.Option(..., "--weights", help="Directory of trained weights (config.json + model.weights.h5).")
VERSION = typer.Option(..., "--version", min=1, help="Triton model version to write (a new, positive integer).")
REPOSITORY = typer.Option(Path("model_repository"), "--repository", help="Triton model repository.")
OPSET = typer.Option(17, "--opset", min=13, help="ONNX opset (recorded in export.json).")
VARIANT = typer.Option("fp32", "--variant", help="fp32; fp16 (GPU) or int8 (CPU, dynamic quantization) as their own version.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing version directory (versions are otherwise immutable).")
NAME = typer.Option(..., "--name", help="Model name in the repository.")
PHOTOS = typer.Option(None, "--photos", help="Directory of images for the gate's photo samples (default: seeded synthetic scenes).")
STREET_DATA = typer.Option(
    None, "--street-data",
    help="street2shop-format data root whose street photos the detector's gate runs on "
         "(default: a small seeded data set generated for the gate).")


def _samples(photos: Path | None, street_data: Path | None = None):
    return ParitySamples(photo_dir=photos, street_data=street_data)


def _console():
    return Console(soft_wrap=True)  # messages stay whole lines (grep-able, testable)


def _report(result) -> None:
    c = _console()
    t = Table(title=f"parity gate: {result.name} v{result.version} ({result.variant}, opset {result.opset})")
    for col in ("output", "metric", "samples", "value", "limit", "ok"):
        t.add_column(col)
    for f in result.figures:
        t.add_row(f.output, f.metric, f.samples, f"{f.value:.6g}", f"{f.limit:g}", "✓" if f.passed else "✗")
    c.print(t)
    for label, info in result.metadata.get("parity", {}).get("samples", {}).items():
        extra = f", {info['reference_detections']} reference detections" if "reference_detections" in info else ""
        c.print(f"{label}: {info['rows']} rows, seed {info['seed']}{', ' + info['source'] if 'source' in info else ''}{extra}")
    retrieval = result.metadata.get("retrieval")
    if retrieval:
        c.print(f"retrieval top-1: source {retrieval['top1_source']:.4f}, ONNX {retrieval['top1_onnx']:.4f} "
                f"(change {retrieval['top1_change']:+.4f}, limit ±{retrieval['top1_change_limit']:g}) "
                f"on {retrieval['queries']} held-out queries, gallery {retrieval['gallery']}")
    c.print(f"wrote {result.onnx_path}\n      {result.export_json}\n      {result.config_path}\n      {result.gpu_config_path}")


def _run(fn, *args, **kwargs) -> None:
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=_console(), transient=True) as progress:
            progress.add_task("converting with tf2onnx and running the parity gate", total=None)
            result = fn(*args, **kwargs)
    except LookserveError as e:
        fail(f"export failed: {e}")
    _report(result)


def _trained(kind: str, weights: Path, version: int, repository: Path, opset: int, variant: str, overwrite: bool,
             photos: Path | None = None, street_data: Path | None = None, **extra) -> None:
    _run(export_trained, kind, weights, repository, version, opset=opset, variant=variant, overwrite=overwrite,
         samples=_samples(photos, street_data), **extra)


@app.command()
def detector(weights: Path = WEIGHTS, version: int = VERSION, repository: Path = REPOSITORY, opset: int = OPSET,
             variant: str = VARIANT, overwrite: bool = OVERWRITE, photos: Path = PHOTOS,
             street_data: Path = STREET_DATA) -> None:
    """Export the Mask R-CNN detector (gate on street photos: ≥ 2 reference detections per photo, the same
    detections, boxes ≤ 0.5 px, scores ≤ 1e-4, mask IoU ≥ 0.99)."""
    _trained("detector", weights, version, repository, opset, variant, overwrite, photos, street_data)


@app.command()
def embedder(
    weights: Path = WEIGHTS, version: int = VERSION, repository: Path = REPOSITORY, opset: int = OPSET,
    variant: str = VARIANT, overwrite: bool = OVERWRITE, photos: Path = PHOTOS,
    eval_data: Path = typer.Option(None, "--eval-data", help="Data set root: add held-out retrieval top-1 (source vs ONNX)."),
) -> None:
    """Export the triplet embedder (gate: cosine ≥ 0.9999 per row; with --eval-data, required for
    --variant fp16/int8: held-out retrieval top-1 within ±0.01 of the source's)."""
    extra = {}
    if eval_data is not None:
        try:
            extra["eval_data"] = load_eval_data(eval_data)
        except LookserveError as e:
            fail(f"cannot load --eval-data: {e}")
    _trained("embedder", weights, version, repository, opset, variant, overwrite, photos, **extra)


@app.command("view-classifier")
def view_classifier(weights: Path = WEIGHTS, version: int = VERSION, repository: Path = REPOSITORY, opset: int = OPSET,
                    variant: str = VARIANT, overwrite: bool = OVERWRITE, photos: Path = PHOTOS) -> None:
    """Export the view classifier (gate: probabilities within 1e-4)."""
    _trained("view_classifier", weights, version, repository, opset, variant, overwrite, photos)


@app.command("all")
def export_all(
    weights_root: Path = typer.Option(Path("training/weights"), "--weights-root",
                                      help="Its sub-directories hold trained weights (config.json names the kind)."),
    version: int = VERSION, repository: Path = REPOSITORY, opset: int = OPSET, overwrite: bool = OVERWRITE,
    photos: Path = PHOTOS, street_data: Path = STREET_DATA,
) -> None:
    """Export every trained model found under --weights-root as --version."""

    try:
        found = find_trained(weights_root)
    except LookserveError as e:
        fail(f"export failed: {e}")
    if not found:
        fail(f"no trained weights under {weights_root} (sub-directories with config.json + model.weights.h5)")
    for kind, path in found.items():
        _trained(kind, path, version, repository, opset, "fp32", overwrite, photos,
                 street_data if kind == "detector" else None)


@app.command()
def keras(path: Path = typer.Argument(..., help="A .keras model file."), name: str = NAME, version: int = typer.Option(1, "--version", min=1),
          repository: Path = REPOSITORY, opset: int = OPSET, variant: str = VARIANT, overwrite: bool = OVERWRITE, photos: Path = PHOTOS) -> None:
    """Export any Keras 3 model file (every floating output within 1e-4, integer outputs exact)."""

    _run(export_keras_file, path, name, repository, version, opset=opset, variant=variant, overwrite=overwrite,
         samples=_samples(photos))


@app.command("saved-model")
def saved_model(path: Path = typer.Argument(..., help="A SavedModel directory."), name: str = NAME,
                version: int = typer.Option(1, "--version", min=1), repository: Path = REPOSITORY, opset: int = OPSET,
                signature: str = typer.Option("serving_default", help="The signature to export."),
                variant: str = VARIANT, overwrite: bool = OVERWRITE, photos: Path = PHOTOS) -> None:
    """Export a TensorFlow SavedModel signature."""

    _run(export_saved_model, path, name, repository, version, signature=signature, opset=opset, variant=variant,
         overwrite=overwrite, samples=_samples(photos))


@app.command()
def tflite(path: Path = typer.Argument(..., help="A .tflite file."), name: str = NAME,
           version: int = typer.Option(1, "--version", min=1), repository: Path = REPOSITORY, opset: int = OPSET,
           variant: str = VARIANT, overwrite: bool = OVERWRITE, photos: Path = PHOTOS) -> None:
    """Export a TFLite model (gate: against TensorFlow's TFLite interpreter)."""

    _run(export_tflite, path, name, repository, version, opset=opset, variant=variant, overwrite=overwrite,
         samples=_samples(photos))
