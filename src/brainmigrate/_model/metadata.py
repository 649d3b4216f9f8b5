"""What a migration declares about itself, and the states it can be in."""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from .._errors import MigrationValidationError


class MigrationType(enum.StrEnum):
    """The kind of change a migration makes."""

    DATABASE_SCHEMA = "database_schema"
    DATABASE_DATA = "database_data"
    MEMORY_STRUCTURE = "memory_structure"
    MEMORY_DATA = "memory_data"
    HYBRID = "hybrid"

    @classmethod
    def parse(cls, value: MigrationType | str) -> MigrationType:
        """Accept a member, its value (``"database_schema"``) or its name (``"DATABASE_SCHEMA"``)."""
        if isinstance(value, cls):
            return value
        text = str(value)
        try:
            return cls(text.lower())
        except ValueError:
            names = ", ".join(member.name for member in cls)
            raise MigrationValidationError(f"unknown migration type {text!r}; use one of {names}") from None


class MigrationStatus(enum.StrEnum):
    """Where a migration stands, or how one run of it ended."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    DIRTY = "dirty"
    SKIPPED = "skipped"
    #: A data migration asked to stop; it stops at its next batch boundary.
    CANCELLING = "cancelling"
    #: A data migration stopped (paused) midway; ``execute(id)`` resumes it from its checkpoint.
    CANCELLED = "cancelled"


_VERSION_PART = re.compile(r"\d+|[A-Za-z]+")


_END = (0.5, "")  # ranks above text parts (pre-releases) and below numbers (later releases)


def version_key(version: str) -> tuple[tuple[float, int | str], ...]:
    """Order versions as versions, not strings: ``"2.10.0"`` sorts after ``"2.9.0"``.

    Numeric parts compare as numbers; ``"1.0"`` equals ``"1.0.0"``, and a pre-release such as
    ``"1.0rc1"`` sorts before its release.
    """
    tokens = _VERSION_PART.findall(version)
    release_length = next((i for i, token in enumerate(tokens) if not token.isdigit()), len(tokens))
    release = [int(token) for token in tokens[:release_length]]
    while release and release[-1] == 0:
        release.pop()
    rest = [(1, int(t)) if t.isdigit() else (0, t.lower()) for t in tokens[release_length:]]
    return (*((1, number) for number in release), *rest, _END)


def _migration_type(value: MigrationType | str) -> MigrationType:
    try:
        return MigrationType.parse(value)
    except MigrationValidationError as exc:
        raise MigrationValidationError(f"MigrationMetadata.migration_type: {exc}") from None


#: The longest migration id, in UTF-8 bytes: ample for real ids, and small enough that the history
#: table's btree index on ``migration_id`` always holds it.
MAX_ID_BYTES = 255

#: Characters an id (or a version) must not contain: they are invisible, or not valid text at all.
_FORBIDDEN = {"Cc": "control character", "Cf": "invisible formatting character", "Cs": "lone surrogate"}


def _shown(value: str, limit: int = 40) -> str:
    """``value`` for an error message, cut short when long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _forbidden_character(value: str) -> str | None:
    """Why ``value`` cannot be stored as a name, naming its first forbidden character; None if it can."""
    for position, char in enumerate(value):
        kind = _FORBIDDEN.get(unicodedata.category(char))
        if kind is not None:
            return f"must not contain a {kind} (found {char!r} at position {position} of {_shown(value)})"
    return None


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a migration id, or None when it can."""
    if not value.strip():
        return "must not be empty"
    problem = _forbidden_character(value)
    if problem is not None:
        return problem
    if value != value.strip():
        return f"must not have leading or trailing whitespace (got {_shown(value)}); remove it"
    size = len(value.encode())
    if size > MAX_ID_BYTES:
        return (
            f"is {size} bytes in UTF-8; at most {MAX_ID_BYTES} are allowed (got {_shown(value)}); "
            "use a shorter id"
        )
    return None


def _check_id(where: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, got {type(value).__name__} {value!r}")
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"{where} {problem}")


def _migration_id(_instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    _check_id(f"MigrationMetadata.{attribute.name}", value)


def _dependency_ids(
    _instance: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[object, ...]
) -> None:
    for index, dependency in enumerate(value):
        _check_id(f"MigrationMetadata.{attribute.name}[{index}]", dependency)


def _id_list(field: str, value: Iterable[str]) -> tuple[str, ...]:
    """``value``, a list of migration ids (never a bare string), as a tuple."""
    if isinstance(value, str):
        raise TypeError(
            f"MigrationMetadata.{field} must be a list of migration ids, not a string "
            f"({_shown(value)}); write [{_shown(value)}]"
        )
    if not isinstance(value, Iterable):
        raise TypeError(
            f"MigrationMetadata.{field} must be a list of migration ids, got {type(value).__name__} {value!r}"
        )
    return tuple(value)


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return _id_list("dependencies", value)


def _replaced(value: Iterable[str]) -> tuple[str, ...]:
    return _id_list("replaces", value)


def _text(_instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    """A string PostgreSQL ``text`` can hold (no NUL)."""
    if not isinstance(value, str):
        raise TypeError(
            f"MigrationMetadata.{attribute.name} must be a string, got {type(value).__name__} {value!r}"
        )
    if "\0" in value:
        raise ValueError(
            f"MigrationMetadata.{attribute.name} must not contain NUL characters (PostgreSQL text cannot "
            f"hold them), got {_shown(value)}"
        )


def _version(_instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"MigrationMetadata.{attribute.name} must be a string such as '2.0.0', "
            f"got {type(value).__name__} {value!r}"
        )
    if not value.strip():
        raise ValueError(f"MigrationMetadata.{attribute.name} must not be empty")
    if _forbidden_character(value) is not None:
        raise ValueError(
            f"MigrationMetadata.{attribute.name} must not contain control characters, got {_shown(value)}"
        )


def _flag(_instance: Any, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"MigrationMetadata.{attribute.name} must be True or False, got {value!r}")


def _optional(kind: type, description: str) -> Any:
    """A validator accepting None or an instance of ``kind``."""

    def validate(_instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"MigrationMetadata.{attribute.name} must be {description} or None, "
                f"got {type(value).__name__} {value!r}"
            )

    return validate


@attrs.frozen(kw_only=True)
class MigrationMetadata:
    """Identity and properties of one migration, returned by its ``_get_metadata()``.

    ``checksum`` and ``created_at`` are informational: brainmigrate computes the checksum it trusts
    from the migration's content.
    """

    #: Non-empty, at most 255 bytes of UTF-8, with no control or invisible characters and no
    #: surrounding whitespace.
    id: str = attrs.field(validator=_migration_id)
    name: str = attrs.field(validator=_text)
    version: str = attrs.field(validator=_version)
    migration_type: MigrationType = attrs.field(converter=_migration_type)
    description: str = attrs.field(default="", validator=_text)
    author: str = attrs.field(default="", validator=_text)
    created_at: datetime | None = attrs.field(default=None, validator=_optional(datetime, "a datetime"))
    #: Ids of the migrations this one needs applied first; the same rules as ``id``.
    dependencies: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_dependency_ids)
    reversible: bool = attrs.field(default=True, validator=_flag)
    checksum: str | None = attrs.field(default=None, validator=_optional(str, "a string"))
    #: Ids of the migrations this one squashes (``Migrator.squash``): where all of them are applied,
    #: it counts as applied and is recorded so without running; elsewhere it runs. The loader hides
    #: the replaced migrations and points dependencies on them at this one.
    replaces: tuple[str, ...] = attrs.field(default=(), converter=_replaced, validator=_dependency_ids)
