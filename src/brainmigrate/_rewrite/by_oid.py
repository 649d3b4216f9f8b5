"""What refers to a table by its OID rather than by its name, and the swap would leave on the old
table: after the rename, such an object keeps pointing at the original, now under another name.

The swap moves, or a refusal already names, everything else that depends on the table: its own
indexes, constraints, defaults, owned sequences, TOAST table, row type, triggers, policies and
rules, other tables' foreign keys, the views and materialized views reading it, and the
publications listing it. What is left is read here, described by ``pg_describe_object`` (with
the search path of :func:`.definition.read_definition`, every name in it schema-qualified).
"""

from __future__ import annotations

import attrs

from .._model.types import Connection


@attrs.frozen
class OidReferrers:
    """The objects that would keep referring to the old table after the swap, each described."""

    #: Functions and procedures whose SQL-standard bodies (``BEGIN ATOMIC``, ``RETURN``;
    #: PostgreSQL 14 and later) read or write the table.
    routines: tuple[str, ...] = attrs.field(converter=tuple)
    #: What is of the table's row type or of its array: other tables' columns, composite types'
    #: attributes, domains, arguments and results of routines, views not reading the table.
    row_type_uses: tuple[str, ...] = attrs.field(converter=tuple)
    #: Extended statistics on the table (``CREATE STATISTICS``), which the shadow does not have.
    statistics: tuple[str, ...] = attrs.field(converter=tuple)
    #: Anything else depending on the table: another table's policy or constraint trigger, ...
    others: tuple[str, ...] = attrs.field(converter=tuple)


#: ``$1`` the table. Everything in ``pg_depend`` referring to the table, or to its row type or
#: that type's array, less what the swap moves (or another refusal names).
_REFERRERS = """
WITH own AS (
  SELECT c.oid, c.reltype, t.typarray, c.reltoastrelid
    FROM pg_class c JOIN pg_type t ON t.oid = c.reltype
   WHERE c.oid = $1
), referrer AS (
  SELECT DISTINCT d.classid, d.objid, d.deptype
    FROM pg_depend d
   WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1
), readers AS (
  SELECT r.oid FROM pg_rewrite r
   WHERE r.oid IN (SELECT objid FROM referrer WHERE classid = 'pg_rewrite'::regclass)
), typed AS (
  SELECT DISTINCT d.classid, d.objid, d.objsubid
    FROM pg_depend d, own
   WHERE d.refclassid = 'pg_type'::regclass AND d.refobjid IN (own.reltype, own.typarray)
     AND NOT (d.classid = 'pg_type'::regclass AND d.objid = own.typarray)
     AND NOT (d.classid = 'pg_rewrite'::regclass AND d.objid IN (SELECT oid FROM readers))
     AND NOT (d.classid = 'pg_attrdef'::regclass
              AND d.objid IN (SELECT a.oid FROM pg_attrdef a WHERE a.adrelid = $1))
     AND NOT (d.classid = 'pg_constraint'::regclass
              AND d.objid IN (SELECT k.oid FROM pg_constraint k WHERE k.conrelid = $1))
)
SELECT
  ARRAY(SELECT pg_describe_object(r.classid, r.objid, 0) FROM referrer r
         WHERE r.classid = 'pg_proc'::regclass ORDER BY 1) AS routines,
  ARRAY(SELECT pg_describe_object(t.classid, t.objid, t.objsubid) FROM typed t ORDER BY 1)
    AS row_type_uses,
  ARRAY(SELECT pg_describe_object(r.classid, r.objid, 0) FROM referrer r
         WHERE r.classid = 'pg_statistic_ext'::regclass ORDER BY 1) AS statistics,
  ARRAY(SELECT DISTINCT pg_describe_object(r.classid, r.objid, 0) FROM referrer r, own
         WHERE r.classid NOT IN ('pg_proc'::regclass, 'pg_statistic_ext'::regclass,
                                 'pg_rewrite'::regclass, 'pg_publication_rel'::regclass)
           AND NOT (r.classid = 'pg_class'::regclass AND (
                    r.objid = own.reltoastrelid
                    OR r.objid IN (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = $1)
                    OR (r.deptype IN ('a', 'i')
                        AND r.objid IN (SELECT s.oid FROM pg_class s WHERE s.relkind = 'S'))))
           AND NOT (r.classid = 'pg_type'::regclass AND r.objid = own.reltype)
           AND NOT (r.classid = 'pg_constraint'::regclass AND r.objid IN (
                    SELECT k.oid FROM pg_constraint k WHERE k.conrelid = $1 OR k.confrelid = $1))
           AND NOT (r.classid = 'pg_attrdef'::regclass AND r.objid IN (
                    SELECT a.oid FROM pg_attrdef a WHERE a.adrelid = $1))
           AND NOT (r.classid = 'pg_trigger'::regclass AND r.objid IN (
                    SELECT g.oid FROM pg_trigger g WHERE g.tgrelid = $1))
           AND NOT (r.classid = 'pg_policy'::regclass AND r.objid IN (
                    SELECT p.oid FROM pg_policy p WHERE p.polrelid = $1))
         ORDER BY 1) AS others
"""


async def read_oid_referrers(conn: Connection, oid: int) -> OidReferrers:
    """What would keep referring to the table of ``oid`` after the swap (read in the caller's
    transaction, with its search path)."""
    row = await conn.fetchrow(_REFERRERS, oid)
    assert row is not None  # one row of arrays, always
    return OidReferrers(**dict(row))
