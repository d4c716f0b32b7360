"""lookserve's load generator: closed-loop concurrency sweeps and open-loop request rates.

* **closed loop** — ``c`` workers, each sends its next request when the previous one answered;
  a sweep over ``c`` = 1, 2, 4, 8, 16, ... shows how latency grows with throughput.
  :class:`ClosedLoop` is the one closed-loop driver of every bench (this one, the reliability
  phases and the swap bench).
* **open loop** — requests are *scheduled* at a constant rate or as a Poisson process, and each
  one's latency is measured from its **intended** send time, so a slow server cannot hide its
  queueing by delaying the next send (no coordinated omission). ``service_ms`` (from the actual
  send) is reported beside it.

Every point is warmed up (not measured), bounded by a duration and optionally a request count,
and framed by two snapshots of Triton's statistics for every model the workload touches; their
delta splits the client-observed latency into client + network, queue and compute, and its
request counts are compared with the bench's own for every one of those models. Latency is given
over the answered requests and over all of them (``latency_all``: a failure at the time it took).

    with TritonClient(url) as client:
        workload = model_workload(client, "embedder", batch_size=1)
        report = run_load(client, workload, LoadSpec(mode="closed", levels=(1, 2, 4)))
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lookserve import errors
from lookserve.bench.report import (
    atomic_write_json,
    atomic_write_text,
    environment,
    markdown_table,
    save_figure,
)
from lookserve.client.catalog import open_for_client
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.client.thumbnails import ThumbnailConfig, ThumbnailPipeline
from lookserve.export.samples import photos

log = logging.getLogger(__name__)

MODES = ("closed", "constant", "poisson")
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LoadSpec:
    """One sweep. ``levels`` are concurrencies (closed) or request rates per second (open)."""

    mode: str = "closed"
    levels: tuple[float, ...] = (1, 2, 4, 8, 16)
    duration_s: float = 5.0
    max_requests: int | None = None  # per point; the point ends at whichever bound comes first
    warmup_s: float = 1.0
    timeout_s: float = 10.0  # per-request deadline
    max_in_flight: int = 64  # open loop: requests outstanding at once (more wait, and it shows)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise errors.ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.levels or any(v <= 0 for v in self.levels):
            raise errors.ConfigError(f"levels must be positive, got {self.levels}")
        if self.mode == "closed" and any(int(v) != v for v in self.levels):
            raise errors.ConfigError(f"closed-loop concurrencies must be integers, got {self.levels}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise errors.ConfigError("duration_s and timeout_s must be > 0, warmup_s ≥ 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise errors.ConfigError(f"max_requests must be ≥ 1, got {self.max_requests}")
        if self.max_in_flight < 1:
            raise errors.ConfigError(f"max_in_flight must be ≥ 1, got {self.max_in_flight}")


@dataclass
class Workload:
    """What one request is. ``call(i)`` sends request ``i`` and returns once it is answered."""

    name: str
    kind: str  # "model" or "chain"
    models: tuple[str, ...]  # whose Triton statistics frame every point
    call: Callable[[int], Any]
    items_per_request: int = 1  # images per request (batch size, or views per product)
    inputs: str = ""  # where the inputs came from
    details: dict[str, Any] = field(default_factory=dict)
    #: the Triton requests one answered call made, per model (default: one of the first model)
    requests_per_call: Callable[[Any], Mapping[str, int]] | None = None

    def requests_of(self, result: Any) -> dict[str, int]:
        if self.requests_per_call is None:
            return {self.models[0]: 1}
        return dict(self.requests_per_call(result))


# --- inputs -----------------------------------------------------------------------------------
def image_pool(n: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` photo-like UINT8 images (lookserve.data's generator if present, else structured scenes)."""

    return photos(n, height, width, seed=seed)


def tensor_inputs(spec, batch_size: int, pool: int, seed: int) -> tuple[list[np.ndarray], str]:
    """``pool`` distinct batches for one input of a model: photos for image-shaped inputs, never zeros."""
    dims = tuple(32 if d == -1 else d for d in spec.dims)
    rng = np.random.default_rng(seed)
    if len(dims) == 3 and dims[-1] == 3 and spec.dtype in ("UINT8", "FP32", "FP16"):
        images, source = image_pool(pool * batch_size, dims[0], dims[1], seed=seed)
        images = images.astype(spec.np_dtype)
        return [images[i * batch_size:(i + 1) * batch_size] for i in range(pool)], f"{source} {dims[0]}x{dims[1]}"
    shape = (batch_size, *dims)
    if spec.np_dtype.kind == "f":
        arrays = [rng.normal(size=shape).astype(spec.np_dtype) for _ in range(pool)]
    elif spec.np_dtype.kind in "iu":
        arrays = [rng.integers(1, 100, size=shape).astype(spec.np_dtype) for _ in range(pool)]
    else:
        arrays = [rng.random(size=shape) > 0.5 for _ in range(pool)]
    return arrays, f"seeded random {spec.dtype}"


