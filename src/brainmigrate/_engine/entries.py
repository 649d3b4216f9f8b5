"""A transform's results: the calls a page of items makes, and the entries their results become.

Each result is checked against the item it was returned for (its type, the memory it names, one
per item in order); a failing call or item becomes an entry with its error.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import attrs

from .._errors import MigrationValidationError
from .._model.data import DatabaseDataMigration, MemoryDataMigration
from .._model.items import BulkMemoryItem
from .plan import RunPlan
from .transform import TransformCaller

#: A transform: ``transform_batch`` (of a list of items), or ``transform_memory`` / ``transform_row``.
Call = Callable[[Any], Awaitable[Any]]


@attrs.frozen
class Entry:
    """One item's outcome after its transform: changes to write, a skip, or a failure."""

    key: Any
    changes: dict[str, Any] | None = None
    error: str | None = None


class ForeignItemError(MigrationValidationError):
    """A transform returned an item for another memory than the one it was given."""

    def __init__(self, plan: RunPlan, given: Any, returned: Any) -> None:
        super().__init__(
            f"data migration {plan.migration_id!r}: the transform returned an item for memory {returned} "
            f"when given memory {given}; an item must name the memory it was returned for "
            f"(memory_id=memory[{plan.table.key.name!r}])",
            migration_id=plan.migration_id,
        )
        self.given = given
        self.returned = returned


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)  # TypeError unless str


def key_matcher(plan: RunPlan) -> Callable[[Any, Any], bool]:
    """Whether an item's key names the item ``given``: an equal value, or for a uuid key, the
    same uuid (a ``UUID`` or its text, in any case) as the database would read it."""
    if plan.table.key.type_name != "uuid":
        return lambda given, returned: bool(returned is given or returned == given)

    def matches(given: Any, returned: Any) -> bool:
        if returned is given or returned == given:
            return True
        try:
            return as_uuid(given) == as_uuid(returned)
        except (TypeError, ValueError, AttributeError):
            return False

    return matches


def entry_maker(plan: RunPlan) -> Callable[[dict[str, Any], Any], Entry]:
    """:func:`entry_of` bound to ``plan``; for memories, with its checks of the plan made once."""
    if not isinstance(plan.migration, MemoryDataMigration):
        return functools.partial(entry_of, plan)
    key_name = plan.table.key.name
    matches = key_matcher(plan)

    def memory_entry(item: dict[str, Any], result: Any) -> Entry:
        key = item.get(key_name)
        if result is None:
            return Entry(key)
        if not isinstance(result, BulkMemoryItem):
            return entry_of(plan, item, result)  # raises MigrationValidationError
        returned = result.memory_id
        # Most transforms pass the memory's own id object: one identity test per item.
        if returned is not key and not matches(key, returned):
            raise ForeignItemError(plan, key, returned)
        return Entry(key, result.changes())

    return memory_entry


def entry_of(plan: RunPlan, item: dict[str, Any], result: Any) -> Entry:
    """Check a transform's return value and turn it into the changes to write."""
    meta = plan.migration.metadata
    key = item.get(plan.table.key.name)
    if result is None:
        return Entry(key)
    if isinstance(plan.migration, MemoryDataMigration):
        if not isinstance(result, BulkMemoryItem):
            raise MigrationValidationError(
                f"data migration {meta.id!r}: the transform must return a BulkMemoryItem or None, "
                f"got {type(result).__name__} for memory {key}",
                migration_id=meta.id,
            )
        if not key_matcher(plan)(key, result.memory_id):
            raise ForeignItemError(plan, key, result.memory_id)
        return Entry(key, result.changes())
    if not isinstance(result, dict):
        raise MigrationValidationError(
            f"data migration {meta.id!r}: the transform must return a dict of column values or None, "
            f"got {type(result).__name__} for row {key}",
            migration_id=meta.id,
        )
    changes = dict(result)
    new_key = changes.pop(plan.table.key.name, key)
    if new_key != key and not key_matcher(plan)(key, new_key):  # the text of a uuid key is that key
        raise MigrationValidationError(
            f"data migration {meta.id!r}: the transform changed the key of row {key}; data migrations "
            "update rows in place",
            migration_id=meta.id,
        )
    return Entry(key, changes)


