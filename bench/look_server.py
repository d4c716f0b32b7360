"""Client chain vs one ``look`` call, side by side in one interleaved run.

    python -m lookserve.bench.look_server --model-repository REPO --data runs/demo/data \\
        --catalog runs/bench-catalog --out bench/results/look_server

For each concurrency (1, 2, 4) and each round, the same held-out street photos go through
``LookPipeline`` (the client chain: detector input and crops travel) and through ``RemoteLook``
(one ``look`` call: the encoded photo travels), alternating, so machine load hits both alike.
Per mode and concurrency: p50/p99 latency, throughput, tensor payload bytes sent and received
per photo (KServe v2 tensor contents: what the gRPC messages carry besides a few dozen bytes
of framing and names), and CPU seconds per photo of the tritonserver process tree (server) and
of this process (client). The catalog is built through the served embedder when missing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import logging
import os
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookserve import errors
from lookserve.bench.perf_analyzer import locate, one_endpoint
from lookserve.client.catalog import TritonEmbedder, build_catalog, load_records, open_for_client
from lookserve.client.core import TritonClient
from lookserve.client.look import LookPipeline
from lookserve.client.look_remote import RemoteLook
from lookserve.data import street2shop
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.server.pipelines.repository import load_look

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)


def _nbytes(a: np.ndarray) -> int:
    a = np.asarray(a)
    if a.dtype == np.object_:
        return sum(4 + len(x) for x in a.reshape(-1))  # BYTES: 4-byte length + content
    return int(a.nbytes)


class CountingClient:
    """A :class:`TritonClient` that adds up the tensor payload bytes of every ``infer``."""

    def __init__(self, client: TritonClient) -> None:
        self.client = client
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.client, name)

    def infer(self, model, inputs, outputs=None, **kw):
        r = self.client.infer(model, inputs, outputs=outputs, **kw)
        with self._lock:
            self.sent += sum(_nbytes(a) for a in inputs.values())
            self.received += sum(_nbytes(a) for a in r.outputs.values())
        return r


def _cpu(proc: psutil.Process) -> float:
    import psutil  # the [bench] extra: `lookserve --help` must not need it

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _phase(run, photos: list[Path], concurrency: int, server_proc: psutil.Process, counter: CountingClient) -> dict:
    import psutil

    me = psutil.Process()
    sent0, recv0 = counter.sent, counter.received
    s0, c0 = _cpu(server_proc), sum(me.cpu_times()[:2])
    latencies: list[float] = []

    def one(p: Path) -> None:
        t = time.perf_counter()
        run(p)
        latencies.append((time.perf_counter() - t) * 1e3)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, photos))
    wall = time.perf_counter() - t0
    n = len(photos)
    return {"latencies_ms": latencies, "wall_s": wall, "photos": n,
            "sent": counter.sent - sent0, "received": counter.received - recv0,
            "server_cpu_s": _cpu(server_proc) - s0, "client_cpu_s": sum(me.cpu_times()[:2]) - c0}


def _summary(phases: list[dict], jpeg_bytes: float) -> dict:
    lat = np.concatenate([p["latencies_ms"] for p in phases])
    n = sum(p["photos"] for p in phases)
    return {
        "photos": n,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "throughput_per_s": round(n / sum(p["wall_s"] for p in phases), 2),
        "sent_bytes_per_photo": round(sum(p["sent"] for p in phases) / n),
        "received_bytes_per_photo": round(sum(p["received"] for p in phases) / n),
        "bytes_per_photo_over_jpeg": round((sum(p["sent"] + p["received"] for p in phases) / n) / jpeg_bytes, 2),
        "server_cpu_s_per_photo": round(sum(p["server_cpu_s"] for p in phases) / n, 4),
        "client_cpu_s_per_photo": round(sum(p["client_cpu_s"] for p in phases) / n, 4),
    }


def held_out_photos(data: Path, limit: int | None = None) -> list[Path]:
    """The street photos of a street2shop data set's test pairs, each once, in order."""
    return list(dict.fromkeys(p.street_path for p in street2shop.load(data).pairs_of("test")))[:limit]


