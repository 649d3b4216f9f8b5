"""The engine's JSON codec: orjson (installed with the ``orjson`` extra, as in the tests'
environment) gives exactly what the standard library's ``json`` gives, values and errors alike."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brainmigrate._engine import jsoncodec

#: Integers of any size, around 64 bits above all (where orjson stops holding them exactly).
INTEGERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30)]),
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(st.characters(exclude_categories=("Cs",)))  # any character but lone surrogates
LEAVES = st.one_of(st.none(), st.booleans(), INTEGERS, FLOATS, TEXT)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(TEXT, inner, max_size=6),
    ),
    max_leaves=40,
)


def test_the_tests_environment_has_orjson_so_both_paths_are_compared() -> None:
    assert jsoncodec.FAST
    assert jsoncodec.dumps is jsoncodec.orjson_dumps
    assert jsoncodec.loads is jsoncodec.orjson_loads


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_any_json_value_encodes_to_text_that_both_paths_decode_to_the_same_value(value: Any) -> None:
    fast, standard = jsoncodec.orjson_dumps(value), jsoncodec.stdlib_dumps(value)

    for text in (fast, standard):
        assert _same(jsoncodec.orjson_loads(text), jsoncodec.stdlib_loads(text))
    assert _same(json.loads(fast), json.loads(standard))


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
@example({"small": 6.103515625e-05, "tiny": 1e-7, "zero": 0.0, "edge": 1e-4, "big": 1e16})
def test_any_json_value_encodes_to_exactly_the_text_the_standard_library_writes(value: Any) -> None:
    assert jsoncodec.orjson_dumps(value) == jsoncodec.stdlib_dumps(value)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_text_spelled_by_the_standard_library_is_read_the_same_by_orjson(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=True)  # escapes (\\u00e9, surrogate pairs) as well

    assert _same(jsoncodec.orjson_loads(text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",  # beyond 64 bits: an exact int, not a float
        '{"n": [-9223372036854775809, 18446744073709551616]}',
        "1e400",  # the standard library's infinity
        "[NaN, Infinity, -Infinity]",  # not JSON, but json reads them
        '"\\ud800"',  # a lone surrogate
        '{"a": 1, "a": 2}',  # the last of duplicate keys (a json column keeps both)
        '{"é": "日本語 🎉", "k": "\\u00e9\\ud83c\\udf89"}',
        "-0",
        "-0.0",
        "0.1000000000000000055511151231257827",
        "[" * 2000 + "]" * 2000,  # deeper than orjson reads
    ],
)
def test_edge_texts_decode_as_the_standard_library_decodes_them(text: str) -> None:
    try:
        expected = json.loads(text)
    except RecursionError:
        with pytest.raises(RecursionError):
            jsoncodec.orjson_loads(text)
        return
    assert _same(jsoncodec.orjson_loads(text), expected)


class Colour(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    BIG = 3


class Name(enum.StrEnum):
    ADA = "ada"


class Text(str):
    pass


class Number(float):
    pass


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        {"n": -(2**80)},
        {1: "int key", 2.5: "float key", False: "bool key", None: "null key"},
        {Name.ADA: 1, Text("k"): [Size.BIG, Name.ADA, Text("v"), Number(1.5)]},
        [[[[[[[[[[1]]]]]]]]]] * 3,
        [{"x": 1}] * 3,  # one object several times (not a cycle)
        {"float": 1e-7, "big": 1e300, "tiny": 5e-324, "neg": -0.0},
        "\x00\x1f\u2028\u2029 é 日本 🎉",
    ],
)
def test_values_at_the_edges_encode_to_what_the_standard_library_writes(value: Any) -> None:
    assert json.loads(jsoncodec.orjson_dumps(value)) == json.loads(jsoncodec.stdlib_dumps(value))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        ({"x": [float("inf")]}, ValueError),
        (uuid.UUID(int=7), TypeError),
        ({"at": datetime(2025, 1, 1, tzinfo=UTC)}, TypeError),
        ([Colour.RED], TypeError),
        ({"p": Point(1)}, TypeError),
        (Decimal("0.5"), TypeError),
        ({1, 2}, TypeError),
        (b"raw", TypeError),
        ("\ud800", None),  # json writes a lone surrogate as it is (PostgreSQL then refuses it)
    ],
)
def test_values_json_refuses_are_refused_with_the_standard_librarys_error(value: Any, error: Any) -> None:
    if error is None:
        assert jsoncodec.orjson_dumps(value) == jsoncodec.stdlib_dumps(value)
        return
    with pytest.raises(error) as standard:
        jsoncodec.stdlib_dumps(value)
    with pytest.raises(error) as fast:
        jsoncodec.orjson_dumps(value)
    assert str(fast.value) == str(standard.value)


def test_a_cycle_is_refused_as_the_standard_library_refuses_it() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises((ValueError, RecursionError)) as standard:
        jsoncodec.stdlib_dumps(cycle)
    with pytest.raises(type(standard.value)) as fast:
        jsoncodec.orjson_dumps(cycle)
    assert str(fast.value) == str(standard.value)


#: What jsonb can hold: no NUL character in its strings.
JSONB_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
JSONB_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), INTEGERS, FLOATS, JSONB_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(JSONB_TEXT, inner, max_size=6)),
    max_leaves=40,
)


@pytest.mark.anyio
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSONB_VALUES)
async def test_both_paths_write_the_same_jsonb_to_postgresql(
    brainmigrate_pool: asyncpg.Pool[Any], value: Any
) -> None:
    """What jsonb stores (its own text) is the same from orjson's text and from json's."""
    fast = await brainmigrate_pool.fetchval("SELECT $1::text::jsonb::text", jsoncodec.orjson_dumps(value))
    standard = await brainmigrate_pool.fetchval("SELECT $1::text::jsonb::text", jsoncodec.stdlib_dumps(value))

    assert fast == standard
    assert _same(jsoncodec.orjson_loads(fast), jsoncodec.stdlib_loads(standard))


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down (1 is not 1.0 nor True), -0.0 told from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
