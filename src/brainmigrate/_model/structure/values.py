"""JSON values: checking what jsonb can hold, copying, compact text, and jsonb equality of scalars."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from ..._errors import MigrationValidationError
from .paths import _key_problem


def _json_problem(value: object, depth: int = 0) -> str | None:
    if depth > 100:
        return "is nested more than 100 levels deep"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if len(str(abs(value))) <= 1000 else "has an integer of more than 1000 digits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"has {value!r}, which JSON cannot hold"
    if isinstance(value, Decimal):
        return None if value.is_finite() else f"has {value!r}, which JSON cannot hold"
    if isinstance(value, str):
        return _key_problem(value) if value else None
    if isinstance(value, list | tuple):
        return next(filter(None, (_json_problem(item, depth + 1) for item in value)), None)
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _json_problem(item, depth + 1)
            if not isinstance(key, str):
                problem = f"has a key that is not a string ({key!r})"
            elif key:
                problem = _key_problem(key) or problem
            if problem:
                return problem
        return None
    return f"has a {type(value).__name__} ({value!r}), which is not a JSON value"


def _json_copy(value: Any) -> Any:
    """A deep copy of a valid JSON value, tuples as lists."""
    if isinstance(value, list | tuple):
        return [_json_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    return value


def json_value(value: object, *, what: str) -> Any:
    """A copy of ``value`` if it is a JSON value jsonb can hold; else MigrationValidationError."""
    problem = _json_problem(value)
    if problem:
        raise MigrationValidationError(
            f"invalid {what} {value!r}: it {problem}; pass None, a bool, a finite number, a string "
            "(without NUL), or lists and dicts with string keys of these"
        )
    return _json_copy(value)


def json_text(value: Any) -> str:
    """A valid JSON value as compact JSON text, keys sorted (so equal values give equal text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_text(item) for item in value) + "]"
    items = sorted(value.items())
    return "{" + ",".join(f"{json_text(key)}:{json_text(item)}" for key, item in items) + "}"


def _scalar_key(value: Any) -> tuple[str, Any]:
    """What a JSON scalar equals under jsonb ``=``: numbers by value (1 equals 1.0), true is not 1."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, str):
        return ("string", value)
    return ("number", Decimal(json_text(value)))


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, list | dict)
