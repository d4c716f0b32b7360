"""The tensor contracts of lookserve's three served models (DESIGN.md, "Tensor contracts").

These are defaults: an export writes the truth for a version into ``<version>/export.json`` and
the model's ``config.pbtxt``; clients check the served model's metadata against the contract
before the first request (:meth:`lookserve.client.core.TritonClient.check_contract`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

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
LOOK = "look"  # python backend (BLS): the whole shop-the-look chain in one call
THUMBNAILS = "thumbnails"  # python backend (BLS): one product's views -> thumbnail and type
POSE_DETECTOR = "pose_detector"  # MediaPipe BlazePose detector: FP32 [1, 224, 224, 3] in [-1, 1] -> boxes, scores
POSE_LANDMARKS = "pose_landmarks"  # MediaPipe pose_landmark_full: FP32 [1, 256, 256, 3] in [0, 1] -> 195 values, flag

DETECTOR_INPUT_SIZE = 512
DETECTOR_MAX_DETECTIONS = 20
MASK_SIZE = 28
CROP_SIZE = 224
EMBEDDING_DIM = 128


# Serving policy of the three onnxruntime models (issue 18; measured in bench/results/serving_*):
# * max_queue_delay 100 µs: at most 0.1 ms for a request that arrives at an idle instance
#   (Triton's queue time at c=1: 1.40 ms with 1000 µs, 0.27 ms with 100, 0.17 ms with 0), while
#   under load the batcher still gathers what queued while the instance was busy; at c=8 it gave
#   the most throughput of 0/100/500/1000 µs (1.32× 1000 µs; 0 µs: 0.82–0.93×).
# * 1 instance × 1 intra-op thread per model on the 2-core box: the look chain runs detector and
#   embedder side by side, and 2 intra-op threads measured 2× slower than 1 under the box's shared
#   load — spinning or not (detector at c=1, p50 vs 1 thread: 2.87× spinning, 2.13× with idle
#   threads asleep; bench/results/serving_spin_detector_*). With more than one intra-op thread the
#   backend lets idle threads sleep unless ``allow_spinning`` says "1". On a 16-core machine
#   raise ``intra_op_thread_count`` to 4 for the detector (single-image latency) and run 2–4
#   embedder instances × 2 threads (throughput), keeping instances × threads within the cores
#   left after gRPC and the python stubs (``lookserve bench tune MODEL --thread-budget 14``).
QUEUE_DELAY_US = 100
INTRA_OP_THREADS = 1


def _cpu_parameters(threads: int = INTRA_OP_THREADS) -> dict[str, str]:
    return {"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"}


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
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=QUEUE_DELAY_US),
        parameters=_cpu_parameters(),
        warmup=_warmup(inputs),
    )


def embedder_config(dim: int = EMBEDDING_DIM, crop_size: int = CROP_SIZE, max_batch_size: int = 32) -> ModelConfig:
    inputs = (TensorSpec("crops", "UINT8", (crop_size, crop_size, 3)),)
    return ModelConfig(
        name=EMBEDDER,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=(TensorSpec("embedding", "FP32", (dim,)),),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=QUEUE_DELAY_US),
        parameters=_cpu_parameters(),
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
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=QUEUE_DELAY_US),
        parameters=_cpu_parameters(),
        warmup=_warmup(inputs),
    )


def look_config(catalog: str = "../runs/demo/catalog", max_batch_size: int = 8, instances: int = 1,
                catalog_poll_s: float = 0.5) -> ModelConfig:
    """``look``: one encoded photo (JPEG/PNG/WebP bytes as sent) → the ``lookserve look`` JSON and
    typed tensors. ``catalog`` is a catalog directory or a catalog root (its ``current`` pointer is
    followed); a relative path is relative to the model repository."""
    return ModelConfig(
        name=LOOK,
        backend="python",
        max_batch_size=max_batch_size,
        inputs=(
            TensorSpec("image", "STRING", (1,)),
            TensorSpec("source", "STRING", (1,), optional=True),  # the name the JSON records
            TensorSpec("k", "INT32", (1,), optional=True),
            TensorSpec("min_score", "FP32", (1,), optional=True),
            TensorSpec("categories", "STRING", (-1,), optional=True),  # keep only these
            TensorSpec("filter", "STRING", (1,), optional=True),  # on product attributes
            TensorSpec("masks", "BOOL", (1,), optional=True),  # False: the JSON without the 28x28 masks
            TensorSpec("gate", "STRING", (1,), optional=True),  # the pose gate: off, person, full-shot
        ),
        outputs=(
            TensorSpec("look_json", "STRING", (1,)),
            TensorSpec("item_category", "STRING", (-1,)),
            TensorSpec("item_score", "FP32", (-1,)),
            TensorSpec("item_box", "FP32", (-1, 4)),
            TensorSpec("match_product_id", "INT64", (-1, -1)),  # [items, k], -1 = no match
            TensorSpec("match_similarity", "FP32", (-1, -1)),
        ),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=2000),
        instance_groups=(InstanceGroup("KIND_CPU", instances),),
        parameters={"catalog": catalog, "catalog_poll_s": str(catalog_poll_s)},
    )


def thumbnails_config(instances: int = 1) -> ModelConfig:
    """``thumbnails``: one product's view images (encoded bytes, any count) → best view, per-view
    scores, footwear type and its probabilities."""
    return ModelConfig(
        name=THUMBNAILS,
        backend="python",
        max_batch_size=0,
        inputs=(TensorSpec("images", "STRING", (-1,)),),
        outputs=(
            TensorSpec("thumbnails_json", "STRING", (1,)),
            TensorSpec("best_view_index", "INT32", (1,)),
            TensorSpec("view_scores", "FP32", (-1,)),
            TensorSpec("footwear_type", "STRING", (1,)),
            TensorSpec("type_probs", "FP32", (len(FOOTWEAR_TYPES),)),
        ),
        dynamic_batching=None,
        instance_groups=(InstanceGroup("KIND_CPU", instances),),
    )


def gpu_variant(config: ModelConfig, count: int = 1, tensorrt_fp16: bool = True) -> ModelConfig:
    """The ``configs/gpu.pbtxt`` variant: KIND_GPU instances, optionally TensorRT FP16."""

    accelerators = (
        (Accelerator("tensorrt", {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}),)
        if tensorrt_fp16
        else ()
    )
    return replace(config, instance_groups=(InstanceGroup("KIND_GPU", count),), gpu_accelerators=accelerators)


# --- checking tensors against a contract ------------------------------------------------------
Shape = Sequence[int]


@dataclass(frozen=True)
class TensorDifference:
    """One way a model's tensors differ from the expected ones (see :func:`tensor_differences`)."""

    kind: str  # "input" or "output"
    name: str
    what: str  # "missing", "dtype", "shape" or "unexpected" (a tensor that is not expected)
    got: str | Shape | None = None  # the shape as the caller gave it (a list or a tuple)
    want: str | Shape | None = None


