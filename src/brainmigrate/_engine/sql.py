"""The SQL of data-migration runs: run state, leased chunks of the key space, the error ledger,
before-images, and the batched reads and writes.

Keys are stored as text and cast back to the key column's type; values are bound parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .._model.sqltext import quote_ident, quote_literal
from .._model.states import ACTIVE_RUN_STATUSES, RunStatus

RUNS = "data_runs"
CHUNKS = "data_chunks"
ERRORS = "data_errors"

_ACTIVE = ", ".join(f"'{status.value}'" for status in ACTIVE_RUN_STATUSES)


def _latest(schema: str, param: str = "$1") -> str:
    """The id of the current (latest) run of the migration whose id is ``param``."""
    return f"(SELECT max(run_id) FROM {quote_ident(schema)}.{RUNS} WHERE migration_id = {param})"


def select_run(schema: str) -> str:
    """The current run of migration $1 (each run is a row; the latest is the current one)."""
    return f"""
SELECT migration_id, checksum, status, mode, total, before_images, image_columns, started_at, error, run_id
  FROM {quote_ident(schema)}.{RUNS} WHERE migration_id = $1
 ORDER BY run_id DESC LIMIT 1
"""


def start_run(schema: str) -> str:
    """Write a new run of migration $1, which becomes its current run ($2 checksum … $5 before-images)."""
    return f"""
INSERT INTO {quote_ident(schema)}.{RUNS}
       (migration_id, checksum, status, mode, total, before_images, started_at, resumed_at)
VALUES ($1, $2, '{RunStatus.RUNNING.value}', $3, $4, $5, clock_timestamp(), clock_timestamp())
"""


def resume_run(schema: str) -> str:
    """Mark the current run running again if its status is one of $2, remembering where this leg of it
    started; return the new status."""
    s = quote_ident(schema)
    return f"""
UPDATE {s}.{RUNS} r
   SET status = '{RunStatus.RUNNING.value}', resumed_at = clock_timestamp(), error = NULL, finished_at = NULL,
       processed_at_resume = (SELECT coalesce(sum(processed + skipped + failed), 0)
                                FROM {s}.{CHUNKS} c WHERE c.run_id = r.run_id)
 WHERE run_id = {_latest(schema)} AND status = ANY($2::text[])
RETURNING status
"""


def set_status(schema: str) -> str:
    """Move the current run to status $2 (with error $3) if its status is one of $4; return the new status."""
    return f"""
UPDATE {quote_ident(schema)}.{RUNS}
   SET status = $2, error = coalesce($3, error),
       finished_at = CASE WHEN $2 IN ({_ACTIVE}) THEN NULL ELSE now() END
 WHERE run_id = {_latest(schema)} AND status = ANY($4::text[])
RETURNING status
"""


def run_status(schema: str) -> str:
    """The status of the current run of migration $1."""
    return f"SELECT status FROM {quote_ident(schema)}.{RUNS} WHERE run_id = {_latest(schema)}"


def insert_chunks(schema: str) -> str:
    return f"""
INSERT INTO {quote_ident(schema)}.{CHUNKS} (run_id, migration_id, chunk, lower_key, upper_key)
SELECT {_latest(schema)}, $1, ordinality - 1, lower_key, upper_key
  FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS b(lower_key, upper_key, ordinality)
"""


def clear_chunks(schema: str) -> str:
    """Forget the chunks and failed items of the current run of migration $1."""
    s = quote_ident(schema)
    return f"""
WITH current_run AS (SELECT {_latest(schema)} AS run_id),
     forgotten AS (DELETE FROM {s}.{ERRORS} WHERE run_id = (SELECT run_id FROM current_run))
DELETE FROM {s}.{CHUNKS} WHERE run_id = (SELECT run_id FROM current_run)
"""


def _lease_alive(alias: str) -> str:
    """True while a chunk's lease is held by a live session that has not let it expire."""
    return f"""({alias}.lease_owner IS NOT NULL AND {alias}.lease_expires_at > now()
     AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = {alias}.lease_pid))"""


