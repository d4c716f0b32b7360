"""CLI of the client chains: ``lookserve look``, ``lookserve thumbnails``, ``lookserve catalog ...``
and the evaluations (``eval_app``: ``look``, ``thumbnails``).

Nothing heavy is imported at module level; every command opens its own client.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from lookserve.errors import DataError, LookserveError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)
catalog_app = typer.Typer(no_args_is_help=True, help="Build and inspect catalog indexes.")
eval_app = typer.Typer(no_args_is_help=True, help="End-to-end accuracy of the client chains on held-out data.")

_URL = typer.Option("127.0.0.1:8001", "--url", "-u", envvar="LOOKSERVE_URL", help="Triton gRPC address.")
_TIMEOUT = typer.Option(30.0, "--timeout", help="Per-request deadline in seconds.")
_CATALOG = typer.Option(..., "--catalog", "-c", help="Catalog directory (lookserve catalog build).")
_REPO = typer.Option(None, "--model-repository", help="Served model repository: also check the embedder's model-file checksum.")


def _console():
    from rich.console import Console

    return Console()


def _fail(e: LookserveError) -> typer.Exit:
    from rich.markup import escape

    _console().print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)  # messages carry file names and data
    return typer.Exit(code=2)


def _client(url: str, timeout: float):
    from lookserve.client.core import TritonClient

    client = TritonClient(url, timeout_s=timeout)
    client.wait_ready(deadline_s=min(30.0, timeout))
    return client


# ------------------------------------------------------------------------------------------
# lookserve look
# ------------------------------------------------------------------------------------------
@app.command("look")
def look(
    images: list[Path] = typer.Argument(..., help="Street or model photos (JPEG, PNG, WebP, BMP), or folders of them."),
    catalog_dir: Path = _CATALOG,
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
) -> None:
    """Shop the look: detect garments, match each against the catalog, write JSON (+ PNG)."""
    from rich.markup import escape
    from rich.table import Table

    from lookserve.client.catalog import Catalog, CatalogWatcher, open_for_client
    from lookserve.client.look import FilterConfig, LookConfig, LookPipeline, write_result
    from lookserve.client.render import render_look
    from lookserve.client.thumbnails import IMAGE_SUFFIXES

    # a folder stands for the images directly inside it
    given = images
    images = [c for p in images for c in (sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES)
                                          if p.is_dir() else [p])]
    if not images:
        raise _fail(DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, given))}: "
                              "the folder is empty or holds no image files"))
    try:
        config = LookConfig(filter=FilterConfig(min_score, score_filter, catalog_only, best_only), k=k, crop=crop,
                            timeout_s=timeout)
        with _client(url, timeout) as client:
            if watch_interval is None:
                pipe = LookPipeline(client, open_for_client(catalog_dir, client, model_repository), config)
            else:
                pipe = LookPipeline(client, CatalogWatcher(catalog_dir, client, watch_interval, model_repository), config)
            searched: dict[str, Catalog] = {}  # the catalog each result was matched in, for its shop photos

            def catalog_of(result) -> Catalog:
                if result.catalog not in searched:
                    now = pipe.catalog
                    searched[result.catalog] = now if str(now.path) == result.catalog else Catalog.open(result.catalog, verify=False)
                return searched[result.catalog]

            table = Table("image", "items", "top-1 per item", "client ms", "total ms")
            failed: list[tuple[Path, LookserveError]] = []
            names: dict[Path, str] = {}
            for p in images:  # unique output names even when stems repeat across folders
                stem, n = p.stem, 2
                while stem in names.values():
                    stem, n = f"{p.stem}-{n}", n + 1
                names[p] = stem
            for path, result in zip(images, pipe.run_many(images, concurrency=concurrency), strict=True):
                if isinstance(result, LookserveError):
                    failed.append((path, result))
                    table.add_row(escape(path.name), "[red]error[/red]", "", "", "")
                    continue
                write_result(result, out / f"{names[path]}.json", include_masks=masks_in_json)
                if render:
                    render_look(result, path, catalog_of(result), out / f"{names[path]}.png", k)
                tops = "; ".join(f"{i.detection.category}→#{i.matches[0].product_id} ({i.matches[0].similarity:.2f})"
                                 if i.matches else f"{i.detection.category}→-" for i in result.items)
                table.add_row(escape(path.name), str(len(result.items)), tops or "-", f"{result.timings_ms['client']:.1f}",
                              f"{result.timings_ms['total']:.1f}")
        console = _console()
        console.print(table)
        for path, error in failed:
            console.print(f"[red]{escape(str(path))}:[/red] {escape(str(error))}", soft_wrap=True)
        console.print(f"wrote results to {escape(str(out))}", soft_wrap=True)
        if failed:
            raise typer.Exit(code=1)
    except LookserveError as e:
        raise _fail(e) from e


# ------------------------------------------------------------------------------------------
# lookserve thumbnails
# ------------------------------------------------------------------------------------------
def _collect_views(paths: list[Path]) -> dict[str, list[Path]]:
    from lookserve.client.thumbnails import IMAGE_SUFFIXES, find_products

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
def thumbnails(
    views: list[Path] = typer.Argument(..., help="Product folders of view images, or folders of product folders "
                                       "(e.g. a data set root: its footwear/views)."),
    out: Path = typer.Option(Path("runs/thumbnails"), "--out", "-o", help="Folder for thumbnails.csv/.json and the sheet."),
    url: str = _URL,
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Products in flight."),
    sheet: bool = typer.Option(True, "--sheet/--no-sheet", help="Write contact_sheet.png."),
    timeout: float = _TIMEOUT,
) -> None:
    """Pick each product's best view as its thumbnail and tag its footwear type."""
    from rich.markup import escape
    from rich.table import Table

    from lookserve.client.render import render_thumbnails
    from lookserve.client.thumbnails import ThumbnailConfig, ThumbnailPipeline, write_outputs

    try:
        products = _collect_views(views)
        with _client(url, timeout) as client:
            pipe = ThumbnailPipeline(client, ThumbnailConfig(timeout_s=timeout))
            results, failed = [], 0
            for name, r in zip(products, pipe.run_many(products, concurrency), strict=True):
                if isinstance(r, LookserveError):
                    failed += 1
                    _console().print(f"[red]{escape(name)}:[/red] {escape(str(r))}", soft_wrap=True)
                else:
                    results.append(r)
        csv_path, json_path = write_outputs(results, out)
        if sheet and results:
            render_thumbnails(results, out / "contact_sheet.png")
        table = Table("product", "thumbnail", "best-view p", "type", "type p")
        for r in results[:30]:
            table.add_row(escape(r.product), escape(Path(r.thumbnail).name), f"{r.best_view:.2f}", r.footwear_type,
                          f"{r.type_probability:.2f}")
        _console().print(table)
        _console().print(f"wrote {csv_path} and {json_path}")
        if failed:
            raise typer.Exit(code=1)
    except LookserveError as e:
        raise _fail(e) from e


