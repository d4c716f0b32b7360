"""``lookserve serve``: run a real Triton Inference Server on a model repository."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)
log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = Path(".lookserve/repository.key")


def write_key_file(path: Path, key: str) -> None:
    """Write the repository key readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    os.replace(tmp, path)


def read_key(key_file: Path | None = None) -> str | None:
    """The repository key from LOOKSERVE_REPOSITORY_KEY or the key file, if any."""
    if os.environ.get("LOOKSERVE_REPOSITORY_KEY"):
        return os.environ["LOOKSERVE_REPOSITORY_KEY"]
    path = key_file or DEFAULT_KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


@app.command()
def serve(
    model_repository: Path = typer.Option(Path("model_repository"), "--model-repository", "-r", help="Triton model repository."),
    grpc_address: str = typer.Option("127.0.0.1", help="Address gRPC binds to. Keep 127.0.0.1 unless a gateway fronts it."),
    grpc_port: int = typer.Option(8001, help="gRPC port (0 picks a free one)."),
    http_port: int | None = typer.Option(None, help="Also serve HTTP on 127.0.0.1:PORT (off by default)."),
    metrics_port: int | None = typer.Option(None, help="Serve Prometheus metrics on 127.0.0.1:PORT (off by default)."),
    model_control: str = typer.Option("explicit", help="explicit (load via the repository API), poll or none."),
    load_model: list[str] = typer.Option([], "--load-model", "-m", help="Model to load at start (repeatable; '*' = all)."),
    model_config_name: str | None = typer.Option(None, help="Config variant: <model>/configs/<NAME>.pbtxt, e.g. gpu."),
    repository_key: str | None = typer.Option(
        None, envvar="LOOKSERVE_REPOSITORY_KEY", show_envvar=True,
        help="Key guarding the model-repository, shared-memory, logging and trace protocols (random if unset).",
    ),
    key_file: Path = typer.Option(DEFAULT_KEY_FILE, help="Where the key is written (mode 0600) for local clients."),
    no_restrict: bool = typer.Option(False, "--no-restrict", help="Do not restrict any protocol (never in production)."),
    exit_timeout: int = typer.Option(30, help="Seconds in-flight requests get to finish on SIGINT/SIGTERM."),
    ready_timeout: float = typer.Option(180.0, help="Seconds to wait for the server and its models to be ready."),
    log_file: Path | None = typer.Option(None, help="Server log file (default: in the work dir, path logged)."),
    log_verbose: int = typer.Option(0, help="Triton's --log-verbose level."),
    ssl_cert: Path | None = typer.Option(None, help="PEM certificate: serve gRPC over TLS."),
    ssl_key: Path | None = typer.Option(None, help="PEM private key for --ssl-cert."),
    ssl_root_cert: Path | None = typer.Option(None, help="PEM root certificate (for mutual TLS)."),
    watchdog: bool = typer.Option(True, help="Reload a model whose python-backend stub process died."),
) -> None:
    """Start NVIDIA Triton (the tritonserver binary of the nvidia-pytriton wheel) with lookserve's
    python-based onnxruntime backend, and run until Ctrl-C / SIGTERM, then drain in-flight requests."""
    from lookserve.server.launcher import ServerOptions, TritonServer

    options = ServerOptions(
        model_repository=model_repository,
        grpc_address=grpc_address,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        model_control=model_control,
        load_models=tuple(load_model),
        model_config_name=model_config_name,
        repository_key=repository_key,
        restrict_protocols=not no_restrict,
        exit_timeout_s=exit_timeout,
        ready_timeout_s=ready_timeout,
        log_file=log_file,
        log_verbose=log_verbose,
        ssl_cert=ssl_cert,
        ssl_key=ssl_key,
        ssl_root_cert=ssl_root_cert,
    )
    server = TritonServer(options)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if options.restrict_protocols:
        write_key_file(key_file, server.repository_key)
    typer.echo(f"tritonserver ready: grpc {server.grpc_url} (pid {server.pid}); log {server.log_file}")
    if options.restrict_protocols:
        typer.echo(f"repository key written to {key_file} (mode 0600)")
    with contextlib.ExitStack() as stack:
        if watchdog and options.restrict_protocols:
            from lookserve.client.core import ClientOptions, TritonClient
            from lookserve.server.watchdog import StubWatchdog

            admin = stack.enter_context(TritonClient(ClientOptions(
                url=server.grpc_url, repository_key=server.repository_key, ssl=bool(ssl_cert),
                root_certificates=str(ssl_root_cert or ssl_cert) if ssl_cert else None,
            )))
            stack.enter_context(StubWatchdog(server.pid, admin))
        try:
            while not stop.wait(1.0):
                if not server.is_alive():
                    typer.echo(f"tritonserver exited; log {server.log_file}", err=True)
                    raise typer.Exit(1)
        finally:
            typer.echo("stopping: letting in-flight requests finish…")
            server.stop()
