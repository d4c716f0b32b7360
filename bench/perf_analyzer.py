"""NVIDIA's perf_analyzer as a second load engine beside lookserve's own (:mod:`lookserve.bench.load`).

``make install`` extracts the ``perf_analyzer`` binary from the ``tritonclient==2.41.0``
manylinux wheel (its ``data/bin/``; the project itself depends on a newer ``tritonclient``, so
only the binary is taken, into ``.venv/bin``). The binary needs ``libb64.so.0d`` (Debian package
``libb64-0d``) and ``libcudart.so.12``, which the ``bench`` extra installs from PyPI
(``nvidia-cuda-runtime-cu12``, under ``nvidia/cuda_runtime/lib``); :func:`locate` finds both.

:func:`run_point` runs perf_analyzer at one load point of a :class:`~lookserve.bench.load.LoadSpec`
(closed loop: ``--concurrency-range c:c``; open loop: ``--request-rate-range r:r`` with the same
``constant``/``poisson`` distribution) for the spec's duration, split into perf_analyzer's three
measurement windows with the stability check disabled, so it measures for as long as lookserve's
engine does; a warm-up run of the spec's warm-up length goes first. Its CSV (and the counts of its
stdout) become a point in lookserve's report format, so :func:`lookserve.bench.load.markdown`,
``compare`` and ``plot`` read both engines' reports alike. :func:`run_interleaved` visits the two
engines in turn at every level of one sweep.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import logging
import math
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lookserve import errors
from lookserve.bench.load import run_load
from lookserve.bench.report import environment
from lookserve.client.core import DNS_SCHEME
from lookserve.fsutil import atomic_output

log = logging.getLogger(__name__)

ENV_BINARY = "LOOKSERVE_PERF_ANALYZER"  # an explicit perf_analyzer binary
ENGINES = ("lookserve", "perf_analyzer", "both")
WINDOWS = 3  # perf_analyzer averages its last three measurement windows
_INSTALL_HINT = ("run `make install` (it extracts bin/perf_analyzer from the tritonclient==2.41.0 wheel into "
                 ".venv/bin and installs libb64-0d), or set LOOKSERVE_PERF_ANALYZER to a perf_analyzer binary")


@dataclass(frozen=True)
class PerfAnalyzer:
    """The binary and the environment it runs in (``LD_LIBRARY_PATH`` with the CUDA runtime)."""

    binary: Path
    env: dict[str, str]


def cuda_runtime_lib() -> Path | None:
    """``…/site-packages/nvidia/cuda_runtime/lib`` of the ``nvidia-cuda-runtime-cu12`` wheel, if installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(root) / "lib"
        if (lib / "libcudart.so.12").is_file():
            return lib
    return None


def locate() -> PerfAnalyzer:
    """perf_analyzer from ``$LOOKSERVE_PERF_ANALYZER``, this interpreter's ``bin/`` or ``PATH``."""
    explicit = os.environ.get(ENV_BINARY)
    candidates = [Path(explicit)] if explicit else [Path(sys.prefix) / "bin" / "perf_analyzer"]
    if not explicit and (found := shutil.which("perf_analyzer")):
        candidates.append(Path(found))
    binary = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if binary is None:
        raise errors.ConfigError(f"perf_analyzer not found (looked at {', '.join(map(str, candidates))}); {_INSTALL_HINT}")
    env = dict(os.environ)
    lib = cuda_runtime_lib()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return PerfAnalyzer(binary, env)


def one_endpoint(url: str, option: str = "--url") -> str:
    """``url`` when it names one server; :class:`ConfigError` for a replica list or a ``dns:///``
    name: perf_analyzer speaks to one endpoint (``-u``), so it would load one replica and the
    report would read as the fleet's."""
    if "," in url or url.startswith(DNS_SCHEME):
        raise errors.ConfigError(
            f"{option} {url!r} names several replicas, but perf_analyzer drives one endpoint: give one "
            f"host:port ({option} {url.removeprefix(DNS_SCHEME).split(',')[0].strip()}) to measure one replica, "
            "or use --engine lookserve, which spreads its load over every replica")
    return url


