"""The change capture of a rewrite: a trigger logging the key of every row written on a table into
a log in the history schema, and the replay that drains the log in batches.

Forward, the original logs into ``forward_log`` while its shadow is built; after the swap, the
rewritten table logs into ``reverse_log`` (so that swapping back can copy the application's
writes back into the old table) or, when the swap back is to be instant, mirrors: a statement
trigger writes each statement's rows to the old table too, in the application's transaction,
and logs their keys only when that fails (:func:`_mirror_sql`). Each log row is ``(seq, key)``:
one row per changed key per statement row, in commit-independent ``seq`` order. TRUNCATE of a
captured table is refused (it fires no row trigger, so the copy would silently keep rows the
table no longer has).

Why a replayed key is never lost, and never applied from a stale read:

- the log row is written by the same transaction as the change, so it becomes visible exactly
  when the change does;
- :func:`take_changes` deletes (and so locks) the log rows visible to its statement; the apply
  that follows, in the same READ COMMITTED transaction, re-reads the source with a newer snapshot,
  which sees every change whose log row was taken (and maybe later ones, harmlessly);
- a change committed after that statement's snapshot keeps its own log row, taken by a later
  batch; rows locked by a batch that rolls back are taken again (``SKIP LOCKED`` only skips them
  while they are locked);
- replayers of one log take a transaction-level advisory lock first: two of them never apply the
  same key at once, so an older read can never be written after a newer one.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .._engine.sql import MAX_IDENTIFIER_BYTES
from .._errors import MigrationStateError
from .._model.sqltext import quote_ident, quote_literal
from .._model.types import Connection
from .copy import TargetColumns
from .names import RewriteNames

#: Applies a batch of keys (in the caller's transaction); returns the rows it wrote or deleted.
Apply = Callable[[Connection, list[Any]], Awaitable[int]]

_TRIGGER_PREFIX = "bm_capture_"
_TRUNCATE_PREFIX = "bm_notrunc_"


class Direction(enum.Enum):
    """Which table logs: the original before the swap, or the rewritten table after it."""

    FORWARD = "forward"
    REVERSE = "reverse"


def log_name(names: RewriteNames, direction: Direction) -> str:
    """The log table's name (in the history schema)."""
    return names.forward_log if direction is Direction.FORWARD else names.reverse_log


def function_name(names: RewriteNames, direction: Direction) -> str:
    """The trigger function's name (in the history schema)."""
    return names.forward_function if direction is Direction.FORWARD else names.reverse_function


def truncate_trigger(names: RewriteNames) -> str:
    """The statement trigger refusing TRUNCATE (the row trigger is ``names.capture_trigger``)."""
    name = _TRUNCATE_PREFIX + names.capture_trigger.removeprefix(_TRIGGER_PREFIX)
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES, name
    return name


def capture_triggers(names: RewriteNames) -> tuple[str, str]:
    """Both trigger names a capture puts on its table: the row trigger, and the TRUNCATE one."""
    return names.capture_trigger, truncate_trigger(names)


#: The events whose rows a mirror writes to the old table, each by a statement trigger of its own.
MIRRORED_EVENTS = ("INSERT", "UPDATE", "DELETE")


def _all_triggers(names: RewriteNames) -> tuple[str, ...]:
    """Every trigger a capture, logging or mirroring, may have put on its table."""
    return (*capture_triggers(names), *(names.mirror_trigger(event) for event in MIRRORED_EVENTS))


def _replay_lock_key(names: RewriteNames, direction: Direction) -> int:
    """A stable 64-bit advisory lock key for the replayers of one log."""
    source = f"brainmigrate:rewrite-replay:{names.history_schema}.{log_name(names, direction)}"
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big", signed=True)


def _trigger_function(function: str, message: str, body: str) -> str:
    """A capture's trigger function: SECURITY DEFINER with a fixed search path (the application's
    roles need no rights on the history schema), refusing TRUNCATE with ``message``, then
    ``body`` (plpgsql statements) for the other events."""
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $capture$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use', MESSAGE = {quote_literal(message)};
    END IF;
{body}
    RETURN NULL;
END
$capture$
"""


def _function_sql(log: str, function: str, key: str, message: str) -> str:
    """The function of a logging capture's row trigger: each changed key (both of a key change)."""
    k = quote_ident(key)
    return _trigger_function(
        function,
        message,
        f"""    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} ("key") VALUES (NEW.{k});
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {log} ("key") VALUES (NEW.{k});
        IF OLD.{k} IS DISTINCT FROM NEW.{k} THEN
            INSERT INTO {log} ("key") VALUES (OLD.{k});
        END IF;
    ELSE
        INSERT INTO {log} ("key") VALUES (OLD.{k});
    END IF;""",
    )


