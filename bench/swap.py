"""``lookserve bench swap``: latency of the look chain under continuous load across model swaps.

One run, on a private tritonserver serving a *copy* of a model repository (the original is never
touched):

1. a catalog root is built with the serving embedder (``catalog-v<N>``, ``current`` pointer);
2. closed-loop client threads (:class:`lookserve.bench.load.ClosedLoop`) run the look chain
   (detector → embedder → search) through a :class:`~lookserve.client.catalog.CatalogWatcher`,
   recording every request's send time, latency, outcome and versions (detector, embedder that
   answered, and the embedder version in the manifest of the catalog it searched, read from disk
   at answer time), while a :class:`PointerLog` records when ``current`` moved;
3. while they run, the operator's actions happen one after another, each timed: detector
   ``publish`` + ``promote`` of a new version, detector ``rollback``, then the embedder swap
   (:func:`lookserve.client.swap.swap_embedder`: publish, load both, build the new catalog with
   the new version, flip the pointer, drain, unload the old version);
4. the report splits latency into windows *during* an operation and *outside* them (p50/p99 of
   the right answers, p99 over all), counts ok, failed and mixed-version requests (the answering
   version is not the searched catalog's on disk), and plots latency over time with the operations
   shaded and the pointer flip marked.

The new versions default to copies of the serving files republished under a new number (the
swap machinery and its cost are the same; pass ``--detector-onnx``/``--embedder-onnx`` for real
new versions).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console

from lookserve.bench.load import ClosedLoop, Outcome, latency_summary
from lookserve.bench.report import (
    DEFAULT_OUT,
    atomic_write_json,
    atomic_write_text,
    command_line,
    environment,
    markdown_table,
    save_figure,
)
from lookserve.client.catalog import (
    MANIFEST,
    CatalogWatcher,
    TritonEmbedder,
    build_catalog,
    catalog_dir_name,
    load_records,
    read_current,
    set_current,
)
from lookserve.client.core import TritonClient
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.client.models import ModelRepository
from lookserve.client.swap import SwapOptions, swap_embedder
from lookserve.cliutil import fail
from lookserve.data import street2shop
from lookserve.errors import LookserveError
from lookserve.server.launcher import ServerOptions, TritonServer

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, help="Latency across model swaps.")


@app.callback()
def _group() -> None:
    """Latency across model swaps."""


# ------------------------------------------------------------------------------------------
# Load: bench.load's closed-loop driver through the look chain; every answer checked on disk
# ------------------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # send time, seconds since the run's start
    latency_ms: float
    ok: bool
    error: str = ""
    detector: str = ""
    embedder: str = ""  # version that answered (Triton's response)
    catalog: str = ""  # embedder version of the searched catalog, as the pipeline's catalog object says
    items: int = 0
    #: embedder version in the manifest of the searched catalog, read from disk at answer time
    searched: str = ""
    #: embedder versions of the catalog that ``current`` pointed to on disk at any moment from the
    #: send (less the watcher's refresh interval) to the answer
    disk: tuple[str, ...] = ()

    @property
    def mixed(self) -> bool:
        """Answered with an embedding of another version than the searched catalog's manifest on disk."""
        return self.ok and bool(self.embedder) and self.embedder != self.searched

    @property
    def stale(self) -> bool:
        """Answered by a version no catalog named by the ``current`` pointer around it was built with."""
        return self.ok and bool(self.embedder) and self.embedder not in self.disk


