"""Typed Triton model configurations.

Frozen dataclasses that convert to and from Triton's own protobuf
(``tritonclient.grpc.model_config_pb2.ModelConfig``) and its text format — never string
templates. One ``config.pbtxt`` serves both runtimes: ``backend: "onnxruntime"`` is Triton's
native C++ backend on the NGC image and lookserve's python-based backend on a pip install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lookserve.errors import ConfigError
from lookserve.fsutil import atomic_write_text

#: Triton data type names (without the TYPE_ prefix) and their numpy dtypes.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "STRING": np.dtype(np.object_),  # bytes elements (KServe v2 "BYTES"): encoded images, JSON
}
_INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")


def triton_dtype(dtype: str | np.dtype | type) -> str:
    """Triton's name (``"FP32"``) for a numpy dtype or a Triton name (with or without TYPE_)."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("TYPE_").upper()
        if name in DTYPES:
            return name
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ConfigError(f"unknown data type {dtype!r}; expected one of {', '.join(DTYPES)}") from None
    np_dtype = np.dtype(dtype)
    for name, value in DTYPES.items():
        if value == np_dtype:
            return name
    raise ConfigError(f"numpy dtype {np_dtype} has no Triton equivalent")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``dims`` exclude the batch dimension when max_batch_size > 0; -1 is variable."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False  # an input a request may leave out

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a tensor needs a name")
        object.__setattr__(self, "dtype", triton_dtype(self.dtype))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if any(d < -1 or d == 0 for d in self.dims):
            raise ConfigError(f"tensor {self.name!r}: dims must be positive or -1, got {self.dims}")

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class DynamicBatching:
    max_queue_delay_microseconds: int = 100
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class InstanceGroup:
    kind: str = "KIND_CPU"
    count: int = 1
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _INSTANCE_KINDS:
            raise ConfigError(f"instance group kind {self.kind!r} is not one of {', '.join(_INSTANCE_KINDS)}")
        if self.count < 1:
            raise ConfigError(f"instance group count must be ≥ 1, got {self.count}")


@dataclass(frozen=True)
class Accelerator:
    """An execution accelerator, e.g. ``Accelerator("tensorrt", {"precision_mode": "FP16"})``."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WarmupInput:
    """Warm-up data for one input: ``random`` data or zeros, in the input's dtype and dims."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    random: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", triton_dtype(self.dtype))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))


@dataclass(frozen=True)
class Warmup:
    name: str
    batch_size: int
    inputs: tuple[WarmupInput, ...]
    count: int = 1


