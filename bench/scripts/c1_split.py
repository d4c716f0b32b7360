"""Issue 18 / H9 item 3: embedder at c=1 — perf_analyzer (C++ client) vs lookserve's Python client vs
onnxruntime in-process 1 thread, interleaved round by round; Triton's statistics split the served time.

    python bench/scripts/c1_split.py REPO OUT PREFIX ROUNDS DURATION_S

REPO holds embedder/config.pbtxt and embedder/1/model.onnx (one private tritonserver serves it);
writes OUT/PREFIX_<engine>.{json,md,png}, OUT/PREFIX_raw.json (every round) and
OUT/PREFIX_split.{md,json} (medians of the rounds, the split per request).
"""
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lookserve.bench import perf_analyzer as pa_engine
from lookserve.bench.load import (
    LoadSpec,
    model_workload,
    run_load,
    settled_snapshot,
    stats_delta,
    write_load_report,
)
from lookserve.bench.report import atomic_write_json, atomic_write_text, environment, markdown_table
from lookserve.bench.variants import OrtDirect, median_point
from lookserve.client.core import TritonClient
from lookserve.server.launcher import ServerOptions, TritonServer

repo, out, prefix, rounds, duration = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
command = "python " + " ".join(sys.argv)
spec = LoadSpec(mode="closed", levels=(1,), duration_s=duration, warmup_s=0.5, timeout_s=10.0, seed=0)
onnx_path = repo / "embedder" / "1" / "model.onnx"
pa = pa_engine.locate()
engines = ["perf_analyzer", "lookserve", "ort_direct_1t"]
measured = {e: [] for e in engines}
split = {e: [] for e in engines[:2]}
with tempfile.TemporaryDirectory(prefix="h9-c1-") as tmp:
    options = ServerOptions(model_repository=repo, grpc_port=0, load_models=("embedder",), work_dir=Path(tmp) / "server",
                            ready_timeout_s=180, exit_timeout_s=10)
    with TritonServer(options) as server, TritonClient(server.grpc_url, timeout_s=10) as client:
        client.wait_model_ready("embedder", deadline_s=180)
        url = server.grpc_url
        workload = model_workload(client, "embedder", batch_size=1, seed=0)
        import onnx  # noqa: PLC0415 - lazy, as everywhere in bench
        ort = OrtDirect(onnx.load(onnx_path), 1, batch_size=1, seed=0)
        for r in range(rounds):
            for e in [*engines[r % 3:], *engines[:r % 3]]:
                if e == "ort_direct_1t":
                    measured[e].append(ort.point(1, duration, spec.warmup_s, None))
                    continue
                if e == "perf_analyzer":  # its own warm-up first, then the measured windows framed by snapshots
                    pa_engine.run_point(pa, "embedder", url, replace(spec, duration_s=spec.warmup_s, warmup_s=0), 1)
                    before = settled_snapshot(client, ["embedder"])
                    point = pa_engine.run_point(pa, "embedder", url, replace(spec, warmup_s=0), 1)
                    after = settled_snapshot(client, ["embedder"])
                    tri = stats_delta(before, after)["embedder"]
                else:
                    point = run_load(client, workload, spec, variant="lookserve", progress=False)["points"][0]
                    tri = point["triton"]["embedder"]
                measured[e].append(point)
                split[e].append(tri)
env = environment(models={})
atomic_write_json(out / f"{prefix}_raw.json", {"command": command, "measured": measured, "split": split})
inputs = {"perf_analyzer": "perf_analyzer --input-data random (its default)", "lookserve": workload.inputs,
          "ort_direct_1t": ort.inputs}
reports = {}
for e in engines:
    p = median_point(measured[e])
    reports[e] = {"kind": "load", "variant": e, "spec": {**asdict(spec), "rounds": rounds}, "level_name": "concurrency",
                  "workload": {"name": "embedder", "kind": "model", "models": ["embedder"], "items_per_request": 1,
                               "engine": e, "inputs": inputs[e], "model_source": str(onnx_path)},
                  "points": [p], "environment": env}
    write_load_report(reports[e], out, f"{prefix}_{e}", command=command)

def med(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None

rows, table = [], {}
ort_mean = med([p["latency"]["mean_ms"] for p in measured["ort_direct_1t"]])
for e in engines:
    mean = med([p["latency"]["mean_ms"] for p in measured[e]])
    p50 = med([p["latency"]["p50_ms"] for p in measured[e]])
    row = {"mean_ms": mean, "p50_ms": p50, "added_over_ort_ms": mean - ort_mean}
    if e in split:
        t = split[e]
        for k in ("server_ms", "queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms"):
            row[k] = med([x[k] for x in t])
        row["server_other_ms"] = med([x["server_ms"] - x["queue_ms"] - x["compute_input_ms"] - x["compute_infer_ms"] - x["compute_output_ms"] for x in t])
        row["client_network_ms"] = med([p["latency"]["mean_ms"] - x["server_ms"] for p, x in zip(measured[e], t, strict=True)])
        row["compute_infer_over_ort_ms"] = row["compute_infer_ms"] - ort_mean
        row["requests_per_round"] = [x["requests"] for x in t]
    table[e] = row

    def f(k: str, row: dict = row) -> str:
        return "—" if row.get(k) is None else f"{row[k]:.3f}"
    rows.append([e, f("mean_ms"), f("p50_ms"), f("added_over_ort_ms"), f("server_ms"), f("queue_ms"), f("compute_input_ms"),
                 f("compute_infer_ms"), f("compute_output_ms"), f("server_other_ms"), f("client_network_ms")])
md = ["# embedder at c=1: what Triton adds without the Python client (issue 18)\n",
      f"Medians of {rounds} interleaved rounds ({duration} s each, engines rotated); load average "
      f"{env.get('load_average_1_5_15')}. ms per request; Triton's own statistics over each engine's measured requests.\n",
      markdown_table(["engine", "mean", "p50", "over onnxruntime", "Triton total", "queue", "compute input",
                      "compute infer", "compute output", "server other", "client + network"], rows),
      f"\nCommand: `{command}`\n"]
atomic_write_text(out / f"{prefix}_split.md", "\n".join(md))
atomic_write_json(out / f"{prefix}_split.json", {"command": command, "rounds": rounds, "table": table, "environment": env,
                                                 "perf_analyzer_commands": [p.get("command") for p in measured["perf_analyzer"]]})
sys.stdout.write("\n".join(md) + "\n")
