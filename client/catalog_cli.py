"""``lookserve catalog update`` (incremental updates) and ``lookserve catalog search`` (a filtered
search by a stored product's vector, without a server), mounted into the ``catalog`` group by
:mod:`lookserve.cli`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from lookserve.client.catalog import (
    Catalog,
    Manifest,
    is_milvus_address,
    resolve_catalog,
    update_catalog,
)
from lookserve.client.catalog.records import load_records
from lookserve.client.catalog.store import MANIFEST
from lookserve.client.catalog.update import served_embedder
from lookserve.client.cli import open_client
from lookserve.cliutil import fail, handle_errors, stdout_console, url_option
from lookserve.errors import DataError, InvalidInputError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

_URL = url_option()


def parse_ids(values: list[str]) -> list[int]:
    """Product ids from ``12,13`` values or files of ids (one per line or comma-separated; ``#`` comments)."""
    ids: list[int] = []
    for value in values:
        path = Path(value)
        source = value
        if path.is_file():
            source = " ".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        for n, part in enumerate(source.replace(",", " ").split(), 1):
            try:
                ids.append(int(part))
            except ValueError:
                fail(InvalidInputError(f"--remove {value!r}: {part!r} (item {n}) is not a product id"))
    return ids


@app.command("update")
@handle_errors
def catalog_update(
    catalog: str = typer.Argument(..., help="A catalog root (catalog-v<N> folders + `current`), a catalog directory, "
                                  "or milvus://HOST:PORT/ALIAS (a new collection, then the alias flips)."),
    add: list[Path] = typer.Option([], "--add", help="New products: a CSV (id,category,image[,title,attributes...]), a "
                                   "folder with metadata.csv, or a street2shop-format root (repeatable)."),
    replace: list[Path] = typer.Option([], "--replace", help="Changed products (same forms as --add); a photo whose "
                                       "name and file are unchanged keeps its vector."),
    remove: list[str] = typer.Option([], "--remove", help="Product ids to remove: 12,13 or a file of ids (repeatable)."),
    url: str = _URL,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight."),
    rebuild_fraction: float = typer.Option(0.2, "--rebuild-fraction", min=0.01, max=1.0,
                                           help="Rebuild a category's index when this fraction of its labels is deleted."),
    keep: int = typer.Option(3, "--keep", min=1, help="Update versions kept in a catalog root (old ones are removed)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Per-request deadline in seconds."),
) -> None:
    """Add, replace and remove products: write a new catalog version from the current one and
    switch it in atomically (running clients follow a root's `current` pointer). Only new or
    changed photos are embedded, by the embedder version the catalog is bound to."""

    if not (add or replace or remove):
        fail(InvalidInputError("nothing to update: give --add, --replace or --remove"))
    if is_milvus_address(catalog):
        _update_milvus(catalog, add, replace, remove, url, timeout, keep)
        return
    base = resolve_catalog(catalog)
    try:
        schema = Manifest.from_dict(json.loads((base / MANIFEST).read_bytes())).attributes
    except FileNotFoundError as e:
        raise DataError(f"{catalog} is not a catalog (no {MANIFEST}) nor a catalog root with a current pointer") from e
    adds = [r for p in add for r in load_records(p, schema=schema)]
    replaces = [r for p in replace for r in load_records(p, schema=schema)]
    ids = parse_ids(remove)
    needs_server = bool(adds or replaces)
    if needs_server:
        with open_client(url, timeout) as client:
            result = update_catalog(catalog, client, add=adds, replace=replaces, remove=ids, batch_size=batch_size,
                                    concurrency=concurrency, rebuild_fraction=rebuild_fraction, keep=keep, progress=True)
    else:
        result = update_catalog(catalog, add=adds, replace=replaces, remove=ids, rebuild_fraction=rebuild_fraction,
                                keep=keep)
    c = stdout_console()
    n = result.manifest.counts
    c.print(f"catalog {result.path}: {n['photos']} photos of {n['products']} products in {n['categories']} categories "
            f"(from version {result.parent[:12]})", soft_wrap=True, markup=False)
    c.print(f"  added {result.added_products}, replaced {result.replaced_products}, removed {result.removed_products} "
            f"product(s); embedded {result.embedded_photos} photo(s), kept {result.reused_photos} vector(s), "
            f"{result.removed_photos} photo(s) left the index"
            + (f"; rebuilt {', '.join(result.rebuilt)}" if result.rebuilt else ""), soft_wrap=True, markup=False)


def _update_milvus(address: str, add: list[Path], replace: list[Path], remove: list[str], url: str, timeout: float,
                   keep: int) -> None:
    """`catalog update` on a Milvus alias: new photos embedded by the catalog's embedder version."""
    from lookserve.client.catalog import milvus

    current = milvus.MilvusCatalog.open(address)
    adds = [r for p in add for r in load_records(p, schema=current.attributes)]
    replaces = [r for p in replace for r in load_records(p, schema=current.attributes)]
    ids = parse_ids(remove)
    if adds or replaces:
        with open_client(url, timeout) as client:
            result = milvus.update_milvus_catalog(address, add=adds, replace=replaces, remove=ids,
                                                  embedder=served_embedder(client, current), keep=keep)
    else:
        result = milvus.update_milvus_catalog(address, remove=ids, keep=keep)
    stdout_console().print(
        f"catalog {result.address}: {result.photos} photos of {result.products} products in {result.collection} "
        f"(from {result.previous}); added {len({r.product_id for r in adds})}, replaced "
        f"{len({r.product_id for r in replaces})}, removed {len(set(ids))} product(s)"
        + (f"; pruned {', '.join(result.dropped)}" if result.dropped else ""), soft_wrap=True, markup=False)


@app.command("search")
@handle_errors
def catalog_search(
    catalog: Path = typer.Argument(..., help="A catalog root or a catalog directory."),
    product: int = typer.Option(..., "--product", help="Search with this product's first stored photo vector."),
    k: int = typer.Option(6, "--k", "-k", min=1),
    filter: str | None = typer.Option(None, "--filter", help='e.g. \'price < 50 and brand in ["a", "b"] and in_stock\''),
) -> None:
    """The top-k products similar to a stored product, filtered by attributes (no server needed)."""

    cat = Catalog.open(catalog)
    for category in sorted(cat.categories):
        labels = [i for i, p in enumerate(cat.product_ids(category).tolist()) if p == product]
        if labels:
            query = cat.vectors_mapped(category)[labels[:1]]
            matches = cat.search(category, query, k, filter=filter)[0]
            stdout_console().print_json(json.dumps({"catalog": str(cat.path), "version": cat.version, "category": category,
                                                    "filter": filter, "matches": [m.to_dict() for m in matches]}))
            return
    fail(InvalidInputError(f"product {product} is not in {cat.path}"))