def command(pa: PerfAnalyzer, model: str, url: str, mode: str, level: float, window_ms: int, *, batch_size: int = 1,
            version: str = "", csv_path: Path | None = None, request_count: int | None = None) -> list[str]:
    """The perf_analyzer command line for one load point (gRPC, synchronous closed loop or open-loop rate);
    one endpoint only (:func:`one_endpoint`)."""
    one_endpoint(url)
    words = [str(pa.binary), "-m", model, "-u", url, "-i", "grpc", "-b", str(batch_size)]
    if version:
        words += ["-x", version]
    if mode == "closed":
        words += ["--concurrency-range", f"{int(level)}:{int(level)}"]
    elif mode in ("constant", "poisson"):
        words += ["--request-rate-range", f"{level:g}:{level:g}", "--request-distribution", mode]
    else:
        raise errors.ConfigError(f"mode {mode!r} is not closed, constant or poisson")
    if request_count is not None:
        words += ["--measurement-mode", "count_windows", "--measurement-request-count", str(request_count)]
    else:
        words += ["--measurement-mode", "time_windows", "--measurement-interval", str(window_ms)]
    # Stability check off: the first WINDOWS windows are the measurement, as long as lookserve's.
    words += ["--stability-percentage", "100000", "--max-trials", str(WINDOWS), "--verbose-csv"]
    if csv_path is not None:
        words += ["-f", str(csv_path)]
    return words


_US_COLUMNS = {"Client Send": "client_send", "Network+Server Send/Recv": "network_server",
               "Server Queue": "queue", "Server Compute Input": "compute_input",
               "Server Compute Infer": "compute_infer", "Server Compute Output": "compute_output",
               "Client Recv": "client_recv", "p50 latency": "p50", "p90 latency": "p90", "p95 latency": "p95",
               "p99 latency": "p99", "Avg latency": "mean"}


def parse_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's ``-f`` CSV: one row per load level; times in ms, the level and inferences/s as numbers."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "Inferences/Second" not in reader.fieldnames:
        raise errors.InvalidInputError(f"not a perf_analyzer CSV (header {reader.fieldnames})")
    level_key = next((k for k in ("Concurrency", "Request Rate") if k in reader.fieldnames), None)
    if level_key is None:
        raise errors.InvalidInputError(f"perf_analyzer CSV without a Concurrency or Request Rate column: {reader.fieldnames}")
    rows = []
    for raw in reader:
        try:
            row = {"level": float(raw[level_key]), "inferences_per_s": float(raw["Inferences/Second"])}
            for column, key in _US_COLUMNS.items():
                if raw.get(column) not in (None, ""):
                    row[f"{key}_ms"] = float(raw[column]) / 1000.0
        except ValueError as e:
            raise errors.InvalidInputError(f"perf_analyzer CSV row {raw}: {e}") from e
        rows.append(row)
    if not rows:
        raise errors.InvalidInputError("perf_analyzer CSV has a header but no rows")
    return rows


_COUNT = re.compile(r"^\s*(Request count|Inference count|Execution count|Successful request count):\s*(\d+)", re.M)


def parse_counts(stdout: str) -> dict[str, int]:
    """The last measurement's counts from perf_analyzer's stdout (client request count, server counts)."""
    counts: dict[str, int] = {}
    for name, value in _COUNT.findall(stdout):
        counts[name.lower().replace(" ", "_")] = int(value)  # later (final) measurements overwrite
    return counts


