"""The table surgery of a rewrite: the shadow table created beside the original, its indexes built
once it is filled, the swap that puts it in the original's place (and the swap back), and the
drops that end it.

Every index, constraint and identity sequence the shadow or the old table holds while it does not
carry the original's name is named ``names.index(position(original name), side)``: the same on any
connection, and reversible without remembering anything but the names of the table in place.
Definitions come from :mod:`.definition`, read with an empty search path, so every name in them
is schema-qualified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from .._errors import MigrationStateError, MigrationValidationError
from .._model.sqltext import quote_ident, quote_literal
from .._model.types import Connection
from .definition import (
    ColumnDefinition,
    IndexDefinition,
    SequenceDefinition,
    TableDefinition,
    read_definition,
)
from .names import RewriteNames
from .refusals import dependent_refusals

#: The privileges ``aclexplode`` names, which GRANT takes as they are.
_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)
_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}
_COMPRESSION = {"p": "pglz", "l": "lz4"}
_IDENTITY = {"a": "ALWAYS", "d": "BY DEFAULT"}
_GENERATED = {"s": "STORED", "v": "VIRTUAL"}
_REPLICA_IDENTITY = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL"}

_RELATION = """
SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2
"""
_INDEX_STATE = """
SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = $1 AND i.relname = $2
"""
_HAS_CONSTRAINT = "SELECT convalidated FROM pg_constraint WHERE conrelid = $1 AND conname = $2"
#: The foreign keys of the table and of other tables referencing it, enforced and not validated.
_NOT_VALID_KEYS = """
SELECT k.conrelid::regclass::text AS "table", k.conname, k.conrelid = $1 AS own
  FROM pg_constraint k
 WHERE k.contype = 'f' AND (k.conrelid = $1 OR k.confrelid = $1) AND NOT k.convalidated {enforced}
 ORDER BY 3 DESC, 1, 2
"""
_ACL = """
SELECT CASE WHEN e.grantee = 0 THEN NULL ELSE pg_get_userbyid(e.grantee) END AS grantee,
       e.privilege_type, e.is_grantable
  FROM aclexplode($1::text[]::aclitem[]) AS e
 ORDER BY 1 NULLS FIRST, 2
"""
_PROGRESS = """
SELECT p.pid, p.phase, CASE WHEN p.index_relid <> 0 THEN p.index_relid::regclass::text END AS index,
       p.command, p.lockers_total, p.lockers_done, p.blocks_total, p.blocks_done,
       p.tuples_total, p.tuples_done
  FROM pg_stat_progress_create_index p
 WHERE p.relid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = $1 AND c.relname = $2)
 ORDER BY p.pid
"""


def position(name: str) -> int:
    """The position the rewrite's names give the index, constraint or sequence ``name``."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") % 1_000_000


def _side_name(names: RewriteNames, original: str, side: str) -> str:
    return names.index(position(original), side)


def _check_positions(defn: TableDefinition) -> None:
    """MigrationValidationError when two of the table's objects would get one name."""
    seen: dict[int, str] = {}
    for name in [index.name for index in defn.indexes] + [s.name for s in defn.sequences if s.identity]:
        other = seen.setdefault(position(name), name)
        if other != name:
            raise MigrationValidationError(
                f"migration {defn.migration_id!r}: the indexes or sequences {other!r} and {name!r} of "
                f"{defn.schema}.{defn.table} would get the same temporary name in the rewrite; rename "
                "one of them. Nothing was created.",
                migration_id=defn.migration_id,
            )


async def _relation(conn: Connection, schema: str, name: str) -> int | None:
    oid: int | None = await conn.fetchval(_RELATION, schema, name)
    return oid


def _options(texts: Iterable[str]) -> str:
    """``key=value`` option texts as ``"key"='value'`` (``toast.key`` as ``"toast"."key"``)."""
    parts = []
    for text in texts:
        key, _, value = text.partition("=")
        qualified = ".".join(quote_ident(part) for part in key.split(".", 1))
        parts.append(f"{qualified}={quote_literal(value)}")
    return ", ".join(parts)


