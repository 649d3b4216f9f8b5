"""The errors brainmigrate raises.

Every error is a :class:`BrainMigrateError`; the tree is shallow::

    BrainMigrateError
    ├── ConfigError (also a ValueError)
    ├── MigrationValidationError
    │   └── MigrationLoadError
    ├── DependencyError
    │   ├── CyclicDependencyError
    │   └── MissingDependencyError
    ├── DuplicateMigrationError
    ├── ChecksumMismatchError
    ├── IrreversibleMigrationError
    ├── MigrationNotFoundError
    ├── MigrationStateError
    │   ├── DirtyMigrationError
    │   ├── HybridPhaseError
    │   └── PromotionRefusedError
    ├── MigrationLockTimeout
    ├── MigrationLockLost
    ├── PoolExhaustedError (also a TimeoutError)
    ├── MigrationExecutionError
    ├── DatabaseUnavailableError (also a ConnectionError)
    ├── SchemaVersionError
    └── MigrationCheckError (also an AssertionError)

Each error carries the facts as attributes and its message says what to do next. Driver errors are
chained (``raise ... from exc``) and never escape on their own.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def close_ids(wanted: str, known: Iterable[str]) -> tuple[str, ...]:
    """The ids in ``known`` that look most like ``wanted`` (a typo's likely intent), best first."""
    return tuple(difflib.get_close_matches(wanted, list(known), n=3, cutoff=0.6))


def _did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return ""
    quoted = [repr(suggestion) for suggestion in suggestions]
    choices = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"did you mean {choices}? "


class BrainMigrateError(Exception):
    """Root of every error raised by brainmigrate."""

    #: When the failure could not be written to the history table either: why (the driver error).
    recording_error: BaseException | None = None
    #: When a hybrid migration's compensation (rolling back its completed steps) failed after
    #: this error: why. The error itself stays the original failure.
    compensation_error: BaseException | None = None


class ConfigError(BrainMigrateError, ValueError):
    """A configuration value is invalid or missing."""


class MigrationValidationError(BrainMigrateError):
    """A migration is malformed, or a validation gate refused it."""

    def __init__(self, message: str, *, migration_id: str | None = None) -> None:
        super().__init__(message)
        self.migration_id = migration_id


class MigrationLoadError(MigrationValidationError):
    """A module of migrations could not be imported."""

    def __init__(self, message: str, *, module: str) -> None:
        super().__init__(message)
        self.module = module


class DependencyError(BrainMigrateError):
    """Dependencies between migrations cannot be satisfied."""

    def __init__(self, message: str, *, migration_id: str | None = None) -> None:
        super().__init__(message)
        self.migration_id = migration_id


class CyclicDependencyError(DependencyError):
    """Migrations depend on each other in a cycle."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        path = " -> ".join(self.cycle)
        super().__init__(
            f"cyclic dependency: {path}; remove one of these dependencies", migration_id=self.cycle[0]
        )


class MissingDependencyError(DependencyError):
    """A migration depends on an id that no known migration has."""

    def __init__(self, migration_id: str, missing: str, *, known: Iterable[str] = ()) -> None:
        self.missing = missing
        #: The known ids closest to ``missing``, best first (empty when none is close).
        self.suggestions = close_ids(missing, known)
        super().__init__(
            f"migration {migration_id!r} depends on {missing!r}, which is not a known migration; "
            f"{_did_you_mean(self.suggestions)}check the id or add the missing migration",
            migration_id=migration_id,
        )


class DuplicateMigrationError(BrainMigrateError):
    """Two migrations share one id."""

    def __init__(self, migration_id: str, sources: Sequence[str]) -> None:
        self.migration_id = migration_id
        self.sources = tuple(sources)
        super().__init__(
            f"duplicate migration id {migration_id!r} in {' and '.join(self.sources)}; "
            "give each migration its own id"
        )


class ChecksumMismatchError(BrainMigrateError):
    """An applied migration's content changed since it was applied."""

    def __init__(self, migration_id: str, *, expected: str, actual: str, resuming: bool = False) -> None:
        self.migration_id = migration_id
        self.expected = expected
        self.actual = actual
        self.resuming = resuming
        if resuming:
            message = (
                f"data migration {migration_id!r} was changed since its unfinished run started "
                f"(checksum {expected[:12]} at the checkpoint, {actual[:12]} now), so resuming it would mix "
                "two versions; restore its content to resume, or roll back the partial run with "
                f"`await migrator.rollback({migration_id!r})` and start again"
            )
        else:
            message = (
                f"migration {migration_id!r} was changed after it was applied "
                f"(checksum {expected[:12]} applied, {actual[:12]} now); restore its original content and "
                "write a new migration, or pass MigrationConfig(allow_checksum_drift=True)"
            )
        super().__init__(message)


class IrreversibleMigrationError(BrainMigrateError):
    """A rollback was asked of a migration that cannot be reversed."""

    def __init__(self, migration_id: str, *, reason: str = "it declares reversible=False") -> None:
        self.migration_id = migration_id
        self.reason = reason
        super().__init__(
            f"migration {migration_id!r} is not reversible ({reason}); "
            "write a new forward migration that undoes it"
        )


class MigrationNotFoundError(BrainMigrateError, LookupError):
    """No known migration has the given id."""

    def __init__(self, migration_id: str, *, known: Iterable[str] = ()) -> None:
        self.migration_id = migration_id
        #: The known ids closest to ``migration_id``, best first (empty when none is close).
        self.suggestions = close_ids(migration_id, known)
        super().__init__(
            f"no migration with id {migration_id!r}; "
            f"{_did_you_mean(self.suggestions)}`await migrator.pending()` lists the ids"
        )


class MigrationStateError(BrainMigrateError):
    """The operation does not fit the migration's current state (e.g. rolling back one not applied)."""

    def __init__(self, message: str, *, migration_id: str) -> None:
        super().__init__(message)
        self.migration_id = migration_id


class DirtyMigrationError(MigrationStateError):
    """A non-transactional migration was interrupted midway; someone must decide what state it is in."""

    def __init__(
        self, migration_id: str, *, statement_index: int, statement_count: int, statement: str
    ) -> None:
        self.statement_index = statement_index
        self.statement_count = statement_count
        self.statement = statement
        first_line = statement.strip().splitlines()[0] if statement.strip() else ""
        where = (
            f"at statement {statement_index + 1} of {statement_count} ({first_line!r})"
            if statement_count
            else "in its Python code, which may have committed part of its work (its history row "
            "says why: `await migrator.history()`)"
        )
        super().__init__(
            f"migration {migration_id!r} is dirty: it was interrupted {where}. Inspect the database "
            "(a failed CREATE INDEX CONCURRENTLY leaves an INVALID index), then either finish or undo "
            f"that statement by hand and call `await migrator.resolve({migration_id!r}, applied=True)`, "
            f"or undo every statement and call `await migrator.resolve({migration_id!r}, applied=False)` "
            "to run it again",
            migration_id=migration_id,
        )


class HybridPhaseError(MigrationStateError):
    """A hybrid migration is not in a phase that allows the operation (such as ``contract()``
    before its backfill was validated); nothing was changed."""

    def __init__(self, message: str, *, migration_id: str, phase: str | None) -> None:
        super().__init__(message, migration_id=migration_id)
        #: The phase the hybrid was found in (None: it never ran).
        self.phase = phase


class PromotionRefusedError(MigrationStateError):
    """An environment's migrations must complete in the environment it ``requires`` first, with the
    same content; some have not, so nothing was applied.

    ``refusals`` holds one ``(migration id, reason)`` pair per migration refused, in run order.
    """

    def __init__(self, environment: str, required: str, refusals: Sequence[tuple[str, str]]) -> None:
        self.environment = environment
        self.required = required
        self.refusals = tuple(refusals)
        reasons = "; ".join(f"{migration_id}: {reason}" for migration_id, reason in self.refusals)
        super().__init__(
            f"refused to migrate environment {environment!r}, which requires every migration to have "
            f"completed in {required!r} first, with the same checksum; nothing was applied. {reasons}. "
            f"Apply them to {required!r} first (brainmigrate upgrade --env {required}), or, for a "
            "migration changed since, write a new migration instead of editing the applied one",
            migration_id=self.refusals[0][0] if self.refusals else "",
        )


class MigrationLockTimeout(BrainMigrateError, TimeoutError):
    """Another runner held the migration lock for longer than the configured wait."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            f"could not take the migration lock within {seconds:g} s: another runner is applying "
            "migrations; wait for it or raise MigrationConfig(lock_wait_seconds=...)"
        )


class MigrationLockLost(BrainMigrateError):
    """The session holding the runner lock ended while migrations were running."""

    def __init__(self) -> None:
        super().__init__(
            "lost the migration lock: its database session ended (terminated, or the connection "
            "broke); the migration in progress was not committed and no further one was started. "
            "Run again: another runner may already be applying the rest"
        )


class PoolExhaustedError(BrainMigrateError, TimeoutError):
    """No pool connection became free for the migration work in time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            f"no connection of the pool became free within {seconds:g} s for the migration lock or "
            "work; give the pool more connections (brainmigrate needs two: one for the lock, one for "
            "the work) or run migrations before the application takes them"
        )