def _mirror_sql(
    log: str, function: str, key: str, message: str, *, old: str, columns: TargetColumns, lock: int
) -> str:
    """The function of a mirror's statement triggers: each statement's rows (its transition
    tables ``bm_before`` and ``bm_after``) deleted from ``old`` and written there again as the
    statement left them.

    The mirror runs in a subtransaction: when it fails, the statement's keys go to ``log``
    instead, for the swap back to replay, and the application's statement is not affected. It
    takes the log's replay lock shared, so that a replay of ``log`` (which takes it exclusively)
    never writes an older read of a row after a mirror wrote a newer one.
    """
    k = quote_ident(key)
    names = ", ".join(map(quote_ident, columns.names))
    override = " OVERRIDING SYSTEM VALUE" if columns.overriding else ""
    return _trigger_function(
        function,
        message,
        f"""    PERFORM pg_advisory_xact_lock_shared({int(lock)});
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            DELETE FROM {old} AS o USING bm_before AS b WHERE o.{k} = b.{k};
        END IF;
        IF TG_OP <> 'DELETE' THEN
            DELETE FROM {old} AS o USING bm_after AS a WHERE o.{k} = a.{k};
            INSERT INTO {old} ({names}){override} SELECT {names} FROM bm_after;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO {log} ("key") SELECT {k} FROM bm_before;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO {log} ("key") SELECT {k} FROM bm_after;
        END IF;
    END;""",
    )


def _referencing(event: str) -> str:
    """The transition tables a mirror's ``event`` trigger names."""
    before = "OLD TABLE AS bm_before" if event != "INSERT" else ""
    after = "NEW TABLE AS bm_after" if event != "DELETE" else ""
    return "REFERENCING " + " ".join(part for part in (before, after) if part)


_TRIGGER_EXISTS = "SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2"

#: The tables carrying a trigger named $1 that calls function $2 (a qualified name).
_TRIGGERS_OF = """
SELECT t.tgrelid::regclass::text FROM pg_trigger t
 WHERE t.tgname = ANY($1::text[]) AND t.tgfoid = to_regprocedure($2 || '()')
"""


