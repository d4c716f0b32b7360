"""CLI of the client chains: ``lookserve look``, ``lookserve thumbnails``, ``lookserve catalog ...``
and the evaluations (``eval_app``: ``look``, ``thumbnails``).

Nothing heavy is imported at module level; every command opens its own client.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lookserve.bench.search import catalog_search_bench
from lookserve.client.catalog import (
    Catalog,
    CatalogWatcher,
    IndexParams,
    TritonEmbedder,
    build_catalog,
    describe,
    follow_catalog,
    is_milvus_address,
    load_records,
    open_catalog,
    open_for_client,
)
from lookserve.client.catalog.filters import check, parse
from lookserve.client.core import TritonClient
from lookserve.client.evaluation import evaluate_pairs, evaluate_thumbnails
from lookserve.client.look import FilterConfig, LookConfig, LookPipeline, write_result
from lookserve.client.look_remote import RemoteLook, result_from_dict, write_document
from lookserve.client.pose import TflitePoseModels, TritonPoseModels, analyse, check_gate
from lookserve.client.render import render_look, render_poses, render_thumbnails
from lookserve.client.thumbnails import (
    RemoteThumbnails,
    ThumbnailConfig,
    ThumbnailPipeline,
    find_products,
    write_outputs,
)
from lookserve.cliutil import (
    error,
    fail,
    finish_batch,
    handle_errors,
    is_interactive,
    stderr_console,
    stdout_console,
    url_option,
    warn,
)
from lookserve.data.footwear import shoes_in_splits
from lookserve.data.pretrained import POSE_DETECTION, POSE_LANDMARK_FULL, mediapipe_model
from lookserve.errors import DataError, LookserveError
from lookserve.fsutil import atomic_write_json
from lookserve.images import IMAGE_SUFFIXES, decode_image

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)
catalog_app = typer.Typer(no_args_is_help=True, help="Build and inspect catalog indexes.")
eval_app = typer.Typer(no_args_is_help=True, help="End-to-end accuracy of the client chains on held-out data.")

_URL = url_option()
_TIMEOUT = typer.Option(30.0, "--timeout", help="Per-request deadline in seconds.")
_CATALOG = typer.Option(..., "--catalog", "-c", help="Catalog directory (lookserve catalog build).")
_REPO = typer.Option(None, "--model-repository", help="Served model repository: also check the embedder's model-file checksum.")


def _console():
    """Results console (stdout); errors go through lookserve.cliutil (stderr, plain text)."""
    return stdout_console()


def _finish_look(table, total: int, failed: list, out: Path) -> None:
    """The end of ``lookserve look`` (client chain or one call): the table, what was written,
    each failed image on stderr, and the batch exit code."""
    console = _console()
    console.print(table)
    done = total - len(failed)
    console.print(f"wrote {done} result{'s' * (done != 1)} to {escape(str(out))}", soft_wrap=True)
    for path, e in failed:
        error(f"{path}: {e}")
    finish_batch(len(failed), total, "images")


def open_client(url: str, timeout: float):
    """A client of a ready server: a malformed --url is refused at once (exit 2), an address where
    nothing answers after about a second, one that answers but is not ready after the deadline."""

    client = TritonClient(url, timeout_s=timeout)
    try:
        client.wait_ready(deadline_s=min(30.0, timeout))
    except BaseException:
        client.close()
        raise
    return client


def _progress(enabled: bool | None, total: int, what: str):
    """A progress bar on stderr (shown when stderr is a terminal, or when asked); yields ``advance()``."""

    @contextlib.contextmanager
    def bar():
        if not (is_interactive() if enabled is None else enabled):
            yield lambda: None
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=stderr_console(), transient=False) as p:
            task = p.add_task(what, total=total)
            yield lambda: p.advance(task)

    return bar()


# ------------------------------------------------------------------------------------------
# lookserve look
# ------------------------------------------------------------------------------------------
@app.command("look")
@handle_errors
def look(
    images: list[Path] = typer.Argument(..., metavar="IMAGE",
                                        help="Street or model photos (JPEG, PNG, WebP, BMP), or folders of them."),
    catalog_dir: str | None = typer.Option(None, "--catalog", "-c", help="Catalog directory (lookserve catalog build) "
                                           "or milvus://HOST:PORT/ALIAS; not needed with --server."),
    out: Path = typer.Option(Path("runs/look"), "--out", "-o", help="Folder for <image>.json and <image>.png."),
    url: str = _URL,
    k: int = typer.Option(6, "--k", "-k", min=1, help="Products per item."),
    min_score: float = typer.Option(0.75, "--min-score", min=0.0, max=1.0),
    score_filter: bool = typer.Option(True, "--score-filter/--no-score-filter", help="Drop instances below --min-score."),
    catalog_only: bool = typer.Option(True, "--catalog-categories/--all-categories", help="Drop categories the catalog lacks."),
    best_only: bool = typer.Option(True, "--best-per-category/--all-instances", help="Keep the best instance per category."),
    crop: str = typer.Option("box", "--crop", help="box or mask."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Images in flight."),
    render: bool = typer.Option(True, "--render/--no-render", help="Write a PNG per image."),
    masks_in_json: bool = typer.Option(True, "--masks/--no-masks", help="Include the 28×28 masks in the JSON."),
    model_repository: Path | None = _REPO,
    timeout: float = _TIMEOUT,
    watch_interval: float | None = typer.Option(
        None, "--watch-interval", min=0.0,
        help="--catalog is a catalog root (catalog-v<N> folders + `current`): look at `current` every this many "
             "seconds and move to the catalog it names mid-run (lookserve models swap-embedder)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress bar on stderr (default: when stderr is a terminal)."),
    catalog_filter: str | None = typer.Option(
        None, "--filter", help='Only products whose attributes pass, e.g. \'price < 50 and brand in ["a", "b"] and in_stock\'.'),
    server: bool = typer.Option(False, "--server", help="One call per photo to the server's `look` model (the same "
                                "chain, run inside Triton on the catalog it serves) instead of the client chain."),
    gate: str = typer.Option("off", "--gate", help="off, person or full-shot: a photo without a person (or without "
                             "a head-to-ankles person) is answered with the reason and not searched; needs the "
                             "pose_detector and pose_landmarks models (README, \"Full-shot gate\")."),
) -> None:
    """Shop the look: detect garments, match each against the catalog, write JSON (+ PNG)."""

    images = _image_paths(images)
    config = LookConfig(filter=FilterConfig(min_score, score_filter, catalog_only, best_only), k=k, crop=crop,
                        timeout_s=timeout, catalog_filter=catalog_filter, gate=gate)
    if server:
        _look_server(images, config, out, url, timeout, concurrency, render, masks_in_json, progress)
        return
    if catalog_dir is None:
        fail("--catalog is required (or --server: the look model searches the catalog the server serves)")
    with open_client(url, timeout) as client:
        if watch_interval is None:
            pipe = LookPipeline(client, open_catalog(catalog_dir, client, model_repository), config)
        elif is_milvus_address(catalog_dir):  # follows the alias, as a watcher follows `current`
            pipe = LookPipeline(client, follow_catalog(catalog_dir, client, watch_interval, model_repository), config)
        else:
            pipe = LookPipeline(client, CatalogWatcher(catalog_dir, client, watch_interval, model_repository), config)
        if catalog_filter is not None:  # an unknown attribute or a type mismatch is refused before any image

            check(parse(catalog_filter), pipe.catalog.describe()["attributes"])
        searched: dict[str, Catalog] = {}  # the catalog each result was matched in, for its shop photos

        def catalog_of(result) -> Catalog:
            if result.catalog not in searched:
                now = pipe.catalog
                searched[result.catalog] = now if str(now.path) == result.catalog else open_catalog(result.catalog, verify=False)
            return searched[result.catalog]

        table = Table("image", "items", "top-1 per item", "client ms", "total ms")
        failed: list[tuple[Path, LookserveError]] = []
        names = _output_names(images)
        with _progress(progress, len(images), "looking") as advance:
            for path, result in zip(images, pipe.run_many(images, concurrency=concurrency), strict=True):
                advance()
                if isinstance(result, LookserveError):
                    failed.append((path, result))
                    table.add_row(escape(path.name), "error", "", "", "")
                    continue
                write_result(result, out / f"{names[path]}.json", include_masks=masks_in_json)
                if render:
                    render_look(result, path, catalog_of(result), out / f"{names[path]}.png", k)
                tops = "; ".join(f"{i.detection.category}→#{i.matches[0].product_id} ({i.matches[0].similarity:.2f})"
                                 if i.matches else f"{i.detection.category}→-" for i in result.items)
                if result.gate is not None and not result.gate["passed"]:
                    tops = f"gate: {result.gate['reason']}"
                table.add_row(escape(path.name), str(len(result.items)), tops or "-",
                              f"{result.timings_ms['client']:.1f}", f"{result.timings_ms['total']:.1f}")
    _finish_look(table, len(images), failed, out)


@app.command("pose")
@handle_errors
def pose_command(
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Photos, or folders of them."),
    url: str = _URL,
    interpreter: bool = typer.Option(False, "--interpreter", help="Run MediaPipe's .tflite files in TensorFlow's "
                                     "TFLite interpreter (the reference) instead of the served pose models."),
    gate: str = typer.Option("full-shot", "--gate", help="person or full-shot: how many photos pass it."),
    render: Path | None = typer.Option(None, "--render", help="A PNG sheet of the photos with their landmarks."),
    json_out: Path | None = typer.Option(None, "--json", help="Every photo's verdict as JSON."),
    timeout: float = _TIMEOUT,
) -> None:
    """Who is in each photo, and is it a full shot? The pose gate of `lookserve look --gate`."""
    check_gate(gate)
    paths = _image_paths(images)
    with contextlib.ExitStack() as stack:
        if interpreter:
            models = TflitePoseModels(mediapipe_model(POSE_DETECTION), mediapipe_model(POSE_LANDMARK_FULL))
        else:
            models = TritonPoseModels(stack.enter_context(open_client(url, timeout)), timeout_s=timeout)
        table = Table("image", "verdict", "persons", f"{gate} gate")
        shots, docs, failed = [], {}, 0
        for path in paths:
            try:
                image = decode_image(path)
            except LookserveError as e:
                error(f"{path}: {e}")
                failed += 1
                continue
            verdict = analyse(image, models)
            shots.append((path.name, image, verdict))
            docs[str(path)] = verdict.to_dict(gate)
            table.add_row(escape(path.name), verdict.verdict, ", ".join(p.kind for p in verdict.persons) or "-",
                          "pass" if verdict.passes(gate) else escape(verdict.reason(gate)))
    stdout_console().print(table)
    passed = sum(v.passes(gate) for _, _, v in shots)
    typer.echo(f"{passed} of {len(shots)} photos pass the {gate} gate")
    if json_out is not None:
        atomic_write_json(json_out, docs)
    if render is not None and shots:
        render_poses(shots, render)
    finish_batch(failed, len(paths), "images")


def _image_paths(given: list[Path]) -> list[Path]:
    """The photos named: a folder stands for the images directly inside it; none is a usage error."""
    images = [c for p in given for c in (sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES)
                                         if p.is_dir() else [p])]
    if not images:
        fail(DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, given))}: "
                       "the folder is empty or holds no image files"))
    return images


def _output_names(images: list[Path]) -> dict[Path, str]:
    names: dict[Path, str] = {}
    for p in images:  # unique output names even when stems repeat across folders
        stem, n = p.stem, 2
        while stem in names.values():
            stem, n = f"{p.stem}-{n}", n + 1
        names[p] = stem
    return names


def _look_server(images: list[Path], config, out: Path, url: str, timeout: float, concurrency: int, render: bool,
                 masks_in_json: bool, progress: bool | None) -> None:
    """``lookserve look --server``: the JSON the client chain writes, from one ``look`` call per photo;
    the PNG is drawn when the catalog the server searched is readable here."""

    names = _output_names(images)
    table = Table("image", "items", "top-1 per item", "server ms")
    failed: list[tuple[Path, LookserveError]] = []
    catalogs: dict[str, Catalog | None] = {}
    with open_client(url, timeout) as client, _progress(progress, len(images), "looking") as advance:
        remote = RemoteLook(client, config)
        for path, doc in zip(images, remote.run_many(images, concurrency, include_masks=masks_in_json), strict=True):
            advance()
            if isinstance(doc, LookserveError):
                failed.append((path, doc))
                table.add_row(escape(path.name), "error", "", "")
                continue
            write_document(doc, out / f"{names[path]}.json")
            if render:
                if doc["catalog"] not in catalogs:
                    here = Path(doc["catalog"])
                    catalogs[doc["catalog"]] = Catalog.open(here, verify=False) if (here / "manifest.json").is_file() else None
                    if catalogs[doc["catalog"]] is None:
                        warn(f"the server's catalog {doc['catalog']} is not readable here: no PNG drawn")
                if catalogs[doc["catalog"]] is not None:
                    render_look(result_from_dict(doc), path, catalogs[doc["catalog"]], out / f"{names[path]}.png", config.k)
            tops = "; ".join(f"{i['category']}→#{i['matches'][0]['product_id']} ({i['matches'][0]['similarity']:.2f})"
                             if i["matches"] else f"{i['category']}→-" for i in doc["items"])
            if doc.get("gate") is not None and not doc["gate"]["passed"]:
                tops = f"gate: {doc['gate']['reason']}"
            table.add_row(escape(path.name), str(len(doc["items"])), tops or "-", f"{doc['timings_ms']['total']:.1f}")
    _finish_look(table, len(images), failed, out)


# ------------------------------------------------------------------------------------------
# lookserve thumbnails
# ------------------------------------------------------------------------------------------
def _collect_views(paths: list[Path]) -> dict[str, list[Path]]:
    products: dict[str, list[Path]] = {}
    for p in paths:
        if p.is_dir() and any(c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir()):
            products[p.name] = sorted(c for c in p.iterdir() if c.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_dir():
            products.update(find_products(p))
        else:
            raise DataError(f"{p} is not a folder (give a product folder of views, or a folder of product folders)")
    return products


@app.command("thumbnails")
@handle_errors
def thumbnails(
    views: list[Path] = typer.Argument(..., help="Product folders of view images, or folders of product folders "
                                       "(e.g. a data set root: its footwear/views)."),
    out: Path = typer.Option(Path("runs/thumbnails"), "--out", "-o", help="Folder for thumbnails.csv/.json and the sheet."),
    url: str = _URL,
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Products in flight."),
    sheet: bool = typer.Option(True, "--sheet/--no-sheet", help="Write contact_sheet.png."),
    timeout: float = _TIMEOUT,
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress bar on stderr (default: when stderr is a terminal)."),
    server: bool = typer.Option(False, "--server", help="One call per product to the server's `thumbnails` model "
                                "(the same chain, run inside Triton) instead of the client chain."),
) -> None:
    """Pick each product's best view as its thumbnail and tag its footwear type."""

    products = _collect_views(views)
    with open_client(url, timeout) as client:
        config = ThumbnailConfig(timeout_s=timeout)
        pipe = RemoteThumbnails(client, config) if server else ThumbnailPipeline(client, config)
        results, failed = [], 0
        with _progress(progress, len(products), "thumbnails") as advance:
            for name, r in zip(products, pipe.run_many(products, concurrency), strict=True):
                advance()
                if isinstance(r, LookserveError):
                    failed += 1
                    error(f"{name}: {r}")
                else:
                    results.append(r)
    written = list(write_outputs(results, out))
    if sheet and results:
        written.append(render_thumbnails(results, out / "contact_sheet.png"))
    shown = results[:30]
    table = Table("product", "thumbnail", "best-view p", "type", "type p",
                  caption=f"first {len(shown)} of {len(results)}" if len(shown) < len(results) else None)
    for r in shown:
        table.add_row(escape(r.product), escape(Path(r.thumbnail).name), f"{r.best_view:.2f}", r.footwear_type,
                      f"{r.type_probability:.2f}")
    _console().print(table)
    _console().print(f"wrote {', '.join(escape(str(w)) for w in written)}", soft_wrap=True)
    finish_batch(failed, len(products), "products")


