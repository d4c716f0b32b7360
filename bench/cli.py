"""``lookserve bench ...``: latency/throughput of served models and chains, and the search bench.

Nothing heavy at module level: numpy, faiss, hnswlib, matplotlib and the Triton client load inside
the commands.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from lookserve.errors import LookserveError

app = typer.Typer(no_args_is_help=True, help="Latency and throughput benchmarks.")

OUT = typer.Option(Path("bench/results"), "--out", help="Directory for the JSON, Markdown and PNG outputs.")


def _console():
    from rich.console import Console

    return Console(soft_wrap=True)


def _command_line() -> str:
    return "lookserve " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _fail(e: LookserveError) -> None:
    _console().print(f"[red]error:[/red] {e}")
    raise typer.Exit(2) from e


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"{what} must be positive integers, got {text!r}")
    return values


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from e
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{what} must be positive numbers, got {text!r}")
    return values


@app.command()
def search(
    n: int = typer.Option(1_000_000, "--n", min=1, help="Number of base vectors."),
    dim: int = typer.Option(128, "--dim", min=1, help="Vector dimension (the embedder's)."),
    queries: int = typer.Option(1000, "--queries", min=1, help="Number of held-out queries."),
    k: int = typer.Option(10, "--k", min=1, help="recall@k."),
    efs: str = typer.Option("10,20,40,80,160,320", "--efs", help="Comma-separated ef values of the recall/QPS curve."),
    m: int = typer.Option(16, "--m", min=2, help="HNSW M (both engines)."),
    ef_construction: int = typer.Option(100, "--ef-construction", min=1, help="HNSW efConstruction (both engines)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Threads for builds and batched queries."),
    clusters: int = typer.Option(256, "--clusters", min=1, help="Gaussian mixture components."),
    seed: int = typer.Option(0, "--seed"),
    engines: str = typer.Option("hnswlib,faiss", "--engines", help="Comma-separated: hnswlib, faiss."),
    exact_single: int = typer.Option(100, "--exact-single-queries", min=1, help="Queries timed one by one for exact search."),
    out: Path = OUT,
    stem: str = typer.Option("search", "--stem", help="Output file name stem."),
) -> None:
    """hnswlib vs exact (numpy) vs faiss HNSW: recall@k, single/batched q/s, build time and memory."""
    from lookserve.bench.search import SearchSpec, markdown, run_search_bench, write_search_report

    try:
        spec = SearchSpec(n=n, dim=dim, queries=queries, k=k, efs=_ints(efs, "--efs"), m=m, ef_construction=ef_construction,
                          threads=threads, clusters=clusters, seed=seed,
                          engines=tuple(e.strip() for e in engines.split(",") if e.strip()),
                          exact_single_queries=exact_single)
        report = run_search_bench(spec)
        paths = write_search_report(report, out, stem=stem, command=_command_line())
    except LookserveError as e:
        _fail(e)
    c = _console()
    c.print(markdown(report))
    for p in paths:
        c.print(f"wrote {p}")