async def install_capture(
    conn: Connection,
    names: RewriteNames,
    *,
    direction: Direction,
    table: str,
    key: str,
    key_type: str,
    migration_id: str,
    mirror_to: str | None = None,
) -> None:
    """Start logging every key written on ``table`` (quoted, qualified) into ``direction``'s log.

    With ``mirror_to`` (the old table, quoted and qualified: after the swap), mirror instead:
    statement triggers write each statement's rows to ``mirror_to`` too, logging their keys only
    when that fails.

    Creates the log (``seq`` identity primary key, ``key`` of ``key_type``), the trigger function
    (SECURITY DEFINER with a fixed search path: the application's roles need no rights on the
    history schema) and, on ``table``, an AFTER row trigger and a BEFORE TRUNCATE trigger refusing
    TRUNCATE. Run it in the caller's transaction, before any row is copied: creating a trigger
    waits for the table's open write transactions, so every write committed after this one is
    logged. Running it again (after a crash) changes nothing.
    """
    log = names.in_history_schema(log_name(names, direction))
    function = names.in_history_schema(function_name(names, direction))
    message = (
        f"{table} is being rewritten by migration {migration_id!r}, which captures its changes: "
        "TRUNCATE it after the migration has finished (contract), or roll the migration back first"
    )
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {log} "
        f'(seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "key" {key_type} NOT NULL)'
    )
    row_trigger, truncate = capture_triggers(names)
    if mirror_to is not None:
        columns = await TargetColumns.read(conn, mirror_to)
        lock = _replay_lock_key(names, direction)
        await conn.execute(
            _mirror_sql(log, function, key, message, old=mirror_to, columns=columns, lock=lock)
        )
        for event in MIRRORED_EVENTS:
            trigger = names.mirror_trigger(event)
            if await conn.fetchval(_TRIGGER_EXISTS, table, trigger) is None:
                await conn.execute(
                    f"CREATE TRIGGER {quote_ident(trigger)} AFTER {event} ON {table} "
                    f"{_referencing(event)} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
                )
    else:
        await conn.execute(_function_sql(log, function, key, message))
    if mirror_to is None and await conn.fetchval(_TRIGGER_EXISTS, table, row_trigger) is None:
        await conn.execute(
            f"CREATE TRIGGER {quote_ident(row_trigger)} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
    if await conn.fetchval(_TRIGGER_EXISTS, table, truncate) is None:
        await conn.execute(
            f"CREATE TRIGGER {quote_ident(truncate)} BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )


async def remove_capture(conn: Connection, names: RewriteNames, direction: Direction) -> None:
    """Stop ``direction``'s capture: drop its triggers (from whichever table carries them now, the
    rewritten table or the old one), its function and its log. Nothing if it is gone.

    Dropping a trigger takes its table's ACCESS EXCLUSIVE lock for an instant.
    """
    function = names.in_history_schema(function_name(names, direction))
    for (table,) in await conn.fetch(_TRIGGERS_OF, list(_all_triggers(names)), function):
        for trigger in _all_triggers(names):
            await conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(trigger)} ON {table}")
    await conn.execute(f"DROP FUNCTION IF EXISTS {function}()")
    await conn.execute(f"DROP TABLE IF EXISTS {names.in_history_schema(log_name(names, direction))}")


async def _log(conn: Connection, names: RewriteNames, direction: Direction) -> str:
    log = names.in_history_schema(log_name(names, direction))
    if await conn.fetchval("SELECT to_regclass($1)", log) is None:
        raise MigrationStateError(
            f"rewrite {names.migration_id!r}: the {direction.value} change log {log} of "
            f"{names.schema}.{names.table} does not exist (its capture was removed, or never "
            "installed); roll the rewrite back and run it again",
            migration_id=names.migration_id,
        )
    return log


async def lag(conn: Connection, names: RewriteNames, direction: Direction) -> int:
    """How many changes ``direction``'s log holds, not yet replayed."""
    log = await _log(conn, names, direction)
    count: int = await conn.fetchval(f"SELECT count(*) FROM {log}")
    return count


async def take_changes(conn: Connection, names: RewriteNames, direction: Direction, limit: int) -> list[Any]:
    """Remove the oldest ``limit`` changes from ``direction``'s log, in the caller's transaction,
    and return their keys, each once.

    Apply them in the same transaction, re-reading the source after this call (see the module's
    docstring for why each change is then applied exactly once). Waits while another replayer of
    the same log is inside its transaction.
    """
    if limit < 1:
        raise ValueError(f"take_changes: limit must be at least 1, not {limit}")
    log = await _log(conn, names, direction)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _replay_lock_key(names, direction))
    rows = await conn.fetch(
        f"""
WITH taken AS (
    DELETE FROM {log} WHERE seq = ANY(ARRAY(
        SELECT seq FROM {log} ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING "key")
SELECT DISTINCT "key" FROM taken
""",
        limit,
    )
    return [row[0] for row in rows]


async def _more_than(conn: Connection, log: str, count: int) -> bool:
    """Whether the log holds more than ``count`` rows (counting at most ``count + 1``)."""
    held: int = await conn.fetchval(f"SELECT count(*) FROM (SELECT 1 FROM {log} LIMIT $1) AS l", count + 1)
    return held > count


async def replay(
    conn: Connection,
    names: RewriteNames,
    direction: Direction,
    apply: Apply,
    *,
    batch: int,
    until_lag: int,
) -> int:
    """Replay ``direction``'s log through ``apply`` until it holds at most ``until_lag`` changes;
    return the number of keys replayed.

    Each batch is one transaction (a savepoint when ``conn`` is already in one, as under the swap's
    lock, where ``until_lag=0`` drains the log): :func:`take_changes`, then ``apply(conn, keys)``.
    A batch whose apply fails is rolled back, its changes left in the log.
    """
    if until_lag < 0:
        raise ValueError(f"replay: until_lag must not be negative, not {until_lag}")
    log = await _log(conn, names, direction)
    replayed = 0
    while await _more_than(conn, log, until_lag):
        limit = batch
        while True:
            try:
                async with conn.transaction():
                    keys = await take_changes(conn, names, direction, limit)
                    if keys:
                        await apply(conn, keys)
                break
            except asyncpg.UniqueViolationError:
                # A unique value the batch writes is still held by a row whose change comes later
                # in the log (values exchanged or moved by one transaction): everything logged so
                # far is applied together, as the application committed it.
                held = await lag(conn, names, direction)
                if limit >= held:
                    raise
                limit = held
        replayed += len(keys)
        if not keys:
            break  # what is left is locked by another replayer: it is theirs to apply
    return replayed
