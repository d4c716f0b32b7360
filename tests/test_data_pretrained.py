"""lookserve.data.pretrained: the MediaPipe files, extracted from a cached wheel and sha256-checked.

No network: each test builds its own wheel (a zip) in a temporary ``LOOKSERVE_CACHE``; the
download step is replaced by a command that fails, to see the error it gives.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookserve.cli import app
from lookserve.data import pretrained
from lookserve.errors import DataError, InvalidInputError

KEY = pretrained.FACE_DETECTION_SHORT_RANGE


def _wheel(cache: Path, payload: bytes) -> Path:
    wheels = cache / f"mediapipe-{pretrained.MEDIAPIPE_VERSION}" / "wheels"
    wheels.mkdir(parents=True)
    path = wheels / f"mediapipe-{pretrained.MEDIAPIPE_VERSION}-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(pretrained.MEMBER_PREFIX + KEY, payload)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(pretrained.CACHE_ENVVAR, str(tmp_path))
    # never reach a registry from a test: a download that would run fails at once
    monkeypatch.setattr(pretrained, "download_command",
                        lambda dest: [sys.executable, "-c", "import sys; print('no registry here', file=sys.stderr); sys.exit(3)"])
    return tmp_path


def test_mediapipe_model_extracts_the_member_when_its_hash_is_the_recorded_one(cache, monkeypatch) -> None:
    payload = b"a stand-in model"
    monkeypatch.setitem(pretrained.MEDIAPIPE_FILES, KEY, hashlib.sha256(payload).hexdigest())
    wheel = _wheel(cache, payload)
    path = pretrained.mediapipe_model(KEY)
    assert path == cache / f"mediapipe-{pretrained.MEDIAPIPE_VERSION}" / KEY and path.read_bytes() == payload
    wheel.unlink()  # cached now: no wheel needed, nothing downloaded
    assert pretrained.mediapipe_model(pretrained.MEMBER_PREFIX + KEY) == path


def test_mediapipe_model_refuses_the_file_when_its_hash_differs(cache) -> None:
    _wheel(cache, b"not the model lookserve recorded")
    with pytest.raises(DataError, match=rf"{KEY}.* has sha256 [0-9a-f]{{64}}, lookserve recorded {pretrained.MEDIAPIPE_FILES[KEY]}"):
        pretrained.mediapipe_model(KEY)
    assert not (cache / f"mediapipe-{pretrained.MEDIAPIPE_VERSION}" / KEY).exists()


def test_mediapipe_model_names_the_command_when_the_wheel_cannot_be_fetched(cache) -> None:
    with pytest.raises(DataError, match=r"cannot fetch the mediapipe 0\.10\.14 wheel: `.*` exited 3: no registry here"):
        pretrained.mediapipe_model(KEY)


def test_mediapipe_model_refuses_a_file_it_has_no_hash_for() -> None:
    with pytest.raises(InvalidInputError, match="not one of the MediaPipe files"):
        pretrained.mediapipe_model("selfie_segmentation/selfie_multiclass.tflite")


def test_download_command_is_a_plain_pip_download_when_asked_for_the_wheel(tmp_path) -> None:
    cmd = pretrained.download_command(tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
    assert f"mediapipe=={pretrained.MEDIAPIPE_VERSION}" in cmd and cmd[-2:] == ["-d", str(tmp_path)]


def test_cli_pretrained_exits_2_naming_the_command_when_the_wheel_cannot_be_fetched(cache) -> None:
    r = CliRunner().invoke(app, ["data", "pretrained"])
    assert r.exit_code == 2 and "cannot fetch the mediapipe 0.10.14 wheel" in r.stderr and "pip download" not in r.stdout


def test_cli_pretrained_lists_every_file_when_they_are_cached(cache, monkeypatch) -> None:
    root = cache / f"mediapipe-{pretrained.MEDIAPIPE_VERSION}"
    for key in list(pretrained.MEDIAPIPE_FILES):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode())
        monkeypatch.setitem(pretrained.MEDIAPIPE_FILES, key, hashlib.sha256(key.encode()).hexdigest())
    r = CliRunner().invoke(app, ["data", "pretrained"])
    assert r.exit_code == 0, r.output
    assert all(str(root / key) in r.stdout for key in pretrained.MEDIAPIPE_FILES)
