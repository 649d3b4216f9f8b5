"""What a table holds and what refers to it, each as a copy of it would declare it again: columns,
indexes, constraints, sequences; the views reading it, other tables' foreign keys, the
publications listing it."""

from __future__ import annotations

import attrs

from ..._model.sqltext import quote_ident


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
