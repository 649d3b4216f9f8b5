"""Unsafe DDL in pending migrations, judged against the tables as they are in the database.

Each rule looks at one action of a statement (see :mod:`.touches`) and at what PostgreSQL says of
its table (``pg_class``: whether it exists and has rows; ``pg_attribute`` and ``pg_constraint``:
its NOT NULL columns and validated CHECKs) and of the functions a default calls (``pg_proc``:
their volatility). A table that does not exist yet (created by a pending migration) is left
alone: rewriting or scanning it costs nothing. A rule that costs a rewrite or a scan is an error on
a table with rows and a warning on an empty one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from .._model.types import Connection
from .report import Finding, FindingCode, Severity
from .statements import Action, ActionKind, Statement, Table
from .tokens import not_null_columns, tokens

#: Volatile functions, for when the database does not know them (an extension not installed yet).
KNOWN_VOLATILE = frozenset(
    {
        "clock_timestamp",
        "gen_random_uuid",
        "nextval",
        "random",
        "timeofday",
        "txid_current",
        "uuid_generate_v1",
        "uuid_generate_v4",
        "uuidv4",
        "uuidv7",
    }
)

_TABLES = """
SELECT t.name,
       c.oid IS NOT NULL,
       coalesce(c.reltuples > 0 OR c.relpages > 0 OR pg_stat_get_live_tuples(c.oid) > 0, false),
       coalesce((SELECT array_agg(a.attname::text) FROM pg_attribute AS a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.attnotnull AND NOT a.attisdropped),
                '{}'),
       coalesce((SELECT array_agg(pg_get_constraintdef(k.oid)) FROM pg_constraint AS k
                  WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.convalidated),
                '{}')
  FROM unnest($1::text[]) AS t(name)
  LEFT JOIN pg_class AS c ON c.oid = to_regclass(t.name)
"""

#: The volatility of each function name (the most volatile of its overloads): i, s or v.
_VOLATILITY = """
SELECT proname::text, max(provolatile::text) FROM pg_proc WHERE proname = ANY($1::text[]) GROUP BY proname
"""


@attrs.frozen
class TableFacts:
    """What the database says of one table."""

    exists: bool
    populated: bool
    not_null: frozenset[str] = frozenset()
    #: Columns a validated CHECK constraint proves NOT NULL.
    checked_not_null: frozenset[str] = frozenset()


async def table_facts(conn: Connection, tables: Iterable[Table]) -> dict[str, TableFacts]:
    """Facts of each table, by its quoted name."""
    names = sorted({name for table in tables if (name := table.regclass) is not None})
    if not names:
        return {}
    facts: dict[str, TableFacts] = {}
    for name, exists, populated, not_null, checks in await conn.fetch(_TABLES, names):
        proven = {column for check in checks for column in not_null_columns(tokens(check))}
        facts[name] = TableFacts(exists, populated, frozenset(not_null), frozenset(proven))
    return facts


async def volatility(conn: Connection, functions: Iterable[str]) -> dict[str, str]:
    """``provolatile`` of each function the database knows (``v`` volatile, ``s`` stable, ``i``)."""
    names = sorted(set(functions))
    if not names:
        return {}
    return {name: kind for name, kind in await conn.fetch(_VOLATILITY, names)}


async def lint(conn: Connection, pending: Sequence[tuple[str, Sequence[Statement]]]) -> list[Finding]:
    """The lint findings of the pending migrations' statements, in run order."""
    actions = [a for _, statements in pending for s in statements for a in s.actions]
    facts = await table_facts(conn, (action.table for action in actions))
    volatile = await volatility(conn, (f for action in actions for f in action.functions))
    rules = _Rules(facts, volatile)
    findings: list[Finding] = []
    for migration_id, statements in pending:
        for statement in statements:
            for action in statement.actions:
                finding = rules.judge(action)
                if finding is not None:
                    severity, code, message = finding
                    findings.append(
                        Finding(
                            code=code,
                            severity=severity,
                            migration_ids=(migration_id,),
                            message=message,
                            statement=statement.text,
                        )
                    )
    return findings


_Verdict = tuple[Severity, FindingCode, str]


