"""The shadow table: created beside the original like it, its indexes built once it is filled (and
their progress read), and dropped when the rewrite is given up or swapped back."""

from __future__ import annotations

from typing import Any

from ..._errors import MigrationStateError, MigrationValidationError
from ..._model.data import DataMigration
from ..._model.sqltext import quote_ident, quote_literal
from ..._model.types import Connection
from ..definition import (
    ColumnDefinition,
    IndexDefinition,
    SequenceDefinition,
    TableDefinition,
    read_definition,
)
from ..names import RewriteNames
from .naming import check_positions, side_name
from .sql import BUILD_MEMORY, INDEX_STATE, PROGRESS, option_list, relation

_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}
_COMPRESSION = {"p": "pglz", "l": "lz4"}
_IDENTITY = {"a": "ALWAYS", "d": "BY DEFAULT"}
_GENERATED = {"s": "STORED", "v": "VIRTUAL"}


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
    new = names.in_table_schema(side_name(names, sequence.name, "new"))
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
    check_positions(defn)
    shadow = names.in_table_schema(names.shadow)
    async with conn.transaction():
        existing = await relation(conn, names.schema, names.shadow)
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
            sql += f" WITH ({option_list(defn.options)})"
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
                await conn.execute(f"{target} SET ({option_list(column.options)})")
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
        name = side_name(names, key.name, "new")
        await conn.execute(_index_sql(key, shadow, name, defn.migration_id))
        await _comment_index(conn, key, names, name)
        await conn.execute(f"ALTER TABLE {shadow} OWNER TO {quote_ident(defn.owner)}")


async def build_indexes(
    conn: Connection,
    defn: TableDefinition,
    names: RewriteNames,
    *,
    maintenance_work_mem: str = DataMigration.rewrite_maintenance_work_mem,
    parallel_workers: int | None = None,
) -> list[str]:
    """Build the secondary indexes and index-backed constraints of ``defn``'s table on the shadow,
    one transaction each, then ANALYZE it; return the names of those built.

    An index already there and valid is kept (a resumed build), an invalid one dropped and built
    again. Each is built with ``maintenance_work_mem`` (the session's setting when larger);
    ``parallel_workers`` sets ``max_parallel_maintenance_workers`` (None: the server's).
    """
    shadow_oid = await relation(conn, names.schema, names.shadow)
    if shadow_oid is None:
        raise MigrationStateError(
            f"rewrite {defn.migration_id!r}: there is no shadow table {names.schema}.{names.shadow} to "
            "build indexes on (create it first)",
            migration_id=defn.migration_id,
        )
    shadow = names.in_table_schema(names.shadow)
    built: list[str] = []
    for index in defn.secondary_indexes:
        name = side_name(names, index.name, "new")
        valid = await conn.fetchval(INDEX_STATE, shadow_oid, name)
        if valid:
            continue
        async with conn.transaction():
            if valid is not None:  # an invalid leftover
                await conn.execute(f"DROP INDEX {names.in_table_schema(name)}")
            await conn.execute(BUILD_MEMORY, maintenance_work_mem)
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
    return [dict(row) for row in await conn.fetch(PROGRESS, names.schema, names.shadow)]


async def drop_shadow(conn: Connection, names: RewriteNames) -> None:
    """Drop the shadow (an abandoned or swapped-back rewrite); nothing if it is gone."""
    await conn.execute(f"DROP TABLE IF EXISTS {names.in_table_schema(names.shadow)}")
