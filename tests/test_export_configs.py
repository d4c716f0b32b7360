"""The configs an export writes: golden files that round-trip through lookserve's typed ModelConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookserve import contracts
from lookserve.export.core import serving_config, write_configs
from lookserve.modelconfig import ModelConfig

GOLDEN = Path(__file__).parent / "golden" / "export"
TEMPLATES = {
    "detector": contracts.detector_config(),
    "embedder": contracts.embedder_config(),
    "view_classifier": contracts.view_classifier_config(),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_golden_config_round_trips_when_parsed_and_written(name: str) -> None:
    for path in (GOLDEN / f"{name}.pbtxt", GOLDEN / f"{name}_gpu.pbtxt"):
        text = path.read_text()
        assert ModelConfig.from_pbtxt(text).to_pbtxt() == text, path.name


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_export_writes_the_golden_configs_when_the_graph_meets_the_contract(name: str, tmp_path: Path) -> None:
    template = TEMPLATES[name]
    # the graph's outputs in another order than the contract's: the config keeps the contract's order
    config = serving_config(name, template.inputs, tuple(reversed(template.outputs)), template)
    cfg_path, gpu_path = write_configs(tmp_path / name, config)
    assert cfg_path.read_text() == (GOLDEN / f"{name}.pbtxt").read_text()
    assert gpu_path == tmp_path / name / "configs" / "gpu.pbtxt"
    assert gpu_path.read_text() == (GOLDEN / f"{name}_gpu.pbtxt").read_text()


def test_golden_configs_batch_warm_up_and_pick_tensorrt_fp16_when_read() -> None:
    for name, template in TEMPLATES.items():
        cpu = ModelConfig.read(GOLDEN / f"{name}.pbtxt")
        gpu = ModelConfig.read(GOLDEN / f"{name}_gpu.pbtxt")
        assert cpu.max_batch_size == template.max_batch_size > 0
        assert cpu.dynamic_batching is not None
        assert cpu.dynamic_batching.max_queue_delay_microseconds == contracts.QUEUE_DELAY_US
        assert [g.kind for g in cpu.instance_groups] == ["KIND_CPU"]
        assert [g.kind for g in gpu.instance_groups] == ["KIND_GPU"]
        assert gpu.gpu_accelerators[0].name == "tensorrt"
        assert gpu.gpu_accelerators[0].parameters["precision_mode"] == "FP16"
        (warm,) = cpu.warmup
        assert {i.name for i in warm.inputs} == {t.name for t in cpu.inputs}
        assert all(i.random and i.dims == cpu.input(i.name).dims for i in warm.inputs)
