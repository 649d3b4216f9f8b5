"""brainmigrate's own tables, versioned: one bootstrap, and ordered upgrade steps.

``schema_version`` holds one row: the version of the layout, when it was upgraded and by which
brainmigrate. :data:`STEPS` lists the upgrades as pure data (version, description, SQL with
``{s}`` for the quoted schema); a database at version N gets steps N+1.. together in one
transaction, under the runner lock, so readers never meet a layout half upgraded. A step's SQL
never changes once released: a later change is a new step.

A database brainmigrate 0.1.0 wrote (its tables, no ``schema_version``) is at version 1. 0.1.0
created the history and the data-run tables separately, on first use, so step 1 (``IF NOT EXISTS``
throughout) runs again for it, completing a partial layout, before the version is recorded.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import weakref
from typing import Any

import asyncpg

from .._errors import SchemaVersionError
from .._model.sqltext import quote_ident
from .._model.types import Connection

VERSION_TABLE = "schema_version"

#: Version 1: the 0.1.0 layout, exactly (its two bootstraps).
_V1 = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.migration_history (
    attempt_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration_id    text NOT NULL,
    name            text NOT NULL,
    migration_type  text NOT NULL,
    version         text NOT NULL,
    checksum        text NOT NULL,
    operation       text NOT NULL CHECK (operation IN ('apply', 'rollback', 'resolve')),
    status          text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'dirty')),
    applied_after   boolean,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    duration_ms     double precision,
    statement_index integer,
    statement_count integer,
    error           text,
    sqlstate        text,
    hostname        text NOT NULL,
    pid             integer NOT NULL,
    db_user         text NOT NULL DEFAULT current_user
);
CREATE INDEX IF NOT EXISTS "migration_history_migration_idx"
    ON {s}.migration_history (migration_id, attempt_id DESC);
CREATE TABLE IF NOT EXISTS {s}.data_runs (
    migration_id        text PRIMARY KEY,
    checksum            text NOT NULL,
    status              text NOT NULL CHECK (status IN ('running', 'cancelling', 'cancelled', 'failed',
                                                    'completed', 'rolled_back')),
    mode                text NOT NULL,
    total               bigint,
    before_images       text,
    image_columns       text[],
    started_at          timestamptz NOT NULL,
    resumed_at          timestamptz NOT NULL,
    processed_at_resume bigint NOT NULL DEFAULT 0,
    finished_at         timestamptz,
    error               text
);
CREATE TABLE IF NOT EXISTS {s}.data_chunks (
    migration_id     text NOT NULL REFERENCES {s}.data_runs ON DELETE CASCADE,
    chunk            integer NOT NULL,
    lower_key        text,
    upper_key        text,
    cursor_key       text,
    done             boolean NOT NULL DEFAULT false,
    lease_owner      uuid,
    lease_pid        integer,
    lease_expires_at timestamptz,
    processed        bigint NOT NULL DEFAULT 0,
    failed           bigint NOT NULL DEFAULT 0,
    skipped          bigint NOT NULL DEFAULT 0,
    batches          bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, chunk)
);
CREATE TABLE IF NOT EXISTS {s}.data_errors (
    migration_id    text NOT NULL,
    item_key        text NOT NULL,
    error           text NOT NULL,
    attempts        integer NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    PRIMARY KEY (migration_id, item_key)
);
"""

#: Version 2: room for more operations in the history; every data run kept as a row of its own
#: (``run_id``), its chunks and failed items referencing it. The current run of a migration is its
#: latest (highest ``run_id``).
_V2 = """
ALTER TABLE {s}.migration_history
    DROP CONSTRAINT migration_history_operation_check,
    ADD CONSTRAINT migration_history_operation_check
        CHECK (operation IN ('apply', 'rollback', 'resolve', 'stamp')),
    DROP CONSTRAINT migration_history_status_check,
    ADD CONSTRAINT migration_history_status_check
        CHECK (status IN ('running', 'completed', 'failed', 'dirty'));
ALTER TABLE {s}.data_runs ADD COLUMN run_id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE {s}.data_chunks ADD COLUMN run_id bigint;
UPDATE {s}.data_chunks c SET run_id = r.run_id FROM {s}.data_runs r WHERE r.migration_id = c.migration_id;
ALTER TABLE {s}.data_errors ADD COLUMN run_id bigint;
UPDATE {s}.data_errors e SET run_id = r.run_id FROM {s}.data_runs r WHERE r.migration_id = e.migration_id;
DELETE FROM {s}.data_errors WHERE run_id IS NULL;
ALTER TABLE {s}.data_chunks DROP CONSTRAINT data_chunks_migration_id_fkey, DROP CONSTRAINT data_chunks_pkey;
ALTER TABLE {s}.data_errors DROP CONSTRAINT data_errors_pkey;
ALTER TABLE {s}.data_runs DROP CONSTRAINT data_runs_pkey, ADD PRIMARY KEY (run_id);
CREATE INDEX data_runs_migration_idx ON {s}.data_runs (migration_id, run_id DESC);
ALTER TABLE {s}.data_chunks
    ALTER COLUMN run_id SET NOT NULL,
    ADD PRIMARY KEY (run_id, chunk),
    ADD FOREIGN KEY (run_id) REFERENCES {s}.data_runs ON DELETE CASCADE;
ALTER TABLE {s}.data_errors
    ALTER COLUMN run_id SET NOT NULL,
    ADD PRIMARY KEY (run_id, item_key),
    ADD FOREIGN KEY (run_id) REFERENCES {s}.data_runs ON DELETE CASCADE;
"""

