"""Values as JSON: attrs classes as objects, enums as their values, datetimes in ISO 8601."""

from __future__ import annotations

import datetime
import enum
import math
from collections.abc import Mapping
from typing import Any

import attrs

from .._model.items import Progress


def to_json(value: Any) -> Any:
    """``value`` as data ``json.dumps`` takes; anything unknown (a UUID, a Decimal) as its text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, Progress):
        return {
            **{field.name: to_json(getattr(value, field.name)) for field in attrs.fields(Progress)},
            "fraction": to_json(value.fraction),
            "eta_seconds": to_json(value.eta_seconds),
        }
    if attrs.has(type(value)):
        return {field.name: to_json(getattr(value, field.name)) for field in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
