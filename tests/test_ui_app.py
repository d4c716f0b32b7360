"""The web page's logic through Streamlit's AppTest, against a real Triton with tiny models.

One Triton serves the tiny detector and embedder of test_look_chain and the tiny view
classifier of test_thumbnails_chain; a catalog is built through it. Expected values come from
the client library called directly on the same inputs, never from constants.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_look_chain import (
    module_triton,
    shop_records,
    street_photo,
    write_look_models,
)
from test_thumbnails_chain import SIZE, tiny_view_classifier

from lookserve import contracts
from lookserve.client.catalog import TritonEmbedder, build_catalog, open_for_client
from lookserve.client.catalog.store import manifest_checksum
from lookserve.client.core import TritonClient
from lookserve.client.look import LookPipeline
from lookserve.client.thumbnails import ThumbnailPipeline
from lookserve.server.launcher import free_port
from lookserve.ui import logic
from tinymodels import write_model

pytestmark = pytest.mark.triton

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
LOOK_PHOTO = "look1.png"  # two garments the catalog has (tops, bags) and one it lacks (belts)
LOOK_SLOTS = [(230, "tops"), (200, "bags"), (220, "belts")]
BROKEN_PHOTO = "broken.jpg"  # a truncated JPEG among the samples


def write_samples(root: Path, seed: int = 11) -> Path:
    """A plain samples folder: street/<photo> and footwear/<product>/<view>."""
    rng = np.random.default_rng(seed)
    (root / "street").mkdir(parents=True)
    Image.fromarray(street_photo(LOOK_SLOTS, seed=seed)).save(root / "street" / LOOK_PHOTO)
    Image.fromarray(street_photo([(100, "tops")], seed=seed + 1)).save(root / "street" / "weak.png")  # below 0.75
    (root / "street" / BROKEN_PHOTO).write_bytes(_truncated_jpeg())
    for p in range(2):
        d = root / "footwear" / f"shoe{p:02d}"
        d.mkdir(parents=True)
        for v in range(4):
            colour = rng.integers(0, 256, 3)
            img = np.clip(colour + rng.integers(-20, 21, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"view{v}.png")
    return root


@pytest.fixture(scope="module")
def ui_served(tmp_path_factory):
    """Triton with detector + embedder + view_classifier (tiny), a catalog and samples."""
    root = tmp_path_factory.mktemp("ui")
    repo = root / "repo"
    write_look_models(repo)
    write_model(repo, replace(contracts.view_classifier_config(image_size=SIZE), warmup=()), tiny_view_classifier)
    server = module_triton(repo, root / "triton", ("detector", "embedder", "view_classifier"))
    try:
        shop = root / "shop"
        records = shop_records(shop, ["tops"] * 10 + ["bags"] * 8 + ["hats"] * 4, np.random.default_rng(5),
                               lambda i: {"colour": ["red", "blue"][i % 2], "size": i})
        with TritonClient(server.grpc_url) as client:
            build_catalog(records, root / "catalog", TritonEmbedder(client), batch_size=8, concurrency=2,
                          model_repository=repo, images_root=shop)
        yield {"server": server, "url": server.grpc_url, "repo": repo, "catalog": root / "catalog",
               "samples": write_samples(root / "samples"), "root": root}
    finally:
        server.stop()


def app_for(monkeypatch, url: str, catalog: Path | None, samples: Path | None, **query) -> AppTest:
    config = logic.UiConfig(url=url, catalog=catalog, samples=samples, timeout_s=20.0)
    for name, value in config.to_env().items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(APP), default_timeout=60)
    for name, value in query.items():
        at.query_params[name] = value
    return at


def expected_look(ui_served, photo: Path):
    with TritonClient(ui_served["url"]) as client:
        catalog = open_for_client(ui_served["catalog"], client)
        return LookPipeline(client, catalog).run(photo)


def image_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n" + "\n".join(c.value for c in at.caption)


def no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# ------------------------------------------------------------------------------------------
def test_page_renders_items_and_matches_when_sample_picked_by_query(ui_served, monkeypatch) -> None:
    at = app_for(monkeypatch, ui_served["url"], ui_served["catalog"], ui_served["samples"], sample=LOOK_PHOTO)
    at.run()
    no_failure(at)
    want = expected_look(ui_served, ui_served["samples"] / "street" / LOOK_PHOTO)
    assert [i.detection.category for i in want.items] == ["tops", "bags"]  # belts: not in the catalog
    captions = image_captions(at)
    # the annotated photo first, then every item's matches in rank order, as the chain ranked them
    assert captions[0].startswith(f"{LOOK_PHOTO} — {want.width}×{want.height}, 2 item(s) kept, 1 dropped")
    expected = [f"#{r + 1} · product {m.product_id} · sim {m.similarity:.3f}"
                for item in want.items for r, m in enumerate(item.matches)]
    assert captions[1:] == expected
    assert len(expected) == 2 * 6
    text = markdown_text(at)
    for item in want.items:
        assert f"{item.detection.category} · detector score {item.detection.score:.2f}" in text
        for m in item.matches:  # product metadata from the catalog's SQLite
            assert m.title in text
            assert f"colour: {m.attributes['colour']}" in text
    for stage in ("decode", "detect", "embed", "search", "total"):
        assert f"| {stage} |" in text
    assert "detector v1 · embedder v1" in text
    dropped = want.dropped[0].detection
    assert f"{dropped.category} {dropped.score:.2f}: category not in catalog" in text


def test_page_applies_min_score_and_k_when_changed_in_sidebar(ui_served, monkeypatch) -> None:
    at = app_for(monkeypatch, ui_served["url"], ui_served["catalog"], ui_served["samples"], sample="weak.png")
    at.run()
    no_failure(at)
    assert any("No garment passed the filters" in w.value for w in at.warning)
    at.slider(key="min_score").set_value(0.3)
    at.number_input(key="k").set_value(3)
    at.run()
    no_failure(at)
    captions = image_captions(at)
    assert captions[0].endswith("1 item(s) kept, 0 dropped")
    assert [c.split(" · ")[0] for c in captions[1:]] == ["#1", "#2", "#3"]


def test_page_shows_thumbnail_ranked_views_and_type_when_product_picked(ui_served, monkeypatch) -> None:
    at = app_for(monkeypatch, ui_served["url"], ui_served["catalog"], ui_served["samples"], mode="thumbnails")
    at.run()
    no_failure(at)
    at.selectbox(key=logic.QUERY_PRODUCT).set_value("shoe01")
    at.run()
    no_failure(at)
    views = sorted((ui_served["samples"] / "footwear" / "shoe01").iterdir())
    with TritonClient(ui_served["url"]) as client:
        want = ThumbnailPipeline(client).run("shoe01", views)
    assert at.metric[0].value == want.footwear_type
    captions = image_captions(at)
    assert captions[0] == f"thumbnail of shoe01: {Path(want.thumbnail).name} (best view {want.best_view:.3f})"
    ranked = sorted(want.views, key=lambda v: -v.best_view)
    assert captions[1:] == [
        f"#{r + 1} {Path(v.image).name} · best view {v.best_view:.3f}" + (" · thumbnail" if v.image == want.thumbnail else "")
        for r, v in enumerate(ranked)
    ]
    text = markdown_text(at)
    assert f"probability {want.type_probability:.3f}" in text
    assert "view_classifier v1" in text
    assert "| classify |" in text


def test_page_classifies_uploaded_views_when_several_files_uploaded(ui_served, monkeypatch) -> None:
    at = app_for(monkeypatch, ui_served["url"], ui_served["catalog"], ui_served["samples"], mode="thumbnails")
    at.run()
    views = sorted((ui_served["samples"] / "footwear" / "shoe00").iterdir())
    at.file_uploader(key="thumb_upload").set_value([(v.name, v.read_bytes(), "image/png") for v in views])
    at.run()
    no_failure(at)
    with TritonClient(ui_served["url"]) as client:
        want = ThumbnailPipeline(client).run("shoe00", views)
    assert at.metric[0].value == want.footwear_type
    assert image_captions(at)[0].startswith(f"thumbnail of uploaded product: {Path(want.thumbnail).name} ")


def test_page_names_the_bad_view_when_one_of_several_uploads_is_not_an_image(ui_served, monkeypatch) -> None:
    at = app_for(monkeypatch, ui_served["url"], ui_served["catalog"], ui_served["samples"], mode="thumbnails")
    at.run()
    views = sorted((ui_served["samples"] / "footwear" / "shoe00").iterdir())
    files = [(v.name, v.read_bytes(), "image/png") for v in views] + [("readme.md", b"# not a shoe", "text/markdown")]
    at.file_uploader(key="thumb_upload").set_value(files)
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith("Bad input: 'readme.md' cannot be used")
    assert not at.metric  # no half result


def test_page_shows_error_not_exception_when_server_down(ui_served, monkeypatch) -> None:
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    at = app_for(monkeypatch, url, ui_served["catalog"], ui_served["samples"], sample=LOOK_PHOTO)
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith("Triton is not reachable")
    assert url in at.error[0].value


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels, with a one-pixel body (a bomb's header)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize(("name", "data", "problem"), [
    ("notes.txt", b"this is not an image", "not an image"),
    ("cut.jpg", _truncated_jpeg(), "truncated"),
    ("bomb.png", _png_claiming(20_000, 20_000), "decompression bomb"),
    ("empty.png", b"", "empty"),
    ("big.jpg", b"\xff" * (logic.MAX_UPLOAD_MB * 1024 * 1024 + 1), "over the limit"),
])
def test_page_names_the_problem_when_upload_is_bad(ui_served, monkeypatch, name, data, problem) -> None:
    at = app_for(monkeypatch, ui_served["url"], ui_served["catalog"], ui_served["samples"])
    at.run()
    no_failure(at)
    at.file_uploader(key="look_upload").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert message.startswith("Bad input:")
    assert name in message and problem in message


def test_page_names_the_catalog_problem_when_catalog_missing_or_foreign(ui_served, monkeypatch, tmp_path) -> None:
    at = app_for(monkeypatch, ui_served["url"], tmp_path / "nowhere", ui_served["samples"], sample=LOOK_PHOTO)
    at.run()
    assert not at.exception
    assert at.error[0].value.startswith("The catalog cannot be used")
    assert "does not exist" in at.error[0].value

    foreign = tmp_path / "foreign"
    shutil.copytree(ui_served["catalog"], foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["embedder"]["version"] = "7"  # built by an embedder version the server does not serve
    manifest["checksum"] = manifest_checksum(manifest)  # a catalog written this way, not a damaged one
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    at = app_for(monkeypatch, ui_served["url"], foreign, ui_served["samples"], sample=LOOK_PHOTO)
    at.run()
    assert not at.exception
    assert at.error[0].value.startswith("The catalog belongs to another embedder version")
    assert "version 7" in at.error[0].value
    # thumbnails do not need the catalog and still work
    at = app_for(monkeypatch, ui_served["url"], foreign, ui_served["samples"], mode="thumbnails", product="shoe00")
    at.run()
    no_failure(at)
    assert at.metric[0].value
