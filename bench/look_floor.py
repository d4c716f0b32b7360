"""``lookserve bench look-floor``: the look chain at c=1 against its compute floor (issue 18).

Issue 18's goal: the look chain at concurrency 1 within 1.2× the *compute floor* — the models'
best single-request onnxruntime times with 2 threads, plus the HNSW search. These variants run
the same held-out street photos, interleaved per photo (in a seeded random order per photo, so
machine load hits all alike and no variant always follows the same other one):

* ``floor_<t>t`` (t = 2 and 1 by default) — :class:`~lookserve.client.look.LookPipeline` with
  an in-process client (:class:`OrtClient`): the repository's ``model.onnx`` files in
  onnxruntime with ``t`` intra-op threads (idle threads do not spin), no server. Every other step is the chain's own code:
  decode, letterbox and crops through :mod:`lookserve.images`, the filters, the kept crops in one
  embedder batch, and the same :meth:`Catalog.search <lookserve.client.catalog.Catalog.search>`
  on the same catalog. The compute floor is the fastest floor at p50: on a loaded 2-core machine
  two spinning intra-op threads can be slower than one, and the best time within the budget is
  the floor;
* ``chain`` — the same pipeline through Triton (the client chain: detector input and crops travel);
* ``look`` — one server-side ``look`` call (the encoded photo travels; masks off).

Each photo's answer (categories and product ids) is compared across the variants, so the floor
is known to do the same work. Every Triton call is framed by two snapshots of Triton's
statistics (:func:`~lookserve.bench.load.settled_snapshot`, outside the timed region): their
deltas split each variant's gap over the floor into queue, model compute beyond onnxruntime's
own time, and the rest (RPC, serialisation, the python stub's IPC, BLS). The photos are sent by
the one closed-loop driver (:class:`~lookserve.bench.load.ClosedLoop`, one worker); a photo's
latency is timed inside the call around the variant alone.

    lookserve bench look-floor --model-repository model_repository --data runs/demo/data \\
        --catalog runs/demo/catalog --out bench/results
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer

from lookserve import contracts, errors
from lookserve.bench.load import (
    ClosedLoop,
    latency_summary,
    raw_delta,
    settled_snapshot,
    stats_delta,
    stats_snapshot,
)
from lookserve.bench.look_server import held_out_photos, serve_look
from lookserve.bench.report import (
    DEFAULT_OUT,
    atomic_write_json,
    atomic_write_text,
    command_line,
    environment,
    markdown_table,
)
from lookserve.client.catalog import open_for_client
from lookserve.client.core import InferResult, ModelMetadata, TritonClient
from lookserve.client.look import LookPipeline
from lookserve.client.look_remote import RemoteLook
from lookserve.cliutil import handle_errors, stderr_console
from lookserve.server.pipelines.repository import latest_version, metadata_from_config, read_config

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

#: issue 18: the look chain at c=1 within this multiple of the compute floor
GOAL_RATIO = 1.2
#: the Triton models the served variants touch (the first one answers once per photo); the
#: floor variants touch none
TRITON_MODELS = {"chain": (contracts.DETECTOR, contracts.EMBEDDER),
                 "look": (contracts.LOOK, contracts.DETECTOR, contracts.EMBEDDER)}
#: the chain's timed steps (``LookResult.timings_ms``)
STEPS = ("decode", "letterbox", "detect", "filter", "crop", "embed", "search")
_COMPUTE = ("compute_input_ns", "compute_infer_ns", "compute_output_ns")


class OrtClient:
    """The two calls :class:`~lookserve.client.look.LookPipeline` makes of a client
    (``model_metadata``, ``infer``), answered in this process by onnxruntime on a model
    repository's ``model.onnx`` files (the highest version folder, as Triton serves by default),
    ``threads`` intra-op threads each (not spinning when idle), sequential execution. Inputs are cast to the graph's
    input type where it differs from the config's, as the python-based backend does."""

    def __init__(self, repository: Path, models: Sequence[str] = (contracts.DETECTOR, contracts.EMBEDDER),
                 threads: int = 2) -> None:
        import onnxruntime as ort

        self.repository, self.threads = Path(repository), threads
        self._meta: dict[str, ModelMetadata] = {}
        self._sessions: dict[str, Any] = {}
        self._input_types: dict[str, dict[str, np.dtype]] = {}
        for name in models:
            version = latest_version(self.repository, name)
            path = self.repository / name / version / "model.onnx"
            if not path.is_file():
                raise errors.ModelNotFound(f"{name} version {version}: {path} not found")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # idle intra-op threads sleep: a session's spinning pool would steal the cores of
            # whatever runs next in this process (the next variant of the interleaved run)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            meta = metadata_from_config(read_config(self.repository, name))
            self._meta[name] = ModelMetadata(meta.name, (version,), meta.inputs, meta.outputs)
            self._sessions[name] = session
            self._input_types[name] = {i.name: _ORT_TYPES.get(i.type, None) for i in session.get_inputs()}

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        meta = self._meta.get(name)
        if meta is None or (version and version not in meta.versions):
            raise errors.ModelNotFound(f"{name!r} version {version or 'latest'} is not loaded in-process "
                                       f"(loaded: {', '.join(f'{n} {m.versions[0]}' for n, m in self._meta.items())})")
        return meta

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
              version: str = "", timeout_s: float | None = None, request_id: str = "") -> InferResult:
        meta = self.model_metadata(model, version)
        types = self._input_types[model]
        feeds = {}
        for name, array in inputs.items():
            want = types.get(name)
            feeds[name] = array if want is None or array.dtype == want else array.astype(want)
        names = list(outputs) if outputs else [t.name for t in meta.outputs]
        values = self._sessions[model].run(names, feeds)
        return InferResult(model, meta.versions[0], dict(zip(names, values, strict=True)))


