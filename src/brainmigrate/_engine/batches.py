"""Items of a batch: decoded from rows, and written back set-based."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import asyncpg
import attrs

from .._errors import (
    MigrationExecutionError,
    MigrationValidationError,
)
from .._model.types import Connection
from .._runtime.retry import is_recoverable
from . import jsoncodec
from .entries import Entry, as_uuid
from .plan import RunPlan
from .table import Column
from .writers import BatchWriter

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

T = TypeVar("T")


@attrs.define
class Counts:
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    batches: int = 0

    def add(self, other: Counts) -> None:
        self.processed += other.processed
        self.failed += other.failed
        self.skipped += other.skipped
        self.batches += other.batches


def unwrap(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one error each, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def key_text(key: Any) -> str:
    return str(key)


def decode_rows(plan: RunPlan, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """Rows read with the plan's columns, by column name, each value as :meth:`Column.decode` makes it.

    The same as ``{c.name: c.decode(v) ...}`` for each row, with the per-column checks made once
    per page rather than once per value: only columns whose text is parsed are looked at again.
    """
    columns = plan.read_columns
    names = [column.name for column in columns]
    parsed = list(dict.fromkeys(column.name for column in columns if column.parsed))
    # Every row of a result has the same length: checked once, as zip(strict=True) costs per row.
    for row in rows[:1]:
        if len(row) != len(names):
            raise ValueError(f"a row of {len(row)} values read for {len(names)} columns")
    items = [dict(zip(names, row)) for row in rows]  # noqa: B905 (lengths checked above)
    if parsed:
        loads = jsoncodec.loads
        for item in items:
            for name in parsed:
                value = item[name]
                if isinstance(value, str):
                    item[name] = loads(value)
    return items


def decode_mapping(plan: RunPlan, memory: Any) -> dict[str, Any]:
    """A memory from the user's query: JSON columns that arrived as text become Python objects."""
    item = dict(memory)
    columns = plan.table.columns
    for name, value in item.items():
        column = columns.get(name)
        if column is not None and column.is_json and isinstance(value, str):
            item[name] = jsoncodec.loads(value)
    return item


def query_items(plan: RunPlan, memories: Sequence[Any]) -> list[dict[str, Any]]:
    """Memories from get_memories_to_migrate(), decoded; each must carry its key, and only once.

    A memory twice in one slice would be written twice by one UPDATE (PostgreSQL writes it once).
    """
    items = [decode_mapping(plan, memory) for memory in memories]
    key_name = plan.table.key.name
    seen: set[str] = set()
    for item in items:
        key = item.get(key_name)
        if key is None:
            raise MigrationValidationError(
                f"data migration {plan.migration_id!r}: get_memories_to_migrate() returned a memory "
                f"without its key {key_name!r} (it has {', '.join(map(repr, item)) or 'no columns'}); "
                f"select the {key_name!r} column",
                migration_id=plan.migration_id,
            )
        text = _key_identity(plan, key)
        if text in seen:
            raise MigrationValidationError(
                f"data migration {plan.migration_id!r}: get_memories_to_migrate() returned memory {key} "
                "twice; return each memory once (SELECT DISTINCT, or GROUP BY its key)",
                migration_id=plan.migration_id,
            )
        seen.add(text)
    return items


def _key_identity(plan: RunPlan, key: Any) -> str:
    """The text a key is known by; for uuid keys, in the canonical spelling of the uuid."""
    if plan.table.key.type_name == "uuid":
        try:
            return str(as_uuid(key))
        except (TypeError, ValueError, AttributeError):
            pass
    return key_text(key)


