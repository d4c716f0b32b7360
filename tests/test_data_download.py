"""The downloader against a local HTTP server (a thread on 127.0.0.1) that serves good, broken,
truncated, slow and non-image URLs."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lookserve.data import download as D
from lookserve.data import street2shop
from lookserve.errors import ConfigError


def _jpeg(value: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((40, 40, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class _Server:
    """Routes: /good/N.jpg, /png.png, /flaky/N.jpg (503 twice, then the image), /missing (404),
    /truncated (Content-Length says more than is sent), /cut.jpg (half a JPEG, no length),
    /slow.jpg (longer than the client timeout), /html (an HTML page)."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: int | None = None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                with server.lock:
                    server.hits[self.path] += 1
                    n = server.hits[self.path]
                p = self.path
                if p.startswith("/good/"):
                    self._send(200, _jpeg(int(p.split("/")[-1].split(".")[0]) % 250))
                elif p == "/png.png":
                    self._send(200, _png(), "image/png")
                elif p.startswith("/flaky/"):
                    if n <= 2:
                        self._send(503, b"busy", "text/plain")
                    else:
                        self._send(200, _jpeg(77))
                elif p == "/truncated":
                    body = _jpeg(10)
                    self._send(200, body[: len(body) // 2], length=len(body))
                    self.close_connection = True
                elif p == "/cut.jpg":
                    body = _jpeg(200)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif p == "/slow.jpg":
                    time.sleep(1.5)
                    self._send(200, _jpeg(5))
                elif p == "/html":
                    self._send(200, b"<html><body>gone</body></html>", "text/html")
                else:
                    self._send(404, b"not found", "text/plain")

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that gave up (timeouts): expected
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    with _Server() as s:
        yield s


FAST = D.DownloadConfig(workers=4, retries=2, backoff_s=0.05, timeout_s=0.5)


def _layout(root: Path, url: str) -> Path:
    """Street photo 1 shows products 10 and 11; street photo 2 shows product 11.
    Product 10's only shop photo (102) is an HTML page; product 11's are 103 (good) and 104 (404)."""
    photos = {1: f"{url}/good/1.jpg", 2: f"{url}/flaky/2.jpg", 102: f"{url}/html", 103: f"{url}/png.png",
              104: f"{url}/missing", 105: f"{url}/truncated", 106: f"{url}/cut.jpg", 107: f"{url}/slow.jpg",
              108: f"{url}/good/108.jpg"}
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "photos.txt").write_text("".join(f"{k},{v}\n" for k, v in photos.items()))
    meta = root / "meta" / "json"
    meta.mkdir(parents=True)
    bb = {"left": 0, "top": 0, "width": 8, "height": 8}
    (meta / "train_pairs_bags.json").write_text(json.dumps(
        [{"photo": 1, "product": 10, "bbox": bb}, {"photo": 1, "product": 11, "bbox": bb}, {"photo": 2, "product": 11, "bbox": bb}]))
    (meta / "retrieval_bags.json").write_text(json.dumps(
        [{"product": 10, "photo": 102}, {"product": 11, "photo": 103}, {"product": 11, "photo": 104},
         {"product": 12, "photo": 105}, {"product": 12, "photo": 106}, {"product": 13, "photo": 107}, {"product": 13, "photo": 108}]))
    return root


def test_download_keeps_only_decodable_images_and_names_each_failure(tmp_path, server):
    root = _layout(tmp_path, server.url)
    rep = D.download(root, FAST)
    assert sorted(rep.downloaded) == [1, 2, 103, 108]
    assert set(rep.failed) == {102, 104, 105, 106, 107}
    assert rep.failed[104] == "HTTP 404"
    assert "not a decodable image" in rep.failed[102] and "not a decodable image" in rep.failed[106]
    assert "truncated" in rep.failed[105]
    assert "timed out" in rep.failed[107].lower() or "timeout" in rep.failed[107].lower()
    for pid in rep.downloaded:  # every kept file decodes, the PNG became a JPEG
        with Image.open(root / "images" / f"{pid}.jpg") as im:
            im.load()
            assert im.format == "JPEG"
    assert not list((root / "images").glob(".*"))  # no temp files left
    assert sorted(int(p.stem) for p in (root / "images").glob("*.jpg")) == [1, 2, 103, 108]
    report = json.loads((root / D.REPORT).read_text())
    assert set(report["failed"]) == {"102", "104", "105", "106", "107"}


def test_download_retries_with_backoff_when_server_answers_503(tmp_path, server):
    root = _layout(tmp_path, server.url)
    D.download(root, FAST, ids={2})
    assert server.hits["/flaky/2.jpg"] == 3 and (root / "images" / "2.jpg").is_file()
    assert server.hits.get("/missing", 0) == 0


def test_download_does_not_retry_when_server_answers_404(tmp_path, server):
    root = _layout(tmp_path, server.url)
    rep = D.download(root, FAST, ids={104})
    assert server.hits["/missing"] == 1 and rep.failed == {104: "HTTP 404"}


def test_download_resumes_without_refetching_when_images_are_present(tmp_path, server):
    root = _layout(tmp_path, server.url)
    D.download(root, FAST, ids={1, 108, 103})
    good = (root / "images" / "108.jpg").read_bytes()
    (root / "images" / "108.jpg").write_bytes(good[: len(good) // 2])  # a file cut later is fetched again
    hits = Counter(server.hits)
    rep = D.download(root, FAST, ids={1, 108, 103})
    assert sorted(rep.already_present) == [1, 103] and rep.downloaded == [108]
    assert server.hits["/good/1.jpg"] == hits["/good/1.jpg"]
    assert server.hits["/good/108.jpg"] == hits["/good/108.jpg"] + 1


def test_select_pairs_keeps_shared_street_photo_when_one_products_shop_url_fails(tmp_path, server):
    root = _layout(tmp_path, server.url)
    D.download(root, FAST)
    doc = D.select_pairs(root)
    usable = sorted((p["photo"], p["product"]) for p in doc["pairs"]["bags"]["train"])
    assert usable == [(1, 11), (2, 11)]  # (1, 10) lost its shop photo, photo 1 still serves (1, 11)
    assert (root / "images" / "1.jpg").is_file()
    assert {(s["photo"], s["reason"]) for s in doc["skipped"]} >= {(1, "no shop image of the product")}
    ds = street2shop.load(root)
    assert sorted((p.photo, p.product) for p in ds.pairs) == usable
    assert json.loads((root / D.USABLE).read_text())["summary"]["pairs"] == 2


def test_download_config_rejects_zero_workers():
    with pytest.raises(ConfigError, match="workers"):
        D.DownloadConfig(workers=0)