_ORT_TYPES = {"tensor(uint8)": np.dtype(np.uint8), "tensor(float)": np.dtype(np.float32),
              "tensor(float16)": np.dtype(np.float16), "tensor(int32)": np.dtype(np.int32),
              "tensor(int64)": np.dtype(np.int64)}


def answer_key(doc: Mapping[str, Any]) -> list:
    """What a look answer found: per kept item, its category and the product ids of its matches."""
    return [[item["category"], [m["product_id"] for m in item["matches"]]] for item in doc["items"]]


def _add(total: dict[str, dict], delta: Mapping[str, dict]) -> None:
    for model, d in delta.items():
        t = total.setdefault(model, {"batches": {}, "versions": {}})
        for k, v in d.items():
            if isinstance(v, dict):
                for s, n in v.items():
                    t[k][s] = t[k].get(s, 0) + n
            else:
                t[k] = t.get(k, 0) + v


def measure(url: str, repository: Path, catalog: Path, photos: Sequence[Path], rounds: int = 2,
            threads: Sequence[int] = (2, 1), seed: int = 0) -> dict[str, Any]:
    """The variants on ``photos`` (each photo ``rounds`` times per variant), interleaved per photo,
    against the server at ``url`` serving ``detector``, ``embedder`` and ``look`` on ``catalog``:
    one floor per entry of ``threads`` (``floor_<t>t``), the chain and the one call. The report
    is :func:`summarise`'s."""
    if not photos:
        raise errors.InvalidInputError("no photos to measure")
    if rounds < 1:
        raise errors.ConfigError(f"rounds must be ≥ 1, got {rounds}")
    if not threads or any(t < 1 for t in threads) or len(set(threads)) != len(threads):
        raise errors.ConfigError(f"threads must be distinct counts ≥ 1, got {list(threads)}")
    with TritonClient(url, timeout_s=120) as client:
        cat = open_for_client(catalog, client, repository)
        chain = LookPipeline(client, cat)
        remote = RemoteLook(client)
        runs: dict[str, Callable[[Path], dict]] = {}
        for t in threads:
            floor = LookPipeline(OrtClient(repository, threads=t), cat)
            runs[f"floor_{t}t"] = lambda p, f=floor: f.run(p).to_dict(include_masks=False)
        runs["chain"] = lambda p: chain.run(p).to_dict(include_masks=False)
        runs["look"] = lambda p: remote.run(p, include_masks=False)
        names = tuple(runs)
        for run in runs.values():  # warm every path (sessions, connections, the look model's catalog)
            run(photos[0])
        # a seeded random order per photo: no variant always runs right after the same other one
        rng = np.random.default_rng(seed)
        order = [(r, j, names[k]) for r in range(rounds) for j in range(len(photos))
                 for k in rng.permutation(len(names))]

        def call(worker: int, i: int) -> dict[str, Any]:
            r, j, name = order[i]
            models = TRITON_MODELS.get(name, ())
            before = stats_snapshot(client, models) if models else {}
            t = time.perf_counter()
            doc = runs[name](photos[j])
            ms = (time.perf_counter() - t) * 1e3
            delta = {}
            if models:
                first = before[models[0]]
                after = settled_snapshot(client, models,
                                         expect_first=first["success_count"] + first["fail_count"] + 1)
                delta = raw_delta(before, after)
            return {"variant": name, "round": r, "photo": j, "ms": ms, "answer": answer_key(doc),
                    "timings_ms": doc.get("timings_ms", {}), "stats": delta}

        outcomes = ClosedLoop(call, 1, max_requests=len(order), max_s=24 * 3600.0, name="look-floor").start().wait()
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise errors.ServerError(f"{len(failed)} of {len(outcomes)} requests failed, e.g. {failed[0].kind}: "
                                 f"{failed[0].message}; the floor comparison needs every photo answered")
    return summarise([o.value for o in outcomes], names, len(photos), rounds)


