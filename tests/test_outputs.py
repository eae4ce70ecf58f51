"""How a step's output becomes the JSON text that is stored and handed to its consumers: orjson
writes it when it can, and the value stored is the one Python's json module would store (UUIDs
and enums, which json refuses, as their values)."""

from __future__ import annotations

import json
import math
import uuid
from enum import Enum, IntEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statepipe.engine.outputs import decode, encode
from statepipe.errors import OutputNotSerializable

_storable = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))  # a NUL is refused: see its test
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # past 64 bits both ways
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_storable)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(_storable, max_size=8) | st.integers() | st.booleans(), inner, max_size=4),
    max_leaves=20,
)


@given(_values)
def test_an_output_is_stored_as_the_value_the_json_module_would_store(value: Any):
    assert json.loads(encode(value, "step s")) == json.loads(json.dumps(value))


def test_an_output_is_compact_json_text():
    assert encode({"a": [1, 2.5, "é"], "b": True}, "step s") == '{"a":[1,2.5,"é"],"b":true}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_not_stored_as_null(bad: float):
    with pytest.raises(OutputNotSerializable, match="output holds NaN or infinity, which JSON has no value for"):
        encode({"score": bad}, "step s")


def test_an_integer_past_64_bits_is_stored_exactly():
    big = 2**70 + 1
    assert decode(encode([big, -big], "step s")) == [big, -big]


class Colour(Enum):
    RED = "red"


class Size(IntEnum):
    LARGE = 3


@pytest.mark.parametrize("beside", [1, None], ids=["alone", "beside-a-null"])
def test_uuids_and_enums_are_stored_as_their_values(beside: Any):
    uid = uuid.UUID(int=7)
    value = {"id": uid, "colour": Colour.RED, "size": Size.LARGE, "other": beside}
    assert decode(encode(value, "step s")) == {"id": str(uid), "colour": "red", "size": 3, "other": beside}


def test_subclasses_of_json_types_are_stored_as_the_json_module_writes_them():
    class Masked(dict):  # json writes a dict subclass through its items(); orjson would not
        def items(self) -> Any:
            return [(key, "***") for key in self]

    assert decode(encode({"secret": Masked(token="abc"), "n": Size.LARGE}, "step s")) == {"secret": {"token": "***"}, "n": 3}


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes"], ids=["set", "object", "bytes"])
def test_a_value_json_cannot_hold_is_refused_naming_its_type(value: Any):
    with pytest.raises(OutputNotSerializable, match=f"step s returned {type(value).__name__}, which cannot be stored as JSON"):
        encode(value, "step s")


def test_an_output_nested_past_the_documented_limit_is_refused_naming_it():
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(OutputNotSerializable, match="output nests 100001 levels deep; statepipe stores values up to 512 levels"):
        encode(deep, "step s")


def test_an_output_nested_500_levels_is_stored_whole():
    deep: list[Any] = []
    for _ in range(499):
        deep = [deep]
    assert decode(encode({"deep": deep}, "step s")) == {"deep": deep}


def test_a_nul_character_in_an_output_is_refused():
    with pytest.raises(OutputNotSerializable, match="NUL character"):
        encode({"text": "a\x00b"}, "step s")