def model_workload(client, model: str, batch_size: int = 1, version: str = "", pool: int = 16, seed: int = 0) -> Workload:
    """One request = one ``infer`` of ``batch_size`` rows on ``model`` with real-looking inputs."""
    if batch_size < 1:
        raise errors.ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    config = client.model_config(model, version)
    if config.max_batch_size and batch_size > config.max_batch_size:
        raise errors.ConfigError(f"batch size {batch_size} exceeds {model}'s max_batch_size {config.max_batch_size}")
    if not config.max_batch_size and batch_size != 1:
        raise errors.ConfigError(f"{model} does not batch (max_batch_size 0); use batch size 1")
    per_input, sources = {}, []
    for spec in config.inputs:
        arrays, source = tensor_inputs(spec, batch_size, pool, seed)
        if not config.max_batch_size:
            arrays = [a[0] for a in arrays]
        per_input[spec.name] = arrays
        sources.append(f"{spec.name}: {source}")
    batches = [{name: arrays[i] for name, arrays in per_input.items()} for i in range(pool)]
    outputs = [t.name for t in config.outputs]

    def call(i: int) -> Any:
        return client.infer(model, batches[i % pool], outputs=outputs, version=version)

    return Workload(name=model, kind="model", models=(model,), call=call, items_per_request=batch_size,
                    inputs="; ".join(sources), details={"config": config_summary(config), "batch_size": batch_size})


def check_served(client, model: str) -> None:
    """Raise :class:`~lookserve.errors.ModelNotFound` at once, naming the served models, when
    ``model`` is not in the server's repository (instead of waiting for it to become ready)."""
    try:
        client.model_metadata(model)
    except errors.ModelNotFound as e:
        served = sorted({entry.get("name", "") for entry in client.statistics().get("model_stats", [])} - {""})
        raise errors.ModelNotFound(
            f"model {model!r} is not served at {client.url}; served models: {', '.join(served) or 'none'}") from e
    except errors.ModelNotReady:
        pass  # known, still loading: the caller waits for it


def config_summary(config) -> dict[str, Any]:
    return {
        "max_batch_size": config.max_batch_size,
        "dynamic_batching": (None if config.dynamic_batching is None
                             else {"max_queue_delay_us": config.dynamic_batching.max_queue_delay_microseconds,
                                   "preferred_batch_sizes": list(config.dynamic_batching.preferred_batch_sizes)}),
        "instances": [{"kind": g.kind, "count": g.count} for g in config.instance_groups],
        "inputs": {t.name: f"{t.dtype}{list(t.dims)}" for t in config.inputs},
        "parameters": dict(config.parameters),
    }


# --- Triton statistics -----------------------------------------------------------------------
_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _int(v: Any) -> int:
    return int(v) if v not in (None, "") else 0


