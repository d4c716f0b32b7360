"""The embedder hot swap coupled with the catalog, on real Triton under load.

Client threads (and a separate client process) run the look chain continuously through a
:class:`CatalogWatcher` while ``swap_embedder`` publishes v2, loads both versions, builds
catalog-v2 with v2, flips the ``current`` pointer, waits for the clients and unloads v1.
Every result must pair the embedder version that answered with the catalog built by it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_look_chain import (
    CROP,
    DIM,
    shop_records,
    street_photo,
    write_look_models,
)
from test_models_swap import LoadThreads
from typer.testing import CliRunner

from lookserve import errors
from lookserve.cli import app
from lookserve.client import catalog as catalog_module
from lookserve.client.catalog import (
    Catalog,
    CatalogWatcher,
    EmbedderInfo,
    PhotoRecord,
    TritonEmbedder,
    build_catalog,
    read_current,
    set_current,
    write_catalog,
)
from lookserve.client.core import AsyncTritonClient, TritonClient
from lookserve.client.look import AsyncLookPipeline, LookPipeline
from lookserve.client.models import ModelRepository
from lookserve.client.swap import SwapOptions, swap_embedder
from lookserve.images import decode_image, resize_square
from tinymodels import projection_embedder, run_onnx

# the candidates here are ONNX files built by hand, not exports behind the parity gate: unverified
FAST = SwapOptions(quiet_s=0.5, max_wait_s=20.0, poll_s=0.05, batch_size=4, concurrency=2, allow_unverified=True)
PHOTO_SLOTS = [(230, "tops"), (220, "bags")]


# ------------------------------------------------------------------------------------------
# Without a server: the pointer and the watcher
# ------------------------------------------------------------------------------------------
def _offline_catalog(root: Path, version: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    records = [PhotoRecord(i, "tops", f"{i}.png", None) for i in range(20)]
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    write_catalog(root / f"catalog-v{version}", records, vectors, EmbedderInfo("embedder", version))
    return root / f"catalog-v{version}"


def test_watcher_follows_the_pointer_when_it_is_flipped(tmp_path: Path) -> None:
    _offline_catalog(tmp_path, "1", 0)
    _offline_catalog(tmp_path, "2", 1)
    set_current(tmp_path, "catalog-v1")
    swaps = []
    watcher = CatalogWatcher(tmp_path, interval_s=0.0, on_swap=lambda old, new: swaps.append((old.path.name, new.path.name)))
    held = watcher.get()
    assert held.embedder.version == "1"
    set_current(tmp_path, "catalog-v2")
    assert os.readlink(tmp_path / "current") == "catalog-v2"
    assert watcher.get().embedder.version == "2"
    assert swaps == [("catalog-v1", "catalog-v2")]
    # a catalog taken before the flip stays bound to its own directory
    assert held.path.name == "catalog-v1" and held.embedder.version == "1"
    # a root opens as the catalog its pointer names, resolved to the real directory
    assert Catalog.open(tmp_path).path == (tmp_path / "catalog-v2").resolve()


def test_watcher_keeps_the_old_catalog_when_the_pointer_names_a_damaged_one(tmp_path: Path) -> None:
    _offline_catalog(tmp_path, "1", 0)
    bad = _offline_catalog(tmp_path, "2", 1)
    set_current(tmp_path, "catalog-v1")
    watcher = CatalogWatcher(tmp_path, interval_s=0.0)
    with open(bad / "vectors_tops.npy", "r+b") as f:  # damage a file after its checksum was recorded
        f.seek(200)
        f.write(b"\xff\xff\xff\xff")
    set_current(tmp_path, "catalog-v2")
    assert watcher.get().embedder.version == "1"
    assert watcher.poll() is False and watcher.swaps == 0


def test_set_current_refuses_and_keeps_the_pointer_when_the_target_is_not_a_catalog(tmp_path: Path) -> None:
    _offline_catalog(tmp_path, "1", 0)
    set_current(tmp_path, "catalog-v1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.CatalogError, match="not a catalog"):
        set_current(tmp_path, "empty")
    with pytest.raises(errors.CatalogError, match="not inside the catalog root"):
        set_current(tmp_path, tmp_path.parent / "elsewhere")
    assert read_current(tmp_path).name == "catalog-v1"
    with pytest.raises(errors.CatalogError, match="no current pointer"):
        read_current(tmp_path / "empty")


# ------------------------------------------------------------------------------------------
# On real Triton
# ------------------------------------------------------------------------------------------
def _served(tmp_path: Path, triton_factory) -> dict:
    """detector + embedder v1 served; catalogs/catalog-v1 built through v1 and made current;
    a v2 candidate file (another projection) outside the repository."""
    repo = tmp_path / "repo"
    write_look_models(repo, embedder_seed=1)
    candidate = projection_embedder(tmp_path / "candidate" / "model.onnx", size=CROP, dim=DIM, seed=2)
    server = triton_factory(repo, models=["detector", "embedder"])
    shop = tmp_path / "shop"
    records = shop_records(shop, ["tops"] * 8 + ["bags"] * 6 + ["hats"] * 4, np.random.default_rng(7))
    root = tmp_path / "catalogs"
    with TritonClient(server.grpc_url) as client:
        build_catalog(records, root / "catalog-v1", TritonEmbedder(client, version="1"), batch_size=6,
                      model_repository=repo, images_root=shop)
    set_current(root, "catalog-v1")
    street = tmp_path / "street.png"
    Image.fromarray(street_photo(PHOTO_SLOTS)).save(street)
    return {"server": server, "repo": repo, "root": root, "records": records, "candidate": candidate,
            "shop": shop, "street": street}


class _Clients(LoadThreads):
    """Threads running the look chain through one CatalogWatcher; bounded loops."""

    def __init__(self, url: str, root: Path, street: Path, threads: int = 3) -> None:
        self.client = TritonClient(url, timeout_s=20)
        self.watcher = CatalogWatcher(root, self.client, interval_s=0.05)
        self.pipeline = LookPipeline(self.client, self.watcher)
        self.street = street
        self.results: list[tuple[float, float, str, str, str, int]] = []  # start, end (time.time()), answered, catalog's, path, items
        super().__init__(threads)

    def _run(self, i: int) -> None:
        self._loop(self._look)

    def _look(self) -> None:
        t0 = time.time()
        r = self.pipeline.run(self.street)
        self.results.append((t0, time.time(), r.model_versions.get("embedder", ""),
                             r.catalog_embedder["version"], r.catalog, len(r.items)))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.client.close()


def _manifest_version(catalog_path: str, cache: dict) -> str:
    if catalog_path not in cache:
        cache[catalog_path] = json.loads((Path(catalog_path) / "manifest.json").read_text())["embedder"]["version"]
    return cache[catalog_path]


def _assert_never_mixed(rows) -> None:
    """Each result's answering embedder version == the version in the manifest of the catalog it searched."""
    cache: dict = {}
    for _, _, answered, recorded, path, items in rows:
        assert items == len(PHOTO_SLOTS)
        assert answered == recorded == _manifest_version(path, cache), (answered, recorded, path)


