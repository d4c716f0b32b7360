"""``lookserve models list|publish|promote|rollback|retire|unload|history`` and the embedder swap
(``swap-embedder``, ``catalog-current``): the operator's version workflow."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

_REPO = typer.Option(Path("model_repository"), "--model-repository", "-r", help="Triton model repository.")
_URL = typer.Option("127.0.0.1:8001", "--url", "-u", envvar="LOOKSERVE_URL", help="Triton gRPC address.")


def _clear_errors(command):
    """A lookserve error (bad file, unknown model, missing repository, refused by the server) ends the
    command with its message and exit code 2, not a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from lookserve.errors import LookserveError

        try:
            return command(*args, **kwargs)
        except LookserveError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e

    return run


def _admin(url: str):
    from lookserve.client.core import TritonClient
    from lookserve.server.cli import read_key

    return TritonClient(url, repository_key=read_key())


@app.command("list")
@_clear_errors
def list_models(repository: Path = _REPO, url: str | None = typer.Option(None, "--url", "-u", help="Also ask this server what is loaded.")) -> None:
    """Models, their versions on disk, what the config serves, and (with --url) what is loaded."""
    from lookserve.client.models import ModelRepository

    repo = ModelRepository(repository)
    loaded: dict[str, list[int]] = {}
    if url:
        with _admin(url) as client:
            loaded = {m: list(repo.loaded_versions(client, m)) for m in repo.models()}
    for model in repo.models():
        versions = [v.version for v in repo.versions(model)]
        line = f"{model}: versions {versions}, config serves {list(repo.serving_versions(model))}"
        if url:
            line += f", loaded {loaded.get(model, [])}"
        typer.echo(line)


@app.command()
@_clear_errors
def publish(model: str, onnx_file: Path, repository: Path = _REPO, version: int | None = typer.Option(None, help="Version number (default: next).")) -> None:
    """Validate ONNX_FILE against MODEL's serving config and write it as a new version (not served yet)."""
    from lookserve.client.models import ModelRepository

    info = ModelRepository(repository).publish(model, onnx_file, version)
    typer.echo(f"published {model} version {info.version} at {info.path}; serve it with: lookserve models promote {model} {info.version}")


@app.command()
@_clear_errors
def promote(model: str, version: int, repository: Path = _REPO, url: str = _URL,
            keep_previous: bool = typer.Option(False, help="Keep serving the current versions too (embedder/catalog hand-over).")) -> None:
    """Serve VERSION of MODEL: Triton swaps it in while the old one keeps serving until it is ready."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        serving = ModelRepository(repository).promote(client, model, version, keep_previous=keep_previous)
    typer.echo(f"{model} now serves versions {list(serving)}")


@app.command()
@_clear_errors
def rollback(model: str, repository: Path = _REPO, url: str = _URL) -> None:
    """Serve again what MODEL served before its last promote."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        serving = ModelRepository(repository).rollback(client, model)
    typer.echo(f"{model} rolled back to versions {list(serving)}")


@app.command()
@_clear_errors
def unload(model: str, repository: Path = _REPO, url: str = _URL) -> None:
    """Unload MODEL from the server (its files stay)."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        ModelRepository(repository).unload(client, model)
    typer.echo(f"{model} unloaded")


@app.command()
@_clear_errors
def history(model: str, repository: Path = _REPO) -> None:
    """What served when."""
    from lookserve.client.models import ModelRepository

    for entry in ModelRepository(repository).history(model):
        typer.echo(json.dumps(entry.__dict__))


@app.command()
@_clear_errors
def retire(model: str, versions: list[int] = typer.Argument(..., help="Versions to stop serving."), repository: Path = _REPO,
           url: str = _URL) -> None:
    """Stop serving VERSIONS of MODEL (version_policy becomes the others); the others keep serving."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        serving = ModelRepository(repository).retire(client, model, tuple(versions))
    typer.echo(f"{model} now serves versions {list(serving)}")


@app.command("catalog-current")
@_clear_errors
def catalog_current(
    catalog_root: Path = typer.Option(..., "--catalog-root", help="Folder of catalog-v<N> catalogs and the current pointer."),
    name: str | None = typer.Argument(None, help="Point the clients at this catalog (a folder in the root)."),
    url: str | None = typer.Option(None, "--url", "-u", help="Refuse unless this server serves the catalog's embedder version."),
) -> None:
    """Show, or atomically set, the catalog the clients of CATALOG_ROOT use (its `current` symlink)."""
    from lookserve.client.catalog import Catalog, open_for_client, read_current, set_current

    if name:
        target = catalog_root / name
        if url:
            from lookserve.client.core import TritonClient

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
@_clear_errors
def swap_embedder(
    catalog_root: Path = typer.Option(..., "--catalog-root", help="Folder of catalog-v<N> catalogs and the current pointer."),
    onnx: Path | None = typer.Option(None, "--onnx", help="The new embedder's model.onnx (published as the next version)."),
    version: int | None = typer.Option(None, "--version", help="Or an already published version (e.g. the old one, to swap back)."),
    photos: Path | None = typer.Option(None, "--photos", help="Shop photos to index: a street2shop-format root or a folder with a CSV."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CSV with id,category,image[,title,...]."),
    split: list[str] = typer.Option([], "--split", help="Only products of this split (repeatable; street2shop data)."),
    model: str = typer.Option("embedder", "--model", help="Served embedder model name."),
    repository: Path = _REPO,
    url: str = _URL,
    quiet: float = typer.Option(2.0, "--quiet", help="Seconds without a request for the old version before it is unloaded."),
    max_wait: float = typer.Option(120.0, "--max-wait", help="Give up waiting for clients after this long (both stay loaded)."),
    reuse_catalog: bool = typer.Option(False, "--reuse-catalog", help="Use an existing catalog-v<N> if it verifies for that version."),
    keep_old: bool = typer.Option(False, "--keep-old", help="Switch, but leave the old version loaded."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Embedding requests in flight."),
) -> None:
    """Swap the embedder and its catalog together, with running clients:
    publish → load both versions → build catalog-v<new> with the new version → flip CATALOG_ROOT/current
    → wait until no client uses the old version → unload it. Before the flip any failure leaves the old pair serving."""
    from lookserve.client.catalog import load_records
    from lookserve.client.swap import SwapOptions
    from lookserve.client.swap import swap_embedder as swap

    records = load_records(photos, metadata, split or None) if photos else None
    options = SwapOptions(model=model, quiet_s=quiet, max_wait_s=max_wait, unload_old=not keep_old,
                          reuse_catalog=reuse_catalog, batch_size=batch_size, concurrency=concurrency)
    with _admin(url) as client:
        report = swap(client, repository, catalog_root, records, onnx_path=onnx, version=version, options=options,
                      images_root=photos, progress=True,
                      on_step=lambda step, phase: typer.echo(f"{step}...") if phase == "start" else None)
    for s in report.steps:
        typer.echo(f"  {s.name:<10} {s.ended - s.started:8.2f} s  {s.detail}")
    typer.echo(f"{model}: version {report.old_version} ({Path(report.old_catalog).name}) -> version {report.new_version} "
               f"({Path(report.new_catalog).name}); serving {list(report.serving)}; "
               f"{report.old_requests_after_flip} requests answered by the old version after the switch")
