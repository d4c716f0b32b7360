"""`pip install lookserve` (no extras) is enough for the console script to start and list every command.

The test hides every module that only the optional extras bring (the packages named in
pyproject.toml's optional-dependencies and what they pull in, minus whatever the base
dependencies also pull in), then mounts the console script in a fresh interpreter. It keeps
`[tool.ruff.lint.flake8-tidy-imports] banned-module-level-imports` honest: an optional package
imported at the top of a module that start-up reaches fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_HIDE = """
import sys
from importlib.abc import MetaPathFinder
HIDDEN = set(sys.argv[1].split(","))
class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: not in the base install)", name=name)
        return None
sys.meta_path.insert(0, Hide())
from lookserve.cli import app
import lookserve.demo
app(["--help"])
"""


def _dist(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(requirements: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [_dist(r) for r in requirements]
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            todo += [_dist(r) for r in metadata.requires(dist) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            continue
    return seen


def _optional_only_modules() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _closure(project["dependencies"])
    extras = _closure([r for name, reqs in project["optional-dependencies"].items() if name != "all" for r in reqs])
    hidden = []
    for module, dists in metadata.packages_distributions().items():
        dists = {d.lower().replace("_", "-") for d in dists}
        if dists & (extras - base) and not dists & base:
            hidden.append(module)
    return sorted(hidden)


def test_console_script_lists_every_command_when_only_the_base_install_is_present() -> None:
    hidden = _optional_only_modules()
    for module in ("tensorflow", "onnxruntime", "onnx", "psutil", "pycocotools", "sklearn"):
        assert module in hidden, module  # the environment has the extras: the check hides something real
    out = subprocess.run([sys.executable, "-c", _HIDE, ",".join(hidden)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for command in ("serve", "demo", "look", "data", "train", "export", "bench", "ui"):
        assert f" {command} " in out.stdout, command
