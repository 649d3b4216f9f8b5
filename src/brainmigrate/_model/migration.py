"""The base classes users subclass to write migrations."""

from __future__ import annotations

import abc
import enum
import hashlib
import inspect
import json
from collections.abc import Sequence
from typing import ClassVar

from .._errors import MigrationValidationError
from .metadata import MigrationMetadata, MigrationType
from .sqltext import shorten, split_statements, transaction_control
from .types import Connection, Pool


class MigrationKind(enum.StrEnum):
    """How a migration runs, which decides the runner that runs it; declared once per base class."""

    #: Python ``up()``/``down()``, once, in one transaction (:class:`Migration`).
    PYTHON = "python"
    #: SQL statements, in order, in one transaction or one by one (:class:`DatabaseSchemaMigration`).
    SQL = "sql"
    #: Batches over the rows of a table, checkpointed and resumable (the data migrations).
    DATA = "data"
    #: A declared reshaping of a JSONB column, compiled to SQL and run in batches on the server
    #: (:class:`~brainmigrate.MemoryStructureMigration`).
    STRUCTURE = "structure"
    #: Steps of other kinds in phases: expand, backfill, validate, contract
    #: (:class:`~brainmigrate.HybridMigration`).
    HYBRID = "hybrid"


class Migration(abc.ABC):
    """One change to a database, identified by the metadata its ``_get_metadata()`` returns.

    Subclass :class:`DatabaseSchemaMigration` for SQL statements. Subclass this class directly for a
    change written in Python: override :meth:`up` (and :meth:`down` when ``reversible``); both run
    inside the migration's transaction on the connection they are given.
    """

    #: Whether the migration runs inside one transaction. Set to False for statements PostgreSQL
    #: refuses inside a transaction, such as ``CREATE INDEX CONCURRENTLY``.
    transactional: ClassVar[bool] = True
    #: For a non-transactional step of a hybrid migration whose work is safe to do again from the
    #: start (it cleans up what an interrupted attempt left, such as an INVALID index): an attempt
    #: interrupted midway is then recorded as not applied and run again by its hybrid, instead of
    #: stopping the runs as dirty.
    rerun_after_interruption: ClassVar[bool] = False
    #: How the migration runs (set by brainmigrate's base classes, not by migrations).
    kind: ClassVar[MigrationKind] = MigrationKind.PYTHON
    #: The ``migration_type`` values this kind of migration may declare (checked when loaded).
    migration_types: ClassVar[frozenset[MigrationType]] = frozenset(MigrationType)

    def __init__(self, pool: Pool | None = None) -> None:
        self.pool = pool
        self._metadata: MigrationMetadata | None = None

    @abc.abstractmethod
    def _get_metadata(self) -> MigrationMetadata:
        """Describe this migration: its id, version, type, dependencies and reversibility."""

    @property
    def metadata(self) -> MigrationMetadata:
        """The validated metadata, read once from ``_get_metadata()``."""
        if self._metadata is None:
            where = f"{type(self).__module__}.{type(self).__qualname__}"
            try:
                metadata = self._get_metadata()
            except (TypeError, ValueError, MigrationValidationError) as exc:
                raise MigrationValidationError(f"{where}._get_metadata() failed: {exc}") from exc
            if not isinstance(metadata, MigrationMetadata):
                raise MigrationValidationError(
                    f"{where}._get_metadata() must return MigrationMetadata, got {type(metadata).__name__}"
                )
            self._metadata = metadata
        return self._metadata

    @property
    def id(self) -> str:
        """The migration's id."""
        return self.metadata.id

    async def validate_preconditions(self, conn: Connection) -> bool:
        """Gate before executing: return False (or raise) to refuse the migration."""
        return True

    async def validate_postconditions(self, conn: Connection) -> bool:
        """Gate before committing, inside the migration's transaction: False (or raising) undoes it."""
        return True

    async def up(self, conn: Connection) -> None:
        """Apply the change (Python migrations override this)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement up()")

    async def down(self, conn: Connection) -> None:
        """Reverse the change (Python migrations override this when reversible)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement down()")

    def _check_definition(self) -> None:  # noqa: B027 - a hook most kinds leave empty
        """Raise MigrationValidationError for what only this kind checks when loaded (no database)."""

    async def checksum_material(self) -> str:
        """The content whose change counts as drift. By default, the source code of :meth:`up`."""
        try:
            return inspect.getsource(type(self).up)
        except (OSError, TypeError):
            return f"{type(self).__module__}.{type(self).__qualname__}"

    async def checksum(self) -> str:
        """A SHA-256 of what the migration does to the database.

        Only the forward change counts: editing metadata such as ``created_at``, the declared
        checksum or the rollback does not make an applied migration drift.
        """
        meta = self.metadata
        digest = hashlib.sha256(f"{meta.id}\0{meta.migration_type.value}\0".encode())
        digest.update((await self.checksum_material()).encode())
        return digest.hexdigest()