def to_point(row: dict[str, float], counts: dict[str, int], model: str, batch_size: int, elapsed_s: float) -> dict[str, Any]:
    """One perf_analyzer row as a point of lookserve's load report (what markdown/compare/plot read)."""
    rps = row["inferences_per_s"] / batch_size
    requests = counts.get("request_count", round(rps * elapsed_s))
    client_network = sum(row.get(k, 0.0) for k in ("client_send_ms", "network_server_ms", "client_recv_ms"))
    compute = sum(row.get(k, 0.0) for k in ("compute_input_ms", "compute_infer_ms", "compute_output_ms"))
    mean = row.get("mean_ms", client_network + row.get("queue_ms", 0.0) + compute)
    latency = {"mean_ms": mean, "p50_ms": row.get("p50_ms"), "p90_ms": row.get("p90_ms"), "p95_ms": row.get("p95_ms"),
               "p99_ms": row.get("p99_ms"), "max_ms": None}
    executions, inferences = counts.get("execution_count"), counts.get("inference_count")
    triton = {model: {"requests": counts.get("successful_request_count", requests), "failed": 0,
                      "inferences": inferences, "executions": executions,
                      "mean_batch": (inferences / executions) if inferences and executions else None,
                      "queue_ms": row.get("queue_ms"), "compute_input_ms": row.get("compute_input_ms"),
                      "compute_infer_ms": row.get("compute_infer_ms"), "compute_output_ms": row.get("compute_output_ms")}}
    return {
        "level": row["level"], "requests": requests, "ok": requests, "errors": {}, "error_examples": {},
        "elapsed_s": elapsed_s, "throughput_rps": rps, "throughput_items_per_s": row["inferences_per_s"],
        "latency": latency, "latency_all": latency, "service_latency": latency, "triton": triton,
        "breakdown": {"total_ms": mean, "client_network_ms": client_network, "queue_ms": row.get("queue_ms"),
                      "compute_ms": compute, "server_other_ms": None,  # perf_analyzer does not split it out
                      "client_network_fraction": client_network / mean if mean else None},
        "engine": "perf_analyzer",
    }


