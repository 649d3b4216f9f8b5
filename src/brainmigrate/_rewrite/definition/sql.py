"""The catalog queries reading a table's definition (each run with a search path of
``pg_catalog`` alone)."""

from __future__ import annotations

#: The column options ``ALTER COLUMN ... SET (...)`` takes (others are the server's own).
COLUMN_OPTIONS = frozenset({"n_distinct", "n_distinct_inherited"})

TABLE = """
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

COLUMNS = """
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
INDEXES = """
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

CONSTRAINTS = """
SELECT k.conname AS name, k.contype::text AS type, pg_get_constraintdef(k.oid) AS definition,
       k.convalidated AS validated, obj_description(k.oid, 'pg_constraint') AS comment,
       {enforced} AS enforced
  FROM pg_constraint k
 WHERE k.conrelid = $1 AND k.contype IN ('c', 'f')
 ORDER BY k.contype, k.conname
"""

SEQUENCES = """
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

HAZARDS = """
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
INBOUND = """
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
VIEWS = """
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
PUBLICATION_MEMBERS = """
SELECT p.pubname AS publication, pg_has_role(p.pubowner, 'USAGE') AS owned, {extra}
  FROM pg_publication_rel pr
  JOIN pg_publication p ON p.oid = pr.prpubid
 WHERE pr.prrelid = $1
 ORDER BY p.pubname
"""
PUBLISHED_SINCE_15 = """
       CASE WHEN pr.prattrs IS NOT NULL THEN
         ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY AS x(attnum, i)
                 JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = x.attnum ORDER BY x.i)
       END AS columns,
       pg_get_expr(pr.prqual, pr.prrelid) AS row_filter"""
PUBLISHED_BEFORE_15 = "NULL::text[] AS columns, NULL::text AS row_filter"
