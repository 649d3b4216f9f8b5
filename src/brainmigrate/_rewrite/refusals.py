"""Why a table cannot be rewritten safely: one sentence per reason, read off its definition,
and the error that lists them before anything is created."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import MigrationValidationError
from .._model.types import Connection
from .definition import TableDefinition, read_definition


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names)


def _by_oid_refusals(defn: TableDefinition) -> list[str]:
    """Why what refers to ``defn``'s table by OID would be left on the old table by the swap."""
    table = f"{defn.schema}.{defn.table}"
    found = defn.by_oid
    reasons: list[str] = []
    if found.routines:
        reasons.append(
            f"functions or procedures with SQL-standard bodies read or write {table} "
            f"({_listed(found.routines)}); their bodies refer to the table itself, not its name, and "
            "would go on using the old table after the swap: drop them first, or define them with "
            "a quoted body (AS '...'), and create them again after the rewrite."
        )
    if found.row_type_uses:
        reasons.append(
            f"other objects use the row type of {table} ({_listed(found.row_type_uses)}); that type "
            "stays the old table's after the swap: drop or change them first, and create them "
            "again after the rewrite."
        )
    if found.statistics:
        reasons.append(
            f"{table} has extended statistics ({_listed(found.statistics)}), which the swap does not "
            "carry over: drop them first, and create them again after the rewrite."
        )
    if found.others:
        reasons.append(
            f"other objects depend on {table} itself ({_listed(found.others)}), and would go on "
            "depending on the old table after the swap: drop them first, and create them again "
            "after the rewrite."
        )
    return reasons


def dependent_refusals(defn: TableDefinition) -> list[str]:
    """Why the swap could not move what depends on ``defn``'s table (other tables' foreign keys,
    views, publications), or would leave it on the old table (what refers to it by OID), one
    sentence each; empty when it can."""
    table = f"{defn.schema}.{defn.table}"
    reasons: list[str] = []
    unowned = [k.label for k in defn.inbound_foreign_keys if not k.owned]
    if unowned:
        reasons.append(
            f"foreign keys of tables the current role does not own reference {table} "
            f"({_listed(unowned)}); the swap drops them and adds them again on their tables, which "
            "takes their owner."
        )
    partitioned = [k.label for k in defn.inbound_foreign_keys if k.partitioned]
    if partitioned:
        reasons.append(
            f"foreign keys of partitioned tables or partitions reference {table} ({_listed(partitioned)}); "
            "the swap does not move those (such a key belongs to every partition, and PostgreSQL "
            "before 18 cannot add one NOT VALID)."
        )
    views = [f"{v.schema}.{v.name}" for v in defn.dependent_views if not v.owned]
    if views:
        reasons.append(
            f"views the current role does not own read {table} ({_listed(views)}); the swap replaces "
            "their definitions, which takes their owner."
        )
    if defn.materialized_views:
        reasons.append(
            f"materialized views depend on {table} ({_listed(defn.materialized_views)}); their rows were "
            "computed from the old table: drop them first, and create them again after the rewrite."
        )
    reasons += _by_oid_refusals(defn)
    if defn.other_rules:
        reasons.append(f"rules of other tables read or write {table} ({_listed(defn.other_rules)}).")
    publications = [m.publication for m in defn.publication_members if not m.owned]
    if publications:
        reasons.append(
            f"publications the current role does not own list {table} ({_listed(publications)}); the "
            "swap moves the table in them, which takes their owner."
        )
    return reasons


def refusals(defn: TableDefinition) -> list[str]:
    """Why ``defn``'s table cannot be rewritten safely, one sentence each; empty when it can."""
    table = f"{defn.schema}.{defn.table}"
    reasons: list[str] = []
    if defn.relkind == "p":
        reasons.append(f"{table} is a partitioned table (rewrite its partitions one by one instead).")
    elif defn.relkind != "r":
        reasons.append(f"{table} is not an ordinary table (relkind {defn.relkind!r}).")
    if defn.is_partition:
        reasons.append(f"{table} is a partition of another table, which a swap would detach.")
    if defn.inheritance_parents and not defn.is_partition:
        reasons.append(f"{table} inherits from {_listed(defn.inheritance_parents)}.")
    if defn.inheritance_children:
        reasons.append(f"{table} has inheriting tables or partitions: {_listed(defn.inheritance_children)}.")
    if defn.typed:
        reasons.append(f"{table} is a typed table (CREATE TABLE ... OF type).")
    if defn.persistence == "t":
        reasons.append(f"{table} is a temporary table, which only its own session can see.")
    reasons += dependent_refusals(defn)
    unvalidated = [
        f"{c.name} on {table}" for c in defn.constraints if c.type == "f" and c.enforced and not c.validated
    ] + [k.label for k in defn.inbound_foreign_keys if k.enforced and not k.validated]
    if unvalidated:
        reasons.append(
            f"foreign keys of or to {table} are not validated ({_listed(unvalidated)}); the swap adds "
            "every foreign key it carries over or moves NOT VALID, and validates them all afterwards: "
            "validate them first, or drop them."
        )
    if defn.rules:
        reasons.append(f"{table} has rules ({_listed(defn.rules)}).")
    if defn.triggers:
        reasons.append(
            f"{table} has triggers ({_listed(defn.triggers)}), which the copy would not fire and the "
            "swap would not carry over."
        )
    if defn.row_security or defn.policies:
        policies = f" and policies ({_listed(defn.policies)})" if defn.policies else ""
        reasons.append(f"{table} has row-level security{policies}.")
    if defn.logical_slots:
        reasons.append(
            f"this database has logical replication slots ({_listed(defn.logical_slots)}), whose "
            "subscribers would see the copy's writes as the application's."
        )
    unreadable = [index.name for index in defn.indexes if index.using is None]
    if unreadable and defn.relkind == "r" and defn.persistence != "t":
        reasons.append(f"the definitions of the indexes {_listed(unreadable)} cannot be rebuilt on a copy.")
    if not defn.key_exists:
        reasons.append(f"the key column {defn.key!r} is not a column of {table}.")
    elif not defn.key_not_null or defn.key_index is None:
        reasons.append(
            f"the key column {defn.key!r} is not unique and NOT NULL (it needs a primary key or a "
            "unique index on it alone, and NOT NULL)."
        )
    return reasons


async def check_rewritable(conn: Connection, defn: TableDefinition) -> None:
    """MigrationValidationError listing every reason ``defn``'s table cannot be rewritten, if any:
    those of ``defn``, and those of the table as it is now (read again through ``conn``)."""
    now = await read_definition(
        conn, schema=defn.schema, table=defn.table, key=defn.key, migration_id=defn.migration_id
    )
    reasons = list(dict.fromkeys(refusals(defn) + refusals(now)))
    if reasons:
        raise MigrationValidationError(
            f"migration {defn.migration_id!r} cannot rewrite {defn.schema}.{defn.table}: "
            + " ".join(reasons)
            + " Nothing was created; remove what is listed, or run the migration without "
            "strategy = 'rewrite' (in place).",
            migration_id=defn.migration_id,
        )