def summarise(calls: Sequence[Mapping[str, Any]], names: Sequence[str], photos: int, rounds: int) -> dict[str, Any]:
    """Per variant: latency percentiles, mean steps, Triton's statistics per model. The compute
    floor is the fastest floor variant at p50 (the models' best onnxruntime times within the
    thread budget); against it: the ratios of the chain and the one call (p50, p99, and the
    median of per-photo ratios), the split of their mean gap, the goal."""
    by = {name: [c for c in calls if c["variant"] == name] for name in names}
    variants: dict[str, Any] = {}
    for name, cs in by.items():
        stats: dict[str, dict] = {}
        for c in cs:
            _add(stats, c["stats"])
        n = len(cs)
        per_model = stats_delta({}, stats) if stats else {}
        for model, s in per_model.items():
            s["requests_per_photo"] = s["requests"] / n
            s["queue_ms_per_photo"] = stats[model]["queue_ns"] / n / 1e6
            s["compute_ms_per_photo"] = sum(stats[model][k] for k in _COMPUTE) / n / 1e6
            s["server_ms_per_photo"] = stats[model]["success_ns"] / n / 1e6
        steps = {k: float(np.mean([c["timings_ms"].get(k, 0.0) for c in cs])) for k in STEPS}
        variants[name] = {"photos": n, "latency": latency_summary([c["ms"] / 1e3 for c in cs]),
                          "mean_steps_ms": steps, "triton": per_model}
    floors = [n for n in names if n.startswith("floor_")]
    best = min(floors, key=lambda n: variants[n]["latency"]["p50_ms"])
    floor = variants[best]
    floor_models_ms = floor["mean_steps_ms"]["detect"] + floor["mean_steps_ms"]["embed"]
    # the same photo in the same round, variant against the floor
    floor_ms = {(c["round"], c["photo"]): c["ms"] for c in by[best]}
    answers: dict[tuple[int, int], dict[str, list]] = {}
    for c in calls:
        answers.setdefault((c["round"], c["photo"]), {})[c["variant"]] = c["answer"]
    ratios, gaps = {}, {}
    for name in names:
        if name == best:
            continue
        v = variants[name]
        paired = [c["ms"] / floor_ms[(c["round"], c["photo"])] for c in by[name]]
        ratios[name] = {
            "p50_over_floor_p50": v["latency"]["p50_ms"] / floor["latency"]["p50_ms"],
            "p99_over_floor_p99": v["latency"]["p99_ms"] / floor["latency"]["p99_ms"],
            "median_paired_ratio": float(np.median(paired)),
        }
        if name in floors:
            continue
        models = (contracts.DETECTOR, contracts.EMBEDDER)
        queue = sum(s["queue_ms_per_photo"] for s in v["triton"].values())
        compute = sum(v["triton"][m]["compute_ms_per_photo"] for m in models)
        gap = v["latency"]["mean_ms"] - floor["latency"]["mean_ms"]
        split = {"mean_ms": v["latency"]["mean_ms"], "floor_mean_ms": floor["latency"]["mean_ms"], "gap_ms": gap,
                 "queue_ms": queue, "model_compute_ms": compute, "floor_models_ms": floor_models_ms,
                 "compute_over_floor_ms": compute - floor_models_ms,
                 "rest_ms": gap - queue - (compute - floor_models_ms)}
        if name == "look":
            lk = v["triton"][contracts.LOOK]
            inner = sum(v["triton"][m]["server_ms_per_photo"] for m in models)
            split["look_own_ms"] = lk["server_ms_per_photo"] - lk["queue_ms_per_photo"] - inner
            split["client_rpc_ms"] = v["latency"]["mean_ms"] - lk["server_ms_per_photo"]
        else:
            split["client_rpc_ms"] = (v["mean_steps_ms"]["detect"] + v["mean_steps_ms"]["embed"]
                                      - sum(v["triton"][m]["server_ms_per_photo"] for m in models))
        gaps[name] = split
    ratio = ratios["chain"]["p50_over_floor_p50"]
    agree = {name: sum(a[name] == a[best] for a in answers.values()) for name in names if name != best}
    return {
        "kind": "look_floor", "photos": photos, "rounds": rounds, "variant_names": list(names), "floor": best,
        "variants": variants, "ratios": ratios, "gap": gaps, "answers_equal_floor": agree,
        "answers_compared": len(answers),
        "goal": {"text": f"look chain at c=1 ≤ {GOAL_RATIO}× the compute floor (p50)", "ratio": ratio,
                 "met": ratio <= GOAL_RATIO, "excess_ms": variants["chain"]["latency"]["p50_ms"]
                 - GOAL_RATIO * floor["latency"]["p50_ms"]},
    }


