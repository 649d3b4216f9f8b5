"""The operations of structure migrations as values, without a database.

A Python reference implementation of their semantics lives here (``apply``, ``violated``); the
SQL compiled for them is checked against it in test_structure_sql. The properties: paths parse as
documented; operations print as the calls that build them, compare and hash as values; the
inverse of the inverse is the list itself; and, the contract of the conditions, for every memory
that breaks no condition, applying the operations and then their inverses gives it back exactly.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from brainmigrate import MigrationValidationError
from brainmigrate import structure as s
from brainmigrate._model.structure import (
    check_operations,
    conditional,
    flatten,
    irreversible,
    needs_images,
)

PURE = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- the reference implementation ------------------------------------------------------------------

MISSING: Any = object()


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality as jsonb ``=`` has it: numbers by value (1 equals 1.0), true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float | Decimal) and isinstance(b, int | float | Decimal):
        return Decimal(str(a)) == Decimal(str(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    return type(a) is type(b) and a == b


def lookup(node: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` through objects only, or MISSING."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def can_place(root: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether every parent of ``path`` that exists is an object."""
    node: Any = root
    for key in path[:-1]:
        if key not in node:
            return True
        node = node[key]
        if not isinstance(node, dict):
            return False
    return True


def put(root: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = root
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = copy.deepcopy(value)


def delete(root: dict[str, Any], path: tuple[str, ...]) -> None:
    """Delete the key at ``path`` and the parents it leaves empty (never ``root`` itself)."""
    parents = [root]
    for key in path[:-1]:
        parents.append(parents[-1][key])
    del parents[-1][path[-1]]
    for i in range(len(path) - 1, 0, -1):
        if parents[i]:
            break
        del parents[i - 1][path[i - 1]]


def set_at(root: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    lookup(root, path[:-1])[path[-1]] = value


def apply_op(op: s.Operation, root: dict[str, Any]) -> None:
    """Apply ``op`` to the object ``root`` in place."""
    if isinstance(op, s.Within):
        inner = lookup(root, op.path)
        if isinstance(inner, dict):
            for each in op.operations:
                apply_op(each, inner)
        return
    path = op.source if isinstance(op, s.Move) else op.path  # type: ignore[attr-defined]
    value = lookup(root, path)
    if isinstance(op, s.Add):
        if value is MISSING and can_place(root, op.path):
            put(root, op.path, op.value)
    elif value is MISSING:
        return
    elif isinstance(op, s.Rename):
        parent = lookup(root, op.path[:-1])
        parent[op.to] = parent.pop(op.path[-1])
    elif isinstance(op, s.Move):
        if can_place(root, op.target):
            delete(root, op.source)
            put(root, op.target, value)
    elif isinstance(op, s.Remove):
        delete(root, op.path)
    elif isinstance(op, s.Wrap):
        if not isinstance(value, list):
            set_at(root, op.path, [value])
    elif isinstance(op, s.Unwrap):
        if isinstance(value, list) and len(value) == 1:
            set_at(root, op.path, value[0])
    elif isinstance(op, s.Convert):
        for old, new in op.table:
            if json_equal(value, old):
                set_at(root, op.path, copy.deepcopy(new))
                break
    else:
        raise AssertionError(op)


def apply(operations: Any, doc: Any) -> Any:
    """The document after ``operations``: non-objects (and None, SQL NULL) are left as they are."""
    if not isinstance(doc, dict):
        return doc
    doc = copy.deepcopy(doc)
    for op in operations:
        apply_op(op, doc)
    return doc


def bad_parents(root: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Some parent of ``path`` exists and is not an object, or is an empty object."""
    return any(
        (node := lookup(root, path[:k])) is not MISSING and (not isinstance(node, dict) or not node)
        for k in range(1, len(path))
    )


def one_element(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 1


def violated(op: s.Operation, root: dict[str, Any]) -> bool:
    """Whether the object ``root`` breaks the condition of ``op`` (a CONDITIONAL leaf)."""
    if isinstance(op, s.Rename):
        return lookup(root, op.target) is not MISSING
    if isinstance(op, s.Move):
        if lookup(root, op.target) is not MISSING:
            return True
        return lookup(root, op.source) is not MISSING and bad_parents(root, op.target)
    if isinstance(op, s.Add):
        return lookup(root, op.path) is not MISSING or bad_parents(root, op.path)
    value = lookup(root, op.path)  # type: ignore[attr-defined]
    if isinstance(op, s.Wrap):
        return one_element(value)
    if isinstance(op, s.Unwrap):
        return value is not MISSING and not (one_element(value) and not isinstance(value[0], list))
    if isinstance(op, s.Convert):
        return value is not MISSING and any(json_equal(value, new) for new in op.unmapped_results())
    raise AssertionError(op)


def trace(operations: Any, doc: Any) -> list[bool]:
    """For each CONDITIONAL leaf, in the order of ``flatten``: whether ``doc`` breaks it, judged on
    the value that operation receives."""
    found: list[bool] = []
    doc = copy.deepcopy(doc)

    def visit(op: s.Operation, root: tuple[str, ...]) -> None:
        if isinstance(op, s.Within):
            for each in op.operations:
                visit(each, root + op.path)
            return
        inner = lookup(doc, root) if isinstance(doc, dict) else MISSING
        if op.invertibility is s.Invertibility.CONDITIONAL:
            found.append(isinstance(inner, dict) and violated(op, inner))
        if isinstance(inner, dict):
            apply_op(op, inner)

    for op in operations:
        visit(op, ())
    return found


# -- strategies ----------------------------------------------------------------------------------

#: Few keys, so operations often meet the data: one looks like an index, one has a dot, one a quote.
KEYS = ["a", "b", "0", "k.d", "é'q"]
keys = st.sampled_from(KEYS)
numbers = st.integers(-3, 3) | st.sampled_from([Decimal("1.0"), Decimal("2.50"), Decimal("-0.5")])
scalars = st.none() | st.booleans() | numbers | st.sampled_from(["x", "y", "a", "", "it's", "\\"])
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
objects = st.dictionaries(
    keys, json_values | st.dictionaries(keys, json_values, max_size=3), min_size=1, max_size=4
)
documents = st.one_of(objects, objects, objects, objects, st.just({}), json_values, st.none())
paths = st.lists(keys, min_size=1, max_size=3).map(tuple)


def _related(one: tuple[str, ...], other: tuple[str, ...]) -> bool:
    return one[: len(other)] == other or other[: len(one)] == one


def _unique_scalars(values: list[Any]) -> bool:
    seen: list[Any] = []
    for value in values:
        if any(json_equal(value, other) for other in seen):
            return False
        seen.append(value)
    return True


@st.composite
def tables(draw: st.DrawFn, bijective: bool) -> list[tuple[Any, Any]]:
    olds = draw(st.lists(scalars, min_size=1, max_size=3).filter(_unique_scalars))
    if bijective:
        news = draw(st.lists(scalars, min_size=len(olds), max_size=len(olds)).filter(_unique_scalars))
    else:
        news = draw(st.lists(json_values, min_size=len(olds), max_size=len(olds)))
    return list(zip(olds, news, strict=True))


def leaf_operations(lossy: bool, paths: st.SearchStrategy[tuple[str, ...]]) -> st.SearchStrategy[s.Operation]:
    def renames(path: tuple[str, ...]) -> st.SearchStrategy[s.Operation]:
        return st.sampled_from([key for key in KEYS if key != path[-1]]).map(
            lambda key: s.Rename(path, (key,))
        )

    moves = st.tuples(paths, paths).filter(lambda pair: not _related(*pair))
    choices = [
        paths.flatmap(renames),
        moves.map(lambda pair: s.move(*pair)),
        st.builds(s.add, paths, json_values),
        st.builds(s.wrap, paths),
        st.builds(s.unwrap, paths),
        st.builds(s.convert, paths, tables(bijective=True)),
    ]
    if lossy:
        choices += [
            st.builds(s.remove, paths, json_values),
            st.builds(s.convert, paths, tables(bijective=False)),
        ]
    return st.one_of(choices)


def operation_lists(
    lossy: bool = True, paths: st.SearchStrategy[tuple[str, ...]] = paths, max_size: int = 4
) -> st.SearchStrategy[list[s.Operation]]:
    """Lists of operations; without ``lossy``, only INVERTIBLE and CONDITIONAL ones."""
    ops = st.recursive(
        leaf_operations(lossy, paths),
        lambda inner: st.builds(s.within, paths, st.lists(inner, min_size=1, max_size=3)),
        max_leaves=5,
    )
    return st.lists(ops, min_size=1, max_size=max_size)


def key_paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path of ``doc`` through objects."""
    if not isinstance(doc, dict):
        return []
    found = []
    for key, value in doc.items():
        found.append((*prefix, key))
        found.extend(key_paths(value, (*prefix, key)))
    return found


@st.composite
def cases(draw: st.DrawFn, lossy: bool = True) -> tuple[Any, list[s.Operation]]:
    """A document and operations whose paths are often the document's own."""
    doc = draw(documents)
    existing = key_paths(doc)
    near = st.one_of(st.sampled_from(existing), st.sampled_from(existing), paths) if existing else paths
    return doc, draw(operation_lists(lossy, near))


EXAMPLE = [
    s.rename("topic", "topics"),
    s.wrap("topics"),
    s.move("sentiment", "analysis.sentiment"),
    s.add("schema_version", 2),
    s.convert("kind", {"note": "semantic", "event": "episodic"}),
    s.remove("legacy_score", default=None),
    s.within("analysis", [s.rename("mood", "feeling")]),
]

# -- paths ---------------------------------------------------------------------------------------


@PURE
@given(st.lists(st.text(min_size=1).filter(lambda k: "." not in k and "\0" not in k), min_size=1, max_size=4))
def test_a_dotted_path_is_its_keys(segments: list[str]) -> None:
    assume_valid = all(_encodable(key) for key in segments)
    if not assume_valid:
        return
    assert s.parse_path(".".join(segments)) == tuple(segments)
    assert s.parse_path(tuple(segments)) == tuple(segments)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@PURE
@given(
    st.lists(st.text(min_size=1).filter(lambda k: "\0" not in k and _encodable(k)), min_size=1, max_size=4)
)
def test_a_tuple_path_is_taken_as_it_is(segments: list[str]) -> None:
    assert s.parse_path(tuple(segments)) == tuple(segments)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "'' : it is empty"),
        ("a..b", "'a..b': it has an empty segment"),
        (".a", "it has an empty segment"),
        ((), r"\(\): it is empty"),
        (("a", ""), "it has an empty segment"),
        (("a", 1), r"it has a segment that is not a string \(1\)"),
        ("a\0b", "NUL"),
        (("\ud800",), "not valid Unicode"),
        (["a", "b"], "it is a list, not a string or a tuple of strings"),
        (None, "it is a NoneType"),
        (3, "it is a int"),
    ],
    ids=repr,
)
def test_parse_path_refuses_what_is_not_a_path(path: object, message: str) -> None:
    with pytest.raises(MigrationValidationError, match=message.replace("'' :", "''\\:")) as caught:
        s.parse_path(path)
    assert "pass a dotted string such as 'analysis.mood'" in str(caught.value)