def tensor_differences(
    kind: str, want: Iterable[tuple[str, str, Shape]], got: Iterable[tuple[str, str, Shape]]
) -> list[TensorDifference]:
    """How the ``got`` tensors (name, datatype, shape) differ from the ``want`` ones: for each wanted
    tensor in order, missing, or its datatype, or its shape (same rank; -1 on either side matches any
    size); then every unexpected tensor, by name. The one rule behind the client's check of a
    served model (:meth:`lookserve.client.core.TritonClient.check_contract`) and the export's check
    of an exported graph (:func:`lookserve.export.core.check_contract`)."""
    got_by = {name: (dtype, shape) for name, dtype, shape in got}
    wanted: set[str] = set()
    differences: list[TensorDifference] = []
    for name, want_dtype, want_shape in want:
        wanted.add(name)
        if name not in got_by:
            differences.append(TensorDifference(kind, name, "missing"))
            continue
        got_dtype, got_shape = got_by[name]
        if got_dtype != want_dtype:
            differences.append(TensorDifference(kind, name, "dtype", got_dtype, want_dtype))
        if len(got_shape) != len(want_shape) or any(
            g != w and -1 not in (g, w) for g, w in zip(got_shape, want_shape, strict=False)
        ):
            differences.append(TensorDifference(kind, name, "shape", got_shape, want_shape))
    differences += [TensorDifference(kind, name, "unexpected") for name in sorted(set(got_by) - wanted)]
    return differences


def contract_problems(
    kind: str, want: Iterable[tuple[str, str, Shape]], got: Iterable[tuple[str, str, Shape]],
    words: Mapping[str, str], **fields: object,
) -> list[str]:
    """:func:`tensor_differences` in the caller's words: ``words`` maps each ``what`` to a
    :meth:`str.format` template over ``kind``, ``name``, ``got``, ``want`` and ``fields``, except
    ``"unexpected"``, one problem for all unexpected tensors, over ``kind``, ``names`` (sorted) and
    ``fields``. A ``what`` that ``words`` lacks is not reported."""
    differences = tensor_differences(kind, want, got)
    problems = [words[d.what].format(kind=kind, name=d.name, got=d.got, want=d.want, **fields)
                for d in differences if d.what != "unexpected" and d.what in words]
    unexpected = [d.name for d in differences if d.what == "unexpected"]
    if unexpected and "unexpected" in words:
        problems.append(words["unexpected"].format(kind=kind, names=unexpected, **fields))
    return problems