# ------------------------------------------------------------------------------------------
# lookserve catalog ...
# ------------------------------------------------------------------------------------------
@catalog_app.command("build")
@handle_errors
def catalog_build(
    photos: Path = typer.Argument(..., help="A street2shop-format data set root, or a folder of images with a CSV."),
    out: Path = typer.Option(..., "--out", "-o", help="Catalog directory (replaced atomically)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CSV with id,category,image[,title,...] (default: PHOTOS/metadata.csv)."),
    split: list[str] = typer.Option([], "--split", help="Only products of this split (repeatable; street2shop data)."),
    url: str = _URL,
    embedder: str = typer.Option("embedder", "--embedder", help="Served embedder model name."),
    embedder_version: str = typer.Option("", "--embedder-version", help="Pin a version (default: the server's)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight."),
    m: int = typer.Option(16, "--M", min=2, help="HNSW graph degree."),
    ef_construction: int = typer.Option(200, "--ef-construction", min=1),
    k: int = typer.Option(6, "--k", min=1, help="K of the recall@K target used to tune ef."),
    recall_target: float = typer.Option(0.99, "--recall-target", min=0.0, max=1.0),
    model_repository: Path | None = _REPO,
    timeout: float = _TIMEOUT,
) -> None:
    """Embed every shop photo through the served embedder and build the catalog index
    (resumable: an interrupted build continues from OUT.partial)."""

    records = load_records(photos, metadata, split or None)
    params = IndexParams(M=m, ef_construction=ef_construction, k=k, recall_target=recall_target)
    with open_client(url, timeout) as client:
        manifest = build_catalog(records, out, TritonEmbedder(client, embedder, embedder_version), params,
                                 batch_size=batch_size, concurrency=concurrency, model_repository=model_repository,
                                 progress=True, images_root=photos)
    _print_catalog(describe(Catalog.open(out)))
    if manifest.skipped:
        warn(f"{len(manifest.skipped)} of {len(records)} photos could not be read and were skipped "
             f"(listed in {out / 'manifest.json'})")


