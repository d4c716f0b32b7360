"""Fuzzing (hypothesis) of everything that reads untrusted bytes: image decoding and the JSON
loaders (street2shop meta files and products.json, footwear ground truth, catalog manifests).

Each target may fail only with its documented exception — ``InvalidInputError`` for images,
``DataError`` for data sets, ``CatalogError`` (and its subclasses) for catalogs. Any other
exception type (``KeyError``, ``TypeError``, ``struct.error``, ``RecursionError``, ...) fails the
test. Inputs are random bytes, valid files mutated (byte flips, splices, truncations) and valid
JSON documents with one value replaced by arbitrary JSON (NaN, infinities, huge integers, wrong
types, deep nesting). Bounded: ``max_examples`` per test keeps the module within ~30 s.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookserve.client.catalog import Catalog, EmbedderInfo, IndexParams, PhotoRecord, write_catalog
from lookserve.data import footwear, street2shop
from lookserve.errors import CatalogError, DataError, InvalidInputError
from lookserve.images import DecodeLimits, decode_image, to_rgb
from lookserve.taxonomy import FOOTWEAR_TYPES, VIEWS

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True, database=None)
FUZZ_SMALL = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                      derandomize=True, database=None)

#: small limits: a mutated header claiming a huge size is refused before any pixel is decoded
LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=1_000_000, max_side=4096)
#: every format Pillow can write here, to fuzz decoders a deployment might allow-list
ALL_FORMATS = DecodeLimits(max_bytes=1 << 20, max_pixels=1_000_000, max_side=4096,
                           formats=frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"}))


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------
def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {}
    for name, img, fmt, kw in [
        ("jpeg", rgb, "JPEG", {"quality": 80}),
        ("jpeg-exif", rgb, "JPEG", {"exif": exif}),
        ("jpeg-cmyk", rgb.convert("CMYK"), "JPEG", {}),
        ("jpeg-progressive", rgb, "JPEG", {"progressive": True}),
        ("png", rgb, "PNG", {}),
        ("png-rgba", rgb.convert("RGBA"), "PNG", {}),
        ("png-palette", rgb.quantize(8), "PNG", {}),
        ("png-16bit", Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16)), "PNG", {}),
        ("png-exif", rgb, "PNG", {"exif": exif}),
        ("webp", rgb, "WEBP", {"quality": 80}),
        ("webp-lossless", rgb.convert("RGBA"), "WEBP", {"lossless": True}),
        ("bmp", rgb, "BMP", {}),
        ("gif", rgb.quantize(8), "GIF", {}),
        ("tiff", rgb, "TIFF", {}),
        ("tiff-deflate", rgb, "TIFF", {"compression": "tiff_adobe_deflate"}),
    ]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()
    return out


SEEDS = _seed_images()


@st.composite
def mutated_bytes(draw, seeds: dict[str, bytes]) -> bytes:
    """A valid file with 1–4 mutations: truncation, byte flips, random splices, chunk repeats."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "splice", "repeat", "zero-run"]))
        n = len(data)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1))
        if op == "truncate":
            del data[i:]
        elif op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "splice":
            data[i : i + draw(st.integers(0, 8))] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
        else:
            data[i : i + 8] = b"\xff" * len(data[i : i + 8])
    return bytes(data)


def _assert_decoded(out: np.ndarray, limits: DecodeLimits) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert 1 <= out.shape[0] * out.shape[1] <= limits.max_pixels


def _decode_or_invalid(data: bytes, limits: DecodeLimits) -> None:
    try:
        out = decode_image(data, limits)
    except InvalidInputError as e:
        assert str(e), "an InvalidInputError must name the problem"
        return
    _assert_decoded(out, limits)


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"GIF89a")
@example(b"II*\x00")
@example(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
def test_decode_raises_only_invalid_input_when_bytes_are_random(data: bytes) -> None:
    _decode_or_invalid(data, LIMITS)
    _decode_or_invalid(data, ALL_FORMATS)


@FUZZ
@given(mutated_bytes(SEEDS))
def test_decode_raises_only_invalid_input_when_a_valid_file_is_mutated(data: bytes) -> None:
    _decode_or_invalid(data, LIMITS)


@FUZZ
@given(mutated_bytes(SEEDS))
def test_decode_raises_only_invalid_input_when_gif_and_tiff_are_allowed_and_mutated(data: bytes) -> None:
    _decode_or_invalid(data, ALL_FORMATS)


@FUZZ_SMALL
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_decode_raises_only_invalid_input_when_a_valid_file_is_truncated(name: str, data) -> None:
    whole = SEEDS[name]
    cut = data.draw(st.integers(0, len(whole) - 1))
    _decode_or_invalid(whole[:cut], ALL_FORMATS)


def test_decode_returns_rgb_when_every_seed_is_intact() -> None:
    # the mutation corpus starts from files that decode (GIF/TIFF only where allowed)
    for name, data in SEEDS.items():
        _assert_decoded(decode_image(data, ALL_FORMATS), ALL_FORMATS)
        if name.startswith(("gif", "tiff")):
            with pytest.raises(InvalidInputError, match="allowed format"):
                decode_image(data, LIMITS)


@FUZZ_SMALL
@given(st.sampled_from(["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV",
                        "I", "I;16", "I;16B", "F"]),
       st.integers(1, 5), st.integers(1, 5), st.integers(0, 255))
def test_to_rgb_returns_rgb_uint8_when_mode_is_any_pillow_mode(mode: str, w: int, h: int, value: int) -> None:
    img = Image.new(mode, (w, h))
    out = to_rgb(img)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------------------------
# JSON documents
# ------------------------------------------------------------------------------------------
_KEYS = ["photo", "product", "bbox", "left", "top", "width", "height", "id", "split", "images", "path", "shoe_id",
         "view", "type", "best_view", "format", "dim", "space", "embedder", "name", "version", "categories",
         "files", "sha256", "bytes", "count", "ef", "k", "params", "M", "counts"]
_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=12) | st.sampled_from(["tops", "front", "lace-up", "train", "1", "-3", "1e400", ""]))
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6),
                                                                       children, max_size=4),
    max_leaves=12,
)