def lease_chunk(schema: str) -> str:
    """Lease the first chunk of migration $1's current run that is not done and not leased by a live
    worker, for owner $2."""
    s = quote_ident(schema)
    return f"""
UPDATE {s}.{CHUNKS} c
   SET lease_owner = $2, lease_pid = pg_backend_pid(),
       lease_expires_at = clock_timestamp() + make_interval(secs => $3), updated_at = clock_timestamp()
 WHERE (c.run_id, c.chunk) = (
       SELECT f.run_id, f.chunk FROM {s}.{CHUNKS} f
        WHERE f.run_id = {_latest(schema)} AND NOT f.done AND NOT {_lease_alive("f")}
        ORDER BY f.chunk
        LIMIT 1
          FOR UPDATE SKIP LOCKED)
RETURNING chunk, lower_key, upper_key, cursor_key
"""


def chunk_cursor(schema: str) -> str:
    """Where chunk $2 of migration $1's current run stands: its cursor and its lease's owner."""
    return (
        f"SELECT cursor_key, lease_owner FROM {quote_ident(schema)}.{CHUNKS} "
        f"WHERE run_id = {_latest(schema)} AND chunk = $2"
    )


def chunks_left(schema: str) -> str:
    """How many chunks of migration $1's current run are not done."""
    s = quote_ident(schema)
    return f"SELECT count(*) FROM {s}.{CHUNKS} WHERE run_id = {_latest(schema)} AND NOT done"


def checkpoint(schema: str) -> str:
    """Advance chunk $2 of migration $1's run while owner $10 holds its lease; return the run's status.

    Runs in the transaction of the writes it covers: no row means the lease was lost, and the
    transaction must be rolled back.
    """
    s = quote_ident(schema)
    return f"""
UPDATE {s}.{CHUNKS} c
   SET cursor_key = coalesce($3, cursor_key), processed = processed + $4, failed = failed + $5,
       skipped = skipped + $6, batches = batches + $7, done = $8, lease_pid = pg_backend_pid(),
       lease_expires_at = clock_timestamp() + make_interval(secs => $9), updated_at = clock_timestamp(),
       lease_owner = CASE WHEN $8 THEN NULL ELSE lease_owner END
 WHERE run_id = {_latest(schema)} AND chunk = $2 AND lease_owner = $10
RETURNING (SELECT r.status FROM {s}.{RUNS} r WHERE r.run_id = c.run_id)
"""


def release_chunks(schema: str) -> str:
    """Give up every lease owner $2 holds in migration $1's runs (owners are unique to a worker)."""
    return f"""
UPDATE {quote_ident(schema)}.{CHUNKS} SET lease_owner = NULL, lease_pid = NULL, updated_at = clock_timestamp()
 WHERE migration_id = $1 AND lease_owner = $2
"""


def _progress(schema: str, runs: str, having: str = "") -> str:
    s = quote_ident(schema)
    return f"""
SELECT r.status, r.total, r.started_at, r.resumed_at, r.processed_at_resume, r.error,
       coalesce(sum(c.processed), 0)::bigint, coalesce(sum(c.failed), 0)::bigint,
       coalesce(sum(c.skipped), 0)::bigint, coalesce(sum(c.batches), 0)::bigint,
       greatest(max(c.updated_at), r.resumed_at),
       count(*) FILTER (WHERE NOT c.done AND {_lease_alive("c")}),
       count(*) FILTER (WHERE NOT c.done), now(), r.migration_id
  FROM {s}.{RUNS} r LEFT JOIN {s}.{CHUNKS} c ON c.run_id = r.run_id
 WHERE {runs}
 GROUP BY r.run_id
 {having}
"""


def run_progress(schema: str) -> str:
    """The progress of the current run of migration $1."""
    return _progress(schema, f"r.run_id = {_latest(schema)}")


def running_progress(schema: str, active: Sequence[str]) -> str:
    """The progress of every current run that is ``active`` or has live workers, by migration id."""
    s = quote_ident(schema)
    statuses = ", ".join(f"'{status}'" for status in active)
    return _progress(
        schema,
        f"r.run_id IN (SELECT max(run_id) FROM {s}.{RUNS} GROUP BY migration_id)",
        f"""HAVING r.status IN ({statuses})
     OR count(*) FILTER (WHERE NOT c.done AND {_lease_alive("c")}) > 0
 ORDER BY r.migration_id""",
    )