def markdown(report: Mapping[str, Any]) -> str:
    v, g, r, best = report["variants"], report["goal"], report["ratios"], report["floor"]
    names = report["variant_names"]
    agree = ", ".join(f"{n} {k}/{report['answers_compared']}" for n, k in report["answers_equal_floor"].items())

    def ratio(n: str, key: str) -> str:
        return f"{r[n][key]:.2f}×" if n in r else "1 (the floor)"

    lines = [
        "# Look chain at c=1 vs its compute floor (issue 18)", "",
        f"Command: `{report.get('command', '')}`  ",
        f"Load (`uptime`) before / after: {report.get('uptime_before', '')} / {report.get('uptime_after', '')}  ",
        f"{report['photos']} held-out street photos × {report['rounds']} rounds per variant, interleaved per photo "
        "(seeded random order per photo). `floor_<t>t` = the same LookPipeline with onnxruntime in-process, "
        "t intra-op threads per model (idle threads not spinning), "
        f"the same catalog search; the compute floor is the fastest of them at p50 (here `{best}`). "
        f"Answers (categories, product ids) equal to the floor's: {agree}.", "",
        markdown_table(["variant", "photos", "p50 ms", "p99 ms", "mean ms", "p50 / floor p50", "p99 / floor p99",
                        "median paired ratio"],
                       [[n, v[n]["photos"], v[n]["latency"]["p50_ms"], v[n]["latency"]["p99_ms"], v[n]["latency"]["mean_ms"],
                         ratio(n, "p50_over_floor_p50"), ratio(n, "p99_over_floor_p99"), ratio(n, "median_paired_ratio")]
                        for n in names]),
        f"**Goal**: {g['text']}: chain p50 is **{g['ratio']:.2f}×** the floor's (`{best}`) — "
        + ("met." if g["met"] else f"missed, by {g['excess_ms']:.1f} ms at p50 ({g['ratio'] / GOAL_RATIO:.2f}× the allowed)."),
        "",
        "## Steps (mean ms per photo; for the served paths `detect` and `embed` are round trips)", "",
        markdown_table(["variant", *STEPS], [[n, *v[n]["mean_steps_ms"].values()] for n in names if n != "look"]),
        "## Where the gap goes (mean ms per photo, from Triton's statistics)", "",
        "`rest` = gap − queue − (compute − onnxruntime's own model time in the floor): RPC and serialisation, the "
        "python stub's IPC, the BLS calls. `client + RPC` is the round trips beyond Triton's server time. For "
        "`look`, `look own` is the look model's time beyond its queue and the detector's and embedder's server "
        "time (decode, crops, search and BLS overhead inside the server).", "",
        markdown_table(["variant", "mean ms", "floor mean ms", "gap ms", "queue ms", "model compute ms",
                        "floor models ms", "compute − floor ms", "rest ms", "client + RPC ms", "look own ms"],
                       [[n, s["mean_ms"], s["floor_mean_ms"], s["gap_ms"], s["queue_ms"], s["model_compute_ms"],
                         s["floor_models_ms"], s["compute_over_floor_ms"], s["rest_ms"], s["client_rpc_ms"],
                         s.get("look_own_ms")] for n, s in report["gap"].items()]),
        "## Triton's statistics per model", "",
        markdown_table(["variant", "model", "requests / photo", "mean batch", "queue ms / req", "compute infer ms / req",
                        "server ms / req"],
                       [[n, m, s["requests_per_photo"], s["mean_batch"], s["queue_ms"], s["compute_infer_ms"], s["server_ms"]]
                        for n in ("chain", "look") for m, s in v[n]["triton"].items()]),
    ]
    env = report.get("environment")
    if env:
        lines.append(f"CPU {env['host_cpu']} ({env['cpu_count']} cores), onnxruntime "
                     f"{env['packages'].get('onnxruntime')}, hnswlib {env['packages'].get('hnswlib')}.\n")
    return "\n".join(lines)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