def _column_sql(column: ColumnDefinition, defn: TableDefinition, names: RewriteNames) -> str:
    sql = f"{quote_ident(column.name)} {column.type}"
    if column.collation:
        sql += f" COLLATE {column.collation}"
    if column.generated:
        sql += f" GENERATED ALWAYS AS ({column.generation_expression}) {_GENERATED[column.generated]}"
    if column.identity:
        sequence = next(s for s in defn.sequences if s.identity and s.column == column.name)
        sql += f" GENERATED {_IDENTITY[column.identity]} AS IDENTITY ({_identity_options(sequence, names)})"
    if column.default is not None:
        sql += f" DEFAULT {column.default}"
    if column.not_null:
        named = f"CONSTRAINT {quote_ident(column.not_null_name)} " if column.not_null_name else ""
        sql += f" {named}NOT NULL"
    return sql


def _identity_options(sequence: SequenceDefinition, names: RewriteNames) -> str:
    new = names.in_table_schema(_side_name(names, sequence.name, "new"))
    cycle = "CYCLE" if sequence.cycle else "NO CYCLE"
    return (
        f"SEQUENCE NAME {new} START WITH {int(sequence.start)} INCREMENT BY {int(sequence.increment)} "
        f"MINVALUE {int(sequence.minimum)} MAXVALUE {int(sequence.maximum)} "
        f"CACHE {int(sequence.cache)} {cycle}"
    )


def _index_sql(index: IndexDefinition, table: str, name: str, migration_id: str) -> str:
    """The statement building ``index`` as ``name`` on ``table`` (quoted and qualified)."""
    if index.constraint_name is not None:
        return f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(name)} {index.constraint_definition}"
    if index.using is None:
        raise MigrationStateError(
            f"the definition of index {index.name!r} cannot be rebuilt on a copy: {index.definition!r}",
            migration_id=migration_id,
        )
    unique = "UNIQUE " if index.unique else ""
    return f"CREATE {unique}INDEX {quote_ident(name)} ON {table} USING {index.using}"


async def _comment_index(conn: Connection, index: IndexDefinition, names: RewriteNames, name: str) -> None:
    if index.comment is not None:
        await conn.execute(
            f"COMMENT ON INDEX {names.in_table_schema(name)} IS {quote_literal(index.comment)}"
        )
    if index.constraint_comment is not None:
        await conn.execute(
            f"COMMENT ON CONSTRAINT {quote_ident(name)} ON {names.in_table_schema(names.shadow)} "
            f"IS {quote_literal(index.constraint_comment)}"
        )