def record_errors(schema: str) -> str:
    """Add failed items ($2 keys, $3 errors) of migration $1's current run to the ledger, counting
    attempts."""
    s = quote_ident(schema)
    return f"""
INSERT INTO {s}.{ERRORS} AS e
       (run_id, migration_id, item_key, error, attempts, first_failed_at, last_failed_at)
SELECT {_latest(schema)}, $1, k, m, 1, now(), now() FROM unnest($2::text[], $3::text[]) AS u(k, m)
ON CONFLICT (run_id, item_key) DO UPDATE
   SET error = EXCLUDED.error, attempts = e.attempts + 1, last_failed_at = now()
"""


def forget_errors(schema: str) -> str:
    return (
        f"DELETE FROM {quote_ident(schema)}.{ERRORS} "
        f"WHERE run_id = {_latest(schema)} AND item_key = ANY($2::text[])"
    )


def move_failed(schema: str) -> str:
    """After retrying failed items of migration $1's current run: $2 more written, $3 more skipped,
    $4 fewer failed."""
    s = quote_ident(schema)
    return f"""
WITH current_run AS (SELECT {_latest(schema)} AS run_id)
UPDATE {s}.{CHUNKS}
   SET processed = processed + $2, skipped = skipped + $3, failed = greatest(failed - $4, 0),
       updated_at = clock_timestamp()
 WHERE run_id = (SELECT run_id FROM current_run)
   AND chunk = (SELECT min(chunk) FROM {s}.{CHUNKS} WHERE run_id = (SELECT run_id FROM current_run))
"""


def select_errors(schema: str) -> str:
    """The failed items of migration $1's current run."""
    return f"""
SELECT item_key, error, attempts, first_failed_at, last_failed_at
  FROM {quote_ident(schema)}.{ERRORS} WHERE run_id = {_latest(schema)} ORDER BY item_key
"""


# -- the source table -------------------------------------------------------------------------


#: PostgreSQL cuts identifiers at this many bytes (NAMEDATALEN - 1), not characters.
MAX_IDENTIFIER_BYTES = 63


def derived_name(prefix: str, source: str, *, digest_length: int = 10, readable_chars: int = 40) -> str:
    """``{prefix}{readable}_{digest}``: unique to ``source`` (its digest) and at most 63 bytes.

    The readable part (``source`` lower-cased, non-word characters as ``_``) is cut to
    ``readable_chars`` characters, then to the bytes left, never inside a UTF-8 character: a longer
    name would be truncated by PostgreSQL, and two sources sharing a long prefix would get one name.
    """
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:digest_length]
    readable = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in source.lower())[:readable_chars]
    budget = MAX_IDENTIFIER_BYTES - len(prefix.encode()) - 1 - len(digest)
    readable = readable.encode()[:budget].decode("utf-8", "ignore")  # lone surrogates became "_"
    return f"{prefix}{readable}_{digest}"


def image_table(migration_id: str) -> str:
    """The name of the table keeping a migration's before-images (unchanged for ASCII ids)."""
    return derived_name("before_", migration_id)


def create_images(image: str, table: str, key: str, columns: Sequence[str]) -> str:
    """An empty table for before-images: the key, which columns were written, and their old values."""
    return f"""
CREATE TABLE {image} AS SELECT {key}, NULL::text[] AS written, {", ".join(columns)} FROM {table} WITH NO DATA;
ALTER TABLE {image} ADD PRIMARY KEY ({key});
"""


#: Every combination of a keyset query's bounds: from a key (``>`` after a cursor, ``>=`` from a
#: chunk's lower key, or none) and before a key (a chunk's upper key) or not.
BOUNDS: tuple[tuple[str | None, bool], ...] = tuple(
    (lower, upper) for lower in (None, ">", ">=") for upper in (False, True)
)

#: The columns of table $1 (a qualified name): name, type, type name and category, whether it
#: alone is a unique key, whether its type is built in.
TABLE_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname::text, t.typcategory::text,
       EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indnkeyatts = 1
                  AND i.indkey[0] = a.attnum AND i.indpred IS NULL),
       t.typnamespace = 'pg_catalog'::regnamespace
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

#: Whether a table exists (``to_regclass`` of its qualified name, $1), or NULL.
TABLE_EXISTS = "SELECT to_regclass($1)"