def test_parse_path_names_what_it_parses() -> None:
    with pytest.raises(MigrationValidationError, match=r"invalid move target 'a\.\.b'"):
        s.move("x", "a..b")


# -- operations as values --------------------------------------------------------------------------


@PURE
@given(operation_lists())
def test_operations_print_as_the_calls_that_build_them(operations: list[s.Operation]) -> None:
    namespace = {name: getattr(s, name) for name in s.__all__} | {"Decimal": Decimal}
    for op in operations:
        rebuilt = eval(str(op), namespace)
        assert rebuilt == op
        assert hash(rebuilt) == hash(op)
        assert repr(op) == str(op)


def test_the_example_prints_as_written() -> None:
    assert [str(op) for op in EXAMPLE] == [
        "rename('topic', 'topics')",
        "wrap('topics')",
        "move('sentiment', 'analysis.sentiment')",
        "add('schema_version', 2)",
        "convert('kind', {'note': 'semantic', 'event': 'episodic'})",
        "remove('legacy_score')",
        "within('analysis', [rename('mood', 'feeling')])",
    ]
    assert str(s.rename(("a.b", "c"), "d")) == "rename(('a.b', 'c'), 'd')"
    assert str(s.move("a", ("x.y",))) == "move('a', ('x.y',))"
    assert str(s.remove("a", default=0)) == "remove('a', default=0)"
    assert str(s.convert("a", [(True, "t"), (1, "one")])) == "convert('a', [(True, 't'), (1, 'one')])"