def _print_catalog(info: dict) -> None:
    c = _console()
    e, n = info["embedder"], info["counts"]
    # an index's count includes the labels updates marked deleted (never returned): shown apart
    deleted = sum(v.get("deleted", 0) for v in info["categories"].values())
    c.print(f"catalog {escape(info['path'])}: {n.get('photos', 0)} photos of {n.get('products', 0)} products "
            f"in {n.get('categories', len(info['categories']))} categories"
            + (f"; {deleted} deleted photos still in the indexes, never returned" if deleted else ""), soft_wrap=True)
    c.print(f"  embedded with model {escape(e['name'])!r} version {e['version']}: {info['dim']}-d vectors, "
            f"{info['space']} distance; HNSW M={info['M']}, ef_construction={info['ef_construction']}", soft_wrap=True)
    table = Table("category", "photos", "deleted", "products", "ef", "recall@K", "K")
    for cat, v in info["categories"].items():
        gone = v.get("deleted", 0)
        table.add_row(cat, str(v["count"] - gone), str(gone), str(v["products"]), str(v["ef"]),
                      f"{v['recall_at_k']:.4f}", str(v["k"]))
    c.print(table)


@catalog_app.command("info")
@handle_errors
def catalog_info(
    catalog_dir: Path = typer.Argument(..., help="Catalog directory."),
    url: str | None = url_option(None, "Also check that this server (host:port; env LOOKSERVE_URL) serves the "
                                       "catalog's embedder version."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Verify a catalog (checksums; with --url the served embedder version) and describe it."""

    if url:
        with open_client(url, 30.0) as client:
            catalog = open_for_client(catalog_dir, client)
    else:
        catalog = Catalog.open(catalog_dir)
    info = describe(catalog)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _print_catalog(info)
    e = info["embedder"]
    _console().print("checksums verified" + (
        f"; {url} serves {e['name']!r} version {e['version']}, the version this catalog was built with" if url
        else " (give --url to also check the served embedder version)"), soft_wrap=True)


@catalog_app.command("bench-search")
def catalog_bench_search(
    n: list[int] = typer.Option([100_000], "--n", help="Category sizes (repeatable)."),
    dim: int = typer.Option(128, "--dim"),
    queries: int = typer.Option(2000, "--queries"),
    m: int = typer.Option(16, "--M", min=2),
    ef_construction: int = typer.Option(200, "--ef-construction", min=1),
    k: int = typer.Option(6, "--k", min=1),
    threads: int = typer.Option(2, "--threads", min=1, help="Build threads (queries always use one)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Append the figures as JSON lines here."),
) -> None:
    """HNSW search latency per item and recall@K vs exact search on synthetic categories, with ef
    tuned as ``catalog build`` tunes it (lookserve.bench.search; ``lookserve bench search`` compares
    engines at large sizes)."""

    params = IndexParams(M=m, ef_construction=ef_construction, k=k)
    rows = []
    for size in n:
        rows.append(catalog_search_bench(size, dim, queries, params, seed, threads=threads))
        if out:  # each size as soon as it is measured
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    table = Table("figure", *(f"n={r['n']}" for r in rows))
    for key in rows[0]:
        table.add_row(key, *(str(r[key]) for r in rows))
    _console().print(table)


# ------------------------------------------------------------------------------------------
# evaluations (eval_app)
# ------------------------------------------------------------------------------------------
@eval_app.command("look")
def eval_look(
    data: Path = typer.Argument(..., help="street2shop-format data set root."),
    catalog_dir: Path = _CATALOG,
    split: str = typer.Option("test", "--split", help="Held-out split of street photos."),
    url: str = _URL,
    k: int = typer.Option(6, "--k", min=1),
    limit: int = typer.Option(0, "--limit", min=0, help="At most this many street photos (0 = all)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1),
    out: Path | None = typer.Option(None, "--out", help="Write the figures as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of a table."),
    timeout: float = _TIMEOUT,
) -> None:
    """End-to-end top-K accuracy: the right product among the top-K of the item detected (its
    category, IoU ≥ 0.5 with the ground-truth box), beside the chance of a random ranking."""

    try:
        with open_client(url, timeout) as client:
            pipe = LookPipeline(client, open_for_client(catalog_dir, client), LookConfig(k=k, timeout_s=timeout))
            figures = evaluate_pairs(pipe, data, split, limit or None, concurrency)
    except LookserveError as e:
        fail(e)
    _write_figures(figures, out)
    if as_json:
        stdout_console().print_json(json.dumps(figures))
    else:
        _print_look_figures(figures, split, k)
    finish_batch(figures["failed_photos"], figures["street_photos"], "street photos")


def _print_look_figures(figures: dict, split: str, k: int) -> None:
    table = Table("category", "pairs", f"detected (IoU ≥ {figures['min_iou']})", "detected (category only)",
                  "top-1", "chance top-1", f"top-{k}", f"chance top-{k}",
                  title=f"shop the look, {split} split: {figures['street_photos']} street photos "
                        f"({figures['failed_photos']} failed)")
    for name, row in [*figures["per_category"].items(), ("all", figures)]:
        table.add_row(name, str(row["pairs"]), *(f"{row[key]:.3f}" if key in row else "—" for key in (
            "detected", "detected_category_only", "top1_accuracy", "chance_top1", f"top{k}_accuracy", f"chance_top{k}")),
            end_section=name == list(figures["per_category"])[-1])
    stdout_console().print(table)


def _write_figures(figures: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2))


@eval_app.command("thumbnails")
def eval_thumbnails(
    data: Path = typer.Argument(..., help="Data set root with footwear/views and footwear/ground_truth.json."),
    split: str = typer.Option("test", "--split", help="Held-out split of shoes."),
    url: str = _URL,
    concurrency: int = typer.Option(4, "--concurrency", min=1),
    out: Path | None = typer.Option(None, "--out", help="Write the figures as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of a table."),
    timeout: float = _TIMEOUT,
) -> None:
    """Thumbnail accuracy (the chosen view is a best view) and type accuracy on held-out shoes,
    each beside its baselines computed from the same shoes' ground truth."""

    try:
        held_out = shoes_in_splits(data, split)
        products = {p: v for p, v in find_products(data).items() if p in held_out}
        if not products:
            raise DataError(f"no product of split {split!r} under {data / 'footwear' / 'views'}")
        with open_client(url, timeout) as client:
            pipe = ThumbnailPipeline(client, ThumbnailConfig(timeout_s=timeout))
            answers = list(pipe.run_many(products, concurrency))
        results = [r for r in answers if not isinstance(r, LookserveError)]
        for name, r in zip(products, answers, strict=True):
            if isinstance(r, LookserveError):
                warn(f"{name}: {r}")
        figures = {**evaluate_thumbnails(results, data, splits=(split,)), "failed_products": len(answers) - len(results)}
    except LookserveError as e:
        fail(e)
    _write_figures(figures, out)
    if as_json:
        stdout_console().print_json(json.dumps(figures))
    else:
        _print_thumbnail_figures(figures, split)
    finish_batch(figures["failed_products"], figures["failed_products"] + figures["products"], "products")


def _print_thumbnail_figures(figures: dict, split: str) -> None:
    table = Table("figure", "value", "baseline", "baseline value",
                  title=f"thumbnails, {split} split: {figures['products']} products ({figures['failed_products']} failed)")
    table.add_row("thumbnail is a best view", f"{figures['thumbnail_accuracy']:.3f}", "random view",
                  f"{figures['thumbnail_baseline_random']:.3f}")
    table.add_row("", "", "never back or sole", f"{figures['thumbnail_baseline_no_back_sole']:.3f}")
    table.add_row("footwear type", f"{figures['type_accuracy']:.3f}", "most common type",
                  f"{figures['type_baseline_majority']:.3f}")
    stdout_console().print(table)
