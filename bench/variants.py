"""Config variants of one served model, benched side by side on real Triton.

Each variant is a typed :class:`~lookserve.modelconfig.ModelConfig` made from the contract with
``dataclasses.replace`` (never a hand-edited ``config.pbtxt``), written with its ``model.onnx``
into a fresh temporary repository and served by its own tritonserver; all servers run at once and
one sweep visits the variants in turn at every load level (interleaved, so the shared machine's
drift falls on all of them alike); then every variant is compared with the first as ratios.

The model is an exported embedder (``--onnx``) when one exists, otherwise a small synthetic
convolutional embedder built here with onnx's helper API (three strided convolutions, global
pooling, a projection, L2 normalisation; ~70 MFLOP per 224×224 image) so batching and instance
counts have real compute to act on. It honours the embedder's tensor contract.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import contracts, errors
from lookserve.bench.load import (
    ClosedLoop,
    latency_summary,
    model_workload,
    run_load,
    tensor_inputs,
)
from lookserve.bench.report import environment
from lookserve.client.core import TritonClient
from lookserve.export.variants import apply_variant
from lookserve.modelconfig import DynamicBatching, InstanceGroup, ModelConfig, TensorSpec
from lookserve.server.launcher import ServerOptions, TritonServer
from lookserve.taxonomy import FOOTWEAR_TYPES

log = logging.getLogger(__name__)

VARIANTS = ("batching_on", "batching_off", "instances_2", "fp32_input", "int8")
#: serving-policy variants (issue 18), each an absolute config so a run compares policies, not defaults
POLICY_VARIANTS = ("delay_1000", "delay_500", "delay_100", "delay_0", "preferred_4_8", "threads_2", "instances_2_t1")
#: not served: the same model.onnx run in this process by onnxruntime with 1 or 2 intra-op threads,
#: one ``session.run`` per request from ``c`` caller threads (the floor the served variants are held to)
ORT_DIRECT = {"ort_direct_1t": 1, "ort_direct_2t": 2}


def _conv_trunk(rng: np.random.Generator, input_name: str) -> tuple[list, list, str, int]:
    """UINT8 NHWC pixels → /255 → three stride-2 3×3 convolutions with ReLU → global average pool.

    Returns (nodes, initializers, name of the pooled [B, C] features, C)."""
    from onnx import TensorProto, helper, numpy_helper

    chans = (3, 16, 32, 64)
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "c255")]
    nodes = [helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["xf", "c255"], ["xn"]),
             helper.make_node("Transpose", ["xn"], ["h0"], perm=[0, 3, 1, 2])]
    for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
        w = (rng.normal(size=(cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [f"h{i}", f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"])]
    n = len(chans) - 1
    nodes += [helper.make_node("GlobalAveragePool", [f"h{n}"], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["features"], axis=1)]
    return nodes, inits, "features", chans[-1]


def _finish(nodes, inits, name: str, inputs, outputs):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def synthetic_embedder(size: int = contracts.CROP_SIZE, dim: int = contracts.EMBEDDING_DIM, seed: int = 0):
    """A small conv embedder as an onnx ModelProto: UINT8 [B, size, size, 3] → L2-normalised FP32 [B, dim]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, features, width = _conv_trunk(rng, "crops")
    inits += [numpy_helper.from_array(rng.normal(size=(width, dim)).astype(np.float32) / np.sqrt(width), "P"),
              numpy_helper.from_array(np.array(1e-12, np.float32), "eps")]
    nodes += [helper.make_node("MatMul", [features, "P"], ["proj"]),
              helper.make_node("ReduceL2", ["proj"], ["norm"], axes=[1], keepdims=1),
              helper.make_node("Max", ["norm", "eps"], ["safe"]),
              helper.make_node("Div", ["proj", "safe"], ["embedding"])]
    return _finish(nodes, inits, "synthetic_conv_embedder",
                   [helper.make_tensor_value_info("crops", TensorProto.UINT8, [None, size, size, 3])],
                   [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, dim])])