def stats_snapshot(client, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model, summed over its versions (and the replicas behind ``client``): counts and ns per
    stage, executions, batch-size histogram."""
    snap: dict[str, dict[str, Any]] = {}
    raw = {model: client.statistics(model).get("model_stats", []) for model in models}
    for model in models:
        total: dict[str, Any] = {f"{s}_{x}": 0 for s in _STAGES for x in ("count", "ns")}
        total.update(inference_count=0, execution_count=0, batches={}, versions={})
        for entry in raw[model]:
            if entry.get("name") != model:
                continue
            stats = entry.get("inference_stats", {})
            for s in _STAGES:
                total[f"{s}_count"] += _int(stats.get(s, {}).get("count"))
                total[f"{s}_ns"] += _int(stats.get(s, {}).get("ns"))
            total["inference_count"] += _int(entry.get("inference_count"))
            total["execution_count"] += _int(entry.get("execution_count"))
            version = entry.get("version", "")
            total["versions"][version] = total["versions"].get(version, 0) + _int(stats.get("success", {}).get("count"))
            for b in entry.get("batch_stats", []):
                size = _int(b.get("batch_size"))
                total["batches"][size] = total["batches"].get(size, 0) + _int(b.get("compute_infer", {}).get("count"))
        snap[model] = total
    return snap


def settled_snapshot(client, models: Sequence[str], expect_first: int | None = None, deadline_s: float = 3.0,
                     interval_s: float = 0.05) -> dict[str, dict[str, Any]]:
    """A snapshot taken once Triton's counters stop moving.

    Triton records a request's statistics after its response has left, so a snapshot taken the
    moment the last answer arrives can miss the last batch. This polls until two snapshots
    ``interval_s`` apart agree and, when given, the first model's finished requests reached
    ``expect_first``; after ``deadline_s`` it returns what it has (the mismatch then shows in
    the point's agreement).
    """
    def finished(snap: dict[str, dict[str, Any]]) -> int:
        first = snap[models[0]]
        return first["success_count"] + first["fail_count"]

    end = time.monotonic() + deadline_s
    previous = stats_snapshot(client, models)
    while True:
        time.sleep(interval_s)
        current = stats_snapshot(client, models)
        if current == previous and (expect_first is None or finished(current) >= expect_first):
            return current
        if time.monotonic() > end:
            log.warning("Triton's statistics for %s did not settle within %.1f s", ", ".join(models), deadline_s)
            return current
        previous = current


def raw_delta(before: Mapping[str, dict], after: Mapping[str, dict]) -> dict[str, dict[str, Any]]:
    """``after - before`` of two :func:`stats_snapshot` results, in the snapshots' own form (so deltas
    add up): counters, ``batches`` and ``versions`` (a model missing before counts from zero)."""
    out: dict[str, dict[str, Any]] = {}
    for model, a in after.items():
        b = before.get(model, {})
        d: dict[str, Any] = {k: a[k] - b.get(k, 0) for k in a if isinstance(a[k], int)}
        d["batches"] = {size: n - b.get("batches", {}).get(size, 0) for size, n in a["batches"].items()}
        d["versions"] = {v: n - b.get("versions", {}).get(v, 0) for v, n in a["versions"].items()}
        out[model] = d
    return out


def stats_delta(before: Mapping[str, dict], after: Mapping[str, dict]) -> dict[str, dict[str, Any]]:
    """What happened between two snapshots, with per-request means in milliseconds."""
    out: dict[str, dict[str, Any]] = {}
    for model, raw in raw_delta(before, after).items():
        d = {k: v for k, v in raw.items() if isinstance(v, int)}
        batches = raw["batches"]
        versions = sorted(v for v, n in raw["versions"].items() if n > 0)
        requests = d["success_count"]

        def per_request_ms(stage: str, _d=d, _n=requests) -> float | None:
            return _d[f"{stage}_ns"] / _n / 1e6 if _n else None

        out[model] = {
            "requests": requests,
            "failed": d["fail_count"],
            "inferences": d["inference_count"],
            "executions": d["execution_count"],
            "mean_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] else None,
            "batch_sizes": {str(k): v for k, v in sorted(batches.items()) if v},
            "versions": versions,
            "server_ms": per_request_ms("success"),
            "queue_ms": per_request_ms("queue"),
            "compute_input_ms": per_request_ms("compute_input"),
            "compute_infer_ms": per_request_ms("compute_infer"),
            "compute_output_ms": per_request_ms("compute_output"),
        }
    return out


# --- the one closed-loop driver ------------------------------------------------------------
@dataclass
class Outcome:
    """One request of a load: when it was meant to go, how long it took, what came back."""

    t: float  # intended send time, seconds since the load's ``t0``
    latency_s: float  # from the intended send time (open loop: includes any wait to be sent)
    service_s: float  # from the actual send
    kind: str  # "ok" or the exception's class name
    typed: bool  # ok, or failed with a lookserve error
    worker: int = 0
    index: int = 0
    value: Any = None  # what the call returned
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _attempt(call: Callable[[int, int], Any], worker: int, i: int, t0: float, intended: float,
             untyped: str) -> Outcome:
    sent = time.perf_counter()
    try:
        value = call(worker, i)
        kind, typed, message = "ok", True, ""
    except errors.LookserveError as e:  # counted by kind
        value, kind, typed, message = None, type(e).__name__, True, str(e)[:300]
    except Exception as e:
        if untyped == "raise":  # a bug in the bench or the client: it propagates
            raise
        value, kind, typed, message = None, type(e).__name__, False, str(e)[:300]
    done = time.perf_counter()
    return Outcome(intended - t0, done - intended, done - sent, kind, typed, worker, i, value, message)


class ClosedLoop:
    """lookserve's closed-loop load: ``concurrency`` threads, each sending its next request as soon
    as the previous one answered, every request recorded as an :class:`Outcome`.

    ``call(worker, i)`` sends request ``i`` from thread ``worker`` (so a worker can keep its own
    client for the whole load) and returns what should be kept of the answer. A lookserve error
    is counted by class; any other exception is counted as *untyped* (``untyped="count"``, the
    reliability benches) or re-raised from :meth:`stop` (``untyped="raise"``, the load bench,
    where it is a bug). The load ends at :meth:`stop`, after ``max_requests`` requests or after
    ``max_s`` seconds, whichever comes first.

        with ClosedLoop(lambda w, i: client.infer(...), concurrency=4, max_s=10) as load:
            time.sleep(5)
        print(load.accounting())
    """

    def __init__(self, call: Callable[[int, int], Any], concurrency: int, *, max_requests: int | None = None,
                 max_s: float = 60.0, t0: float | None = None, untyped: str = "raise",
                 pause_after_failure_s: float = 0.0, name: str = "load") -> None:
        if concurrency < 1:
            raise errors.ConfigError(f"concurrency must be ≥ 1, got {concurrency}")
        if untyped not in ("raise", "count"):
            raise errors.ConfigError(f"untyped must be 'raise' or 'count', got {untyped!r}")
        self.call, self.untyped, self.pause_s = call, untyped, pause_after_failure_s
        self.max_requests, self.max_s = max_requests, max_s
        self.t0 = t0 if t0 is not None else time.perf_counter()
        self.outcomes: list[Outcome] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self._end = 0.0
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True, name=f"{name}-{w}")
                         for w in range(concurrency)]

    def _next(self) -> int | None:
        with self._lock:
            if self.max_requests is not None and self.sent >= self.max_requests:
                return None
            self.sent += 1
            return self.sent - 1

    def _run(self, worker: int) -> None:
        try:
            while not self._stop.is_set() and time.perf_counter() < self._end:
                i = self._next()
                if i is None:
                    return
                o = _attempt(self.call, worker, i, self.t0, time.perf_counter(), self.untyped)
                with self._lock:
                    self.outcomes.append(o)
                if not o.ok and self.pause_s:
                    time.sleep(self.pause_s)  # a failing client does not spin
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by stop()
            self._failures.append(e)

    def start(self) -> ClosedLoop:
        self._end = time.perf_counter() + self.max_s
        for t in self._threads:
            t.start()
        return self

    def stop(self, join_s: float = 60.0) -> list[Outcome]:
        """Stop sending, wait for the requests in flight; the outcomes in send order."""
        self._stop.set()
        for t in self._threads:
            t.join(join_s)
        if self._failures:
            raise self._failures[0]
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.t)

    def wait(self) -> list[Outcome]:
        """Block until the load ends by itself (``max_requests`` or ``max_s``)."""
        for t in self._threads:
            t.join()
        return self.stop()

    def __enter__(self) -> ClosedLoop:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def accounting(self, wrong: Callable[[Outcome], bool] | None = None) -> dict[str, Any]:
        """sent = ok + wrong + failed (typed) + untyped, computed from the counts (never assumed)."""
        with self._lock:
            return accounting(self.sent, list(self.outcomes), wrong)


def accounting(sent: int, outcomes: Sequence[Outcome], wrong: Callable[[Outcome], bool] | None = None) -> dict[str, Any]:
    """Every request sent is ok (and right), wrong (answered, but not what it should be), failed
    with a lookserve error, or untyped (another exception); ``accounted`` checks the sum."""
    bad = [o for o in outcomes if o.ok and wrong is not None and wrong(o)]
    ok = sum(o.ok for o in outcomes) - len(bad)
    typed = sum(1 for o in outcomes if not o.ok and o.typed)
    untyped = sum(1 for o in outcomes if not o.typed)
    return {"sent": sent, "ok": ok, "wrong": len(bad), "failed_typed": typed, "untyped": untyped,
            "accounted": sent == ok + len(bad) + typed + untyped == len(outcomes)}


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """Mean, percentiles and maximum in milliseconds (``None`` for no values)."""
    if not len(seconds):
        return {"mean_ms": None, **{f"p{p}_ms": None for p in PERCENTILES}, "max_ms": None}
    ms = np.asarray(seconds, dtype=float) * 1000
    return {"mean_ms": float(ms.mean()), **{f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES},
            "max_ms": float(ms.max())}


# --- running a point -----------------------------------------------------------------------
def _closed(workload: Workload, concurrency: int, duration_s: float, max_requests: int | None) -> tuple[list[Outcome], float]:
    load = ClosedLoop(lambda worker, i: workload.requests_of(workload.call(i)), concurrency,
                      max_requests=max_requests, max_s=duration_s, name="bench")
    return load.start().wait(), load.t0


def _open(workload: Workload, rate: float, poisson: bool, duration_s: float, max_requests: int | None,
          max_in_flight: int, seed: int) -> tuple[list[Outcome], float]:
    rng = np.random.default_rng(seed)
    # enough arrivals to cover the duration (a Poisson process can run ahead of its mean rate)
    n_max = max_requests if max_requests is not None else math.ceil(rate * duration_s * (1.5 if poisson else 1.0)) + 10
    gaps = rng.exponential(1 / rate, size=n_max) if poisson else np.full(n_max, 1 / rate)
    gaps[0] = 0.0
    offsets = np.cumsum(gaps)

    def call(worker: int, i: int) -> Any:
        return workload.requests_of(workload.call(i))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="bench-open") as pool:
        futures = []
        for i, offset in enumerate(offsets):
            if offset >= duration_s:
                break
            intended = start + float(offset)
            delay = intended - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(_attempt, call, 0, i, start, intended, "raise"))
        outcomes = [f.result() for f in futures]  # re-raises anything that is not a lookserve error
    return outcomes, start


def run_point(client, workload: Workload, spec: LoadSpec, level: float) -> dict[str, Any]:
    """Warm up, snapshot Triton's statistics, run one load level, snapshot again; the point's figures."""
    def drive(duration_s: float, max_requests: int | None) -> tuple[list[Outcome], float]:
        if spec.mode == "closed":
            return _closed(workload, int(level), duration_s, max_requests)
        return _open(workload, level, spec.mode == "poisson", duration_s, max_requests, spec.max_in_flight, spec.seed)

    if spec.warmup_s > 0:
        drive(spec.warmup_s, None)
    before = settled_snapshot(client, workload.models)  # the warm-up's last statistics are in
    outcomes, _ = drive(spec.duration_s, spec.max_requests)
    ok_outcomes = [o for o in outcomes if o.ok]
    ok, failed = len(ok_outcomes), len(outcomes) - len(ok_outcomes)
    first_before = before[workload.models[0]]
    after = settled_snapshot(client, workload.models,
                             expect_first=first_before["success_count"] + first_before["fail_count"] + ok + failed)
    # from the first intended send to the last answer
    elapsed = max(max((o.t + o.latency_s for o in outcomes), default=0.0), 1e-9)
    triton = stats_delta(before, after)
    error_counts = Counter(o.kind for o in outcomes if not o.ok)
    examples: dict[str, str] = {}
    for o in outcomes:
        if not o.ok:
            examples.setdefault(o.kind, o.message)
    model_requests: Counter[str] = Counter()
    for o in ok_outcomes:
        model_requests.update(o.value or {})
    point: dict[str, Any] = {
        "level": level,
        "requests": ok + failed,
        "ok": ok,
        "errors": dict(error_counts),
        "error_examples": examples,
        "elapsed_s": elapsed,
        "throughput_rps": ok / elapsed,
        "throughput_items_per_s": ok * workload.items_per_request / elapsed,
        # success only, and over every request (a failure at its observed time, so overload shows)
        "latency": latency_summary([o.latency_s for o in ok_outcomes]),
        "latency_all": latency_summary([o.latency_s for o in outcomes]),
        "service_latency": latency_summary([o.service_s for o in ok_outcomes]),
        "model_requests_of_ok": dict(model_requests),
        "triton": triton,
    }
    point["breakdown"] = breakdown(point, workload)
    point["agreement"] = agreement(point, workload)
    return point


def breakdown(point: dict[str, Any], workload: Workload) -> dict[str, float | None]:
    """Mean per-request split of the client-observed service latency: client + network, queue, compute."""
    total = point["service_latency"]["mean_ms"]
    if total is None or not point["ok"]:
        return {"total_ms": total}
    per = max(point["ok"], 1)
    server = queue = compute = 0.0
    for stats in point["triton"].values():
        if not stats["requests"]:
            continue
        scale = stats["requests"] / per  # model requests per bench request (1 for a model bench)
        server += (stats["server_ms"] or 0) * scale
        queue += (stats["queue_ms"] or 0) * scale
        compute += sum((stats[k] or 0) for k in ("compute_input_ms", "compute_infer_ms", "compute_output_ms")) * scale
    client_network = total - server
    return {
        "total_ms": total,
        "client_network_ms": client_network,
        "queue_ms": queue,
        "compute_ms": compute,
        "server_other_ms": server - queue - compute,
        "client_network_fraction": client_network / total if total else None,
    }


def agreement(point: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """The bench's counts against Triton's, for every model the workload touches.

    Each answered request says which Triton requests it made (``Workload.requests_of``: a model
    bench one; the look chain one detector request, and one embedder request when crops were
    kept); their sum must equal Triton's count for each model. A failed request made at most one
    request of each model (it may have stopped before the later ones), so with failures Triton's
    count may exceed the answered ones' sum by up to the failures, and the first model's count
    (every request starts there) must equal the bench's requests.
    """
    failed = point["requests"] - point["ok"]
    expected = point.get("model_requests_of_ok", {})
    per_model = {}
    for m in workload.models:
        stats = point["triton"][m]
        seen = stats["requests"] + stats["failed"]
        want = expected.get(m, 0) + (failed if m == workload.models[0] else 0)
        high = expected.get(m, 0) + failed
        per_model[m] = {"bench": want, "triton": seen, "match": want <= seen <= high if m != workload.models[0]
                        else seen == want}
    out: dict[str, Any] = {
        "bench_requests": point["requests"],
        "triton_requests": {m: v["triton"] for m, v in per_model.items()},
        "bench_model_requests": {m: v["bench"] for m, v in per_model.items()},
        "counts_match": all(v["match"] for v in per_model.values()),
    }
    if workload.kind == "model":
        stats = point["triton"][workload.models[0]]
        server, total = stats["server_ms"], point["service_latency"]["mean_ms"]
        out.update(
            bench_inferences=point["ok"] * workload.items_per_request,
            triton_inferences=stats["inferences"],
            # Triton's server-side time can never exceed what the client saw around it
            server_within_client=(server is None or total is None or server <= total * 1.001),
        )
    return out


def run_load(client, workload: Workload, spec: LoadSpec, variant: str = "", progress: bool = True) -> dict[str, Any]:
    """The whole sweep: one point per level, plus the environment and the workload's description."""
    points = []
    if progress:
        bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeElapsedColumn(), transient=True)
    else:
        bar = None
    label = "concurrency" if spec.mode == "closed" else "rate"
    if bar is not None:
        bar.start()
        task = bar.add_task(f"{workload.name} {spec.mode}", total=len(spec.levels))
    try:
        for level in spec.levels:
            point = run_point(client, workload, spec, level)
            log.info("%s %s=%g: %.1f req/s p50 %.2f ms p99 %.2f ms errors %s", workload.name, label, level,
                     point["throughput_rps"], point["latency"]["p50_ms"] or float("nan"),
                     point["latency"]["p99_ms"] or float("nan"), point["errors"] or "none")
            points.append(point)
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    models = {}
    for m in workload.models:
        versions = sorted({v for p in points for v in p["triton"].get(m, {}).get("versions", [])})
        models[m] = {"versions": versions}
    return {
        "kind": "load",
        "workload": {"name": workload.name, "kind": workload.kind, "models": list(workload.models),
                     "items_per_request": workload.items_per_request, "inputs": workload.inputs, **workload.details},
        "variant": variant,
        "spec": asdict(spec),
        "level_name": label,
        "points": points,
        "environment": environment(server_url=getattr(client, "url", None), models=models),
    }


