"""Every SQL statement brainmigrate itself sends, in one place.

Identifiers are quoted with :func:`quote_ident`; values are always bound parameters.
"""

from __future__ import annotations

from .._model.sqltext import quote_ident

HISTORY_TABLE = "migration_history"


def current_states(schema: str) -> str:
    """The latest row that decides each migration's state (failed attempts leave the state as it was)."""
    return f"""
SELECT DISTINCT ON (migration_id)
       migration_id, status, applied_after, checksum, statement_index, statement_count
  FROM {quote_ident(schema)}.{HISTORY_TABLE}
 WHERE status <> 'failed'
 ORDER BY migration_id, attempt_id DESC
"""


def latest_attempt(schema: str) -> str:
    return f"""
SELECT status, applied_after, operation
  FROM {quote_ident(schema)}.{HISTORY_TABLE}
 WHERE migration_id = $1
 ORDER BY attempt_id DESC
 LIMIT 1
"""


_COLUMNS = (
    "migration_id, name, migration_type, version, checksum, operation, status, applied_after, "
    "started_at, finished_at, duration_ms, statement_index, statement_count, error, sqlstate, hostname, pid"
)


#: The history columns version 3 added, for hybrid migrations.
_HYBRID_COLUMNS = "hybrid_id, hybrid_phase, actor, reason"


def _lock_held(first: int) -> str:
    """True while session ``$first`` holds the advisory lock whose key splits into the next two params."""
    return f"""EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND pid = ${first}
       AND classid = ${first + 1}::bigint::oid AND objid = ${first + 2}::bigint::oid AND objsubid = 1
)"""


def insert_attempt(schema: str, *, guarded: bool, hybrid: bool = False) -> str:
    """Write an attempt row; ``guarded`` writes it only while the runner lock is held (its three
    parameters follow the row's). With ``hybrid``, $18-$21 are the row's hybrid id, hybrid phase,
    actor and reason (version 3 of the tables) and the lock's parameters start at $22."""
    columns = f"{_COLUMNS}, {_HYBRID_COLUMNS}" if hybrid else _COLUMNS
    values = ", $18::text, $19::text, $20::text, $21::text" if hybrid else ""
    guard = f"WHERE {_lock_held(22 if hybrid else 18)}" if guarded else ""
    return f"""
INSERT INTO {quote_ident(schema)}.{HISTORY_TABLE} ({columns})
SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::boolean,
       $9::timestamptz, $10::timestamptz, $11::float8, $12::int, $13::int, $14::text, $15::text,
       $16::text, $17::int{values}
{guard}
RETURNING attempt_id
"""


def update_attempt(schema: str, *, guarded: bool) -> str:
    """Finish an attempt row; ``guarded`` only while the runner lock ($9-$11) is held."""
    guard = f"AND {_lock_held(9)}" if guarded else ""
    return f"""
UPDATE {quote_ident(schema)}.{HISTORY_TABLE}
   SET status = $2, applied_after = $3, finished_at = $4, duration_ms = $5,
       statement_index = $6, error = $7, sqlstate = $8
 WHERE attempt_id = $1 {guard}
"""


def mark_statement(schema: str) -> str:
    """Record the statement a non-transactional attempt reached, while the runner lock ($3-$5) is held."""
    return f"""
UPDATE {quote_ident(schema)}.{HISTORY_TABLE} SET statement_index = $2
 WHERE attempt_id = $1 AND {_lock_held(3)}
"""


def close_interrupted(schema: str) -> str:
    return f"""
UPDATE {quote_ident(schema)}.{HISTORY_TABLE}
   SET status = 'dirty', finished_at = $2,
       error = coalesce(error || '; ', '') || 'interrupted: its runner stopped midway'
 WHERE migration_id = $1 AND status = 'running'
"""


def select_history(schema: str, *, one: bool = False, hybrid: bool = True) -> str:
    """Every attempt in order, or with ``one`` the attempt whose id is ``$1``; with ``hybrid``, the
    columns version 3 added too (tables older than that do not have them)."""
    where = "WHERE attempt_id = $1" if one else ""
    more = f", {_HYBRID_COLUMNS}" if hybrid else ""
    return f"""
SELECT attempt_id, {_COLUMNS}, db_user{more}
  FROM {quote_ident(schema)}.{HISTORY_TABLE}
 {where}
 ORDER BY attempt_id
"""


# -- hybrid migrations ----------------------------------------------------------------------------

HYBRID_RUNS_TABLE = "hybrid_runs"

_RUN_COLUMNS = "run_id, hybrid_id, checksum, phase, current_step, error, started_at, updated_at, finished_at"


def latest_hybrid_run(schema: str) -> str:
    """The current (latest) run of hybrid ``$1``."""
    return f"""
SELECT {_RUN_COLUMNS}
  FROM {quote_ident(schema)}.{HYBRID_RUNS_TABLE}
 WHERE hybrid_id = $1
 ORDER BY run_id DESC
 LIMIT 1
"""


def start_hybrid_run(schema: str) -> str:
    """A new run of hybrid ``$1`` (checksum ``$2``) in phase ``$3``."""
    return f"""
INSERT INTO {quote_ident(schema)}.{HYBRID_RUNS_TABLE} (hybrid_id, checksum, phase, started_at, updated_at)
VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp())
RETURNING {_RUN_COLUMNS}
"""


