"""``lookserve ui``: the web page, ``streamlit run`` on :mod:`lookserve.ui.app`.

Nothing heavy is imported here: Streamlit itself runs in the process this command becomes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from lookserve.client.core import check_url
from lookserve.cliutil import fail, url_option, warn
from lookserve.errors import LookserveError
from lookserve.ui.logic import ENV_VERBOSE, MAX_UPLOAD_MB, UiConfig, catalog_address

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

APP_SCRIPT = Path(__file__).with_name("app.py")


def streamlit_command(config, port: int = 8501, address: str = "127.0.0.1", verbose: int = 0,
                      python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that serve the page for ``config`` (a :class:`~lookserve.ui.logic.UiConfig`)
    on ``address:port``: headless, no usage statistics, no file watching, uploads capped at
    the decoder's byte limit."""

    if not 1 <= port <= 65535:
        raise LookserveError(f"port must be in 1..65535, got {port}")
    argv = [
        python or sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--browser.gatherUsageStats", "false",
        "--browser.serverAddress", address,
        "--browser.serverPort", str(port),
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
    ]
    env = {**os.environ, **config.to_env(), ENV_VERBOSE: str(verbose),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    return argv, env


@app.command("ui")
def ui(
    catalog: str | None = typer.Option(None, "--catalog", "-c", help="Catalog directory (lookserve catalog build; make demo: runs/demo/catalog), or milvus://HOST:PORT/ALIAS."),
    samples: Path | None = typer.Option(None, "--samples", "-s", help="Data set to pick samples from (make demo: runs/demo/data)."),
    url: str = url_option(),
    port: int = typer.Option(8501, "--port", "-p", min=1, max=65535, help="Port of the web page."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address the page binds to. Keep 127.0.0.1 unless a proxy fronts it."),
    model_repository: Path | None = typer.Option(None, "--model-repository", help="Served model repository: also check the embedder's model-file checksum."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Per-request deadline in seconds."),
) -> None:
    """The web page: shop the look and footwear thumbnails against a running Triton (lookserve serve)."""

    level = logging.getLogger().getEffectiveLevel()  # lookserve -v / -vv: the page logs alike
    verbose = 2 if level <= logging.DEBUG else 1 if level <= logging.INFO else 0

    folders = (("catalog", Path(catalog) if catalog and "://" not in catalog else None), ("samples folder", samples))
    for what, path in folders:
        if path is not None and not path.is_dir():
            warn(f"{what} {path} does not exist; the page will say so")
    try:
        check_url(url)  # a malformed --url is refused here, not on the page
        config = UiConfig(url=url, catalog=catalog_address(catalog) if catalog else None, samples=samples,
                          model_repository=model_repository, timeout_s=timeout)
        argv, env = streamlit_command(config, port=port, address=address, verbose=verbose)
    except LookserveError as e:
        fail(e)
    typer.echo(f"lookserve ui: open http://{address}:{port} (Triton at {url}; Ctrl-C stops)", err=True)
    log.info("running %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)  # Streamlit takes over this process: signals reach it directly