def synthetic_view_classifier(size: int = contracts.CROP_SIZE, seed: int = 1):
    """The view classifier's contract on the same conv trunk: type_probs (softmax over 6) and best_view (sigmoid)."""
    from onnx import TensorProto, helper, numpy_helper


    rng = np.random.default_rng(seed)
    types = len(FOOTWEAR_TYPES)
    nodes, inits, features, width = _conv_trunk(rng, "images")
    inits += [numpy_helper.from_array(rng.normal(size=(width, types)).astype(np.float32), "Wt"),
              numpy_helper.from_array(rng.normal(size=(width, 1)).astype(np.float32), "Wb")]
    nodes += [helper.make_node("MatMul", [features, "Wt"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["type_probs"], axis=1),
              helper.make_node("MatMul", [features, "Wb"], ["bv"]),
              helper.make_node("Sigmoid", ["bv"], ["best_view"])]
    return _finish(nodes, inits, "synthetic_conv_view_classifier",
                   [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, size, size, 3])],
                   [helper.make_tensor_value_info("type_probs", TensorProto.FLOAT, [None, types]),
                    helper.make_tensor_value_info("best_view", TensorProto.FLOAT, [None, 1])])


def write_synthetic_repository(root: Path) -> Path:
    """A model repository with the synthetic embedder and view classifier under their contract configs."""
    import onnx

    for config, model in ((contracts.embedder_config(), synthetic_embedder()),
                          (contracts.view_classifier_config(), synthetic_view_classifier())):
        (root / config.name / "1").mkdir(parents=True, exist_ok=True)
        onnx.save(model, root / config.name / "1" / "model.onnx")
        config.write(root / config.name / "config.pbtxt")
    return root


