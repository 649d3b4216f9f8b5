"""The catalog queries of the table surgery, and the rendering of a relation's options."""

from __future__ import annotations

from collections.abc import Iterable

from ..._model.sqltext import quote_ident, quote_literal
from ..._model.types import Connection

RELATION = """
SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2
"""
INDEX_STATE = """
SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = $1 AND i.relname = $2
"""
HAS_CONSTRAINT = "SELECT convalidated FROM pg_constraint WHERE conrelid = $1 AND conname = $2"
#: The foreign keys of the table and of other tables referencing it, enforced and not validated.
NOT_VALID_KEYS = """
SELECT k.conrelid::regclass::text AS "table", k.conname, k.conrelid = $1 AS own
  FROM pg_constraint k
 WHERE k.contype = 'f' AND (k.conrelid = $1 OR k.confrelid = $1) AND NOT k.convalidated {enforced}
 ORDER BY 3 DESC, 1, 2
"""
ACL = """
SELECT CASE WHEN e.grantee = 0 THEN NULL ELSE pg_get_userbyid(e.grantee) END AS grantee,
       e.privilege_type, e.is_grantable
  FROM aclexplode($1::text[]::aclitem[]) AS e
 ORDER BY 1 NULLS FIRST, 2
"""
PROGRESS = """
SELECT p.pid, p.phase, CASE WHEN p.index_relid <> 0 THEN p.index_relid::regclass::text END AS index,
       p.command, p.lockers_total, p.lockers_done, p.blocks_total, p.blocks_done,
       p.tuples_total, p.tuples_done
  FROM pg_stat_progress_create_index p
 WHERE p.relid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = $1 AND c.relname = $2)
 ORDER BY p.pid
"""
#: Raise the transaction's maintenance_work_mem to $1 (a size such as '512MB'), never lower it.
BUILD_MEMORY = (
    "SELECT set_config('maintenance_work_mem', "
    "(greatest(pg_size_bytes($1), pg_size_bytes(current_setting('maintenance_work_mem'))) / 1024)::text "
    "|| 'kB', true)"
)


async def relation(conn: Connection, schema: str, name: str) -> int | None:
    oid: int | None = await conn.fetchval(RELATION, schema, name)
    return oid


def option_list(texts: Iterable[str]) -> str:
    """``key=value`` option texts as ``"key"='value'`` (``toast.key`` as ``"toast"."key"``)."""
    parts = []
    for text in texts:
        key, _, value = text.partition("=")
        qualified = ".".join(quote_ident(part) for part in key.split(".", 1))
        parts.append(f"{qualified}={quote_literal(value)}")
    return ", ".join(parts)
