"""The one conversion of results, progress and history into JSON data (HTTP API and ``--json``):
each rule, and properties over any value built from the types it supports."""

from __future__ import annotations

import datetime
import enum
import json
import math
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brainmigrate import (
    AttemptStatus,
    HistoryStatistics,
    MigrationOperation,
    MigrationStatus,
    MigrationType,
    Progress,
    RunStatus,
)
from brainmigrate._model.jsonable import jsonable

PURE = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MOMENT = datetime.datetime(2026, 12, 2, 5, 31, 2, 123456, tzinfo=datetime.UTC)


def dumped(value: Any) -> str:
    """``value`` converted, as the HTTP API and the command line write it: NaN refused."""
    return json.dumps(jsonable(value), allow_nan=False)


def progress(*, total: int | None = 40, rate: float | None = 8.0) -> Progress:
    return Progress(
        migration_id="tag_memories_002",
        status="running",
        processed=10,
        failed=0,
        skipped=0,
        total=total,
        batch_number=1,
        rate=rate,
        started_at=MOMENT,
        updated_at=MOMENT,
    )


class Colour(enum.Enum):
    """An enum whose values are not all JSON types."""

    RED = "red"
    WHEN = datetime.date(2026, 1, 1)


@attrs.frozen
class Pair:
    """An attrs class of any two values, for the properties."""

    left: Any
    right: Any


# -- each rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(True, True, id="bool"),
        pytest.param(-7, -7, id="int"),
        pytest.param("tag", "tag", id="text"),
        pytest.param(2.5, 2.5, id="float"),
        pytest.param(float("nan"), None, id="nan"),
        pytest.param(float("inf"), None, id="infinity"),
        pytest.param(-float("inf"), None, id="minus-infinity"),
        pytest.param(Decimal("2.50"), 2.5, id="decimal-fraction"),
        pytest.param(Decimal("3.000"), 3, id="decimal-integral"),
        pytest.param(Decimal("-0"), 0, id="decimal-minus-zero"),
        pytest.param(Decimal("1E+3"), 1000, id="decimal-exponent"),
        pytest.param(Decimal("NaN"), None, id="decimal-nan"),
        pytest.param(Decimal("sNaN"), None, id="decimal-signalling-nan"),
        pytest.param(Decimal("-Infinity"), None, id="decimal-infinity"),
        pytest.param(Decimal("1E+5000"), None, id="decimal-past-a-float"),
        pytest.param(MOMENT, "2026-12-02T05:31:02.123456+00:00", id="datetime"),
        pytest.param(datetime.date(2026, 12, 2), "2026-12-02", id="date"),
        pytest.param(datetime.time(5, 31), "05:31:00", id="time"),
        pytest.param(datetime.timedelta(minutes=1, microseconds=500000), 60.5, id="timedelta"),
        pytest.param(b"\x00\xffA", "00ff41", id="bytes"),
        pytest.param(bytearray(b"\x01"), "01", id="bytearray"),
        pytest.param(RunStatus.RUNNING, "running", id="str-enum"),
        pytest.param(Colour.WHEN, "2026-01-01", id="enum-of-a-date"),
        pytest.param((1, "a"), [1, "a"], id="tuple"),
        pytest.param({"b", "a", "c"}, ["a", "b", "c"], id="set-sorted"),
        pytest.param(frozenset({3, 1, 2}), [1, 2, 3], id="frozenset-sorted"),
        pytest.param(
            {MigrationStatus.PENDING: 1, 2: True, None: 3}, {"pending": 1, "2": True, "null": 3}, id="keys"
        ),
        pytest.param(uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001", id="uuid"),
        pytest.param(PurePosixPath("db/migrations"), "db/migrations", id="other-as-text"),
    ],
)
def test_each_supported_type_has_one_json_form(value: Any, expected: Any) -> None:
    assert jsonable(value) == expected
    assert json.loads(dumped(value)) == expected


def test_an_attrs_instance_is_an_object_of_its_fields_in_their_order() -> None:
    pair = Pair(left=MigrationType.HYBRID, right=[Decimal("0.5")])

    assert jsonable(pair) == {"left": "hybrid", "right": [0.5]}


def test_progress_gives_its_fraction_and_seconds_left_after_its_fields() -> None:
    body = jsonable(progress())

    assert list(body) == [field.name for field in attrs.fields(Progress)] + ["fraction", "eta_seconds"]
    assert (body["status"], body["started_at"], body["fraction"], body["eta_seconds"]) == (
        "running",
        "2026-12-02T05:31:02.123456+00:00",
        0.25,
        3.75,
    )


