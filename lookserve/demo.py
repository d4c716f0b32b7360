"""``lookserve demo``: the main job end to end, on this machine, in a few minutes.

1. generate a fresh street2shop-format data set (a seed the reference models never saw);
2. export the committed reference weights (``training/weights``) to ``model_repository/``
   behind the parity gate — skipped when version 1 was already exported from the same weights;
3. start real Triton on a free 127.0.0.1 port and load detector, embedder and view classifier;
4. build the catalog index of the data set's shop photos through the served embedder;
5. shop the look on street photos (JSON + rendered PNG per photo) and score it against the
   ground truth; pick thumbnails and footwear types for every shoe and score them;
6. stop Triton and print where everything is.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from lookserve import contracts
from lookserve.bench.look_server import CountingClient
from lookserve.client.catalog import (
    Catalog,
    TritonEmbedder,
    build_catalog,
    load_records,
    open_for_client,
)
from lookserve.client.core import TritonClient
from lookserve.client.evaluation import evaluate_pairs, evaluate_thumbnails
from lookserve.client.look import LookConfig, LookPipeline, write_result
from lookserve.client.look_remote import RemoteLook
from lookserve.client.models import verify_export
from lookserve.client.render import render_look, render_thumbnails
from lookserve.client.thumbnails import ThumbnailPipeline, find_products, write_outputs
from lookserve.data.synth import SynthConfig, generate
from lookserve.errors import LookserveError
from lookserve.export.core import sha256_path
from lookserve.export.models import export_trained, find_trained
from lookserve.server.launcher import ServerOptions, TritonServer, free_port
from lookserve.server.pipelines.repository import load_look

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

MODELS = (contracts.DETECTOR, contracts.EMBEDDER, contracts.VIEW_CLASSIFIER)


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("runs/demo")
    weights_root: Path = Path("training/weights")
    model_repository: Path = Path("model_repository")
    seed: int = 7  # the reference models were trained on seed 0
    products: int = 160
    street: int = 24
    shoes: int = 30
    reexport: bool = False
    render: int = 6  # street photos rendered to PNG


def _needs_export(repository: Path, name: str, weights: Path) -> bool:
    """True unless ``<name>/1`` holds a complete export of exactly these weights: its export.json
    records these weights' sha256, a passed parity gate and the sha256 of the model.onnx that is
    there (a model.onnx replaced or damaged since is exported again)."""

    version = repository / name / "1"
    info_path = version / "export.json"
    if not (version / "model.onnx").is_file() or not info_path.is_file():
        return True
    try:
        info = json.loads(info_path.read_text())
        if info.get("source", {}).get("sha256") != sha256_path(weights):
            return True
        check = verify_export(version / "model.onnx", info)
    except (OSError, ValueError, AttributeError, LookserveError):
        return True
    if not check.verified:
        log.info("%s version 1 is exported again: %s", name, check.reason)
    return not check.verified


def export_reference(options: DemoOptions) -> list[str]:
    """Export the reference weights that are not yet served as version 1; returns those exported."""

    found = find_trained(options.weights_root)
    missing = [m for m in MODELS if m not in found]
    if missing:
        raise LookserveError(f"no reference weights for {', '.join(missing)} under {options.weights_root} "
                             "(train them: make train)")
    done = []
    for kind in MODELS:
        if options.reexport or _needs_export(options.model_repository, kind, found[kind]):
            log.info("exporting %s from %s (parity gate)", kind, found[kind])
            export_trained(kind, found[kind], options.model_repository, 1, overwrite=True)
            done.append(kind)
        else:
            log.info("%s: version 1 already exported from these weights", kind)
    return done


def compare_one_call(server, catalog_dir: Path, photos: list[Path], model_repository: Path | None = None) -> dict:
    """Load the ``look`` model on the demo's catalog and run the same photos through the client
    chain and through one ``look`` call each (with masks, and without), one after the other
    (concurrency 1): latency, tensor bytes per photo, and how many JSON documents of the chain and
    of the one call are identical apart from timings."""


    catalog_dir = Path(catalog_dir).resolve()  # both sides open the catalog by the same path (the JSON names it)
    catalog = Catalog.open(catalog_dir)
    with TritonClient(server.grpc_url, repository_key=server.repository_key, timeout_s=120.0) as admin:
        load_look(admin, model_repository, catalog_dir)  # a repository of exports only gets look's entry
    figures: dict[str, dict] = {}
    docs: dict[str, list] = {}
    with TritonClient(server.grpc_url, timeout_s=120.0) as client:
        modes = {"client chain": lambda c: LookPipeline(c, catalog).run, "one call": lambda c: RemoteLook(c).run,
                 "one call, no masks": lambda c: lambda p: RemoteLook(c).run(p, include_masks=False)}
        for mode, make in modes.items():
            counter = CountingClient(client)
            run = make(counter)
            run(photos[0])  # warm
            counter.sent = counter.received = 0
            latencies, docs[mode] = [], []
            for photo in photos:
                t = time.perf_counter()
                out = run(photo)
                latencies.append((time.perf_counter() - t) * 1e3)
                doc = out if isinstance(out, dict) else json.loads(out.to_json())
                docs[mode].append({k: v for k, v in doc.items() if k != "timings_ms"})
            figures[mode] = {"p50_ms": round(float(np.percentile(latencies, 50)), 1),
                             "mean_ms": round(float(np.mean(latencies)), 1),
                             "bytes_per_photo": round((counter.sent + counter.received) / len(photos))}
    same = sum(a == b for a, b in zip(docs["client chain"], docs["one call"], strict=True))
    jpeg = float(np.mean([Path(p).stat().st_size for p in photos]))
    return {**figures, "photos": len(photos), "identical_json": same, "mean_jpeg_bytes": round(jpeg)}


def run_demo(options: DemoOptions) -> dict:
    """Run the whole demo and return its figures (also written to ``<out>/summary.json``)."""

    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data_root = out / "data"
    config = SynthConfig(n_products=options.products, n_street=options.street, n_shoes=options.shoes,
                         split_fractions=(0.0, 0.0, 1.0))  # every product held out: nothing to train on here
    generate(data_root, config, seed=options.seed, overwrite=True, progress=True)
    timings["generate data"] = time.perf_counter() - t

    t = time.perf_counter()
    exported = export_reference(options)
    timings["export"] = time.perf_counter() - t

    server_options = ServerOptions(model_repository=options.model_repository.resolve(), grpc_port=free_port(),
                                   load_models=MODELS, work_dir=None)
    t = time.perf_counter()
    with TritonServer(server_options) as server:
        timings["start Triton + load 3 models"] = time.perf_counter() - t
        with TritonClient(server.grpc_url, timeout_s=60.0) as client:
            client.wait_ready(deadline_s=60.0)
            t = time.perf_counter()
            records = load_records(data_root)
            catalog_dir = out / "catalog"
            build_catalog(records, catalog_dir, TritonEmbedder(client), batch_size=32, concurrency=2,
                          model_repository=options.model_repository, progress=True, images_root=data_root)
            catalog = open_for_client(catalog_dir, client, options.model_repository)
            timings["build catalog"] = time.perf_counter() - t

            t = time.perf_counter()
            pipe = LookPipeline(client, catalog, LookConfig(timeout_s=60.0))
            results: dict[Path, object] = {}
            look_figures = evaluate_pairs(pipe, data_root, split="test", concurrency=2, results=results)
            look_dir = out / "look"
            for path, result in list(results.items())[: options.render]:
                if isinstance(result, LookserveError):
                    continue  # counted in look_figures["failed_photos"]
                write_result(result, look_dir / f"{path.stem}.json")
                render_look(result, path, catalog, look_dir / f"{path.stem}.png", pipe.config.k)
            timings["shop the look"] = time.perf_counter() - t

            t = time.perf_counter()
            one_call = compare_one_call(server, catalog_dir, list(results), options.model_repository)
            timings["shop the look in one call (look model)"] = time.perf_counter() - t

            t = time.perf_counter()
            thumbs = ThumbnailPipeline(client)
            products = find_products(data_root)
            results = [r for r in thumbs.run_many(products, concurrency=2) if not isinstance(r, LookserveError)]
            thumb_dir = out / "thumbnails"
            write_outputs(results, thumb_dir)
            render_thumbnails(results, thumb_dir / "contact_sheet.png")
            thumb_figures = evaluate_thumbnails(results, data_root, splits=None)
            timings["thumbnails"] = time.perf_counter() - t
            versions = {m: client.model_metadata(m).versions for m in MODELS}

    summary = {
        "data": str(data_root), "seed": options.seed, "exported": exported, "served_versions": versions,
        "catalog": {"dir": str(catalog_dir), "photos": len(records), "categories": sorted(catalog.categories)},
        "look": look_figures, "look_outputs": str(look_dir), "one_call": one_call,
        "thumbnails": {**thumb_figures, "answered": len(results), "failed": len(products) - len(results)},
        "thumbnail_outputs": str(thumb_dir), "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _print_summary(summary: dict) -> None:
    console = Console()
    look, thumbs = summary["look"], summary["thumbnails"]
    table = Table("figure", "value", "baseline / other definition",
                  title="lookserve demo (every product held out from training)")
    table.add_row("models exported now", ", ".join(summary["exported"]) or "none (already up to date)")
    table.add_row("served versions", ", ".join(f"{m} v{','.join(v)}" for m, v in summary["served_versions"].items()))
    table.add_row("catalog", f"{summary['catalog']['photos']} shop photos, {len(summary['catalog']['categories'])} categories")
    k = look["k"]
    table.add_row("look: street photos / pairs", f"{look['street_photos']} / {look['pairs']}")
    table.add_row(f"look: item detected (its category, IoU ≥ {look['min_iou']} with the true box)", f"{look['detected']:.3f}",
                  f"category only, any box: {look['detected_category_only']:.3f}")
    table.add_row("look: top-1 product", f"{look['top1_accuracy']:.3f}", f"random ranking {look['chance_top1']:.3f}")
    table.add_row(f"look: top-{k} product", f"{look[f'top{k}_accuracy']:.3f}", f"random ranking {look[f'chance_top{k}']:.3f}")
    table.add_row("thumbnails: products (answered)", f"{thumbs['products']} ({thumbs['answered']})")
    table.add_row("thumbnails: thumbnail is a best view", f"{thumbs['thumbnail_accuracy']:.3f}",
                  f"random view {thumbs['thumbnail_baseline_random']:.3f}; "
                  f"never back or sole {thumbs['thumbnail_baseline_no_back_sole']:.3f}")
    table.add_row("thumbnails: footwear type", f"{thumbs['type_accuracy']:.3f}",
                  f"most common type {thumbs['type_baseline_majority']:.3f}")
    one = summary.get("one_call")
    if one:
        chain, call = one["client chain"], one["one call"]
        table.add_row("one look call vs client chain: p50 latency (c=1)", f"{call['p50_ms']:.0f} ms",
                      f"client chain {chain['p50_ms']:.0f} ms")
        lean = one.get("one call, no masks", {}).get("bytes_per_photo", "-")
        table.add_row("one look call vs client chain: tensor bytes per photo",
                      f"{call['bytes_per_photo']} ({lean} without masks)",
                      f"client chain {chain['bytes_per_photo']}; JPEG {one['mean_jpeg_bytes']}")
        table.add_row("one look call: JSON identical to the client chain's", f"{one['identical_json']} / {one['photos']}")
    for key, value in summary["timings_s"].items():
        table.add_row(f"time: {key}", f"{value:.1f} s")
    console.print(table)
    console.print(f"shop the look: {summary['look_outputs']}/*.png   thumbnails: "
                  f"{summary['thumbnail_outputs']}/contact_sheet.png   figures: {Path(summary['look_outputs']).parent}/summary.json")
    console.print("web page: lookserve serve -m '*' (one terminal), then lookserve ui --catalog "
                  f"{summary['catalog']['dir']} --samples {summary['data']} (another) and open http://127.0.0.1:8501")


@app.command("demo")
def demo(
    out: Path = typer.Option(DemoOptions.out, "--out", "-o", help="Folder for the data, catalog and results."),
    seed: int = typer.Option(DemoOptions.seed, "--seed", help="Seed of the generated data (reference models: 0)."),
    products: int = typer.Option(DemoOptions.products, "--products", min=11, help="Catalog products."),
    street: int = typer.Option(DemoOptions.street, "--street", min=1, help="Street photos."),
    shoes: int = typer.Option(DemoOptions.shoes, "--shoes", min=1, help="Footwear products (5 views each)."),
    reexport: bool = typer.Option(False, "--reexport", help="Export even when version 1 matches the weights."),
    weights_root: Path = typer.Option(DemoOptions.weights_root, "--weights-root"),
    model_repository: Path = typer.Option(DemoOptions.model_repository, "--model-repository"),
) -> None:
    """The main job end to end: data → export → Triton → catalog → shop the look + thumbnails."""
    options = DemoOptions(out=out, weights_root=weights_root, model_repository=model_repository, seed=seed,
                          products=products, street=street, shoes=shoes, reexport=reexport)
    try:
        summary = run_demo(options)
    except LookserveError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from e
    _print_summary(summary)
