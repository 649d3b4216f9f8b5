"""Fingerprints: comparable snapshots of a database's schema and data (public in brainmigrate.testing)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import attrs

from .._model.types import Connection, Pool

#: The order kinds of objects are listed in, in dumps and diffs.
_KINDS = (
    "extension",
    "schema",
    "type",
    "enum type",
    "domain",
    "composite type",
    "range type",
    "sequence",
    "table",
    "column",
    "constraint",
    "index",
    "view",
    "materialized view",
    "function",
    "trigger",
    "data",
)
_RANK = {kind: rank for rank, kind in enumerate(_KINDS)}

Entry = tuple[str, str, str]


def _sorted_entries(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    return tuple(sorted(entries, key=lambda e: (_RANK.get(e[0], len(_KINDS)), e[1], e[2])))


def _render(sign: str, entry: Entry) -> str:
    kind, name, detail = entry
    detail = " ".join(detail.split())
    return f"{sign} {kind} {name}: {detail}" if detail else f"{sign} {kind} {name}"


@attrs.frozen
class Fingerprint:
    """A comparable snapshot of a database's schema and data.

    Each entry is ``(kind, name, detail)``: for instance ``("index", "public.idx_user",
    "CREATE INDEX ...")`` or ``("data", "public.users", "3 rows, md5 ...")``. Two fingerprints are
    equal when the databases hold the same objects with the same definitions and the same rows.
    """

    entries: tuple[Entry, ...] = attrs.field(converter=_sorted_entries)

    def lines(self) -> list[str]:
        """Every entry, one readable line each."""
        return [_render("", entry).lstrip() for entry in self.entries]

    def diff(self, other: Fingerprint) -> list[str]:
        """What changes from this fingerprint to ``other``, one line per object; empty when equal.

        ``+`` lines are in ``other`` only, ``-`` lines in this fingerprint only; an object whose
        definition changed gives a ``-`` line (before) followed by a ``+`` line (after).
        """
        mine = {(kind, name): detail for kind, name, detail in self.entries}
        theirs = {(kind, name): detail for kind, name, detail in other.entries}
        keys = sorted(mine.keys() | theirs.keys(), key=lambda k: (_RANK.get(k[0], len(_KINDS)), k[1]))
        lines: list[str] = []
        for key in keys:
            before, after = mine.get(key), theirs.get(key)
            if before == after:
                continue
            if before is not None:
                lines.append(_render("-", (*key, before)))
            if after is not None:
                lines.append(_render("+", (*key, after)))
        return lines


#: Keeps user schemas: ``pg_*`` covers pg_catalog, pg_toast and temporary schemas; $1 lists the excluded.
_N = "(n.nspname <> ALL($1::text[]) AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema')"


def _not_from_extension(catalog: str, oid: str) -> str:
    """Objects an extension created come and go with the extension, which is listed itself."""
    return (
        "NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = "
        f"'{catalog}'::regclass AND dep.objid = {oid} AND dep.deptype = 'e')"
    )


_QUERIES: dict[str, str] = {
    "extension": """
SELECT e.extname AS name, 'version ' || e.extversion || ' in schema ' || n.nspname AS detail
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE n.nspname <> ALL($1::text[])
""",
    "schema": f"""
SELECT quote_ident(n.nspname) AS name, '' AS detail
  FROM pg_namespace n
 WHERE {_N} AND {_not_from_extension("pg_namespace", "n.oid")}
""",
    "type": f"""
SELECT CASE t.typtype WHEN 'e' THEN 'enum type' WHEN 'd' THEN 'domain' WHEN 'c' THEN 'composite type'
                      WHEN 'r' THEN 'range type' ELSE 'type' END AS kind,
       quote_ident(n.nspname) || '.' || quote_ident(t.typname) AS name,
       CASE t.typtype
         WHEN 'e' THEN array_to_string(ARRAY(
             SELECT quote_literal(e.enumlabel) FROM pg_enum e
              WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), ', ')
         WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
             || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
             || coalesce(' default ' || t.typdefault, '')
         WHEN 'c' THEN '(' || array_to_string(ARRAY(
             SELECT quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum), ', ') || ')'
         WHEN 'r' THEN 'range of ' || (SELECT format_type(r.rngsubtype, NULL)
                                         FROM pg_range r WHERE r.rngtypid = t.oid)
         ELSE t.typtype::text
       END AS detail
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE {_N} AND {_not_from_extension("pg_type", "t.oid")}
   AND t.typtype <> 'm'
   AND NOT EXISTS (SELECT 1 FROM pg_type elem WHERE elem.typarray = t.oid)
   AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
""",
    "sequence": f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
       format_type(s.seqtypid, NULL) || ' start ' || s.seqstart || ' increment ' || s.seqincrement
         || ' min ' || s.seqmin || ' max ' || s.seqmax || ' cache ' || s.seqcache
         || CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END AS detail
  FROM pg_sequence s
  JOIN pg_class c ON c.oid = s.seqrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {_N} AND {_not_from_extension("pg_class", "c.oid")}
""",
    "table": f"""
SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END AS kind,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
       CASE c.relkind
         WHEN 'v' THEN pg_get_viewdef(c.oid, true)
         WHEN 'm' THEN pg_get_viewdef(c.oid, true)
         ELSE concat_ws(' ',
                        CASE c.relkind WHEN 'p' THEN 'partitioned' WHEN 'f' THEN 'foreign' END,
                        CASE c.relpersistence WHEN 'u' THEN 'unlogged' END,
                        CASE WHEN c.relrowsecurity THEN 'row level security' END,
                        'partition ' || pg_get_expr(c.relpartbound, c.oid))
       END AS detail
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {_N} AND {_not_from_extension("pg_class", "c.oid")}
""",
    "column": f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(a.attname) AS name,
       format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
         || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                               WHEN 'd' THEN ' generated by default as identity' ELSE '' END
         || CASE WHEN a.attgenerated <> '' THEN
                   coalesce(' generated always as (' || pg_get_expr(d.adbin, d.adrelid) || ')', '')
                 ELSE coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') END
         || ', position '
         || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS detail
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped
   AND c.relkind IN ('r', 'p', 'f')
   AND {_N} AND {_not_from_extension("pg_class", "c.oid")}
