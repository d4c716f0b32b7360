"""``lookserve models list|publish|promote|rollback|retire|unload|history`` and the embedder swap
(``swap-embedder``, ``catalog-current``): the operator's version workflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from lookserve.client.catalog import (
    Catalog,
    load_records,
    open_for_client,
    read_current,
    set_current,
)
from lookserve.client.core import TritonClient
from lookserve.client.models import ModelRepository
from lookserve.client.swap import SwapOptions
from lookserve.client.swap import swap_embedder as swap
from lookserve.cliutil import fail, handle_errors, url_option
from lookserve.keys import read_key

app = typer.Typer(no_args_is_help=True)

_REPO = typer.Option(Path("model_repository"), "--model-repository", "-r", help="Triton model repository.")
_URL = url_option()
_KEY_FILE = typer.Option(
    None, "--key-file",
    help="Repository key file (default: LOOKSERVE_REPOSITORY_KEY, else .lookserve/<host>-<port>.key of --url, "
         "the file lookserve serve writes).")


def _admin(url: str, key_file: Path | None = None):
    if key_file is not None and not key_file.is_file():
        fail(f"key file {key_file} does not exist (lookserve serve writes it; see --key-file there)")
    return TritonClient(url, repository_key=read_key(key_file, url))


@app.command("list")
@handle_errors
def list_models(repository: Path = _REPO,
                url: str | None = url_option(None, "Also ask this server (host:port; env LOOKSERVE_URL) what is loaded."),
                key_file: Path | None = _KEY_FILE) -> None:
    """Models, their versions on disk, what the config serves, and (with --url) what is loaded."""

    repo = ModelRepository(repository)
    loaded: dict[str, list[int]] = {}
    if url:
        with _admin(url, key_file) as client:
            loaded = {m: list(repo.loaded_versions(client, m)) for m in repo.models()}
    for model in repo.models():
        versions = [v.version for v in repo.versions(model)]
        unverified = [v for v in versions if not repo.verification(model, v).verified]
        line = f"{model}: versions {versions}, config serves {list(repo.serving_versions(model))}"
        if unverified:
            line += f", unverified {unverified}"
        if url:
            line += f", loaded {loaded.get(model, [])}"
        typer.echo(line)


@app.command()
@handle_errors
def publish(model: str, onnx_file: Path, repository: Path = _REPO, version: int | None = typer.Option(None, help="Version number (default: next)."),
            export_json: Path | None = typer.Option(
                None, "--export-json",
                help="The exporter's export.json for ONNX_FILE (default: export.json beside a model.onnx, "
                     "or <stem>.export.json). Without one recording this file's passed parity gate the "
                     "version is published as unverified.")) -> None:
    """Validate ONNX_FILE against MODEL's serving config and write it as a new version (not served yet)."""

    info = ModelRepository(repository).publish(model, onnx_file, version, export_json=export_json)
    check = info.export["verification"]
    if check["status"] != "verified":
        typer.echo(f"warning: {model} version {info.version} is UNVERIFIED: {check['reason']}; "
                   "promote refuses it unless given --allow-unverified", err=True)
    typer.echo(f"published {model} version {info.version} ({check['status']}) at {info.path}; "
               f"serve it with: lookserve models promote {model} {info.version}")


@app.command()
@handle_errors
def promote(model: str, version: int, repository: Path = _REPO, url: str = _URL, key_file: Path | None = _KEY_FILE,
            keep_previous: bool = typer.Option(False, help="Keep serving the current versions too (embedder/catalog hand-over)."),
            allow_unverified: bool = typer.Option(
                False, "--allow-unverified",
                help="Serve a version whose model.onnx no passed parity gate recorded (see lookserve models list).")) -> None:
    """Serve VERSION of MODEL: Triton swaps it in while the old one keeps serving until it is ready.
    An unverified version is refused unless given --allow-unverified."""

    with _admin(url, key_file) as client:
        serving = ModelRepository(repository).promote(client, model, version, keep_previous=keep_previous,
                                                      allow_unverified=allow_unverified)
    typer.echo(f"{model} now serves versions {list(serving)}")


@app.command()
@handle_errors
def rollback(model: str, repository: Path = _REPO, url: str = _URL, key_file: Path | None = _KEY_FILE) -> None:
    """Serve again what MODEL served before its last promote or retire. Each further rollback walks one
    change further back through the history (promotes 1→2→3, then rollback: 2, rollback: 1); with
    nothing left to undo it refuses."""

    with _admin(url, key_file) as client:
        serving = ModelRepository(repository).rollback(client, model)
    typer.echo(f"{model} rolled back to versions {list(serving)}")


@app.command()
@handle_errors
def unload(model: str, repository: Path = _REPO, url: str = _URL, key_file: Path | None = _KEY_FILE) -> None:
    """Unload MODEL from the server (its files stay)."""

    with _admin(url, key_file) as client:
        ModelRepository(repository).unload(client, model)
    typer.echo(f"{model} unloaded")


