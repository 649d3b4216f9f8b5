"""Reading one environment, read-only: what each migration's state is there, and its checksum.

The connection is opened with ``default_transaction_read_only`` on, so every statement runs in a
READ ONLY transaction and the server itself refuses any write; reads take no lock (the runner
lock's holder is looked up in ``pg_locks``) and never create brainmigrate's tables.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import asyncpg
import attrs

from .._catalog.loader import MigrationSource
from .._errors import BrainMigrateError, ConfigError, DatabaseUnavailableError, MigrationNotFoundError
from .._ledger.connect import CONNECT_ERRORS, connection, server_of
from .._ledger.history import HistoryLedger, MigrationState
from .._ledger.sql import HISTORY_TABLE
from .._migrator import Migrator
from .._model.metadata import MigrationStatus
from .._model.sqltext import quote_ident
from .config import Environment

#: Seconds to wait for an environment's server to answer before reporting it unreachable.
CONNECT_TIMEOUT = 5.0
#: Seconds any one read may take there.
STATEMENT_TIMEOUT = "10s"


class EnvironmentState(enum.StrEnum):
    """Whether an environment could be read."""

    READY = "ready"
    #: Reachable, but brainmigrate's tables are not there: nothing was ever applied (or recorded).
    NOT_INITIALISED = "not_initialised"
    #: No connection could be opened (``error`` says why), or its DSN variable is not set.
    UNREACHABLE = "unreachable"
    #: Connected, but reading failed (``error`` says why: a privilege, a newer layout...).
    UNREADABLE = "unreadable"


@attrs.frozen(kw_only=True)
class EnvironmentReading:
    """One environment as read: its state and, when ready, each migration's status and checksum."""

    name: str
    #: ``host:port`` of its server, when known (never the DSN, which may hold a password).
    server: str | None
    state: EnvironmentState
    #: Why it could not be read, for an unreachable or unreadable environment.
    error: str | None = None
    #: Each migration's status there, by id: the migrations given, then any others in its history.
    statuses: Mapping[str, MigrationStatus] = attrs.field(factory=dict)
    #: The checksum recorded with each migration applied there, by id.
    checksums: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def readable(self) -> bool:
        """Ready or not initialised: its statuses are known."""
        return self.state in (EnvironmentState.READY, EnvironmentState.NOT_INITIALISED)


async def read_environment(
    environment: Environment,
    migrations: MigrationSource,
    migration_ids: Sequence[str],
    *,
    schema: str = "brainmigrate",
    connect_timeout: float = CONNECT_TIMEOUT,
) -> EnvironmentReading:
    """Read ``environment`` read-only; failures are reported in the reading, never raised."""
    try:
        dsn = environment.resolve_dsn()
    except ConfigError as exc:
        return _failed(environment, None, EnvironmentState.UNREACHABLE, str(exc))
    try:
        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=2,
            timeout=connect_timeout,
            server_settings={
                "default_transaction_read_only": "on",
                "statement_timeout": STATEMENT_TIMEOUT,
                "application_name": "brainmigrate envs",
            },
        )
    except Exception as exc:  # an unparsable DSN: asyncpg checks it here
        return _failed(environment, None, EnvironmentState.UNREACHABLE, f"the DSN is not valid: {exc}")
    server = server_of(pool)
    try:
        return await _read(environment, pool, server, migrations, migration_ids, schema)
    except DatabaseUnavailableError as exc:
        return _failed(environment, server, EnvironmentState.UNREACHABLE, exc.reason)
    except CONNECT_ERRORS as exc:  # a connection lost midway, a privilege missing
        return _failed(environment, server, EnvironmentState.UNREADABLE, f"{type(exc).__name__}: {exc}")
    except BrainMigrateError as exc:
        return _failed(environment, server, EnvironmentState.UNREADABLE, str(exc))
    finally:
        with anyio.move_on_after(CONNECT_TIMEOUT, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:  # a server that stopped answering midway
            pool.terminate()


async def _read(
    environment: Environment,
    pool: asyncpg.Pool[Any],
    server: str | None,
    migrations: MigrationSource,
    migration_ids: Sequence[str],
    schema: str,
) -> EnvironmentReading:
    async with connection(pool) as conn:
        table = f"{quote_ident(schema)}.{HISTORY_TABLE}"
        initialised = bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
        states = await HistoryLedger(schema).states(conn) if initialised else {}
    if not initialised:
        return EnvironmentReading(
            name=environment.name,
            server=server,
            state=EnvironmentState.NOT_INITIALISED,
            statuses=dict.fromkeys(migration_ids, MigrationStatus.PENDING),
        )
    migrator = Migrator(pool, migrations, schema=schema)
    statuses: dict[str, MigrationStatus] = {}
    for migration_id in migration_ids:
        try:
            statuses[migration_id] = await migrator.status(migration_id)
        except MigrationNotFoundError:  # pragma: no cover - the ids come from the same migrations
            statuses[migration_id] = _status_of(states[migration_id])
    for migration_id, state in states.items():
        statuses.setdefault(migration_id, _status_of(state))  # in its history, not among the migrations
    return EnvironmentReading(
        name=environment.name,
        server=server,
        state=EnvironmentState.READY,
        statuses=statuses,
        checksums={mid: state.checksum for mid, state in states.items() if state.applied},
    )


def _status_of(state: MigrationState) -> MigrationStatus:
    """The status a history row gives a migration this code does not have."""
    if state.status == "running":
        return MigrationStatus.RUNNING
    if state.dirty:
        return MigrationStatus.DIRTY
    return MigrationStatus.COMPLETED if state.applied else MigrationStatus.PENDING


def _failed(
    environment: Environment, server: str | None, state: EnvironmentState, error: str
) -> EnvironmentReading:
    return EnvironmentReading(name=environment.name, server=server, state=state, error=error)