def ready_look(server: TritonServer, repo: Path, catalog: Path, data: Path | None = None) -> None:
    """On a started server that serves ``detector`` and ``embedder``: build ``catalog`` through the
    served embedder when it is missing (from ``data``'s shop photos) and load ``look`` on it. The
    catalog goes in the load request's config; the repository's files are not rewritten (the shim
    ``look/1/model.py`` is written only where the repository has none)."""
    with TritonClient(server.grpc_url, repository_key=server.repository_key, timeout_s=120) as admin:
        if not (catalog / "manifest.json").is_file():
            if data is None:
                raise errors.CatalogError(f"{catalog} is not a catalog and no data set was given to build it from")
            log.info("building %s through the served embedder", catalog)
            build_catalog(load_records(data), catalog, TritonEmbedder(admin), batch_size=16, concurrency=2,
                          model_repository=repo)
        load_look(admin, repo, catalog)


@contextlib.contextmanager
def serve_look(repo: Path, data: Path | None, catalog: Path) -> Iterator[TritonServer]:
    """A private tritonserver on ``repo`` serving ``detector``, ``embedder`` and ``look`` on
    ``catalog`` (:func:`ready_look`), stopped on exit; its temp work dir is removed at stop."""
    server = TritonServer(ServerOptions(model_repository=repo.resolve(), load_models=("detector", "embedder"),
                                        grpc_port=0))
    server.start()
    try:
        ready_look(server, repo, catalog, data)
        yield server
    finally:
        server.stop()


def run(repo: Path, data: Path, catalog: Path, out: Path, concurrencies=(1, 2, 4), rounds: int = 2,
        limit: int | None = None, perf_analyzer: bool = False) -> dict:
    photos = held_out_photos(data, limit)
    jpeg = float(np.mean([p.stat().st_size for p in photos]))
    with serve_look(repo, data, catalog) as server:
        import psutil

        proc = psutil.Process(server.pid)
        with TritonClient(server.grpc_url, timeout_s=120) as client:
            counter = CountingClient(client)
            chain = LookPipeline(counter, open_for_client(catalog, client, repo))
            remote = RemoteLook(counter)
            # one_call: the document `lookserve look --no-masks` writes; one_call_masks (c=1 only):
            # with the 28x28 masks, as `lookserve look` writes by default
            modes = {"client_chain": chain.run, "one_call": lambda p: remote.run(p, include_masks=False),
                     "one_call_masks": remote.run}
            for fn in modes.values():  # warm every path
                fn(photos[0])
            phases: dict[str, dict[int, list[dict]]] = {m: {} for m in modes}
            for c in concurrencies:
                for _ in range(rounds):
                    for mode, fn in modes.items():
                        if mode == "one_call_masks" and c != concurrencies[0]:
                            continue
                        phases[mode].setdefault(c, []).append(_phase(fn, photos, c, proc, counter))
        pa_rows = []
        if perf_analyzer:  # NVIDIA's load generator on the same server, the same photos (--input-data)
            with tempfile.TemporaryDirectory() as work:
                pa_rows = perf_analyzer_look(server.grpc_url, photos, Path(work), concurrencies, 2 * len(photos))
    results = {m: {str(c): _summary(ph, jpeg) for c, ph in by_c.items()} for m, by_c in phases.items()}
    return {"photos": len(photos), "mean_jpeg_bytes": round(jpeg), "rounds": rounds, "results": results,
            "perf_analyzer": pa_rows}


def perf_input_data(photos: list[Path], path: Path, masks: bool = False) -> Path:
    """perf_analyzer's ``--input-data`` JSON for ``look``: one entry per photo, the encoded file as
    sent (``b64`` of the BYTES tensor's raw form), ``masks`` as the app would send it; the other
    optional inputs are left out."""

    def serialized(blob: bytes) -> str:  # a BYTES tensor's raw form: 4-byte little-endian length + bytes
        return base64.b64encode(struct.pack("<I", len(blob)) + blob).decode()

    data = [{"image": {"b64": serialized(p.read_bytes()), "shape": [1]},
             "masks": {"content": [masks], "shape": [1]}} for p in photos]
    path.write_text(json.dumps({"data": data}))
    return path


