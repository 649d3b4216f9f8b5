"""What the table that takes the name in a swap (or a swap back) takes over from the one stepping
aside: serial sequences, constraints, owner, grants, comment, replica identity, and what depends on
it (views, other tables' foreign keys, publications)."""

from __future__ import annotations

from collections.abc import Iterable

from ..._errors import MigrationStateError
from ..._model.sqltext import quote_ident, quote_literal
from ..._model.types import Connection
from ..definition import TableDefinition
from ..refusals import dependent_refusals
from .sql import ACL, HAS_CONSTRAINT, option_list

#: The privileges ``aclexplode`` names, which GRANT takes as they are.
_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)
_REPLICA_IDENTITY = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL"}


def check_movable(live: TableDefinition, what: str) -> None:
    """MigrationStateError when what depends on ``live``'s table cannot be moved (it has changed
    since the rewrite began): nothing is renamed."""
    reasons = dependent_refusals(live)
    if reasons:
        raise MigrationStateError(
            f"rewrite {live.migration_id!r}: {what} cannot move what depends on "
            f"{live.schema}.{live.table}: " + " ".join(reasons) + " Nothing was swapped.",
            migration_id=live.migration_id,
        )


async def take_over(
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


async def _add_constraints(
    conn: Connection, live: TableDefinition, table: str, oid: int, *, checks: bool
) -> None:
    """Add ``live``'s foreign keys (and, with ``checks``, its CHECKs not validated) to ``table``
    (relation ``oid``), NOT VALID, with their comments; one it has already is left as it is."""
    for constraint in live.constraints:
        if constraint.type == "c" and (constraint.validated or not checks):
            continue  # created with the shadow, or kept by the old table
        if await conn.fetchval(HAS_CONSTRAINT, oid, constraint.name) is not None:
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


async def _grant(conn: Connection, acl: Iterable[str], target: str, column: str | None = None) -> None:
    columns = f" ({quote_ident(column)})" if column else ""
    for row in await conn.fetch(ACL, list(acl)):
        privilege = row["privilege_type"]
        if privilege not in _PRIVILEGES:  # pragma: no cover - a privilege of a later server
            continue
        grantee = "PUBLIC" if row["grantee"] is None else quote_ident(row["grantee"])
        option = " WITH GRANT OPTION" if row["is_grantable"] else ""
        await conn.execute(f"GRANT {privilege}{columns} ON TABLE {target} TO {grantee}{option}")


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
        options = f" WITH ({option_list(view.options)})" if view.options else ""
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
