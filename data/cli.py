"""``lookserve data ...``: generate, bench, preview, download and inspect street2shop-format data.

Nothing heavy is imported at module level (OpenCV and friends load inside the commands).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path

import cv2
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from lookserve.cliutil import fail, stdout_console
from lookserve.data import difficulty as Dif
from lookserve.data import download as D
from lookserve.data import pretrained as PT
from lookserve.data import preview as P
from lookserve.data import street2shop
from lookserve.data import synth as S
from lookserve.errors import LookserveError

app = typer.Typer(no_args_is_help=True, help="Generate, load, download and preview street2shop-format data.")


def _console() -> Console:
    return stdout_console()


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output data set directory."),
    seed: int = typer.Option(0, "--seed", help="Same seed → byte-identical files."),
    preset: str = typer.Option("small", "--preset", help="tiny | small | default"),
    n_products: int = typer.Option(None, "--products", help="Override the preset's number of catalog products."),
    n_street: int = typer.Option(None, "--street", help="Override the preset's number of street photos."),
    n_shoes: int = typer.Option(None, "--shoes", help="Override the preset's number of footwear view sets."),
    street_size: int = typer.Option(None, "--street-size", help="Street photo side in pixels (default 384)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty OUT."),
    workers: int = typer.Option(1, "--workers", help="Processes rendering street photos (same files for any number)."),
) -> None:
    """Generate a street2shop-format data set with exact ground truth."""


    if not overwrite and out.is_dir() and any(out.iterdir()):
        fail(f"{out} exists and is not empty; pass --overwrite to replace it")
    try:
        config = S.SynthConfig.preset(preset)
        over = {k: v for k, v in {"n_products": n_products, "n_street": n_street, "n_shoes": n_shoes,
                                  "street_size": street_size}.items() if v is not None}
        config = dataclasses.replace(config, **over)
        root = S.generate(out, config, seed, overwrite=overwrite, progress=True, workers=workers)
    except LookserveError as e:
        fail(e)
    info = json.loads((root / "dataset.json").read_text())
    t = Table(title=f"{root} (seed {seed}, preset {preset})")
    t.add_column("what")
    t.add_column("count", justify="right")
    for k, v in info["counts"].items():
        t.add_row(k, str(v))
    t.add_row("hard-negative ratio", f"{info['hard_negative_ratio']:.2f}")
    _console().print(t)


@app.command()
def bench(
    n: int = typer.Option(200, "--n", help="Street photos per repeat."),
    repeats: int = typer.Option(3, "--repeats"),
    size: int = typer.Option(384, "--size"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", help="Also write the figures as JSON here."),
) -> None:
    """Street-photo generation speed on one core (rendering + JPEG + mask RLE; no disk write)."""

    c = _console()
    res = S.bench_street(n=n, seed=seed, size=size, repeats=repeats,
                         on_repeat=lambda r, rate: c.print(f"repeat {r + 1}/{repeats}: {rate:.1f} photos per CPU-second"))

    res.update({"python": sys.version.split()[0], "numpy": np.__version__, "opencv": cv2.__version__,
                "machine": platform.machine(), "processor": platform.processor() or platform.machine()})
    t = Table(title=f"street photo generation, {size}x{size}, 1 core (OpenCV 1 thread)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("photos per CPU-second (median of repeats)", f"{res['photos_per_cpu_s_median']:.1f}")
    t.add_row("photos per CPU-second, each repeat", ", ".join(str(x) for x in res["photos_per_cpu_s_each"]))
    t.add_row("photos per wall-second (median)", f"{res['photos_per_wall_s_median']:.1f}")
    t.add_row("CPU ms/photo median", f"{res['cpu_ms_per_photo_median']:.2f}")
    t.add_row("CPU ms/photo p99", f"{res['cpu_ms_per_photo_p99']:.2f}")
    t.add_row("load average (1 min) / cores", f"{res['load_average_1min']} / {res['cpu_count']}")
    c.print(t)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")


@app.command()
def info(data: Path = typer.Option(..., "--data", help="Data set root (street2shop layout).")) -> None:
    """Load a data set (generated or real) and print what it holds, including skipped rows."""

    try:
        ds = street2shop.load(data)
    except LookserveError as e:
        fail(e)
    s = ds.summary()
    t = Table(title=f"{data}")
    t.add_column("category")
    for split in ("train", "val", "test"):
        t.add_column(f"{split} pairs", justify="right")
    for cat, v in s["per_category"].items():
        t.add_row(cat, *(str(v.get(split, 0)) for split in ("train", "val", "test")))
    c = _console()
    c.print(t)
    c.print(f"{s['pairs']} pairs, {s['street_photos']} street photos, {s['products_with_pairs']} products in pairs, "
            f"{s['shop_photos']} shop photos; {s['missing_rows']} rows skipped for missing images")


@app.command()
def preview(
    data: Path = typer.Option(..., "--data", help="Data set root."),
    out: Path = typer.Option(..., "--out", help="Where the contact-sheet PNGs go."),
    n: int = typer.Option(12, "--n", help="Street photos / shoes to show."),
    fmt: str = typer.Option("png", "--format", help="png or jpg (smaller, for docs)."),
) -> None:
    """Contact sheets: street photos with masks + boxes, shop photos per category, footwear views."""

    try:
        files = P.write_previews(data, out, n, fmt)
    except LookserveError as e:
        fail(e)
    for f in files:
        _console().print(f"wrote {f}")


@app.command()
def download(
    data: Path = typer.Option(..., "--data", help="Data set root: photos/photos.txt in, images/<id>.jpg out."),
    photos: Path = typer.Option(None, "--photos", help="The id,url list (default DATA/photos/photos.txt)."),
    workers: int = typer.Option(8, "--workers", help="Concurrent downloads."),
    retries: int = typer.Option(3, "--retries", help="Extra attempts after a transient failure."),
    backoff: float = typer.Option(1.0, "--backoff", help="Seconds before the first retry (doubles each time)."),
    timeout: float = typer.Option(20.0, "--timeout", help="Seconds per request."),
    only_referenced: bool = typer.Option(False, "--only-referenced", help="Only photos used by meta/json pairs/retrieval files."),
    limit: int = typer.Option(None, "--limit", help="At most this many photos (the lowest ids): a trial run."),
    verify: bool = typer.Option(False, "--verify", help="On resume, fully decode every present image (slow)."),
) -> None:
    """Download the real street2shop photos (resumable), then select the usable pairs."""

    try:
        config = D.DownloadConfig(workers=workers, retries=retries, backoff_s=backoff, timeout_s=timeout, verify_existing=verify)
        ids = D.referenced_ids(data) if only_referenced else None
        if limit is not None:
            pool = sorted(ids) if ids is not None else sorted(street2shop.read_photos_txt(photos or data / "photos" / "photos.txt"))
            ids = set(pool[:limit])
        rep = D.download(data, config, photos, ids=ids, progress=True)
        c = _console()
        c.print(f"downloaded {len(rep.downloaded)}, already present {len(rep.already_present)}, "
                f"failed {len(rep.failed)} ({rep.attempts} attempts, {rep.seconds:.1f}s); report: {data / D.REPORT}")
        if (data / "meta" / "json").is_dir():
            doc = D.select_pairs(data)
            s = doc["summary"]
            c.print(f"usable pairs: {s['pairs']} ({s['street_photos']} street photos); "
                    f"{s['missing_rows']} rows skipped for missing images; written to {data / D.USABLE}")
    except LookserveError as e:
        fail(e)


@app.command()
def difficulty(
    data: Path = typer.Option(..., "--data", help="Data set root."),
    split: str = typer.Option("test", "--split", help="Which pairs are the queries."),
    k: int = typer.Option(6, "--k"),
    out: Path = typer.Option(None, "--out", help="Also write the figures as JSON here."),
) -> None:
    """A no-learning colour-histogram retrieval baseline: how far colour alone gets."""

    try:
        res = Dif.colour_baseline(data, split, k)
    except LookserveError as e:
        fail(e)
    t = Table(title=f"colour-histogram street→shop retrieval, {split} pairs of {data}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("queries", str(res["queries"]))
    t.add_row("top-1 hit rate", f"{res['top1']:.3f}")
    t.add_row(f"top-{k} hit rate", f"{res[f'top{k}']:.3f}")
    t.add_row("gallery products per category (median)",
              str(int(sorted(res["gallery_products_per_category"].values())[len(res["gallery_products_per_category"]) // 2])))
    t.add_row("top-1 errors inside the query's hard-negative group", f"{res['top1_errors_in_hard_negative_group']:.3f}")
    _console().print(t)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")


@app.command()
def pretrained() -> None:
    """Fetch (once) and verify the pretrained MediaPipe models lookserve uses (Apache-2.0).

    The mediapipe wheel is downloaded with pip into the cache (~/.cache/lookserve, or
    $LOOKSERVE_CACHE) and only its .tflite files are kept; a no-op when they are cached."""

    try:
        paths = PT.prepare_all()
    except LookserveError as e:
        fail(e)
    typer.echo(f"MediaPipe {PT.MEDIAPIPE_VERSION} models ({PT.MEDIAPIPE_LICENCE}), sha256 verified:")
    for path in paths.values():
        typer.echo(f"  {path}")