def with_fp32_input(proto, input_name: str):
    """The same graph taking FP32 pixels (0..255) on the wire: a Cast to UINT8 in front of the original input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inner = f"{input_name}__uint8"
    for node in graph.node:
        node.input[:] = [inner if x == input_name else x for x in node.input]
    for value in graph.input:
        if value.name == input_name:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    graph.node.insert(0, helper.make_node("Cast", [input_name], [inner], to=TensorProto.UINT8))
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class Variant:
    name: str
    config: ModelConfig
    make_model: Callable[[Any], Any]  # base ModelProto → this variant's ModelProto
    note: str


def embedder_variants(base: ModelConfig | None = None) -> dict[str, Variant]:
    """The comparisons the issue asks for, as typed configs derived from the embedder contract."""
    base = base or contracts.embedder_config()
    crops = base.inputs[0]

    def same(p):
        return p

    def fp32(p):
        return with_fp32_input(p, crops.name)

    def int8(p):
        return apply_variant(p, "int8", kind="embedder")

    def policy(delay_us: int, preferred: tuple[int, ...] = (), instances: int = 1, threads: int = 1) -> ModelConfig:
        return replace(base, dynamic_batching=DynamicBatching(delay_us, preferred),
                       instance_groups=(InstanceGroup("KIND_CPU", instances),),
                       parameters={**base.parameters, "intra_op_thread_count": str(threads)})

    policies = {
        "delay_1000": (policy(1000), "max_queue_delay 1000 µs (the config before issue 18), 1 instance × 1 thread"),
        "delay_500": (policy(500), "max_queue_delay 500 µs, 1 instance × 1 thread"),
        "delay_100": (policy(100), "max_queue_delay 100 µs, 1 instance × 1 thread"),
        "delay_0": (policy(0), "max_queue_delay 0: batch only what queued while the instance was busy"),
        "preferred_4_8": (policy(500, (4, 8)), "max_queue_delay 500 µs, preferred_batch_size 4, 8"),
        "threads_2": (policy(0, threads=2), "delay 0, 1 instance × 2 intra-op threads"),
        "instances_2_t1": (policy(0, instances=2), "delay 0, 2 instances × 1 intra-op thread"),
    }
    return {
        **{name: Variant(name, config, same, note) for name, (config, note) in policies.items()},
        "batching_on": Variant("batching_on", base, same, "contract config: dynamic batching on, 1 CPU instance, UINT8 input"),
        "batching_off": Variant("batching_off", replace(base, dynamic_batching=None), same, "dynamic batching off"),
        "instances_2": Variant("instances_2", replace(base, instance_groups=(InstanceGroup("KIND_CPU", 2),)), same,
                               "2 CPU instances (dynamic batching on)"),
        "fp32_input": Variant("fp32_input", replace(base, inputs=(TensorSpec(crops.name, "FP32", crops.dims),),
                                                    warmup=()), fp32,
                              "FP32 pixels on the wire (4× the bytes), cast to UINT8 in the graph"),
        "int8": Variant("int8", base, int8, "int8 dynamic quantization of the same graph (onnxruntime quantize_dynamic)"),
    }


def write_variant_repository(variant: Variant, base_model, root: Path) -> Path:
    """``root/<name>/1/model.onnx`` + ``config.pbtxt`` for one variant; returns the repository."""
    import onnx

    model_dir = root / variant.config.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(variant.make_model(base_model), model_dir / "1" / "model.onnx")
    variant.config.write(model_dir / "config.pbtxt")
    return root


def median_point(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One point from the same level measured in several rounds: the median of every figure
    (throughput, each latency percentile, each breakdown stage), request counts summed; the
    rounds themselves are kept under ``rounds``."""
    if len(rounds) == 1:
        return rounds[0]

    def med(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    merged = dict(rounds[0])
    for key in ("throughput_rps", "throughput_items_per_s", "elapsed_s"):
        merged[key] = med([p[key] for p in rounds])
    for group in ("latency", "latency_all", "service_latency", "breakdown"):
        merged[group] = {k: med([p[group].get(k) for p in rounds]) for k in rounds[0][group]}
    for key in ("requests", "ok"):
        merged[key] = sum(p[key] for p in rounds)
    merged["errors"] = {k: sum(p["errors"].get(k, 0) for p in rounds) for p in rounds for k in p["errors"]}
    merged["rounds"] = [{k: p[k] for k in ("throughput_rps", "latency", "breakdown", "requests")} for p in rounds]
    return merged


def run_variants(names: Sequence[str], spec, *, onnx_path: Path | None = None, batch_size: int = 1,
                 ready_timeout_s: float = 180.0, rounds: int = 1,
                 variants: dict[str, Variant] | None = None) -> dict[str, dict[str, Any]]:
    """Serve every variant on its own tritonserver and run one sweep, interleaved by level; reports by name.

    With ``rounds`` > 1 every level visits every variant ``rounds`` times (the order rotated each
    round, so no variant always runs right after another) and reports the median of the rounds.
    ``variants``: the named variants to choose from (default :func:`embedder_variants`)."""
    import onnx


    if rounds < 1:
        raise errors.ConfigError(f"rounds must be ≥ 1, got {rounds}")
    variants = variants if variants is not None else embedder_variants()
    unknown = [n for n in names if n not in variants and n not in ORT_DIRECT]
    if unknown:
        raise errors.ConfigError(f"unknown variants {unknown}; known: {', '.join(variants)}")
    if onnx_path is not None:
        try:
            base_model = onnx.load(onnx_path)
        except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
            raise errors.ConfigError(f"cannot read ONNX model {onnx_path}: {e}") from e
        source = str(onnx_path)
    else:
        base_model, source = synthetic_embedder(), "synthetic conv embedder (bench.variants.synthetic_embedder)"
    # All variants are served at once and the sweep interleaves them level by level, so the
    # machine's drift (other tenants, thermal) falls on every variant alike.
    reports: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lookserve-bench-variants-")))
        workloads = {}
        direct = {}
        for name in names:
            if name in ORT_DIRECT:
                direct[name] = OrtDirect(base_model, ORT_DIRECT[name], batch_size=batch_size, seed=spec.seed)
                continue
            variant = variants[name]
            repo = write_variant_repository(variant, base_model, tmp / name / "repository")
            options = ServerOptions(model_repository=repo, grpc_port=0, load_models=(variant.config.name,),
                                    work_dir=tmp / name / "server", ready_timeout_s=ready_timeout_s, exit_timeout_s=10)
            log.info("variant %s: starting tritonserver", name)
            server = stack.enter_context(TritonServer(options))
            client = stack.enter_context(TritonClient(server.grpc_url, timeout_s=spec.timeout_s))
            client.wait_model_ready(variant.config.name, deadline_s=ready_timeout_s)
            workload = model_workload(client, variant.config.name, batch_size=batch_size, seed=spec.seed)
            workload.details.update(model_source=source, variant_note=variant.note, interleaved_with=list(names))
            workloads[name] = (client, workload)
        for level in spec.levels:
            measured: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for r in range(rounds):
                for name in [*names[r % len(names):], *names[:r % len(names)]]:
                    if name in direct:
                        one = direct[name].report(replace(spec, levels=(level,)), variant=name, source=source)
                    else:
                        client, workload = workloads[name]
                        one = run_load(client, workload, replace(spec, levels=(level,)), variant=name, progress=False)
                    measured[name].append(one["points"][0])
                    if name not in reports:
                        reports[name] = {**one, "spec": {**asdict(spec), "rounds": rounds}, "points": []}
            for name in names:
                reports[name]["points"].append(median_point(measured[name]))
    return reports


class OrtDirect:
    """The model run in this process by onnxruntime (no server): ``threads`` intra-op threads, one
    ``session.run`` of ``batch_size`` rows per request, ``c`` caller threads in a closed loop
    (:class:`~lookserve.bench.load.ClosedLoop`), on the same generated inputs as the served variants."""

    def __init__(self, model_proto, threads: int, batch_size: int = 1, seed: int = 0, pool: int = 16) -> None:
        import onnxruntime as ort


        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.threads = threads
        self.session = ort.InferenceSession(model_proto.SerializeToString(), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        crops = contracts.embedder_config().inputs[0]
        arrays, self.inputs = tensor_inputs(crops, batch_size, pool, seed)
        name = self.session.get_inputs()[0].name
        self.feeds = [{name: a} for a in arrays]
        self.batch_size = batch_size

    def point(self, concurrency: int, duration_s: float, warmup_s: float, max_requests: int | None) -> dict[str, Any]:
        def call(worker: int, i: int) -> None:
            self.session.run(None, self.feeds[i % len(self.feeds)])

        if warmup_s > 0:
            ClosedLoop(call, concurrency, max_s=warmup_s, name="ort-warmup").start().wait()
        outcomes = ClosedLoop(call, concurrency, max_requests=max_requests, max_s=duration_s, name="ort").start().wait()
        elapsed = max(max((o.t + o.latency_s for o in outcomes), default=0.0), 1e-9)
        latency = latency_summary([o.latency_s for o in outcomes])
        return {"level": concurrency, "requests": len(outcomes), "ok": len(outcomes), "errors": {}, "error_examples": {},
                "elapsed_s": elapsed, "throughput_rps": len(outcomes) / elapsed,
                "throughput_items_per_s": len(outcomes) * self.batch_size / elapsed,
                "latency": latency, "latency_all": latency, "service_latency": latency, "triton": {},
                "breakdown": {"total_ms": latency["mean_ms"], "client_network_ms": 0.0, "queue_ms": 0.0,
                              "compute_ms": latency["mean_ms"], "server_other_ms": 0.0},
                "engine": "onnxruntime in-process"}

    def report(self, spec, variant: str, source: str) -> dict[str, Any]:
        if spec.mode != "closed":
            raise errors.ConfigError(f"{variant}: onnxruntime in-process runs closed-loop sweeps only, not {spec.mode}")
        points = [self.point(int(level), spec.duration_s, spec.warmup_s, spec.max_requests) for level in spec.levels]
        return {"kind": "load", "workload": {"name": contracts.EMBEDDER, "kind": "model", "models": [],
                                             "items_per_request": self.batch_size, "inputs": self.inputs,
                                             "model_source": source, "engine": "onnxruntime in-process",
                                             "variant_note": f"onnxruntime in-process, {self.threads} intra-op thread(s)"},
                "variant": variant, "spec": asdict(spec), "level_name": "concurrency", "points": points,
                "environment": environment(models={})}
