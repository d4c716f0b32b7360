"""Hardening on real Triton: a server slower than the client's deadline, every image mode and
odd size through the look chain, empty folders and missing or foreign catalogs at the CLI, a
catalog build that fails (disk full, interrupted) over a serving catalog, and the repository key
kept out of errors and logs.

The look-chain cases reuse the tiny detector/embedder of ``test_look_chain`` (its ``served``
fixture starts one Triton for this module).
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_look_chain import PAD_Y, ROW, D, H, S, _got, _pipeline, img_bytes, served, street_photo  # noqa: F401 - served is a fixture
from typer.testing import CliRunner

from lookserve import contracts, errors
from lookserve.cli import app
from lookserve.client import catalog as cat
from lookserve.client.catalog import Catalog, TritonEmbedder, build_catalog, open_for_client
from lookserve.client.core import ClientOptions, RetryPolicy, TritonClient
from lookserve.client.look import FilterConfig
from lookserve.images import decode_image
from lookserve.modelconfig import DynamicBatching
from lookserve.taxonomy import CATEGORIES
from tinymodels import projection_embedder, write_model

pytestmark = pytest.mark.triton


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# a server slower than the deadline
# ------------------------------------------------------------------------------------------
def test_client_gets_deadline_exceeded_within_its_deadline_when_the_server_is_slower(tmp_path: Path, triton_factory) -> None:
    # The dynamic batcher waits up to 3 s for a batch of 32 that never comes: a slow server,
    # with nothing test-only in the model or the backend.
    size = 16
    config = replace(contracts.embedder_config(dim=8, crop_size=size), warmup=(),
                     dynamic_batching=DynamicBatching(max_queue_delay_microseconds=3_000_000, preferred_batch_sizes=(32,)))
    write_model(tmp_path / "repo", config, lambda p: projection_embedder(p, size=size, dim=8))
    server = triton_factory(tmp_path / "repo", models=["embedder"])
    crops = np.zeros((1, size, size, 3), np.uint8)
    deadline = 0.5
    with TritonClient(ClientOptions(url=server.grpc_url, timeout_s=deadline, retry=RetryPolicy(attempts=3))) as client:
        start = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded, match="DEADLINE_EXCEEDED"):
            client.infer("embedder", {"crops": crops})
        elapsed = time.monotonic() - start
        assert deadline * 0.9 <= elapsed < deadline + 0.5  # not retried, no hang
        # the same client answers once the deadline allows for the server's pace
        assert client.infer("embedder", {"crops": crops}, timeout_s=10).outputs["embedding"].shape == (1, 8)
        assert client.is_live()


# ------------------------------------------------------------------------------------------
# image modes, EXIF orientation and odd sizes through the look chain
# ------------------------------------------------------------------------------------------
ANSWER = [(230, "tops"), (240, "bags")]


@pytest.mark.parametrize("orientation, stored", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, 1)),
                                                 (8, lambda a: np.rot90(a, -1))])
def test_look_answers_as_for_the_upright_photo_when_exif_orientation_is_set(served, orientation, stored) -> None:  # noqa: F811
    img = street_photo(ANSWER, seed=41)
    exif = Image.Exif()
    exif[0x0112] = orientation
    rotated = _encode(Image.fromarray(np.ascontiguousarray(stored(img))), "PNG", exif=exif)
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        upright, tagged = pipe.run(img_bytes(img)), pipe.run(rotated)
    assert (tagged.width, tagged.height) == (upright.width, upright.height) == (S, img.shape[0])
    assert [i.detection.category for i in tagged.items] == ["tops", "bags"]
    assert _got(tagged) == _got(upright)


def test_look_answers_as_for_rgb_when_rgba_is_opaque_where_it_matters(served) -> None:  # noqa: F811
    img = street_photo(ANSWER, seed=42)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:3, :, 3] = 0  # transparent top rows composite on white
    expected = img.copy()
    expected[:3] = 255
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        got, want = pipe.run(_encode(Image.fromarray(rgba, "RGBA"))), pipe.run(img_bytes(expected))
    assert [i.detection.category for i in got.items] == ["tops", "bags"]
    assert _got(got) == _got(want)


def grey_photo() -> np.ndarray:
    """A photo whose detector answer survives any grey conversion: R = G = B everywhere. The
    answer row says two detections (blue 20 // 10): slot 0 grey 20 (a "belts", absent from the
    catalog), slot 1 grey 5 (a "bags"); scores are low, so the score filter is off in these runs."""
    grey = np.full((H, S), 120, np.uint8)
    grey[2:10, 5:30] = 60
    grey[20:36, 34:60] = 180
    r = ROW - PAD_Y
    grey[r, :D] = 0
    grey[r, 0], grey[r, 1] = 20, 5
    return np.repeat(grey[..., None], 3, axis=2)


def _modes(img: np.ndarray) -> dict[str, tuple[bytes, bool]]:
    """mode → (encoded bytes, lossless)."""
    rgb = Image.fromarray(img)
    grey16 = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
    return {
        "L": (_encode(rgb.convert("L")), True),
        "LA": (_encode(rgb.convert("LA")), True),
        "P": (_encode(rgb.quantize(16)), True),
        "P-transparency": (_encode(rgb.convert("L").quantize(16), transparency=200), True),
        "RGBA": (_encode(rgb.convert("RGBA")), True),
        "I;16": (_encode(Image.fromarray(grey16)), True),
        "webp": (_encode(rgb, "WEBP", lossless=True), True),
        "bmp": (_encode(rgb, "BMP"), True),
        "CMYK-jpeg": (_encode(rgb.convert("CMYK"), "JPEG", quality=100), False),
        "L-jpeg": (_encode(rgb.convert("L"), "JPEG", quality=100), False),
    }


def test_look_answers_every_image_mode_as_the_rgb_photo_when_mode_is_not_rgb(served) -> None:  # noqa: F811
    img = grey_photo()
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served, filter=FilterConfig(use_min_score=False))
        want = pipe.run(img_bytes(img))
        assert [i.detection.category for i in want.items] == ["bags"]
        assert [d.detection.category for d in want.dropped] == ["belts"]
        for mode, (data, lossless) in _modes(img).items():
            got = pipe.run(data)
            assert (got.width, got.height) == (S, img.shape[0]), mode
            if lossless:  # the same pixels, so the same answer
                np.testing.assert_array_equal(decode_image(data), img, err_msg=mode)
                assert _got(got) == _got(want), mode
            else:  # lossy: the answer of its own RGB decoding
                assert _got(got) == _got(pipe.run(img_bytes(decode_image(data)))), mode
                assert [i.detection.category for i in got.items] == ["bags"], mode


def test_look_keeps_lossless_modes_exact_when_only_the_container_changes(served) -> None:  # noqa: F811
    img = street_photo(ANSWER, seed=44)
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        want = _got(pipe.run(img_bytes(img)))
        for fmt, kw in (("WEBP", {"lossless": True}), ("BMP", {})):
            assert _got(pipe.run(_encode(Image.fromarray(img), fmt, **kw))) == want, fmt


@pytest.mark.parametrize("h, w", [(1, 1), (1, 300), (300, 1), (2, S)])
def test_look_returns_a_result_when_the_photo_is_tiny_or_a_thin_strip(served, h: int, w: int) -> None:  # noqa: F811
    # one colour that reads, where it reaches the detector's answer row, as "one tops at 0.9"
    colour = (230, 20 * CATEGORIES.index("tops") + 5, 10)
    data = _encode(Image.fromarray(np.full((h, w, 3), colour, np.uint8)))
    with TritonClient(served["server"].grpc_url) as client:
        result = _pipeline(client, served).run(data)
    assert (result.width, result.height) == (w, h)
    for d in [i.detection for i in result.items] + [d.detection for d in result.dropped]:
        assert 0 <= d.box[0] <= d.box[2] <= w and 0 <= d.box[1] <= d.box[3] <= h
    assert all(len(i.matches) == 6 for i in result.items)
    if (h, w) == (2, S):  # the answer row is content: one item, cropped from a 2-pixel-high strip
        assert [i.detection.category for i in result.items] == ["tops"]
    if (h, w) == (1, 1):  # the box shrinks below a pixel: dropped, not an error
        assert result.items == () and [d.reason for d in result.dropped] == ["empty_box"]


def test_look_refuses_huge_dimensions_and_keeps_serving_when_a_bomb_is_sent(served) -> None:  # noqa: F811
    bombs = {
        "side": _encode(Image.new("L", (20_000, 1))),  # over 16384 per side, a few hundred bytes
        "pixels": _encode(Image.new("1", (9_000, 9_000))),  # 81 MP of 1-bit pixels, ~10 kB of PNG
    }
    with TritonClient(served["server"].grpc_url) as client:
        pipe = _pipeline(client, served)
        for name, data in bombs.items():
            assert len(data) < 100_000, name
            with pytest.raises(errors.InvalidInputError, match="decompression bomb"):
                pipe.run(data)
        assert [i.detection.category for i in pipe.run(img_bytes(street_photo(ANSWER, seed=45))).items] == ["tops", "bags"]


# ------------------------------------------------------------------------------------------
# the CLI: empty folders, missing and foreign catalogs
# ------------------------------------------------------------------------------------------
def _cli(*args: str):
    return CliRunner().invoke(app, [*args])


def test_catalog_build_cli_names_the_folder_when_it_is_empty(served, tmp_path: Path) -> None:  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("catalog", "build", str(empty), "--out", str(tmp_path / "cat"), "--url", served["server"].grpc_url)
    assert res.exit_code == 2, res.output
    assert "empty" in res.output and "neither a street2shop data set" in res.output
    assert not (tmp_path / "cat").exists()


def test_thumbnails_cli_names_the_folder_when_it_is_empty(served, tmp_path: Path) -> None:  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("thumbnails", str(empty), "--out", str(tmp_path / "out"), "--url", served["server"].grpc_url)
    assert res.exit_code == 2, res.output
    assert "no product folders with images" in res.output and "empty" in res.output


def test_look_cli_names_the_folder_when_it_is_empty(served, tmp_path: Path) -> None:  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("look", str(empty), "--catalog", str(served["catalog"]), "--url", served["server"].grpc_url,
               "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert "no images" in res.output and "empty" in res.output


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: None, "is not a catalog: manifest.json is missing"),
        (lambda d: d.mkdir(), "is not a catalog: manifest.json is missing"),
        (lambda d: (d.mkdir(), (d / "manifest.json").write_text('{"name": "my-other-app", "version": 3}')),
         "catalog manifest is malformed"),
        (lambda d: (d.mkdir(), (d / "manifest.json").write_text('{"format": 99}')), "catalog format 99 is not supported"),
        (lambda d: (d.mkdir(), (d / "manifest.json").write_text("<html>not json</html>")), "is not valid JSON"),
    ],
    ids=["missing", "empty-folder", "foreign-manifest", "future-format", "not-json"],
)
def test_look_cli_explains_and_exits_2_when_the_catalog_is_missing_or_foreign(served, tmp_path: Path, make,  # noqa: F811
                                                                              fragment: str) -> None:
    catalog_dir = tmp_path / "catalog"
    make(catalog_dir)
    photo = tmp_path / "street.png"
    Image.fromarray(street_photo(ANSWER, seed=46)).save(photo)
    res = _cli("look", str(photo), "--catalog", str(catalog_dir), "--url", served["server"].grpc_url,
               "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert fragment in " ".join(res.output.split()), res.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# a catalog build that fails over the serving catalog
# ------------------------------------------------------------------------------------------
def _look_ids(client, served_, catalog_dir: Path) -> list:
    pipe = _pipeline(client, {**served_, "catalog": catalog_dir})
    return _got(pipe.run(img_bytes(street_photo(ANSWER, seed=47))))


def _disk_full_in_save_vectors(monkeypatch) -> None:
    real_save = cat.store.save_vectors

    def save(path, *blocks):
        Path(path).write_bytes(b"\x93NUMPY partial")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cat.store, "save_vectors", save)
    assert real_save is not save


def _interrupt_before_switch(monkeypatch) -> None:
    def switch(new_dir, target):
        raise KeyboardInterrupt("interrupted just before the switch")

    monkeypatch.setattr(cat.store, "switch_into_place", switch)


@pytest.mark.parametrize(("fault", "raises"), [(_disk_full_in_save_vectors, OSError), (_interrupt_before_switch, KeyboardInterrupt)],
                         ids=["disk-full", "interrupted"])
def test_catalog_rebuild_leaves_the_serving_catalog_intact_when_the_write_fails(served, tmp_path: Path, monkeypatch,  # noqa: F811
                                                                                fault, raises) -> None:
    live = tmp_path / "catalog"
    shutil.copytree(served["catalog"], live)
    before = {p.name: p.read_bytes() for p in live.iterdir()}
    with TritonClient(served["server"].grpc_url) as client:
        answer_before = _look_ids(client, served, live)
        fault(monkeypatch)
        with pytest.raises(raises):
            build_catalog(served["records"][:10], live, TritonEmbedder(client), batch_size=5, model_repository=served["repo"])
        monkeypatch.undo()
        assert {p.name: p.read_bytes() for p in live.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []  # no half-written catalog left
        open_for_client(live, client, served["repo"])  # verifies every checksum
        assert _look_ids(client, served, live) == answer_before
        # the embeddings already paid for are kept for the next attempt
        assert cat.partial_dir_for(live).exists()
        manifest = build_catalog(served["records"][:10], live, TritonEmbedder(client), batch_size=5,
                                 model_repository=served["repo"])
    assert manifest.counts["photos"] == 10 and Catalog.open(live).manifest.counts["photos"] == 10


# ------------------------------------------------------------------------------------------
# the repository key stays out of errors and logs
# ------------------------------------------------------------------------------------------
def test_repository_key_appears_in_no_error_and_no_log_when_calls_fail(tmp_path: Path, triton_factory, caplog) -> None:
    key = "k3y-" + "Zq9" * 8
    wrong = "wr0ng-" + "Xy7" * 8
    write_model(tmp_path / "repo", replace(contracts.embedder_config(dim=8, crop_size=16), warmup=()),
                lambda p: projection_embedder(p, size=16, dim=8))
    caplog.set_level(logging.DEBUG)
    server = triton_factory(tmp_path / "repo", models=["embedder"], repository_key=key, log_verbose=1)
    texts: list[str] = []
    for client_key, call in [
        (None, lambda c: c.repository_index()),
        (wrong, lambda c: c.unload_model("embedder")),
        (wrong, lambda c: c.load_model("embedder")),
        (key, lambda c: c.load_model("no_such_model")),
        (key, lambda c: c.infer("embedder", {"crops": np.zeros((1, 7, 7, 3), np.uint8)})),
    ]:
        with TritonClient(server.grpc_url, repository_key=client_key, timeout_s=5) as client:
            with pytest.raises(errors.LookserveError) as caught:
                call(client)
            texts += [str(caught.value), repr(caught.value), str(caught.value.__cause__), repr(client.options)]
    with TritonClient(server.grpc_url, repository_key=key) as admin:  # the right key works
        assert {m["name"] for m in admin.repository_index()} == {"embedder"}
    server.stop()
    log_text = server.log_file.read_text(errors="replace")
    assert "restricted" in " ".join(texts).lower() or "refused" in " ".join(texts).lower()
    for secret in (key, wrong):
        assert secret not in log_text
        assert all(secret not in t for t in texts)
        assert secret not in caplog.text


def test_look_cli_prints_a_file_name_with_brackets_as_text_when_the_file_is_bad(served, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "street[").mkdir()
    bad = tmp_path / "street[/b].png"  # a folder "street[" holding "b].png": the path reads "[/b]"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = _cli("look", str(bad), "--catalog", str(served["catalog"]), "--url", served["server"].grpc_url,
               "--out", str(tmp_path / "out"), "--no-render")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert "street[/b].png is truncated or corrupt" in " ".join(res.output.split())
