"""Typed model configs ⇄ Triton's protobuf text format, against golden files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from lookserve import contracts
from lookserve.errors import ConfigError
from lookserve.modelconfig import (
    Accelerator,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    Warmup,
    WarmupInput,
    triton_dtype,
)

GOLDEN = Path(__file__).parent / "golden" / "modelconfig"


def _everything() -> ModelConfig:
    return ModelConfig(
        "full",
        inputs=(TensorSpec("images", "UINT8", (-1, -1, 3)),),
        outputs=(TensorSpec("p", "float16", (6,)),),
        max_batch_size=16,
        dynamic_batching=DynamicBatching(500, (4, 8)),
        instance_groups=(InstanceGroup("KIND_CPU", 2),),
        parameters={"intra_op_thread_count": "2"},
        version_policy=VersionPolicy("specific", versions=(1, 3)),
        cpu_accelerators=(Accelerator("openvino"),),
        warmup=(Warmup("zeros", 2, (WarmupInput("images", "UINT8", (64, 64, 3), random=False),), count=3),),
    )


@pytest.mark.parametrize(
    ("golden", "config"),
    [
        ("everything.pbtxt", _everything()),
        ("detector.pbtxt", contracts.detector_config()),
        ("embedder_gpu.pbtxt", contracts.gpu_variant(contracts.embedder_config(), count=2)),
    ],
)
def test_modelconfig_matches_golden_text_when_serialised_and_parsed(golden: str, config: ModelConfig) -> None:
    text = (GOLDEN / golden).read_text()
    assert config.to_pbtxt() == text
    assert ModelConfig.from_pbtxt(text) == config


def test_modelconfig_gpu_variant_asks_tensorrt_fp16_on_kind_gpu() -> None:
    proto = contracts.gpu_variant(contracts.embedder_config()).to_proto()
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in proto.instance_group] == ["KIND_GPU"]
    accelerator = proto.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"


def test_modelconfig_write_is_atomic_and_readable_when_written_twice(tmp_path: Path) -> None:
    path = tmp_path / "m" / "config.pbtxt"
    contracts.embedder_config().write(path)
    contracts.embedder_config(dim=64).write(path)
    assert ModelConfig.read(path).output("embedding").dims == (64,)
    assert [p.name for p in path.parent.iterdir()] == ["config.pbtxt"]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: TensorSpec("x", "COMPLEX", (1,)), "unknown data type"),
        (lambda: TensorSpec("x", "FP32", (0,)), "dims must be positive"),
        (lambda: InstanceGroup("KIND_TPU"), "KIND_TPU"),
        (lambda: VersionPolicy("specific"), "at least one version"),
        (
            lambda: ModelConfig("m", (TensorSpec("a", "FP32", (1,)),), (TensorSpec("a", "FP32", (1,)),)),
            "duplicate tensor names",
        ),
        (lambda: ModelConfig("m", (), (), max_batch_size=0), "dynamic batching needs max_batch_size"),
    ],
)
def test_modelconfig_raises_config_error_naming_the_problem_when_invalid(build, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build()


def test_modelconfig_read_names_the_file_when_text_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_size: "lots"\n')
    with pytest.raises(ConfigError, match=str(path)):
        ModelConfig.read(path)


def test_triton_dtype_maps_numpy_and_triton_names_when_given_either() -> None:
    assert triton_dtype(np.uint8) == "UINT8"
    assert triton_dtype("TYPE_FP32") == "FP32"
    assert triton_dtype("float16") == "FP16"