def test_operations_are_values() -> None:
    value = {"a": [1, 2]}
    op = s.add("x", value)
    value["a"].append(3)  # the operation keeps its own copy
    assert op == s.add("x", {"a": [1, 2]})
    assert s.add("x", 1) != s.add("x", 1.0) != s.add("x", True)
    assert s.convert("k", {"a": 1, "b": 2}) == s.convert("k", {"b": 2, "a": 1})
    assert len({*EXAMPLE, *EXAMPLE}) == len(EXAMPLE)
    assert s.rename("a", "b") != s.move("a", "b")
    with pytest.raises(AttributeError):
        op.path = ("y",)  # type: ignore[misc]


@PURE
@given(operation_lists(lossy=False))
def test_the_inverse_of_the_inverse_is_the_list_itself(operations: list[s.Operation]) -> None:
    assert s.inverse_of(s.inverse_of(operations)) == tuple(operations)


def test_inverses() -> None:
    assert s.rename("a.b", "c").inverse() == s.rename("a.c", "b")
    assert s.move("a", "b.c").inverse() == s.move("b.c", "a")
    assert s.add("a", 1).inverse() == s.remove("a", default=1)
    assert s.remove("a", default=1).inverse() == s.add("a", 1)
    assert s.wrap("a").inverse() == s.unwrap("a")
    assert s.convert("a", {"x": 1}).inverse() == s.convert("a", {1: "x"})
    assert s.within("p", [s.wrap("a"), s.add("b", 0)]).inverse() == s.within(
        "p", [s.remove("b", default=0), s.unwrap("a")]
    )
    assert s.inverse_of(EXAMPLE)[0] == s.within("analysis", [s.rename("feeling", "mood")])