#: Version 3: hybrid migrations. Each run of a hybrid is a row of its own in ``hybrid_runs`` (the
#: current one is the latest), holding its phase; history rows of a hybrid's steps (and of the
#: hybrid itself) carry its id and the phase they ran in; ``abandon`` rows say who gave a hybrid up
#: and why (``actor``, ``reason``).
_V3 = """
ALTER TABLE {s}.migration_history
    ADD COLUMN hybrid_id text,
    ADD COLUMN hybrid_phase text,
    ADD COLUMN actor text,
    ADD COLUMN reason text,
    DROP CONSTRAINT migration_history_operation_check,
    ADD CONSTRAINT migration_history_operation_check
        CHECK (operation IN ('apply', 'rollback', 'resolve', 'stamp', 'abandon'));
CREATE INDEX migration_history_hybrid_idx
    ON {s}.migration_history (hybrid_id, attempt_id) WHERE hybrid_id IS NOT NULL;
CREATE TABLE {s}.hybrid_runs (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hybrid_id    text NOT NULL,
    checksum     text NOT NULL,
    phase        text NOT NULL CHECK (phase IN ('expanding', 'backfilling', 'validating',
                                               'ready_to_contract', 'contracting', 'completed',
                                               'compensating', 'rolled_back', 'failed', 'abandoned')),
    current_step text,
    error        text,
    started_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
CREATE INDEX hybrid_runs_hybrid_idx ON {s}.hybrid_runs (hybrid_id, run_id DESC);
"""

#: Version 4: the cutover phase of hybrid migrations; the embedding models of vector columns, one
#: row per generation (``embedding_generations``): at most one active and one being built per
#: column, each with the model's identity and the re-embedding that made it.
_V4 = """
ALTER TABLE {s}.hybrid_runs
    DROP CONSTRAINT hybrid_runs_phase_check,
    ADD CONSTRAINT hybrid_runs_phase_check
        CHECK (phase IN ('expanding', 'backfilling', 'validating', 'cutting_over',
                         'ready_to_contract', 'contracting', 'completed', 'compensating',
                         'rolled_back', 'failed', 'abandoned'));
CREATE TABLE {s}.embedding_generations (
    generation_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema   text NOT NULL,
    table_name     text NOT NULL,
    column_name    text NOT NULL,
    model_name     text NOT NULL,
    provider       text,
    model_version  text,
    dimensions     integer NOT NULL CHECK (dimensions > 0),
    column_type    text NOT NULL,
    status         text NOT NULL CHECK (status IN ('building', 'active', 'previous', 'retired',
                                                   'rolled_back')),
    migration_id   text,
    index_phase    text,
    index_done     bigint,
    index_total    bigint,
    cutover        jsonb,
    created_at     timestamptz NOT NULL,
    activated_at   timestamptz,
    retired_at     timestamptz,
    updated_at     timestamptz NOT NULL
);
CREATE UNIQUE INDEX embedding_generations_one_active
    ON {s}.embedding_generations (table_schema, table_name, column_name) WHERE status = 'active';
CREATE UNIQUE INDEX embedding_generations_one_building
    ON {s}.embedding_generations (table_schema, table_name, column_name) WHERE status = 'building';
"""

#: The upgrade steps, in order: (version, description, SQL with ``{s}`` for the quoted schema).
STEPS: tuple[tuple[int, str, str], ...] = (
    (1, "the 0.1.0 layout: migration_history, data_runs, data_chunks, data_errors", _V1),
    (
        2,
        "history operations include 'stamp'; every data run kept (run_id), chunks and errors per run",
        _V2,
    ),
    (
        3,
        "hybrid migrations: hybrid_runs (a phase per run); history rows carry the hybrid, its phase, "
        "and who abandoned one and why ('abandon')",
        _V3,
    ),
    (
        4,
        "the cutover phase of hybrid migrations; embedding_generations (the embedding model of each "
        "vector column, generation by generation)",
        _V4,
    ),
)

