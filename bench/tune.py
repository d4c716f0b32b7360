"""``lookserve bench tune MODEL``: a config search in the manner of Triton's Model Analyzer.

Candidates are typed configs derived from the model's served ``config.pbtxt`` with
``dataclasses.replace`` over a grid of instance count × intra-op threads × dynamic-batching
queue delay × ``max_batch_size`` × (for more than one intra-op thread) whether idle threads spin,
the backend's ``allow_spinning`` (combinations that need more threads than ``thread_budget``
are left out). They are measured side by side by :func:`lookserve.bench.variants.run_variants`
(every candidate on its own tritonserver, interleaved level by level, medians of ``rounds``), and
the winner is chosen under one objective:

* ``latency``: the highest throughput at the sweep's top level among the candidates whose p99
  stays ≤ ``p99_ms`` at **every** level;
* ``throughput``: the highest throughput at the top level.

:func:`write_winner` writes it as a config variant, ``<model>/configs/<name>.pbtxt`` (served with
``--model-config-name <name>``), with its measurements beside it (``configs/<name>.json``);
``config.pbtxt`` is replaced only when asked (``apply=True``).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lookserve import errors
from lookserve.bench.variants import Variant, run_variants
from lookserve.modelconfig import DynamicBatching, InstanceGroup, ModelConfig

log = logging.getLogger(__name__)

OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class Candidate:
    instances: int
    threads: int
    delay_us: int
    max_batch: int
    #: the backend's ``allow_spinning`` parameter for idle intra-op threads; None keeps the base config's
    spinning: bool | None = None

    @property
    def name(self) -> str:
        name = f"i{self.instances}_t{self.threads}_d{self.delay_us}_b{self.max_batch}"
        return name if self.spinning is None else f"{name}_{'spin' if self.spinning else 'nospin'}"

    def config(self, base: ModelConfig) -> ModelConfig:
        return replace(base, max_batch_size=self.max_batch,
                       dynamic_batching=DynamicBatching(self.delay_us,
                                                        tuple(b for b in (base.dynamic_batching.preferred_batch_sizes
                                                                          if base.dynamic_batching else ())
                                                              if b <= self.max_batch)),
                       instance_groups=(InstanceGroup("KIND_CPU", self.instances),),
                       parameters={**base.parameters, "intra_op_thread_count": str(self.threads),
                                   **({} if self.spinning is None else {"allow_spinning": "1" if self.spinning else "0"})})


def grid(instances: Sequence[int], threads: Sequence[int], delays_us: Sequence[int], max_batches: Sequence[int],
         thread_budget: int, spinning: Sequence[bool | None] = (None,)) -> list[Candidate]:
    """Every combination whose instances × threads fits the thread budget (at least one is kept).

    ``spinning`` (idle intra-op threads spin or sleep) is varied only for candidates with more than
    one intra-op thread: with one, onnxruntime's pool has no thread of its own to spin."""
    if thread_budget < 1:
        raise errors.ConfigError(f"thread budget must be ≥ 1, got {thread_budget}")
    all_ = list(dict.fromkeys(
        Candidate(i, t, d, b, s if t > 1 else None)
        for i, t, d, b, s in itertools.product(instances, threads, delays_us, max_batches, spinning)))
    fits = [c for c in all_ if c.instances * c.threads <= thread_budget]
    if not fits:
        raise errors.ConfigError(f"no candidate fits a budget of {thread_budget} threads (instances × threads)")
    return fits


def choose(reports: dict[str, dict[str, Any]], objective: str, p99_ms: float | None = None) -> tuple[str | None, dict]:
    """(winner or None, per-candidate summary) from the reports of one interleaved sweep."""
    if objective not in OBJECTIVES:
        raise errors.ConfigError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if objective == "latency" and (p99_ms is None or p99_ms <= 0):
        raise errors.ConfigError("the latency objective needs a positive p99 bound (--p99-ms)")
    summary = {}
    for name, report in reports.items():
        points = report["points"]
        worst_p99 = max((p["latency"]["p99_ms"] or float("inf")) for p in points)
        top = max(points, key=lambda p: p["level"])
        summary[name] = {"throughput_rps_at_top": top["throughput_rps"], "top_level": top["level"],
                         "worst_p99_ms": worst_p99, "errors": sum(sum(p["errors"].values()) for p in points),
                         "meets": (objective == "throughput" or worst_p99 <= p99_ms)}
    eligible = [n for n, s in summary.items() if s["meets"] and not s["errors"]]
    winner = max(eligible, key=lambda n: summary[n]["throughput_rps_at_top"], default=None)
    return winner, summary


def tune(base: ModelConfig, onnx_path: Path, candidates: Sequence[Candidate], spec, objective: str,
         p99_ms: float | None = None, rounds: int = 1, batch_size: int = 1) -> dict[str, Any]:
    """Measure every candidate (interleaved) and pick the winner; returns the whole result."""
    if objective == "latency" and (p99_ms is None or p99_ms <= 0):
        raise errors.ConfigError("the latency objective needs a positive p99 bound (--p99-ms)")
    variants = {c.name: Variant(c.name, c.config(base), lambda p: p, f"{c}") for c in candidates}
    reports = run_variants(list(variants), spec, onnx_path=onnx_path, batch_size=batch_size, rounds=rounds,
                           variants=variants)
    winner, summary = choose(reports, objective, p99_ms)
    return {"kind": "tune", "model": base.name, "objective": objective, "p99_ms": p99_ms, "winner": winner,
            "candidates": {c.name: {"instances": c.instances, "threads": c.threads, "delay_us": c.delay_us,
                                    "max_batch": c.max_batch, "spinning": c.spinning, **summary[c.name]}
                           for c in candidates},
            "reports": reports, "winner_config": variants[winner].config.to_pbtxt() if winner else None}


def write_winner(result: dict[str, Any], model_dir: Path, name: str, command: str, apply: bool = False) -> list[Path]:
    """``configs/<name>.pbtxt`` + ``configs/<name>.json`` (measurements); ``config.pbtxt`` too when ``apply``."""
    if result["winner"] is None:
        raise errors.ConfigError(f"no candidate met the objective ({result['objective']}, p99 ≤ {result['p99_ms']} ms); "
                                 "nothing written")
    if not name or "/" in name or name == "config":
        raise errors.ConfigError(f"variant name {name!r} must be a plain file stem other than 'config'")
    config = ModelConfig.from_pbtxt(result["winner_config"])
    paths = [config.write(model_dir / "configs" / f"{name}.pbtxt")]
    summary = {k: v for k, v in result.items() if k != "reports"}
    measurements = model_dir / "configs" / f"{name}.json"
    tmp = measurements.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**summary, "command": command}, indent=2, default=str))
    tmp.replace(measurements)
    paths.append(measurements)
    if apply:
        paths.append(config.write(model_dir / "config.pbtxt"))
        log.warning("replaced %s with the tuned winner %s", model_dir / "config.pbtxt", result["winner"])
    return paths