# ------------------------------------------------------------------------------------------
# lookserve catalog ...
# ------------------------------------------------------------------------------------------
@catalog_app.command("build")
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
    from lookserve.client.catalog import (
        Catalog,
        IndexParams,
        TritonEmbedder,
        build_catalog,
        describe,
        load_records,
    )

    try:
        records = load_records(photos, metadata, split or None)
        params = IndexParams(M=m, ef_construction=ef_construction, k=k, recall_target=recall_target)
        with _client(url, timeout) as client:
            manifest = build_catalog(records, out, TritonEmbedder(client, embedder, embedder_version), params,
                                     batch_size=batch_size, concurrency=concurrency, model_repository=model_repository,
                                     progress=True, images_root=photos)
        _print_catalog(describe(Catalog.open(out)))
        if manifest.skipped:
            _console().print(f"[yellow]{len(manifest.skipped)} photos could not be read and were skipped[/yellow]")
    except LookserveError as e:
        raise _fail(e) from e


def _print_catalog(info: dict) -> None:
    from rich.table import Table

    c = _console()
    e = info["embedder"]
    c.print(f"catalog {info['path']}: embedder {e['name']} v{e['version']}, dim {info['dim']}, {info['space']}, "
            f"M={info['M']}, ef_construction={info['ef_construction']}, {info['counts']}")
    table = Table("category", "photos", "products", "ef", "recall@K", "K")
    for cat, v in info["categories"].items():
        table.add_row(cat, str(v["count"]), str(v["products"]), str(v["ef"]), f"{v['recall_at_k']:.4f}", str(v["k"]))
    c.print(table)


@catalog_app.command("info")
def catalog_info(
    catalog_dir: Path = typer.Argument(..., help="Catalog directory."),
    url: str | None = typer.Option(None, "--url", "-u", help="Also check the server serves the catalog's embedder version."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Verify a catalog (checksums; with --url the served embedder version) and describe it."""
    from lookserve.client.catalog import Catalog, describe, open_for_client

    try:
        if url:
            with _client(url, 30.0) as client:
                catalog = open_for_client(catalog_dir, client)
        else:
            catalog = Catalog.open(catalog_dir)
        info = describe(catalog)
    except LookserveError as e:
        raise _fail(e) from e
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print_catalog(info)


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
    """HNSW search latency per item and recall@K vs exact search on synthetic categories."""
    from rich.table import Table

    from lookserve.client.catalog import IndexParams, bench_search

    params = IndexParams(M=m, ef_construction=ef_construction, k=k)
    rows = []
    for size in n:
        rows.append(bench_search(size, dim, queries, params, seed, threads=threads, progress=True))
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
    timeout: float = _TIMEOUT,
) -> None:
    """End-to-end top-K accuracy: the right product among the top-K of the detected item of its category."""
    from lookserve.client.catalog import open_for_client
    from lookserve.client.look import LookConfig, LookPipeline, evaluate_pairs

    try:
        with _client(url, timeout) as client:
            pipe = LookPipeline(client, open_for_client(catalog_dir, client), LookConfig(k=k, timeout_s=timeout))
            figures = evaluate_pairs(pipe, data, split, limit or None, concurrency)
    except LookserveError as e:
        raise _fail(e) from e
    _console().print_json(json.dumps(figures))
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
    timeout: float = _TIMEOUT,
) -> None:
    """Thumbnail accuracy (the chosen view is a best view) and type accuracy on held-out shoes."""
    from lookserve.client.thumbnails import (
        ThumbnailConfig,
        ThumbnailPipeline,
        evaluate,
        find_products,
    )

    try:
        products = find_products(data)
        gt = json.loads((data / "footwear" / "ground_truth.json").read_text())
        held_out = {g["shoe_id"] for g in gt["images"] if g.get("split") == split}
        products = {p: v for p, v in products.items() if p in held_out}
        with _client(url, timeout) as client:
            pipe = ThumbnailPipeline(client, ThumbnailConfig(timeout_s=timeout))
            results = [r for r in pipe.run_many(products, concurrency) if not isinstance(r, LookserveError)]
        figures = evaluate(results, data / "footwear" / "ground_truth.json", splits=(split,))
    except LookserveError as e:
        raise _fail(e) from e
    except (OSError, KeyError, json.JSONDecodeError) as e:
        _console().print(f"[red]error:[/red] cannot read {data / 'footwear' / 'ground_truth.json'}: {e!r}")
        raise typer.Exit(code=2) from e
    _console().print_json(json.dumps(figures))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2))
