"""The base classes of data migrations: rows (DATABASE_DATA) and memories (MEMORY_DATA)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, get_args

from .._errors import MigrationValidationError
from .hybrid import CONTRACT_MODES, ContractMode
from .items import BulkMemoryItem, DataSource
from .metadata import MigrationType
from .migration import Migration, MigrationKind

#: How a data migration writes its table (see :attr:`DataMigration.strategy`).
Strategy = Literal["in_place", "rewrite", "auto"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
#: What a rewrite does with the writes between its swap and contract, for a swap back
#: (see :attr:`DataMigration.rewrite_swap_back`).
SwapBack = Literal["replay", "instant"]
SWAP_BACKS: tuple[SwapBack, ...] = get_args(SwapBack)

_MEMORY = re.compile(r"([0-9]{1,13})\s*(kB|MB|GB|TB)")
_MEMORY_UNITS_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
#: The bounds PostgreSQL puts on ``maintenance_work_mem``, in kB (1MB to 2TB less 1kB).
MAINTENANCE_WORK_MEM_KB = (1024, 2_147_483_647)
#: The most parallel maintenance workers PostgreSQL accepts.
MAX_PARALLEL_WORKERS = 1024


def memory_kb(text: object) -> int | None:
    """``text`` (a size as PostgreSQL spells it: a whole number and kB, MB, GB or TB) in kB, or
    None when it is not one."""
    match = _MEMORY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    return int(match[1]) * _MEMORY_UNITS_KB[match[2]]


def _check_one_of(where: str, name: str, value: object, allowed: tuple[str, ...], migration_id: str) -> None:
    """MigrationValidationError unless the setting ``name`` of ``where`` is one of ``allowed``."""
    if value not in allowed:
        raise MigrationValidationError(
            f"{where}: {name} must be {' or '.join(map(repr, allowed))}, got {value!r}",
            migration_id=migration_id,
        )


class DataMigration(Migration):
    """What both kinds of data migration share; subclass one of the two public kinds.

    A data migration pages through :attr:`source` by key, transforms each batch of items, and
    writes the changes back set-based, checkpointing as it goes (see the guide).
    """

    kind: ClassVar[MigrationKind] = MigrationKind.DATA
    migration_types: ClassVar[frozenset[MigrationType]] = frozenset(
        {MigrationType.DATABASE_DATA, MigrationType.MEMORY_DATA}
    )

    #: The rows to page through. Required unless the migration overrides a query method.
    source: ClassVar[DataSource | None] = None
    #: Exceptions of the transform worth another try (a flaky model API); retried with the
    #: config's retry policy. An exception with a ``retry_after`` attribute (seconds), or a
    #: ``response`` whose headers carry ``Retry-After``, waits at least that long.
    retry_on: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Items per ``transform_batch`` call (model APIs take many texts per call).
    transform_batch_size: ClassVar[int] = 64
    #: How the run writes: ``"in_place"`` (an ``UPDATE`` of each changed row), ``"rewrite"`` (a
    #: transformed copy of the table built beside it, kept up to date from a change log, then
    #: swapped in under a short lock; see the guide's "Rewriting a table online"), or ``"auto"``:
    #: rewrite when the table is large, most rows change and each update must maintain vector or
    #: GIN indexes (decided when the run starts, logged, and shown by a dry run).
    strategy: ClassVar[Strategy] = "auto"
    #: Tables estimated below this many rows are never rewritten by ``strategy = "auto"``.
    rewrite_min_rows: ClassVar[int] = 50_000
    #: A rewrite keeps the original table until ``await migrator.contract(id)`` (``"manual"``,
    #: so that a rollback can still swap it back) or drops it right after the swap (``"auto"``).
    rewrite_contract_mode: ClassVar[ContractMode] = "manual"
    #: The ``maintenance_work_mem`` a rewrite builds the copy's indexes with (an HNSW build that
    #: fits in it is many times faster); the session's own setting is kept when it is larger.
    rewrite_maintenance_work_mem: ClassVar[str] = "512MB"
    #: The ``max_parallel_maintenance_workers`` of those builds (None: the server's setting).
    rewrite_parallel_workers: ClassVar[int | None] = None
    #: What a rewrite does with the application's writes between the swap and contract, for a
    #: rollback (the swap back): ``"replay"`` logs their keys, and the swap back copies those rows
    #: into the old table (it takes longer the more was written); ``"instant"`` writes each
    #: statement's rows to the old table too, in the application's transaction (each write then
    #: costs about twice as much until contract), so the swap back has nothing left to copy.
    rewrite_swap_back: ClassVar[SwapBack] = "replay"
    #: Whether what the run writes goes with a table the same rollback drops (a step of a
    #: ready-made hybrid writing into a copy of a table): rolling it back then writes nothing.
    _dropped_on_rollback: ClassVar[bool] = False

    async def throttle(self) -> float:
        """Seconds to pause before the next batch (0 to go on): back off while the database is busy."""
        return 0.0

    # -- machinery ---------------------------------------------------------------------------

    def _overrides(self, name: str, base: type) -> bool:
        return getattr(type(self), name) is not getattr(base, name)

    def _transform_methods(self) -> Sequence[str]:
        return ()

    def _check_definition(self) -> None:
        cls = type(self)
        where = f"data migration {self.metadata.id!r}"
        if cls.strategy not in STRATEGIES:
            raise MigrationValidationError(
                f"{where}: strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {cls.strategy!r}",
                migration_id=self.metadata.id,
            )
        _check_one_of(
            where, "rewrite_contract_mode", cls.rewrite_contract_mode, CONTRACT_MODES, self.metadata.id
        )
        rows = cls.rewrite_min_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise MigrationValidationError(
                f"{where}: rewrite_min_rows must be a non-negative int, got {rows!r}",
                migration_id=self.metadata.id,
            )
        _check_one_of(where, "rewrite_swap_back", cls.rewrite_swap_back, SWAP_BACKS, self.metadata.id)
        memory = memory_kb(cls.rewrite_maintenance_work_mem)
        low, high = MAINTENANCE_WORK_MEM_KB
        if memory is None or not low <= memory <= high:
            raise MigrationValidationError(
                f"{where}: rewrite_maintenance_work_mem must be a size from 1MB to 2047GB written "
                f"as a whole number and kB, MB, GB or TB (e.g. '512MB'), got "
                f"{cls.rewrite_maintenance_work_mem!r}",
                migration_id=self.metadata.id,
            )
        workers = cls.rewrite_parallel_workers
        if workers is not None and (
            isinstance(workers, bool)
            or not isinstance(workers, int)
            or not 0 <= workers <= MAX_PARALLEL_WORKERS
        ):
            raise MigrationValidationError(
                f"{where}: rewrite_parallel_workers must be None (the server's setting) or an int "
                f"from 0 to {MAX_PARALLEL_WORKERS}, got {workers!r}",
                migration_id=self.metadata.id,
            )

    async def checksum_material(self) -> str:
        """The source of the methods that decide what is written, and the declared source."""
        parts = [repr(type(self).source)]
        for name in self._transform_methods():
            method = getattr(type(self), name)
            try:
                parts.append(inspect.getsource(method))
            except (OSError, TypeError):
                parts.append(f"{type(self).__module__}.{type(self).__qualname__}.{name}")
        return "\n".join(parts)


class DatabaseDataMigration(DataMigration):
    """Bulk DML over a table, in key-ordered batches: in Python or entirely on the server.

    In Python: set :attr:`source` and override :meth:`transform_row` (or :meth:`transform_batch`);
    it returns the columns to change, and brainmigrate writes them back with one ``UPDATE`` per
    batch. On the server: override :meth:`get_batch_statement` with one statement run per key range
    (``$1`` and ``$2`` are the range's first and last key, inclusive).

    When ``reversible``, the before-image of the changed columns is kept, so a rollback restores
    them exactly; or override :meth:`reverse_row` (or :meth:`get_rollback_batch_statement`).
    """

    migration_types: ClassVar[frozenset[MigrationType]] = frozenset({MigrationType.DATABASE_DATA})
    #: Columns a server-side batch statement changes; their before-images make it reversible.
    writes: ClassVar[tuple[str, ...]] = ()

    async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """New values for some of ``row``'s columns, or None to leave the row alone."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement transform_row()")

    async def transform_batch(self, rows: list[dict[str, Any]]) -> Sequence[dict[str, Any] | None]:
        """New values for each of ``rows``, in order (by default, :meth:`transform_row` on each)."""
        return [await self.transform_row(row) for row in rows]

    async def reverse_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The inverse of :meth:`transform_row`, used by rollback when overridden."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement reverse_row()")

    async def get_batch_statement(self) -> str | None:
        """An SQL statement applied to each key range (``$1`` first key, ``$2`` last key)."""
        return None

    async def get_rollback_batch_statement(self) -> str | None:
        """The statement that reverses :meth:`get_batch_statement` on one key range."""
        return None

    def _transform_methods(self) -> Sequence[str]:
        return ("transform_row", "transform_batch", "get_batch_statement")

    async def checksum_material(self) -> str:
        return f"{await super().checksum_material()}\n{await self.get_batch_statement()}"