async def write_entries(
    conn: Connection, plan: RunPlan, entries: Sequence[Entry], *, isolate: bool, pipe: Pipe | None = None
) -> list[Entry]:
    """Write entries with changes, one UPDATE per set of written columns; return those that failed.

    With ``isolate``, a failing write is split in halves inside savepoints until the failing items
    are found, so one bad item never aborts the transaction holding its neighbours' writes.
    Without, ``pipe`` (if given) sends each UPDATE as soon as the one before is done, and encodes
    the next meanwhile: the statements, their order and their errors stay the same. A set of
    columns the plan's own writer (:mod:`.writers`) handles is written by it instead, checked
    and isolated the same way.
    """
    groups: dict[tuple[str, ...], list[Entry]] = {}
    for entry in entries:
        assert entry.changes is not None
        groups.setdefault(tuple(entry.changes), []).append(entry)
    failed: list[Entry] = []
    writer = plan.writer
    for fields, group in groups.items():
        if not fields:
            continue
        if writer is not None and writer.handles(fields):
            if pipe is not None:
                await pipe.wait()  # the statement before fails first, as it would have unpiped
            failed += await _write_own(conn, plan, writer, group, isolate=isolate)
            continue
        try:
            statement, columns = plan.write_sql(fields)
        except BaseException:
            if pipe is not None:
                await pipe.wait()  # the statement before fails first, as it would have unpiped
            raise

        async def run(
            part: Sequence[Entry],
            statement: str = statement,
            columns: list[Column] = columns,
            fields: tuple[str, ...] = fields,
        ) -> None:
            status = await conn.execute(statement, *_write_args(plan, fields, columns, part))
            _check_written(plan, len(part), status)

        if isolate:
            failed += await _isolated(conn, run, group)
        elif pipe is None:
            await run(group)
        else:
            try:
                args = _write_args(plan, fields, columns, group)
            except BaseException:
                await pipe.wait()  # the statement before fails first, as it would have unpiped
                raise
            await pipe.send(statement, args, functools.partial(_check_written, plan, len(group)))
    return failed


async def _write_own(
    conn: Connection, plan: RunPlan, writer: BatchWriter, group: Sequence[Entry], *, isolate: bool
) -> list[Entry]:
    """Write ``group`` with the migration's own writer, checked as the batch UPDATE is (and
    isolated as it is); the entries that failed."""

    async def run(part: Sequence[Entry]) -> None:
        _check_count(plan, len(part), await writer.write(conn, part))

    if isolate:
        return await _isolated(conn, run, group)
    await run(group)
    return []


def _write_args(
    plan: RunPlan, fields: tuple[str, ...], columns: list[Column], part: Sequence[Entry]
) -> list[Any]:
    """The parameters of a batch's UPDATE: the keys, then each column's values, encoded.

    A value its column cannot take (not JSON, for a JSON column) raises :class:`ItemValueError`
    naming the first such item and the column.
    """
    args: list[Any] = [[e.key for e in part]]
    for column in columns:
        values = [e.changes[column.name] for e in part]  # type: ignore[index]
        try:
            args.append(column.encode_all(values))
        except (TypeError, ValueError, RecursionError):
            raise _value_error(plan, column, part) from None
    if plan.reverse == "images":
        args.append(list(fields))
    return args


def encode_changes(plan: RunPlan, entry: Entry) -> None:
    """Encode an entry's changes as a write would (columns the table lacks are left out), or raise
    :class:`ItemValueError`: a dry run's check that the run could write them."""
    assert entry.changes is not None
    columns = plan.table.columns
    for name in entry.changes:
        column = columns.get(name)
        if column is not None:
            _write_args(plan, (name,), [column], [entry])


class ItemValueError(MigrationExecutionError):
    """An item's value for a column that the column cannot take; :attr:`reason` is about the item."""

    def __init__(self, plan: RunPlan, key: Any, reason: str) -> None:
        super().__init__(
            f"data migration {plan.migration_id!r} failed on item {key}: {reason}",
            migration_id=plan.migration_id,
        )
        self.key = key
        self.reason = reason


