"""Client-side work of one shop-the-look request, stage by stage, without the server.

Times exactly the library calls :class:`lookserve.client.look.LookPipeline` makes around its two
requests — decode, letterbox to 512, crops from the original to 224, HNSW top-6 search with the
SQLite join, JSON serialisation — on seeded synthetic photos, and prints medians and p99 in ms.

    .venv/bin/python client/results/client_stage_timings.py > client/results/client_stage_timings.json

The server side (detector, embedder) needs the trained models; ``lookserve bench`` measures it.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lookserve.client.catalog import Catalog, EmbedderInfo, IndexParams, PhotoRecord, write_catalog
from lookserve.images import crop_box, decode_image, letterbox


def _photo(rng: np.random.Generator, w: int, h: int) -> bytes:
    # smooth content (JPEG-typical) rather than white noise
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _time(fn, repeat: int) -> dict[str, float]:
    for _ in range(3):
        fn()
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3)}


def main(repeat: int = 100, catalog_size: int = 20_000, items: int = 3) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {"repeat": repeat, "items_per_photo": items, "catalog_size_per_category": catalog_size, "photos": {}}
    with tempfile.TemporaryDirectory() as tmp:
        records = [PhotoRecord(i, "tops", f"{i}.jpg", None) for i in range(catalog_size)]
        centres = rng.normal(size=(500, 128)).astype(np.float32)
        v = centres[rng.integers(0, 500, catalog_size)] + 0.7 * rng.normal(size=(catalog_size, 128)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        write_catalog(Path(tmp) / "c", records, v, EmbedderInfo("embedder", "1"), IndexParams(tune_sample=100))
        catalog = Catalog.open(Path(tmp) / "c")
        queries = v[:items] + 0.05 * rng.normal(size=(items, 128)).astype(np.float32)
        for w, h in ((384, 384), (1024, 768), (3000, 2000)):
            data = _photo(rng, w, h)
            image = decode_image(data)
            boxes = [np.array([w * 0.1 * (i + 1), h * 0.1, w * 0.1 * (i + 1) + w * 0.3, h * 0.8]) for i in range(items)]
            stages = {
                "decode": _time(lambda d=data: decode_image(d), repeat),
                "letterbox_512": _time(lambda im=image: letterbox(im, 512), repeat),
                "crops_224": _time(lambda im=image, bx=boxes: np.stack([crop_box(im, b, 224) for b in bx]), repeat),
                "search_top6_with_metadata": _time(lambda: catalog.search("tops", queries, 6), repeat),
                "to_json": _time(lambda: json.dumps({"m": catalog.search("tops", queries, 6)[0][0].to_dict()}), repeat),
            }
            stages["sum_median_ms"] = round(sum(s["median_ms"] for s in stages.values()), 3)
            out["photos"][f"{w}x{h} JPEG ({len(data)} bytes)"] = stages
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=2)
    sys.stdout.write("\n")