def test_invertibility_and_conditions() -> None:
    I = s.Invertibility  # noqa: E741
    assert [op.invertibility for op in EXAMPLE] == [I.CONDITIONAL] * 5 + [I.LOSSY, I.CONDITIONAL]
    assert s.convert("a", {"x": "y", "y": "x"}).invertibility is I.INVERTIBLE
    assert s.convert("a", {"x": "z", "y": "z"}).invertibility is I.IRREVERSIBLE
    assert s.convert("a", {"x": [1]}).invertibility is I.IRREVERSIBLE
    assert s.within("p", [s.wrap("a"), s.remove("b")]).invertibility is I.LOSSY
    assert EXAMPLE[0].condition == "no memory has the key 'topics' already"
    assert EXAMPLE[-1].condition == "no memory has the key 'analysis.feeling' already"
    assert s.remove("a").condition is None
    assert s.move("a", "x.y.z").condition == (
        "no memory has the key 'x.y.z' already, and where a memory has 'a', 'x' and 'x.y' are each "
        "absent or a non-empty object"
    )
    assert s.unwrap("t").condition == (
        "every memory that has 't' has there an array of exactly one element, which is not itself an array"
    )
    assert s.convert("k", {"note": "semantic", "x": "note"}).condition == (
        "no memory has at 'k' a value the table maps to but not from ('semantic')"
    )
    with pytest.raises(MigrationValidationError, match=r"cannot be inverted.*keep before-images"):
        s.convert("a", {"x": "z", "y": "z"}).inverse()


def test_lists_are_judged_through_within() -> None:
    ops = [s.within("p", [s.remove("a"), s.within("q", [s.convert("c", {1: 2, 2: 2}), s.wrap("w")])])]
    assert needs_images(ops)
    assert not needs_images([s.wrap("a")])
    assert irreversible(ops) == [s.within("p.q", [s.convert("c", {1: 2, 2: 2})])]
    assert conditional(ops) == [s.within("p.q", [s.wrap("w")])]
    assert [root for root, _ in flatten(ops)] == [("p",), ("p", "q"), ("p", "q")]
    assert conditional(ops)[0].condition == "no memory has an array of exactly one element at 'p.q.w'"


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: s.rename("a", "b.c"), r"use move\(\) to change the parent"),
        (lambda: s.rename("a", "a"), "does nothing: the new name is the old one"),
        (lambda: s.rename("a", 3), "pass the new key name as a string"),
        (lambda: s.move("a", "a"), "does nothing: the source is the target"),
        (lambda: s.move("a", "a.b"), "into its own subtree"),
        (lambda: s.move("a.b", "a"), "which contains it"),
        (lambda: s.add("a", float("nan")), "nan.*which JSON cannot hold"),
        (lambda: s.add("a", {1: 2}), r"key that is not a string \(1\)"),
        (lambda: s.add("a", object()), "is not a JSON value"),
        (lambda: s.add("a", ["x\0"]), "NUL"),
        (lambda: s.remove("a", default={1, 2}), "a set"),
        (lambda: s.convert("a", {}), "it is empty"),
        (lambda: s.convert("a", "x"), "pass a dict from the old values"),
        (lambda: s.convert("a", [([1], 2)]), "keys are JSON scalars"),
        (lambda: s.convert("a", [(1, "x"), (Decimal("1.0"), "y")]), "are equal JSON values"),
        (lambda: s.convert("a", [(1, 2, 3)]), r"list of \(old, new\) pairs"),
        (lambda: s.within("a", []), "at least one"),
        (lambda: s.within("a", "rename"), "takes a list of operations"),
        (lambda: s.within("a", [1]), "build operations with rename()"),
        (lambda: s.wrap(["a"]), "it is a list"),
    ],
)
def test_constructors_refuse_bad_arguments(build: Any, message: str) -> None:
    with pytest.raises(MigrationValidationError, match=message):
        build()


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ([], "has no operations; declare at least one"),
        ("rename", "declare them as a list"),
        ([s.wrap("a"), "x"], "operation 2 is 'x', a str"),
        ([s.rename("a", "c"), s.move("b", "c")], r"move\('b', 'c'\), puts a value at 'c', where rename"),
        ([s.add("c", 1), s.add("c", 2)], "puts a value at 'c'"),
        ([s.rename("a", "b"), s.wrap("a")], r"works on 'a', but rename\('a', 'b'\) before it took 'a' away"),
        ([s.move("a", "x.y"), s.wrap("a.b")], "took 'a' away"),
        ([s.remove("a"), s.remove("a")], "took 'a' away"),
        ([s.move("p", "q"), s.within("p", [s.wrap("b")])], "took 'p' away"),
        ([s.within("p", [s.rename("a", "b")]), s.wrap("p.a")], "took 'p.a' away"),
        ([s.wrap("a"), s.rename("a.b", "c")], r"inside 'a', which wrap\('a'\) turned into an array"),
        ([s.wrap("a"), s.wrap("a")], "wraps 'a' again"),
    ],
    ids=repr,
)
def test_check_operations_refuses_contradictions(operations: Any, message: str) -> None:
    with pytest.raises(MigrationValidationError, match=message) as caught:
        check_operations(operations, "m-1")
    assert caught.value.migration_id == "m-1"
    assert str(caught.value).startswith("structure migration 'm-1'")


