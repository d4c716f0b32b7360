"""Model versions in a Triton repository: list, publish, promote, roll back, unload.

The operator's workflow (``lookserve models ...``):

1. ``publish``: a new ``model.onnx`` is validated *before* it reaches the repository —
   ``onnx.checker``, an onnxruntime load, inputs and outputs identical to the serving config, and
   a sanity run on sample inputs (finite outputs of the declared shapes) — then written as
   ``<model>/<N>/`` atomically (a temp directory renamed into place). Nothing is served yet.
   Those checks accept any model of the right signature (random weights too); what proves the
   file is a faithful export is its ``export.json`` (beside it, or given): the version is
   **verified** when that records the ``onnx.sha256`` of exactly this file and a passed parity
   gate, and is published as **unverified** otherwise (recorded in its export.json, the history
   and ``lookserve models list``).
2. ``promote N`` (refused for an unverified version unless ``allow_unverified``): the config's ``version_policy`` becomes ``specific {N}`` (or ``{old, N}`` with
   ``keep_previous``, for the embedder/catalog hand-over), written atomically, and Triton reloads
   the model through the repository API. Triton keeps the old version serving until the new one is
   loaded and warm, so requests never fail during the swap; a load failure leaves the old version
   serving and the old config restored.
3. ``rollback``: serves again what served before the newest promote or retire not yet rolled
   back; repeated rollbacks walk back through the history, one change each.
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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookserve import errors
from lookserve.client.core import each_replica
from lookserve.fsutil import sha256_file
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
class Verification:
    """Whether a version's file is the one a passed parity gate recorded (see :func:`verify_export`)."""

    verified: bool
    reason: str = ""  # why not

    def to_dict(self) -> dict:
        return {"status": "verified" if self.verified else "unverified", "reason": self.reason}