@app.command("look-floor")
@handle_errors
def look_floor_bench(
    ctx: typer.Context,
    model_repository: Path = typer.Option(Path("model_repository"), "--model-repository",
                                          help="Repository with the exported detector and embedder (and look's shim)."),
    data: Path = typer.Option(Path("runs/demo/data"), "--data", help="street2shop-format data set: its test street photos."),
    catalog: Path = typer.Option(Path("runs/demo/catalog"), "--catalog",
                                 help="Catalog searched by every variant (built through the served embedder when missing)."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Times each photo goes through each variant."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many photos."),
    threads: str = typer.Option("2,1", "--threads", help="onnxruntime intra-op threads: one floor variant per count."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for <stem>.json and <stem>.md."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-photo order of the variants."),
    stem: str = typer.Option("look_floor", "--stem"),
) -> None:
    """The look chain and the one-call look at c=1 against the compute floor (onnxruntime in-process
    plus the same search), interleaved per photo; the goal of issue 18."""
    try:
        counts = tuple(int(t) for t in threads.split(",") if t.strip())
    except ValueError as e:
        raise errors.ConfigError(f"--threads must be comma-separated integers, got {threads!r}") from e
    photos = held_out_photos(data, limit)
    console = stderr_console()
    before = _uptime()
    console.print(f"look-floor: {len(photos)} photos × {rounds} rounds × {len(counts) + 2} variants; {before}")
    with serve_look(model_repository, data, catalog) as server:
        report = measure(server.grpc_url, model_repository, catalog, photos, rounds=rounds, threads=counts, seed=seed)
    report.update(command=command_line(ctx), uptime_before=before, uptime_after=_uptime(),
                  niceness=os.nice(0), environment=environment())
    for path in (atomic_write_json(out / f"{stem}.json", report), atomic_write_text(out / f"{stem}.md", markdown(report))):
        console.print(f"wrote {path}")
    typer.echo(markdown(report))