def test_progress_without_a_total_or_a_finite_rate_has_null_figures() -> None:
    unknown = jsonable(progress(total=None, rate=None))
    endless = jsonable(progress(rate=float("inf")))

    assert (unknown["fraction"], unknown["eta_seconds"]) == (None, None)
    assert (endless["rate"], endless["eta_seconds"]) == (None, 0.0)
    assert json.loads(dumped(progress(rate=float("nan"))))["rate"] is None


def test_history_statistics_give_their_success_rate_after_their_fields() -> None:
    statistics = HistoryStatistics(
        since=MOMENT,
        attempts=4,
        completed=3,
        failed=1,
        dirty=0,
        running=0,
        rollbacks=0,
        average_rollback_seconds=None,
    )

    body = jsonable(statistics)

    assert list(body)[-1] == "success_rate"
    assert (body["since"], body["success_rate"]) == ("2026-12-02T05:31:02.123456+00:00", 0.75)


def test_a_set_of_items_that_cannot_be_ordered_keeps_them_all() -> None:
    assert sorted(map(str, jsonable({1, "a"}))) == ["1", "a"]


def test_the_command_line_loads_the_conversion_only_when_it_prints_json() -> None:
    """Importing the verbs (every command does) loads neither attrs nor the model: ``--help`` and
    the verbs that print text stay quick to start."""
    code = (
        "import sys, brainmigrate._cli.main, brainmigrate._cli.verbs; "
        "print(sorted(m for m in ('attrs', 'brainmigrate._model.jsonable') if m in sys.modules)); "
        "from brainmigrate._cli import output; output.print_json({'at': float('nan')}); "
        "print('brainmigrate._model.jsonable' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.split("\n")[:4] == ["[]", "{", '  "at": null', "}"]
    assert out.split("\n")[4] == "True"


# -- properties ---------------------------------------------------------------------------------

#: The values JSON holds as they are: what converts to itself and round-trips through JSON.
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)

enums = st.sampled_from([*RunStatus, *AttemptStatus, *MigrationOperation, *MigrationType, *Colour])
#: The supported types that can be keys and set items (a signalling NaN Decimal cannot be hashed).
hashable = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.decimals().filter(lambda number: not number.is_snan())
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.binary(max_size=6)
    | enums
    | st.uuids()
)
leaves = (
    hashable
    | st.decimals()
    | st.builds(progress, total=st.none() | st.integers(0, 10**9), rate=st.none() | st.floats())
)
supported = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.sets(hashable, max_size=4)
        | st.frozensets(hashable, max_size=4)
        | st.dictionaries(hashable, children, max_size=4)
        | st.builds(Pair, children, children)
    ),
    max_leaves=20,
)


def only_json_types(value: Any) -> bool:
    """Whether ``value`` holds only None, bools, ints, finite floats, text, lists and objects with
    text keys."""
    if value is None or isinstance(value, bool | int | str):
        return type(value) in (type(None), bool, int, str)
    if isinstance(value, float):
        return type(value) is float and math.isfinite(value)
    if isinstance(value, list):
        return type(value) is list and all(only_json_types(item) for item in value)
    if isinstance(value, dict):
        return all(type(key) is str and only_json_types(item) for key, item in value.items())
    return False


@PURE
@example(value={"rate": float("nan"), "scores": {Decimal("1.5"), Decimal("NaN")}})
@example(value=[Decimal("sNaN"), datetime.timedelta.max, b""])
@given(value=supported)
def test_any_supported_value_converts_to_json_types_that_dump_without_nan(value: Any) -> None:
    """Whatever the value holds (nested results, progress, sets of decimals, NaN), it converts to
    JSON types only, which json.dumps takes with allow_nan=False; the conversion is then done (it
    leaves its own output as it is) and that output reads back equal."""
    converted = jsonable(value)

    assert only_json_types(converted)
    assert jsonable(converted) == converted
    assert json.loads(json.dumps(converted, allow_nan=False)) == converted


@PURE
@given(value=plain)
def test_plain_json_values_round_trip_unchanged(value: Any) -> None:
    assert jsonable(value) == value
    assert json.loads(dumped(value)) == value


@PURE
@given(value=st.sets(hashable, max_size=6))
def test_a_set_gives_the_same_list_whatever_order_it_was_built_in(value: set[Any]) -> None:
    rebuilt = set(reversed(list(value)))
    converted = jsonable(value)

    assert len(converted) == len(value)
    if all(isinstance(item, str) for item in converted):
        assert converted == jsonable(rebuilt) == sorted(converted)
