"""Values of data migrations: where items come from, what a transform returns, how far a run got."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import attrs

from .._errors import MigrationValidationError
from .states import RunStatus


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: A field a transform left alone: it is not written.
UNSET = Unset.UNSET

#: The memory columns a :class:`BulkMemoryItem` can write, in this order.
MEMORY_FIELDS = ("content", "metadata", "memory_type", "importance_score", "embedding")


@attrs.frozen(kw_only=True)
class BulkMemoryItem:
    """The new values of one existing memory, as returned by a memory transform.

    Only the fields given are written, in place: an UPDATE of the memory ``memory_id``, never a new
    row. A field left out keeps its value; passing ``None`` writes NULL.

    ``memory_id`` must be the id of the memory the item was returned for (an equal value; for a
    uuid key, its text in any case will do): an item naming another memory is refused. ``metadata``
    (and any JSON column) must hold JSON values only: dicts with string keys, lists, str, int,
    finite floats, bool and None. Others (bytes, sets, datetimes, Decimals, UUIDs...) fail the item
    rather than being written as their ``str()``: convert them in the transform (``.isoformat()``,
    ``str()``, ``float()``, ``list()``).
    """

    memory_id: Any
    content: str | Unset | None = UNSET
    metadata: Mapping[str, Any] | Unset | None = UNSET
    memory_type: str | Unset | None = UNSET
    importance_score: float | Decimal | Unset | None = UNSET
    embedding: Sequence[float] | Unset | None = UNSET

    def changes(self) -> dict[str, Any]:
        """The fields this item sets, by column name, in the order of :data:`MEMORY_FIELDS`."""
        # Spelled out rather than a loop over MEMORY_FIELDS with getattr: it runs once per item.
        changes: dict[str, Any] = {}
        if self.content is not UNSET:
            changes["content"] = self.content
        if self.metadata is not UNSET:
            changes["metadata"] = self.metadata
        if self.memory_type is not UNSET:
            changes["memory_type"] = self.memory_type
        if self.importance_score is not UNSET:
            changes["importance_score"] = self.importance_score
        if self.embedding is not UNSET:
            changes["embedding"] = self.embedding
        return changes


# changes() spells the fields out: keep it in step with MEMORY_FIELDS.
assert tuple(field.name for field in attrs.fields(BulkMemoryItem))[1:] == MEMORY_FIELDS


def _utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (what PostgreSQL's 63-byte limit counts); 0 if it is not UTF-8."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate
        return 0


def _identifier(_instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    # PostgreSQL cuts a longer identifier at 63 bytes (not characters): it would name another table.
    if not isinstance(value, str) or "\0" in value or not 0 < _utf8_length(value) <= 63:
        raise MigrationValidationError(
            f"DataSource.{attribute.name} must be a PostgreSQL identifier of 1 to 63 bytes in UTF-8, "
            f"got {value!r}"
        )


def _optional_identifier(_instance: Any, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None:
        _identifier(_instance, attribute, value)  # type: ignore[arg-type]


def _columns(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise MigrationValidationError("DataSource.columns must be a sequence of column names, not a string")
    return tuple(value)


def _column_names(
    _instance: Any, _attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for name in value:
        if not isinstance(name, str) or "\0" in name or not 0 < _utf8_length(name) <= 63:
            raise MigrationValidationError(
                f"DataSource.columns holds an invalid column name {name!r}: a column name is a "
                "PostgreSQL identifier of 1 to 63 bytes in UTF-8"
            )


@attrs.frozen(kw_only=True)
class DataSource:
    """The rows a data migration pages through: ``table`` by its unique ``key``, in key order.

    ``columns`` are read for the transform (the key always is); ``where`` is an SQL condition that
    filters the rows (a trusted fragment, written by the migration's author).
    """

    table: str = attrs.field(validator=_identifier)
    key: str = attrs.field(default="id", validator=_identifier)
    columns: tuple[str, ...] = attrs.field(default=(), converter=_columns, validator=_column_names)
    where: str | None = None
    schema: str | None = attrs.field(default=None, validator=_optional_identifier)


@attrs.frozen(kw_only=True)
class Progress:
    """How far a data migration's run got; persisted, so any process can ask for it."""

    migration_id: str
    #: ``running``, ``cancelling``, ``cancelled`` (paused), ``failed``, ``completed`` or ``rolled_back``
    #: (a :class:`RunStatus`, which compares equal to those strings; a string given is converted).
    status: RunStatus = attrs.field(converter=RunStatus)
    #: Items written (or found already up to date and skipped, see ``skipped``).
    processed: int
    #: Items that failed and are recorded in the error ledger.
    failed: int
    #: Items the transform returned None for.
    skipped: int
    #: Items the run will look at, when known.
    total: int | None
    #: Batches committed so far.
    batch_number: int
    #: Items per second since the run (or its latest resume) started, when measurable.
    rate: float | None
    started_at: datetime
    updated_at: datetime
    #: Workers holding a part of the key space right now.
    workers: int = 0
    error: str | None = None
    #: Bytes of memory the process that made this report holds in RAM (its resident set size):
    #: current on Linux, the process's peak elsewhere. Only a report made by the running process
    #: (``on_progress``) has it; None when read from the database or unknown.
    memory_rss_bytes: int | None = None

    #: The derived properties its JSON (HTTP API, ``--json``) gives after the fields.
    json_properties: ClassVar[tuple[str, ...]] = ("fraction", "eta_seconds")

    @property
    def done(self) -> int:
        """Items handled in any way: processed, skipped or failed."""
        return self.processed + self.skipped + self.failed

    @property
    def error_rate(self) -> float | None:
        """The share of the items handled so far in the run that failed, from 0 to 1.

        ``failed / done`` over the whole run (every resume included), where ``done`` counts the
        items processed, skipped and failed; None before any item was handled.
        """
        done = self.done
        return self.failed / done if done else None

    @property
    def fraction(self) -> float | None:
        """Share of ``total`` handled, from 0 to 1, when the total is known."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate, when both the total and the rate are known."""
        if self.total is None or not self.rate:
            return None
        return max(0, self.total - self.done) / self.rate


#: Called with a :class:`Progress` after each checkpoint of a data migration (sync or async).
ProgressCallback = Callable[[Progress], Awaitable[None] | None]
