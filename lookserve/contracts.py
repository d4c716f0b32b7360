"""The tensor contracts of lookserve's three served models (DESIGN.md, "Tensor contracts").

These are defaults: an export writes the truth for a version into ``<version>/export.json`` and
the model's ``config.pbtxt``; clients check the served model's metadata against the contract
before the first request (:meth:`lookserve.client.core.TritonClient.check_contract`).
"""

from __future__ import annotations

from lookserve.modelconfig import (
    Accelerator,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    Warmup,
    WarmupInput,
)
from lookserve.taxonomy import FOOTWEAR_TYPES

DETECTOR = "detector"
EMBEDDER = "embedder"
VIEW_CLASSIFIER = "view_classifier"

DETECTOR_INPUT_SIZE = 512
DETECTOR_MAX_DETECTIONS = 20
MASK_SIZE = 28
CROP_SIZE = 224
EMBEDDING_DIM = 128


def _warmup(inputs: tuple[TensorSpec, ...], batch_size: int = 1) -> tuple[Warmup, ...]:
    return (
        Warmup(
            name="random_sample",
            batch_size=batch_size,
            inputs=tuple(WarmupInput(t.name, t.dtype, t.dims, random=True) for t in inputs),
        ),
    )


def detector_config(
    input_size: int = DETECTOR_INPUT_SIZE,
    max_detections: int = DETECTOR_MAX_DETECTIONS,
    mask_size: int = MASK_SIZE,
    max_batch_size: int = 4,
) -> ModelConfig:
    inputs = (TensorSpec("images", "UINT8", (input_size, input_size, 3)),)
    return ModelConfig(
        name=DETECTOR,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=(
            TensorSpec("boxes", "FP32", (max_detections, 4)),
            TensorSpec("scores", "FP32", (max_detections,)),
            TensorSpec("classes", "INT32", (max_detections,)),
            TensorSpec("masks", "FP32", (max_detections, mask_size, mask_size)),
            TensorSpec("num_detections", "INT32", (1,)),
        ),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=2000),
        warmup=_warmup(inputs),
    )


def embedder_config(dim: int = EMBEDDING_DIM, crop_size: int = CROP_SIZE, max_batch_size: int = 32) -> ModelConfig:
    inputs = (TensorSpec("crops", "UINT8", (crop_size, crop_size, 3)),)
    return ModelConfig(
        name=EMBEDDER,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=(TensorSpec("embedding", "FP32", (dim,)),),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=1000),
        warmup=_warmup(inputs),
    )


def view_classifier_config(image_size: int = CROP_SIZE, max_batch_size: int = 16) -> ModelConfig:
    inputs = (TensorSpec("images", "UINT8", (image_size, image_size, 3)),)
    return ModelConfig(
        name=VIEW_CLASSIFIER,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=(
            TensorSpec("type_probs", "FP32", (len(FOOTWEAR_TYPES),)),
            TensorSpec("best_view", "FP32", (1,)),
        ),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=1000),
        warmup=_warmup(inputs),
    )


def gpu_variant(config: ModelConfig, count: int = 1, tensorrt_fp16: bool = True) -> ModelConfig:
    """The ``configs/gpu.pbtxt`` variant: KIND_GPU instances, optionally TensorRT FP16."""
    from dataclasses import replace

    accelerators = (
        (Accelerator("tensorrt", {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}),)
        if tensorrt_fp16
        else ()
    )
    return replace(config, instance_groups=(InstanceGroup("KIND_GPU", count),), gpu_accelerators=accelerators)