def _value_error(plan: RunPlan, column: Column, part: Sequence[Entry]) -> MigrationExecutionError:
    """The error for the first item of ``part`` whose value ``column`` cannot encode."""
    for entry in part:
        try:
            column.encode_all([entry.changes[column.name]])  # type: ignore[index]
        except (TypeError, ValueError, RecursionError) as exc:
            hint = (
                "give JSON values only (dict with str keys, list, str, int, finite float, bool, None): "
                "convert others in the transform (str(), .isoformat(), float(), list())"
                if column.is_json
                else "convert it in the transform"
            )
            reason = f"column {column.name!r} ({column.type_name}) cannot hold the value given: {exc}; {hint}"
            error = ItemValueError(plan, entry.key, reason)
            error.__cause__ = exc
            return error
    return MigrationExecutionError(  # a value that failed once and then encoded (changed meanwhile)
        f"data migration {plan.migration_id!r}: the values of column {column.name!r} could not be encoded; "
        "give each item values of its own, not shared objects changed while the batch is written",
        migration_id=plan.migration_id,
    )


def _check_written(plan: RunPlan, expected: int, status: str) -> None:
    _check_count(plan, expected, int(status.split()[-1]))


def _check_count(plan: RunPlan, expected: int, written: int) -> None:
    if written != expected:
        raise MigrationExecutionError(
            f"data migration {plan.migration_id!r}: {expected - written} of {expected} items name "
            "rows that do not exist; a transform updates existing rows, never creates them",
            migration_id=plan.migration_id,
        )


async def _isolated(
    conn: Connection, run: Callable[[Sequence[Entry]], Awaitable[None]], part: Sequence[Entry]
) -> list[Entry]:
    try:
        async with conn.transaction():  # a savepoint inside the batch's transaction
            await run(part)
    except Exception as exc:
        if is_recoverable(exc):
            raise
        if len(part) == 1:
            error = exc.reason if isinstance(exc, ItemValueError) else f"{type(exc).__name__}: {exc}"
            return [attrs.evolve(part[0], error=error)]
        middle = len(part) // 2
        return await _isolated(conn, run, part[:middle]) + await _isolated(conn, run, part[middle:])
    return []


class InFlight(Generic[T]):
    """A statement running in the background on a worker's connection, awaited later.

    It runs shielded from cancellation, so the connection is never left in mid-statement: a task
    group holding it waits for it to finish, whatever happens to its other tasks.
    """

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    async def run(self, call: Callable[[], Awaitable[T]]) -> None:
        with anyio.CancelScope(shield=True):
            try:
                self._value = await call()
            except BaseException as exc:
                self._error = exc
            finally:
                self._done.set()

    async def result(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def in_background(group: TaskGroup, call: Callable[[], Awaitable[T]]) -> InFlight[T]:
    flight: InFlight[T] = InFlight()
    group.start_soon(flight.run, call)
    return flight


class Pipe:
    """Statements run one at a time, in order, on one connection, while the client prepares the next.

    :meth:`send` first waits for the statement before it and raises its error, so the statements
    run and fail exactly as if each were awaited in turn; only the client's work on the next one
    (encoding a batch) overlaps the server's work on the last. Used within :func:`piped`.
    """

    def __init__(self, conn: Connection, group: TaskGroup) -> None:
        self._conn = conn
        self._group = group
        self._pending: tuple[InFlight[str], Callable[[str], None]] | None = None

    async def send(self, statement: str, args: Sequence[Any], check: Callable[[str], None]) -> None:
        """Run ``statement`` once the one before is done; ``check`` its status when it is waited for."""
        await self.wait()

        async def execute() -> str:
            status: str = await self._conn.execute(statement, *args)
            return status

        self._pending = (in_background(self._group, execute), check)
        await anyio.lowlevel.checkpoint()  # let it go out now

    async def wait(self) -> None:
        """Wait for the statement in flight, if any; raise its error or its check's."""
        if self._pending is not None:
            (flight, check), self._pending = self._pending, None
            check(await flight.result())


@asynccontextmanager
async def piped(conn: Connection) -> AsyncIterator[Pipe]:
    """A :class:`Pipe` whose last statement is done (or failed) when the block ends."""
    async with anyio.create_task_group() as group:
        pipe = Pipe(conn, group)
        yield pipe
        await pipe.wait()