def drop_images(image: str, *, missing_ok: bool = False) -> str:
    return f"DROP TABLE {'IF EXISTS ' if missing_ok else ''}{image}"


def page(
    table: str,
    key: str,
    selects: Sequence[str],
    where: str | None,
    key_type: str,
    *,
    lower: str | None,
    upper: bool,
) -> str:
    """Up to $1 rows in key order, from a key (``lower`` is ``>`` or ``>=``) and before a key (``upper``).

    The bounds, when present, are the next parameters, as text.
    """
    conditions = [f"({where})"] if where else []
    n = 1
    if lower:
        n += 1
        conditions.append(f"{key} {lower} ${n}::text::{key_type}")
    if upper:
        n += 1
        conditions.append(f"{key} < ${n}::text::{key_type}")
    where_sql = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT {', '.join(selects)} FROM {table} {where_sql} ORDER BY {key} LIMIT $1"


def pages(
    table: str, key: str, selects: Sequence[str], where: str | None, key_type: str
) -> dict[tuple[str | None, bool], str]:
    """:func:`page` for each combination of :data:`BOUNDS`."""
    return {
        (lower, upper): page(table, key, selects, where, key_type, lower=lower, upper=upper)
        for lower, upper in BOUNDS
    }


def key_ranges(table: str, key: str, where: str | None, key_type: str) -> dict[tuple[str | None, bool], str]:
    """:func:`key_range` for each combination of :data:`BOUNDS`."""
    return {
        (lower, upper): key_range(table, key, where, key_type, lower=lower, upper=upper)
        for lower, upper in BOUNDS
    }


def rows_by_key(table: str, key: str, selects: Sequence[str], key_type: str) -> str:
    return (
        f"SELECT {', '.join(selects)} FROM {table} WHERE {key} = ANY($1::text[]::{key_type}[]) ORDER BY {key}"
    )


def key_range(
    table: str, key: str, where: str | None, key_type: str, *, lower: str | None, upper: bool
) -> str:
    """First key, last key (also as text) and count of the next $1 rows in range (server-side batches)."""
    inner = page(table, key, [key], where, key_type, lower=lower, upper=upper)
    return f"""
WITH batch AS MATERIALIZED ({inner})
SELECT (SELECT {key} FROM batch ORDER BY {key} LIMIT 1),
       (SELECT {key} FROM batch ORDER BY {key} DESC LIMIT 1),
       (SELECT b.{key}::text FROM batch AS b ORDER BY b.{key} DESC LIMIT 1),
       (SELECT count(*) FROM batch)
"""


def boundaries(table: str, key: str, where: str | None) -> str:
    """Keys splitting the rows into $1 parts of about equal size, as text, in key order (ordered by
    the key's own type: as text, 1000 would come before 500)."""
    where_sql = f"WHERE {where}" if where else ""
    return f"""
SELECT q.b::text FROM (
    SELECT DISTINCT unnest(percentile_disc(
               (SELECT array_agg(i::float8 / $1) FROM generate_series(1, $1 - 1) AS i)
           ) WITHIN GROUP (ORDER BY {key})) AS b
      FROM {table} {where_sql}) AS q
 WHERE q.b IS NOT NULL ORDER BY q.b
"""


def count_rows(table: str, where: str | None) -> str:
    return f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")


def write_batch(
    table: str, key: str, key_type: str, columns: Sequence[tuple[str, str, str]], image: str | None = None
) -> str:
    """One UPDATE writing a batch: $1 the keys, then one array per column (name, array type, cast).

    With ``image``, the before-images of the written columns are saved first, in the same statement
    (both parts read the same snapshot); the last parameter names the written columns. Run it with
    hash and merge joins off (:data:`PLANNER_SETTINGS`), so each row is found through the key's index
    however large the batch.
    """
    aliases = ["k", *(f"c{i}" for i in range(len(columns)))]
    params = [f"$1::{key_type}[]", *(f"${i + 2}::{array}" for i, (_, array, _) in enumerate(columns))]
    sets = ", ".join(f"{name} = u.c{i}{cast}" for i, (name, _, cast) in enumerate(columns))
    statement = (
        f"UPDATE {table} AS m SET {sets} FROM unnest({', '.join(params)}) AS u({', '.join(aliases)}) "
        f"WHERE m.{key} = u.k"
    )
    if image is None:
        return statement
    names = [name for name, _, _ in columns]
    return (
        f"WITH saved AS (INSERT INTO {image} ({key}, written, {', '.join(names)}) "
        f"SELECT m.{key}, ${len(columns) + 2}::text[], {', '.join(f'm.{n}' for n in names)} "
        f"FROM {table} AS m "
        f"JOIN unnest($1::{key_type}[]) AS s(k) ON m.{key} = s.k ON CONFLICT DO NOTHING) {statement}"
    )