def perf_analyzer_look(url: str, photos: list[Path], work: Path, concurrencies=(1, 2, 4),
                       request_count: int = 24) -> list[dict]:
    """perf_analyzer on ``look`` with real photos (``--input-data``), closed loop per concurrency;
    its CSV rows (throughput, latency percentiles in µs). One endpoint: a replica list is refused
    (:func:`~lookserve.bench.perf_analyzer.one_endpoint`) before anything runs."""
    one_endpoint(url)
    pa = locate()
    data = perf_input_data(photos, work / "look_input_data.json")
    rows = []
    for c in concurrencies:
        out = work / f"look_pa_c{c}.csv"
        cmd = [str(pa.binary), "-m", "look", "-u", url, "-i", "grpc", "-b", "1", "--input-data", str(data),
               "--concurrency-range", f"{c}:{c}", "--measurement-mode", "count_windows",
               "--measurement-request-count", str(request_count), "--stability-percentage", "999",
               "--max-trials", "3", "-f", str(out)]
        done = subprocess.run(cmd, env=pa.env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")
        with open(out) as f:
            row = next(csv.DictReader(f))
        rows.append({"concurrency": c, "command": " ".join(cmd[1:]), **row})
    return rows


def to_markdown(report: dict) -> str:
    lines = [
        "# Client chain vs one `look` call (same photos, interleaved)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; load before/after: {report['uptime_before']} / {report['uptime_after']}  ",
        f"{report['photos']} held-out street photos (mean JPEG {report['mean_jpeg_bytes']} bytes), "
        f"{report['rounds']} interleaved rounds per concurrency. Bytes are KServe v2 tensor payload per photo.",
        "",
        "| mode | c | p50 ms | p99 ms | photos/s | sent B | received B | bytes / JPEG | server CPU s/photo | client CPU s/photo |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, by_c in report["results"].items():
        for c, s in by_c.items():
            lines.append(f"| {mode} | {c} | {s['p50_ms']} | {s['p99_ms']} | {s['throughput_per_s']} | "
                         f"{s['sent_bytes_per_photo']} | {s['received_bytes_per_photo']} | {s['bytes_per_photo_over_jpeg']} | "
                         f"{s['server_cpu_s_per_photo']} | {s['client_cpu_s_per_photo']} |")
    if report.get("perf_analyzer"):
        lines += ["", "perf_analyzer on `look` (one call, `--input-data` with the same photos, masks off), after the run above:", "",
                  "| c | inferences/s | p50 ms | p99 ms |", "|---|---|---|---|"]
        for r in report["perf_analyzer"]:
            lines.append(f"| {r['concurrency']} | {float(r['Inferences/Second']):.2f} | {int(r['p50 latency']) / 1e3:.1f} | "
                         f"{int(r['p99 latency']) / 1e3:.1f} |")
        lines += ["", f"perf_analyzer command (c=1): `perf_analyzer {report['perf_analyzer'][0]['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-repository", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("runs/demo/data"))
    ap.add_argument("--catalog", type=Path, default=Path("runs/bench-catalog"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/look_server"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--perf-analyzer", action="store_true", help="Also drive look with perf_analyzer (--input-data).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = run(args.model_repository, args.data, args.catalog, args.out, rounds=args.rounds, limit=args.limit,
                 perf_analyzer=args.perf_analyzer)
    report.update(command="python -m lookserve.bench.look_server " + " ".join(
        f"{k} {v}" for k, v in (("--model-repository", args.model_repository), ("--data", args.data),
                                ("--catalog", args.catalog), ("--out", args.out), ("--rounds", args.rounds),
                                ("--limit", args.limit)) if v is not None) + (" --perf-analyzer" if args.perf_analyzer else ""),
        machine=f"{os.cpu_count()} CPUs (shared with other jobs)", uptime_before=before,
        uptime_after=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(to_markdown(report))
    log.info("wrote %s.json and .md", args.out)


if __name__ == "__main__":
    main()