@dataclass(frozen=True)
class VersionPolicy:
    """``latest`` (the newest ``num_versions``), ``all``, or ``specific`` ``versions``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ConfigError(f"version policy {self.kind!r} is not latest, all or specific")
        if self.kind == "specific" and not self.versions:
            raise ConfigError("a specific version policy needs at least one version")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 8
    backend: str = "onnxruntime"
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    parameters: Mapping[str, str] = field(default_factory=dict)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    gpu_accelerators: tuple[Accelerator, ...] = ()
    cpu_accelerators: tuple[Accelerator, ...] = ()
    warmup: tuple[Warmup, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a model config needs a name")
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be ≥ 0, got {self.max_batch_size}")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"model {self.name!r}: duplicate tensor names {dupes}")
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise ConfigError(f"model {self.name!r}: dynamic batching needs max_batch_size > 0")

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name, "input")

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name, "output")

    # --- protobuf ------------------------------------------------------------------------
    def to_proto(self) -> mc.ModelConfig:
        p = mc.ModelConfig(name=self.name, backend=self.backend, max_batch_size=self.max_batch_size)
        for t in self.inputs:
            p.input.add(name=t.name, data_type=mc.DataType.Value("TYPE_" + t.dtype), dims=list(t.dims), optional=t.optional)
        for t in self.outputs:
            p.output.add(name=t.name, data_type=mc.DataType.Value("TYPE_" + t.dtype), dims=list(t.dims))
        if self.dynamic_batching is not None:
            p.dynamic_batching.max_queue_delay_microseconds = self.dynamic_batching.max_queue_delay_microseconds
            p.dynamic_batching.preferred_batch_size.extend(self.dynamic_batching.preferred_batch_sizes)
        for g in self.instance_groups:
            p.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(g.kind), count=g.count, gpus=list(g.gpus))
        for key, value in self.parameters.items():
            p.parameters[key].string_value = str(value)
        vp = self.version_policy
        if vp.kind == "latest":
            p.version_policy.latest.num_versions = vp.num_versions
        elif vp.kind == "all":
            p.version_policy.all.SetInParent()
        else:
            p.version_policy.specific.versions.extend(vp.versions)
        for acc in self.gpu_accelerators:
            p.optimization.execution_accelerators.gpu_execution_accelerator.add(name=acc.name, parameters=dict(acc.parameters))
        for acc in self.cpu_accelerators:
            p.optimization.execution_accelerators.cpu_execution_accelerator.add(name=acc.name, parameters=dict(acc.parameters))
        for w in self.warmup:
            sample = p.model_warmup.add(name=w.name, batch_size=w.batch_size, count=w.count)
            for wi in w.inputs:
                data = sample.inputs[wi.name]
                data.data_type = mc.DataType.Value("TYPE_" + wi.dtype)
                data.dims.extend(wi.dims)
                if wi.random:
                    data.random_data = True
                else:
                    data.zero_data = True
        return p

    @classmethod
    def from_proto(cls, p: mc.ModelConfig) -> ModelConfig:
        def tensors(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, mc.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False))
                         for t in items)

        policy_kind = p.version_policy.WhichOneof("policy_choice")
        if policy_kind in (None, "latest"):
            vp = VersionPolicy("latest", p.version_policy.latest.num_versions or 1)
        elif policy_kind == "all":
            vp = VersionPolicy("all")
        else:
            vp = VersionPolicy("specific", versions=tuple(p.version_policy.specific.versions))
        accs = p.optimization.execution_accelerators
        return cls(
            name=p.name,
            backend=p.backend or p.platform,
            max_batch_size=p.max_batch_size,
            inputs=tensors(p.input),
            outputs=tensors(p.output),
            dynamic_batching=(
                DynamicBatching(
                    p.dynamic_batching.max_queue_delay_microseconds,
                    tuple(p.dynamic_batching.preferred_batch_size),
                )
                if p.HasField("dynamic_batching")
                else None
            ),
            instance_groups=tuple(
                InstanceGroup(mc.ModelInstanceGroup.Kind.Name(g.kind), g.count or 1, tuple(g.gpus))
                for g in p.instance_group
            ),
            parameters={k: v.string_value for k, v in sorted(p.parameters.items())},
            version_policy=vp,
            gpu_accelerators=tuple(Accelerator(a.name, dict(a.parameters)) for a in accs.gpu_execution_accelerator),
            cpu_accelerators=tuple(Accelerator(a.name, dict(a.parameters)) for a in accs.cpu_execution_accelerator),
            warmup=tuple(
                Warmup(
                    w.name,
                    w.batch_size,
                    tuple(
                        WarmupInput(n, mc.DataType.Name(d.data_type), tuple(d.dims), d.WhichOneof("input_data_type") == "random_data")
                        for n, d in sorted(w.inputs.items())
                    ),
                    w.count or 1,
                )
                for w in p.model_warmup
            ),
        )

    # --- text format ---------------------------------------------------------------------
    def to_pbtxt(self) -> str:
        return text_format.MessageToString(self.to_proto())

    @classmethod
    def from_pbtxt(cls, text: str) -> ModelConfig:
        try:
            proto = text_format.Parse(text, mc.ModelConfig())
        except text_format.ParseError as e:
            raise ConfigError(f"not a valid Triton model config: {e}") from e
        return cls.from_proto(proto)

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read model config {path}: {e.strerror}") from e
        try:
            return cls.from_pbtxt(text)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename) so Triton never reads half a config."""
        return atomic_write_text(path, self.to_pbtxt())


def _by_name(tensors: tuple[TensorSpec, ...], name: str, model: str, kind: str) -> TensorSpec:
    for t in tensors:
        if t.name == name:
            return t
    raise ConfigError(f"model {model!r} has no {kind} {name!r}; it has {', '.join(t.name for t in tensors)}")