# --- outputs -----------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    w = report["workload"]
    title = f"# {w['kind']} bench: {w['name']}" + (f" ({report['variant']})" if report.get("variant") else "")
    spec = report["spec"]
    lines = [title + "\n",
             f"Mode {spec['mode']}, {spec['duration_s']} s per point after {spec['warmup_s']} s warm-up"
             + (f", at most {spec['max_requests']} requests" if spec.get("max_requests") else "")
             + f"; {w['items_per_request']} item(s) per request; inputs: {w['inputs']}.\n"]
    if spec["mode"] != "closed":
        lines.append("Latency is measured from each request's intended send time (open loop).\n")
    rows = []
    for p in report["points"]:
        lat, b = p["latency"], p["breakdown"]
        batch = "; ".join(f"{m}: {s['mean_batch']:.2f}" for m, s in p["triton"].items() if s["mean_batch"])
        rows.append([f"{p['level']:g}", p["requests"], f"{p['throughput_rps']:.1f}", lat["p50_ms"], lat["p90_ms"],
                     lat["p95_ms"], lat["p99_ms"], lat["max_ms"], p.get("latency_all", {}).get("p99_ms"),
                     b.get("client_network_ms"), b.get("queue_ms"),
                     b.get("compute_ms"), batch, sum(p["errors"].values()) and p["errors"] or 0])
    lines.append(markdown_table([report["level_name"], "requests", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms",
                                 "max ms", "p99 all ms", "client+net ms", "queue ms", "compute ms", "mean batch", "errors"],
                                rows))
    lines.append("Latency columns are over answered requests; `p99 all` is over every request, a failed one at the "
                 "time it took to fail (so overload and timeouts show).\n")
    env = report["environment"]
    lines.append(f"\nCPU {env['host_cpu']} ({env['cpu_count']} cores, load {env['load_average_1_5_15']}), "
                 f"GPU {', '.join(env['gpus']) or 'none'}; models {env.get('models')}.\n")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    x = [p["throughput_rps"] for p in points]
    for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
        ax1.plot(x, [p["latency"][key] for p in points], style, label=key.replace("_ms", ""))
    for p in points:
        ax1.annotate(f"{p['level']:g}", (p["throughput_rps"], p["latency"]["p50_ms"] or 0), fontsize=7,
                     xytext=(3, -9), textcoords="offset points")
    ax1.set_xlabel("throughput (requests/s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"latency vs throughput ({report['spec']['mode']}; labels = {report['level_name']})")
    ax1.grid(alpha=0.3)
    ax1.legend()
    labels = [f"{p['level']:g}" for p in points]
    stages = (("client_network_ms", "client + network"), ("server_other_ms", "server other"),
              ("queue_ms", "queue"), ("compute_ms", "compute"))
    bottom = np.zeros(len(points))
    for key, name in stages:
        values = np.array([max(p["breakdown"].get(key) or 0.0, 0.0) for p in points])
        ax2.bar(labels, values, bottom=bottom, label=name)
        bottom += values
    ax2.set_xlabel(report["level_name"])
    ax2.set_ylabel("mean latency per request (ms)")
    ax2.set_title("stage breakdown (Triton statistics deltas)")
    ax2.legend()
    variant = f" — {report['variant']}" if report.get("variant") else ""
    fig.suptitle(f"{report['workload']['name']}{variant}")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def write_load_report(report: dict[str, Any], out_dir: Path, stem: str, command: str | None = None) -> list[Path]:
    if command:
        report = {**report, "command": command}
    md = markdown(report) + (f"\nCommand: `{command}`\n" if command else "")
    return [atomic_write_json(out_dir / f"{stem}.json", report), atomic_write_text(out_dir / f"{stem}.md", md),
            plot(report, out_dir / f"{stem}.png")]


# --- comparing two runs ------------------------------------------------------------------------
_COMPARED = (("throughput_rps", None), ("p50_ms", "latency"), ("p90_ms", "latency"), ("p99_ms", "latency"),
             ("max_ms", "latency"), ("queue_ms", "breakdown"), ("compute_ms", "breakdown"),
             ("client_network_ms", "breakdown"))


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B relative to A, per load level the two share: each figure's value in both and B/A."""
    for name, r in (("A", a), ("B", b)):
        if r.get("kind") != "load":
            raise errors.InvalidInputError(f"{name} is not a load report (kind {r.get('kind')!r})")
    if a["spec"]["mode"] != b["spec"]["mode"]:
        raise errors.InvalidInputError(f"A is {a['spec']['mode']} and B is {b['spec']['mode']}; compare runs of one mode")
    b_points = {p["level"]: p for p in b["points"]}
    rows = []
    for pa in a["points"]:
        pb = b_points.get(pa["level"])
        if pb is None:
            continue
        row: dict[str, Any] = {"level": pa["level"]}
        for key, group in _COMPARED:
            va = pa[group][key] if group else pa[key]
            vb = pb[group][key] if group else pb[key]
            row[key] = {"a": va, "b": vb, "ratio": (vb / va) if va and vb is not None else None}
        rows.append(row)
    if not rows:
        raise errors.InvalidInputError("A and B share no load level; run both with the same --levels")
    return {"kind": "compare", "a": _label(a), "b": _label(b), "level_name": a["level_name"], "rows": rows}


def _label(r: dict[str, Any]) -> str:
    return r["workload"]["name"] + (f" ({r['variant']})" if r.get("variant") else "")


def compare_markdown(c: dict[str, Any]) -> str:
    """One row per level: throughput in A and B, then B/A of every compared figure."""
    headers = [c["level_name"], "req/s A", "req/s B"] + [f"{key.removesuffix('_ms')} B/A" for key, _ in _COMPARED]
    rows = []
    for row in c["rows"]:
        cells: list[Any] = [f"{row['level']:g}", row["throughput_rps"]["a"], row["throughput_rps"]["b"]]
        cells += [f"{row[key]['ratio']:.2f}×" if row[key]["ratio"] is not None else "" for key, _ in _COMPARED]
        rows.append(cells)
    return f"## {c['b']} (B) vs {c['a']} (A)\n\n" + markdown_table(headers, rows)


def read_report(path: str | Path) -> dict[str, Any]:
    """A load report written by :func:`write_load_report`, with a clear error for anything else."""

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise errors.InvalidInputError(f"cannot read report {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise errors.InvalidInputError(f"{path} is not JSON: {e}") from e
    if not isinstance(data, dict) or data.get("kind") != "load" or not isinstance(data.get("points"), list):
        raise errors.InvalidInputError(f"{path} is not a lookserve load report (expected kind 'load' with points)")
    return data


# --- the client chains --------------------------------------------------------------------------
def encoded_photos(n: int, size: int, seed: int = 0, quality: int = 90) -> tuple[list[bytes], str]:
    """``n`` generated photos as JPEG bytes: the chains' real inputs (their decoding is part of a request)."""

    images, source = image_pool(n, size, size, seed=seed)
    out = []
    for img in images:
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise errors.InvalidInputError("could not JPEG-encode a generated photo")
        out.append(buf.tobytes())
    return out, f"{source} {size}x{size} JPEG q{quality}"


def thumbnails_workload(client, views: int = 5, pool: int = 8, size: int = 256, seed: int = 0) -> Workload:
    """One request = one product: ``views`` JPEG views through :class:`ThumbnailPipeline` (one batched infer)."""

    if views < 1:
        raise errors.ConfigError(f"a product needs at least one view, got {views}")
    pipeline = ThumbnailPipeline(client, ThumbnailConfig())
    photos, source = encoded_photos(pool * views, size, seed=seed)
    products = [(f"product-{i}", photos[i * views:(i + 1) * views]) for i in range(pool)]

    def call(i: int) -> Any:
        return pipeline.run(*products[i % pool])

    return Workload(name="thumbnails", kind="chain", models=(pipeline.config.model,), call=call,
                    items_per_request=views, inputs=source, details={"views_per_product": views})


def look_workload(client, catalog: str | Path, pool: int = 8, size: int = 640, seed: int = 0,
                  photos: Sequence[bytes] | None = None) -> Workload:
    """One request = one street photo (JPEG) through :class:`LookPipeline` (detector → embedder → search).

    ``photos`` (encoded images) replace the generated ones, e.g. street photos of a data set.
    """

    cat = open_for_client(catalog, client)
    pipeline = LookPipeline(client, cat, LookConfig())
    if photos:
        photos, source = list(photos), f"{len(photos)} given photos"
    else:
        photos, source = encoded_photos(pool, size, seed=seed)
    pool = len(photos)

    def call(i: int) -> Any:
        return pipeline.run(photos[i % pool])

    detector, embedder = pipeline.config.detector, cat.embedder.name

    def requests(result) -> dict[str, int]:
        # one detector request per photo; one (batched) embedder request when crops were kept
        return {detector: 1, embedder: int(embedder in result.model_versions)}

    return Workload(name="look", kind="chain", models=(detector, embedder), call=call,
                    items_per_request=1, inputs=source, requests_per_call=requests,
                    details={"catalog": str(catalog), "embedder_version": cat.embedder.version})


_CHAINS = {"look": look_workload, "thumbnails": thumbnails_workload}


def chain_workload(kind: str, client, **options: Any) -> Workload:
    """One request = one run of a client chain (``look``: a street photo; ``thumbnails``: one product)."""
    maker = _CHAINS.get(kind)
    if maker is None:
        raise errors.ConfigError(f"unknown chain {kind!r}; known: {', '.join(_CHAINS)}")
    return maker(client, **options)


def plot_comparison(reports: Mapping[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Several runs on one chart: p50 and p99 latency against throughput, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharex=True)
    for name, report in reports.items():
        xs = [p["throughput_rps"] for p in report["points"]]
        for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            ax.plot(xs, [p["latency"][key] for p in report["points"]], "o-", label=name)
            for p in report["points"]:
                ax.annotate(f"{p['level']:g}", (p["throughput_rps"], p["latency"][key] or 0), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    for ax, key in zip(axes, ("p50", "p99"), strict=True):
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel(f"{key} latency (ms)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        ax.set_title(f"{key} vs throughput (labels = load level)")
    fig.suptitle(title)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