def verify_export(onnx_path: Path, info: Mapping[str, Any] | None, sha256: str | None = None) -> Verification:
    """``onnx_path`` is verified when ``info`` (its export.json) records this file's ``onnx.sha256``
    and a parity gate that passed with every figure passing. ``sha256``: the file's, when known."""
    if info is None:
        return Verification(False, "no export.json: the file did not come through lookserve export's parity gate")
    recorded = (info.get("onnx") or {}).get("sha256") if isinstance(info.get("onnx"), Mapping) else None
    if not recorded:
        published = info.get("verification") if isinstance(info.get("verification"), Mapping) else {}
        if published.get("status") == "unverified" and published.get("reason"):
            return Verification(False, str(published["reason"]))  # why publish found it unverified
        return Verification(False, "its export.json records no onnx.sha256 of the exported file")
    actual = sha256 or sha256_file(onnx_path)
    if recorded != actual:
        return Verification(False, f"its export.json records onnx.sha256 {recorded[:12]}…, but the file is {actual[:12]}… "
                                   "(not the file the parity gate passed)")
    gate = info.get("parity") if isinstance(info.get("parity"), Mapping) else {}
    figures = gate.get("figures") or []
    failed = [f"{f.get('output')} on {f.get('samples')}" for f in figures if not f.get("passed")]
    if gate.get("passed") is not True or not figures or failed:
        detail = f" (failed: {', '.join(failed)})" if failed else ""
        return Verification(False, f"its export.json does not record a passed parity gate{detail}")
    return Verification(True)


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

    def verification(self, model: str, version: int) -> Verification:
        """Whether ``version``'s model.onnx is the file its export.json's passed parity gate recorded."""
        info = next((v for v in self.versions(model) if v.version == version), None)
        if info is None:
            raise errors.PublishError(f"{model} has no published version {version}; publish it first")
        return verify_export(info.path / "model.onnx", info.export)

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
        """The versions the server reports READY for ``model`` (needs the repository key); behind
        several replicas, the versions READY on every one of them."""
        ready = None
        with each_replica(client) as replicas:
            for replica in replicas:
                here = {int(m["version"]) for m in replica.repository_index()
                        if m.get("name") == model and m.get("state") == "READY" and m.get("version")}
                if ready is not None and here != ready:
                    log.warning("replicas disagree on the versions of %s: %s serves %s, the ones before %s",
                                model, replica.url, sorted(here), sorted(ready))
                ready = here if ready is None else ready & here
        return tuple(sorted(ready or ()))

    def history(self, model: str) -> list[HistoryEntry]:
        """The model's changes, oldest first ([] before the first one); ModelNotFound for an unknown model."""
        self.config(model)
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
                export_json: str | os.PathLike | None = None) -> VersionInfo:
        """Validate ``onnx_path`` against the serving config and write it as a new version.

        ``export_json``: the exporter's export.json for this file (default: ``export.json`` beside a
        ``model.onnx``, else ``<stem>.export.json`` beside it). Its record is kept with the version,
        which is verified when it records this file's sha256 and a passed gate (see
        :func:`verify_export`); otherwise the version is published as unverified and
        :meth:`promote` refuses it unless told ``allow_unverified``.
        """
        config = self.config(model)
        onnx_path = Path(onnx_path)
        validate_onnx(onnx_path, config)
        exported = _read_export_json(onnx_path, export_json)
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
            meta = dict(exported or {})
            meta["published_from"] = str(onnx_path)
            meta["sha256"] = sha256_file(staging / "model.onnx")
            verification = verify_export(staging / "model.onnx", exported, meta["sha256"])
            meta["verification"] = verification.to_dict()
            (staging / "export.json").write_text(json.dumps(meta, indent=2))
            for f in staging.iterdir():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        serving = self.serving_versions(model)
        detail = f"version {version} from {onnx_path.name}"
        if not verification.verified:
            detail += f" (unverified: {verification.reason})"
            log.warning("published %s version %d UNVERIFIED: %s; promote refuses it without allow_unverified",
                        model, version, verification.reason)
        self._record(model, "publish", serving, serving, detail)
        log.info("published %s version %d (%s)", model, version, meta["verification"]["status"])
        return VersionInfo(model, version, target, meta)

    # --- promote / rollback / unload (needs the server) -------------------------------------
    def promote(self, client, model: str, version: int, keep_previous: bool = False,
                timeout_s: float = 300.0, action: str = "promote", allow_unverified: bool = False) -> tuple[int, ...]:
        """Serve ``version`` (and the current ones too, with ``keep_previous``).

        An unverified version (its model.onnx is not the file a passed parity gate recorded, see
        :func:`verify_export`) is refused unless ``allow_unverified``."""
        config = self.config(model)
        check = self.verification(model, version)  # PublishError for a version that is not there
        if not check.verified and not allow_unverified:
            raise errors.PublishError(
                f"{model} version {version} is unverified: {check.reason}. Export it with lookserve export "
                "(the parity gate) and publish that, or promote it anyway with --allow-unverified"
            )
        before = self.loaded_versions(client, model)
        serving = tuple(sorted({*before, version})) if keep_previous else (version,)
        self._swap_config(client, model, config, serving, timeout_s)
        self._record(model, action, serving, before,
                     "" if check.verified else f"version {version} unverified, allowed: {check.reason}")
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

    def rollback_target(self, model: str) -> tuple[int, ...]:
        """What :meth:`rollback` would serve: the state before the newest change not yet rolled back.

        The history is a stack: each promote or retire pushes the state it replaced, each rollback
        pops one. Rolling back twice after promotes 1→2→3 serves 2, then 1 (never 3 again); with
        nothing left to undo it raises PublishError.
        """
        undo: list[tuple[int, ...]] = []
        for entry in self.history(model):
            if entry.action in ("promote", "retire"):
                undo.append(entry.previous)
            elif entry.action == "rollback" and undo:
                undo.pop()
        if not undo:
            raise errors.PublishError(
                f"{model} has nothing left to roll back: every promote and retire in its history is rolled back "
                f"already, or there was none (see lookserve models history {model})"
            )
        if not undo[-1]:
            raise errors.PublishError(
                f"{model} served no version before its last promote; nothing to roll back to "
                f"(see lookserve models history {model})"
            )
        return undo[-1]

    def rollback(self, client, model: str, timeout_s: float = 300.0) -> tuple[int, ...]:
        """Undo the newest promote or retire not yet rolled back (see :meth:`rollback_target`)."""
        previous = self.rollback_target(model)
        current = self.loaded_versions(client, model)
        self._swap_config(client, model, self.config(model), previous, timeout_s)
        self._record(model, "rollback", previous, current)
        return previous

    def unload(self, client, model: str) -> None:
        before = self.loaded_versions(client, model)
        with each_replica(client) as replicas:
            for replica in replicas:
                replica.unload_model(model)
        self._record(model, "unload", (), before)

    def _swap_config(self, client, model: str, config: ModelConfig, serving: tuple[int, ...], timeout_s: float) -> None:
        """Serve ``serving`` with the config on disk, on each replica in turn: load, wait until every
        version is ready, answer one inference per version (warm), then the next replica. When a
        replica fails, the config is put back and the replicas already swapped load it again, so
        every replica serves the previous versions."""
        new = replace(config, version_policy=VersionPolicy("specific", versions=serving))
        path = self.root / model / "config.pbtxt"
        new.write(path)
        with each_replica(client) as replicas:
            done = []
            try:
                for replica in replicas:
                    replica.load_model(model, timeout_s=timeout_s)
                    for v in serving:
                        replica.wait_model_ready(model, deadline_s=timeout_s, version=str(v))
                        if len(replicas) > 1:
                            warm(replica, new, str(v))
                    done.append(replica)
                    if len(replicas) > 1:
                        log.info("%s: %s serves versions %s (%d of %d replicas)", model, replica.url, list(serving),
                                 len(done), len(replicas))
            except errors.LookserveError as e:
                # Triton keeps the old version serving when a load fails; put the config back too.
                config.write(path)
                failed = replicas[len(done)]
                for swapped in done:  # and the replicas swapped already back to it
                    try:
                        swapped.load_model(model, timeout_s=timeout_s)
                    except errors.LookserveError as back:
                        log.error("%s: could not load the previous config back on %s: %s", model, swapped.url, back)
                where = f" on {failed.url} ({len(done)} replicas swapped before it were swapped back)" if len(replicas) > 1 else ""
                raise errors.PublishError(
                    f"Triton could not load {model} versions {list(serving)}{where}; the previous versions keep serving: {e}"
                ) from e