@app.command()
@handle_errors
def history(model: str, repository: Path = _REPO,
            as_json: bool = typer.Option(False, "--json", help="One JSON object per change (time in epoch seconds).")) -> None:
    """What served when: one line per change (local time), oldest first."""

    entries = ModelRepository(repository).history(model)  # names the known models when MODEL is unknown
    if not entries and not as_json:
        typer.echo(f"{model}: no history yet (publish, promote, retire, rollback and unload are recorded)")
    for entry in entries:
        if as_json:
            typer.echo(json.dumps(entry.__dict__))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(entry.time))
        line = f"{when}  {entry.action:<8}  serving {list(entry.versions)} (was {list(entry.previous)})"
        typer.echo(f"{line}  {entry.detail}" if entry.detail else line)


@app.command()
@handle_errors
def retire(model: str, versions: list[int] = typer.Argument(..., help="Versions to stop serving."), repository: Path = _REPO,
           url: str = _URL, key_file: Path | None = _KEY_FILE) -> None:
    """Stop serving VERSIONS of MODEL (version_policy becomes the others); the others keep serving."""

    with _admin(url, key_file) as client:
        serving = ModelRepository(repository).retire(client, model, tuple(versions))
    typer.echo(f"{model} now serves versions {list(serving)}")


@app.command("catalog-current")
@handle_errors
def catalog_current(
    catalog_root: Path = typer.Option(..., "--catalog-root", help="Folder of catalog-v<N> catalogs and the current pointer."),
    name: str | None = typer.Argument(None, help="Point the clients at this catalog (a folder in the root)."),
    url: str | None = url_option(None, "Refuse unless this server (host:port; env LOOKSERVE_URL) serves the catalog's embedder version."),
) -> None:
    """Show, or atomically set, the catalog the clients of CATALOG_ROOT use (its `current` symlink)."""

    if name:
        target = catalog_root / name
        if url:
            with TritonClient(url) as client:
                catalog = open_for_client(target, client)
        else:
            catalog = Catalog.open(target)
        current, embedder = set_current(catalog_root, name), catalog.embedder
    else:
        current = read_current(catalog_root)
        embedder = Catalog.open(current, verify=False).embedder
    typer.echo(f"{catalog_root / 'current'} -> {current.name} ({embedder.name} version {embedder.version})")


@app.command("swap-embedder")
@handle_errors
def swap_embedder(
    catalog_root: str = typer.Option(
        ..., "--catalog-root",
        help="Folder of catalog-v<N> catalogs and the current pointer, or a Milvus alias milvus://HOST:PORT/ALIAS."),
    onnx: Path | None = typer.Option(None, "--onnx", help="The new embedder's model.onnx (published as the next version)."),
    version: int | None = typer.Option(None, "--version", help="Or an already published version (e.g. the old one, to swap back)."),
    photos: Path | None = typer.Option(None, "--photos", help="Shop photos to index: a street2shop-format root or a folder with a CSV."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CSV with id,category,image[,title,...]."),
    split: list[str] = typer.Option([], "--split", help="Only products of this split (repeatable; street2shop data)."),
    model: str = typer.Option("embedder", "--model", help="Served embedder model name."),
    repository: Path = _REPO,
    url: str = _URL,
    key_file: Path | None = _KEY_FILE,
    quiet: float = typer.Option(2.0, "--quiet", help="Seconds without a request for the old version before it is unloaded."),
    max_wait: float = typer.Option(120.0, "--max-wait", help="Give up waiting for clients after this long (both stay loaded)."),
    reuse_catalog: bool = typer.Option(False, "--reuse-catalog", help="Use an existing catalog-v<N> if it verifies for that version."),
    keep_old: bool = typer.Option(False, "--keep-old", help="Switch, but leave the old version loaded."),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified",
        help="Swap in a version whose model.onnx no passed parity gate recorded (no export.json beside --onnx)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Embedding requests in flight."),
) -> None:
    """Swap the embedder and its catalog together, with running clients:
    publish → load both versions → build catalog-v<new> with the new version → flip CATALOG_ROOT/current
    (on Milvus: a new collection, then the alias) → wait until no client uses the old version → unload it.
    Before the flip any failure leaves the old pair serving."""

    records = load_records(photos, metadata, split or None) if photos else None
    options = SwapOptions(model=model, quiet_s=quiet, max_wait_s=max_wait, unload_old=not keep_old,
                          reuse_catalog=reuse_catalog, batch_size=batch_size, concurrency=concurrency,
                          allow_unverified=allow_unverified)
    with _admin(url, key_file) as client:
        report = swap(client, repository, catalog_root, records, onnx_path=onnx, version=version, options=options,
                      images_root=photos, progress=True,
                      on_step=lambda step, phase: typer.echo(f"{step}...") if phase == "start" else None)
    for s in report.steps:
        typer.echo(f"  {s.name:<10} {s.ended - s.started:8.2f} s  {s.detail}")
    typer.echo(f"{model}: version {report.old_version} ({Path(report.old_catalog).name}) -> version {report.new_version} "
               f"({Path(report.new_catalog).name}); serving {list(report.serving)}; "
               f"{report.old_requests_after_flip} requests answered by the old version after the switch")
