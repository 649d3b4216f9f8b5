"""One table as the catalog describes it, for a rewrite: what a faithful copy needs, and what can
make rewriting it unsafe; and its reading from the catalog, with an empty search path."""

from __future__ import annotations

import attrs

from ..._errors import MigrationValidationError
from ..._model.sqltext import quote_ident
from ..._model.types import Connection
from ..by_oid import OidReferrers, read_oid_referrers
from ..names import RewriteNames
from . import sql
from .objects import (
    ColumnDefinition,
    ConstraintDefinition,
    InboundForeignKey,
    IndexDefinition,
    PublicationMember,
    SequenceDefinition,
    ViewDefinition,
)


@attrs.frozen
class TableDefinition:
    """One table as the catalog describes it, for a rewrite of it by ``migration_id``."""

    migration_id: str
    oid: int
    schema: str
    table: str
    key: str
    #: ``p`` (permanent), ``u`` (unlogged) or ``t`` (temporary).
    persistence: str
    access_method: str | None
    owner: str
    acl: tuple[str, ...] | None
    comment: str | None
    #: ``pg_class.reloptions`` and the TOAST table's options (prefixed ``toast.``), ``key=value``.
    options: tuple[str, ...]
    #: ``d`` (default), ``n`` (nothing), ``f`` (full) or ``i`` (index).
    replica_identity: str
    replica_identity_index: str | None
    columns: tuple[ColumnDefinition, ...]
    #: Every index: the key's first (None when the key has none), then the others by name.
    indexes: tuple[IndexDefinition, ...]
    constraints: tuple[ConstraintDefinition, ...]
    sequences: tuple[SequenceDefinition, ...]
    # -- what can make a rewrite unsafe --
    relkind: str
    is_partition: bool
    typed: bool
    inheritance_parents: tuple[str, ...]
    inheritance_children: tuple[str, ...]
    #: Other tables' foreign keys referencing it (moved by the swap).
    inbound_foreign_keys: tuple[InboundForeignKey, ...]
    #: The views reading it directly (moved by the swap; views on them follow).
    dependent_views: tuple[ViewDefinition, ...]
    #: The materialized views reading it, directly or through views.
    materialized_views: tuple[str, ...]
    #: Rules of other tables or views that read or write it, other than a view's own.
    other_rules: tuple[str, ...]
    rules: tuple[str, ...]
    triggers: tuple[str, ...]
    row_security: bool
    policies: tuple[str, ...]
    #: Every publication publishing it, however (FOR ALL TABLES and TABLES IN SCHEMA included).
    publications: tuple[str, ...]
    #: The publications listing it by name (moved by the swap; the others follow its name).
    publication_members: tuple[PublicationMember, ...]
    logical_slots: tuple[str, ...]
    #: What refers to it by OID, and would keep referring to the old table after the swap.
    by_oid: OidReferrers
    key_exists: bool
    key_not_null: bool

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    @property
    def key_index(self) -> IndexDefinition | None:
        return self.indexes[0] if self.indexes and self.indexes[0].is_key else None

    @property
    def secondary_indexes(self) -> tuple[IndexDefinition, ...]:
        """Every index but the key's, with its position in :attr:`indexes`."""
        return tuple(index for index in self.indexes if not index.is_key)

    @property
    def key_type(self) -> str:
        """The key column's type, as ``format_type`` writes it (schema-qualified if not built in)."""
        column = self.column(self.key)
        if column is None:
            raise MigrationValidationError(
                f"migration {self.migration_id!r}: the key column {self.key!r} is not a column of "
                f"{self.schema}.{self.table}",
                migration_id=self.migration_id,
            )
        return column.type

    @property
    def copied_columns(self) -> tuple[str, ...]:
        """The columns a row copy writes (all but generated ones), in table order."""
        return tuple(column.name for column in self.columns if column.copied)

    def column(self, name: str) -> ColumnDefinition | None:
        return next((column for column in self.columns if column.name == name), None)

    def names(self, history_schema: str) -> RewriteNames:
        return RewriteNames(self.migration_id, self.schema, self.table, history_schema)