def warm(client, config: ModelConfig, version: str) -> None:
    """One inference on ``version`` of the model (zeros of every numeric input, batch 1): the
    replica answers before the next one is swapped. Models with a BYTES input are not warmed here
    (their config's model_warmup is Triton's way)."""
    if any(t.dtype == "STRING" for t in config.inputs):
        return
    batch = (1,) if config.max_batch_size > 0 else ()
    inputs = {t.name: np.zeros(batch + tuple(max(1, d) for d in t.dims), t.np_dtype) for t in config.inputs
              if not t.optional}
    client.infer(config.name, inputs, version=version)


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


def _read_export_json(onnx_path: Path, export_json: str | os.PathLike | None) -> dict | None:
    """The exporter's record for ``onnx_path``: ``export_json`` when given (it must exist), else the
    ``export.json`` beside a ``model.onnx`` or a ``<stem>.export.json`` beside the file; None if none."""
    if export_json is not None:
        path = Path(export_json)
        if not path.is_file():
            raise errors.PublishError(f"export record {path} does not exist")
    else:
        path = onnx_path.with_name("export.json") if onnx_path.name == "model.onnx" else onnx_path.with_name(
            f"{onnx_path.stem}.export.json")
        if not path.is_file():
            return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise errors.PublishError(f"export record {path} is not readable JSON: {e}") from e
    if not isinstance(info, dict):
        raise errors.PublishError(f"export record {path} is not a JSON object")
    return info


