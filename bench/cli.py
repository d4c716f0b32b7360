"""``lookserve bench ...``: latency/throughput of served models and chains, and the search bench.

Nothing heavy at module level: numpy, faiss, hnswlib, matplotlib and the Triton client load inside
the commands.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer
from rich.console import Console

from lookserve.bench import perf_analyzer as pa_engine
from lookserve.bench.load import (
    LoadSpec,
    chain_workload,
    check_served,
    compare,
    compare_markdown,
    encoded_photos,
    model_workload,
    plot_comparison,
    read_report,
    run_load,
    write_load_report,
)
from lookserve.bench.load import markdown as load_markdown
from lookserve.bench.perf_analyzer import bytes_input_data
from lookserve.bench.report import (
    DEFAULT_OUT,
    atomic_write_json,
    atomic_write_text,
    command_line,
    markdown_table,
)
from lookserve.bench.search import (
    SearchSpec,
    expected_time,
    run_search_bench,
    write_search_report,
)
from lookserve.bench.search import markdown as search_markdown
from lookserve.bench.tune import grid, write_winner
from lookserve.bench.tune import tune as run_tune
from lookserve.bench.variants import run_variants, write_synthetic_repository
from lookserve.client.core import TritonClient
from lookserve.cliutil import fail, stderr_console, url_option
from lookserve.errors import LookserveError
from lookserve.modelconfig import ModelConfig
from lookserve.server.launcher import ServerOptions, TritonServer

app = typer.Typer(no_args_is_help=True, help="Latency and throughput benchmarks.")

OUT = typer.Option(DEFAULT_OUT, "--out", help="Directory for the JSON, Markdown and PNG outputs.")


def _console():
    return Console(soft_wrap=True)




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

    try:
        spec = SearchSpec(n=n, dim=dim, queries=queries, k=k, efs=_ints(efs, "--efs"), m=m, ef_construction=ef_construction,
                          threads=threads, clusters=clusters, seed=seed,
                          engines=tuple(e.strip() for e in engines.split(",") if e.strip()),
                          exact_single_queries=exact_single)
        stderr_console().print(f"search bench: N={n:,}, engines {', '.join(spec.engines)}; {expected_time(spec)}")
        report = run_search_bench(spec)
        paths = write_search_report(report, out, stem=stem, command=command_line(ctx))
    except LookserveError as e:
        fail(e)
    c = _console()
    c.print(search_markdown(report))
    for p in paths:
        c.print(f"wrote {p}")


# --- load benches ---------------------------------------------------------------------------------
URL = url_option(help="Triton gRPC address host:port, or replicas a:p1,b:p2 / dns:///host:port; env LOOKSERVE_URL (ignored with --repository).")
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
    if levels is None:
        parsed: tuple[float, ...] = (1, 2, 4, 8, 16) if mode == "closed" else (10, 20, 40)
    else:
        parsed = _ints(levels, "--levels") if mode == "closed" else _floats(levels, "--levels")
    return LoadSpec(mode=mode, levels=parsed, duration_s=duration, max_requests=max_requests, warmup_s=warmup,
                    timeout_s=timeout, seed=seed)


def _run_load(make_workload, url: str, repository: Path | None, config_name: str | None, models: list[str], spec,
              variant: str, out: Path, stem: str, command: str, engine: str = "lookserve", batch_size: int = 1,
              version: str = "") -> None:
    """Run one sweep against ``url`` or a private server on ``repository``, write and print the report.

    ``engine``: lookserve's load generator, perf_analyzer (``models[0]``, same load points), or
    both interleaved level by level, with perf_analyzer/lookserve ratios."""


    if engine not in pa_engine.ENGINES:
        raise typer.BadParameter(f"--engine must be one of {', '.join(pa_engine.ENGINES)}, got {engine!r}")
    if engine != "lookserve" and repository is None:
        pa_engine.one_endpoint(url)  # a replica list is refused before any connection
    pa = pa_engine.locate() if engine != "lookserve" else None  # a missing binary fails before any server starts

    with contextlib.ExitStack() as stack:
        if repository is not None:
            if not repository.is_dir():
                raise typer.BadParameter(f"--repository {repository} is not a directory")
            server = stack.enter_context(TritonServer(ServerOptions(
                model_repository=repository, grpc_port=0, load_models=tuple(models), model_config_name=config_name,
                exit_timeout_s=10, ready_timeout_s=180.0)))
            url = server.grpc_url
        client = stack.enter_context(TritonClient(url, timeout_s=spec.timeout_s))
        client.wait_ready(deadline_s=30)
        for m in models:
            check_served(client, m)  # an unknown name is answered at once, with the served ones
            client.wait_model_ready(m, deadline_s=60)
        label = variant or (config_name or "")
        if engine == "perf_analyzer":
            reports = {"": pa_engine.run_perf_analyzer(models[0], url, spec, batch_size=batch_size, version=version,
                                                       variant=label, pa=pa)}
        elif engine == "both":
            ours, theirs = pa_engine.run_interleaved(client, make_workload(client), models[0], url, spec,
                                                     batch_size=batch_size, version=version, variant=label, pa=pa)
            reports = {"_lookserve": ours, "_perf_analyzer": theirs}
        else:
            reports = {"": run_load(client, make_workload(client), spec, variant=label)}
    c = _console()
    for suffix, report in reports.items():
        c.print(load_markdown(report))
        for p in write_load_report(report, out, stem + suffix, command=command):
            c.print(f"wrote {p}")
    if engine == "both":
        cmp = compare(reports["_lookserve"], reports["_perf_analyzer"])
        md = ("# perf_analyzer (B) vs lookserve bench (A), interleaved level by level\n\n" + compare_markdown(cmp)
              + "\nperf_analyzer commands:\n\n" + "\n".join(f"    {p['command']}" for p in reports["_perf_analyzer"]["points"])
              + f"\n\nCommand: `{command}`\n")
        c.print(md)
        for p in (atomic_write_text(out / f"{stem}_engines.md", md),
                  atomic_write_json(out / f"{stem}_engines.json", {**cmp, "command": command})):
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
    engine: str = typer.Option("lookserve", "--engine",
                               help="lookserve (its own load generator), perf_analyzer (NVIDIA's, same load points), "
                                    "or both, interleaved level by level with their ratios."),
) -> None:
    """Load one served model: throughput, latency percentiles and the Triton stage breakdown per point."""

    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        _run_load(lambda client: model_workload(client, name, batch_size=batch_size, version=model_version, seed=seed),
                  url, repository, model_config_name, [name], spec, variant, out, stem or f"model_{name}_{mode}", command_line(ctx),
                  engine=engine, batch_size=batch_size, version=model_version)
    except LookserveError as e:
        fail(e)


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

    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        photos = _read_photos(photos_dir) if photos_dir is not None else None
        _run_load(lambda client: chain_workload("look", client, catalog=catalog, size=photo_size, seed=seed, photos=photos),
                  url, repository,
                  model_config_name, ["detector", "embedder"], spec, variant, out, stem, command_line(ctx))
    except LookserveError as e:
        fail(e)


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

    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        _run_load(lambda client: chain_workload("thumbnails", client, views=views, size=photo_size, seed=seed), url, repository,
                  model_config_name, ["view_classifier"], spec, variant, out, stem, command_line(ctx))
    except LookserveError as e:
        fail(e)


@app.command("compare")
def compare_cmd(
    ctx: typer.Context,
    a: Path = typer.Argument(..., help="Report A (the baseline)."),
    b: Path = typer.Argument(..., help="Report B."),
    out: Path | None = typer.Option(None, "--out", help="Also write the comparison here (.md; .json beside it)."),
) -> None:
    """Two load reports side by side: every figure in both and B/A, per shared load level."""

    try:
        c = compare(read_report(a), read_report(b))
    except LookserveError as e:
        fail(e)
    md = compare_markdown(c)
    _console().print(md)
    if out is not None:
        atomic_write_text(out.with_suffix(".md"), md + f"\nCommand: `{command_line(ctx)}`\n")
        atomic_write_json(out.with_suffix(".json"), {**c, "command": command_line(ctx)})


@app.command()
def variants(
    ctx: typer.Context,
    names: str = typer.Option(",".join(("batching_on", "batching_off", "instances_2", "fp32_input", "int8")), "--variants",
                              help="Comma-separated variants; the first is the baseline of the comparisons. Known: "
                                   "batching_on, batching_off, instances_2, fp32_input, int8, delay_1000, delay_500, "
                                   "delay_100, delay_0, preferred_4_8, threads_2, instances_2_t1, and ort_direct_1t / "
                                   "ort_direct_2t (the same model.onnx in this process, no server)."),
    onnx_path: Path | None = typer.Option(None, "--onnx", help="An exported FP32 embedder model.onnx (default: synthetic conv embedder)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    mode: str = MODE, levels: str | None = LEVELS, duration: float = DURATION, max_requests: int | None = MAX_REQUESTS,
    warmup: float = WARMUP, timeout: float = TIMEOUT, seed: int = SEED, out: Path = OUT,
    prefix: str = typer.Option("variants", "--prefix", help="Output file name prefix."),
    rounds: int = typer.Option(1, "--rounds", min=1, help="Visit every variant this many times per level (order "
                               "rotated each round); the report gives the median of the rounds."),
) -> None:
    """Embedder config variants (typed configs via dataclasses.replace) on private servers, compared as ratios."""

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    command = command_line(ctx)
    try:
        spec = _spec(mode, levels, duration, max_requests, warmup, timeout, seed)
        reports = run_variants(wanted, spec, onnx_path=onnx_path, batch_size=batch_size, rounds=rounds)
    except LookserveError as e:
        fail(e)
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


def _spinning(value: str) -> bool:
    value = value.strip()
    if value not in ("0", "1"):
        raise typer.BadParameter(f"--spinning takes 1, 0 or 1,0; got {value!r}")
    return value == "1"


@app.command()
def tune(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model in --repository to tune, e.g. embedder."),
    repository: Path = typer.Option(Path("model_repository"), "--repository",
                                    help="Model repository holding <NAME>/config.pbtxt and <NAME>/<version>/model.onnx."),
    instances: str = typer.Option("1,2", "--instances", help="Instance counts to try."),
    threads: str = typer.Option("1,2", "--threads", help="Intra-op thread counts to try."),
    delays: str = typer.Option("0,500", "--delays", help="max_queue_delay_microseconds values to try (0 allowed)."),
    spinning: str = typer.Option("", "--spinning", help="allow_spinning values to try for candidates with more than one "
                                 "intra-op thread: 1 (idle threads spin), 0 (they sleep), or 1,0 (default: the backend's "
                                 "default, asleep above one thread)."),
    max_batches: str = typer.Option("", "--max-batch", help="max_batch_size values to try (default: the config's)."),
    thread_budget: int = typer.Option(2, "--thread-budget", min=1, help="Skip candidates with instances × threads above this."),
    objective: str = typer.Option("latency", "--objective", help="latency (best throughput with p99 ≤ --p99-ms at every "
                                  "level) or throughput (best throughput at the top level)."),
    p99_ms: float | None = typer.Option(None, "--p99-ms", min=0.001, help="The latency objective's p99 bound."),
    variant_name: str = typer.Option("tuned", "--name", help="Write the winner as <NAME>/configs/<this>.pbtxt."),
    apply: bool = typer.Option(False, "--apply", help="Also replace <NAME>/config.pbtxt with the winner."),
    levels: str | None = LEVELS, duration: float = DURATION, max_requests: int | None = MAX_REQUESTS,
    warmup: float = WARMUP, timeout: float = TIMEOUT, seed: int = SEED,
    rounds: int = typer.Option(1, "--rounds", min=1, help="Visits per candidate and level (median reported)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
) -> None:
    """Search instance count × threads × queue delay × max batch under an objective; write the winner as a variant."""

    command = command_line(ctx)
    model_dir = repository / name
    try:
        base = ModelConfig.read(model_dir / "config.pbtxt")
        versions = sorted((int(p.parent.name) for p in model_dir.glob("[0-9]*/model.onnx")), reverse=True)
        if not versions:
            raise typer.BadParameter(f"{model_dir} has no <version>/model.onnx")
        onnx_path = model_dir / str(versions[0]) / "model.onnx"
        batches = _ints(max_batches, "--max-batch") if max_batches else (base.max_batch_size,)
        delay_values = tuple(int(v) for v in delays.split(",") if v.strip())
        if not delay_values or any(v < 0 for v in delay_values):
            raise typer.BadParameter(f"--delays must be comma-separated integers ≥ 0, got {delays!r}")
        spin_values = tuple(_spinning(v) for v in spinning.split(",") if v.strip()) or (None,)
        candidates = grid(_ints(instances, "--instances"), _ints(threads, "--threads"), delay_values, batches,
                          thread_budget, spinning=spin_values)
        spec = _spec("closed", levels or "1,8", duration, max_requests, warmup, timeout, seed)
        stderr_console().print(f"tune {name}: {len(candidates)} candidates × {len(spec.levels)} levels × {rounds} round(s)")
        result = run_tune(base, onnx_path, candidates, spec, objective, p99_ms=p99_ms, rounds=rounds,
                          batch_size=batch_size)
        rows = [[n, c["instances"], c["threads"], c["delay_us"], c["max_batch"], c["throughput_rps_at_top"],
                 c["worst_p99_ms"], "yes" if c["meets"] else "no", "**winner**" if n == result["winner"] else ""]
                for n, c in result["candidates"].items()]
        _console().print(markdown_table(["candidate", "instances", "threads", "delay µs", "max batch",
                                         "req/s at top level", "worst p99 ms", "meets", ""], rows))
        paths = write_winner(result, model_dir, variant_name, command, apply=apply)
    except LookserveError as e:
        fail(e)
    for p in paths:
        _console().print(f"wrote {p}")


@app.command("perf-analyzer-data")
def perf_analyzer_data(
    out_path: Path = typer.Argument(..., help="JSON file to write (perf_analyzer --input-data)."),
    kind: str = typer.Option("look", "--kind", help="look (one photo per request, input 'image') or thumbnails "
                             "(--views photos per request, input 'images')."),
    photos_dir: Path | None = typer.Option(None, "--photos", help="Use these jpg/png files instead of generated photos."),
    n: int = typer.Option(8, "--n", min=1, help="Requests in the file (perf_analyzer cycles through them)."),
    views: int = typer.Option(5, "--views", min=1, help="thumbnails: photos per request."),
    photo_size: int = typer.Option(640, "--photo-size", min=32, help="Side of the generated photos (JPEG)."),
    seed: int = SEED,
) -> None:
    """Write perf_analyzer's input data for the server-side look/thumbnails models (BYTES photos)."""


    if kind not in ("look", "thumbnails"):
        raise typer.BadParameter(f"--kind must be look or thumbnails, got {kind!r}")
    per = 1 if kind == "look" else views
    photos = _read_photos(photos_dir, limit=n * per) if photos_dir is not None else \
        encoded_photos(n * per, photo_size, seed=seed)[0]
    items = [[photos[(i * per + j) % len(photos)] for j in range(per)] for i in range(n)]
    data = bytes_input_data(items, "image" if kind == "look" else "images")
    atomic_write_text(out_path, json.dumps(data))
    shape = "image:1" if kind == "look" else f"images:{per}"
    _console().print(f"wrote {out_path} ({n} requests); run perf_analyzer -m {kind} --input-data {out_path} --shape {shape}")


@app.command("synthetic-repository")
def synthetic_repository(path: Path = typer.Argument(..., help="Directory to write (a Triton model repository).")) -> None:
    """Write the synthetic conv embedder and view classifier (contract configs) for benches without trained models."""

    if path.exists() and any(path.iterdir()):
        raise typer.BadParameter(f"{path} exists and is not empty; pick a new directory")
    write_synthetic_repository(path)
    _console().print(f"wrote {path} (embedder, view_classifier: synthetic conv models, contract configs)")