def _normalise(statement: str) -> str:
    """Indentation and blank lines do not change what a statement does."""
    return "\n".join(line.strip() for line in statement.strip().splitlines() if line.strip())


class DatabaseSchemaMigration(Migration):
    """A migration made of SQL statements (DDL), run in order in its own transaction."""

    kind: ClassVar[MigrationKind] = MigrationKind.SQL
    #: All but MEMORY_DATA, which is the kind of :class:`MemoryDataMigration`'s batched transforms.
    migration_types: ClassVar[frozenset[MigrationType]] = frozenset(MigrationType) - {
        MigrationType.MEMORY_DATA
    }

    @abc.abstractmethod
    async def get_forward_statements(self) -> list[str]:
        """The statements that apply the change, in order."""

    async def get_rollback_statements(self) -> list[str]:
        """The statements that reverse the change, in order (needed when ``reversible``)."""
        return []

    async def checksum_material(self) -> str:
        return json.dumps([_normalise(s) for s in await self._read_statements("get_forward_statements")])

    async def _read_statements(self, method: str) -> tuple[str, ...]:
        """What ``method`` (``get_forward_statements`` or ``get_rollback_statements``) returns, checked.

        MigrationValidationError, naming the migration and the method, unless it is a list (or
        tuple) of non-empty SQL strings.
        """
        result = getattr(self, method)()
        if not inspect.isawaitable(result):
            raise _not_async(self, method)
        return _checked_statements(self, method, await result)


def _label(migration: Migration) -> str:
    return f"{type(migration).__module__}.{type(migration).__qualname__}"


def _where(migration: Migration) -> str:
    return f"migration {migration.metadata.id!r} ({_label(migration)})"


def _not_async(migration: Migration, method: str) -> MigrationValidationError:
    return MigrationValidationError(
        f"{_where(migration)}: {method}() must be declared `async def {method}(...)`; brainmigrate "
        "awaits it, and a plain `def` cannot be awaited",
        migration_id=migration.metadata.id,
    )


def _checked_statements(migration: Migration, method: str, statements: object) -> tuple[str, ...]:
    """``statements`` as a tuple, or MigrationValidationError saying what is wrong with their shape."""
    where = f"{_where(migration)}: {method}()"
    migration_id = migration.metadata.id
    if isinstance(statements, str):
        raise MigrationValidationError(
            f"{where} returned a single string, which would run one character at a time; "
            'return a list of statements, such as ["CREATE TABLE ...", "CREATE INDEX ..."]',
            migration_id=migration_id,
        )
    if not isinstance(statements, list | tuple):
        raise MigrationValidationError(
            f"{where} must return a list of SQL statements (strings), got {type(statements).__name__}",
            migration_id=migration_id,
        )
    for number, statement in enumerate(statements, 1):
        if not isinstance(statement, str):
            problem = f"is {type(statement).__name__}, not a string; return SQL text only"
        elif not statement.strip():
            problem = "is empty; remove it"
        elif "\0" in statement:
            problem = "contains a NUL character, which PostgreSQL cannot receive; remove it"
        elif not split_statements(statement):
            problem = "holds no SQL, only comments or semicolons; remove it"
        else:
            continue
        raise MigrationValidationError(f"{where}: statement {number} {problem}", migration_id=migration_id)
    return tuple(statements)


def _async_hooks(cls: type) -> list[str]:
    """The methods brainmigrate's base classes declare ``async def``: the ones it awaits."""
    names: list[str] = []
    for base in cls.__mro__:
        if base.__module__.startswith("brainmigrate._"):
            for name, value in vars(base).items():
                if inspect.iscoroutinefunction(value) and name not in names:
                    names.append(name)
    return names


