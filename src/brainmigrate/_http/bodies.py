"""Request bodies and ids, read and checked by hand: what is not understood is refused (413, 415, 422)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
from starlette.requests import Request

from .._errors import ConfigError
from .._model.config import MigrationConfig
from .._model.metadata import MigrationType, id_problem
from .errors import HTTPProblem

#: The largest request body read, in bytes; a config object is a few hundred.
MAX_BODY_BYTES = 64 * 1024

_INTEGER = "an integer"
_NUMBER = "a number"
_BOOLEAN = "true or false"

#: The MigrationConfig fields a request body may set, with the JSON type each takes.
CONFIG_FIELDS: Mapping[str, str] = {
    "dry_run": _BOOLEAN,
    "batch_size": _INTEGER,
    "enable_rollback": _BOOLEAN,
    "validate_before": _BOOLEAN,
    "validate_after": _BOOLEAN,
    "parallel_execution": _BOOLEAN,
    "checkpoint_frequency": _INTEGER,
    "timeout_seconds": _NUMBER,
    "continue_on_error": _BOOLEAN,
    "lock_wait_seconds": _NUMBER,
    "statement_lock_timeout_ms": _INTEGER,
    "allow_checksum_drift": _BOOLEAN,
    "concurrency": _INTEGER,
    "max_workers": _INTEGER,
    "rate_limit": _NUMBER,
    "lease_seconds": _NUMBER,
    "dry_run_sample": _INTEGER,
}
#: Fields that may also be null.
_NULLABLE = frozenset({"rate_limit"})


def _invalid(message: str) -> HTTPProblem:
    return HTTPProblem(422, "InvalidRequestBody", message)


async def read_body(request: Request, *, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, read as it arrives; 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> HTTPProblem:
    return HTTPProblem(
        413, "PayloadTooLarge", f"the request body is larger than {limit} bytes; send only the config fields"
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object; an empty body is ``{}``."""
    body = await read_body(request)
    if not body.strip():
        return {}
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HTTPProblem(
            415,
            "UnsupportedMediaType",
            f"the request body is {content_type!r}; send JSON with Content-Type: application/json",
        )
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid(f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(value, dict):
        raise _invalid(f"the request body must be a JSON object, got {_json_kind(value)}")
    return value


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _fits(kind: str, value: object) -> bool:
    if kind == _BOOLEAN:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == _INTEGER:
        # JSON has one number type: 3.0 is the integer 3 (as JSON Schema says), 3.5 is not.
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, int | float) and math.isfinite(value)


def config_from(
    body: Mapping[str, Any], base: MigrationConfig, *, extra: Mapping[str, str] | None = None
) -> tuple[MigrationConfig, dict[str, Any]]:
    """``base`` with the config fields of ``body``, and the values of the ``extra`` fields.

    Unknown fields and values of the wrong type or out of range are refused (422).
    """
    allowed = {**CONFIG_FIELDS, **(extra or {})}
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _invalid(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the fields are {', '.join(sorted(allowed))}"
        )
    for name, value in body.items():
        kind = allowed[name]
        if value is None and name in _NULLABLE:
            continue
        if not _fits(kind, value):
            raise _invalid(f"{name} must be {kind}, got {_json_kind(value)} ({json.dumps(value)[:40]})")
    changes: dict[str, Any] = {
        name: int(value) if CONFIG_FIELDS[name] == _INTEGER and isinstance(value, float) else value
        for name, value in body.items()
        if name in CONFIG_FIELDS
    }
    try:
        config = attrs.evolve(base, **changes)
    except ConfigError as exc:
        raise _invalid(str(exc)) from None
    return config, {name: value for name, value in body.items() if name not in CONFIG_FIELDS}


def checked_id(raw: str) -> str:
    """A migration id from the path; 404 when it cannot be one (no migration can have it)."""
    problem = id_problem(raw)
    if problem is not None:
        raise HTTPProblem(
            404, "MigrationNotFoundError", f"no migration has the id {raw[:80]!r}: a migration id {problem}"
        )
    return raw


def migration_type(request: Request) -> MigrationType | None:
    """The ``migration_type`` query parameter (a name such as DATABASE_SCHEMA, or its value), or None."""
    raw = request.query_params.get("migration_type")
    if raw is None:
        return None
    for member in MigrationType:
        if raw in (member.name, member.value):
            return member
    names = ", ".join(member.name for member in MigrationType)
    raise HTTPProblem(
        422, "InvalidQueryParameter", f"migration_type must be one of {names}, got {raw[:40]!r}"
    )
