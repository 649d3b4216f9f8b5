"""The SQL brainmigrate builds, checked as text, without a database.

Every statement quotes the identifiers it is given (any name, quotes and non-ASCII included) and
takes every value as a bound parameter ``$n``: the parameters are numbered 1 to n without a gap,
and n is the number of arguments the code that runs the statement passes. A statement is checked
on its *skeleton*: the text with each quoted identifier replaced by ``I`` and whitespace collapsed,
so a name can never be mistaken for SQL, and the names it quoted, in order.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable, Sequence
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from brainmigrate._engine import sql as engine_sql
from brainmigrate._engine.batches import Entry, _write_args
from brainmigrate._engine.pager import bounds
from brainmigrate._engine.plan import RunPlan
from brainmigrate._engine.table import Column, TableShape
from brainmigrate._ledger import sql as ledger_sql
from brainmigrate._ledger.lock import RunnerLock, lock_key
from brainmigrate._model.sqltext import quote_ident

QUOTED = re.compile(r'"[^"]*(?:""[^"]*)*"')
PARAMETER = re.compile(r"\$(\d+)")


def skeleton(sql: str) -> tuple[str, list[str]]:
    """The statement with each quoted identifier as ``I`` and whitespace collapsed, and the names."""
    names = [match.group()[1:-1].replace('""', '"') for match in QUOTED.finditer(sql)]
    return " ".join(QUOTED.sub("I", sql).split()), names


def parameters(sql: str) -> int:
    """How many parameters the statement takes; fails unless they are exactly $1 to $n."""
    text, _ = skeleton(sql)
    numbers = {int(n) for n in PARAMETER.findall(text)}
    assert numbers == set(range(1, len(numbers) + 1)), f"parameters {sorted(numbers)} have a gap"
    return len(numbers)


# Any identifier PostgreSQL takes: 1 to 63 bytes of UTF-8, no NUL; quotes, $, ;, -- and spaces allowed.
identifiers = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20
).filter(lambda name: len(name.encode()) <= 63)
nasty = ['a"b', 'x"; DROP TABLE t; --', "$1", "näme ünï", "emoji 🧠", "'quoted'", '"', "UPPER lower"]
names = identifiers | st.sampled_from(nasty)
key_types = st.sampled_from(["bigint", "integer", "uuid", "text", "character varying(20)", "timestamp"])


# --- quote_ident ---------------------------------------------------------------------------------


@given(names)
@example('a"b')
@example("ünïcödé")
def test_quote_ident_quotes_any_name_into_one_identifier(name: str) -> None:
    quoted = quote_ident(name)
    assert quoted.startswith('"')
    assert quoted.endswith('"')
    assert skeleton(quoted) == ("I", [name])
    assert skeleton(f"{quoted}.{quoted}") == ("I.I", [name, name])


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 64, "é" * 32, "\ud800"], ids=repr)
def test_quote_ident_refuses_names_postgresql_would_refuse_or_truncate(name: str) -> None:
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        quote_ident(name)


def test_quote_ident_takes_names_of_63_bytes() -> None:
    assert quote_ident("x" * 63) == '"' + "x" * 63 + '"'
    assert quote_ident("é" * 31 + "x") == '"' + "é" * 31 + 'x"'


# --- reading a page of the source table ----------------------------------------------------------


#: The bounds of a page, written out: (lower, upper) -> the conditions, ``T`` standing for the key's type.
PAGE_BOUNDS = {
    (None, False): [],
    (">", False): ["I > $2::text::T"],
    (">=", False): ["I >= $2::text::T"],
    (None, True): ["I < $2::text::T"],
    (">", True): ["I > $2::text::T", "I < $3::text::T"],
    (">=", True): ["I >= $2::text::T", "I < $3::text::T"],
}


@given(
    schema=names,
    table=names,
    key=names,
    columns=st.lists(names, min_size=1, max_size=4),
    lower=st.sampled_from([None, ">", ">="]),
    upper=st.booleans(),
    where=st.sampled_from([None, "deleted_at IS NULL"]),
    key_type=key_types,
)
def test_page_quotes_every_name_and_binds_limit_and_bounds(
    schema: str,
    table: str,
    key: str,
    columns: list[str],
    lower: str | None,
    upper: bool,
    where: str | None,
    key_type: str,
) -> None:
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    selects = [quote_ident(key)] + [f"{quote_ident(c)}::text" for c in columns]
    statement = engine_sql.page(
        qualified, quote_ident(key), selects, where, key_type, lower=lower, upper=upper
    )

    text, quoted = skeleton(statement)
    conditions = int(lower is not None) + int(upper)
    conditions_sql = ([f"({where})"] if where else []) + [
        condition.replace("::T", f"::{key_type}") for condition in PAGE_BOUNDS[(lower, upper)]
    ]
    where_sql = f" WHERE {' AND '.join(conditions_sql)}" if conditions_sql else ""
    selects_sql = ", ".join(["I", *["I::text"] * len(columns)])
    assert text == f"SELECT {selects_sql} FROM I.I{where_sql} ORDER BY I LIMIT $1"
    assert quoted == [key, *columns, schema, table] + [key] * conditions + [key]
    assert parameters(statement) == 1 + conditions
    assert "'" not in text  # no literal: every value is a parameter


@pytest.mark.parametrize(
    ("cursor", "lower", "upper"), list(itertools.product([None, "41"], [None, "10"], [None, "99"]))
)
def test_page_parameters_are_the_ones_the_key_pager_passes(
    cursor: str | None, lower: str | None, upper: str | None
) -> None:
    """The key pager passes the batch size, then the cursor (or the chunk's lower key), then its upper key."""

    def make(op: str | None, has_upper: bool) -> str:
        return engine_sql.page('"t"', '"id"', ['"id"'], None, "bigint", lower=op, upper=has_upper)

    statement, args = bounds(make, cursor, lower, upper)

    assert parameters(statement) == 1 + len(args)
    text, _ = skeleton(statement)
    if cursor is not None:
        assert "I > $2::text::bigint" in text  # strictly after the last key done
        assert args[0] == cursor
    elif lower is not None:
        assert "I >= $2::text::bigint" in text  # from the chunk's first key
        assert args[0] == lower
    if upper is not None:
        assert f"I < ${len(args) + 1}::text::bigint" in text
        assert args[-1] == upper
    for value in (cursor, lower, upper):
        if value is not None:
            assert value not in text


@given(
    table=names, key=names, lower=st.sampled_from([None, ">", ">="]), upper=st.booleans(), key_type=key_types
)
def test_key_range_is_a_page_of_keys_with_the_same_parameters(
    table: str, key: str, lower: str | None, upper: bool, key_type: str
) -> None:
    statement = engine_sql.key_range(
        quote_ident(table), quote_ident(key), None, key_type, lower=lower, upper=upper
    )
    page = engine_sql.page(
        quote_ident(table), quote_ident(key), [quote_ident(key)], None, key_type, lower=lower, upper=upper
    )

    text, quoted = skeleton(statement)
    assert text.startswith(f"WITH batch AS MATERIALIZED ({skeleton(page)[0]}) SELECT ")
    assert text.count("FROM batch") == 4
    assert parameters(statement) == parameters(page)
    assert set(quoted) == {table, key}


# --- writing a batch back ------------------------------------------------------------------------

KEY = Column("id", "bigint", "int8", "N", True)
KINDS = [
    ("jsonb", "jsonb", "U", True),
    ("text", "text", "S", True),
    ("vector(3)", "vector", "U", False),
    ("text[]", "_text", "A", True),
    ("double precision", "float8", "N", True),
]


@st.composite
def tables(draw: st.DrawFn) -> tuple[TableShape, list[str]]:
    """A table with a bigint key and a few columns of assorted types, and the names written."""
    written = draw(st.lists(names.filter(lambda n: n != "id"), min_size=1, max_size=4, unique=True))
    columns = {"id": KEY}
    for name in written:
        sql_type, type_name, category, builtin = draw(st.sampled_from(KINDS))
        columns[name] = Column(name, sql_type, type_name, category, False, builtin)
    table = draw(names)
    return TableShape(quote_ident(table), KEY, columns), written


def plan_for(shape: TableShape, images: bool) -> RunPlan:
    migration = SimpleNamespace(metadata=SimpleNamespace(id="add_sentiment_001"), source=None)
    return RunPlan(
        migration=migration,  # type: ignore[arg-type]
        checksum="0" * 64,
        schema="brainmigrate",
        mode="stream",
        shape=shape,
        read_columns=list(shape.columns.values()),
        image=quote_ident(engine_sql.image_table("add_sentiment_001")) if images else None,
        reverse="images" if images else None,
    )


def sample_value(column: Column) -> Any:
    if column.is_json:
        return {"secret": "value-never-in-sql"}
    if column.category == "A":
        return ["value-never-in-sql"]
    if column.type_name == "vector":
        return [0.25, 0.5, 0.75]
    if column.type_name == "float8":
        return 0.125
    return "value-never-in-sql"


@given(table=tables(), images=st.booleans())
def test_write_batch_binds_keys_then_one_array_per_column(
    table: tuple[TableShape, list[str]], images: bool
) -> None:
    shape, written = table
    plan = plan_for(shape, images)
    fields = tuple(written)

    statement, columns = plan.write_sql(fields)
    entries = [
        Entry(key=k, changes={name: sample_value(shape.columns[name]) for name in fields}) for k in (1, 2)
    ]
    args = _write_args(plan, fields, columns, entries)

    # The arguments the batch writer passes are exactly the statement's parameters, in order.
    assert parameters(statement) == len(args) == 1 + len(fields) + int(images)
    assert args[0] == [1, 2]
    text, quoted = skeleton(statement)
    assert "value-never-in-sql" not in statement
    assert "'" not in text
    assert "0.125" not in text
    sets = ", ".join(
        f"I = u.c{i}{f'::{c.sql_type}' if c.sent_as_text else ''}" for i, c in enumerate(columns)
    )
    arrays = ", ".join(["$1::bigint[]", *(f"${i + 2}::{c.param_type()}" for i, c in enumerate(columns))])
    aliases = ", ".join(["k", *(f"c{i}" for i in range(len(columns)))])
    update = f"UPDATE I AS m SET {sets} FROM unnest({arrays}) AS u({aliases}) WHERE m.I = u.k"
    table_name = skeleton(shape.qualified)[1]
    if not images:
        assert text == update
        assert quoted == [*table_name, *fields, "id"]
        return
    assert args[-1] == list(fields)  # which columns the before-images hold
    n = len(fields)
    saved = (
        f"WITH saved AS (INSERT INTO I (I, written, {', '.join(['I'] * n)}) "
        f"SELECT m.I, ${n + 2}::text[], {', '.join(['m.I'] * n)} FROM I AS m "
        "JOIN unnest($1::bigint[]) AS s(k) ON m.I = s.k ON CONFLICT DO NOTHING)"
    )
    assert text == f"{saved} {update}"
    image = skeleton(plan.image or "")[1]
    assert quoted == [*image, "id", *fields, "id", *fields, *table_name, "id", *table_name, *fields, "id"]


def test_write_batch_casts_what_travels_as_text() -> None:
    statement = engine_sql.write_batch(
        '"memories"', '"id"', "uuid", [('"metadata"', "text[]", "::jsonb"), ('"score"', "real[]", "")]
    )
    assert statement == (
        'UPDATE "memories" AS m SET "metadata" = u.c0::jsonb, "score" = u.c1 '
        'FROM unnest($1::uuid[], $2::text[], $3::real[]) AS u(k, c0, c1) WHERE m."id" = u.k'
    )


# --- the history ledger's writes and the lock-held guard ----------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("key", [-1, 0, 1, 2**63 - 1, -(2**63), lock_key("brainmigrate")])
async def test_the_guard_names_the_lock_as_pg_locks_shows_it(brainmigrate_pool: Any, key: int) -> None:
    """The guard's pid and key halves are the row pg_locks shows for the runner's advisory lock."""
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        try:
            guard = RunnerLock(key, conn).guard
            row = await conn.fetchrow(
                "SELECT pid, classid::bigint, objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND objsubid = 1"
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)

    assert (row["pid"], row["classid"], row["objid"]) == guard


@given(names)
def test_lock_key_is_a_stable_signed_bigint_per_schema(schema: str) -> None:
    key = lock_key(schema)
    assert -(2**63) <= key < 2**63
    assert lock_key(schema) == key
    assume(schema != "brainmigrate")
    assert key != lock_key("brainmigrate")


# --- every statement that takes only the schema --------------------------------------------------


def schema_builders(module: ModuleType) -> list[tuple[str, Callable[..., str]]]:
    """Functions of ``module`` taking the schema, then only keyword-only flags, with each set of flags."""
    found: list[tuple[str, Callable[..., str]]] = []
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("_") or function.__module__ != module.__name__:
            continue
        params = list(inspect.signature(function).parameters.values())
        if not params or params[0].name != "schema" or params[0].kind is inspect.Parameter.KEYWORD_ONLY:
            continue
        flags = params[1:]
        if not all(
            p.kind is inspect.Parameter.KEYWORD_ONLY and p.annotation in (bool, "bool") for p in flags
        ):
            continue
        for values in itertools.product([False, True], repeat=len(flags)):
            options = {p.name: v for p, v in zip(flags, values, strict=True)}
            label = ",".join(f"{k}={v}" for k, v in options.items())

            def build(
                schema: str, function: Callable[..., str] = function, options: dict[str, bool] = options
            ) -> str:
                return function(schema, **options)

            found.append((f"{module.__name__.rsplit('.', 2)[-2]}.{name}({label})", build))
    return found


BUILDERS = schema_builders(engine_sql) + schema_builders(ledger_sql)


def test_there_are_schema_builders_to_check() -> None:
    labels = [label for label, _ in BUILDERS]
    assert any(label.startswith("_ledger.insert_attempt") for label in labels)
    assert any(label.startswith("_engine.checkpoint") for label in labels)


@pytest.mark.parametrize(("label", "build"), BUILDERS, ids=[label for label, _ in BUILDERS])
@given(schema=names)
@example(schema='x"; DROP SCHEMA public CASCADE; --')
def test_every_statement_quotes_the_schema_and_numbers_its_parameters(
    label: str, build: Callable[[str], str], schema: str
) -> None:
    statement = build(schema)
    text, quoted = skeleton(statement)
    assert schema in quoted, f"{label} does not quote the schema"
    parameters(statement)
    assert "DROP SCHEMA" not in text


def test_statements_without_identifiers_number_their_parameters() -> None:
    statements: Sequence[str] = [
        ledger_sql.TRY_LOCK,
        ledger_sql.UNLOCK,
        ledger_sql.set_session_timeouts(check_client=False),
        ledger_sql.set_session_timeouts(check_client=True),
        ledger_sql.RESTORE_SESSION,
        ledger_sql.ACT_AS,
    ]
    counts = [parameters(statement) for statement in statements]
    assert counts == [1, 1, 2, 2, 3, 3]
