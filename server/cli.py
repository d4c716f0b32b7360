"""``lookserve serve``: run a real Triton Inference Server on a model repository."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

import typer

from lookserve.client.core import ClientOptions, TritonClient
from lookserve.cliutil import fail, handle_errors
from lookserve.errors import ServerError
from lookserve.keys import KEY_ENVVAR, KeyFile, key_file_for
from lookserve.server.launcher import ServerOptions, TritonReplicas
from lookserve.server.watchdog import StubWatchdog

app = typer.Typer(no_args_is_help=True)
log = logging.getLogger(__name__)


@app.command()
@handle_errors
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
        None, envvar=KEY_ENVVAR, show_envvar=True,
        help="Key guarding the model-repository, shared-memory, logging and trace protocols (random if unset).",
    ),
    key_file: Path | None = typer.Option(
        None, help="Where the key is written (mode 0600) for local clients; default .lookserve/<host>-<port>.key, "
                   "the file `lookserve models --url host:port` reads. Refused while another server holds it."),
    no_restrict: bool = typer.Option(False, "--no-restrict", help="Do not restrict any protocol (never in production)."),
    exit_timeout: int = typer.Option(30, help="Seconds in-flight requests get to finish on SIGINT/SIGTERM."),
    ready_timeout: float = typer.Option(180.0, help="Seconds to wait for the server and its models to be ready."),
    log_file: Path | None = typer.Option(None, help="Server log file (default: in the work dir, path logged)."),
    log_verbose: int = typer.Option(0, help="Triton's --log-verbose level."),
    ssl_cert: Path | None = typer.Option(None, help="PEM certificate: serve gRPC over TLS."),
    ssl_key: Path | None = typer.Option(None, help="PEM private key for --ssl-cert."),
    ssl_root_cert: Path | None = typer.Option(None, help="PEM root certificate (for mutual TLS)."),
    watchdog: bool = typer.Option(True, help="Reload a model whose python-backend stub process died."),
    replicas: int = typer.Option(
        1, "--replicas", min=1, max=16,
        help="Start N tritonservers with these flags and one key, ports --grpc-port, +10, +20, ... (0: free ones), "
             "each with its own log; prints the combined address a:p1,b:p2 that clients balance over."),
) -> None:
    """Start NVIDIA Triton (the tritonserver binary of the nvidia-pytriton wheel) with lookserve's
    python-based onnxruntime backend, and run until Ctrl-C / SIGTERM, then drain in-flight requests."""

    try:
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
    except ValueError as e:  # an inconsistent combination of options
        fail(str(e))
    group = TritonReplicas(options, replicas)
    servers = group.servers
    # one key file per address, all with the one key (a client of any of them finds it), or the one given
    key_paths = [key_file] if key_file is not None else [key_file_for(s.grpc_url) for s in servers]
    keys = [KeyFile(p) for p in key_paths] if options.restrict_protocols else []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        for key in keys:
            stack.enter_context(key)  # before the start: never overwrite the key of a live server
        group.start()
        try:
            for key in keys:
                key.write(group.repository_key)
            for server in servers:
                typer.echo(f"tritonserver ready: grpc {server.grpc_url} (pid {server.pid}); log {server.log_file}")
            if replicas > 1:
                typer.echo(f"{replicas} replicas ready; clients: --url {group.grpc_url}")
            for key in keys:
                typer.echo(f"repository key written to {key.path} (mode 0600)")
            with contextlib.ExitStack() as watching:
                if watchdog and options.restrict_protocols:
                    for server in servers:
                        admin = watching.enter_context(TritonClient(ClientOptions(
                            url=server.grpc_url, repository_key=group.repository_key, ssl=bool(ssl_cert),
                            root_certificates=str(ssl_root_cert or ssl_cert) if ssl_cert else None,
                        )))
                        watching.enter_context(StubWatchdog(server.pid, admin))
                while not stop.wait(1.0):
                    dead = group.dead()
                    if dead and replicas == 1:
                        fail(ServerError(f"tritonserver exited while serving; log {dead[0].log_file}"))
                    if dead:  # the others are stopped in the finally below
                        fail(ServerError(f"{len(dead)} of {replicas} replicas exited while serving: " + "; ".join(
                            f"{s.grpc_url} (log {s.log_file})" for s in dead)))
        finally:
            typer.echo("stopping: letting in-flight requests finish…")
            codes = group.stop()
            for server, code in zip(servers, codes, strict=True):
                kept = (f"log {server.log_file}" if server.log_file.exists()
                        else "its temp work dir and log were removed (--log-file keeps a log)")
                typer.echo(f"tritonserver {server.grpc_url + ' ' if replicas > 1 else ''}stopped (exit code {code}); {kept}")
