"""The CLI as a newcomer meets it: readable help at 80 columns, a wrong --url answered at once,
plain errors on stderr with exit 2, batch commands that exit 1 naming each failed input, readable
catalog and history output, a rollback that walks back, and the per-address repository key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from test_look_chain import served, street_photo  # noqa: F401 - the module-scoped Triton fixture
from typer.testing import CliRunner

from lookserve import contracts
from lookserve.cli import app
from lookserve.client.core import TritonClient
from lookserve.client.models import ModelRepository
from lookserve.errors import ServerStartError
from lookserve.keys import KEY_ENVVAR, KeyFile, key_file_for, read_key
from lookserve.server.launcher import free_port
from tinymodels import projection_embedder, write_model


def _cli(*args: str, width: int = 200):
    return CliRunner().invoke(app, [*args], terminal_width=width)


def _photo(path: Path) -> Path:
    Image.new("RGB", (16, 16), (90, 40, 20)).save(path)
    return path


# ------------------------------------------------------------------------------------------
# help
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["look"], ["thumbnails"], ["serve"], ["catalog", "build"], ["catalog", "info"],
                                     ["models", "history"], ["models", "swap-embedder"], ["ui"]],
                         ids=lambda c: " ".join(c) or "top")
def test_help_shows_whole_option_names_within_80_columns_when_the_terminal_is_narrow(command: list[str]) -> None:
    res = _cli(*command, "--help", width=80)
    assert res.exit_code == 0, res.output
    assert "…" not in res.output  # nothing cut
    assert "<bool>" not in res.output  # plain flags take no value
    assert max(len(line) for line in res.output.splitlines()) <= 80
    if command == ["look"]:
        for name in ("--catalog-categories / --all-categories", "--best-per-category / --all-instances",
                     "--watch-interval", "--model-repository", "--progress / --no-progress"):
            assert name in res.output, name


def test_verbose_is_a_counted_flag_when_given_twice() -> None:
    res = _cli("-vv", "models", "--help", width=80)
    assert res.exit_code == 0, res.output
    top = _cli("--help", width=80).output
    assert re.search(r"-v, --verbose\s+-v for INFO, -vv for DEBUG", top), top  # no value, no "[default: 0]"


# ------------------------------------------------------------------------------------------
# --url
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "fragment"), [
    ("http://127.0.0.1:18001", "it has a scheme (http://); gRPC wants host:port"),
    ("127.0.0.1:99999", "its port '99999' is not a number from 1 to 65535"),
], ids=["scheme", "bad-port"])
def test_look_refuses_a_malformed_url_at_once_with_exit_2_when_it_is_not_host_port(tmp_path: Path, url: str,
                                                                                   fragment: str) -> None:
    start = time.monotonic()
    res = _cli("look", str(_photo(tmp_path / "a.jpg")), "--catalog", str(tmp_path / "cat"), "--url", url)
    assert time.monotonic() - start < 5
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert res.stdout == ""
    assert res.stderr.startswith(f"error: server address {url!r} is malformed: {fragment}")


def test_look_answers_in_seconds_with_exit_2_when_nothing_listens_at_the_url(tmp_path: Path, monkeypatch) -> None:
    url = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("LOOKSERVE_URL", url)  # the environment variable sets --url
    start = time.monotonic()
    res = _cli("look", str(_photo(tmp_path / "a.jpg")), "--catalog", str(tmp_path / "cat"))
    assert time.monotonic() - start < 5  # not the 30 s deadline
    assert res.exit_code == 2, res.output
    assert f"error: nothing answers at {url}" in res.stderr and "lookserve serve" in res.stderr


# ------------------------------------------------------------------------------------------
# models history / rollback
# ------------------------------------------------------------------------------------------
def _embedder_repo(tmp_path: Path, versions: int = 1) -> Path:
    repo = tmp_path / "repo"
    config = replace(contracts.embedder_config(dim=8, crop_size=16), warmup=())
    write_model(repo, config, lambda p: projection_embedder(p, size=16, dim=8, seed=1))
    models = ModelRepository(repo)
    for seed in range(2, versions + 1):
        models.publish("embedder", projection_embedder(tmp_path / f"c{seed}" / "model.onnx", size=16, dim=8, seed=seed))
    return repo


def test_models_history_names_the_known_models_with_exit_2_when_the_model_is_unknown(tmp_path: Path) -> None:
    res = _cli("models", "history", "embeder", "-r", str(_embedder_repo(tmp_path)))
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: no model 'embeder' in {tmp_path / 'repo'} (models: embedder)"


def test_models_history_says_no_history_yet_when_nothing_was_recorded(tmp_path: Path) -> None:
    res = _cli("models", "history", "embedder", "-r", str(_embedder_repo(tmp_path)))
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().startswith("embedder: no history yet")


def test_models_history_prints_local_times_not_epoch_seconds_when_changes_were_recorded(tmp_path: Path) -> None:
    repo = _embedder_repo(tmp_path, versions=2)  # one publish
    res = _cli("models", "history", "embedder", "-r", str(repo))
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+\s+publish\s+serving \[1\] \(was \[1\]\)\s+version 2 from", line), line
    assert not re.search(r"\d{9,}\.\d", line)
    raw = _cli("models", "history", "embedder", "-r", str(repo), "--json")
    assert json.loads(raw.stdout)["action"] == "publish"


@pytest.mark.triton
def test_models_rollback_walks_back_one_change_each_time_then_refuses_when_nothing_is_left(
    tmp_path: Path, triton_factory, monkeypatch
) -> None:
    repo = _embedder_repo(tmp_path, versions=3)
    server = triton_factory(repo, models=["embedder"])
    key_file = tmp_path / "admin.key"
    key_file.write_text(server.repository_key)
    monkeypatch.delenv(KEY_ENVVAR, raising=False)
    common = ["-r", str(repo), "--url", server.grpc_url, "--key-file", str(key_file)]
    for version in ("2", "3"):
        res = _cli("models", "promote", "embedder", version, *common, "--allow-unverified")
        assert res.exit_code == 0, res.output
    said = []
    for _ in range(2):
        res = _cli("models", "rollback", "embedder", *common)
        assert res.exit_code == 0, res.output
        said.append(res.stdout.strip())
    assert said == ["embedder rolled back to versions [2]", "embedder rolled back to versions [1]"]
    res = _cli("models", "rollback", "embedder", *common)
    assert res.exit_code == 2, res.output
    assert "embedder has nothing left to roll back" in res.stderr
    with _admin(server) as admin:
        assert ModelRepository(repo).loaded_versions(admin, "embedder") == (1,)
    history = _cli("models", "history", "embedder", "-r", str(repo)).stdout
    assert [line.split()[3] for line in history.splitlines()] == ["publish", "publish", "promote", "promote",
                                                                  "rollback", "rollback"]


def _admin(server):
    return TritonClient(server.grpc_url, repository_key=server.repository_key)


def test_models_cli_exits_2_naming_the_key_file_when_the_given_key_file_is_missing(tmp_path: Path) -> None:
    res = _cli("models", "list", "-r", str(_embedder_repo(tmp_path)), "--url", "127.0.0.1:1",
               "--key-file", str(tmp_path / "none.key"))
    assert res.exit_code == 2
    assert f"key file {tmp_path / 'none.key'} does not exist" in res.stderr


# ------------------------------------------------------------------------------------------
# the repository key, per address
# ------------------------------------------------------------------------------------------
def test_key_file_for_names_one_file_per_address_when_hosts_are_spelled_differently() -> None:
    assert key_file_for("127.0.0.1:8001") == key_file_for("localhost:8001") == key_file_for("0.0.0.0:8001")
    assert key_file_for("127.0.0.1:8001") == Path(".lookserve/127.0.0.1-8001.key")
    assert key_file_for("127.0.0.1:8001") != key_file_for("127.0.0.1:8002")
    assert key_file_for("[::1]:8001").name == "__1-8001.key"


def test_read_key_prefers_the_environment_then_the_key_file_then_the_address_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KEY_ENVVAR, raising=False)
    by_address = key_file_for("127.0.0.1:9")
    by_address.parent.mkdir()
    by_address.write_text("address-key\n")
    (tmp_path / "given.key").write_text("given-key")
    assert read_key(url="localhost:9") == "address-key"
    assert read_key(tmp_path / "given.key", url="localhost:9") == "given-key"
    assert read_key(url="127.0.0.1:10") is None
    monkeypatch.setenv(KEY_ENVVAR, "env-key")
    assert read_key(tmp_path / "given.key", url="localhost:9") == "env-key"


def test_key_file_claim_refuses_and_keeps_the_key_when_another_holder_is_live(tmp_path: Path) -> None:
    path = tmp_path / "k" / "server.key"
    with KeyFile(path) as first:
        first.write("first-key")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(ServerStartError, match="belongs to a running lookserve serve"):
            KeyFile(path).claim()
        assert path.read_text() == "first-key"
    with KeyFile(path) as again:  # released: a stale file is claimed again
        again.write("second")
    assert path.read_text() == "second"
    with KeyFile(tmp_path / "never.key"):  # claimed for a server that did not start
        pass
    assert not (tmp_path / "never.key").exists()


# ------------------------------------------------------------------------------------------
# look / catalog output, against a real Triton
# ------------------------------------------------------------------------------------------
@pytest.mark.triton
def test_look_exits_1_naming_each_broken_image_and_how_many_failed_when_a_folder_holds_some(
    served, tmp_path: Path  # noqa: F811
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(street_photo([(230, "tops")], seed=3)).save(folder / "good.png")
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "empty.png").write_bytes(b"")
    res = _cli("look", str(folder), "--catalog", str(served["catalog"]), "--url", served["server"].grpc_url,
               "--out", str(tmp_path / "out"), "--no-render", "--progress")
    assert res.exit_code == 1, res.output
    assert re.search(r"looking .*3/3", res.stderr), res.stderr  # the progress bar, on stderr
    errors = res.stderr.splitlines()
    assert errors[-1] == "error: 2 of 3 images failed"
    assert any(line.startswith(f"error: {folder / 'cut.jpg'}: ") for line in errors), errors
    assert any(line.startswith(f"error: {folder / 'empty.png'}: ") for line in errors), errors
    assert "wrote 1 result to" in res.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json"]


@pytest.mark.triton
def test_catalog_build_and_info_print_sentences_not_dicts_and_info_says_the_server_check_passed(
    served, tmp_path: Path  # noqa: F811
) -> None:
    shop = served["root"] / "shop"
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text("id,category,image,title\n" + "".join(
        f"{r.product_id},{r.category},{r.image},{r.title}\n" for r in served["records"]))
    url = served["server"].grpc_url
    built = _cli("catalog", "build", str(shop), "--metadata", str(csv_path), "--out", str(tmp_path / "cat"),
                 "--url", url, "--batch-size", "8")
    assert built.exit_code == 0, built.output
    text = " ".join(built.stdout.split())
    assert "26 photos of 26 products in 3 categories" in text
    assert "embedded with model 'embedder' version 1: 16-d vectors" in text
    assert "{" not in built.stdout and "embedder embedder" not in built.stdout
    offline = _cli("catalog", "info", str(tmp_path / "cat"))
    online = _cli("catalog", "info", str(tmp_path / "cat"), "--url", url)
    assert offline.exit_code == online.exit_code == 0, (offline.output, online.output)
    assert "give --url to also check the served embedder version" in " ".join(offline.stdout.split())
    assert f"{url} serves 'embedder' version 1, the version this catalog was built with" in " ".join(online.stdout.split())


def test_ui_refuses_a_malformed_url_with_exit_2_before_starting_streamlit_when_it_has_a_scheme() -> None:
    # a subprocess: were the URL accepted, the command would become Streamlit (os.execve)
    out = subprocess.run([sys.executable, "-m", "lookserve.cli", "ui", "--url", "http://127.0.0.1:8001"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: server address 'http://127.0.0.1:8001' is malformed: it has a scheme")
