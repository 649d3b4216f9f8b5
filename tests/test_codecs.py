"""How a data migration's values cross the wire, without a database: the column codecs.

:class:`Column` encodes a Python value for its column's array parameter (JSON as compact text,
vectors and arrays as their literals) and decodes what it read (JSON and vectors parsed);
``decode_rows`` does the decoding for a whole page. These are pure functions, so they are tested
here on generated values; the tests against PostgreSQL (test_data_*) check the server reads them.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from brainmigrate._engine.batches import decode_rows
from brainmigrate._engine.table import Column, _array_literal

# --- columns as the catalog describes them (name, format_type, typname, typcategory, unique) -------

JSONB = Column("metadata", "jsonb", "jsonb", "U", False)
JSON = Column("doc", "json", "json", "U", False)
VECTOR = Column("embedding", "vector(3)", "vector", "U", False, builtin=False)
HALFVEC = Column("small", "halfvec(3)", "halfvec", "U", False, builtin=False)
TEXT_ARRAY = Column("tags", "text[]", "_text", "A", False)
FLOAT_ARRAY = Column("scores", "double precision[]", "_float8", "A", False)
ENUM = Column("mood", "sentiment", "sentiment", "E", False, builtin=False)
EXTENSION = Column("place", "geometry", "geometry", "U", False, builtin=False)
CITEXT = Column("label", "citext", "citext", "S", False, builtin=False)
BIGINT = Column("id", "bigint", "int8", "N", True)
TEXT = Column("content", "text", "text", "S", False)
UUID_COLUMN = Column("uid", "uuid", "uuid", "U", True)
TIMESTAMP = Column("created_at", "timestamp with time zone", "timestamptz", "D", False)

ALL = [
    JSONB,
    JSON,
    VECTOR,
    HALFVEC,
    TEXT_ARRAY,
    FLOAT_ARRAY,
    ENUM,
    EXTENSION,
    CITEXT,
    BIGINT,
    TEXT,
    UUID_COLUMN,
]

finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


# --- what travels as text, and how it is read and bound ------------------------------------------


@pytest.mark.parametrize(
    ("column", "as_text", "sent_as_text", "select", "param_type"),
    [
        (JSONB, True, True, '"metadata"::text', "text[]"),
        (VECTOR, True, True, '"embedding"::text', "text[]"),
        (ENUM, True, True, '"mood"::text', "text[]"),
        (EXTENSION, True, True, '"place"::text', "text[]"),
        (TEXT_ARRAY, False, True, '"tags"', "text[]"),
        (BIGINT, False, False, '"id"', "bigint[]"),
        (TEXT, False, False, '"content"', "text[]"),
        (TIMESTAMP, False, False, '"created_at"', "timestamp with time zone[]"),
    ],
)
def test_how_each_kind_of_column_is_read_and_bound(
    column: Column, as_text: bool, sent_as_text: bool, select: str, param_type: str
) -> None:
    assert column.as_text is as_text
    assert column.sent_as_text is sent_as_text
    assert column.select() == select
    assert column.select("m.") == f"m.{select}"
    assert column.param_type() == param_type


def test_a_column_name_is_quoted_where_it_is_read() -> None:
    odd = Column('we"ird näme', "jsonb", "jsonb", "U", False)
    assert odd.quoted == '"we""ird näme"'
    assert odd.select("m.") == 'm."we""ird näme"::text'


# --- JSON ----------------------------------------------------------------------------------------


@given(json_values)
@example({"sentiment": "joy", "score": 0.5, "tags": ["a", None]})
@example('ünïcödé \u2028 "quoted" \\ back')
def test_json_round_trips_through_compact_text(value: Any) -> None:
    for column in (JSONB, JSON):
        encoded = column.encode(value)
        if value is None:
            assert encoded is None  # SQL NULL, not the JSON null
            continue
        assert isinstance(encoded, str)
        assert encoded == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert column.decode(encoded) == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, float("-inf")], {"x": math.nan}], ids=repr)
def test_json_refuses_what_postgresql_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="JSON"):
        JSONB.encode(value)
    with pytest.raises(ValueError, match="JSON"):
        JSONB.encode_all([value])


@pytest.mark.parametrize(
    "value",
    [b"bytes", {1, 2}, datetime(2026, 1, 1), Decimal("1.5"), UUID(int=1), object(), {"k": b"v"}],
    ids=lambda v: type(v).__name__,
)
def test_json_refuses_values_it_has_no_type_for_instead_of_writing_their_str(value: Any) -> None:
    with pytest.raises(TypeError):
        JSONB.encode(value)
    with pytest.raises(TypeError):
        JSONB.encode_all([None, value])


# --- vectors -------------------------------------------------------------------------------------


@given(st.lists(finite, min_size=1, max_size=16))
@example([0.1, -0.0, 1e-300, 3.0])
def test_vectors_round_trip_through_their_literal(values: list[float]) -> None:
    encoded = VECTOR.encode(values)
    assert encoded.startswith("[")
    assert encoded.endswith("]")
    assert VECTOR.decode(encoded) == values
    assert HALFVEC.encode(values) == encoded
    assert VECTOR.encode(tuple(values)) == encoded


def test_vector_values_are_floats_and_text_passes_through() -> None:
    assert VECTOR.encode([1, 2, 3]) == "[1.0,2.0,3.0]"
    assert VECTOR.encode("[1,2,3]") == "[1,2,3]"
    assert VECTOR.decode("[1,2.5,-3]") == [1, 2.5, -3]
    with pytest.raises(ValueError, match="could not convert"):
        VECTOR.encode(["one"])


# --- arrays --------------------------------------------------------------------------------------


def parse_array(literal: str) -> list[Any]:
    """Read back a PostgreSQL array literal as brainmigrate writes them (a test oracle).

    Quoted elements are text (backslash escapes ``\\`` and ``"``), ``NULL`` is None, other bare
    elements are floats; ``{...}`` nests.
    """
    pos = 0

    def array() -> list[Any]:
        nonlocal pos
        assert literal[pos] == "{"
        pos += 1
        items: list[Any] = []
        if literal[pos] == "}":
            pos += 1
            return items
        while True:
            items.append(element())
            if literal[pos] == "}":
                pos += 1
                return items
            assert literal[pos] == ",", literal[pos:]
            pos += 1

    def element() -> Any:
        nonlocal pos
        if literal[pos] == "{":
            return array()
        if literal[pos] == '"':
            pos += 1
            text = []
            while literal[pos] != '"':
                if literal[pos] == "\\":
                    pos += 1
                text.append(literal[pos])
                pos += 1
            pos += 1
            return "".join(text)
        end = pos
        while literal[end] not in ",}":
            end += 1
        bare, pos = literal[pos:end], end
        return None if bare == "NULL" else float(bare)

    result = array()
    assert pos == len(literal), "trailing characters"
    return result


text_elements = st.none() | st.text()


@given(st.lists(text_elements, max_size=8))
@example(['a "quoted" word', "back\\slash", "", "NULL", "{,}", None, "ünï"])
def test_text_arrays_round_trip_through_their_literal(values: list[str | None]) -> None:
    literal = TEXT_ARRAY.encode(values)
    assert parse_array(literal) == values


@given(st.lists(st.lists(st.none() | st.text(max_size=5) | finite, max_size=3), max_size=3))
def test_nested_arrays_keep_their_shape_and_elements(values: list[list[Any]]) -> None:
    expected = [[float(x) if isinstance(x, float) else x for x in row] for row in values]
    assert parse_array(_array_literal(values)) == expected


def test_array_elements_are_spelled_as_postgresql_reads_them() -> None:
    assert TEXT_ARRAY.encode([]) == "{}"
    assert TEXT_ARRAY.encode(["a", None, 'q"b\\c']) == '{"a",NULL,"q\\"b\\\\c"}'
    assert FLOAT_ARRAY.encode([1.5, None, 2.0]) == "{1.5,NULL,2.0}"
    assert FLOAT_ARRAY.encode((1, 2)) == '{"1","2"}'  # ints as quoted text: any element type takes them
    assert _array_literal([[1.0, 2.0], [3.0, None]]) == "{{1.0,2.0},{3.0,NULL}}"
    assert TEXT_ARRAY.encode("{already,a,literal}") == "{already,a,literal}"


# --- other types sent as text, and types bound as they are ---------------------------------------


def test_enums_and_extension_types_are_sent_as_their_text() -> None:
    assert ENUM.encode("joy") == "joy"
    assert EXTENSION.encode(42) == "42"
    assert CITEXT.encode("MiXeD") == "MiXeD"


@given(st.one_of(st.integers(), st.text(), finite, st.uuids(), st.datetimes(), st.none()))
def test_types_the_driver_knows_are_bound_unchanged(value: Any) -> None:
    for column in (BIGINT, TEXT, UUID_COLUMN, TIMESTAMP):
        assert column.encode(value) is value
        assert column.decode(value) is value


@pytest.mark.parametrize("column", ALL, ids=lambda c: c.sql_type)
@given(values=st.lists(st.none() | json_values, max_size=6))
def test_encode_all_is_encode_of_each_value(column: Column, values: list[Any]) -> None:
    try:
        one_by_one = [column.encode(value) for value in values]
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            column.encode_all(values)
        return
    assert column.encode_all(values) == one_by_one
    assert column.encode_all(iter(values)) == one_by_one


def test_decode_leaves_null_and_unparsed_text_alone() -> None:
    assert JSONB.decode(None) is None
    assert JSONB.decode({"already": "decoded"}) == {"already": "decoded"}
    assert JSONB.decode("null") is None
    assert ENUM.decode("joy") == "joy"
    assert TEXT.decode('{"not": "parsed"}') == '{"not": "parsed"}'
    assert HALFVEC.decode("[1,2]") == "[1,2]"  # only vector and JSON text is parsed


# --- decode_rows: a page at once, as each value would be decoded ----------------------------------

PAGE_COLUMNS = [BIGINT, JSONB, TEXT, VECTOR, ENUM]


def plan_reading(columns: list[Column]) -> Any:
    """The one attribute of a RunPlan that decoding reads."""
    return SimpleNamespace(read_columns=columns)


def read_value(column: Column) -> st.SearchStrategy[Any]:
    """A value as asyncpg returns it for ``column.select()``."""
    if column is JSONB:
        return st.none() | json_values.map(json.dumps)
    if column is VECTOR:
        return st.none() | st.lists(finite, min_size=1, max_size=4).map(lambda v: json.dumps(v))
    if column is BIGINT:
        return st.integers()
    return st.none() | st.text()


rows = st.lists(st.tuples(*(read_value(column) for column in PAGE_COLUMNS)), max_size=6)


@given(rows)
def test_decode_rows_is_decode_of_each_value(page: list[tuple[Any, ...]]) -> None:
    plan = plan_reading(PAGE_COLUMNS)
    expected = [
        {column.name: column.decode(value) for column, value in zip(PAGE_COLUMNS, row, strict=True)}
        for row in page
    ]
    assert decode_rows(plan, page) == expected


def test_decode_rows_with_nothing_to_parse_keeps_the_values() -> None:
    plan = plan_reading([BIGINT, TEXT])
    assert decode_rows(plan, [(1, '{"a": 1}'), (2, None)]) == [
        {"id": 1, "content": '{"a": 1}'},
        {"id": 2, "content": None},
    ]
    assert decode_rows(plan, []) == []


def test_decode_rows_refuses_rows_of_another_width() -> None:
    with pytest.raises(ValueError, match="a row of 3 values read for 2 columns"):
        decode_rows(plan_reading([BIGINT, JSONB]), [(1, "{}", "extra")])