class MigrationExecutionError(BrainMigrateError):
    """A migration failed while running; the database was left as it was before it."""

    def __init__(
        self,
        message: str,
        *,
        migration_id: str,
        statement_index: int | None = None,
        statement: str | None = None,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.migration_id = migration_id
        self.statement_index = statement_index
        self.statement = statement
        #: The PostgreSQL error's SQLSTATE, DETAIL and HINT, when PostgreSQL raised it.
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


class TableLockTimeout(MigrationExecutionError, TimeoutError):
    """A short switch-over could not lock its table in time, every try: another transaction held
    it. Nothing was changed; the next run tries again."""

    def __init__(self, message: str, *, migration_id: str, table: str, tries: int) -> None:
        super().__init__(message, migration_id=migration_id, sqlstate="55P03")
        self.table = table
        self.tries = tries


class DatabaseUnavailableError(BrainMigrateError, ConnectionError):
    """No connection to the database server could be opened: it is down, unreachable, or refused it."""

    def __init__(
        self,
        server: str | None,
        reason: str,
        *,
        origin: str = "the asyncpg pool the application gave to Migrator",
        remedy: str = "the pool's DSN names the right host, port, database, user and password",
    ) -> None:
        self.server = server
        self.reason = reason
        self.origin = origin
        where = f"the database server at {server}" if server else "the database server"
        super().__init__(
            f"could not connect to {where} ({reason}); the address and credentials are those of "
            f"{origin}. Check that PostgreSQL is running and reachable from here, and that {remedy}; "
            "then run again"
        )


class SchemaVersionError(BrainMigrateError):
    """brainmigrate's own tables are not at the version this brainmigrate uses.

    Newer (``found > supported``): a newer brainmigrate upgraded them; nothing is written. Older:
    they were not upgraded yet, which the next write (``run_pending()``, say) does.
    """

    def __init__(self, schema: str, *, found: int, supported: int) -> None:
        self.schema = schema
        self.found = found
        self.supported = supported
        if found > self.supported:
            message = (
                f"brainmigrate's tables in schema {schema!r} are at version {found}, newer than this "
                f"brainmigrate supports (version {self.supported}): a newer brainmigrate upgraded them; "
                "upgrade brainmigrate"
            )
        else:
            message = (
                f"brainmigrate's tables in schema {schema!r} are at version {found}; this brainmigrate "
                f"uses version {self.supported}: run_pending() (or any other write) upgrades them first"
            )
        super().__init__(message)


class MigrationCheckError(BrainMigrateError, AssertionError):
    """One of the standard checks of :mod:`brainmigrate.testing` failed.

    An AssertionError too, so test runners report it as a failed test. ``check`` names the check
    (``heads``, ``kinds``, ``upgrade``, ``stairway``, ``dry_run``); ``migration_ids`` the
    migrations it concerns; ``problems`` one message per failure found, each saying what to do.
    """

    def __init__(self, check: str, migration_ids: tuple[str, ...], problems: tuple[str, ...]) -> None:
        self.check = check
        self.migration_ids = migration_ids
        self.problems = problems
        super().__init__("\n\n".join(problems))