def set_hybrid_phase(schema: str) -> str:
    """Move run ``$1`` to phase ``$2`` from one of the phases ``$3`` (the transition table's), with
    step ``$4`` and error ``$5``; ``$6`` ends the run. Returns nothing when the run is in none of them."""
    return f"""
UPDATE {quote_ident(schema)}.{HYBRID_RUNS_TABLE}
   SET phase = $2, current_step = $4, error = $5, updated_at = clock_timestamp(),
       finished_at = CASE WHEN $6::boolean THEN clock_timestamp() ELSE finished_at END
 WHERE run_id = $1 AND phase = ANY($3::text[])
RETURNING {_RUN_COLUMNS}
"""


def set_hybrid_step(schema: str) -> str:
    """Record that run ``$1`` is at step ``$2`` (None: between steps)."""
    return f"""
UPDATE {quote_ident(schema)}.{HYBRID_RUNS_TABLE}
   SET current_step = $2, updated_at = clock_timestamp()
 WHERE run_id = $1
"""


def set_hybrid_error(schema: str) -> str:
    """Record why run ``$1`` stopped (``$2``), without changing its phase."""
    return f"""
UPDATE {quote_ident(schema)}.{HYBRID_RUNS_TABLE}
   SET error = $2, updated_at = clock_timestamp()
 WHERE run_id = $1
"""


def lock_held_by_anyone() -> str:
    """Whether any session of this database holds the advisory lock whose key halves are $1, $2.

    Read from ``pg_locks``, so asking takes no lock and waits for none.
    """
    return """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = $1::bigint::oid AND objid = $2::bigint::oid
)"""


TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"


def set_session_timeouts(*, check_client: bool) -> str:
    """Set the session's ``lock_timeout`` ($1) and ``statement_timeout`` ($2).

    With ``check_client`` (PostgreSQL 14+), the server also checks every second that the client is
    still connected, so a killed runner's statement stops instead of holding its locks and snapshot.
    """
    check = ", set_config('client_connection_check_interval', '1s', false)" if check_client else ""
    return f"SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false){check}"


#: The id of the transaction in progress (assigning one if it has none yet). A migration that ran
#: COMMIT or ROLLBACK is in another transaction, or none, when brainmigrate comes to commit it.
CURRENT_XACT = "SELECT txid_current()"

#: A session as the pool handed it over: its session user and role, its search_path, and the
#: settings it SET (names and values). Settings of the connection's options or ``ALTER ROLE ... SET``
#: are not listed: ``RESET ALL`` goes back to them by itself.
SESSION_BASELINE = r"""
SELECT session_user::text, current_setting('role'), current_setting('search_path'),
       coalesce(array_agg(name ORDER BY name), '{}'),
       coalesce(array_agg(current_setting(name) ORDER BY name), '{}')
  FROM pg_catalog.pg_settings
 WHERE source = 'session' AND context IN ('user', 'superuser') AND name NOT LIKE 'transaction\_%'
"""

#: Undo what a session SET: its session authorization, role and every setting. Run then
#: :func:`restore_session` for what the pool had set.
RESET_SESSION = "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL"

#: After :data:`RESET_SESSION`: the settings ($1 names, $2 values), then the role ($3), of a baseline.
RESTORE_SESSION = """
SELECT pg_catalog.set_config('role', $3, false)
  FROM (SELECT count(pg_catalog.set_config(n, v, false))
          FROM unnest($1::text[], $2::text[]) AS s(n, v)) AS restored
"""


def _timeouts(lock: str, statement: str, check_client: bool) -> str:
    check = ", pg_catalog.set_config('client_connection_check_interval', '1s', false)" if check_client else ""
    return (
        f"pg_catalog.set_config('lock_timeout', {lock}, false), "
        f"pg_catalog.set_config('statement_timeout', {statement}, false){check}"
    )


def restore_session(*, check_client: bool) -> str:
    """:data:`RESTORE_SESSION`, then the session's ``lock_timeout`` ($4) and ``statement_timeout``
    ($5) (see :func:`set_session_timeouts`), which win over the baseline's: the baseline's settings
    are set while the aggregate runs, before the outer list is computed."""
    return f"""
SELECT pg_catalog.set_config('role', $3, false), {_timeouts("$4", "$5", check_client)}
  FROM (SELECT count(pg_catalog.set_config(n, v, false))
          FROM unnest($1::text[], $2::text[]) AS s(n, v)) AS restored
"""


def reset_as(user: str) -> str:
    """:data:`RESET_SESSION`, then session user ``user`` (an identifier, quoted): inside
    brainmigrate's transaction before its history row, so that the row is written as the pool's
    session and, once the transaction commits, the connection needs no other reset. A rollback
    undoes it. Several statements, so no parameters: it carries no values."""
    return f"{RESET_SESSION}; SET SESSION AUTHORIZATION {quote_ident(user)}"


def xact_and_timeouts(*, check_client: bool) -> str:
    """The id of the transaction in progress (as :data:`CURRENT_XACT`), then the session's
    ``lock_timeout`` ($1) and ``statement_timeout`` ($2) set again (see :func:`set_session_timeouts`)."""
    check = ", pg_catalog.set_config('client_connection_check_interval', '1s', false)" if check_client else ""
    return (
        "SELECT pg_catalog.txid_current(), pg_catalog.set_config('lock_timeout', $1, false), "
        f"pg_catalog.set_config('statement_timeout', $2, false){check}"
    )


#: Until the transaction ends: act as session user $1 with role $2 and search_path $3, whatever the
#: session was switched to (for brainmigrate's own statements after a migration's). Returns the id
#: of the transaction in progress (as :data:`CURRENT_XACT`), which none of it changes.
ACT_AS = """
SELECT pg_catalog.txid_current(), pg_catalog.set_config('session_authorization', $1, true),
       pg_catalog.set_config('role', $2, true), pg_catalog.set_config('search_path', $3, true)
"""