async def create_shadow(conn: Connection, defn: TableDefinition, names: RewriteNames) -> None:
    """Create the shadow of ``defn``'s table: its columns (types, collations, defaults, NOT NULL,
    generated, identity, storage, compression, statistics, comments), its validated CHECK
    constraints, options, access method and owner, and the key's unique index only.

    A shadow already there with the same columns is left as it is (a resumed rewrite);
    MigrationStateError when one with other columns is.
    """
    _check_positions(defn)
    shadow = names.in_table_schema(names.shadow)
    async with conn.transaction():
        existing = await _relation(conn, names.schema, names.shadow)
        if existing is not None:
            there = await read_definition(
                conn, schema=names.schema, table=names.shadow, key=defn.key, migration_id=defn.migration_id
            )
            if [(c.name, c.type) for c in there.columns] != [(c.name, c.type) for c in defn.columns]:
                raise MigrationStateError(
                    f"rewrite {defn.migration_id!r}: a table {names.schema}.{names.shadow} exists with "
                    f"other columns than {defn.schema}.{defn.table}; drop it if nothing else uses it, "
                    "and run the rewrite again",
                    migration_id=defn.migration_id,
                )
            return
        parts = [_column_sql(column, defn, names) for column in defn.columns]
        parts += [
            f"CONSTRAINT {quote_ident(c.name)} {c.definition}"
            for c in defn.constraints
            if c.type == "c" and c.validated
        ]
        unlogged = "UNLOGGED " if defn.persistence == "u" else ""
        sql = f"CREATE {unlogged}TABLE {shadow} (\n  " + ",\n  ".join(parts) + "\n)"
        if defn.access_method:
            sql += f" USING {quote_ident(defn.access_method)}"
        if defn.options:
            sql += f" WITH ({_options(defn.options)})"
        await conn.execute(sql)
        for column in defn.columns:
            target = f"ALTER TABLE {shadow} ALTER COLUMN {quote_ident(column.name)}"
            if column.storage:
                await conn.execute(f"{target} SET STORAGE {_STORAGE[column.storage]}")
            if column.compression:
                await conn.execute(f"{target} SET COMPRESSION {_COMPRESSION[column.compression]}")
            if column.statistics is not None:
                await conn.execute(f"{target} SET STATISTICS {int(column.statistics)}")
            if column.options:
                await conn.execute(f"{target} SET ({_options(column.options)})")
            if column.comment is not None:
                await conn.execute(
                    f"COMMENT ON COLUMN {shadow}.{quote_ident(column.name)} "
                    f"IS {quote_literal(column.comment)}"
                )
        for constraint in defn.constraints:
            if constraint.type == "c" and constraint.validated and constraint.comment is not None:
                await conn.execute(
                    f"COMMENT ON CONSTRAINT {quote_ident(constraint.name)} ON {shadow} "
                    f"IS {quote_literal(constraint.comment)}"
                )
        key = defn.key_index
        if key is None:
            raise MigrationValidationError(
                f"migration {defn.migration_id!r}: the key column {defn.key!r} of {defn.schema}.{defn.table} "
                "has no unique index (check_rewritable says so before creating anything)",
                migration_id=defn.migration_id,
            )
        name = _side_name(names, key.name, "new")
        await conn.execute(_index_sql(key, shadow, name, defn.migration_id))
        await _comment_index(conn, key, names, name)
        await conn.execute(f"ALTER TABLE {shadow} OWNER TO {quote_ident(defn.owner)}")


#: Raise the transaction's maintenance_work_mem to $1 (a size such as '512MB'), never lower it.
_BUILD_MEMORY = (
    "SELECT set_config('maintenance_work_mem', "
    "(greatest(pg_size_bytes($1), pg_size_bytes(current_setting('maintenance_work_mem'))) / 1024)::text "
    "|| 'kB', true)"
)


async def build_indexes(
    conn: Connection,
    defn: TableDefinition,
    names: RewriteNames,
    *,
    maintenance_work_mem: str = "512MB",
    parallel_workers: int | None = None,
) -> list[str]:
    """Build the secondary indexes and index-backed constraints of ``defn``'s table on the shadow,
    one transaction each, then ANALYZE it; return the names of those built.

    An index already there and valid is kept (a resumed build), an invalid one dropped and built
    again. Each is built with ``maintenance_work_mem`` (the session's setting when larger);
    ``parallel_workers`` sets ``max_parallel_maintenance_workers`` (None: the server's).
    """
    shadow_oid = await _relation(conn, names.schema, names.shadow)
    if shadow_oid is None:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: there is no shadow table {names.schema}.{names.shadow} to "
            "build indexes on (create it first)",
            migration_id=defn.migration_id,
        )
    shadow = names.in_table_schema(names.shadow)
    built: list[str] = []
    for index in defn.secondary_indexes:
        name = _side_name(names, index.name, "new")
        valid = await conn.fetchval(_INDEX_STATE, shadow_oid, name)
        if valid:
            continue
        async with conn.transaction():
            if valid is not None:  # an invalid leftover
                await conn.execute(f"DROP INDEX {names.in_table_schema(name)}")
            await conn.execute(_BUILD_MEMORY, maintenance_work_mem)
            if parallel_workers is not None:
                await conn.execute(
                    "SELECT set_config('max_parallel_maintenance_workers', $1, true)",
                    str(int(parallel_workers)),
                )
            await conn.execute(_index_sql(index, shadow, name, defn.migration_id))
            await _comment_index(conn, index, names, name)
        built.append(name)
    await conn.execute(f"ANALYZE {shadow}")
    return built