#: The memories table of a Second Brain store: key, and the columns a transform usually reads.
MEMORIES = DataSource(table="memories", key="id", columns=("content", "metadata"))


class MemoryDataMigration(DataMigration):
    """A transform over memories (sentiment, embeddings, summaries), hours long and resumable.

    Override :meth:`transform_memory` (or :meth:`transform_batch` for model APIs taking many texts
    per call); it returns a :class:`BulkMemoryItem` with the fields to write, or None to skip.
    Memories come from :attr:`source` (the ``memories`` table by default), paged by key; or
    override :meth:`get_memories_to_migrate` with a query that returns memories not migrated yet.
    """

    source: ClassVar[DataSource | None] = MEMORIES
    migration_types: ClassVar[frozenset[MigrationType]] = frozenset({MigrationType.MEMORY_DATA})

    async def get_memories_to_migrate(self) -> list[dict[str, Any]]:
        """Memories still to migrate (the next slice); called until it returns none.

        Override it only when a query is easier than a source; it must leave out memories already
        migrated, or the run stops with an error instead of looping.
        """
        raise NotImplementedError(f"{type(self).__qualname__} does not implement get_memories_to_migrate()")

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        """The new values of ``memory`` (JSONB columns arrive as Python objects), or None to skip it."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement transform_memory()")

    async def transform_batch(self, memories: list[dict[str, Any]]) -> Sequence[BulkMemoryItem | None]:
        """New values for each of ``memories``, in order (by default, :meth:`transform_memory` on each)."""
        return [await self.transform_memory(memory) for memory in memories]

    async def reverse_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        """The inverse of :meth:`transform_memory`, used by rollback when overridden."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement reverse_memory()")

    @property
    def uses_query(self) -> bool:
        """Whether memories come from :meth:`get_memories_to_migrate` rather than the source."""
        return self._overrides("get_memories_to_migrate", MemoryDataMigration)

    def _transform_methods(self) -> Sequence[str]:
        return ("get_memories_to_migrate", "transform_memory", "transform_batch")