def _run(pa: PerfAnalyzer, words: Sequence[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(list(words), env=pa.env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise errors.DeadlineExceeded(f"perf_analyzer ran past {timeout_s:.0f} s: {' '.join(words)}") from e
    except OSError as e:
        raise errors.ConfigError(f"cannot run {pa.binary}: {e.strerror}; {_INSTALL_HINT}") from e
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
        raise errors.ServerError(f"perf_analyzer exited with {done.returncode}: {' | '.join(tail)}\n"
                                 f"command: {' '.join(words)}")
    return done.stdout


def run_point(pa: PerfAnalyzer, model: str, url: str, spec, level: float, *, batch_size: int = 1,
              version: str = "") -> dict[str, Any]:
    """Warm up for ``spec.warmup_s``, then measure ``spec.duration_s`` (3 windows) at one level."""
    window_ms = max(int(math.ceil(spec.duration_s * 1000 / WINDOWS)), 100)
    count = math.ceil(spec.max_requests / WINDOWS) if spec.max_requests else None
    limit = spec.duration_s * 10 + spec.warmup_s * 4 + 60
    if spec.warmup_s > 0:
        warm = max(int(math.ceil(spec.warmup_s * 1000 / WINDOWS)), 50)
        _run(pa, command(pa, model, url, spec.mode, level, warm, batch_size=batch_size, version=version), limit)
    with tempfile.TemporaryDirectory(prefix="lookserve-perf-analyzer-") as tmp:
        csv_path = Path(tmp) / "point.csv"
        words = command(pa, model, url, spec.mode, level, window_ms, batch_size=batch_size, version=version,
                        csv_path=csv_path, request_count=count)
        stdout = _run(pa, words, limit)
        try:
            text = csv_path.read_text()
        except OSError as e:
            raise errors.ServerError(f"perf_analyzer wrote no CSV ({e.strerror}); stdout tail: {stdout[-400:]}") from e
    rows = parse_csv(text)
    point = to_point(rows[-1], parse_counts(stdout), model, batch_size, elapsed_s=window_ms * WINDOWS / 1000)
    point["level"] = level
    point["command"] = shlex.join(command(pa, model, url, spec.mode, level, window_ms, batch_size=batch_size,
                                          version=version, request_count=count))
    log.info("perf_analyzer %s %s=%g: %.1f req/s p50 %.2f ms p99 %.2f ms", model, spec.mode, level,
             point["throughput_rps"], point["latency"]["p50_ms"] or float("nan"), point["latency"]["p99_ms"] or float("nan"))
    return point


def report(points: list[dict[str, Any]], model: str, spec, batch_size: int, url: str, variant: str = "") -> dict[str, Any]:
    """A load report (``kind: load``) of perf_analyzer points, readable by ``bench compare``."""
    return {
        "kind": "load", "engine": "perf_analyzer",
        "workload": {"name": model, "kind": "model", "models": [model], "items_per_request": batch_size,
                     "inputs": "perf_analyzer --input-data random (its default)", "engine": "perf_analyzer"},
        "variant": variant or "perf_analyzer", "spec": asdict(spec),
        "level_name": "concurrency" if spec.mode == "closed" else "rate", "points": points,
        "environment": environment(server_url=url, models={model: {}}),
    }


def run_perf_analyzer(model: str, url: str, spec, *, batch_size: int = 1, version: str = "", variant: str = "",
                      pa: PerfAnalyzer | None = None) -> dict[str, Any]:
    """Every level of ``spec`` through perf_analyzer: one load report."""
    pa = pa or locate()
    points = [run_point(pa, model, url, spec, level, batch_size=batch_size, version=version) for level in spec.levels]
    return report(points, model, spec, batch_size, url, variant)


def run_interleaved(client, workload, model: str, url: str, spec, *, batch_size: int = 1, version: str = "",
                    variant: str = "", pa: PerfAnalyzer | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """lookserve's engine and perf_analyzer in turn at every level: (lookserve report, perf_analyzer report)."""

    pa = pa or locate()
    ours: dict[str, Any] | None = None
    theirs: list[dict[str, Any]] = []
    for level in spec.levels:
        one = run_load(client, workload, replace(spec, levels=(level,)), variant=variant or "lookserve", progress=False)
        if ours is None:
            ours = {**one, "spec": asdict(spec), "engine": "lookserve"}
        else:
            ours["points"].extend(one["points"])
        theirs.append(run_point(pa, model, url, spec, level, batch_size=batch_size, version=version))
    assert ours is not None  # spec.levels is never empty (LoadSpec checks)
    return ours, report(theirs, model, spec, batch_size, url, variant=(variant + " " if variant else "") + "perf_analyzer")


# --- input data for BYTES inputs (the server-side look and thumbnails) ----------------------------
def bytes_input_data(items: Sequence[Sequence[bytes]], input_name: str) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON: one entry per item, each a BYTES tensor of the given
    byte strings. perf_analyzer reads ``b64`` as the tensor's raw buffer, which for BYTES is
    Triton's serialisation: every element as a 4-byte little-endian length and its bytes (checked
    against a served python model: the model saw exactly the JPEGs sent)."""

    data = []
    for elements in items:
        if not elements:
            raise errors.InvalidInputError("every perf_analyzer input-data entry needs at least one element")
        raw = b"".join(struct.pack("<I", len(e)) + bytes(e) for e in elements)
        data.append({input_name: {"b64": base64.b64encode(raw).decode("ascii"), "shape": [len(elements)]}})
    return {"data": data}


# --- install (make install) ---------------------------------------------------------------------
WHEEL_MEMBER = re.compile(r"^tritonclient-[^/]+\.data/data/bin/perf_analyzer$")


def install_binary(wheel: Path, dest_dir: Path) -> Path:
    """Extract only ``bin/perf_analyzer`` from a ``tritonclient`` manylinux wheel into ``dest_dir``."""

    try:
        with zipfile.ZipFile(wheel) as z:
            member = next((n for n in z.namelist() if WHEEL_MEMBER.match(n)), None)
            if member is None:
                raise errors.ConfigError(f"{wheel} has no data/bin/perf_analyzer (is it a manylinux tritonclient wheel?)")
            target = dest_dir / "perf_analyzer"
            with atomic_output(target, mode=0o755) as tmp, z.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
    except (OSError, zipfile.BadZipFile) as e:
        raise errors.ConfigError(f"cannot extract perf_analyzer from {wheel}: {e}") from e
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookserve.bench.perf_analyzer install WHEEL_OR_DIR DEST_DIR`` (used by ``make install``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "install":
        sys.stderr.write("usage: python -m lookserve.bench.perf_analyzer install WHEEL_OR_DIR DEST_DIR\n")
        return 2
    source = Path(args[1])
    wheels = sorted(source.glob("tritonclient-*manylinux*.whl")) if source.is_dir() else [source]
    if not wheels:
        sys.stderr.write(f"no tritonclient manylinux wheel in {source}\n")
        return 2
    try:
        target = install_binary(wheels[-1], Path(args[2]))
    except errors.ConfigError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    sys.stderr.write(f"installed {target} (from {wheels[-1].name})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
