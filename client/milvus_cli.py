"""``lookserve catalog milvus-serve`` (the embedded Milvus server, on loopback, for development)
and ``lookserve catalog milvus-push`` (publish a built catalog directory as a new version behind
a Milvus alias). Mounted under ``catalog`` by :mod:`lookserve.cli`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from lookserve.client.catalog import Catalog
from lookserve.client.catalog.address import milvus_backend
from lookserve.client.catalog.milvus_server import start_milvus
from lookserve.cliutil import fail, handle_errors, stdout_console
from lookserve.errors import CatalogUnavailable

app = typer.Typer(no_args_is_help=True)


@app.command("milvus-serve")
@handle_errors
def milvus_serve(
    data: Path = typer.Option(..., "--data", help="Data directory of the server (collections, logs); created if missing."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Run the embedded Milvus server on 127.0.0.1 until Ctrl-C; prints its address."""
    server = start_milvus(data, port=port)
    out = stdout_console()
    out.print(f"milvus {server.address} (catalog addresses: {server.catalog_address}/<alias>; data {server.data_dir})")
    out.print("Ctrl-C to stop")
    try:
        while server.running:
            time.sleep(0.5)
        fail(CatalogUnavailable(f"the Milvus server stopped on its own; see {server.data_dir}/logs"))
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command("milvus-push")
@handle_errors
def milvus_push(
    catalog: Path = typer.Argument(..., help="A built catalog directory, or a catalog root (its current catalog)."),
    address: str = typer.Argument(..., help="milvus://HOST:PORT/ALIAS: the alias to point at the new version."),
    keep: int = typer.Option(3, "--keep", min=0, help="Versions of the alias to keep (0: keep all)."),
    m: int | None = typer.Option(None, "--M", min=2, help="HNSW M (default: the catalog's)."),
    ef_construction: int | None = typer.Option(None, "--ef-construction", min=1, help="HNSW efConstruction (default: the catalog's)."),
    ef: int = typer.Option(64, "--ef", min=1, help="Search ef recorded as the default (at least the rows asked for)."),
    flush: bool = typer.Option(True, "--flush/--no-flush", help="Seal the segments before indexing (see MilvusParams.flush)."),
) -> None:
    """Publish a built catalog (its stored vectors and products; nothing re-embedded) into a new
    Milvus collection and flip the alias to it atomically."""
    milvus = milvus_backend()  # pymilvus: the [milvus] extra, named when it is missing
    opened = Catalog.open(catalog)  # verified once; published as it is
    p = opened.manifest.params
    params = milvus.MilvusParams(M=m or p.M, ef_construction=ef_construction or p.ef_construction, ef=ef, flush=flush)
    result = milvus.publish_catalog(opened, address, params, keep=keep)
    stdout_console().print_json(json.dumps({
        "alias": result.address, "collection": result.collection, "previous": result.previous,
        "photos": result.photos, "products": result.products, "pruned": list(result.dropped),
        "seconds": dict(result.seconds)}))
