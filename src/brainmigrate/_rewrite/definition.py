"""What the catalog says about a table to be rewritten: everything a faithful copy of it needs
(columns, indexes, constraints, sequences, grants, comments, options), and everything that would
make rewriting it unsafe (:mod:`.refusals` says why).

Expressions and definitions are read with an empty search path, so that every name in them is
schema-qualified and they mean the same on any connection.
"""

from __future__ import annotations

import attrs

from .._errors import MigrationValidationError
from .._model.sqltext import quote_ident
from .._model.types import Connection
from .by_oid import OidReferrers, read_oid_referrers
from .names import RewriteNames


@attrs.frozen
class ColumnDefinition:
    """One column, as ``CREATE TABLE`` would declare it again."""

    name: str
    attnum: int
    #: ``format_type`` of its type, schema-qualified when not built in.
    type: str
    not_null: bool
    #: The name of its NOT NULL constraint, where the server names them (PostgreSQL 18).
    not_null_name: str | None
    #: Its default expression (None: none, or a generated column).
    default: str | None
    #: ``a`` (GENERATED ALWAYS AS IDENTITY), ``d`` (BY DEFAULT) or ``""``.
    identity: str
    #: ``s`` (stored), ``v`` (virtual) or ``""``.
    generated: str
    generation_expression: str | None
    #: Its collation, quoted and qualified, when it is not its type's default.
    collation: str | None
    #: Its storage (``p``, ``e``, ``m``, ``x``) when it is not its type's default.
    storage: str | None
    #: ``p`` (pglz) or ``l`` (lz4) when set, else ``""``.
    compression: str
    #: ``SET STATISTICS`` target, or None for the default.
    statistics: int | None
    #: Column options (``n_distinct=...``) as ``key=value`` texts.
    options: tuple[str, ...] = attrs.field(converter=tuple)
    comment: str | None
    #: Its column privileges as ``aclitem`` texts (empty: none).
    acl: tuple[str, ...] = attrs.field(converter=tuple)

    @property
    def copied(self) -> bool:
        """Whether a row copy writes it (generated columns are computed by the server)."""
        return not self.generated


@attrs.frozen
class IndexDefinition:
    """One index of the table, and the constraint it backs (if any)."""

    name: str
    oid: int
    #: ``pg_get_indexdef``: the statement that created it.
    definition: str
    #: What follows ``USING`` in ``definition``: the method, columns, options and predicate, which
    #: name neither the index nor the table (None: ``definition`` does not read as expected, as
    #: for a partitioned or temporary table's index).
    using: str | None
    method: str
    unique: bool
    primary: bool
    valid: bool
    #: The constraint it backs: its name, type (``p``, ``u``, ``x``) and ``pg_get_constraintdef``.
    constraint_name: str | None
    constraint_type: str | None
    constraint_definition: str | None
    comment: str | None
    constraint_comment: str | None
    #: Whether it is the key's unique index (primary key, or the unique index on the key).
    is_key: bool


@attrs.frozen
class ConstraintDefinition:
    """A constraint not backed by an index: a CHECK (``c``) or an outbound foreign key (``f``)."""

    name: str
    type: str
    #: ``pg_get_constraintdef``, which ends with ``NOT VALID`` when it is not validated.
    definition: str
    validated: bool
    comment: str | None
    #: False for a ``NOT ENFORCED`` constraint (PostgreSQL 18), which is never validated.
    enforced: bool = True


@attrs.frozen
class SequenceDefinition:
    """A sequence owned by one of the table's columns: a serial's, or an identity's."""

    schema: str
    name: str
    column: str
    identity: bool
    #: Its parameters, to give an identity column of the shadow the same.
    start: int
    increment: int
    minimum: int
    maximum: int
    cache: int
    cycle: bool

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


@attrs.frozen
class ViewDefinition:
    """A view reading the table directly, as ``CREATE OR REPLACE VIEW`` would define it again."""

    schema: str
    name: str
    #: ``pg_get_viewdef``, every name in it schema-qualified.
    definition: str
    #: ``pg_class.reloptions`` (``security_barrier``, ``security_invoker``, ``check_option``).
    options: tuple[str, ...] = attrs.field(converter=tuple)
    #: Whether the current role owns it (may replace its definition).
    owned: bool

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