async def read_definition(
    conn: Connection, *, schema: str | None, table: str, key: str, migration_id: str
) -> TableDefinition:
    """The definition of ``schema.table`` (``schema`` None: the one the search path finds) for a
    rewrite keyed by ``key``; MigrationValidationError when there is no such table."""
    target = f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)
    async with conn.transaction():
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", target)
        if oid is None:
            raise MigrationValidationError(
                f"migration {migration_id!r} rewrites table {target}, which does not exist (check the "
                "table's name and schema, or create it first)",
                migration_id=migration_id,
            )
        search_path = await conn.fetchval("SELECT current_setting('search_path')")
        await conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        try:
            return await _read(conn, oid, key, migration_id)
        finally:
            await conn.execute("SELECT set_config('search_path', $1, true)", search_path)


async def _read(conn: Connection, oid: int, key: str, migration_id: str) -> TableDefinition:
    row = await conn.fetchrow(sql.TABLE, oid)
    assert row is not None  # found by to_regclass in this transaction
    schema, table = row["nspname"], row["relname"]
    columns = tuple(
        ColumnDefinition(**dict(r)) for r in await conn.fetch(sql.COLUMNS, oid, sorted(sql.COLUMN_OPTIONS))
    )
    key_column = next((column for column in columns if column.name == key), None)
    indexes = [
        IndexDefinition(**dict(r))
        for r in await conn.fetch(sql.INDEXES, oid, key_column.attnum if key_column else 0)
    ]
    # The key's index first (the primary key when it is one; rows come primary key first).
    key_index = next((index for index in indexes if index.is_key), None)
    others = [attrs.evolve(index, is_key=False) for index in indexes if index is not key_index]
    ordered = ([key_index] if key_index else []) + others
    version = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    enforced = "k.conenforced" if version >= 180000 else "true"
    constraints = tuple(
        ConstraintDefinition(**dict(r))
        for r in await conn.fetch(sql.CONSTRAINTS.format(enforced=enforced), oid)
    )
    sequences = tuple(SequenceDefinition(**dict(r)) for r in await conn.fetch(sql.SEQUENCES, oid))
    inbound = tuple(
        InboundForeignKey(**dict(r)) for r in await conn.fetch(sql.INBOUND.format(enforced=enforced), oid)
    )
    views = tuple(ViewDefinition(**dict(r)) for r in await conn.fetch(sql.VIEWS, oid))
    published = sql.PUBLISHED_SINCE_15 if version >= 150000 else sql.PUBLISHED_BEFORE_15
    members = tuple(
        PublicationMember(**dict(r))
        for r in await conn.fetch(sql.PUBLICATION_MEMBERS.format(extra=published), oid)
    )
    capture = RewriteNames(migration_id, schema, table, "").capture_trigger
    hazards = await conn.fetchrow(sql.HAZARDS, oid, capture, schema, table)
    assert hazards is not None
    return TableDefinition(
        migration_id=migration_id,
        oid=oid,
        schema=schema,
        table=table,
        key=key,
        persistence=row["relpersistence"],
        access_method=row["amname"],
        owner=row["owner"],
        acl=tuple(row["acl"]) if row["acl"] is not None else None,
        comment=row["comment"],
        options=tuple(row["options"]),
        replica_identity=row["relreplident"],
        replica_identity_index=row["replica_index"],
        columns=columns,
        indexes=tuple(ordered),
        constraints=constraints,
        sequences=sequences,
        relkind=row["relkind"],
        is_partition=row["relispartition"],
        typed=row["typed"],
        inheritance_parents=tuple(hazards["parents"]),
        inheritance_children=tuple(hazards["children"]),
        inbound_foreign_keys=inbound,
        dependent_views=views,
        materialized_views=tuple(hazards["materialized"]),
        other_rules=tuple(hazards["other_rules"]),
        rules=tuple(hazards["rules"]),
        triggers=tuple(hazards["triggers"]),
        row_security=row["relrowsecurity"],
        policies=tuple(hazards["policies"]),
        publications=tuple(hazards["publications"]),
        publication_members=members,
        logical_slots=tuple(hazards["slots"]),
        by_oid=await read_oid_referrers(conn, oid),
        key_exists=key_column is not None,
        key_not_null=key_column is not None and key_column.not_null,
    )
