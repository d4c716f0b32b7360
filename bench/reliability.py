"""``lookserve bench reliability``: faults survived and bad inputs refused, with nothing lost.

One run starts a private tritonserver on 127.0.0.1 serving a small synthetic embedder (and a
"slow" twin of it whose dynamic batcher holds every request for seconds), builds a catalog
through it, and then runs phases, each bounded in requests and seconds:

``steady``          closed-loop load, the baseline (errors by kind, p50/p99, throughput)
``deadline``        requests to the slow model with a short deadline → ``DeadlineExceeded`` in time
``sigkill``         SIGKILL of tritonserver under load, restart; the same client objects recover
``stub_kill``       SIGKILL of the python-backend stubs under load; the watchdog reloads the model
``bad_publish``     a corrupt ONNX file published, a corrupt version promoted, under load
``catalog_tamper``  catalog files flipped, truncated, deleted, the manifest altered → refused
``interrupted_build`` a catalog rebuild SIGKILLed mid-way (a separate process) over the live catalog
``bad_images``      a seeded corpus of hostile images (random, mutated, truncated, bombs, odd
                    modes) through decode → Triton, while a good load runs beside it
``bad_json``        mutated street2shop JSON, footwear ground truth and catalog manifests
``access``          restricted protocols called without / with a wrong key → refused; the key is in no
                    error text, no log line of the run and no report
``replicas``        a second replica beside the server, one address list: SIGKILL of it under load and
                    its restart (0 failed; traffic returns), a rolling promote and rollback (0 failed, 0 mixed)

Every phase is ``phase(env, earlier results) -> result``. For every phase the report gives what
was done, what the clients saw (outcomes by exception type), the accounting, counted where each
outcome happened (sent = ok + wrong + failed with a lookserve error + untyped; wrong and untyped
must be 0; an "ok" answer is *checked*: an embedding must equal onnxruntime's for the same crop
within the parity gate's tolerance, ``export/parity.py``, and a mutated document that loads must
mean what its original means) and the command that reproduces that phase alone. The load is
:class:`lookserve.bench.load.ClosedLoop`, the one closed-loop driver of the benches.

    lookserve bench reliability            # writes runs/bench/reliability.*
    python -m lookserve.bench.reliability reliability --phase sigkill
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lookserve import contracts
from lookserve.bench.load import ClosedLoop, Outcome, accounting, latency_summary, stats_snapshot
from lookserve.bench.report import (
    DEFAULT_OUT,
    atomic_write_json,
    atomic_write_text,
    markdown_table,
    save_figure,
)
from lookserve.bench.report import environment as env_info
from lookserve.bench.variants import synthetic_embedder
from lookserve.client.catalog import (
    Catalog,
    IndexParams,
    PhotoRecord,
    TritonEmbedder,
    build_catalog,
    open_for_client,
    partial_dir_for,
)
from lookserve.client.core import ClientOptions, RetryPolicy, TritonClient
from lookserve.client.models import ModelRepository
from lookserve.cliutil import fail
from lookserve.data import footwear, street2shop
from lookserve.data.street2shop import Street2Shop
from lookserve.errors import (
    CatalogError,
    DataError,
    DeadlineExceeded,
    InvalidInputError,
    LookserveError,
    PublishError,
)
from lookserve.export.parity import TOLERANCES, compare_tensors
from lookserve.images import decode_image, resize_square
from lookserve.modelconfig import DynamicBatching
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.server.watchdog import StubWatchdog, stubs_of

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, help="Faults and bad inputs under load.")

PHASES = ("steady", "deadline", "sigkill", "stub_kill", "bad_publish", "catalog_tamper", "interrupted_build",
          "bad_images", "bad_json", "access", "replicas")
SIZE, DIM = 32, 16  # the synthetic embedder's crop size and embedding dimension
SLOW = "embedder_slow"


@app.callback()
def _group() -> None:
    """Faults and bad inputs under load."""


@dataclass(frozen=True)
class ReliabilitySpec:
    concurrency: int = 4
    steady_s: float = 8.0  # the steady phase's duration
    fault_s: float = 1.5  # load before a fault, and after recovery
    down_s: float = 1.5  # how long the server stays dead in the sigkill phase
    max_requests: int = 20_000  # per load, whatever happens
    max_phase_s: float = 60.0  # per load, whatever happens
    timeout_s: float = 2.0  # the clients' per-request deadline
    retries: int = 3  # attempts on UNAVAILABLE
    slow_deadline_s: float = 0.3
    bad_images: int = 240
    bad_json: int = 120
    seed: int = 0


# ------------------------------------------------------------------------------------------
# Load: bench.load's closed-loop driver, every answer checked against onnxruntime
# ------------------------------------------------------------------------------------------
class Reference:
    """The served embedder's ONNX file run in-process by onnxruntime: what every answer must equal,
    within the export parity gate's tolerance for embeddings (``export/parity.py``)."""

    def __init__(self, model_onnx: Path) -> None:
        self.path = model_onnx
        self._session = None
        self._lock = threading.Lock()

    def __call__(self, crops) -> Any:
        import onnxruntime as ort

        with self._lock:
            if self._session is None:
                self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            return self._session.run(["embedding"], {"crops": crops})[0]

    def matches(self, crops, embedding) -> bool:
        """True when ``embedding`` (Triton's answer for ``crops``) passes the parity tolerance."""
        figures = compare_tensors({"embedding": self(crops)}, {"embedding": embedding}, TOLERANCES["embedder"],
                                  "one served answer")
        return all(f.passed for f in figures)


def _wrong(o: Outcome) -> bool:
    return o.ok and not o.value["right"]