async def index_build_progress(conn: Connection, names: RewriteNames) -> list[dict[str, Any]]:
    """The index builds running on the shadow, as ``pg_stat_progress_create_index`` shows them
    (read from another connection than the one building)."""
    return [dict(row) for row in await conn.fetch(_PROGRESS, names.schema, names.shadow)]


async def _rename_indexes(
    conn: Connection,
    names: RewriteNames,
    indexes: Iterable[IndexDefinition],
    *,
    to_side: str | None,
    from_side: str | None,
) -> None:
    """Rename each index from its original name or its ``from_side`` name to the other."""
    for index in indexes:
        before = _side_name(names, index.name, from_side) if from_side else index.name
        after = _side_name(names, index.name, to_side) if to_side else index.name
        await conn.execute(f"ALTER INDEX {names.in_table_schema(before)} RENAME TO {quote_ident(after)}")


async def _rename_sequence(conn: Connection, schema: str, before: str, after: str) -> None:
    await conn.execute(
        f"ALTER SEQUENCE {quote_ident(schema)}.{quote_ident(before)} RENAME TO {quote_ident(after)}"
    )


async def _continue_sequence(conn: Connection, source: str, target: str) -> None:
    """Make sequence ``target`` continue where ``source`` (both quoted, qualified) stands."""
    row = await conn.fetchrow(f"SELECT last_value, is_called FROM {source}")
    assert row is not None
    await conn.execute(
        "SELECT setval($1::text::regclass, $2::bigint, $3::bool)", target, row["last_value"], row["is_called"]
    )


async def _grant(conn: Connection, acl: Iterable[str], target: str, column: str | None = None) -> None:
    columns = f" ({quote_ident(column)})" if column else ""
    for row in await conn.fetch(_ACL, list(acl)):
        privilege = row["privilege_type"]
        if privilege not in _PRIVILEGES:  # pragma: no cover - a privilege of a later server
            continue
        grantee = "PUBLIC" if row["grantee"] is None else quote_ident(row["grantee"])
        option = " WITH GRANT OPTION" if row["is_grantable"] else ""
        await conn.execute(f"GRANT {privilege}{columns} ON TABLE {target} TO {grantee}{option}")


async def _carry_privileges(conn: Connection, live: TableDefinition, target: str, owner_first: bool) -> None:
    """Give ``target`` ``live``'s owner, table and column privileges."""
    if owner_first:
        await conn.execute(f"ALTER TABLE {target} OWNER TO {quote_ident(live.owner)}")
    if live.acl is not None:
        await conn.execute(f"REVOKE ALL ON TABLE {target} FROM PUBLIC, {quote_ident(live.owner)}")
        await _grant(conn, live.acl, target)
    for column in live.columns:
        if column.acl:
            await _grant(conn, column.acl, target, column.name)


async def _carry_table_facts(conn: Connection, live: TableDefinition, target: str) -> None:
    """Give ``target`` ``live``'s comment and replica identity."""
    comment = "NULL" if live.comment is None else quote_literal(live.comment)
    await conn.execute(f"COMMENT ON TABLE {target} IS {comment}")
    if live.replica_identity == "i" and live.replica_identity_index:
        await conn.execute(
            f"ALTER TABLE {target} REPLICA IDENTITY USING INDEX {quote_ident(live.replica_identity_index)}"
        )
    elif live.replica_identity in _REPLICA_IDENTITY:
        await conn.execute(
            f"ALTER TABLE {target} REPLICA IDENTITY {_REPLICA_IDENTITY[live.replica_identity]}"
        )