def _duplicate_or(plan: RunPlan, outputs: Sequence[Any], exc: ForeignItemError) -> MigrationValidationError:
    """A transform_batch result naming the wrong memory: a duplicate if it names one memory twice."""
    matches = key_matcher(plan)
    named = sum(
        1
        for output in outputs
        if isinstance(output, BulkMemoryItem) and matches(exc.returned, output.memory_id)
    )
    if named < 2:
        return exc
    return MigrationValidationError(
        f"data migration {plan.migration_id!r}: transform_batch returned two items for memory "
        f"{exc.returned} (a duplicate, the second in place of memory {exc.given}); return one item per "
        "memory, in order (None to skip)",
        migration_id=plan.migration_id,
    )


def failed_entry(plan: RunPlan, item: dict[str, Any], exc: BaseException) -> Entry:
    if isinstance(exc, MigrationValidationError):
        raise exc
    return Entry(item.get(plan.table.key.name), error=f"{type(exc).__name__}: {exc}")


def calls_batches(plan: RunPlan) -> bool:
    """Whether the migration's transform is ``transform_batch``, called with lists of items."""
    migration = plan.migration
    base: type = MemoryDataMigration if isinstance(migration, MemoryDataMigration) else DatabaseDataMigration
    return migration._overrides("transform_batch", base)


def transform_calls(plan: RunPlan, items: list[dict[str, Any]]) -> tuple[Call, list[Any], bool]:
    """The transform and the argument of each of its calls over ``items``: slices of
    ``transform_batch_size`` items for ``transform_batch`` (never across two pages), else the items;
    and whether the calls are batches."""
    migration = plan.migration
    if calls_batches(plan):
        size = migration.transform_batch_size
        batch: Call = migration.transform_batch  # type: ignore[attr-defined]
        return batch, [items[i : i + size] for i in range(0, len(items), size)], True
    one: Call = (
        migration.transform_memory if isinstance(migration, MemoryDataMigration) else migration.transform_row  # type: ignore[attr-defined]
    )
    return one, items, False


def part_entries(
    plan: RunPlan, entry_of: Callable[[dict[str, Any], Any], Entry], arg: Any, result: Any, batched: bool
) -> list[Entry]:
    """The entries of one call of :func:`transform_calls` (``entry_of`` from :func:`entry_maker`),
    from its result or the exception it raised.

    Raises MigrationValidationError when the result does not fit its items (a wrong count, type or
    memory): nothing of their page may be written.
    """
    if not batched:
        failed = isinstance(result, BaseException)
        return [failed_entry(plan, arg, result) if failed else entry_of(arg, result)]
    if isinstance(result, BaseException):
        return [failed_entry(plan, item, result) for item in arg]
    outputs = list(result)
    if len(outputs) != len(arg):
        migration_id = plan.migration_id
        raise MigrationValidationError(
            f"data migration {migration_id!r}: transform_batch returned {len(outputs)} "
            f"results for {len(arg)} items; return one per item, in order (None to skip)",
            migration_id=migration_id,
        )
    try:
        return [entry_of(item, output) for item, output in zip(arg, outputs, strict=True)]
    except ForeignItemError as exc:
        raise _duplicate_or(plan, outputs, exc) from None


def call_entries(plan: RunPlan, args: Sequence[Any], results: Sequence[Any], batched: bool) -> list[Entry]:
    """The entries of the calls of :func:`transform_calls`, in order (see :func:`part_entries`)."""
    entry_of = entry_maker(plan)
    entries: list[Entry] = []
    for arg, result in zip(args, results, strict=True):
        entries.extend(part_entries(plan, entry_of, arg, result, batched))
    return entries


def vector_encoder(plan: RunPlan) -> Callable[[list[Entry]], None] | None:
    """Encodes the vector values of entries in place, as their write would (text passes through
    the write as it is), so that a pipeline spreads this work over its calls; None when the table
    has no vector column. A value that cannot be encoded is left for the write to refuse."""
    columns = [c for c in plan.table.columns.values() if c.type_name in ("vector", "halfvec")]
    if not columns:
        return None

    def encode(entries: list[Entry]) -> None:
        for entry in entries:
            changes = entry.changes
            if not changes:
                continue
            for column in columns:
                value = changes.get(column.name)
                if value is not None and not isinstance(value, str):
                    with suppress(TypeError, ValueError, RecursionError):
                        changes[column.name] = column.encode(value)

    return encode


async def transform_items(plan: RunPlan, caller: TransformCaller, items: list[dict[str, Any]]) -> list[Entry]:
    """Run the migration's transform over ``items``; a failing item becomes an entry with its error."""
    fn, args, batched = transform_calls(plan, items)
    return call_entries(plan, args, await caller.map(fn, args), batched)