class _Rules:
    """The rules, with the constraints earlier pending statements add kept as they go."""

    def __init__(self, facts: dict[str, TableFacts], volatile: dict[str, str]) -> None:
        self.facts = facts
        self.volatile = volatile
        #: CHECK constraints added by earlier statements: (table, name) -> (columns, validated).
        self.checks: dict[tuple[str, str | None], tuple[tuple[str, ...], bool]] = {}

    def judge(self, action: Action) -> _Verdict | None:
        facts = self.facts.get(action.table.regclass or "", TableFacts(False, False))
        key = action.table.key
        if action.kind is ActionKind.ADD_CHECK:
            self.checks[(key, action.constraint)] = (action.not_null_columns, action.valid)
            return None
        if action.kind is ActionKind.VALIDATE_CONSTRAINT:
            columns, _ = self.checks.get((key, action.constraint), ((), False))
            self.checks[(key, action.constraint)] = (columns, True)
            return None
        if not facts.exists:
            return None  # created by a pending migration: empty, so nothing to rewrite or scan
        cost = Severity.ERROR if facts.populated else Severity.WARNING
        rows = "its rows" if facts.populated else "its rows (none yet here, but there will be elsewhere)"
        if action.kind is ActionKind.CREATE_INDEX:
            if action.concurrently or not facts.populated:
                return None
            return (
                Severity.ERROR,
                FindingCode.INDEX_NOT_CONCURRENT,
                f"CREATE INDEX on {key}, which has rows, blocks every write to it until the index is "
                "built; build it with CREATE INDEX CONCURRENTLY, in a migration with "
                "transactional = False",
            )
        if action.kind is ActionKind.ADD_COLUMN:
            return self._add_column(action, key, facts, cost, rows)
        if action.kind is ActionKind.ALTER_TYPE:
            return (
                cost,
                FindingCode.COLUMN_TYPE_CHANGE,
                f"ALTER COLUMN {action.column} TYPE rewrites {key} ({rows}) and rebuilds its indexes "
                "under an ACCESS EXCLUSIVE lock, unless the new type is binary compatible; add a new "
                "column, backfill it in batches and switch over (a hybrid migration)",
            )
        if action.kind is ActionKind.SET_NOT_NULL:
            column = action.column or ""
            if column in facts.not_null or column in facts.checked_not_null or self._checked(key, column):
                return None
            return (
                cost,
                FindingCode.SET_NOT_NULL_WITHOUT_CHECK,
                f"SET NOT NULL on {key}.{column} scans {rows} under an ACCESS EXCLUSIVE lock; first "
                f"ADD CONSTRAINT ... CHECK ({column} IS NOT NULL) NOT VALID, then VALIDATE CONSTRAINT "
                "(in a later migration), then SET NOT NULL, which uses the validated CHECK instead",
            )
        return None

    def _checked(self, key: str, column: str) -> bool:
        return any(
            table == key and valid and column in columns
            for (table, _), (columns, valid) in self.checks.items()
        )

    def _add_column(
        self, action: Action, key: str, facts: TableFacts, cost: Severity, rows: str
    ) -> _Verdict | None:
        column = f"{key}.{action.column}"
        called = [f for f in action.functions if self._is_volatile(f)]
        if action.rewrites is not None or called:
            why = action.rewrites or (
                f"its DEFAULT {action.default} calls {', '.join(called)}, which PostgreSQL marks volatile"
            )
            return (
                cost,
                FindingCode.VOLATILE_DEFAULT,
                f"ADD COLUMN {column} rewrites {key} ({rows}) under an ACCESS EXCLUSIVE lock: {why}; "
                "add the column without that default (or with a constant one), then fill it with a "
                "data migration in batches and set the default afterwards",
            )
        if action.not_null and action.default is None and facts.populated:
            return (
                Severity.ERROR,
                FindingCode.NOT_NULL_WITHOUT_DEFAULT,
                f"ADD COLUMN {column} NOT NULL without a DEFAULT fails on {key}, which has rows; add it "
                "with a constant DEFAULT, or add it nullable, fill it, then make it NOT NULL",
            )
        return None

    def _is_volatile(self, function: str) -> bool:
        kind = self.volatile.get(function)
        return kind == "v" if kind is not None else function in KNOWN_VOLATILE