#: The version this code reads and writes.
CURRENT_VERSION = STEPS[-1][0]

_VERSION_TABLE_SQL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.schema_version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     integer NOT NULL,
    upgraded_at timestamptz NOT NULL,
    upgraded_by text NOT NULL
);
"""

_RECORD_VERSION = """
INSERT INTO {s}.schema_version (version, upgraded_at, upgraded_by) VALUES ($1, clock_timestamp(), $2)
ON CONFLICT (singleton) DO UPDATE
   SET version = EXCLUDED.version, upgraded_at = EXCLUDED.upgraded_at, upgraded_by = EXCLUDED.upgraded_by
"""


def step_sql(sql: str, schema: str) -> str:
    """A step's SQL for ``schema``."""
    return sql.format(s=quote_ident(schema))


def _brainmigrate_version() -> str:
    try:
        return importlib.metadata.version("brainmigrate")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0.0.0"


async def read_version(conn: Connection, schema: str) -> int | None:
    """The version of ``schema``'s tables: None when there are none, 1 for a 0.1.0 database."""
    return (await _read(conn, schema))[0]


async def _read(conn: Connection, schema: str) -> tuple[int | None, bool]:
    """The version, and whether ``schema_version`` records it (not so for 0.1.0)."""
    s = quote_ident(schema)
    row = await conn.fetchrow(
        "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL OR to_regclass($3) IS NOT NULL",
        f"{s}.{VERSION_TABLE}",
        f"{s}.migration_history",
        f"{s}.data_runs",
    )
    assert row is not None
    if row[0]:
        version: int | None = await conn.fetchval(f"SELECT version FROM {s}.{VERSION_TABLE}")
        if version is not None:
            return version, True
    return (1 if row[1] else None), False


def check_supported(schema: str, version: int | None) -> None:
    """Refuse tables newer than this code."""
    if version is not None and version > CURRENT_VERSION:
        raise SchemaVersionError(schema, found=version, supported=CURRENT_VERSION)


#: Underlying connections that found ``schema`` at the current version (by schema): each checks
#: once, so a runner's session adds no round trip once its connection has seen the tables current.
_CURRENT: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _underlying(conn: Connection) -> Any:
    """The driver's connection behind ``conn`` (a pool's proxy cannot be referenced weakly)."""
    return getattr(conn, "_con", None) or conn


def _is_current(conn: Any, schema: str) -> bool:
    try:
        return schema in _CURRENT.get(conn, ())
    except TypeError:  # not weakly referenceable
        return False


def _seen_current(conn: Any, schema: str) -> None:
    with contextlib.suppress(TypeError):  # not weakly referenceable: checked again next time
        _CURRENT.setdefault(conn, set()).add(schema)


async def upgrade(conn: Connection, schema: str, *, create: bool, check_only: bool = False) -> int | None:
    """Bring ``schema``'s tables to :data:`CURRENT_VERSION`; call only under the runner lock.

    Without ``create``, a schema with no brainmigrate tables is left alone. With ``check_only``,
    nothing is written: tables newer than this code are refused, older ones left as they are.
    Returns the version found (None: no tables).
    """
    target = _underlying(conn)
    if not create and _is_current(target, schema):
        return CURRENT_VERSION
    try:
        version, recorded = await _read(conn, schema)
    except asyncpg.InsufficientPrivilegeError:
        # A role that may not read schema_version (granted only the history, say) cannot upgrade
        # either: its statements meet the tables as they are, and their privileges, as before.
        _seen_current(target, schema)
        return None
    check_supported(schema, version)
    if version == CURRENT_VERSION and recorded:
        _seen_current(target, schema)
        return version
    if check_only or (version is None and not create):
        return version
    at = version if recorded and version is not None else 0  # 0.1.0 runs step 1 again (idempotent)
    by = _brainmigrate_version()
    # Every step due in one transaction: a reader meets the tables as they were or in their
    # current layout, never half upgraded (brainmigrate's own tables are small).
    async with conn.transaction():
        for number, _, sql in STEPS:
            if number <= at:
                continue
            if number == 1:
                await conn.execute(step_sql(_VERSION_TABLE_SQL, schema))
            await conn.execute(step_sql(sql, schema))
            await conn.execute(step_sql(_RECORD_VERSION, schema), number, by)
    _seen_current(target, schema)
    return version
