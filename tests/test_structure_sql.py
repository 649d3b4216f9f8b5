"""The SQL of structure migrations, run on the real server and checked against the reference.

For drawn documents and operations: (a) ``new_value`` gives what the Python reference of
test_structure_operations gives; (b) for a document no violation predicate is true for, the
inverse chain gives it back exactly; (c) the violation predicates are true exactly where the
reference says a condition is broken. Then: the expression grows linearly and runs in UPDATE's SET
and WHERE; constants of any text are embedded safely (with ``standard_conforming_strings`` on and
off); shapes and the description of a column.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brainmigrate import MigrationValidationError
from brainmigrate import structure as s
from brainmigrate._engine.structure_sql import (
    describe_query,
    json_literal,
    new_value,
    shape_violations,
    violations,
)
from brainmigrate._model.sqltext import quote_literal
from brainmigrate._model.structure import conditional, json_text
from test_structure_operations import (
    EXAMPLE,
    MISSING,
    apply,
    cases,
    documents,
    json_equal,
    lookup,
    trace,
)

SQL = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COLUMN = "t.col"


class Server:
    """One connection to a fresh database, driven from synchronous (hypothesis) tests."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection[Any] = self.run(asyncpg.connect(dsn))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def rows(self, select: str, docs: list[Any]) -> list[asyncpg.Record]:
        """``select`` (over ``t.col``) for each document, in order; None stands for SQL NULL."""
        texts = [None if doc is None else json_text(doc) for doc in docs]
        query = (
            f"SELECT {select} FROM (SELECT u.d::jsonb AS col, u.n FROM unnest($1::text[]) WITH ORDINALITY"
            " AS u(d, n)) AS t ORDER BY t.n"
        )
        return list(self.run(self.conn.fetch(query, texts)))

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.close()


@pytest.fixture
def server(brainmigrate_database: str) -> Iterator[Server]:
    server = Server(brainmigrate_database)
    yield server
    server.close()


def parsed(text: str | None) -> Any:
    return None if text is None else json.loads(text, parse_float=Decimal)


def same(a: Any, b: Any) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and json_equal(a, b))


batches = st.lists(cases(), min_size=1, max_size=1).flatmap(
    lambda first: st.tuples(
        st.just(first[0][1]), st.lists(documents, max_size=4).map(lambda d: [first[0][0], *d])
    )
)
invertible_batches = st.lists(cases(lossy=False), min_size=1, max_size=1).flatmap(
    lambda first: st.tuples(
        st.just(first[0][1]), st.lists(documents, max_size=4).map(lambda d: [first[0][0], *d])
    )
)
DOC = {"topic": "x", "sentiment": "pos", "kind": "note", "legacy_score": 3, "analysis": {"mood": "ok"}}


# -- (a), (b), (c) -------------------------------------------------------------------------------


@SQL
@given(batches)
@example((EXAMPLE, [DOC, {"topics": ["y"]}, None, [1], "s", {"analysis": 3}]))
@example(([s.move("a", "0.x")], [{"a": 1, "0": [5]}, {"a": 1, "0": {"x": 2}}, {"a": 1}]))
@example(([s.convert("a", {1: "one", "x": [1]})], [{"a": Decimal("1.0")}, {"a": True}, {"a": "x"}]))
def test_new_value_does_what_the_reference_does(
    server: Server, batch: tuple[list[s.Operation], list[Any]]
) -> None:
    operations, docs = batch
    rows = server.rows(f"{new_value(operations, COLUMN)}::text", docs)
    for doc, row in zip(docs, rows, strict=True):
        assert same(parsed(row[0]), apply(operations, doc)), (doc, row[0])


@SQL
@given(invertible_batches)
@example((EXAMPLE[:5] + EXAMPLE[6:], [DOC, {"a": 1}, {}]))
def test_the_inverse_chain_restores_memories_that_break_no_condition(
    server: Server, batch: tuple[list[s.Operation], list[Any]]
) -> None:
    operations, docs = batch
    forward = new_value(operations, COLUMN)
    back = new_value(s.inverse_of(operations), forward)
    broken = " OR ".join(predicate for _, _, predicate in violations(operations, COLUMN)) or "false"
    rows = server.rows(f"{broken}, {back}::text, {back} IS NOT DISTINCT FROM t.col", docs)
    for doc, (is_broken, restored, equal) in zip(docs, rows, strict=True):
        if not is_broken:
            assert equal, (doc, restored)
            assert same(parsed(restored), doc)


