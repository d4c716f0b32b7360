"""Model versions in a Triton repository: list, publish, promote, roll back, unload.

The operator's workflow (``lookserve models ...``):

1. ``publish``: a new ``model.onnx`` is validated *before* it reaches the repository —
   ``onnx.checker``, an onnxruntime load, inputs and outputs identical to the serving config, and
   a sanity run on sample inputs (finite outputs of the declared shapes) — then written as
   ``<model>/<N>/`` atomically (a temp directory renamed into place). Nothing is served yet.
2. ``promote N``: the config's ``version_policy`` becomes ``specific {N}`` (or ``{old, N}`` with
   ``keep_previous``, for the embedder/catalog hand-over), written atomically, and Triton reloads
   the model through the repository API. Triton keeps the old version serving until the new one is
   loaded and warm, so requests never fail during the swap; a load failure leaves the old version
   serving and the old config restored.
3. ``rollback``: promotes the version that served before, from the history.
4. ``unload``: removes the model from the server (files stay).

Every change is appended to ``<model>/history.jsonl`` (Triton ignores files in a model folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lookserve import errors
from lookserve.modelconfig import ModelConfig, VersionPolicy

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    path: Path
    export: dict | None  # export.json, when the exporter wrote one


@dataclass(frozen=True)
class HistoryEntry:
    time: float
    action: str  # publish | promote | rollback | unload
    versions: tuple[int, ...]  # the versions serving after the action
    previous: tuple[int, ...] = ()  # the versions serving before it
    detail: str = ""


class ModelRepository:
    """A Triton model repository on disk (and, for promote/unload, the server serving it)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise errors.ConfigError(f"model repository {self.root} does not exist")

    # --- reading ----------------------------------------------------------------------
    def models(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "config.pbtxt").is_file())

    def config(self, model: str) -> ModelConfig:
        path = self.root / model / "config.pbtxt"
        if not path.is_file():
            raise errors.ModelNotFound(f"no model {model!r} in {self.root} (models: {', '.join(self.models()) or 'none'})")
        return ModelConfig.read(path)

    def versions(self, model: str) -> list[VersionInfo]:
        self.config(model)
        found = []
        for p in (self.root / model).iterdir():
            if p.is_dir() and p.name.isdigit() and (p / "model.onnx").is_file():
                meta = p / "export.json"
                found.append(VersionInfo(model, int(p.name), p, json.loads(meta.read_text()) if meta.is_file() else None))
        return sorted(found, key=lambda v: v.version)

    def serving_versions(self, model: str) -> tuple[int, ...]:
        """The versions the on-disk config tells Triton to serve."""
        policy = self.config(model).version_policy
        available = [v.version for v in self.versions(model)]
        if policy.kind == "all":
            return tuple(available)
        if policy.kind == "specific":
            return tuple(sorted(policy.versions))
        return tuple(available[-policy.num_versions :])

    def loaded_versions(self, client, model: str) -> tuple[int, ...]:
        """The versions the server reports READY for ``model`` (needs the repository key)."""
        return tuple(
            sorted(
                int(m["version"])
                for m in client.repository_index()
                if m.get("name") == model and m.get("state") == "READY" and m.get("version")
            )
        )

    def history(self, model: str) -> list[HistoryEntry]:
        path = self.root / model / HISTORY
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text().splitlines():
            if line.strip():
                raw = json.loads(line)
                entries.append(
                    HistoryEntry(raw["time"], raw["action"], tuple(raw["versions"]), tuple(raw.get("previous", ())), raw.get("detail", ""))
                )
        return entries

    def _record(self, model: str, action: str, versions: tuple[int, ...], previous: tuple[int, ...] = (),
                detail: str = "") -> None:
        entry = {"time": time.time(), "action": action, "versions": list(versions), "previous": list(previous), "detail": detail}
        with open(self.root / model / HISTORY, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --- publish ------------------------------------------------------------------------
    def publish(self, model: str, onnx_path: str | os.PathLike, version: int | None = None,
                export_json: dict | None = None) -> VersionInfo:
        """Validate ``onnx_path`` against the serving config and write it as a new version."""
        config = self.config(model)
        onnx_path = Path(onnx_path)
        validate_onnx(onnx_path, config)
        existing = [v.version for v in self.versions(model)]
        # Pin what serves now, so that the new version serves only once promoted (a "latest"
        # policy would otherwise pick it up at the next reload).
        before = self.serving_versions(model)
        if config.version_policy.kind != "specific" and before:
            replace(config, version_policy=VersionPolicy("specific", versions=before)).write(self.root / model / "config.pbtxt")
        if version is None:
            version = max(existing, default=0) + 1
        target = self.root / model / str(version)
        if target.exists():
            raise errors.PublishError(f"{model} version {version} already exists at {target}; versions are immutable")
        staging = Path(tempfile.mkdtemp(prefix=f".publish-{version}-", dir=self.root / model))
        try:
            shutil.copyfile(onnx_path, staging / "model.onnx")
            meta = dict(export_json or {})
            meta.setdefault("published_from", str(onnx_path))
            meta["sha256"] = _sha256(staging / "model.onnx")
            (staging / "export.json").write_text(json.dumps(meta, indent=2))
            for f in staging.iterdir():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        serving = self.serving_versions(model)
        self._record(model, "publish", serving, serving, f"version {version} from {onnx_path.name}")
        log.info("published %s version %d", model, version)
        return VersionInfo(model, version, target, meta)

    # --- promote / rollback / unload (needs the server) -------------------------------------
    def promote(self, client, model: str, version: int, keep_previous: bool = False,
                timeout_s: float = 300.0, action: str = "promote") -> tuple[int, ...]:
        """Serve ``version`` (and the current ones too, with ``keep_previous``)."""
        config = self.config(model)
        if version not in [v.version for v in self.versions(model)]:
            raise errors.PublishError(f"{model} has no published version {version}; publish it first")
        before = self.loaded_versions(client, model)
        serving = tuple(sorted({*before, version})) if keep_previous else (version,)
        self._swap_config(client, model, config, serving, timeout_s)
        self._record(model, action, serving, before)
        return serving

    def retire(self, client, model: str, versions: tuple[int, ...], timeout_s: float = 300.0) -> tuple[int, ...]:
        """Stop serving ``versions`` (the others keep serving)."""
        config = self.config(model)
        before = self.loaded_versions(client, model)
        serving = tuple(v for v in before if v not in versions)
        if not serving:
            raise errors.PublishError(f"retiring {list(versions)} would leave {model} with no version; unload it instead")
        self._swap_config(client, model, config, serving, timeout_s)
        self._record(model, "retire", serving, before)
        return serving

    def rollback(self, client, model: str, timeout_s: float = 300.0) -> tuple[int, ...]:
        """Serve again what served before the last promote, retire or rollback."""
        changes = [e for e in self.history(model) if e.action in ("promote", "retire", "rollback")]
        if not changes or not changes[-1].previous:
            raise errors.PublishError(f"{model} has no earlier serving state in its history to roll back to")
        current, previous = self.loaded_versions(client, model), changes[-1].previous
        self._swap_config(client, model, self.config(model), previous, timeout_s)
        self._record(model, "rollback", previous, current)
        return previous

    def unload(self, client, model: str) -> None:
        before = self.loaded_versions(client, model)
        client.unload_model(model)
        self._record(model, "unload", (), before)

    def _swap_config(self, client, model: str, config: ModelConfig, serving: tuple[int, ...], timeout_s: float) -> None:
        new = replace(config, version_policy=VersionPolicy("specific", versions=serving))
        path = self.root / model / "config.pbtxt"
        new.write(path)
        try:
            client.load_model(model, timeout_s=timeout_s)
            for v in serving:
                client.wait_model_ready(model, deadline_s=timeout_s, version=str(v))
        except errors.LookserveError as e:
            # Triton keeps the old version serving when a load fails; put the config back too.
            config.write(path)
            raise errors.PublishError(
                f"Triton could not load {model} versions {list(serving)}; the previous versions keep serving: {e}"
            ) from e


def validate_onnx(path: Path, config: ModelConfig, samples: int = 2) -> None:
    """Refuse a model file that would not serve ``config``: checker, load, signature, sanity run."""
    import onnx
    import onnxruntime as ort

    if not path.is_file():
        raise errors.PublishError(f"{path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types for bad files
        raise errors.PublishError(f"{path} is not a valid ONNX model: {e}") from e
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise errors.PublishError(f"onnxruntime cannot load {path}: {e}") from e

    onnx_types = {
        "tensor(uint8)": "UINT8", "tensor(float)": "FP32", "tensor(int32)": "INT32",
        "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(bool)": "BOOL",
    }
    problems = []
    batch = (config.max_batch_size > 0)
    for kind, want, have in (("input", config.inputs, session.get_inputs()), ("output", config.outputs, session.get_outputs())):
        served = {t.name: t for t in have}
        if set(served) != {t.name for t in want}:
            problems.append(f"{kind}s are {sorted(served)}, the serving config has {sorted(t.name for t in want)}")
            continue
        for spec in want:
            got = served[spec.name]
            if onnx_types.get(got.type) != spec.dtype:
                problems.append(f"{kind} {spec.name!r} is {got.type}, config says {spec.dtype}")
            dims = [d if isinstance(d, int) else -1 for d in got.shape]
            expected = ([-1] if batch else []) + list(spec.dims)
            if len(dims) != len(expected) or any(e != -1 and d != -1 and e != d for e, d in zip(expected, dims, strict=False)):
                problems.append(f"{kind} {spec.name!r} has shape {dims}, config says {expected}")
    if problems:
        raise errors.PublishError(f"{path} does not match the serving config of {config.name!r}: " + "; ".join(problems))

    rng = np.random.default_rng(0)
    feeds = {}
    for spec in config.inputs:
        shape = ([samples] if batch else []) + [d if d > 0 else 8 for d in spec.dims]
        if spec.np_dtype.kind in "ui":
            feeds[spec.name] = rng.integers(0, 256 if spec.dtype == "UINT8" else 100, shape).astype(spec.np_dtype)
        else:
            feeds[spec.name] = rng.random(shape).astype(spec.np_dtype)
    try:
        outputs = session.run([t.name for t in config.outputs], feeds)
    except Exception as e:  # noqa: BLE001
        raise errors.PublishError(f"{path} fails on sample inputs: {e}") from e
    for spec, value in zip(config.outputs, outputs, strict=True):
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise errors.PublishError(f"{path}: output {spec.name!r} has non-finite values on sample inputs")


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
