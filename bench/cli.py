"""``lookserve bench ...``: latency/throughput of served models and chains, and the search bench.

Nothing heavy at module level: numpy, faiss, hnswlib, matplotlib and the Triton client load inside
the commands.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.markup import escape

from lookserve.errors import LookserveError

app = typer.Typer(no_args_is_help=True, help="Latency and throughput benchmarks.")

OUT = typer.Option(Path("bench/results"), "--out", help="Directory for the JSON, Markdown and PNG outputs.")


def _console():
    from rich.console import Console

    return Console(soft_wrap=True)


def _command_line(ctx: typer.Context) -> str:
    """The command that reproduces this run: every parameter spelled out, defaults included."""
    words = ["lookserve", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        flag = getattr(param, "is_flag", False)
        if param.param_type_name == "argument":
            words.append(shlex.quote(str(value)))
        elif value is None or value == "" or (flag and not value):
            continue
        elif flag:
            words.append(param.opts[0])
        else:
            words += [param.opts[0], shlex.quote(str(value))]
    return " ".join(words)


def _fail(e: LookserveError) -> None:
    _console().print(f"[red]error:[/red] {escape(str(e))}")
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
    ctx: typer.Context,
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
        paths = write_search_report(report, out, stem=stem, command=_command_line(ctx))
    except LookserveError as e:
        _fail(e)
    c = _console()
    c.print(markdown(report))
    for p in paths:
        c.print(f"wrote {p}")


# --- load benches ---------------------------------------------------------------------------------
URL = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address (ignored with --repository).")
REPO = typer.Option(None, "--repository", help="Serve this model repository on a private tritonserver for the run.")
CONFIG_NAME = typer.Option(None, "--model-config-name", help="With --repository: Triton config variant (configs/<NAME>.pbtxt).")
MODE = typer.Option("closed", "--mode", help="closed (concurrency sweep), constant or poisson (open-loop rates).")
LEVELS = typer.Option(None, "--levels", help="Concurrencies (closed, default 1,2,4,8,16) or requests/s (open loop).")
DURATION = typer.Option(5.0, "--duration", min=0.1, help="Measured seconds per point.")
MAX_REQUESTS = typer.Option(None, "--max-requests", min=1, help="At most this many requests per point.")
WARMUP = typer.Option(1.0, "--warmup", min=0.0, help="Unmeasured warm-up seconds before every point.")
TIMEOUT = typer.Option(10.0, "--timeout", min=0.1, help="Per-request deadline in seconds.")
VARIANT = typer.Option("", "--variant", help="A label for the config variant being measured (goes into the report).")
SEED = typer.Option(0, "--seed")


def _spec(mode: str, levels: str | None, duration: float, max_requests: int | None, warmup: float, timeout: float, seed: int):
    from lookserve.bench.load import LoadSpec

    if levels is None:
        parsed: tuple[float, ...] = (1, 2, 4, 8, 16) if mode == "closed" else (10, 20, 40)
    else:
        parsed = _ints(levels, "--levels") if mode == "closed" else _floats(levels, "--levels")
    return LoadSpec(mode=mode, levels=parsed, duration_s=duration, max_requests=max_requests, warmup_s=warmup,
                    timeout_s=timeout, seed=seed)


def _run_load(make_workload, url: str, repository: Path | None, config_name: str | None, models: list[str], spec,
              variant: str, out: Path, stem: str, command: str) -> None:
    """Run one sweep against ``url`` or a private server on ``repository``, write and print the report."""
    import contextlib

    from lookserve.bench.load import markdown, run_load, write_load_report
    from lookserve.client.core import TritonClient

    with contextlib.ExitStack() as stack:
        if repository is not None:
            from lookserve.server.launcher import ServerOptions, TritonServer

            if not repository.is_dir():
                raise typer.BadParameter(f"--repository {repository} is not a directory")
            server = stack.enter_context(TritonServer(ServerOptions(
                model_repository=repository, grpc_port=0, load_models=tuple(models), model_config_name=config_name,
                exit_timeout_s=10, ready_timeout_s=180.0)))
            url = server.grpc_url
        client = stack.enter_context(TritonClient(url, timeout_s=spec.timeout_s))
        client.wait_ready(deadline_s=30)
        for m in models:
            client.wait_model_ready(m, deadline_s=60)
        workload = make_workload(client)
        report = run_load(client, workload, spec, variant=variant or (config_name or ""))
    paths = write_load_report(report, out, stem, command=command)
    c = _console()
    c.print(markdown(report))
    for p in paths:
        c.print(f"wrote {p}")


@app.command()
def model(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Served model name, e.g. embedder."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Rows per request."),
    model_version: str = typer.Option("", "--model-version", help="Model version (default: latest)."),
    url: str = URL, repository: Path | None = REPO, model_config_name: str | None = CONFIG_NAME,
    mode: str = MODE, levels: str | None = LEVELS, duration: float = DURATION, max_requests: int | None = MAX_REQUESTS,
    warmup: float = WARMUP, timeout: float = TIMEOUT, variant: str = VARIANT, seed: int = SEED, out: Path = OUT,
    stem: str | None = typer.Option(None, "--stem", help="Output file name stem (default model_<name>_<mode>)."),
) -> None:
    """Load one served model: throughput, latency percentiles and the Triton stage breakdown per point."""
    from lookserve.bench.load import model_workload

    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        _run_load(lambda client: model_workload(client, name, batch_size=batch_size, version=model_version, seed=seed),
                  url, repository, model_config_name, [name], spec, variant, out, stem or f"model_{name}_{mode}", _command_line(ctx))
    except LookserveError as e:
        _fail(e)


def _read_photos(directory: Path, limit: int = 64) -> list[bytes]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit] \
        if directory.is_dir() else []
    if not files:
        raise typer.BadParameter(f"--photos {directory}: no .jpg/.jpeg/.png files there")
    return [p.read_bytes() for p in files]


@app.command()
def look(
    ctx: typer.Context,
    catalog: Path = typer.Option(..., "--catalog", help="Catalog directory the look chain searches."),
    photo_size: int = typer.Option(640, "--photo-size", min=32, help="Side of the generated street photos (JPEG)."),
    photos_dir: Path | None = typer.Option(None, "--photos", help="Send these street photos (jpg/png files) instead of generated ones."),
    url: str = URL, repository: Path | None = REPO, model_config_name: str | None = CONFIG_NAME,
    mode: str = MODE, levels: str | None = LEVELS, duration: float = DURATION, max_requests: int | None = MAX_REQUESTS,
    warmup: float = WARMUP, timeout: float = TIMEOUT, variant: str = VARIANT, seed: int = SEED, out: Path = OUT,
    stem: str = typer.Option("look", "--stem"),
) -> None:
    """Load the shop-the-look chain (detector → embedder → search) with street photos."""
    from lookserve.bench.load import chain_workload

    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        photos = _read_photos(photos_dir) if photos_dir is not None else None
        _run_load(lambda client: chain_workload("look", client, catalog=catalog, size=photo_size, seed=seed, photos=photos),
                  url, repository,
                  model_config_name, ["detector", "embedder"], spec, variant, out, stem, _command_line(ctx))
    except LookserveError as e:
        _fail(e)


@app.command()
def thumbnails(
    ctx: typer.Context,
    views: int = typer.Option(5, "--views", min=1, help="Views per product (one request = one product)."),
    photo_size: int = typer.Option(256, "--photo-size", min=32, help="Side of the generated view photos (JPEG)."),
    url: str = URL, repository: Path | None = REPO, model_config_name: str | None = CONFIG_NAME,
    mode: str = MODE, levels: str | None = LEVELS, duration: float = DURATION, max_requests: int | None = MAX_REQUESTS,
    warmup: float = WARMUP, timeout: float = TIMEOUT, variant: str = VARIANT, seed: int = SEED, out: Path = OUT,
    stem: str = typer.Option("thumbnails", "--stem"),
) -> None:
    """Load the thumbnails chain (views → view_classifier → best view + type), one product per request."""
    from lookserve.bench.load import chain_workload

    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        _run_load(lambda client: chain_workload("thumbnails", client, views=views, size=photo_size, seed=seed), url, repository,
                  model_config_name, ["view_classifier"], spec, variant, out, stem, _command_line(ctx))
    except LookserveError as e:
        _fail(e)


@app.command("compare")
def compare_cmd(
    ctx: typer.Context,
    a: Path = typer.Argument(..., help="Report A (the baseline)."),
    b: Path = typer.Argument(..., help="Report B."),
    out: Path | None = typer.Option(None, "--out", help="Also write the comparison here (.md; .json beside it)."),
) -> None:
    """Two load reports side by side: every figure in both and B/A, per shared load level."""
    from lookserve.bench.load import compare, compare_markdown, read_report
    from lookserve.bench.report import atomic_write_json, atomic_write_text

    try:
        c = compare(read_report(a), read_report(b))
    except LookserveError as e:
        _fail(e)
    md = compare_markdown(c)
    _console().print(md)
    if out is not None:
        atomic_write_text(out.with_suffix(".md"), md + f"\nCommand: `{_command_line(ctx)}`\n")
        atomic_write_json(out.with_suffix(".json"), {**c, "command": _command_line(ctx)})


@app.command()
def variants(
    ctx: typer.Context,
    names: str = typer.Option(",".join(("batching_on", "batching_off", "instances_2", "fp32_input", "int8")), "--variants",
                              help="Comma-separated variants; the first is the baseline of the comparisons."),
    onnx_path: Path | None = typer.Option(None, "--onnx", help="An exported FP32 embedder model.onnx (default: synthetic conv embedder)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    mode: str = MODE, levels: str | None = LEVELS, duration: float = DURATION, max_requests: int | None = MAX_REQUESTS,
    warmup: float = WARMUP, timeout: float = TIMEOUT, seed: int = SEED, out: Path = OUT,
    prefix: str = typer.Option("variants", "--prefix", help="Output file name prefix."),
) -> None:
    """Embedder config variants (typed configs via dataclasses.replace) on private servers, compared as ratios."""
    from lookserve.bench.load import compare, compare_markdown, plot_comparison, write_load_report
    from lookserve.bench.report import atomic_write_json, atomic_write_text
    from lookserve.bench.variants import run_variants

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    command = _command_line(ctx)
    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        reports = run_variants(wanted, spec, onnx_path=onnx_path, batch_size=batch_size)
    except LookserveError as e:
        _fail(e)
    c = _console()
    for name, report in reports.items():
        for p in write_load_report(report, out, f"{prefix}_{name}", command=command):
            c.print(f"wrote {p}")
    base = wanted[0]
    summary = [f"# Embedder config variants vs {base}\n", f"Command: `{command}`\n"]
    comparisons = {}
    for name in wanted[1:]:
        cmp = compare(reports[base], reports[name])
        comparisons[name] = cmp
        summary.append(compare_markdown(cmp))
    plot_comparison(reports, out / f"{prefix}_compare.png", title=f"embedder config variants ({mode})")
    summary.append(f"![variants]({prefix}_compare.png)\n")
    atomic_write_text(out / f"{prefix}_compare.md", "\n".join(summary))
    atomic_write_json(out / f"{prefix}_compare.json", {"command": command, "baseline": base, "comparisons": comparisons})
    c.print("\n".join(summary))


@app.command("synthetic-repository")
def synthetic_repository(path: Path = typer.Argument(..., help="Directory to write (a Triton model repository).")) -> None:
    """Write the synthetic conv embedder and view classifier (contract configs) for benches without trained models."""
    from lookserve.bench.variants import write_synthetic_repository

    if path.exists() and any(path.iterdir()):
        raise typer.BadParameter(f"{path} exists and is not empty; pick a new directory")
    write_synthetic_repository(path)
    _console().print(f"wrote {path} (embedder, view_classifier: synthetic conv models, contract configs)")