""",
    "constraint": f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(coalesce(c.relname, t.typname))
         || '.' || quote_ident(con.conname) AS name,
       pg_get_constraintdef(con.oid) AS detail
  FROM pg_constraint con
  JOIN pg_namespace n ON n.oid = con.connamespace
  LEFT JOIN pg_class c ON c.oid = con.conrelid
  LEFT JOIN pg_type t ON t.oid = con.contypid
 WHERE {_N}
   AND {_not_from_extension("pg_class", "con.conrelid")}
   AND {_not_from_extension("pg_type", "con.contypid")}
""",
    "index": f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
       pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END AS detail
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {_N} AND {_not_from_extension("pg_class", "i.indrelid")}
""",
    "function": f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname)
         || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name,
       CASE WHEN p.prokind = 'a' THEN 'aggregate returning ' || pg_get_function_result(p.oid)
            ELSE pg_get_functiondef(p.oid) END AS detail
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE {_N} AND {_not_from_extension("pg_proc", "p.oid")}
""",
    "trigger": f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(tg.tgname) AS name,
       pg_get_triggerdef(tg.oid)
         || CASE tg.tgenabled WHEN 'D' THEN ' (disabled)' WHEN 'R' THEN ' (replica)'
                              WHEN 'A' THEN ' (always)' ELSE '' END AS detail
  FROM pg_trigger tg
  JOIN pg_class c ON c.oid = tg.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT tg.tgisinternal AND {_N}
""",
}

_DATA_TABLES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND {_N} AND {_not_from_extension("pg_class", "c.oid")}
 ORDER BY 1
"""


def _data_query(tables: Sequence[str]) -> str:
    """Row count and an order-independent md5 of every row, per table, in one statement.

    Each row is hashed as its text form and the hashes are sorted, so the result does not depend
    on the physical order of rows or on collations.
    """
    parts = [
        f"SELECT ${number}::text AS name, count(*) AS rows, "
        "md5(coalesce(string_agg(md5(ROW(r.*)::text), '' ORDER BY md5(ROW(r.*)::text) COLLATE \"C\"), '')) "
        "AS digest "
        f"FROM {table} AS r"
        for number, table in enumerate(tables, start=1)
    ]
    return "\nUNION ALL\n".join(parts)


async def fingerprint(conn: Connection, *, exclude_schemas: Sequence[str] = ("brainmigrate",)) -> Fingerprint:
    """Fingerprint the schema and data of the database behind ``conn``.

    Covers schemas, extensions, types (enums with their labels, domains, composite and range
    types), sequences (their definitions, not their current values), tables, columns (type,
    nullability, default, position), constraints, indexes, views, functions and triggers, and per
    table its row count and an md5 over its rows. System schemas, ``exclude_schemas`` (by default
    brainmigrate's history) and objects belonging to extensions are left out. Runs in one
    read-only repeatable-read transaction unless ``conn`` is already in a transaction.
    """
    if conn.is_in_transaction():
        return await _fingerprint(conn, list(exclude_schemas))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _fingerprint(conn, list(exclude_schemas))


async def _fingerprint(conn: Connection, exclude: list[str]) -> Fingerprint:
    entries: list[Entry] = []
    for kind, query in _QUERIES.items():
        for row in await conn.fetch(query, exclude):
            entries.append((row.get("kind", kind), row["name"], row["detail"] or ""))
    tables = [row["name"] for row in await conn.fetch(_DATA_TABLES, exclude)]
    filled = await _tables_with_rows(conn, tables)
    entries.extend(("data", table, f"0 rows, md5 {_EMPTY_DIGEST}") for table in tables if table not in filled)
    if filled:
        for row in await conn.fetch(_data_query(filled), *filled):
            count = row["rows"]
            entries.append(
                ("data", row["name"], f"{count} row{'' if count == 1 else 's'}, md5 {row['digest']}")
            )
    return Fingerprint(entries)


#: The digest :func:`_data_query` gives an empty table: the md5 of the empty string.
_EMPTY_DIGEST = hashlib.md5(b"", usedforsecurity=False).hexdigest()
#: Tables asked about per statement, below PostgreSQL's limit of 1,664 columns in a result.
_EXISTS_CHUNK = 1000


async def _tables_with_rows(conn: Connection, tables: Sequence[str]) -> list[str]:
    """The tables holding at least one row, asked with one cheap ``EXISTS`` each (``tables`` are
    quoted names from the catalog): the digest query, costly to plan and run over many tables, then
    reads only those."""
    filled: list[str] = []
    for start in range(0, len(tables), _EXISTS_CHUNK):
        chunk = tables[start : start + _EXISTS_CHUNK]
        row = await conn.fetchrow("SELECT " + ", ".join(f"EXISTS (SELECT FROM {table})" for table in chunk))
        flags = tuple(row.values()) if row is not None else ()
        filled.extend(table for table, has_rows in zip(chunk, flags, strict=False) if has_rows)
    return filled


async def snapshot(pool: Pool, schema: str) -> Fingerprint:
    """The fingerprint of the database behind ``pool``, leaving out the history ``schema``."""
    async with pool.acquire() as conn:
        return await fingerprint(conn, exclude_schemas=(schema,))
