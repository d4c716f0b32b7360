"""Issue 18 / H9: detector 1x1 vs 1x2 spinning vs 1x2 no-spin vs 2x1, interleaved (bench.tune.tune).

    python bench/scripts/spin_detector.py REPO OUT PREFIX DURATION_S ROUNDS [N_CANDIDATES]

REPO holds detector/config.pbtxt and detector/1/model.onnx; the first N_CANDIDATES (default 4) of
1x1, 1x2 spinning, 1x2 asleep, 2x1 are served at once and visited in turn (levels 1, 2); writes
OUT/PREFIX_<candidate>.{json,md,png} and OUT/PREFIX_compare.{md,json}: how the committed
``serving_spin_detector*`` results were made (``lookserve bench tune --spinning`` varies spinning too,
over its own grid).
"""
import sys
from pathlib import Path

from lookserve.bench.load import LoadSpec, compare, compare_markdown, write_load_report
from lookserve.bench.report import atomic_write_json, atomic_write_text
from lookserve.bench.tune import grid, tune
from lookserve.modelconfig import ModelConfig

repo, out, prefix = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
base = ModelConfig.read(repo / "detector" / "config.pbtxt")
# 1x1, 1x2 spinning, 1x2 asleep, 2x1 (2x2 is over the budget of 2 threads)
cands = grid((1, 2), (1, 2), (100,), (4,), 2, spinning=(True, False))[:int(sys.argv[6]) if len(sys.argv) > 6 else 4]
spec = LoadSpec(mode="closed", levels=(1, 2), duration_s=float(sys.argv[4]), warmup_s=1.0, timeout_s=30.0, seed=0)
result = tune(base, repo / "detector" / "1" / "model.onnx", cands, spec, "throughput", rounds=int(sys.argv[5]))
command = "python " + " ".join(sys.argv)
out.mkdir(parents=True, exist_ok=True)
for name, report in result["reports"].items():
    write_load_report(report, out, f"{prefix}_{name}", command=command)
names = [c.name for c in cands]
md = ["# detector: intra-op threads and spinning, interleaved\n", f"Command: `{command}`\n"]
cmps = {}
for n in names[1:]:
    cmps[n] = compare(result["reports"][names[0]], result["reports"][n])
    md.append(compare_markdown(cmps[n]))
atomic_write_text(out / f"{prefix}_compare.md", "\n".join(md))
atomic_write_json(out / f"{prefix}_compare.json", {"command": command, "baseline": names[0], "comparisons": cmps,
                                                  "candidates": result["candidates"]})
for n, r in result["reports"].items():
    sys.stdout.write(f"{n} " + str([(p["level"], round(p["throughput_rps"], 2), round(p["latency"]["p50_ms"], 1), round(p["latency"]["p99_ms"], 1))
                                    for p in r["points"]]) + "\n")