@attrs.frozen
class InboundForeignKey:
    """A foreign key of another table referencing this one."""

    schema: str
    table: str
    name: str
    #: ``pg_get_constraintdef``, which ends with ``NOT VALID`` when it is not validated.
    definition: str
    validated: bool
    #: False for a ``NOT ENFORCED`` constraint (PostgreSQL 18), which is never validated.
    enforced: bool
    comment: str | None
    #: Whether the current role owns its table (may drop and add the constraint).
    owned: bool
    #: Whether its table is partitioned or a partition (the constraint is the partitioned table's).
    partitioned: bool

    @property
    def qualified_table(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    @property
    def label(self) -> str:
        return f"{self.name} on {self.schema}.{self.table}"


@attrs.frozen
class PublicationMember:
    """A publication listing the table by name (``FOR TABLE``), with what it publishes of it."""

    publication: str
    #: The published columns (None: all of them; PostgreSQL 15 and later).
    columns: tuple[str, ...] | None = attrs.field(converter=attrs.converters.optional(tuple))
    #: The row filter (PostgreSQL 15 and later), schema-qualified.
    row_filter: str | None
    #: Whether the current role owns the publication (may add and drop tables).
    owned: bool

    def listing(self, table: str) -> str:
        """``table`` (quoted, qualified) as ``ALTER PUBLICATION ... ADD TABLE`` lists it here."""
        columns = f" ({', '.join(quote_ident(c) for c in self.columns)})" if self.columns else ""
        where = f" WHERE ({self.row_filter})" if self.row_filter is not None else ""
        return f"{table}{columns}{where}"


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


#: The column options ``ALTER COLUMN ... SET (...)`` takes (others are the server's own).
_COLUMN_OPTIONS = frozenset({"n_distinct", "n_distinct_inherited"})

_TABLE = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relpersistence::text, c.relispartition,
       c.reloftype <> 0 AS typed, am.amname, pg_get_userbyid(c.relowner) AS owner,
       c.relacl::text[] AS acl, obj_description(c.oid, 'pg_class') AS comment,
       coalesce(c.reloptions, '{}') ||
         coalesce((SELECT array_agg('toast.' || o) FROM pg_class t, unnest(t.reloptions) o
                    WHERE t.oid = c.reltoastrelid), '{}') AS options,
       c.relreplident::text, c.relrowsecurity,
       (SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         WHERE x.indrelid = c.oid AND x.indisreplident) AS replica_index
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_am am ON am.oid = c.relam
 WHERE c.oid = $1
"""

_COLUMNS = """
SELECT a.attname AS name, a.attnum, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null,
       (SELECT k.conname FROM pg_constraint k
         WHERE k.conrelid = a.attrelid AND k.contype::text = 'n' AND k.conkey = ARRAY[a.attnum])
         AS not_null_name,
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS default,
       a.attidentity::text AS identity, a.attgenerated::text AS generated,
       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END
         AS generation_expression,
       CASE WHEN a.attcollation <> t.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation,
       CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END AS storage,
       coalesce(a.attcompression::text, '') AS compression,
       nullif(coalesce(a.attstattarget::int, -1), -1) AS statistics,
       ARRAY(SELECT o FROM unnest(a.attoptions) o WHERE split_part(o, '=', 1) = ANY($2::text[]))
         AS options,
       col_description(a.attrelid, a.attnum) AS comment,
       coalesce(a.attacl::text[], '{}') AS acl
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

#: Each index, with what ``pg_get_indexdef`` must start with (the part naming the index and the
#: table), the constraint it backs, and whether it is a unique index on the key column alone.
_INDEXES = """
SELECT i.relname AS name, i.oid, pg_get_indexdef(i.oid) AS definition,
       CASE WHEN starts_with(pg_get_indexdef(i.oid), p.prefix)
            THEN substr(pg_get_indexdef(i.oid), length(p.prefix) + 1) END AS using,
       am.amname AS method, x.indisunique AS unique, x.indisprimary AS primary,
       x.indisvalid AS valid, k.conname AS constraint_name, k.contype::text AS constraint_type,
       pg_get_constraintdef(k.oid) AS constraint_definition,
       obj_description(i.oid, 'pg_class') AS comment,
       obj_description(k.oid, 'pg_constraint') AS constraint_comment,
       coalesce(x.indisunique AND x.indisvalid AND x.indimmediate AND x.indpred IS NULL
                AND x.indexprs IS NULL AND x.indnkeyatts = 1 AND x.indkey[0] = $2, false) AS is_key
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class c ON c.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_am am ON am.oid = i.relam
  LEFT JOIN pg_constraint k ON k.conindid = i.oid AND k.conrelid = c.oid AND k.contype IN ('p', 'u', 'x')
 CROSS JOIN LATERAL (
       SELECT 'CREATE ' || CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' ||
              quote_ident(i.relname) || ' ON ' || quote_ident(n.nspname) || '.' ||
              quote_ident(c.relname) || ' USING ' AS prefix) p
 WHERE x.indrelid = $1
 ORDER BY x.indisprimary DESC, i.relname
"""

_CONSTRAINTS = """
SELECT k.conname AS name, k.contype::text AS type, pg_get_constraintdef(k.oid) AS definition,
       k.convalidated AS validated, obj_description(k.oid, 'pg_constraint') AS comment,
       {enforced} AS enforced
  FROM pg_constraint k
 WHERE k.conrelid = $1 AND k.contype IN ('c', 'f')
 ORDER BY k.contype, k.conname
"""

_SEQUENCES = """
SELECT sn.nspname AS schema, s.relname AS name, a.attname AS column, d.deptype = 'i' AS identity,
       q.seqstart AS start, q.seqincrement AS increment, q.seqmin AS minimum, q.seqmax AS maximum,
       q.seqcache AS cache, q.seqcycle AS cycle
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
 ORDER BY a.attnum, s.relname
"""

_HAZARDS = """
SELECT
  ARRAY(SELECT p.oid::regclass::text FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent
         WHERE h.inhrelid = $1 ORDER BY 1) AS parents,
  ARRAY(SELECT h.inhrelid::regclass::text FROM pg_inherits h WHERE h.inhparent = $1 ORDER BY 1)
    AS children,
  ARRAY(WITH RECURSIVE reader(oid, relkind) AS (
           SELECT v.oid, v.relkind FROM pg_class v WHERE v.oid = $1
           UNION
           SELECT v.oid, v.relkind FROM reader w
             JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = w.oid
                             AND d.classid = 'pg_rewrite'::regclass
             JOIN pg_rewrite r ON r.oid = d.objid
             JOIN pg_class v ON v.oid = r.ev_class
            WHERE (w.oid = $1 OR w.relkind = 'v') AND r.ev_class <> w.oid)
         SELECT oid::regclass::text FROM reader WHERE relkind = 'm' ORDER BY 1) AS materialized,
  ARRAY(SELECT DISTINCT r.rulename || ' on ' || v.oid::regclass::text
          FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid = $1 AND r.ev_class <> $1 AND v.relkind NOT IN ('v', 'm') ORDER BY 1)
    AS other_rules,
  ARRAY(SELECT r.rulename::text FROM pg_rewrite r WHERE r.ev_class = $1 ORDER BY 1) AS rules,
  ARRAY(SELECT t.tgname::text FROM pg_trigger t
         WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname <> $2 ORDER BY 1) AS triggers,
  ARRAY(SELECT p.polname::text FROM pg_policy p WHERE p.polrelid = $1 ORDER BY 1) AS policies,
  ARRAY(SELECT DISTINCT p.pubname::text FROM pg_publication_tables p
         WHERE p.schemaname = $3 AND p.tablename = $4 ORDER BY 1) AS publications,
  ARRAY(SELECT s.slot_name::text FROM pg_replication_slots s
         WHERE s.slot_type = 'logical' AND s.database = current_database() ORDER BY 1) AS slots
"""


#: Other tables' foreign keys referencing the table (``conenforced`` from PostgreSQL 18).
_INBOUND = """
SELECT n.nspname AS schema, c.relname AS table, k.conname AS name,
       pg_get_constraintdef(k.oid) AS definition, k.convalidated AS validated, {enforced} AS enforced,
       obj_description(k.oid, 'pg_constraint') AS comment,
       pg_has_role(c.relowner, 'USAGE') AS owned,
       (c.relkind = 'p' OR c.relispartition OR k.conparentid <> 0) AS partitioned
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE k.contype = 'f' AND k.confrelid = $1 AND k.conrelid <> $1
 ORDER BY n.nspname, c.relname, k.conname
"""

#: The views whose query reads the table itself.
_VIEWS = """
SELECT n.nspname AS schema, v.relname AS name, pg_get_viewdef(v.oid) AS definition,
       coalesce(v.reloptions, '{}') AS options, pg_has_role(v.relowner, 'USAGE') AS owned
  FROM pg_class v
  JOIN pg_namespace n ON n.oid = v.relnamespace
 WHERE v.relkind = 'v' AND v.oid IN (
       SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = $1 AND r.ev_class <> $1)
 ORDER BY n.nspname, v.relname
"""

#: The publications listing the table by name; column lists and row filters from PostgreSQL 15.
_PUBLICATION_MEMBERS = """
SELECT p.pubname AS publication, pg_has_role(p.pubowner, 'USAGE') AS owned, {extra}
  FROM pg_publication_rel pr
  JOIN pg_publication p ON p.oid = pr.prpubid
 WHERE pr.prrelid = $1
 ORDER BY p.pubname
"""
_PUBLISHED_SINCE_15 = """
       CASE WHEN pr.prattrs IS NOT NULL THEN
         ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY AS x(attnum, i)
                 JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = x.attnum ORDER BY x.i)
       END AS columns,
       pg_get_expr(pr.prqual, pr.prrelid) AS row_filter"""
_PUBLISHED_BEFORE_15 = "NULL::text[] AS columns, NULL::text AS row_filter"


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
    row = await conn.fetchrow(_TABLE, oid)
    assert row is not None  # found by to_regclass in this transaction
    schema, table = row["nspname"], row["relname"]
    columns = tuple(
        ColumnDefinition(**dict(r)) for r in await conn.fetch(_COLUMNS, oid, sorted(_COLUMN_OPTIONS))
    )
    key_column = next((column for column in columns if column.name == key), None)
    indexes = [
        IndexDefinition(**dict(r))
        for r in await conn.fetch(_INDEXES, oid, key_column.attnum if key_column else 0)
    ]
    # The key's index first (the primary key when it is one; rows come primary key first).
    key_index = next((index for index in indexes if index.is_key), None)
    others = [attrs.evolve(index, is_key=False) for index in indexes if index is not key_index]
    ordered = ([key_index] if key_index else []) + others
    version = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    enforced = "k.conenforced" if version >= 180000 else "true"
    constraints = tuple(
        ConstraintDefinition(**dict(r)) for r in await conn.fetch(_CONSTRAINTS.format(enforced=enforced), oid)
    )
    sequences = tuple(SequenceDefinition(**dict(r)) for r in await conn.fetch(_SEQUENCES, oid))
    inbound = tuple(
        InboundForeignKey(**dict(r)) for r in await conn.fetch(_INBOUND.format(enforced=enforced), oid)
    )
    views = tuple(ViewDefinition(**dict(r)) for r in await conn.fetch(_VIEWS, oid))
    published = _PUBLISHED_SINCE_15 if version >= 150000 else _PUBLISHED_BEFORE_15
    members = tuple(
        PublicationMember(**dict(r))
        for r in await conn.fetch(_PUBLICATION_MEMBERS.format(extra=published), oid)
    )
    capture = RewriteNames(migration_id, schema, table, "").capture_trigger
    hazards = await conn.fetchrow(_HAZARDS, oid, capture, schema, table)
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
