"""The shared readers of a served model's tensors: its image input (``client.core.image_input``) and
the tensor-contract rule (``contracts.tensor_differences``) behind the client's and the export's checks."""

from __future__ import annotations

import pytest

from lookserve import errors
from lookserve.client.core import ImageInput, ModelMetadata, TensorMeta, image_input
from lookserve.contracts import TensorDifference, contract_problems, tensor_differences


def _meta(*inputs: TensorMeta) -> ModelMetadata:
    return ModelMetadata(name="m", versions=("1",), inputs=inputs, outputs=(TensorMeta("out", "FP32", (-1, 8)),))


def test_image_input_reads_name_size_and_dtype_when_a_uint8_square_input_is_served() -> None:
    meta = _meta(TensorMeta("scale", "FP32", (-1, 1)), TensorMeta("crops", "UINT8", (-1, 224, 224, 3)))
    assert image_input(meta) == ImageInput("crops", 224, "UINT8")


@pytest.mark.parametrize("tensor", [
    TensorMeta("images", "FP32", (-1, 32, 32, 3)),  # not UINT8
    TensorMeta("images", "UINT8", (-1, 32, 3)),  # not 4-D
    TensorMeta("images", "UINT8", (-1, 32, 48, 3)),  # not square
    TensorMeta("images", "UINT8", (-1, -1, -1, 3)),  # no fixed size
])
def test_image_input_raises_naming_role_and_inputs_when_no_uint8_square_input_is_served(tensor: TensorMeta) -> None:
    with pytest.raises(errors.ContractMismatch, match=r"detector 'm' has no UINT8 \[B, S, S, 3\] input: .*'images'"):
        image_input(_meta(tensor), "detector")


def test_image_input_raises_the_given_error_when_the_caller_names_one() -> None:
    with pytest.raises(errors.CatalogError, match=r"^served model 'm' has no UINT8"):
        image_input(_meta(), "served model", error=errors.CatalogError)


def test_tensor_differences_lists_missing_dtype_shape_then_unexpected_when_tensors_differ() -> None:
    want = [("a", "UINT8", (-1, 4)), ("b", "FP32", (-1, 8)), ("c", "FP32", (2,))]
    got = [("b", "FP16", (-1, 8)), ("c", "FP32", (3,)), ("z", "FP32", ()), ("y", "FP32", ())]
    assert tensor_differences("input", want, got) == [
        TensorDifference("input", "a", "missing"),
        TensorDifference("input", "b", "dtype", "FP16", "FP32"),
        TensorDifference("input", "c", "shape", (3,), (2,)),
        TensorDifference("input", "y", "unexpected"),
        TensorDifference("input", "z", "unexpected"),
    ]


@pytest.mark.parametrize(("got", "want", "match"), [
    ((-1, 8), (4, 8), True),  # -1 served matches any size
    ((4, 8), (-1, 8), True),  # -1 expected matches any size
    ((4, 8), (4, 9), False),
    ((4, 8), (4, 8, 1), False),  # rank differs
])
def test_tensor_differences_matches_shapes_with_wildcards_when_ranks_agree(got, want, match: bool) -> None:
    differences = tensor_differences("output", [("t", "FP32", want)], [("t", "FP32", got)])
    assert (differences == []) is match


def test_contract_problems_words_each_difference_and_skips_unworded_ones_when_given_templates() -> None:
    words = {"shape": "{kind} {name!r} is {got} not {want} on {host}", "unexpected": "extra {names}"}
    got = [("a", "FP16", [2]), ("x", "FP32", [1]), ("w", "FP32", [1])]
    problems = contract_problems("output", [("a", "FP32", [3]), ("b", "FP32", [1])], got, words, host="h")
    assert problems == ["output 'a' is [2] not [3] on h", "extra ['w', 'x']"]  # no words for dtype, missing