@SQL
@given(batches)
@example((EXAMPLE, [DOC, {"topics": 1, "topic": 2}, {"kind": "semantic"}, {"analysis": {"feeling": 1}}]))
@example(([s.add("a.b", 1), s.unwrap("c")], [{"a": {}}, {"a": 1}, {"c": [[1]]}, {"c": [1, 2]}, {"c": 1}]))
def test_violation_predicates_agree_with_the_reference(
    server: Server, batch: tuple[list[s.Operation], list[Any]]
) -> None:
    operations, docs = batch
    found = violations(operations, COLUMN)
    assert [op for op, _, _ in found] == conditional(operations)
    if not found:
        for doc in docs:
            assert trace(operations, doc) == []
        return
    rows = server.rows(", ".join(predicate for _, _, predicate in found), docs)
    for doc, row in zip(docs, rows, strict=True):
        assert list(row) == trace(operations, doc), doc


def test_violations_name_the_operations_and_conditions() -> None:
    found = violations(EXAMPLE, COLUMN)
    assert [(str(op), condition) for op, condition, _ in found] == [
        ("rename('topic', 'topics')", "no memory has the key 'topics' already"),
        ("wrap('topics')", "no memory has an array of exactly one element at 'topics'"),
        (
            "move('sentiment', 'analysis.sentiment')",
            "no memory has the key 'analysis.sentiment' already, and where a memory has 'sentiment', "
            "'analysis' is absent or a non-empty object",
        ),
        ("add('schema_version', 2)", "no memory has the key 'schema_version' already"),
        (
            "convert('kind', {'note': 'semantic', 'event': 'episodic'})",
            "no memory has at 'kind' a value the table maps to but not from ('semantic', 'episodic')",
        ),
        (
            "within('analysis', [rename('mood', 'feeling')])",
            "no memory has the key 'analysis.feeling' already",
        ),
    ]


# -- linear, and usable in an UPDATE -------------------------------------------------------------


def test_the_expression_grows_linearly(server: Server) -> None:
    """Every stage reads its input several times; fenced, a chain of 200 costs 200 stages."""
    chain = [s.wrap("a"), s.unwrap("a"), s.move("a", "b.c"), s.move("b.c", "a")] * 50
    sizes = [len(new_value(chain[:n], COLUMN)) for n in (50, 100, 200)]
    assert sizes[2] < 2.1 * sizes[1] < 4.5 * sizes[0]
    started = time.monotonic()
    docs = [{"a": [1]}, {"a": 1, "x": 2}, {"b": {"d": 1}, "a": 2}] * 50
    rows = server.rows(f"{new_value(chain, COLUMN)}::text", docs)
    assert time.monotonic() - started < 5
    assert [parsed(row[0]) for row in rows] == [apply(chain, doc) for doc in docs]
    assert new_value(chain, COLUMN).count(COLUMN) == 1


def test_new_value_sets_and_selects_the_rows_of_an_update(server: Server) -> None:
    docs = [DOC, {"sentiment": 1}, None, [1], {"kind": "event", "topic": "t"}]
    original = docs
    server.run(server.conn.execute('CREATE TABLE "Memories" (id int PRIMARY KEY, "meta data" jsonb)'))
    for n, doc in enumerate(docs):
        server.run(
            server.conn.execute(
                'INSERT INTO "Memories" VALUES ($1, $2::jsonb)', n, None if doc is None else json_text(doc)
            )
        )
    ops = [op for op in EXAMPLE if op.invertibility is not s.Invertibility.LOSSY]
    for operations in (ops, s.inverse_of(ops)):
        value = new_value(operations, '"m"."meta data"')
        status = server.run(
            server.conn.execute(
                f'UPDATE "Memories" AS m SET "meta data" = {value} WHERE "meta data" IS DISTINCT FROM {value}'
            )
        )
        assert status == "UPDATE 3"
        stored = server.run(server.conn.fetch('SELECT "meta data"::text FROM "Memories" ORDER BY id'))
        expected = [apply(operations, doc) for doc in docs]
        assert [parsed(row[0]) for row in stored] == expected
        docs = expected
    assert docs == original


# -- constants -----------------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0")) | st.sampled_from(
    ["'", "''", "\\", "\\'", "$$", "$a$", "'; DROP TABLE t; --", "E'\\x41'", "é🧠\u2028"]
)


