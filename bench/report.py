"""What every bench report shares: the environment it ran in and atomic writers.

Nothing here imports anything heavy; matplotlib is imported inside the plotting functions of the
modules that draw.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import typer

from lookserve import fsutil
from lookserve.fsutil import (
    atomic_write_text as atomic_write_text,  # re-exported: the benches write Markdown with it
)

#: where every bench writes by default; ``bench/results/`` holds the committed results (pass
#: ``--out bench/results`` on purpose to refresh one)
DEFAULT_OUT = Path("runs/bench")

#: Distributions whose versions matter to a figure; absent ones are reported as ``None``.
PACKAGES = (
    "lookserve", "numpy", "tritonclient", "grpcio", "nvidia-pytriton", "onnxruntime", "onnx",
    "hnswlib", "faiss-cpu", "matplotlib",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """GPU names from ``nvidia-smi``, or an empty list where there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(**extra: Any) -> dict[str, Any]:
    """CPU model, cores, load, memory, GPUs, Python and package versions, plus ``extra``."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gib = None
    env = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15": load,
        "memory_gib": memory_gib,
        "gpus": gpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    }
    env.update(extra)
    return env


def command_line(ctx: typer.Context) -> str:
    """The command that reproduces this run: every parameter spelled out, defaults included."""
    words = ["lookserve", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        flag = getattr(param, "is_flag", False)
        if param.param_type_name == "argument":
            words.append(shlex.quote(str(value)))
        elif value is None or value == "" or (flag and not value):
            continue
        elif flag:
            words.append(param.opts[0])
        else:
            words += [param.opts[0], shlex.quote(str(value))]
    return " ".join(words)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """A bench result as JSON (numpy scalars and arrays converted), written atomically."""
    return fsutil.atomic_write_json(path, data, default=_json_default)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    path = Path(path)
    with fsutil.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            # 121,600 rather than 1.216e+05; 4 significant digits below 1000
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
