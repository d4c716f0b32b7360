"""``lookserve models list|publish|promote|rollback|unload``: the operator's version workflow."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

_REPO = typer.Option(Path("model_repository"), "--model-repository", "-r", help="Triton model repository.")
_URL = typer.Option("127.0.0.1:8001", "--url", "-u", envvar="LOOKSERVE_URL", help="Triton gRPC address.")


def _admin(url: str):
    from lookserve.client.core import TritonClient
    from lookserve.server.cli import read_key

    return TritonClient(url, repository_key=read_key())


@app.command("list")
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
def publish(model: str, onnx_file: Path, repository: Path = _REPO, version: int | None = typer.Option(None, help="Version number (default: next).")) -> None:
    """Validate ONNX_FILE against MODEL's serving config and write it as a new version (not served yet)."""
    from lookserve.client.models import ModelRepository

    info = ModelRepository(repository).publish(model, onnx_file, version)
    typer.echo(f"published {model} version {info.version} at {info.path}; serve it with: lookserve models promote {model} {info.version}")


@app.command()
def promote(model: str, version: int, repository: Path = _REPO, url: str = _URL,
            keep_previous: bool = typer.Option(False, help="Keep serving the current versions too (embedder/catalog hand-over).")) -> None:
    """Serve VERSION of MODEL: Triton swaps it in while the old one keeps serving until it is ready."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        serving = ModelRepository(repository).promote(client, model, version, keep_previous=keep_previous)
    typer.echo(f"{model} now serves versions {list(serving)}")


@app.command()
def rollback(model: str, repository: Path = _REPO, url: str = _URL) -> None:
    """Serve again what MODEL served before its last promote."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        serving = ModelRepository(repository).rollback(client, model)
    typer.echo(f"{model} rolled back to versions {list(serving)}")


@app.command()
def unload(model: str, repository: Path = _REPO, url: str = _URL) -> None:
    """Unload MODEL from the server (its files stay)."""
    from lookserve.client.models import ModelRepository

    with _admin(url) as client:
        ModelRepository(repository).unload(client, model)
    typer.echo(f"{model} unloaded")


@app.command()
def history(model: str, repository: Path = _REPO) -> None:
    """What served when."""
    from lookserve.client.models import ModelRepository

    for entry in ModelRepository(repository).history(model):
        typer.echo(json.dumps(entry.__dict__))
