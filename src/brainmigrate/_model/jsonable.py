"""Values as JSON data: the one conversion behind the HTTP API's bodies and the command line's ``--json``."""

from __future__ import annotations

import datetime
import enum
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

#: Digits before the point past which an integral Decimal becomes a float rather than an int:
#: Python prints no longer int by default (``sys.get_int_max_str_digits()``), and building one
#: from ``Decimal("1E+100000000")`` would take seconds and megabytes.
_MAX_INT_DIGITS = 4300


def jsonable(value: Any) -> Any:
    """``value`` as data that ``json.dumps(..., allow_nan=False)`` takes.

    - None, bools, ints and strings as they are; floats too, except NaN and the infinities: None.
    - An enum: its value, converted in turn.
    - A datetime, date or time: ISO 8601 text. A timedelta: its seconds, a float.
    - A Decimal: an int when integral, else a float; None when it is not finite.
    - bytes (and bytearray, memoryview): their hex text.
    - An attrs instance: an object of its fields, then of the derived properties its class names
      in ``json_properties`` (such as :class:`Progress`'s ``fraction`` and ``eta_seconds``).
    - A mapping: an object; a key that is not text is converted, then written as JSON writes it
      (``1`` as ``"1"``, ``True`` as ``"true"``, an enum as its value).
    - Lists and tuples: lists. Sets: lists, sorted when their items can be (the same set always
      gives the same list).
    - Anything else (a UUID, a path): its ``str()``.
    """
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if attrs.has(type(value)):
        return _attrs(value)
    if isinstance(value, Mapping):
        return {_key(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        return _set(value)
    return str(value)


def _decimal(value: Decimal) -> int | float | None:
    if not value.is_finite():
        return None
    if value == value.to_integral_value() and value.adjusted() < _MAX_INT_DIGITS:
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _attrs(value: Any) -> dict[str, Any]:
    """An attrs instance's fields, then the derived properties its class lists in ``json_properties``."""
    body = {field.name: jsonable(getattr(value, field.name)) for field in attrs.fields(type(value))}
    for name in getattr(type(value), "json_properties", ()):
        body[name] = jsonable(getattr(value, name))
    return body


def _key(key: Any) -> str:
    """A mapping's key as an object's key: text as it is, anything else as JSON writes it."""
    converted = jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted, allow_nan=False)


def _set(value: set[Any] | frozenset[Any]) -> list[Any]:
    items = [jsonable(item) for item in value]
    try:
        return sorted(items)
    except TypeError:  # items of different kinds (text and numbers), or objects
        return items