async def _add_constraints(
    conn: Connection, live: TableDefinition, table: str, oid: int, *, checks: bool
) -> None:
    """Add ``live``'s foreign keys (and, with ``checks``, its CHECKs not validated) to ``table``
    (relation ``oid``), NOT VALID, with their comments; one it has already is left as it is."""
    for constraint in live.constraints:
        if constraint.type == "c" and (constraint.validated or not checks):
            continue  # created with the shadow, or kept by the old table
        if await conn.fetchval(_HAS_CONSTRAINT, oid, constraint.name) is not None:
            continue
        not_valid = " NOT VALID" if constraint.validated else ""  # else its definition says so
        await conn.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(constraint.name)} "
            f"{constraint.definition}{not_valid}"
        )
        if constraint.comment is not None:
            await conn.execute(
                f"COMMENT ON CONSTRAINT {quote_ident(constraint.name)} ON {table} "
                f"IS {quote_literal(constraint.comment)}"
            )


async def _drop_foreign_keys(conn: Connection, live: TableDefinition, table: str) -> None:
    """Drop ``live``'s foreign keys from ``table``, the one of the two tables that steps aside."""
    for constraint in live.constraints:
        if constraint.type == "f":
            await conn.execute(
                f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {quote_ident(constraint.name)}"
            )


def _check_movable(live: TableDefinition, what: str) -> None:
    """MigrationStateError when what depends on ``live``'s table cannot be moved (it has changed
    since the rewrite began): nothing is renamed."""
    reasons = dependent_refusals(live)
    if reasons:
        raise MigrationStateError(
            f"rewrite {live.migration_id!r}: {what} cannot move what depends on "
            f"{live.schema}.{live.table}: " + " ".join(reasons) + " Nothing was swapped.",
            migration_id=live.migration_id,
        )


async def _move_dependents(conn: Connection, live: TableDefinition, table: str, away: str) -> None:
    """Make what depended on ``live``'s table, now named ``away``, depend on ``table``, which has
    taken its name (both quoted and qualified): the views reading it are defined again (their
    owner, grants, comments and the views on them stay), other tables' foreign keys dropped and
    added again ``NOT VALID``, the publications listing it list ``table`` instead.

    Run with a search path of ``pg_catalog`` alone, as the definitions were read.
    """
    if not (live.dependent_views or live.inbound_foreign_keys or live.publication_members):
        return
    search_path = await conn.fetchval("SELECT current_setting('search_path')")
    await conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    for view in live.dependent_views:
        options = f" WITH ({_options(view.options)})" if view.options else ""
        query = view.definition.rstrip().removesuffix(";")
        await conn.execute(f"CREATE OR REPLACE VIEW {view.qualified}{options} AS {query}")
    for key in live.inbound_foreign_keys:
        name = quote_ident(key.name)
        await conn.execute(f"ALTER TABLE {key.qualified_table} DROP CONSTRAINT {name}")
        not_valid = " NOT VALID" if key.enforced and key.validated else ""  # else it says so
        await conn.execute(
            f"ALTER TABLE {key.qualified_table} ADD CONSTRAINT {name} {key.definition}{not_valid}"
        )
        if key.comment is not None:
            await conn.execute(
                f"COMMENT ON CONSTRAINT {name} ON {key.qualified_table} IS {quote_literal(key.comment)}"
            )
    for member in live.publication_members:
        publication = quote_ident(member.publication)
        await conn.execute(f"ALTER PUBLICATION {publication} ADD TABLE {member.listing(table)}")
        await conn.execute(f"ALTER PUBLICATION {publication} DROP TABLE {away}")
    await conn.execute("SELECT set_config('search_path', $1, true)", search_path)