@pytest.mark.parametrize(
    "operations",
    [
        EXAMPLE,
        [s.rename("a", "b"), s.rename("b", "c")],
        [s.remove("a"), s.add("a", 0)],
        [s.remove("a"), s.rename("b", "a")],
        [s.wrap("a"), s.unwrap("a"), s.wrap("a")],
        [s.move("a.b", "c"), s.add("a.b", 1)],
        [s.within("p", [s.rename("a", "b")]), s.wrap("p.b")],
    ],
    ids=repr,
)
def test_check_operations_takes_consistent_lists(operations: list[s.Operation]) -> None:
    check_operations(operations, "m-1")


# -- the semantics, by the reference -------------------------------------------------------------


def test_the_reference_applies_the_example() -> None:
    doc = {"topic": "x", "sentiment": "pos", "kind": "note", "legacy_score": 3, "analysis": {"mood": "ok"}}
    assert apply(EXAMPLE, doc) == {
        "topics": ["x"],
        "analysis": {"sentiment": "pos", "feeling": "ok"},
        "schema_version": 2,
        "kind": "semantic",
    }
    assert apply([s.move("a.b", "c")], {"a": {"b": 1}}) == {"c": 1}  # the emptied parent goes
    assert apply([s.move("a", "0.x")], {"a": 1, "0": [5]}) == {"a": 1, "0": [5]}  # 0 is no index
    assert apply([s.convert("a", {1: "one"})], {"a": Decimal("1.0")}) == {"a": "one"}
    assert apply([s.convert("a", {1: "one"})], {"a": True}) == {"a": True}
    assert apply(EXAMPLE, [1]) == [1]
    assert apply(EXAMPLE, None) is None


@PURE
@given(cases(lossy=False))
@example(({"a": {}}, [s.add("a.b", 1)]))
@example(({"x": 1, "a": {}}, [s.move("x", "a.b")]))
@example(({"a": [[1]]}, [s.unwrap("a")]))
@example(({"a": ["x"]}, [s.wrap("a")]))
@example(({"k": "b"}, [s.convert("k", {"a": "b"})]))
def test_without_violations_the_inverse_gives_back_each_memory(case: tuple[Any, list[s.Operation]]) -> None:
    """The contract of the conditions: a memory that breaks none comes back exactly."""
    doc, operations = case
    broken = any(trace(operations, doc))
    event("breaks a condition" if broken else "breaks none")
    forward = apply(operations, doc)
    event("changes it" if not json_equal(forward, doc) else "leaves it")
    restored = apply(s.inverse_of(operations), forward)
    if not broken:
        assert json_equal(restored, doc)


@PURE
@given(documents, operation_lists())
def test_operations_never_touch_what_is_not_an_object(doc: Any, operations: list[s.Operation]) -> None:
    if not isinstance(doc, dict):
        assert apply(operations, doc) is doc
        assert not any(trace(operations, doc))