class Load:
    """``concurrency`` clients in :class:`~lookserve.bench.load.ClosedLoop`, each with its own
    :class:`TritonClient` kept for the whole phase (recovery without re-creating clients), sending
    one crop at a time to ``model``; each answer is compared with onnxruntime's embedding of that crop."""

    def __init__(self, env: Env, spec: ReliabilitySpec | None = None, model: str = "embedder",
                 t0: float | None = None, url: str | None = None, references: dict[str, Reference] | None = None) -> None:
        """``url``: another address (several replicas); ``references``: the file each served version
        must equal (default: version 1's, ``env.reference``)."""
        self.spec = spec = spec or env.spec
        self.model = model
        options = ClientOptions(url=url or env.url, timeout_s=spec.timeout_s,
                                retry=RetryPolicy(attempts=spec.retries, base_s=0.05, max_s=0.25))
        self.clients = [TritonClient(options) for _ in range(spec.concurrency)]
        self.crops = [np.random.default_rng(w).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
                      for w in range(spec.concurrency)]
        reference = env.reference
        self.expected = [reference(c) for c in self.crops]
        by_version = references or {"1": reference}

        def call(worker: int, i: int) -> dict[str, Any]:
            r = self.clients[worker].infer(self.model, {"crops": self.crops[worker]})
            right = by_version.get(r.model_version)  # an answer with another version's numbers is wrong (mixed)
            return {"version": r.model_version,
                    "right": right is not None and right.matches(self.crops[worker], r.outputs["embedding"])}

        self.loop = ClosedLoop(call, spec.concurrency, max_requests=spec.max_requests, max_s=spec.max_phase_s,
                               t0=t0, untyped="count", pause_after_failure_s=0.02, name="rel-load")

    @property
    def t0(self) -> float:
        return self.loop.t0

    @property
    def outcomes(self) -> list[Outcome]:
        return self.loop.outcomes

    def __enter__(self) -> Load:
        self.loop.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.loop.stop(self.spec.timeout_s * self.spec.retries + 10)
        finally:
            for c in self.clients:
                c.close()

    def summary(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        return summarize([o for o in self.outcomes if (since is None or o.t >= since) and (until is None or o.t < until)])

    def accounting(self) -> dict[str, Any]:
        return accounting(self.loop.sent, self.outcomes, _wrong)


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Outcomes by kind (a wrong answer as ``wrong answer``), latency of the right answers and of
    every request (a failure at the time it took)."""
    kinds = Counter("wrong answer" if _wrong(o) else o.kind for o in outcomes)
    right = latency_summary([o.latency_s for o in outcomes if o.ok and not _wrong(o)])
    every = latency_summary([o.latency_s for o in outcomes])

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "requests": len(outcomes),
        "by_kind": dict(sorted(kinds.items())),
        "untyped": sum(not o.typed for o in outcomes),
        "p50_ms": r(right["p50_ms"]), "p99_ms": r(right["p99_ms"]),
        "p50_all_ms": r(every["p50_ms"]), "p99_all_ms": r(every["p99_ms"]),
        "max_failed_latency_s": round(max((o.latency_s for o in outcomes if not o.ok), default=0.0), 3),
    }


# ------------------------------------------------------------------------------------------
# Setting up: a repository with the synthetic embedder and its slow twin, a catalog
# ------------------------------------------------------------------------------------------
def _write_repository(root: Path) -> Path:
    import onnx


    base = replace(contracts.embedder_config(dim=DIM, crop_size=SIZE), warmup=())
    slow = replace(base, name=SLOW, dynamic_batching=DynamicBatching(max_queue_delay_microseconds=3_000_000,
                                                                     preferred_batch_sizes=(32,)))
    model = synthetic_embedder(size=SIZE, dim=DIM)
    for config in (base, slow):
        (root / config.name / "1").mkdir(parents=True, exist_ok=True)
        onnx.save(model, root / config.name / "1" / "model.onnx")
        config.write(root / config.name / "config.pbtxt")
    return root


def _shop_records(folder: Path, n: int, seed: int) -> list:

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        records.append(PhotoRecord(1000 + i, ("tops", "bags", "hats")[i % 3], path.name, path, f"product {i}"))
    return records


@dataclass
class Env:
    work: Path
    repo: Path
    server: Any
    catalog: Path
    records: list
    spec: ReliabilitySpec
    reference: Reference  # onnxruntime on the served embedder's file

    @property
    def url(self) -> str:
        return self.server.grpc_url


@contextlib.contextmanager
def environment(work: Path, spec: ReliabilitySpec) -> Iterator[Env]:
    repo = _write_repository(work / "repo")
    server = TritonServer(ServerOptions(repo, grpc_port=0, load_models=("embedder", SLOW), work_dir=work / "triton",
                                        exit_timeout_s=3, ready_timeout_s=120))
    server.start()
    try:
        records = _shop_records(work / "shop", 48, spec.seed)
        with TritonClient(server.grpc_url, timeout_s=30) as client:
            build_catalog(records, work / "catalog", TritonEmbedder(client), IndexParams(M=8, ef_construction=64),
                          batch_size=8, concurrency=2, model_repository=repo, images_root=work / "shop")
        yield Env(work, repo, server, work / "catalog", records, spec, Reference(repo / "embedder" / "1" / "model.onnx"))
    finally:
        server.stop()


def _phase(name: str, what: str, load: Load | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"phase": name, "what": what}
    if load is not None:
        out["accounting"] = load.accounting()
        out["client_saw"] = load.summary()["by_kind"]
    out.update(extra)
    return out


def _tally(sent: int, ok: int = 0, wrong: int = 0, failed_typed: int = 0, untyped: int = 0) -> dict[str, Any]:
    """A phase's accounting from its counts, each counted where it happened: every input sent is
    ok (answered, and the answer checked right), wrong (answered, or accepted, when it should not
    have been or not as it should), failed with its documented lookserve error, or untyped."""
    return {"sent": sent, "ok": ok, "wrong": wrong, "failed_typed": failed_typed, "untyped": untyped,
            "accounted": sent == ok + wrong + failed_typed + untyped}


def _passed(result: dict[str, Any]) -> bool:
    checks = result.get("checks", {})
    acc = result["accounting"]
    return bool(acc["accounted"] and acc["untyped"] == 0 and acc["wrong"] == 0 and all(checks.values()))


# ------------------------------------------------------------------------------------------
# Phases
# ------------------------------------------------------------------------------------------
def phase_steady(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    s = env.spec
    with Load(env) as load:
        time.sleep(s.steady_s)
    summary = load.summary()
    acc = load.accounting()
    return _phase("steady", f"closed-loop load: {s.concurrency} clients, {s.steady_s:.0f} s, one 32×32 crop per request",
                  load, latency=summary, throughput_rps=round(acc["ok"] / s.steady_s, 1),
                  checks={"no errors": acc["failed_typed"] == 0, "every answer equals onnxruntime's": acc["wrong"] == 0})


def phase_deadline(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:

    s = env.spec
    crops = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    outcomes, latencies = Counter(), []
    untyped = typed = 0
    n = 8
    with TritonClient(ClientOptions(url=env.url, timeout_s=s.slow_deadline_s, retry=RetryPolicy(attempts=s.retries))) as c:
        for _ in range(n):
            start = time.monotonic()
            try:
                c.infer(SLOW, {"crops": crops})
                outcomes["ok"] += 1
            except LookserveError as e:
                outcomes[type(e).__name__] += 1
                typed += 1
            except Exception as e:  # noqa: BLE001 - counted
                outcomes[type(e).__name__] += 1
                untyped += 1
            latencies.append(time.monotonic() - start)
        after = c.infer("embedder", {"crops": crops}).model_version
    return _phase(
        "deadline", f"{n} requests with a {s.slow_deadline_s} s deadline to a model whose batcher holds requests 3 s",
        client_saw=dict(outcomes),
        # an answer from a model that should have timed out is a wrong answer
        accounting=_tally(n, wrong=outcomes["ok"], failed_typed=typed, untyped=untyped),
        max_latency_s=round(max(latencies), 3),
        checks={"all DeadlineExceeded": outcomes[DeadlineExceeded.__name__] == n,
                "within deadline + 0.5 s": max(latencies) < s.slow_deadline_s + 0.5,
                "server still answers": after == "1"},
    )


_SETTLE_S = 0.5  # after a recovery, requests sent this soon may still see the fault


def _timeline(outcomes: list[Outcome], max_ok: int = 1500) -> list[list]:
    """[t, latency ms, kind] per request for the plot: every failure and wrong answer, right answers
    thinned evenly."""
    ordered = sorted(outcomes, key=lambda o: o.t)
    right = [o for o in ordered if o.ok and not _wrong(o)]
    keep = set(map(id, right[:: max(1, len(right) // max_ok)]))
    return [[round(o.t, 3), round(o.latency_s * 1e3, 2), "wrong answer" if _wrong(o) else o.kind] for o in ordered
            if not o.ok or _wrong(o) or id(o) in keep]


def phase_sigkill(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    s = env.spec
    t0 = time.perf_counter()
    with Load(env, t0=t0) as load:
        time.sleep(s.fault_s)
        killed = time.perf_counter() - t0
        env.server.kill()
        time.sleep(s.down_s)
        restarted = time.perf_counter() - t0
        env.server.start()
        ready = time.perf_counter() - t0
        time.sleep(_SETTLE_S + s.fault_s)  # the "after recovery" window is fault_s long
    down = load.summary(killed + 0.05, restarted)
    after = load.summary(ready + _SETTLE_S)
    bound = s.timeout_s * s.retries + 1.0
    return _phase(
        "sigkill", f"SIGKILL of tritonserver (and its stubs) under load, dead {s.down_s} s, restarted on the same port",
        load, events={"killed_s": round(killed, 3), "restarted_s": round(restarted, 3), "ready_s": round(ready, 3)},
        while_down=down, after_recovery=after, restart_to_ready_s=round(ready - restarted, 2),
        timeline=_timeline(load.outcomes),
        checks={"failures while down are ServerUnavailable": set(down["by_kind"]) <= {"ServerUnavailable"},
                f"no call hung (< {bound:.1f} s)": down["max_failed_latency_s"] < bound,
                "same clients recover": after["requests"] > 0 and set(after["by_kind"]) == {"ok"}},
    )


def phase_stub_kill(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    import psutil


    s = env.spec
    t0 = time.perf_counter()
    with TritonClient(env.url, repository_key=env.server.repository_key, timeout_s=30) as admin, \
            StubWatchdog(env.server.pid, admin, interval_s=0.5) as watchdog, Load(env, t0=t0) as load:
        time.sleep(s.fault_s)
        stubs = [st for st in stubs_of(env.server.pid).values() if st.model == "embedder"]
        killed = time.perf_counter() - t0
        for st in stubs:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(st.pid).kill()
        end = time.perf_counter() + 30
        while "embedder" not in watchdog.healed and time.perf_counter() < end:
            time.sleep(0.1)
        healed = time.perf_counter() - t0
        time.sleep(_SETTLE_S + s.fault_s)  # the "after recovery" window is fault_s long
    after = load.summary(healed + _SETTLE_S)
    window = load.summary(killed - s.timeout_s, healed + _SETTLE_S)  # requests in flight at the kill included
    bound = s.timeout_s * s.retries + 1.0
    return _phase(
        "stub_kill", f"SIGKILL of the embedder's {len(stubs)} python-backend stub(s) under load; StubWatchdog (0.5 s) reloads it",
        load, events={"killed_s": round(killed, 3), "healed_s": round(healed, 3)}, during=window, after_recovery=after,
        time_to_heal_s=round(healed - killed, 2),
        timeline=_timeline(load.outcomes),
        checks={"watchdog reloaded the model": watchdog.healed == ["embedder"],
                "failures are typed server errors": set(window["by_kind"]) <= {"ok", "InternalServerError", "ModelNotReady",
                                                                               "ServerUnavailable", "DeadlineExceeded"},
                f"no call hung (< {bound:.1f} s)": window["max_failed_latency_s"] < bound,
                "clients recover": after["requests"] > 0 and set(after["by_kind"]) == {"ok"}},
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def phase_bad_publish(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    s = env.spec
    models = ModelRepository(env.repo)
    bad = env.work / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not an onnx model")
    seen: dict[str, str] = {}
    before = _tree(env.repo / "embedder")
    with TritonClient(env.url, repository_key=env.server.repository_key, timeout_s=60) as admin, Load(env) as load:
        time.sleep(s.fault_s / 2)
        try:
            models.publish("embedder", bad)
            seen["publish corrupt file"] = "accepted"
        except PublishError as e:
            seen["publish corrupt file"] = f"PublishError: {e}"[:240]
        unchanged = _tree(env.repo / "embedder") == before
        version_dir = env.repo / "embedder" / "2"  # a damaged version on disk, bypassing publish's checks
        version_dir.mkdir()
        (version_dir / "model.onnx").write_bytes(b"corrupt")
        config_before = (env.repo / "embedder" / "config.pbtxt").read_text()
        try:  # refused by the publish gate: the version has no export.json vouching for it
            models.promote(admin, "embedder", 2)
            seen["promote corrupt version"] = "accepted"
        except LookserveError as e:
            seen["promote corrupt version"] = f"{type(e).__name__}: {e}"[:240]
        try:  # past the gate on purpose: Triton's own load failure must leave version 1 serving
            models.promote(admin, "embedder", 2, allow_unverified=True)
            seen["promote corrupt version, unverified allowed"] = "accepted"
        except LookserveError as e:
            seen["promote corrupt version, unverified allowed"] = f"{type(e).__name__}: {e}"[:240]
        time.sleep(s.fault_s / 2)
        config_kept = (env.repo / "embedder" / "config.pbtxt").read_text() == config_before
        shutil.rmtree(version_dir)
    versions = Counter(o.value["version"] for o in load.outcomes if o.ok)
    acc = load.accounting()
    return _phase(
        "bad_publish", "under load: publish a corrupt ONNX file; promote a corrupt version directory written past publish",
        load, client_saw_versions=dict(versions), refusals=seen,
        checks={"corrupt publish refused": seen["publish corrupt file"].startswith("PublishError"),
                "repository unchanged by the refused publish": unchanged,
                "corrupt promote refused": seen["promote corrupt version"].startswith("PublishError"),
                "corrupt promote refused by Triton when unverified is allowed":
                    seen["promote corrupt version, unverified allowed"].startswith("PublishError"),
                "config kept": config_kept, "no failed request": acc["failed_typed"] == 0,
                "only version 1 answered": set(versions) == {"1"}},
    )


def _tamper_cases() -> dict[str, Callable[[Path], None]]:
    def flip(name: str) -> Callable[[Path], None]:
        def f(d: Path) -> None:
            data = bytearray((d / name).read_bytes())
            data[len(data) // 2] ^= 0x01
            (d / name).write_bytes(bytes(data))
        return f

    def truncate(name: str) -> Callable[[Path], None]:
        return lambda d: (d / name).write_bytes((d / name).read_bytes()[: (d / name).stat().st_size // 2])

    def manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
        def f(d: Path) -> None:
            m = json.loads((d / "manifest.json").read_text())
            change(m)
            (d / "manifest.json").write_text(json.dumps(m))
        return f

    return {
        "index byte flipped": flip("index_tops.bin"),
        "index truncated": truncate("index_tops.bin"),
        "vectors deleted": lambda d: (d / "vectors_bags.npy").unlink(),
        "database byte flipped": flip("products.sqlite"),
        "manifest truncated": truncate("manifest.json"),
        "manifest: embedder version 7": manifest(lambda m: m["embedder"].update(version="7")),
        "manifest: count changed": manifest(lambda m: m["categories"]["tops"].update(count=3)),
        "manifest: checksum swapped": manifest(lambda m: m["files"]["index_tops.bin"].update(
            sha256=m["files"]["index_bags.bin"]["sha256"])),
        "not a catalog (empty folder)": lambda d: [p.unlink() for p in d.iterdir()],
    }


def phase_catalog_tamper(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:

    live = Catalog.open(env.catalog)
    queries = np.random.default_rng(env.spec.seed).normal(size=(5, DIM)).astype(np.float32)
    answer = live.search_labels("tops", queries, 3)[0].tolist()
    cases: dict[str, dict[str, str]] = {}
    untyped = 0
    with TritonClient(env.url, timeout_s=10) as client:
        for name, damage in _tamper_cases().items():
            copy = env.work / "tampered" / name.replace(" ", "_").replace(":", "")
            shutil.copytree(env.catalog, copy)
            damage(copy)
            try:
                open_for_client(copy, client, env.repo)
                cases[name] = {"outcome": "accepted", "message": ""}
            except CatalogError as e:
                cases[name] = {"outcome": type(e).__name__, "message": str(e)[:240]}
            except Exception as e:  # noqa: BLE001 - counted as untyped
                untyped += 1
                cases[name] = {"outcome": f"untyped {type(e).__name__}", "message": str(e)[:240]}
        still = open_for_client(env.catalog, client, env.repo).search_labels("tops", queries, 3)[0].tolist()
    refused = sum(c["outcome"] != "accepted" and not c["outcome"].startswith("untyped") for c in cases.values())
    return _phase(
        "catalog_tamper", f"{len(cases)} damaged copies of the live catalog opened for a client (checksums, versions)",
        client_saw=dict(Counter(c["outcome"] for c in cases.values())), cases=cases,
        # a damaged copy accepted is a wrong answer
        accounting=_tally(len(cases), wrong=sum(c["outcome"] == "accepted" for c in cases.values()), failed_typed=refused,
                          untyped=untyped),
        checks={"every damaged copy refused": refused == len(cases),
                "live catalog intact and answering the same": still == answer},
    )


_BUILD_SCRIPT = """
import sys
from pathlib import Path
from lookserve.client.catalog import PhotoRecord, TritonEmbedder, build_catalog, IndexParams
from lookserve.client.core import TritonClient
url, out, shop, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
cats = ("tops", "bags", "hats")
records = [PhotoRecord(1000 + i, cats[i % 3], f"{i}.png", shop / f"{i}.png", f"product {i}") for i in range(n)]
with TritonClient(url, timeout_s=30) as client:
    build_catalog(records, out, TritonEmbedder(client), IndexParams(M=8, ef_construction=64), batch_size=2,
                  concurrency=1, images_root=shop)
"""


def phase_interrupted_build(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    before = _tree(env.catalog)
    partial = partial_dir_for(env.catalog)
    n = len(env.records)
    build = [sys.executable, "-c", _BUILD_SCRIPT, env.url, str(env.catalog), str(env.work / "shop"), str(n)]
    process = subprocess.Popen(build, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    end = time.monotonic() + 60
    while time.monotonic() < end and process.poll() is None and len(list(partial.glob("batch-*.npz"))) < 3:
        time.sleep(0.01)
    finished_first = process.poll() is not None
    if not finished_first:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    killed_with = len(list(partial.glob("batch-*.npz")))
    intact = _tree(env.catalog) == before
    opened = Catalog.open(env.catalog).manifest.counts["photos"]
    leftovers = sorted(p.name for p in env.catalog.parent.iterdir() if ".tmp-" in p.name)
    resumed = subprocess.run(build, capture_output=True, text=True, timeout=120)
    rebuilt = Catalog.open(env.catalog).manifest.counts["photos"]
    return _phase(
        "interrupted_build", "a catalog rebuild over the live catalog (another process, embedding through Triton) "
        f"SIGKILLed once 3 of its {(n + 1) // 2} batches were on disk; then the same build run again",
        client_saw={"old catalog after the kill": "intact" if intact else "CHANGED",
                    "embedded batches kept for the rerun": killed_with},
        accounting=_tally(1, ok=int(intact), wrong=int(not intact)),
        temp_dirs_left=leftovers, resumed_exit_code=resumed.returncode,
        checks={"killed mid-way": not finished_first and killed_with >= 1, "old catalog byte-identical": intact,
                "old catalog opens": opened == n, "rerun completes": resumed.returncode == 0 and rebuilt == n,
                "partial embeddings cleaned after the rerun": not partial.exists()},
    )


# --- bad inputs --------------------------------------------------------------------------------
def image_corpus(n: int, seed: int) -> list[tuple[str, bytes, bool]]:
    """(kind, bytes, must_decode) — seeded hostile and odd images."""

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))

    def enc(img, fmt="PNG", **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    valid = {
        "jpeg": enc(rgb, "JPEG"), "png": enc(rgb), "webp": enc(rgb, "WEBP"), "bmp": enc(rgb, "BMP"),
        "gif": enc(rgb.quantize(8), "GIF"), "tiff": enc(rgb, "TIFF"),
    }
    odd = {  # must decode: these are ordinary photos
        "mode L": enc(rgb.convert("L")), "mode LA": enc(rgb.convert("LA")), "mode RGBA": enc(rgb.convert("RGBA")),
        "mode P": enc(rgb.quantize(16)), "mode 1": enc(rgb.convert("1")),
        "mode I;16": enc(Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16))),
        "CMYK jpeg": enc(rgb.convert("CMYK"), "JPEG"), "EXIF-rotated jpeg": enc(rgb, "JPEG", exif=exif),
        "1x1 png": enc(Image.new("RGB", (1, 1), (9, 9, 9))), "animated webp": enc(rgb, "WEBP", save_all=True,
                                                                                   append_images=[rgb.convert("L").convert("RGB")]),
    }
    bombs = {
        "20000x1 png": enc(Image.new("L", (20_000, 1))), "9000x9000 1-bit png": enc(Image.new("1", (9_000, 9_000))),
        "33 MB file": b"\x89PNG\r\n\x1a\n" + bytes(33 * 1024 * 1024),
    }
    corpus = [(k, v, True) for k, v in odd.items()] + [(k, v, False) for k, v in bombs.items()]
    corpus += [("gif (not allowed)", valid["gif"], False), ("tiff (not allowed)", valid["tiff"], False), ("empty", b"", False)]
    names = sorted(valid)
    while len(corpus) < n:
        kind = rng.choice(["random", "truncated", "flipped", "spliced"])
        base = valid[names[rng.integers(len(names))]]
        if kind == "random":
            data = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        elif kind == "truncated":
            data = base[: int(rng.integers(0, len(base)))]
        elif kind == "flipped":
            b = bytearray(base)
            for i in rng.integers(0, len(b), int(rng.integers(1, 8))):
                b[i] ^= int(rng.integers(1, 256))
            data = bytes(b)
        else:
            i = int(rng.integers(0, len(base)))
            data = base[:i] + rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes() + base[i + 8:]
        corpus.append((str(kind), data, False))
    return corpus


def phase_bad_images(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    s = env.spec
    corpus = image_corpus(s.bad_images, s.seed)
    outcomes: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    must_but_failed: list[str] = []
    served = wrong = typed = untyped = 0
    with TritonClient(env.url, timeout_s=10) as client, Load(env, replace(s, concurrency=2)) as good:
        for kind, data, must in corpus:
            try:
                crop = resize_square(decode_image(data), SIZE)[None]
                r = client.infer("embedder", {"crops": crop})
                if env.reference.matches(crop, r.outputs["embedding"]):
                    result, served = "decoded and served", served + 1
                else:
                    result, wrong = "served, embedding differs from onnxruntime's", wrong + 1
            except InvalidInputError:
                result, typed = "InvalidInputError", typed + 1
            except LookserveError as e:
                result, typed = type(e).__name__, typed + 1
            except Exception as e:  # noqa: BLE001 - counted as untyped
                result = f"untyped {type(e).__name__}"
                untyped += 1
            if must and result != "decoded and served":
                must_but_failed.append(f"{kind}: {result}")
            outcomes[result] += 1
            by_kind.setdefault("odd mode/size" if must else kind, Counter())[result] += 1
    good_acc = good.accounting()
    n = len(corpus)
    return _phase(
        "bad_images", f"{n} seeded hostile or odd images (random bytes, truncated/flipped/spliced JPEG PNG WebP BMP GIF "
        "TIFF, bombs, GIF/TIFF outside the allow-list, L/LA/P/1/I;16/CMYK/RGBA/EXIF/1×1/animated) decoded and sent to "
        "Triton, while 2 clients send good requests",
        client_saw=dict(outcomes), by_kind={k: dict(v) for k, v in sorted(by_kind.items())},
        accounting=_tally(n, ok=served, wrong=wrong, failed_typed=typed, untyped=untyped),
        good_load=good_acc | {"by_kind": good.summary()["by_kind"]},
        checks={"odd modes and sizes decode (not errors)": not must_but_failed,
                "bombs refused": all(by_kind.get(k, Counter()).get("InvalidInputError") for k in
                                     ("20000x1 png", "9000x9000 1-bit png", "33 MB file")),
                "good requests unaffected": good_acc["accounted"] and good_acc["ok"] == good_acc["sent"] > 0},
        must_decode_failures=must_but_failed,
    )


def _mutate_json(doc: Any, rng) -> str:
    """One structural change at a random path, or damaged text."""
    values = [None, True, -1, 0, 2**70, 1e400, float("nan"), "", "x" * 40, [], {}, [1, [2, [3]]], {"photo": "1"}]
    if rng.random() < 0.3:
        text = json.dumps(doc)
        i = int(rng.integers(0, len(text)))
        return text[:i] if rng.random() < 0.5 else text[:i] + "\x00}{" + text[i + 3:]
    doc = json.loads(json.dumps(doc))
    paths: list[tuple] = []

    def walk(d, prefix=()):
        paths.append(prefix)
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, (*prefix, k))
        elif isinstance(d, list):
            for i, v in enumerate(d):
                walk(v, (*prefix, i))

    walk(doc)
    path = paths[int(rng.integers(len(paths)))]
    value = values[int(rng.integers(len(values)))]
    if not path:
        return json.dumps(value, allow_nan=True)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if rng.random() < 0.25:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(doc, allow_nan=True)


#: outcomes of one mutated document (``client_saw`` of the bad_json phase)
SAME, SKIPPED, DIFFERENT = "loaded, same meaning", "loaded, bad rows skipped and reported", "loaded, means something else"


def _meaning(loaded: Any) -> Any:
    """What a loader's result says, comparable with ``==`` (rows skipped with a reason kept apart)."""

    if isinstance(loaded, Street2Shop):
        return {"pairs": sorted(map(repr, loaded.pairs)), "shop": loaded.shop, "category": loaded.product_category,
                "split": loaded.product_split, "missing": len(loaded.missing)}
    if isinstance(loaded, Catalog):
        return loaded.manifest.to_dict()
    return repr(loaded)


def _judge(original: Any, mutated: Any) -> str:
    """:data:`SAME` when the accepted document means what the original does; :data:`SKIPPED` when
    it lost rows the loader reported as skipped (street2shop's documented ``missing`` rows)."""
    if mutated == original:
        return SAME
    if (isinstance(original, dict) and "missing" in original and mutated["missing"] > original["missing"]
            and set(mutated["pairs"]) < set(original["pairs"])):
        return SKIPPED
    return DIFFERENT


def _mutate_all(targets, per_target: int, rng, results: dict[str, Counter], examples: dict[str, str]) -> None:
    for name, path, doc, load, documented in targets:
        counts = results.setdefault(name, Counter())
        path.write_text(json.dumps(doc))
        original = _meaning(load())
        for _ in range(per_target):
            text = _mutate_json(doc, rng)
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            try:
                meaning = _meaning(load())
                verdict = _judge(original, meaning)
                counts[verdict] += 1
                if verdict == DIFFERENT:
                    changed = (sorted(k for k in original if original[k] != meaning.get(k))
                               if isinstance(original, dict) and isinstance(meaning, dict) else ["the loaded views"])
                    examples.setdefault(f"{name}: {verdict}", f"changed {', '.join(map(str, changed))}: {text[:200]}")
            except documented:
                counts[documented.__name__] += 1
            except Exception as e:  # noqa: BLE001 - counted: anything but the documented error
                key = f"undocumented {type(e).__name__}"
                counts[key] += 1
                examples.setdefault(f"{name}: {key}", str(e)[:160])
        path.write_text(json.dumps(doc))


def phase_bad_json(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:

    s = env.spec
    rng = np.random.default_rng(s.seed)
    root = env.work / "s2s"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "photos.txt").write_text("".join(f"{i},images/{i}.jpg\n" for i in (1, 2, 100, 101)))
    (root / "images").mkdir()
    for i in (1, 2, 100, 101):
        (root / "images" / f"{i}.jpg").write_bytes(b"")
    (root / "meta" / "json").mkdir(parents=True)
    bb = {"left": 1, "top": 2, "width": 10, "height": 12}
    docs = {root / "meta/json/train_pairs_tops.json": [{"photo": 1, "product": 10, "bbox": bb}, {"photo": 2, "product": 11, "bbox": bb}],
            root / "meta/json/retrieval_tops.json": [{"product": 10, "photo": 100}, {"product": 11, "photo": 101}]}
    for p, d in docs.items():
        p.write_text(json.dumps(d))
    fw = env.work / "fw"
    (fw / "footwear" / "views" / "s1").mkdir(parents=True)
    (fw / "footwear" / "views" / "s1" / "a.jpg").write_bytes(b"")
    gt = {"images": [{"path": "views/s1/a.jpg", "shoe_id": "s1", "view": "front", "type": "lace-up", "split": "train",
                      "best_view": True}]}
    cat_copy = env.work / "catalog-json"
    shutil.copytree(env.catalog, cat_copy)
    manifest = json.loads((cat_copy / "manifest.json").read_text())

    targets: list[tuple[str, Path, Any, Callable[[], Any], type]] = [
        ("street2shop pairs", next(iter(docs)), docs[next(iter(docs))], lambda: street2shop.load(root), DataError),
        ("street2shop retrieval", list(docs)[1], docs[list(docs)[1]], lambda: street2shop.load(root), DataError),
        ("footwear ground truth", fw / "footwear" / "ground_truth.json", gt, lambda: footwear.load_views(fw), DataError),
        ("catalog manifest", cat_copy / "manifest.json", manifest, lambda: Catalog.open(cat_copy), CatalogError),
    ]
    results: dict[str, Counter] = {}
    examples: dict[str, str] = {}
    per_target = max(1, s.bad_json // len(targets))
    quiet = logging.getLogger("lookserve.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # rows skipped for missing images are expected here
    try:
        _mutate_all(targets, per_target, rng, results, examples)
    finally:
        quiet.setLevel(level)
    n = per_target * len(targets)
    untyped = sum(v for c in results.values() for k, v in c.items() if k.startswith("undocumented"))
    typed = sum(c[e.__name__] for c, e in zip(results.values(), (t[4] for t in targets), strict=True))
    ok = sum(c[SAME] + c[SKIPPED] for c in results.values())
    wrong = sum(c[DIFFERENT] for c in results.values())
    return _phase(
        "bad_json", f"{n} mutated JSON documents ({per_target} each: street2shop pairs and retrieval files, footwear "
        "ground truth, catalog manifest) through their loaders; only DataError / CatalogError may escape, and a "
        "document that loads must mean what its original means (or lose only rows the loader reports as skipped)",
        client_saw={k: dict(v) for k, v in results.items()}, examples=examples,
        accounting=_tally(n, ok=ok, wrong=wrong, failed_typed=typed, untyped=untyped),
        checks={"only documented errors": untyped == 0, "accepted documents mean the same": wrong == 0},
    )


def phase_access(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    key = env.server.repository_key
    calls = {"repository index": lambda c: c.repository_index(), "unload": lambda c: c.unload_model("embedder"),
             "load": lambda c: c.load_model("embedder")}
    seen: Counter = Counter()
    texts: list[str] = []
    untyped = typed = 0
    for client_key in (None, "not-the-key"):
        with TritonClient(env.url, repository_key=client_key, timeout_s=5) as client:
            for what, call in calls.items():
                try:
                    call(client)
                    seen[f"{what}: accepted"] += 1
                except LookserveError as e:
                    seen[type(e).__name__] += 1
                    typed += 1
                    texts += [str(e), repr(e), str(e.__cause__)]
                except Exception as e:  # noqa: BLE001 - counted as untyped
                    untyped += 1
                    seen[f"untyped {type(e).__name__}"] += 1
        texts.append(repr(client.options))
    with TritonClient(env.url, repository_key=key, timeout_s=30) as admin:
        admin_ok = any(m.get("name") == "embedder" for m in admin.repository_index())
    log_text = env.server.log_file.read_text(errors="replace")
    report_text = json.dumps(list(earlier), default=str)
    n = 2 * len(calls)
    refused = seen["PermissionDenied"]
    listening = env.server.grpc_url.rsplit(":", 1)[0]
    return _phase(
        "access", f"{len(calls)} repository-protocol calls without a key and with a wrong one; the key searched for in "
        f"their error texts, the tritonserver log of the whole run ({len(log_text.splitlines())} lines) and this report",
        client_saw=dict(seen), listening_on=listening,
        # a restricted call accepted without the key is a wrong answer
        accounting=_tally(n, wrong=sum(v for k, v in seen.items() if k.endswith(": accepted")), failed_typed=typed,
                          untyped=untyped),
        checks={"every call refused with PermissionDenied": refused == n, "the right key is accepted": admin_ok,
                "key in no error text": all(key not in t for t in texts), "key not in the server log": key not in log_text,
                "key not in the report": key not in report_text, "bound to 127.0.0.1": listening == "127.0.0.1"},
    )


def _successes(url: str, model: str = "embedder") -> int:
    """Inferences of ``model`` (every version) the one replica at ``url`` answered, from Triton's statistics."""
    with TritonClient(url, timeout_s=10) as client:
        return stats_snapshot(client, [model])[model]["success_count"]


def phase_replicas(env: Env, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Two replicas (the run's server and a second on the same repository and key) behind one
    address list: SIGKILL of the second under load, its restart, then a rolling promote of a
    version 2 and a rolling rollback, all under one load; per-replica counts from Triton's statistics."""
    import onnx

    s = env.spec
    second = TritonServer(ServerOptions(env.repo, grpc_port=0, load_models=("embedder",), work_dir=env.work / "triton-b",
                                        repository_key=env.server.repository_key, exit_timeout_s=3, ready_timeout_s=120))
    v2 = env.work / "embedder-v2.onnx"
    onnx.save(synthetic_embedder(size=SIZE, dim=DIM, seed=7), v2)
    models = ModelRepository(env.repo)
    version = models.publish("embedder", v2).version
    references = {"1": env.reference, str(version): Reference(env.repo / "embedder" / str(version) / "model.onnx")}
    second.start()
    try:
        urls = [env.url, second.grpc_url]
        combined = ",".join(urls)
        base = [_successes(u) for u in urls]
        t0 = time.perf_counter()
        with TritonClient(ClientOptions(url=combined, repository_key=env.server.repository_key, timeout_s=60)) as admin, \
                Load(env, t0=t0, url=combined, references=references) as load:
            time.sleep(s.fault_s)
            before_kill = [_successes(u) - b for u, b in zip(urls, base, strict=True)]
            killed = time.perf_counter() - t0
            second.kill()
            time.sleep(s.down_s)
            restarted = time.perf_counter() - t0
            second.start()
            ready = time.perf_counter() - t0
            time.sleep(_SETTLE_S + s.fault_s)
            after_restart = _successes(second.grpc_url)  # a new process: counted from its start
            promote = time.perf_counter() - t0
            models.promote(admin, "embedder", version, allow_unverified=True)  # the bench's own synthetic file
            promoted = time.perf_counter() - t0
            time.sleep(s.fault_s)
            rollback = time.perf_counter() - t0
            models.rollback(admin, "embedder")
            rolled_back = time.perf_counter() - t0
            time.sleep(s.fault_s)
            serving = models.loaded_versions(admin, "embedder")
    finally:
        second.stop()
    windows = {"kill": (killed, ready + _SETTLE_S), "promote": (promote, promoted), "rollback": (rollback, rolled_back)}
    restart_to_ready_s = round(ready - restarted, 2)
    during = {k: load.summary(a, b) for k, (a, b) in windows.items()}
    versions = Counter(o.value["version"] for o in load.outcomes if o.ok)
    after_promote = [o.value["version"] for o in load.outcomes if o.ok and promoted + 0.05 < o.t < rollback]
    after_rollback = [o.value["version"] for o in load.outcomes if o.ok and o.t > rolled_back + 0.05]
    acc = load.accounting()
    return _phase(
        "replicas", f"two replicas behind one address list (round_robin, gRPC retries): SIGKILL of one under load, dead "
        f"{s.down_s} s, restarted; then a rolling promote of version {version} and a rolling rollback, one replica at a time",
        load, events={n: round(t, 3) for n, t in (("killed_s", killed), ("ready_s", ready), ("promote_s", promote),
                                                   ("promoted_s", promoted), ("rollback_s", rollback),
                                                   ("rolled_back_s", rolled_back))},
        restart_to_ready_s=restart_to_ready_s,
        per_replica={"answered before the kill": before_kill, "restarted replica answered after its restart": after_restart},
        answers_by_version=dict(sorted(versions.items())), during=during, timeline=_timeline(load.outcomes),
        checks={"0 failed requests": acc["failed_typed"] == 0 and acc["untyped"] == 0,
                "0 mixed answers (each equals its version's onnxruntime answer)": acc["wrong"] == 0,
                "both replicas answered before the kill": min(before_kill) > 0,
                "traffic returned to the restarted replica": after_restart > 0,
                f"only version {version} answered between the promote and the rollback":
                    bool(after_promote) and set(after_promote) == {str(version)},
                "only version 1 answered after the rollback": bool(after_rollback) and set(after_rollback) == {"1"},
                "version 1 serves on both replicas at the end": serving == (1,)},
    )


#: every phase: ``phase(env, earlier results) -> result``
RUNNERS: dict[str, Callable[[Env, Sequence[dict[str, Any]]], dict[str, Any]]] = {
    "steady": phase_steady, "deadline": phase_deadline, "sigkill": phase_sigkill, "stub_kill": phase_stub_kill,
    "bad_publish": phase_bad_publish, "catalog_tamper": phase_catalog_tamper,
    "interrupted_build": phase_interrupted_build, "bad_images": phase_bad_images, "bad_json": phase_bad_json,
    "access": phase_access, "replicas": phase_replicas,
}


def run_reliability(work: Path, spec: ReliabilitySpec, phases: Sequence[str] = PHASES,
                    progress: bool = True) -> dict[str, Any]:
    """Run ``phases`` on a private Triton under ``work``; returns the report (see the module doc)."""

    unknown = set(phases) - set(PHASES)
    if unknown:
        raise typer.BadParameter(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    started = time.monotonic()
    results = []
    with environment(work, spec) as env, _bar(progress, len(phases)) as advance:
        for name in phases:
            t = time.monotonic()
            log.info("reliability phase %s", name)
            result = RUNNERS[name](env, results)
            result["duration_s"] = round(time.monotonic() - t, 1)
            result["passed"] = _passed(result)
            results.append(result)
            advance(name)
    return {"spec": asdict(spec), "phases": results, "passed": all(r["passed"] for r in results),
            "duration_s": round(time.monotonic() - started, 1), "environment": env_info()}


@contextlib.contextmanager
def _bar(enabled: bool, total: int):
    if not enabled:
        yield lambda name: None
        return

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("reliability", total=total)
        yield lambda name: bar.update(task, advance=1, description=f"reliability: {name} done")


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    spec = report["spec"]
    env = report.get("environment", {})
    load = ", ".join(f"{v:.1f}" for v in (env.get("load_average_1_5_15") or [])[:1]) or "?"
    lines = [
        "# Reliability: faults survived, bad inputs refused, nothing lost",
        "",
        f"Overall: **{'PASSED' if report['passed'] else 'FAILED'}** in {report['duration_s']} s. Private tritonserver on "
        f"127.0.0.1 (synthetic {SIZE}×{SIZE}→{DIM} embedder, python-based onnxruntime backend); clients: "
        f"{spec['concurrency']} threads, deadline {spec['timeout_s']} s, {spec['retries']} attempts on UNAVAILABLE. "
        "Accounting, counted where each outcome happened: every request (or input) sent is ok (answered, and the "
        "answer checked: an embedding equal to onnxruntime's on the same file and crop within the export parity "
        "tolerance, a mutated document that loads meaning what its original means), wrong (answered or accepted "
        "when it should not have been, or not as it should; must be 0), failed with its documented lookserve error "
        "(typed), or untyped (another exception type; must be 0); `all accounted` checks that the four add up to "
        "what was sent. p50/p99 are over right answers; `p99_all_ms` over every request, a failure at the time it "
        "took. Each phase's checks are listed under it; the reproduce line runs that phase alone.",
        "",
        f"Machine: {env.get('host_cpu')}, {env.get('cpu_affinity')} cores (load average {load} while it ran, shared with "
        f"other work), {env.get('memory_gib')} GiB; {env.get('time_utc')}. Latencies are noisy on such a machine; the "
        "counts are the result.",
        "",
    ]
    rows = []
    for r in report["phases"]:
        a = r.get("accounting", {})
        rows.append([r["phase"], "pass" if r["passed"] else "**FAIL**", a.get("sent"), a.get("ok"), a.get("wrong"),
                     a.get("failed_typed"), a.get("untyped"), "yes" if a.get("accounted") else "**no**", r["duration_s"]])
    lines.append(markdown_table(["phase", "result", "sent", "ok", "wrong", "failed (typed)", "untyped", "all accounted",
                                 "s"], rows))
    for r in report["phases"]:
        lines += [f"## {r['phase']}", "", r["what"] + ".", "",
                  "Client saw: `" + json.dumps(r.get("client_saw", {}), sort_keys=True) + "`", ""]
        for key in ("latency", "throughput_rps", "events", "while_down", "after_recovery", "restart_to_ready_s", "during",
                    "time_to_heal_s", "max_latency_s", "client_saw_versions", "refusals", "good_load", "by_kind",
                    "must_decode_failures", "temp_dirs_left", "examples", "listening_on", "per_replica",
                    "answers_by_version"):
            if key in r:
                lines.append(f"- {key.replace('_', ' ')}: `{json.dumps(r[key], sort_keys=True, default=str)}`")
        if "cases" in r:
            lines += ["", markdown_table(["damage", "refused with", "message"],
                                         [[k, v["outcome"], v["message"].replace("|", "/")] for k, v in r["cases"].items()])]
        lines += ["", "Checks: " + "; ".join(f"{k}: {'yes' if v else '**NO**'}" for k, v in r.get("checks", {}).items()),
                  "", f"Reproduce: `{r['command']}`", ""]
    lines += [f"Full run: `{report['command']}`", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    timed = [r for r in report["phases"] if r.get("timeline")]
    if not timed:
        return None
    fig, axes = plt.subplots(len(timed), 1, figsize=(9, 3.2 * len(timed)), squeeze=False)
    for ax, r in zip(axes[:, 0], timed, strict=True):
        kinds = sorted({kind for _, _, kind in r["timeline"]}, key=lambda k: (k != "ok", k))
        for kind in kinds:
            pts = [(t, ms) for t, ms, k in r["timeline"] if k == kind]
            n = r["client_saw"].get(kind, len(pts))
            ax.scatter([t for t, _ in pts], [ms for _, ms in pts], s=6,
                       label=f"{kind} ({n}{', thinned' if len(pts) < n else ''})")
        for name, t in r.get("events", {}).items():
            ax.axvline(t, color="grey", linestyle="--", linewidth=1)
            ax.annotate(name.removesuffix("_s"), (t, 1), xycoords=("data", "axes fraction"), fontsize=8, rotation=90,
                        va="top", ha="right")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the phase started")
        ax.set_ylabel("request latency (ms)")
        ax.set_title(f"{r['phase']}: {r['what']}"[:110], fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def write_report(report: dict[str, Any], out: Path, stem: str) -> list[Path]:
    paths = [atomic_write_json(out / f"{stem}.json", report), atomic_write_text(out / f"{stem}.md", markdown(report))]
    png = plot(report, out / f"{stem}.png")
    return paths + ([png] if png else [])


def _command(spec: ReliabilitySpec, phases: Sequence[str], out: Path, stem: str) -> str:
    words = ["lookserve", "bench", "reliability"]
    defaults = ReliabilitySpec()
    for key, value in asdict(spec).items():
        if value != getattr(defaults, key):
            words += [f"--{key.replace('_', '-')}", str(value)]
    for p in phases if tuple(phases) != PHASES else ():
        words += ["--phase", p]
    words += ["--out", shlex.quote(str(out)), "--stem", shlex.quote(stem)]
    return " ".join(words)


@app.command("reliability")
def reliability(
    phase: list[str] = typer.Option([], "--phase", help=f"Run only these phases (repeatable): {', '.join(PHASES)}."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=32, help="Closed-loop client threads."),
    steady_s: float = typer.Option(8.0, "--steady-s", min=1.0, max=120.0, help="Seconds of the steady phase."),
    fault_s: float = typer.Option(1.5, "--fault-s", min=0.5, max=30.0, help="Seconds of load before a fault and after recovery."),
    down_s: float = typer.Option(1.5, "--down-s", min=0.2, max=30.0, help="Seconds the killed server stays down."),
    max_requests: int = typer.Option(20_000, "--max-requests", min=1, help="Bound on the requests of one load."),
    timeout_s: float = typer.Option(2.0, "--timeout-s", min=0.1, max=60.0, help="Client deadline per request."),
    bad_images: int = typer.Option(240, "--bad-images", min=20, max=5000, help="Size of the bad-image corpus."),
    bad_json: int = typer.Option(120, "--bad-json", min=4, max=5000, help="Mutated JSON documents in all."),
    seed: int = typer.Option(0, "--seed"),
    work: Path | None = typer.Option(None, "--work", help="Scratch folder (default: a temp folder, removed)."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Directory for the JSON, Markdown and PNG outputs."),
    stem: str = typer.Option("reliability", "--stem", help="Output file name stem."),
) -> None:
    """Faults (SIGKILL, stub crash, slow server, bad publish, tampered catalog, killed build) and bad inputs
    under load on a private Triton; every request accounted for. Exit code 1 if a check failed."""

    console = Console(soft_wrap=True)
    spec = ReliabilitySpec(concurrency=concurrency, steady_s=steady_s, fault_s=fault_s, down_s=down_s,
                           max_requests=max_requests, timeout_s=timeout_s, bad_images=bad_images, bad_json=bad_json,
                           seed=seed)
    phases = tuple(dict.fromkeys(phase)) or PHASES
    scratch = work or Path(tempfile.mkdtemp(prefix="lookserve-reliability-"))
    try:
        report = run_reliability(scratch, spec, phases)
    except LookserveError as e:
        fail(e)
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    report["command"] = _command(spec, phases, out, stem)
    for r in report["phases"]:
        r["command"] = _command(spec, (r["phase"],), out, f"{stem}_{r['phase']}")
    paths = write_report(report, out, stem)

    console.print(Markdown(markdown(report).split("\n## ")[0]))
    for p in paths:
        console.print(f"wrote {p}")
    if not report["passed"]:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    app()