async def swap(conn: Connection, defn: TableDefinition, names: RewriteNames) -> None:
    """Put the shadow in the place of ``defn``'s table, in the caller's transaction (which holds the
    table's ACCESS EXCLUSIVE lock).

    The original becomes ``names.old`` and its indexes and identity sequences take their ``old``
    names; the shadow takes the table's name, and its indexes, constraints and identity sequences
    the original's; identity sequences continue after the old ones, serial sequences are owned by
    the new table's columns; outbound foreign keys (and CHECKs not validated) are added NOT VALID;
    owner, grants, comment and replica identity are carried over, as they are now, and the old
    table's foreign keys dropped; the views
    reading the table, other tables' foreign keys (NOT VALID) and the publications listing it
    move to the new table.
    """
    live = await read_definition(
        conn, schema=defn.schema, table=defn.table, key=defn.key, migration_id=defn.migration_id
    )
    _check_positions(live)
    _check_movable(live, "the swap")
    shadow_oid = await _relation(conn, names.schema, names.shadow)
    if shadow_oid is None or live.oid == shadow_oid:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: there is no shadow table {names.schema}.{names.shadow} to "
            f"swap in for {defn.schema}.{defn.table}",
            migration_id=defn.migration_id,
        )
    missing = [
        index.name
        for index in live.indexes
        if await conn.fetchval(_INDEX_STATE, shadow_oid, _side_name(names, index.name, "new")) is not True
    ]
    if missing:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: the shadow of {defn.schema}.{defn.table} lacks the indexes "
            f"{', '.join(missing)} (added to the table since its indexes were built?); build its "
            "indexes again before the swap. Nothing was swapped.",
            migration_id=defn.migration_id,
        )
    table = names.qualified_table
    identity = [s for s in live.sequences if s.identity]
    # The original steps aside ...
    await conn.execute(f"ALTER TABLE {table} RENAME TO {quote_ident(names.old)}")
    await _rename_indexes(conn, names, live.indexes, to_side="old", from_side=None)
    for sequence in identity:
        await _rename_sequence(conn, sequence.schema, sequence.name, _side_name(names, sequence.name, "old"))
    # ... and the shadow takes its place and its names.
    await conn.execute(
        f"ALTER TABLE {names.in_table_schema(names.shadow)} RENAME TO {quote_ident(names.table)}"
    )
    await _rename_indexes(conn, names, live.indexes, to_side=None, from_side="new")
    for sequence in identity:
        await _rename_sequence(conn, names.schema, _side_name(names, sequence.name, "new"), sequence.name)
        await _continue_sequence(
            conn,
            f"{quote_ident(sequence.schema)}.{quote_ident(_side_name(names, sequence.name, 'old'))}",
            f"{quote_ident(names.schema)}.{quote_ident(sequence.name)}",
        )
    await _take_over(conn, live, table, shadow_oid, names.in_table_schema(names.old), checks=True)


async def _take_over(
    conn: Connection, live: TableDefinition, table: str, oid: int, aside: str, *, checks: bool
) -> None:
    """What the table now named ``table`` (of relation ``oid``) takes over from ``live``'s, which
    stepped aside as ``aside``: its serial sequences, its foreign keys (and, with ``checks``, its
    ``CHECK``s not validated) added ``NOT VALID``, its owner, grants, comment and replica identity, and what
    depends on it (views, other tables' foreign keys, publications). The table stepping aside
    keeps no foreign keys: the replay of a swap back writes to it in any order, and the tables it
    referenced must not answer to its rows (a delete refused, a cascade)."""
    for sequence in live.sequences:
        if not sequence.identity:
            await conn.execute(
                f"ALTER SEQUENCE {sequence.qualified} OWNED BY {table}.{quote_ident(sequence.column)}"
            )
    await _add_constraints(conn, live, table, oid, checks=checks)
    await _drop_foreign_keys(conn, live, aside)
    await _carry_privileges(conn, live, table, owner_first=True)
    await _carry_table_facts(conn, live, table)
    await _move_dependents(conn, live, table, aside)