@pytest.mark.triton
def test_swap_embedder_moves_clients_to_v2_without_failures_or_mixed_results_when_under_load(
    tmp_path: Path, triton_factory
) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url
    with TritonClient(url, repository_key=s["server"].repository_key) as admin, _Clients(url, s["root"], s["street"]) as load:
        report = swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=s["candidate"], options=FAST,
                               images_root=s["shop"])
        t_done = time.time()
        time.sleep(0.4)
        loaded = ModelRepository(s["repo"]).loaded_versions(admin, "embedder")
    assert load.failures == []
    _assert_never_mixed(load.results)
    assert {r[2] for r in load.results} == {"1", "2"}
    assert all(r[2] == "2" for r in load.results if r[0] > t_done)  # clients ended on v2
    # while both versions were loaded (v2 is the highest), requests still got v1: the chain asks for
    # its catalog's version explicitly
    both = [r for r in load.results if r[0] > report.step("load_both").ended and r[1] < report.step("flip").started]
    assert both and {r[2] for r in both} == {"1"}
    assert (report.old_version, report.new_version, report.serving, report.drained) == (1, 2, (2,), True)
    assert [st.name for st in report.steps] == ["publish", "load_both", "build", "flip", "drain", "unload"]
    assert loaded == (2,)
    assert ModelRepository(s["repo"]).serving_versions("embedder") == (2,)
    assert read_current(s["root"]).name == "catalog-v2"
    assert load.watcher.swaps == 1
    # catalog-v2 holds v2's embeddings (and they differ from v1's)
    r = s["records"][0]
    crop = resize_square(decode_image(r.path), CROP)[None]
    (v2,) = run_onnx(s["candidate"], {"crops": crop})
    (v1,) = run_onnx(s["repo"] / "embedder" / "1" / "model.onnx", {"crops": crop})
    stored = Catalog.open(s["root"] / "catalog-v2").vectors(r.category)[0]
    np.testing.assert_allclose(stored, v2[0], atol=1e-5)
    assert not np.allclose(v1[0], v2[0], atol=1e-2)
    assert [e.action for e in ModelRepository(s["repo"]).history("embedder")] == ["publish", "promote", "retire"]
    assert json.loads((s["root"] / "swaps.jsonl").read_text().splitlines()[-1])["new_version"] == 2


_CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from lookserve.client.catalog import CatalogWatcher
    from lookserve.client.core import TritonClient
    from lookserve.client.look import LookPipeline
    from lookserve.errors import LookserveError

    url, root, street, out, stop = sys.argv[1:6]
    with TritonClient(url, timeout_s=20) as client, open(out, "a", buffering=1) as f:
        pipeline = LookPipeline(client, CatalogWatcher(root, client, interval_s=0.05))
        deadline = time.monotonic() + 90
        while not os.path.exists(stop) and time.monotonic() < deadline:
            try:
                t0 = time.time()
                r = pipeline.run(street)
                f.write(json.dumps({"answered": r.model_versions.get("embedder"), "catalog": r.catalog,
                                    "recorded": r.catalog_embedder["version"], "items": len(r.items),
                                    "t0": t0, "t1": time.time()}) + "\\n")
            except LookserveError as e:
                f.write(json.dumps({"error": str(e)}) + "\\n")
    """
)


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.triton
def test_swap_embedder_is_picked_up_by_a_running_client_process_when_no_restart_happens(
    tmp_path: Path, triton_factory
) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url
    script, out, stop = tmp_path / "client.py", tmp_path / "client.jsonl", tmp_path / "stop"
    script.write_text(_CLIENT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), url, str(s["root"]), str(s["street"]), str(out), str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: len(_lines(out)) >= 3, 60), "the client process never answered"
        with TritonClient(url, repository_key=s["server"].repository_key) as admin:
            report = swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=s["candidate"], options=FAST,
                                   images_root=s["shop"])
        n = len(_lines(out))
        assert _wait_for(lambda: len(_lines(out)) >= n + 3, 30)
        stop.touch()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, proc.stdout.read().decode(errors="replace")[-2000:]
    rows = _lines(out)
    assert [r for r in rows if "error" in r] == []
    _assert_never_mixed([(0, 0, r["answered"], r["recorded"], r["catalog"], r["items"]) for r in rows])
    assert rows[0]["answered"] == "1" and rows[-1]["answered"] == "2"
    answered = [r["answered"] for r in rows]
    assert answered == sorted(answered)  # once on v2, never back on v1
    # picked up: no request the process started a watcher interval (+ slack) after the flip went to v1
    flip, drain = report.step("flip"), report.step("drain")
    assert [r for r in rows if r["answered"] == "1" and r["t0"] > flip.ended + 0.05 + 0.5] == []
    # so v1 drained without a restart, and the requests it answered after the flip are at most
    # those of the process's v1 requests that were still running when the drain began
    late_v1 = [r for r in rows if r["answered"] == "1" and r["t1"] >= drain.started]
    assert report.drained and report.serving == (2,)
    assert report.old_requests_after_flip <= len(late_v1), (report.old_requests_after_flip, late_v1)


@pytest.mark.triton
def test_swap_embedder_leaves_v1_and_its_catalog_serving_when_the_new_version_is_bad(
    tmp_path: Path, triton_factory
) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    # a file Triton cannot load, put in place behind publish's back
    (s["repo"] / "embedder" / "3").mkdir()
    (s["repo"] / "embedder" / "3" / "model.onnx").write_bytes(b"corrupt")
    models = ModelRepository(s["repo"])
    config_before = (s["repo"] / "embedder" / "config.pbtxt").read_text()
    with TritonClient(url, repository_key=s["server"].repository_key) as admin, _Clients(url, s["root"], s["street"]) as load:
        with pytest.raises(errors.PublishError, match="not a valid ONNX model"):
            swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=bad, options=FAST)
        with pytest.raises(errors.PublishError, match="swap aborted.*version 1 and catalog-v1 keep serving"):
            swap_embedder(admin, s["repo"], s["root"], s["records"], version=3, options=FAST)
        time.sleep(0.3)
        loaded = models.loaded_versions(admin, "embedder")
    assert load.failures == []
    _assert_never_mixed(load.results)
    assert {r[2] for r in load.results} == {"1"} and len(load.results) > 3
    assert loaded == (1,)
    assert (s["repo"] / "embedder" / "config.pbtxt").read_text() == config_before
    assert read_current(s["root"]).name == "catalog-v1"
    assert not (s["root"] / "catalog-v3").exists()


@pytest.mark.triton
def test_swap_embedder_retires_v2_and_keeps_the_old_pair_when_the_catalog_build_is_interrupted(
    tmp_path: Path, triton_factory, monkeypatch
) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url
    models = ModelRepository(s["repo"])
    real_embed = TritonEmbedder.embed
    calls = {"n": 0}

    def interrupted(self, crops):
        calls["n"] += 1
        if calls["n"] == 3:  # the probe, one batch, then Ctrl-C
            raise KeyboardInterrupt
        return real_embed(self, crops)

    options = replace(FAST, concurrency=1)
    with TritonClient(url, repository_key=s["server"].repository_key) as admin, _Clients(url, s["root"], s["street"]) as load:
        monkeypatch.setattr(catalog_module.TritonEmbedder, "embed", interrupted)
        with pytest.raises(KeyboardInterrupt):
            swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=s["candidate"], options=options)
        monkeypatch.setattr(catalog_module.TritonEmbedder, "embed", real_embed)
        time.sleep(0.3)
        loaded_after_failure = models.loaded_versions(admin, "embedder")
        pointer_after_failure = read_current(s["root"]).name
        partial = (s["root"] / "catalog-v2.partial").is_dir()
        # the rerun (version 2 is published already) resumes the build and completes the swap
        report = swap_embedder(admin, s["repo"], s["root"], s["records"], version=2, options=options,
                               images_root=s["shop"])
    assert load.failures == []
    _assert_never_mixed(load.results)
    assert loaded_after_failure == (1,) and pointer_after_failure == "catalog-v1" and partial
    assert report.serving == (2,) and read_current(s["root"]).name == "catalog-v2"
    assert {r[2] for r in load.results} == {"1", "2"}


@pytest.mark.triton
def test_look_moves_a_request_to_the_current_pair_when_its_embedder_version_was_retired_mid_request(
    tmp_path: Path, triton_factory
) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url

    async def scenario():
        async with AsyncTritonClient(url) as aclient:
            with TritonClient(url, repository_key=s["server"].repository_key) as admin, TritonClient(url) as client:
                # clients that have not looked at the pointer since before the swap (long interval)
                watcher = CatalogWatcher(s["root"], client, interval_s=3600)
                pipeline = LookPipeline(client, watcher)
                async_watcher = CatalogWatcher(s["root"], client, interval_s=3600)
                async_pipeline = await AsyncLookPipeline.create(aclient, async_watcher)
                assert pipeline.run(s["street"]).model_versions["embedder"] == "1"
                assert (await async_pipeline.run(s["street"])).model_versions["embedder"] == "1"
                swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=s["candidate"], options=FAST)
                assert ModelRepository(s["repo"]).loaded_versions(admin, "embedder") == (2,)
                # both start on catalog-v1; v1 is gone at the embedder
                return [pipeline.run(s["street"]), await async_pipeline.run(s["street"])], [watcher, async_watcher]

    results, watchers = asyncio.run(scenario())
    for result in results:
        assert result.model_versions["embedder"] == "2" and result.catalog_embedder["version"] == "2"
        assert Path(result.catalog).name == "catalog-v2"
    assert [w.swaps for w in watchers] == [1, 1]
    _assert_never_mixed([(0, 0, r.model_versions["embedder"], r.catalog_embedder["version"], r.catalog, len(r.items))
                         for r in results])


@pytest.mark.triton
def test_swap_embedder_keeps_both_versions_loaded_when_a_client_does_not_follow_the_pointer(
    tmp_path: Path, triton_factory
) -> None:
    s = _served(tmp_path, triton_factory)
    url = s["server"].grpc_url
    pinned = Catalog.open(s["root"] / "catalog-v1")  # a client bound to catalog-v1 for good
    failures, answered, stop = [], [], threading.Event()

    def old_client() -> None:
        with TritonClient(url, timeout_s=20) as c:
            pipeline = LookPipeline(c, pinned)
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answered.append(pipeline.run(s["street"]).model_versions["embedder"])
                except errors.LookserveError as e:
                    failures.append(e)

    thread = threading.Thread(target=old_client)
    thread.start()
    try:
        with TritonClient(url, repository_key=s["server"].repository_key) as admin:
            with pytest.raises(errors.PublishError, match="still answered requests.*both versions stay loaded"):
                swap_embedder(admin, s["repo"], s["root"], s["records"], onnx_path=s["candidate"],
                              options=replace(FAST, max_wait_s=1.5))
            loaded = ModelRepository(s["repo"]).loaded_versions(admin, "embedder")
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
    assert failures == [] and set(answered) == {"1"}
    assert loaded == (1, 2)
    assert read_current(s["root"]).name == "catalog-v2"
    last = json.loads((s["root"] / "swaps.jsonl").read_text().splitlines()[-1])
    assert last["drained"] is False and last["old_requests_after_flip"] > 0


@pytest.mark.triton
def test_models_cli_swaps_the_embedder_and_shows_the_pointer_when_run_by_the_operator(
    tmp_path: Path, triton_factory, monkeypatch
) -> None:

    s = _served(tmp_path, triton_factory)
    monkeypatch.setenv("LOOKSERVE_REPOSITORY_KEY", s["server"].repository_key)
    # the shop photos as a folder with metadata.csv, as an operator would give them
    (s["shop"] / "metadata.csv").write_text(
        "id,category,image,title\n" + "".join(f"{r.product_id},{r.category},{r.image},{r.title}\n" for r in s["records"])
    )
    runner = CliRunner()
    result = runner.invoke(app, ["models", "swap-embedder", "--catalog-root", str(s["root"]), "--onnx", str(s["candidate"]),
                                 "--photos", str(s["shop"]), "--model-repository", str(s["repo"]),
                                 "--url", s["server"].grpc_url, "--quiet", "0.5", "--batch-size", "4",
                                 "--allow-unverified"])  # hand-built ONNX files, as FAST says
    assert result.exit_code == 0, result.output
    assert "version 1 (catalog-v1) -> version 2 (catalog-v2); serving [2]" in result.output
    shown = runner.invoke(app, ["models", "catalog-current", "--catalog-root", str(s["root"])])
    assert shown.exit_code == 0 and "-> catalog-v2 (embedder version 2)" in shown.output
    # a look client given the root follows the pointer (and keeps looking at it with --watch-interval)
    looked = runner.invoke(app, ["look", str(s["street"]), "--catalog", str(s["root"]), "--watch-interval", "0",
                                 "--url", s["server"].grpc_url, "--out", str(tmp_path / "look")])
    assert looked.exit_code == 0, looked.output
    answer = json.loads((tmp_path / "look" / "street.json").read_text())
    assert Path(answer["catalog"]).name == "catalog-v2" and answer["model_versions"]["embedder"] == "2"
    assert (tmp_path / "look" / "street.png").is_file()
    # swapping back reuses catalog-v1 (still valid for version 1)
    back = runner.invoke(app, ["models", "swap-embedder", "--catalog-root", str(s["root"]), "--version", "1",
                               "--reuse-catalog", "--model-repository", str(s["repo"]), "--url", s["server"].grpc_url,
                               "--quiet", "0.5", "--allow-unverified"])
    assert back.exit_code == 0, back.output
    assert read_current(s["root"]).name == "catalog-v1"
    bad = runner.invoke(app, ["models", "swap-embedder", "--catalog-root", str(s["root"]), "--version", "1",
                              "--model-repository", str(s["repo"]), "--url", s["server"].grpc_url])
    assert bad.exit_code == 2 and "already serves" in bad.output