def _is_async(method: object) -> bool:
    """Whether calling ``method`` gives an awaitable: ``async def``, also behind a functools.wraps wrapper."""
    if inspect.iscoroutinefunction(method):
        return True
    try:
        return inspect.iscoroutinefunction(inspect.unwrap(method))  # type: ignore[arg-type]
    except ValueError:  # a cycle of __wrapped__
        return False


async def check_definition(migration: Migration) -> None:
    """Refuse, naming the migration, what brainmigrate could not run correctly.

    Its metadata must be valid; ``transactional`` a boolean; every hook it awaits (``up``,
    ``get_forward_statements``, ``validate_preconditions``, ``transform_memory``...) an ``async def``;
    a schema migration's statements (and, when reversible, its rollback statements) a list of SQL
    strings. Nothing touches the database.
    """
    transactional = getattr(migration, "transactional", True)
    if not isinstance(transactional, bool):
        raise MigrationValidationError(
            f"{_where(migration)}: transactional must be True or False, got {transactional!r}",
            migration_id=migration.metadata.id,
        )
    _check_kind(migration)
    migration._check_definition()
    for name in _async_hooks(type(migration)):
        if not _is_async(getattr(migration, name)):
            raise _not_async(migration, name)
    if isinstance(migration, DatabaseSchemaMigration):
        forward = await migration._read_statements("get_forward_statements")
        refusal = transaction_control_refusal(migration, forward)
        if refusal is None and migration.metadata.reversible:
            rollback = await migration._read_statements("get_rollback_statements")
            refusal = transaction_control_refusal(migration, rollback, rollback=True)
        if refusal is not None:
            raise refusal


def _base_class(migration: Migration) -> type:
    """The brainmigrate base class ``migration`` subclasses most directly."""
    return next(base for base in type(migration).__mro__ if base.__module__.startswith("brainmigrate."))


#: For a declared type that a kind refuses, the base class to subclass instead.
_BASE_FOR_TYPE = {
    MigrationType.MEMORY_DATA: "MemoryDataMigration (transform_memory())",
    MigrationType.DATABASE_DATA: "DatabaseDataMigration (transform_row() or get_batch_statement())",
}


def _check_kind(migration: Migration) -> None:
    """The declared ``migration_type`` must be one the migration's kind runs."""
    cls = type(migration)
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, MigrationKind):
        raise MigrationValidationError(
            f"{_where(migration)}: kind must be one of brainmigrate's MigrationKind values, got {kind!r}; "
            "do not set it, subclass the base class for the kind of migration instead",
            migration_id=migration.metadata.id,
        )
    declared = migration.metadata.migration_type
    accepted = cls.migration_types
    if declared in accepted:
        return
    base = _base_class(migration).__name__
    instead = _BASE_FOR_TYPE.get(
        declared, "DatabaseSchemaMigration (SQL statements) or Migration (up()/down())"
    )
    allowed = ", ".join(t.name for t in MigrationType if t in accepted)
    raise MigrationValidationError(
        f"{_where(migration)} is a {base} (kind {kind.value!r}) but declares "
        f"migration_type=MigrationType.{declared.name}, which a {base} does not run: "
        f"run_pending(migration_type=...) selects migrations by that type. Declare one of {allowed}, "
        f"or subclass {instead} for a {declared.name} migration",
        migration_id=migration.metadata.id,
    )


def transaction_control_refusal(
    migration: Migration, statements: Sequence[str], *, rollback: bool = False
) -> MigrationValidationError | None:
    """The refusal of a transactional schema migration's SQL that would end or replace its
    transaction (see :mod:`.sqltext`), or None; checked at load and before anything runs."""
    if not migration.transactional or not isinstance(migration, DatabaseSchemaMigration):
        return None
    kind = "rollback" if rollback else "forward"
    for index, statement in enumerate(statements):
        control = transaction_control(statement)
        if control is not None:
            mid = migration.metadata.id
            return MigrationValidationError(
                f"migration {mid!r} runs in one transaction, which brainmigrate commits with its history "
                f"row, but its {kind} statement {index + 1} of {len(statements)} ({shorten(statement)!r}) "
                f"controls the transaction ({shorten(control)!r}): it would commit or undo part of the "
                "migration on its own. Nothing of it was run. Remove that statement, or set transactional = "
                "False on the migration to run its statements one by one outside a transaction",
                migration_id=mid,
            )
    return None