async def validate_foreign_keys(conn: Connection, names: RewriteNames) -> list[str]:
    """Validate the foreign keys of the table in place and of other tables referencing it that
    are not validated: those a swap (or a swap back) added NOT VALID, since a rewrite refuses to
    start while one is not. Return them as ``constraint on table``."""
    table_oid = await _relation(conn, names.schema, names.table)
    version = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    enforced = "AND k.conenforced" if version >= 180000 else ""
    validated: list[str] = []
    for row in await conn.fetch(_NOT_VALID_KEYS.format(enforced=enforced), table_oid):
        await conn.execute(f"ALTER TABLE {row['table']} VALIDATE CONSTRAINT {quote_ident(row['conname'])}")
        validated.append(f"{row['conname']} on {row['table']}")
    return validated


async def swap_back(conn: Connection, defn: TableDefinition, names: RewriteNames) -> None:
    """Undo :func:`swap`, in the caller's transaction (holding the table's lock): the old table takes
    the table's name and every name back, the rewritten one becomes ``names.shadow`` again with its
    ``new`` names; sequences are owned by, and continue on, the old table's columns.

    The rewritten table's foreign keys go back to the old one NOT VALID, other tables' foreign
    keys are moved back to it NOT VALID (validate both with :func:`validate_foreign_keys`), and so
    are the views reading it and the publications listing it. ``defn`` may describe the old table
    or the original before the swap; the tables as they are now are read again.
    """
    old_oid = await _relation(conn, names.schema, names.old)
    if old_oid is None:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: there is no old table {names.schema}.{names.old} to swap "
            f"back for {names.schema}.{names.table}",
            migration_id=defn.migration_id,
        )
    current = await read_definition(
        conn, schema=names.schema, table=names.table, key=defn.key, migration_id=defn.migration_id
    )
    _check_movable(current, "the swap back")
    previous = await read_definition(
        conn, schema=names.schema, table=names.old, key=defn.key, migration_id=defn.migration_id
    )
    old_names = {index.name for index in previous.indexes}
    # The indexes the rewritten table carried over (one the application added since stays as it is).
    carried = [index for index in current.indexes if _side_name(names, index.name, "old") in old_names]
    identity = [s for s in current.sequences if s.identity]
    table = names.qualified_table
    old = names.in_table_schema(names.old)
    await conn.execute(f"ALTER TABLE {table} RENAME TO {quote_ident(names.shadow)}")
    await _rename_indexes(conn, names, carried, to_side="new", from_side=None)
    for sequence in identity:
        await _rename_sequence(conn, sequence.schema, sequence.name, _side_name(names, sequence.name, "new"))
    await conn.execute(f"ALTER TABLE {old} RENAME TO {quote_ident(names.table)}")
    await _rename_indexes(conn, names, carried, to_side=None, from_side="old")
    for sequence in identity:
        old_sequence = next(
            (s for s in previous.sequences if s.identity and s.column == sequence.column), None
        )
        if old_sequence is None:
            continue
        await _rename_sequence(conn, old_sequence.schema, old_sequence.name, sequence.name)
        await _continue_sequence(
            conn,
            f"{quote_ident(sequence.schema)}.{quote_ident(_side_name(names, sequence.name, 'new'))}",
            f"{quote_ident(old_sequence.schema)}.{quote_ident(sequence.name)}",
        )
    await _take_over(conn, current, table, old_oid, names.in_table_schema(names.shadow), checks=False)


async def drop_old(conn: Connection, names: RewriteNames) -> None:
    """Drop the old table (after the swap, once the rewrite is kept); nothing if it is gone."""
    await conn.execute(f"DROP TABLE IF EXISTS {names.in_table_schema(names.old)}")


async def drop_shadow(conn: Connection, names: RewriteNames) -> None:
    """Drop the shadow (an abandoned or swapped-back rewrite); nothing if it is gone."""
    await conn.execute(f"DROP TABLE IF EXISTS {names.in_table_schema(names.shadow)}")