def save_images_in_range(image: str, table: str, key: str, columns: Sequence[str]) -> str:
    """Save the before-images of rows with keys from $1 to $2 (a server-side batch; $3 the columns)."""
    return (
        f"INSERT INTO {image} ({key}, written, {', '.join(columns)}) "
        f"SELECT {key}, $3::text[], {', '.join(columns)} FROM {table} WHERE {key} BETWEEN $1 AND $2 "
        "ON CONFLICT DO NOTHING"
    )


#: For the restore's join only (``SET LOCAL``): raise work_mem to 256 MB unless it is higher already.
RESTORE_WORK_MEM = """
SELECT set_config('work_mem', '256MB', true)
 WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('256MB')
"""


def written_sets(image: str) -> str:
    """The distinct sets of columns the rows of a before-image table had written."""
    return f"SELECT DISTINCT written FROM {image}"


def restore_images(
    image: str, table: str, key: str, columns: Sequence[tuple[str, str]], *, uniform: bool = False
) -> str:
    """Put the saved before-images back (only the written columns of each row).

    ``columns`` pairs each quoted column with its name as stored in ``written``. With ``uniform``
    (every row had the same columns written), those columns are set without a per-row test.
    """
    if uniform:
        sets = ", ".join(f"{quoted} = b.{quoted}" for quoted, _ in columns)
    else:
        sets = ", ".join(
            f"{quoted} = CASE WHEN b.written @> ARRAY[{quote_literal(name)}] "
            f"THEN b.{quoted} ELSE m.{quoted} END"
            for quoted, name in columns
        )
    return f"UPDATE {table} AS m SET {sets} FROM {image} AS b WHERE m.{key} = b.{key}"


def _image_range(key: str, key_type: str, *, lower: bool, upper: bool) -> str:
    """The condition on ``b.{key}`` of a key range of before-images: from $1 (with ``lower``) and
    before the next parameter (with ``upper``), bounds as text; ``true`` for the whole table."""
    conditions = []
    if lower:
        conditions.append(f"b.{key} >= $1::text::{key_type}")
    if upper:
        conditions.append(f"b.{key} < ${1 + lower}::text::{key_type}")
    return " AND ".join(conditions) or "true"


def restore_images_in_range(
    image: str,
    table: str,
    key: str,
    key_type: str,
    columns: Sequence[tuple[str, str]],
    *,
    uniform: bool,
    lower: bool,
    upper: bool,
) -> str:
    """:func:`restore_images` of the before-images in one key range (see :func:`_image_range`)."""
    condition = _image_range(key, key_type, lower=lower, upper=upper)
    return f"{restore_images(image, table, key, columns, uniform=uniform)} AND {condition}"


def delete_images_in_range(image: str, key: str, key_type: str, *, lower: bool, upper: bool) -> str:
    """Forget the before-images of one key range (restored in the same transaction)."""
    return f"DELETE FROM {image} AS b WHERE {_image_range(key, key_type, lower=lower, upper=upper)}"


def count_images(image: str) -> str:
    return f"SELECT count(*) FROM {image}"


#: A range's restore: its transaction's timeouts ($1 lock, $2 statement).
RANGE_TIMEOUTS = "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)"


def set_run_error(schema: str) -> str:
    """Set the error (or note) of the current run of migration $1 to $2, NULL included."""
    return f"UPDATE {quote_ident(schema)}.{RUNS} SET error = $2 WHERE run_id = {_latest(schema)}"


#: Keep batched writes on the key's index: past ~2% of the table, the planner may choose a hash
#: join that scans the whole table on every batch.
PLANNER_SETTINGS = "SET enable_hashjoin = off; SET enable_mergejoin = off"