def manifest_version(catalog: str | Path) -> str:
    """The embedder version in ``catalog``'s manifest on disk ("" when it cannot be read)."""

    try:
        return str(json.loads((Path(catalog) / MANIFEST).read_text())["embedder"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def catalog_version_on_disk(root: Path) -> str:
    """The embedder version in the manifest of the catalog ``root/current`` points to, read from disk."""

    return manifest_version(read_current(root))


class PointerLog:
    """Polls ``root/current`` every ``interval_s`` and keeps each change as (t since ``t0``, version):
    the bench's own record of which catalog was current when, independent of the clients."""

    def __init__(self, root: Path, t0: float, interval_s: float = 0.01) -> None:
        self.root, self.t0, self.interval_s = root, t0, interval_s
        self.changes: list[tuple[float, str]] = [(float("-inf"), catalog_version_on_disk(root))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swap-pointer-log", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                version = catalog_version_on_disk(self.root)
            except (OSError, LookserveError):
                continue  # mid-flip: read again next tick
            if version and version != self.changes[-1][1]:
                self.changes.append((time.perf_counter() - self.t0, version))

    def start(self) -> PointerLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def versions_between(self, a: float, b: float) -> tuple[str, ...]:
        """Every version current on disk at some moment of [a, b]."""
        current = [v for t, v in self.changes if t <= a][-1:] or [self.changes[0][1]]
        return tuple(sorted({*current, *(v for t, v in self.changes if a < t <= b)}))


def look_load(pipeline, photos: list[bytes], concurrency: int, t0: float, max_s: float) -> ClosedLoop:
    """Closed-loop look requests (``ClosedLoop``); each answer keeps the versions it reports."""
    detector = pipeline.config.detector

    def call(worker: int, i: int) -> dict[str, Any]:
        r = pipeline.run(photos[i % len(photos)])
        return {"detector": r.model_versions.get(detector, ""),
                "embedder": r.model_versions.get(r.catalog_embedder.get("name", "embedder"), ""),
                "catalog": r.catalog_embedder.get("version", ""), "items": len(r.items),
                "searched": manifest_version(r.catalog)}  # read now, from disk

    return ClosedLoop(call, concurrency, max_s=max_s, t0=t0, untyped="raise", name="swap-load")


def samples_of(outcomes: list[Outcome], pointer: PointerLog, lag_s: float) -> list[Sample]:
    """One :class:`Sample` per request, with the catalog versions current on disk around it."""
    out = []
    for o in outcomes:
        disk = pointer.versions_between(o.t - lag_s, o.t + o.latency_s)
        if o.ok:
            out.append(Sample(o.t, o.latency_s * 1e3, True, disk=disk, **o.value))
        else:
            out.append(Sample(o.t, o.latency_s * 1e3, False, error=f"{o.kind}: {o.message}"[:300], disk=disk))
    return out


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------
def _summary(samples: list[Sample]) -> dict[str, Any]:
    ok = [s.latency_ms for s in samples if s.ok and not s.mixed]  # a mixed answer is not ok
    every = latency_summary([s.latency_ms / 1e3 for s in samples])
    right = latency_summary([v / 1e3 for v in ok])
    return {
        "requests": len(samples),
        "ok": len(ok),
        "failed": sum(not s.ok for s in samples),
        "mixed_version": sum(s.mixed for s in samples),
        "stale_catalog": sum(s.stale and not s.mixed for s in samples),
        # over the right answers, and over every request (a failure at the time it took)
        "p50_ms": right["p50_ms"],
        "p99_ms": right["p99_ms"],
        "max_ms": right["max_ms"],
        "p99_all_ms": every["p99_ms"],
    }


def windows_report(samples: list[Sample], events: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Latency inside each operation's window, all windows together, and outside them."""
    measured = [s for s in samples if s.t >= warmup_s]
    spans = [(e["start"], e["end"]) for e in events]

    def inside(s: Sample) -> bool:
        return any(a <= s.t <= b for a, b in spans)

    return {
        "all": _summary(measured),
        "outside_swaps": _summary([s for s in measured if not inside(s)]),
        "during_swaps": _summary([s for s in measured if inside(s)]),
        "per_operation": [{"operation": e["name"], "start_s": round(e["start"], 3), "end_s": round(e["end"], 3),
                           **_summary([s for s in measured if e["start"] <= s.t <= e["end"]])} for e in events],
        "per_kind": [{"operation": name, "windows": sum(e["name"] == name for e in events),
                      "seconds": round(sum(e["end"] - e["start"] for e in events if e["name"] == name), 2),
                      **_summary([s for s in measured
                                  if any(e["name"] == name and e["start"] <= s.t <= e["end"] for e in events)])}
                     for name in dict.fromkeys(e["name"] for e in events)],
    }


def _kind(name: str) -> str:
    """Short label of an operation for the plot."""
    if name.startswith("embedder swap"):
        return "embedder swap → v" + name.split("→v")[1].split(" ")[0] if "→v" in name else "embedder swap"
    return name


def plot(report: dict[str, Any], path: Path) -> Path:
    """Latency over time (top) and the operator's actions on a timeline (bottom), sharing the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    samples = report["samples"]
    t = np.asarray(samples["t"])
    lat = np.asarray(samples["latency_ms"])
    ok = np.asarray(samples["ok"], bool)
    emb = np.asarray(samples["embedder"])
    fig, (ax, tl) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    colours = {"1": "tab:blue", "2": "tab:green"}
    for version in sorted(set(emb[ok])):
        sel = ok & (emb == version)
        ax.scatter(t[sel], lat[sel], s=7, alpha=0.6, color=colours.get(version, "tab:gray"),
                   label=f"ok, embedder v{version} + catalog v{version}" if version else "ok, nothing detected (no embedding)")
    if (~ok).any():
        ax.scatter(t[~ok], lat[~ok], s=30, marker="x", color="red", label="failed")
    if len(t):  # rolling p99 over 4-second windows, every half second
        mids, p99 = [], []
        for a in np.arange(0, t.max() + 0.5, 0.5):
            sel = ok & (t >= a - 2) & (t < a + 2)
            if sel.sum() >= 5:
                mids.append(a)
                p99.append(np.percentile(lat[sel], 99))
        ax.plot(mids, p99, color="black", lw=1.2, label="p99 (4 s window)")
    ops = [e for e in report["events"] if not e.get("step")]
    steps = [e for e in report["events"] if e.get("step")]
    palette = {"detector publish": "tab:gray", "detector promote": "tab:orange", "detector rollback": "tab:purple",
               "embedder swap": "tab:green"}

    def colour(name: str) -> str:
        return next((c for prefix, c in palette.items() if name.startswith(prefix)), "tab:gray")

    for e in ops:
        ax.axvspan(e["start"], e["end"], color=colour(e["name"]), alpha=0.12)
    for e in steps:
        if e["name"] in ("flip", "unload"):
            ax.axvline(e["start"], color="tab:red" if e["name"] == "flip" else "tab:brown", ls="--", lw=0.9)
    ax.plot([], [], color="tab:red", ls="--", lw=0.9, label="catalog pointer flip")
    ax.plot([], [], color="tab:brown", ls="--", lw=0.9, label="old embedder version unloaded")
    ax.axvspan(0, report["config"]["warmup_s"], color="gray", alpha=0.06)
    ax.set_yscale("log")
    ax.set_ylabel("look latency (ms)")
    w = report["windows"]
    ax.set_title(f"look chain, closed loop (concurrency {report['config']['concurrency']}), across model swaps: "
                 f"p99 outside {w['outside_swaps']['p99_ms']:.0f} ms, during {w['during_swaps']['p99_ms']:.0f} ms; "
                 f"failed {w['all']['failed']}, mixed-version {w['all']['mixed_version']}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    # timeline: one row per action kind, the embedder swap's steps below it
    rows = list(dict.fromkeys(["detector publish", "detector promote", "detector rollback",
                               *(_kind(e["name"]) for e in ops if e["name"].startswith("embedder swap"))]))
    step_rows = ["load_both", "build", "drain", "unload"]
    labels = rows + [f"  {r}" for r in step_rows]
    for e in ops:
        y = rows.index(_kind(e["name"]))
        tl.broken_barh([(e["start"], max(e["end"] - e["start"], 0.2))], (y - 0.4, 0.8), color=colour(e["name"]), alpha=0.7)
    step_colours = {"load_both": "tab:olive", "build": "tab:cyan", "drain": "tab:pink", "unload": "tab:brown"}
    for e in steps:
        if e["name"] in step_rows:
            y = len(rows) + step_rows.index(e["name"])
            tl.broken_barh([(e["start"], max(e["end"] - e["start"], 0.2))], (y - 0.4, 0.8), color=step_colours[e["name"]])
        elif e["name"] == "flip":
            tl.axvline(e["start"], color="tab:red", ls="--", lw=0.9)
    tl.set_yticks(range(len(labels)), labels, fontsize=7)
    tl.invert_yaxis()
    tl.set_xlabel("time since start (s)")
    tl.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    w = report["windows"]
    def cells(x: dict[str, Any]) -> list[Any]:
        return [x["requests"], x.get("ok"), x["failed"], x["mixed_version"], x["p50_ms"], x["p99_ms"], x["max_ms"],
                x.get("p99_all_ms")]

    rows = [[name, *cells(w[key])] for name, key in (("outside swaps", "outside_swaps"), ("during swaps", "during_swaps"),
                                                     ("all (after warm-up)", "all"))]
    rows += [[f"during {o['operation']} ({o['windows']}×, {o['seconds']:.1f} s in all)", *cells(o)] for o in w["per_kind"]]
    c = report["config"]
    swaps = [
        f"v{r['old_version']} → v{r['new_version']}: " + "; ".join(f"{s['name']} {s['ended'] - s['started']:.2f} s" for s in r["steps"])
        + f" ({r['old_requests_after_flip']} requests answered by v{r['old_version']} after the flip)"
        for r in report["embedder_swaps"]
    ]
    lines = [
        "# Latency across model swaps (look chain)",
        "",
        f"`{report['command']}`" if report.get("command") else "",
        "",
        f"Closed loop, concurrency {c['concurrency']}, {c['photos']} street photos, warm-up {c['warmup_s']} s excluded; "
        f"catalog of {c['catalog_photos']} shop photos. Device: {report['environment'].get('host_cpu', '')} "
        f"({report['environment'].get('cpu_affinity')} cores usable, load average {report['environment'].get('load_average_1_5_15')}), GPUs: {report['environment'].get('gpus') or 'none'}.",
        "",
        *([report["note"], ""] if report.get("note") else []),
        markdown_table(["window", "requests", "ok", "failed", "mixed-version", "p50 ms", "p99 ms", "max ms", "p99 all ms"],
                       rows),
        "p99 of a window with fewer than 100 requests is close to its maximum; compare medians there. "
        "Latency columns are over the right answers; `p99 all` over every request, a failure at the time it took. "
        "A request is mixed-version when the embedder version that answered (Triton's response) differs from the "
        "version in the manifest, read from disk at answer time, of the catalog it searched; it is counted apart from "
        "ok and failed. `stale` (in the JSON) counts answers whose version no catalog named by the `current` pointer "
        "had from their send (less the watcher's 0.1 s refresh) to their answer (the bench polls the pointer every "
        "10 ms).",
        "",
        "Embedder swaps (steps of swap_embedder):",
        "",
        *[f"- {line}" for line in swaps],
        "",
        f"Versions seen: detector {report['versions_seen']['detector']}, embedder {report['versions_seen']['embedder']}; "
        f"requests that reached the embedder: {report['versions_seen']['embedded']}.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------
def _copy_repository(source: Path, dest: Path, models: tuple[str, ...]) -> None:
    """Config, config variants and version folders of ``models``: the run may add versions freely."""
    if dest.exists():
        shutil.rmtree(dest)
    for m in models:
        src = source / m
        if not (src / "config.pbtxt").is_file():
            raise typer.BadParameter(f"{src} has no config.pbtxt; export the models first (lookserve export all)")
        (dest / m).mkdir(parents=True)
        shutil.copy2(src / "config.pbtxt", dest / m / "config.pbtxt")
        for p in src.iterdir():
            if p.is_dir() and (p.name.isdigit() or p.name == "configs"):
                shutil.copytree(p, dest / m / p.name)


def _copy_candidate(source: Path, dest: Path) -> None:
    """Copy a new version's file and its exporter record (``export.json`` beside a ``model.onnx``, or
    ``<stem>.export.json``) to where ``ModelRepository.publish`` looks for it, so a verified file
    stays verified."""
    shutil.copyfile(source, dest)
    record = source.parent / "export.json" if source.name == "model.onnx" else source.with_suffix(".export.json")
    if record.is_file():
        shutil.copyfile(record, dest.with_suffix(".export.json"))


def _street_photos(root: Path, split: str, n: int) -> list[bytes]:
    paths = list(dict.fromkeys(p.street_path for p in street2shop.load(root).pairs_of(split)))[:n]
    return [p.read_bytes() for p in paths]


def run_swap_bench(repository: Path, photos_root: Path, work: Path, *, split: str = "test", catalog_split: str | None = None,
                   concurrency: int = 2, photos: int = 16, warmup_s: float = 5.0, gap_s: float = 8.0,
                   detector_onnx: Path | None = None, embedder_onnx: Path | None = None, quiet_s: float = 2.0,
                   max_s: float = 420.0, cycles: int = 1, progress: bool = True,
                   allow_unverified: bool = False) -> dict[str, Any]:
    models = ("detector", "embedder")
    repo = work / "repository"
    _copy_repository(repository, repo, models)
    repo_models = ModelRepository(repo)
    det_old = repo_models.serving_versions("detector")[-1]
    emb_old = repo_models.serving_versions("embedder")[-1]
    detector_onnx = detector_onnx or repo / "detector" / str(det_old) / "model.onnx"
    embedder_onnx = embedder_onnx or repo / "embedder" / str(emb_old) / "model.onnx"
    # the candidates live outside the repository (publish copies them in)
    cand = work / "candidates"
    cand.mkdir(parents=True, exist_ok=True)
    _copy_candidate(detector_onnx, cand / "detector.onnx")
    _copy_candidate(embedder_onnx, cand / "embedder.onnx")
    records = load_records(photos_root, splits=[catalog_split] if catalog_split else None)
    street = _street_photos(photos_root, split, photos)
    if not street:
        raise LookserveError(f"no {split} street photos under {photos_root}")
    events: list[dict[str, Any]] = []
    options = ServerOptions(model_repository=repo.resolve(), grpc_port=0, load_models=models, work_dir=work / "triton",
                            exit_timeout_s=10, ready_timeout_s=180.0)
    with TritonServer(options) as server, \
            TritonClient(server.grpc_url, repository_key=server.repository_key, timeout_s=60) as admin, \
            TritonClient(server.grpc_url, timeout_s=60) as client:
        admin.wait_ready(60)
        root = work / "catalogs"
        if root.exists():
            shutil.rmtree(root)
        build_catalog(records, root / catalog_dir_name(emb_old), TritonEmbedder(admin, version=str(emb_old)),
                      batch_size=32, concurrency=2, model_repository=repo, progress=progress, images_root=photos_root)
        set_current(root, catalog_dir_name(emb_old))
        watch_s = 0.1
        pipeline = LookPipeline(client, CatalogWatcher(root, client, interval_s=watch_s), LookConfig(timeout_s=60))
        t0 = time.perf_counter()
        pointer = PointerLog(root, t0).start()
        load = look_load(pipeline, street, concurrency, t0, max_s).start()

        def mark(name: str, fn):
            start = time.perf_counter() - t0
            log.info("%.1f s: %s", start, name)
            try:
                return fn()
            finally:
                events.append({"name": name, "start": start, "end": time.perf_counter() - t0})

        swaps: list[dict[str, Any]] = []
        step_start: dict[str, float] = {}

        def on_step(step: str, phase: str) -> None:
            now = time.perf_counter() - t0
            if phase == "start":
                step_start[step] = now
            else:
                events.append({"name": step, "start": step_start[step], "end": now, "step": True})

        def embedder_swap(cycle: int, forward: bool) -> None:
            # forward: v_old -> v_new (the first time publishes the file and builds the catalog);
            # backward: v_new -> v_old, reusing its catalog (the operator's swap back)
            first = forward and cycle == 0
            new_name = f"v{emb_new[0]}" if emb_new[0] else f"v{max(v.version for v in repo_models.versions('embedder')) + 1}"
            label = f"embedder swap v{emb_old}→{new_name}" if forward else f"embedder swap {new_name}→v{emb_old}"
            label += " (publish + build)" if first else " (reuse catalog)"
            swap_options = SwapOptions(quiet_s=quiet_s, max_wait_s=60.0, batch_size=32, concurrency=2,
                                       reuse_catalog=not first, allow_unverified=allow_unverified)
            kwargs = {"onnx_path": cand / "embedder.onnx"} if first else {"version": emb_new[0] if forward else emb_old}
            result = mark(label, lambda: swap_embedder(admin, repo, root, records, options=swap_options,
                                                       images_root=photos_root, progress=progress, on_step=on_step,
                                                       **kwargs))
            if first:
                emb_new[0] = result.new_version
            swaps.append(result.to_dict())

        emb_new = [0]
        try:
            time.sleep(warmup_s + gap_s)
            det_new = mark("detector publish", lambda: repo_models.publish("detector", cand / "detector.onnx")).version
            for cycle in range(cycles):
                time.sleep(gap_s)
                mark("detector promote", lambda: repo_models.promote(admin, "detector", det_new,
                                                                     allow_unverified=allow_unverified))
                time.sleep(gap_s)
                mark("detector rollback", lambda: repo_models.rollback(admin, "detector"))
                time.sleep(gap_s)
                embedder_swap(cycle, forward=True)
                time.sleep(gap_s)
                if cycle + 1 < cycles:
                    embedder_swap(cycle, forward=False)
                    time.sleep(gap_s)
        finally:
            try:
                outcomes = load.stop()
            finally:
                pointer.stop()
    # a client may still search the old catalog for one watcher interval after the flip
    samples = samples_of(outcomes, pointer, lag_s=watch_s + 0.05)
    events.sort(key=lambda e: e["start"])
    # windows: each operator action (the embedder swap's steps are inside its window)
    ops = [e for e in events if not e.get("step")]
    report = {
        "config": {"repository": str(repository), "photos_root": str(photos_root), "split": split,
                   "catalog_split": catalog_split, "concurrency": concurrency, "photos": len(street),
                   "warmup_s": warmup_s, "gap_s": gap_s, "quiet_s": quiet_s, "cycles": cycles,
                   "allow_unverified": allow_unverified, "catalog_photos": len(records), "detector_onnx": str(detector_onnx), "embedder_onnx": str(embedder_onnx)},
        "environment": environment(),
        "events": events,
        "windows": windows_report(samples, ops, warmup_s),
        "embedder_swaps": swaps,
        "versions_seen": {
            "detector": sorted({s.detector for s in samples if s.ok}),
            "embedder": sorted({s.embedder for s in samples if s.ok and s.embedder}),
            "embedded": sum(1 for s in samples if s.ok and s.embedder),
        },
        "errors": sorted({s.error for s in samples if not s.ok})[:20],
        "samples": {"t": [round(s.t, 4) for s in samples], "latency_ms": [round(s.latency_ms, 3) for s in samples],
                    "ok": [s.ok for s in samples], "detector": [s.detector for s in samples],
                    "embedder": [s.embedder for s in samples], "catalog": [s.catalog for s in samples],
                    "searched": [s.searched for s in samples], "disk": [list(s.disk) for s in samples]},
        "pointer_changes": [[t, v] for t, v in pointer.changes[1:]],
    }
    return report


def write_report(report: dict[str, Any], out: Path, stem: str) -> list[Path]:
    return [atomic_write_json(out / f"{stem}.json", report), atomic_write_text(out / f"{stem}.md", markdown(report)),
            plot(report, out / f"{stem}.png")]




@app.command("swap")
def swap(
    ctx: typer.Context,
    photos: Path = typer.Option(..., "--photos", help="street2shop-format data: shop photos for the catalog, street photos for the load."),
    repository: Path = typer.Option(Path("model_repository"), "--repository", help="Model repository to copy and serve (not modified)."),
    work: Path = typer.Option(Path("runs/bench-swap"), "--work", help="Scratch folder (repository copy, catalogs, Triton's log)."),
    split: str = typer.Option("test", "--split", help="Split of the street photos sent."),
    catalog_split: str | None = typer.Option(None, "--catalog-split", help="Only products of this split in the catalog."),
    concurrency: int = typer.Option(2, "--concurrency", min=1, help="Closed-loop client threads."),
    n_photos: int = typer.Option(16, "--n-photos", min=1, help="Street photos cycled through."),
    warmup: float = typer.Option(5.0, "--warmup", min=0.0, help="Seconds of load before measuring."),
    gap: float = typer.Option(8.0, "--gap", min=0.5, help="Seconds of undisturbed load between operations."),
    quiet: float = typer.Option(2.0, "--quiet", min=0.1, help="Drain: seconds without old-version requests before unloading."),
    detector_onnx: Path | None = typer.Option(None, "--detector-onnx", help="New detector version (default: the serving file again)."),
    embedder_onnx: Path | None = typer.Option(None, "--embedder-onnx", help="New embedder version (default: the serving file again)."),
    cycles: int = typer.Option(1, "--cycles", min=1, help="Repeat promote, rollback and embedder swap (and swap back between cycles)."),
    max_s: float = typer.Option(420.0, "--max-s", min=10.0, help="Hard bound on the load's duration."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Directory for the JSON, Markdown and PNG outputs."),
    stem: str = typer.Option("swap_look", "--stem", help="Output file name stem."),
    note: str = typer.Option("", "--note", help="Free text for the report (e.g. how the new versions were made)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified",
                                          help="Promote new versions that did not come through the export parity gate."),
) -> None:
    """Look-chain latency under continuous load across detector promote/rollback and the embedder+catalog swap."""

    console = Console(soft_wrap=True)
    try:
        report = run_swap_bench(repository, photos, work, split=split, catalog_split=catalog_split,
                                concurrency=concurrency, photos=n_photos, warmup_s=warmup, gap_s=gap,
                                detector_onnx=detector_onnx, embedder_onnx=embedder_onnx, quiet_s=quiet, max_s=max_s,
                                cycles=cycles, allow_unverified=allow_unverified)
    except LookserveError as e:
        fail(e)
    report["command"] = command_line(ctx)
    report["note"] = note
    paths = write_report(report, out, stem)
    console.print(markdown(report))
    for p in paths:
        console.print(f"wrote {p}")


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app()
