"""The one error and exit-code policy of every ``lookserve`` command, and the options they share.

Exit codes:

* ``0`` (:data:`EXIT_OK`): everything asked for was done;
* ``1`` (:data:`EXIT_PARTIAL`): a batch command finished, but some of its inputs failed (it says
  how many and names each);
* ``2`` (:data:`EXIT_USAGE`): a usage or input error, or the work could not be done at all
  (a bad option, a missing file, the server unreachable, a model refused).

Errors go to stderr as plain text (messages carry file names and data, so they are never
rendered as rich markup); results go to stdout. Use :func:`handle_errors` on a command, or
:func:`fail` inside one; :func:`finish_batch` ends a batch command with the right code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
from rich.console import Console

from lookserve.errors import LookserveError

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2

DEFAULT_URL = "127.0.0.1:8001"
URL_ENVVAR = "LOOKSERVE_URL"


def url_option(default: str | None = DEFAULT_URL, help: str = "Triton gRPC address host:port; replicas as a list a:p1,b:p2 or dns:///host:port (env LOOKSERVE_URL).") -> typer.models.OptionInfo:
    """The ``--url/-u`` option of every command that talks to Triton; reads ``LOOKSERVE_URL``."""
    return typer.Option(default, "--url", "-u", envvar=URL_ENVVAR, help=help)


def stdout_console() -> Console:
    """Console for results (stdout)."""
    return Console(highlight=False)


def stderr_console() -> Console:
    """Console for errors, warnings and progress (stderr)."""
    return Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """Print ``error: <message>`` on stderr, as plain text."""
    typer.echo(f"error: {message}", err=True)


def warn(message: str) -> None:
    """Print ``warning: <message>`` on stderr, as plain text."""
    typer.echo(f"warning: {message}", err=True)


def fail(e: LookserveError | str, code: int = EXIT_USAGE) -> NoReturn:
    """Print the error on stderr and exit with ``code`` (2: usage or input error)."""
    error(str(e))
    if isinstance(e, BaseException):
        raise typer.Exit(code) from e
    raise typer.Exit(code)


def finish_batch(failed: int, total: int, what: str = "inputs") -> None:
    """End a batch command: exit 1 (naming how many failed) if any input failed, else return."""
    if failed:
        error(f"{failed} of {total} {what} failed")
        raise typer.Exit(EXIT_PARTIAL)


F = TypeVar("F", bound=Callable)


def handle_errors(command: F) -> F:
    """Decorator for a typer command: a :class:`LookserveError` becomes ``error: ...`` and exit 2."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LookserveError as e:
            fail(e)

    return run  # type: ignore[return-value]


def is_interactive() -> bool:
    """True when stderr is a terminal (progress bars are shown only then, or when asked)."""
    return sys.stderr.isatty()
