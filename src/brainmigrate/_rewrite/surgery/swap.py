"""The swap that puts the shadow in the original's place, the swap back, the validation of the
foreign keys they add NOT VALID, and the drop of the old table that ends a kept rewrite."""

from __future__ import annotations

from collections.abc import Iterable

from ..._errors import MigrationStateError
from ..._model.sqltext import quote_ident
from ..._model.types import Connection
from ..definition import IndexDefinition, TableDefinition, read_definition
from ..names import RewriteNames
from .naming import check_positions, side_name
from .sql import INDEX_STATE, NOT_VALID_KEYS, relation
from .takeover import check_movable, take_over


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
        before = side_name(names, index.name, from_side) if from_side else index.name
        after = side_name(names, index.name, to_side) if to_side else index.name
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
    check_positions(live)
    check_movable(live, "the swap")
    shadow_oid = await relation(conn, names.schema, names.shadow)
    if shadow_oid is None or live.oid == shadow_oid:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: there is no shadow table {names.schema}.{names.shadow} to "
            f"swap in for {defn.schema}.{defn.table}",
            migration_id=defn.migration_id,
        )
    missing = [
        index.name
        for index in live.indexes
        if await conn.fetchval(INDEX_STATE, shadow_oid, side_name(names, index.name, "new")) is not True
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
        await _rename_sequence(conn, sequence.schema, sequence.name, side_name(names, sequence.name, "old"))
    # ... and the shadow takes its place and its names.
    await conn.execute(
        f"ALTER TABLE {names.in_table_schema(names.shadow)} RENAME TO {quote_ident(names.table)}"
    )
    await _rename_indexes(conn, names, live.indexes, to_side=None, from_side="new")
    for sequence in identity:
        await _rename_sequence(conn, names.schema, side_name(names, sequence.name, "new"), sequence.name)
        await _continue_sequence(
            conn,
            f"{quote_ident(sequence.schema)}.{quote_ident(side_name(names, sequence.name, 'old'))}",
            f"{quote_ident(names.schema)}.{quote_ident(sequence.name)}",
        )
    await take_over(conn, live, table, shadow_oid, names.in_table_schema(names.old), checks=True)


async def validate_foreign_keys(conn: Connection, names: RewriteNames) -> list[str]:
    """Validate the foreign keys of the table in place and of other tables referencing it that
    are not validated: those a swap (or a swap back) added NOT VALID, since a rewrite refuses to
    start while one is not. Return them as ``constraint on table``."""
    table_oid = await relation(conn, names.schema, names.table)
    version = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    enforced = "AND k.conenforced" if version >= 180000 else ""
    validated: list[str] = []
    for row in await conn.fetch(NOT_VALID_KEYS.format(enforced=enforced), table_oid):
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
    old_oid = await relation(conn, names.schema, names.old)
    if old_oid is None:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: there is no old table {names.schema}.{names.old} to swap "
            f"back for {names.schema}.{names.table}",
            migration_id=defn.migration_id,
        )
    current = await read_definition(
        conn, schema=names.schema, table=names.table, key=defn.key, migration_id=defn.migration_id
    )
    check_movable(current, "the swap back")
    previous = await read_definition(
        conn, schema=names.schema, table=names.old, key=defn.key, migration_id=defn.migration_id
    )
    old_names = {index.name for index in previous.indexes}
    # The indexes the rewritten table carried over (one the application added since stays as it is).
    carried = [index for index in current.indexes if side_name(names, index.name, "old") in old_names]
    identity = [s for s in current.sequences if s.identity]
    table = names.qualified_table
    old = names.in_table_schema(names.old)
    await conn.execute(f"ALTER TABLE {table} RENAME TO {quote_ident(names.shadow)}")
    await _rename_indexes(conn, names, carried, to_side="new", from_side=None)
    for sequence in identity:
        await _rename_sequence(conn, sequence.schema, sequence.name, side_name(names, sequence.name, "new"))
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
            f"{quote_ident(sequence.schema)}.{quote_ident(side_name(names, sequence.name, 'new'))}",
            f"{quote_ident(old_sequence.schema)}.{quote_ident(sequence.name)}",
        )
    await take_over(conn, current, table, old_oid, names.in_table_schema(names.shadow), checks=False)


async def drop_old(conn: Connection, names: RewriteNames) -> None:
    """Drop the old table (after the swap, once the rewrite is kept); nothing if it is gone."""
    await conn.execute(f"DROP TABLE IF EXISTS {names.in_table_schema(names.old)}")
