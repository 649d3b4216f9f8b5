"""What a migration declares about itself, and the states it can be in."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from ._errors import MigrationValidationError


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
    return MigrationType.parse(value)


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("dependencies must be a list of migration ids, not a string")
    return tuple(value)


def _non_empty(_instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError(f"MigrationMetadata.{attribute.name} must not be empty")


@attrs.frozen(kw_only=True)
class MigrationMetadata:
    """Identity and properties of one migration, returned by its ``_get_metadata()``.

    ``checksum`` and ``created_at`` are informational: brainmigrate computes the checksum it trusts
    from the migration's content.
    """

    id: str = attrs.field(validator=[attrs.validators.instance_of(str), _non_empty])
    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    version: str = attrs.field(validator=[attrs.validators.instance_of(str), _non_empty])
    migration_type: MigrationType = attrs.field(converter=_migration_type)
    description: str = ""
    author: str = ""
    created_at: datetime | None = None
    dependencies: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    reversible: bool = True
    checksum: str | None = None
