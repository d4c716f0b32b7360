"""Real photos of people, taken from installed packages (lookserve has no real fashion photos).

The pose gate (:mod:`lookserve.client.pose`) is tested on these; they are copied into a cache
folder at test-data preparation (``make test-data`` → ``python -m lookserve.data.photos``), never
downloaded (``$LOOKSERVE_CACHE/photos``, default ``~/.cache/lookserve/photos``). Each one's
source package and licence:

* Debian ``opencv-doc`` (``/usr/share/doc/opencv-doc/examples/data``, OpenCV's ``samples/data``):
  Debian's ``/usr/share/doc/opencv-doc/copyright`` gives no entry of its own for these files, so
  they fall under its ``Files: *`` stanza — Apache-2.0 AND BSD-3-Clause, copyright Intel, Willow
  Garage, NVIDIA, AMD, the OpenCV Foundation, Itseez and OpenCV's contributors (Debian removes
  the samples with doubtful rights, e.g. ``lena.jpg``; ``Files-Excluded``).
* matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``: shipped under matplotlib's licence
  (PSF-based, ``matplotlib-*.dist-info/LICENSE``); the photo is the US Navy's official portrait of
  Grace Hopper, a work of the US federal government.

What each photo shows (looked at, not guessed): ``messi5`` — one footballer, head to feet, mid-kick;
``basketball1`` — one man head to feet, a second, blurred, at the edge; ``basketball2`` — the same
room, both men; ``grace_hopper`` — a head-and-shoulders portrait; ``fruits`` and ``baboon`` — no
person.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from lookserve.data.pretrained import cache_root
from lookserve.errors import ConfigError
from lookserve.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
_MPL = importlib.util.find_spec("matplotlib")  # located, not imported
MPL_SAMPLE_DATA = Path(next(iter(_MPL.submodule_search_locations)) if _MPL else "/nonexistent") / "mpl-data/sample_data"


def default_cache() -> Path:
    """``$LOOKSERVE_CACHE/photos`` or ``~/.cache/lookserve/photos`` (beside the MediaPipe models)."""
    return cache_root() / "photos"


@dataclass(frozen=True)
class Photo:
    name: str
    source: Path
    package: str  # the package it ships in
    licence: str
    shows: str  # what is in it (looked at)


_OPENCV_LICENCE = "Apache-2.0 AND BSD-3-Clause (Debian opencv-doc copyright, Files: *)"
PHOTOS: tuple[Photo, ...] = (
    Photo("messi5", OPENCV_DOC / "messi5.jpg", "opencv-doc (Debian)", _OPENCV_LICENCE, "one person, head to feet"),
    Photo("basketball1", OPENCV_DOC / "basketball1.png", "opencv-doc (Debian)", _OPENCV_LICENCE,
          "one person head to feet, a second blurred at the edge"),
    Photo("basketball2", OPENCV_DOC / "basketball2.png", "opencv-doc (Debian)", _OPENCV_LICENCE, "two persons"),
    Photo("grace_hopper", MPL_SAMPLE_DATA / "grace_hopper.jpg", "matplotlib",
          "matplotlib licence (PSF-based); US Navy portrait, US government work", "head-and-shoulders portrait"),
    Photo("fruits", OPENCV_DOC / "fruits.jpg", "opencv-doc (Debian)", _OPENCV_LICENCE, "no person"),
    Photo("baboon", OPENCV_DOC / "baboon.jpg", "opencv-doc (Debian)", _OPENCV_LICENCE, "no person (a baboon's face)"),
)


class PhotosUnavailable(ConfigError):
    """A photo's source package is not installed (the reason names it and how to install it)."""


def _missing_reason(photo: Photo) -> str:
    if photo.package.startswith("opencv-doc"):
        return (f"{photo.source} is missing: Debian's opencv-doc is not installed "
                "(make test-data installs it when root: apt-get install -y opencv-doc)")
    return f"{photo.source} is missing from the installed {photo.package}"


def prepare(cache: Path | None = None, names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Copy the photos (all, or ``names``) into ``cache`` (default :func:`default_cache`) once;
    name → cached path. Raises
    :class:`PhotosUnavailable` naming the first photo whose package is absent."""
    wanted = [p for p in PHOTOS if names is None or p.name in names]
    unknown = set(names or ()) - {p.name for p in PHOTOS}
    if unknown:
        raise ConfigError(f"unknown photos {sorted(unknown)}; known: {', '.join(p.name for p in PHOTOS)}")
    cache = default_cache() if cache is None else Path(cache)
    out: dict[str, Path] = {}
    for photo in wanted:
        target = cache / f"{photo.name}{photo.source.suffix}"
        if not target.is_file():
            if not photo.source.is_file():
                raise PhotosUnavailable(_missing_reason(photo))
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, photo.source.read_bytes())
            log.info("photo %s ← %s", target, photo.source)
        out[photo.name] = target
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookserve.data.photos",
                                     description="copy the real test photos from installed packages")
    parser.add_argument("--cache", type=Path, default=None, help="default: $LOOKSERVE_CACHE/photos or ~/.cache/lookserve/photos")
    args = parser.parse_args(argv)
    try:
        paths = prepare(args.cache)
    except PhotosUnavailable as e:
        sys.stderr.write(f"note: real photos skipped: {e}\n")
        return 0
    for name, path in paths.items():
        sys.stdout.write(f"{name}\t{path}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