@SQL
@given(st.lists(texts, min_size=1, max_size=5), st.booleans())
def test_literals_hold_any_text(server: Server, values: list[str], conforming: bool) -> None:
    setting = "on" if conforming else "off"
    server.run(
        server.conn.execute(f"SET standard_conforming_strings = {setting}; SET escape_string_warning = off")
    )
    try:
        select = ", ".join(f"{quote_literal(text)}, {json_literal(text)}::text" for text in values)
        row = server.run(server.conn.fetchrow(f"SELECT {select}"))
        assert list(row) == [item for text in values for item in (text, json.dumps(text, ensure_ascii=False))]
        key = values[0] or "k"
        ops = [s.add((key,), {key: values}), s.rename((key,), ("new " + key,))]
        result = parsed(server.rows(f"{new_value(ops, COLUMN)}::text", [{}])[0][0])
        assert result == {"new " + key: {key: values}}
    finally:
        server.run(server.conn.execute("RESET standard_conforming_strings; RESET escape_string_warning"))


def test_literal_refuses_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote_literal("a\0b")


# -- shapes and descriptions ---------------------------------------------------------------------

type_specs = st.lists(
    st.sampled_from(["object", "array", "string", "number", "boolean", "null"]), min_size=1, max_size=2
).map("|".join)
shapes = st.dictionaries(
    st.sampled_from(["a", "b", "0", "a.b", "k.d", ("k.d",)]),
    st.tuples(type_specs, st.booleans()).map(lambda spec: spec[0] + ("?" if spec[1] else "")),
    min_size=1,
    max_size=4,
)
JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def shape_broken(doc: Any, path: tuple[str, ...], spec: str) -> bool:
    if not isinstance(doc, dict):
        return False
    value = lookup(doc, path)
    if value is MISSING:
        return not spec.endswith("?")
    return JSON_TYPE.get(type(value), "number") not in spec.removesuffix("?").split("|")


@SQL
@given(shapes, st.lists(documents, min_size=1, max_size=5))
def test_shape_violations_agree_with_the_reference(
    server: Server, expected: dict[Any, str], docs: list[Any]
) -> None:
    found = shape_violations(expected, COLUMN)
    rows = server.rows(", ".join(predicate for _, _, predicate in found), docs)
    for doc, row in zip(docs, rows, strict=True):
        assert list(row) == [shape_broken(doc, s.parse_path(path), spec) for path, spec in expected.items()]


def test_shape_violations_say_the_path_and_type_and_refuse_unknown_types() -> None:
    found = shape_violations({"topics": "array", ("k.d",): " string | null ?"}, COLUMN)
    assert [(path, spec) for path, spec, _ in found] == [("'topics'", "array"), ("('k.d',)", "string|null?")]
    with pytest.raises(
        MigrationValidationError, match=r"unknown JSON type 'list' for 'topics'.*object, array"
    ):
        shape_violations({"topics": "list"}, COLUMN)
    with pytest.raises(MigrationValidationError, match=r"invalid shape path 'a\.\.b'"):
        shape_violations({"a..b": "array"}, COLUMN)
    with pytest.raises(MigrationValidationError, match="pass a JSON type name as a string"):
        shape_violations({"a": 3}, COLUMN)  # type: ignore[dict-item]


def test_describe_query_lists_every_path_and_type(server: Server) -> None:
    docs = [
        DOC,
        {"topic": ["a"], "analysis": {"mood": None, "deep": {"x": {"y": 1}}}},
        None,
        [1],
        {"0": {"a": []}},
    ]
    server.run(server.conn.execute('CREATE TABLE "my memories" (id int, "Meta" jsonb)'))
    for n, doc in enumerate(docs):
        server.run(
            server.conn.execute(
                'INSERT INTO "my memories" VALUES ($1, $2::jsonb)', n, None if doc is None else json_text(doc)
            )
        )
    rows = server.run(server.conn.fetch(describe_query('"my memories"', '"Meta"', sample_percent=None)))
    found = {(tuple(row["path"]), row["json_type"]): row["memories"] for row in rows}
    assert found == {
        (("0",), "object"): 1,
        (("0", "a"), "array"): 1,
        (("analysis",), "object"): 2,
        (("analysis", "deep"), "object"): 1,
        (("analysis", "deep", "x"), "object"): 1,
        (("analysis", "deep", "x", "y"), "number"): 1,
        (("analysis", "mood"), "null"): 1,
        (("analysis", "mood"), "string"): 1,
        (("kind",), "string"): 1,
        (("legacy_score",), "number"): 1,
        (("sentiment",), "string"): 1,
        (("topic",), "array"): 1,
        (("topic",), "string"): 1,
    }
    sampled = server.run(server.conn.fetch(describe_query('"my memories"', '"Meta"', sample_percent=100)))
    assert [tuple(row) for row in sampled] == [tuple(row) for row in rows]
    for bad in (0, -1, 101, float("nan"), True):
        with pytest.raises(MigrationValidationError, match="invalid sample_percent"):
            describe_query('"my memories"', '"Meta"', sample_percent=bad)
