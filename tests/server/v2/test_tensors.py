"""The v2 core's tensor forms without an engine: BYTES length prefixes, raw and typed numbers, parameters, names."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from imgcls.server.domain.errors import ConfigError, InvalidInputError
from imgcls.server.domain.types import FunctionToApply
from imgcls.server.v2 import (
    InputTensor,
    OutputTensor,
    bytes_elements,
    check_model_names,
    decode_bytes_elements,
    encode_bytes_elements,
    numeric_array,
    parse_parameters,
)
from imgcls.server.v2.tensors import check_json_numbers


def prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


# --- BYTES ---------------------------------------------------------------------------------


def test_bytes_elements_are_4_byte_little_endian_length_prefixed() -> None:
    elements = [b"", b"a", b"\x00\xff" * 300, "é".encode()]
    encoded = encode_bytes_elements(elements)
    assert encoded == prefixed(*elements)
    assert encoded[:4] == b"\x00\x00\x00\x00" and encoded[4:9] == b"\x01\x00\x00\x00a"
    assert decode_bytes_elements(encoded, 4, "x") == elements
    assert decode_bytes_elements(memoryview(encoded), 4, "x") == elements


@pytest.mark.parametrize(
    ("raw", "count", "expected"),
    [
        (b"\x05\x00", 1, "element 0 is truncated: 2 bytes left where a 4-byte little-endian length"),
        (prefixed(b"abc")[:-1], 1, "element 0 claims 3 bytes but only 2 follow"),
        (prefixed(b"a", b"b"), 1, "bytes after its 1 BYTES elements"),
        (prefixed(b"a"), 2, "has 1 BYTES elements but its shape needs 2"),
        (b"", 1, "has 0 BYTES elements but its shape needs 1"),
        # A big-endian length reads as a huge little-endian one.
        (struct.pack(">I", 3) + b"abc", 1, "claims 50331648 bytes"),
    ],
)
def test_malformed_bytes_name_the_input_and_the_element(raw: bytes, count: int, expected: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        decode_bytes_elements(raw, count, "image")
    assert caught.value.message.startswith("input 'image': ")
    assert expected in caught.value.message


def test_bytes_input_from_raw_or_data_flat_or_nested() -> None:
    raw = InputTensor("image", "BYTES", (2, 1), raw=prefixed(b"one", b"two"))
    flat = InputTensor("image", "BYTES", (2, 1), data=[b"one", b"two"])
    nested = InputTensor("image", "BYTES", (2, 1), data=[[b"one"], [bytearray(b"two")]])
    text = InputTensor("image", "BYTES", (2,), data=["b25l", "dHdv"])
    assert bytes_elements(raw) == bytes_elements(flat) == bytes_elements(nested) == [b"one", b"two"]
    assert bytes_elements(text) == ["b25l", "dHdv"]  # text stays text: the image view reads it as base64


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (InputTensor("image", "FP32", (1, 1), data=[1.0]), "datatype is 'FP32'; it takes BYTES"),
        (InputTensor("image", "BYTES", (1, 1), data=[3]), "element 0 is a int; BYTES elements are bytes or text"),
        (InputTensor("image", "BYTES", (2, 1), data=[b"a"]), "has 1 BYTES elements but its shape needs 2"),
        (InputTensor("image", "BYTES", (1, 1), raw=prefixed(b"a"), data=[b"a"]), "both raw contents and typed"),
        (InputTensor("image", "BYTES", (-1, 1), data=[b"a"]), "must be non-negative integers"),
    ],
)
def test_bad_bytes_inputs_are_refused_naming_the_input(tensor: InputTensor, expected: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        bytes_elements(tensor)
    assert caught.value.message.startswith("input 'image': ")
    assert expected in caught.value.message


# --- numbers --------------------------------------------------------------------------------


def test_raw_fp32_is_viewed_little_endian_without_a_copy() -> None:
    values = np.arange(24, dtype="<f4").reshape(2, 3, 4)
    raw = values.tobytes()
    array = numeric_array(InputTensor("x", "FP32", (2, 3, 4), raw=raw))
    assert array.dtype == np.dtype("<f4") and array.shape == (2, 3, 4)
    np.testing.assert_array_equal(array, values)
    assert not array.flags.owndata  # a view of the request's bytes


def test_fp16_raw_and_typed_data_read_the_same_values() -> None:
    values = np.linspace(-2, 2, 12, dtype=np.float16).reshape(1, 12)
    from_raw = numeric_array(InputTensor("x", "FP16", (1, 12), raw=values.astype("<f2").tobytes()))
    from_data = numeric_array(InputTensor("x", "FP16", (1, 12), data=values.astype(float).tolist()))
    assert from_raw.dtype == from_data.dtype == np.dtype("<f2")
    np.testing.assert_array_equal(from_raw, values)
    np.testing.assert_array_equal(from_data, values)


def test_typed_data_may_be_flat_nested_or_an_array() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    for data in (values.reshape(-1).tolist(), values.tolist(), values, values.astype(np.float64)):
        np.testing.assert_array_equal(numeric_array(InputTensor("x", "FP32", (2, 3), data=data)), values)


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (
            InputTensor("x", "FP32", (2, 3), raw=b"\x00" * 20),
            "raw contents have 20 bytes but shape [2, 3] of FP32 needs 24",
        ),
        (
            InputTensor("x", "FP16", (2, 3), raw=b"\x00" * 24),
            "raw contents have 24 bytes but shape [2, 3] of FP16 needs 12",
        ),
        (InputTensor("x", "FP32", (2, 3), data=[1.0] * 5), "has 5 values but shape [2, 3] needs 6"),
        (InputTensor("x", "FP32", (2, 2), data=[[1.0, 2.0], [3.0]]), "data is not a list of numbers"),
        (InputTensor("x", "FP32", (1, 1), data=["a"]), "element 0 is 'a'; FP32 data holds numbers only"),
        # numpy would have read these as 1.5, 1.0 and NaN: answers for inputs nobody sent.
        (InputTensor("x", "FP32", (1, 2), data=[0.5, "1.5"]), "element 1 is '1.5'; FP32 data holds numbers only"),
        (InputTensor("x", "FP32", (1, 2), data=[0.5, True]), "element 1 is True; FP32 data holds numbers only"),
        (InputTensor("x", "FP32", (1, 2), data=[[0.5, None]]), "element 1 is None; FP32 data holds numbers only"),
        (InputTensor("x", "FP32", (1, 2), data=[[0.5, True]]), "element 1 is True; FP32 data holds numbers only"),
        (InputTensor("x", "FP32", (1, 1), data=[10**400]), "data is not a list of numbers (OverflowError)"),
        (InputTensor("x", "INT64", (1, 1), data=[1]), "datatype 'INT64' is not accepted; use FP32 or FP16"),
        (InputTensor("x", "FP32", (1, 1), raw=b"\x00" * 4, data=[0.0]), "both raw contents and typed contents"),
    ],
)
def test_bad_numeric_inputs_are_refused_naming_the_input(tensor: InputTensor, expected: str) -> None:
    """As the HTTP door reads them: JSON data checked where it is parsed, then converted."""
    with pytest.raises(InvalidInputError) as caught:
        check_json_numbers(tensor)
        numeric_array(tensor)
    assert caught.value.message.startswith("input 'x': ")
    assert expected in caught.value.message


# --- outputs ----------------------------------------------------------------------------------


def test_output_tensor_binary_and_json_forms() -> None:
    values = np.array([[0.25, 0.5, 1.0 / 3.0]], dtype=np.float32)
    scores = OutputTensor("scores", "FP32", (1, 3), values)
    assert scores.raw_bytes() == values.astype("<f4").tobytes()
    assert scores.json_data() == [0.25, 0.5, float(np.float32(1.0 / 3.0))]
    assert np.float32(scores.json_data()[2]) == values[0, 2]  # JSON numbers read back as the same float32
    half = OutputTensor("logits", "FP16", (1, 3), values.astype(np.float16))
    assert half.raw_bytes() == values.astype("<f2").tobytes()
    strings = OutputTensor("scores", "BYTES", (1, 2), [b"0.5:1:b", "0.25:0:é".encode()])
    assert strings.raw_bytes() == prefixed(b"0.5:1:b", "0.25:0:é".encode())
    assert strings.to_dict() == {
        "name": "scores",
        "datatype": "BYTES",
        "shape": [1, 2],
        "data": ["0.5:1:b", "0.25:0:é"],
    }


# --- parameters -------------------------------------------------------------------------------


def test_parameters_read_as_in_imgcls_v1() -> None:
    parsed = parse_parameters(
        {"top_k": 3, "function_to_apply": "Sigmoid", "preprocessor_overrides": '{"crop_pct": 1.0}', "priority": 2}
    )
    assert parsed.top_k == 3
    assert parsed.function_to_apply is FunctionToApply.SIGMOID
    assert parsed.preprocessor_overrides == {"crop_pct": 1.0}
    assert parse_parameters({"preprocessor_overrides": {"crop_pct": 1.0}}).preprocessor_overrides == {"crop_pct": 1.0}
    unset = parse_parameters({})
    assert unset.top_k is None and unset.function_to_apply is None and unset.preprocessor_overrides is None


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"top_k": -1}, "parameter top_k must be an integer >= 0, got -1"),
        ({"top_k": True}, "parameter top_k must be an integer >= 0, got True"),
        ({"top_k": "3"}, "parameter top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "parameter top_k must be an integer >= 0"),
        ({"function_to_apply": "softplus"}, "function_to_apply must be one of softmax, sigmoid, none"),
        ({"function_to_apply": 1}, "function_to_apply must be one of softmax, sigmoid, none"),
        ({"preprocessor_overrides": "{not json"}, "preprocessor_overrides is not valid JSON"),
        ({"preprocessor_overrides": '{"crop_pct": NaN}'}, "preprocessor_overrides is not valid JSON"),
        ({"preprocessor_overrides": "[1, 2]"}, "preprocessor_overrides must be a JSON object, got a list"),
        ({"preprocessor_overrides": 7}, "preprocessor_overrides must be a JSON object, got a int"),
    ],
)
def test_bad_parameters_are_refused_naming_them(parameters: dict[str, object], expected: str) -> None:
    with pytest.raises(InvalidInputError, match="parameter") as caught:
        parse_parameters(parameters)
    assert expected in caught.value.message


# --- model names ------------------------------------------------------------------------------


def test_an_image_view_name_taken_by_another_model_is_refused() -> None:
    check_model_names(["a", "b", "a_image_image"])  # a_image_image is nobody's view
    with pytest.raises(ConfigError) as caught:
        check_model_names(["a", "b", "a_image"])
    assert "a_image" in caught.value.message and "rename one of them" in caught.value.message