def _paths(doc, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate_structure(data, doc):
    """Replace, delete or retype the value at one random path of ``doc`` (a deep copy)."""
    doc = json.loads(json.dumps(doc))
    path = data.draw(st.sampled_from(_paths(doc)))
    op = data.draw(st.sampled_from(["replace", "delete", "wrap", "stringify"]))
    if not path:
        return data.draw(JSON_VALUES) if op != "wrap" else [doc]
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace":
        parent[last] = data.draw(JSON_VALUES)
    elif op == "delete":
        del parent[last]
    elif op == "wrap":
        parent[last] = [parent[last]]
    else:
        parent[last] = str(parent[last])
    return doc


@st.composite
def mutated_json_text(draw, doc) -> str:
    """Valid JSON with one structural change, or its text damaged (truncated, bytes replaced)."""
    kind = draw(st.sampled_from(["structure", "structure", "text"]))
    if kind == "structure":
        return json.dumps(_mutate_structure(draw(st.data()), doc), allow_nan=True)
    text = json.dumps(doc)
    i = draw(st.integers(0, max(0, len(text) - 1)))
    if draw(st.booleans()):
        return text[:i]
    return text[:i] + draw(st.text(max_size=6)) + text[i + draw(st.integers(0, 6)):]


HOSTILE_TEXTS = [
    "[" * 100_000,  # nesting deeper than the parser's recursion limit
    "[" + "9" * 5000 + "]",  # an integer over Python's digit limit (ValueError, not JSONDecodeError)
    "\ufeff[]",  # a UTF-8 BOM
    "NaN",
    "",
]


# --- street2shop ---------------------------------------------------------------------------
_BB = {"left": 1, "top": 2, "width": 10, "height": 12}
_S2S_DOCS = {
    "meta/json/train_pairs_tops.json": [{"photo": 1, "product": 10, "bbox": _BB}, {"photo": 2, "product": 11, "bbox": _BB}],
    "meta/json/retrieval_tops.json": [{"product": 10, "photo": 100}, {"product": 11, "photo": 101}],
    "products.json": [{"id": 10, "split": "train", "colour": "red"}, {"id": 11, "split": "test"}],
}


@pytest.fixture(scope="module")
def s2s_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-s2s-"))
    (root / "photos").mkdir()
    (root / "photos" / "photos.txt").write_text("".join(f"{i},images/{i}.jpg\n" for i in (1, 2, 100, 101)))
    (root / "images").mkdir()
    for i in (1, 2, 100, 101):
        (root / "images" / f"{i}.jpg").write_bytes(b"")  # existence is all the loader checks
    (root / "meta" / "json").mkdir(parents=True)
    for rel, doc in _S2S_DOCS.items():
        (root / rel).write_text(json.dumps(doc))
    assert len(street2shop.load(root).pairs) == 2
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _load_with(path: Path, text: str, original: Any, load: Callable[[], Any], error: type[Exception]) -> Any:
    """``load()`` with ``text`` written to ``path`` (``original`` written back after): what it
    returns, or None when it raised ``error`` naming the problem."""
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load()
    except error as e:
        assert str(e)
        return None
    finally:
        path.write_text(json.dumps(original))


def _load_s2s_or_data_error(root: Path, rel: str, text: str) -> None:
    ds = _load_with(root / rel, text, _S2S_DOCS[rel], lambda: street2shop.load(root), DataError)
    if ds is None:
        return
    for p in ds.pairs:  # what loads is well-formed
        assert isinstance(p.photo, int) and isinstance(p.product, int)
        assert all(np.isfinite(v) for v in p.bbox.xywh()) and p.bbox.width > 0 and p.bbox.height > 0


@FUZZ
@given(st.sampled_from(sorted(_S2S_DOCS)), st.data())
def test_street2shop_load_raises_only_data_error_when_a_json_file_is_mutated(s2s_root: Path, rel: str, data) -> None:
    _load_s2s_or_data_error(s2s_root, rel, data.draw(mutated_json_text(_S2S_DOCS[rel])))


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=["deep", "bigint", "bom", "nan", "empty"])
@pytest.mark.parametrize("rel", sorted(_S2S_DOCS))
def test_street2shop_load_raises_only_data_error_when_json_text_is_hostile(s2s_root: Path, rel: str, text: str) -> None:
    _load_s2s_or_data_error(s2s_root, rel, text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1e400", "-Infinity"])
def test_street2shop_load_raises_data_error_when_bbox_is_not_finite(s2s_root: Path, value) -> None:
    rel = "meta/json/train_pairs_tops.json"
    doc = json.loads(json.dumps(_S2S_DOCS[rel]))
    doc[0]["bbox"]["width"] = value
    with pytest.raises(DataError, match=r"train_pairs_tops\.json\[0\]: bbox values must be finite"):
        _load_s2s_or_raise(s2s_root, rel, json.dumps(doc, allow_nan=True))


def _load_s2s_or_raise(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.write_text(text)
    try:
        street2shop.load(root)
    finally:
        path.write_text(json.dumps(_S2S_DOCS[rel]))


@FUZZ_SMALL
@given(st.lists(st.text(max_size=30), max_size=5))
def test_street2shop_load_raises_only_data_error_when_photos_txt_is_random(s2s_root: Path, lines: list[str]) -> None:
    path = s2s_root / "photos" / "photos.txt"
    good = path.read_bytes()
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        street2shop.load(s2s_root)
    except DataError:
        pass
    finally:
        path.write_bytes(good)


# --- footwear ground truth -------------------------------------------------------------------
_GT = {"images": [
    {"path": "views/s1/a.jpg", "shoe_id": "s1", "view": "front", "type": "lace-up", "split": "train", "best_view": True},
    {"path": "views/s1/b.jpg", "shoe_id": "s1", "view": "sole", "type": "lace-up", "split": "train", "best_view": False},
]}


@pytest.fixture(scope="module")
def fw_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-fw-"))
    (root / "footwear" / "views" / "s1").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (root / "footwear" / "views" / "s1" / name).write_bytes(b"")
    (root / "footwear" / "ground_truth.json").write_text(json.dumps(_GT))
    assert len(footwear.load_views(root)["s1"]) == 2
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _load_fw_or_data_error(root: Path, text: str) -> None:
    views = _load_with(root / "footwear" / "ground_truth.json", text, _GT, lambda: footwear.load_views(root), DataError)
    if views is None:
        return
    assert [v.rel for v in views["s1"]] == ["views/s1/a.jpg", "views/s1/b.jpg"]
    for v in views["s1"]:  # what loads carries a known view and type, a split and a true/false best view
        assert v.view in VIEWS and v.type in FOOTWEAR_TYPES, (v.view, v.type)
        assert isinstance(v.split, str) and isinstance(v.best_view, bool), (v.split, v.best_view)


@FUZZ
@given(mutated_json_text(_GT))
def test_footwear_load_views_raises_only_data_error_when_ground_truth_is_mutated(fw_root: Path, text: str) -> None:
    _load_fw_or_data_error(fw_root, text)


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=["deep", "bigint", "bom", "nan", "empty"])
def test_footwear_load_views_raises_only_data_error_when_ground_truth_is_hostile(fw_root: Path, text: str) -> None:
    _load_fw_or_data_error(fw_root, text)


# --- catalog manifest ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog_dir() -> Iterator[tuple[Path, dict]]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-cat-"))
    rng = np.random.default_rng(0)
    records = [PhotoRecord(i, "tops" if i % 3 else "bags", f"{i}.jpg", None, f"p{i}") for i in range(30)]
    v = rng.normal(size=(30, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    write_catalog(root / "catalog", records, v, EmbedderInfo("embedder", "1"), IndexParams(M=8, ef_construction=32))
    manifest = json.loads((root / "catalog" / "manifest.json").read_text())
    yield root / "catalog", manifest
    shutil.rmtree(root, ignore_errors=True)


def _open_or_catalog_error(path: Path, manifest: dict, text: str) -> None:
    catalog = _load_with(path / "manifest.json", text, manifest, lambda: Catalog.open(path), CatalogError)
    if catalog is None:
        return
    # a manifest that opens must still describe the files: searching answers or refuses cleanly
    for category in catalog.categories:
        q = np.ones((1, catalog.dim), np.float32)
        labels, _ = catalog.search_labels(category, q, 1)
        assert labels.shape == (1, 1)


@settings(FUZZ, report_multiple_bugs=False)
@given(st.data())
def test_catalog_open_raises_only_catalog_error_when_manifest_is_mutated(catalog_dir, data) -> None:
    path, manifest = catalog_dir
    _open_or_catalog_error(path, manifest, data.draw(mutated_json_text(manifest)))


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_catalog_open_raises_only_catalog_error_when_manifest_text_is_hostile(catalog_dir, text: str) -> None:
    path, manifest = catalog_dir
    _open_or_catalog_error(path, manifest, text)
