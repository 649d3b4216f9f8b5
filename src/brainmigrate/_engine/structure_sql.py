"""The SQL of structure migrations: each memory's new value, the violated conditions, the shapes.

Every expression reads the column through ``->`` with text keys, which never indexes an array (a
segment is always a key), and writes with ``jsonb_set`` and ``#-`` only where every parent on the
path is known to be an object. Operations become a chain of stages, each a fenced ``LATERAL``
subquery (``OFFSET 0`` keeps the planner from inlining one stage into the next), so the text and the
cost of the expression grow linearly with the number of operations, however often a stage reads its
input (unfenced, each stage would copy its input's text wherever it reads it: exponential). On 100,000
rows the chain is as fast as nested scalar subqueries for a few operations, and faster for long
lists. Constants are embedded by :func:`quote_literal` alone: keys as text literals, values as jsonb ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import attrs

from .._errors import MigrationValidationError
from .._model.sqltext import quote_literal
from .._model.structure import (
    Add,
    Convert,
    Invertibility,
    Move,
    Operation,
    Path,
    Remove,
    Rename,
    Unwrap,
    Within,
    Wrap,
    flatten,
    json_text,
    parse_path,
    show_path,
)

#: How deep ``describe_query`` follows objects.
DESCRIBE_DEPTH = 8
JSON_TYPES = ("object", "array", "string", "number", "boolean", "null")

#: One stage: the SQL of the value after it, given the SQL of the value before it (a plain name).
Stage = Callable[[str], str]


def json_literal(value: object) -> str:
    """A JSON value as a jsonb constant."""
    return quote_literal(json_text(value)) + "::jsonb"


def _key(key: str) -> str:
    return quote_literal(key) + "::text"


def _array(path: Path) -> str:
    return "ARRAY[" + ", ".join(quote_literal(key) for key in path) + "]::text[]"


def _get(value: str, path: Path) -> str:
    """The value at ``path`` through objects only; NULL when absent (or a parent is not an object)."""
    if not path:
        return value
    return "(" + value + "".join(f" -> {_key(key)}" for key in path) + ")"


def _is_object(value: str, path: Path) -> str:
    return f"jsonb_typeof({_get(value, path)}) = 'object'"


def _nested(path: Path, value: str) -> str:
    for key in reversed(path):
        value = f"jsonb_build_object({_key(key)}, {value})"
    return value


def _place(v: str, root: Path, path: Path, value: str, *, keep_present: bool) -> str:
    """Set ``path`` to ``value``, creating missing parents below ``root``; unchanged if blocked."""
    whens = [f"WHEN {_get(v, path)} IS NOT NULL THEN {v}"] if keep_present else []
    whens.append(f"WHEN {_is_object(v, path[:-1])} THEN jsonb_set({v}, {_array(path)}, {value})")
    for k in range(len(path) - 2, len(root) - 1, -1):
        whens.append(
            f"WHEN {_is_object(v, path[:k])} AND {_get(v, path[: k + 1])} IS NULL "
            f"THEN jsonb_set({v}, {_array(path[: k + 1])}, {_nested(path[k + 1 :], value)})"
        )
    return "CASE " + " ".join(whens) + f" ELSE {v} END"


def _placeable(v: str, root: Path, path: Path) -> str:
    """Whether ``path`` could be set: its parent is an object, or is missing below an object."""
    ways = [_is_object(v, path[:-1])]
    ways += [
        f"({_is_object(v, path[:k])} AND {_get(v, path[: k + 1])} IS NULL)"
        for k in range(len(path) - 2, len(root) - 1, -1)
    ]
    return "(" + " OR ".join(ways) + ")"


def _delete(v: str, root: Path, path: Path) -> str:
    """Delete the (present) key at ``path`` and the parent objects below ``root`` left empty."""
    whens = []
    for j in range(len(path) - 1, len(root), -1):  # path[:j] is a parent that may be left empty
        whens.append(
            f"WHEN {_get(v, path[:j])} - {_key(path[j])} <> '{{}}'::jsonb THEN {v} #- {_array(path[: j + 1])}"
        )
    if not whens:
        return f"{v} #- {_array(path)}"
    return "CASE " + " ".join(whens) + f" ELSE {v} #- {_array(path[: len(root) + 1])} END"


def _one_element(value: str) -> str:
    return f"CASE WHEN jsonb_typeof({value}) = 'array' THEN jsonb_array_length({value}) = 1 ELSE false END"


def _stages(root: Path, op: Operation) -> list[Stage]:
    if isinstance(op, Rename):
        source, target = root + op.path, root + op.target

        def rename(v: str) -> str:
            moved = f"jsonb_set({v} #- {_array(source)}, {_array(target)}, {_get(v, source)})"
            return f"CASE WHEN {_get(v, source)} IS NOT NULL THEN {moved} ELSE {v} END"

        return [rename]
    if isinstance(op, Move):
        source, target = root + op.source, root + op.target

        def put(v: str) -> str:
            placed = _place(v, root, target, _get(v, source), keep_present=False)
            return f"CASE WHEN {_get(v, source)} IS NOT NULL THEN {placed} ELSE {v} END"

        def take(v: str) -> str:
            present = f"{_get(v, source)} IS NOT NULL AND {_placeable(v, root, target)}"
            return f"CASE WHEN {present} THEN {_delete(v, root, source)} ELSE {v} END"

        return [put, take]
    if isinstance(op, Add):
        path, value = root + op.path, json_literal(op.value)
        return [lambda v: _place(v, root, path, value, keep_present=True)]
    if isinstance(op, Remove):
        path = root + op.path
        return [lambda v: f"CASE WHEN {_get(v, path)} IS NOT NULL THEN {_delete(v, root, path)} ELSE {v} END"]
    if isinstance(op, Wrap):
        path = root + op.path

        def wrap(v: str) -> str:
            wrapped = f"jsonb_set({v}, {_array(path)}, jsonb_build_array({_get(v, path)}))"
            return f"CASE WHEN jsonb_typeof({_get(v, path)}) <> 'array' THEN {wrapped} ELSE {v} END"

        return [wrap]
    if isinstance(op, Unwrap):
        path = root + op.path

        def unwrap(v: str) -> str:
            value = _get(v, path)
            return (
                f"CASE WHEN {_one_element(value)} THEN jsonb_set({v}, {_array(path)}, {value} -> 0) "
                f"ELSE {v} END"
            )

        return [unwrap]
    if isinstance(op, Convert):
        path = root + op.path
        cases = " ".join(f"WHEN {json_literal(old)} THEN {json_literal(new)}" for old, new in op.table)

        def convert(v: str) -> str:
            return f"COALESCE(jsonb_set({v}, {_array(path)}, CASE {_get(v, path)} {cases} END), {v})"

        return [convert]
    raise TypeError(f"not a structure operation: {op!r}")


def _violation(root: Path, op: Operation, v: str) -> str:
    """True for a memory (its value ``v`` as the operation receives it) that breaks its condition."""

    def not_placeable(path: Path, start: int) -> str:
        bad = []
        for k in range(start, len(path)):
            parent = _get(v, path[:k])
            bad.append(f"COALESCE(jsonb_typeof({parent}) <> 'object' OR {parent} = '{{}}'::jsonb, false)")
        return " OR ".join(bad) if bad else "false"

    if isinstance(op, Rename):
        return f"{_get(v, root + op.target)} IS NOT NULL"
    if isinstance(op, Move):
        source, target = root + op.source, root + op.target
        return (
            f"{_get(v, target)} IS NOT NULL OR ({_get(v, source)} IS NOT NULL "
            f"AND ({not_placeable(target, len(root) + 1)}))"
        )
    if isinstance(op, Add):
        path = root + op.path
        return f"{_get(v, path)} IS NOT NULL OR {not_placeable(path, len(root) + 1)}"
    if isinstance(op, Wrap):
        return _one_element(_get(v, root + op.path))
    if isinstance(op, Unwrap):
        value = _get(v, root + op.path)
        return (
            f"CASE WHEN {value} IS NULL THEN false WHEN NOT {_one_element(value)} THEN true "
            f"ELSE jsonb_typeof({value} -> 0) = 'array' END"
        )
    if isinstance(op, Convert):
        values = ", ".join(json_literal(value) for value in op.unmapped_results())
        return f"{_get(v, root + op.path)} IN ({values})"
    raise TypeError(f"no condition for {op!r}")


def _chain(column: str, stages: Sequence[Stage], last: Stage) -> str:
    """``last`` applied to the value after ``stages``, as one scalar subquery of fenced stages."""
    parts = [f"(SELECT ({column})::jsonb AS v OFFSET 0) AS _bm0"]
    for n, stage in enumerate(stages, 1):
        parts.append(f"CROSS JOIN LATERAL (SELECT {stage(f'_bm{n - 1}.v')} AS v OFFSET 0) AS _bm{n}")
    return f"(SELECT {last(f'_bm{len(stages)}.v')} FROM {' '.join(parts)})"


def _all_stages(operations: Sequence[Operation]) -> list[tuple[Path, Operation, list[Stage]]]:
    return [(root, op, _stages(root, op)) for root, op in flatten(operations)]


def new_value(operations: Sequence[Operation], column: str) -> str:
    """An SQL expression (jsonb) of the column's value after ``operations``; ``column`` is SQL (such
    as ``"t"."metadata"``, already quoted) and is read once. Usable in an UPDATE's SET and WHERE."""
    stages = [stage for _, _, each in _all_stages(operations) for stage in each]
    if not stages:
        return f"({column})"
    return _chain(column, stages, lambda v: v)


@attrs.frozen
class Staged:
    """The operations applied one after another to a row's column, as fenced ``LATERAL`` stages to
    join after the row in one query, and the SQL of the value after the last of them."""

    #: ``CROSS JOIN LATERAL ...`` clauses, to follow the row's FROM item.
    joins: str
    #: The SQL of the value after every operation.
    final: str


def _stage_joins(column: str, stages: Sequence[Stage], alias: str) -> tuple[list[str], str]:
    """The fenced ``LATERAL`` joins of ``stages`` over ``column``, aliased ``alias0``, ``alias1``...,
    and the SQL of the value after the last."""
    joins = [f"CROSS JOIN LATERAL (SELECT ({column})::jsonb AS v OFFSET 0) AS {alias}0"]
    for n, stage in enumerate(stages, 1):
        joins.append(f"CROSS JOIN LATERAL (SELECT {stage(f'{alias}{n - 1}.v')} AS v OFFSET 0) AS {alias}{n}")
    return joins, f"{alias}{len(stages)}.v"


def staged(operations: Sequence[Operation], column: str) -> Staged:
    """The stages of ``operations`` over ``column`` (SQL, such as ``m."metadata"``), to join after
    the row the column belongs to."""
    stages = [stage for _, _, each in _all_stages(operations) for stage in each]
    joins, final = _stage_joins(column, stages, "_bm")
    return Staged(" ".join(joins), final)


def _top_keys(root: Path, op: Operation) -> frozenset[str]:
    """The keys of the column's object that ``op`` (applied at ``root``) reads or writes under."""
    return frozenset((root + path)[0] for path in op.paths)


def _reaching(leaves: Sequence[tuple[Path, Operation, list[Stage]]], index: int) -> tuple[int, ...]:
    """The operations before ``index`` whose effects can reach what the one at ``index`` reads.

    An operation changes nothing outside the top-level keys it names, so the value one receives
    agrees, under its keys, with the value after only those earlier operations that name one of
    them, followed back through the keys those name in turn.
    """
    keys = set(_top_keys(*leaves[index][:2]))
    reaching: list[int] = []
    for earlier in range(index - 1, -1, -1):
        named = _top_keys(*leaves[earlier][:2])
        if named & keys:
            reaching.append(earlier)
            keys |= named
    return tuple(sorted(reaching))


@attrs.frozen
class Conditions:
    """The conditions of a list's CONDITIONAL operations, as predicates over the stages each needs."""

    #: ``CROSS JOIN LATERAL ...`` clauses the predicates read, to follow the row's FROM item
    #: (none when every condition reads the column as it is).
    joins: str
    #: For each CONDITIONAL operation (those inside a ``within`` as ``within(path, [op])``): the
    #: operation, its condition, and an SQL predicate true for a memory breaking it.
    checks: tuple[tuple[Operation, str, str], ...]


def conditions(operations: Sequence[Operation], column: str) -> Conditions:
    """The conditions of ``operations`` over ``column``, each evaluated on the value its operation
    receives, computed from only the earlier operations that can reach it: most conditions read
    the column as it is, so checking them costs about one scan of the table."""
    leaves = _all_stages(operations)
    values: dict[tuple[int, ...], str] = {}
    joins: list[str] = []
    checks: list[tuple[Operation, str, str]] = []
    for index, (root, op, _) in enumerate(leaves):
        if op.invertibility is not Invertibility.CONDITIONAL:
            continue
        reaching = _reaching(leaves, index)
        if reaching not in values:
            stages = [stage for earlier in reaching for stage in leaves[earlier][2]]
            if stages:
                more, values[reaching] = _stage_joins(column, stages, f"_bmc{len(values)}_")
                joins.extend(more)
            else:
                values[reaching] = f"({column})::jsonb"
        condition = op.condition_at(root)
        assert condition is not None
        shown: Operation = Within(root, (op,)) if root else op
        predicate = f"COALESCE({_violation(root, op, values[reaching])}, false)"
        checks.append((shown, condition, predicate))
    return Conditions(" ".join(joins), tuple(checks))


def violations(operations: Sequence[Operation], column: str) -> list[tuple[Operation, str, str]]:
    """:func:`conditions` as standalone predicates over ``column``, each one scalar subquery."""
    found = conditions(operations, column)
    return [
        (op, condition, f"(SELECT {predicate} FROM (SELECT 1) AS _bmrow {found.joins})")
        for op, condition, predicate in found.checks
    ]


def _shape(spec: object, path: Path) -> tuple[tuple[str, ...], bool]:
    if not isinstance(spec, str) or not spec.strip():
        raise MigrationValidationError(
            f"invalid expected type {spec!r} for {show_path(path)}: pass a JSON type name as a string"
        )
    text = spec.strip()
    optional = text.endswith("?")
    names = tuple(name.strip() for name in text.removesuffix("?").split("|"))
    unknown = [name for name in names if name not in JSON_TYPES]
    if unknown:
        raise MigrationValidationError(
            f"unknown JSON type {unknown[0]!r} for {show_path(path)} in {spec!r}; use "
            f"{', '.join(JSON_TYPES[:-1])} or {JSON_TYPES[-1]}, joined by | for alternatives, with a "
            "trailing ? when the key may be absent (such as 'array|null?')"
        )
    return names, optional


def shape_violations(expected: Mapping[str | Path, str], column: str) -> list[tuple[str, str, str]]:
    """For each path of ``expected`` (a dotted string or a tuple, to a JSON type name such as
    ``"array"``, alternatives joined by ``|``, a trailing ``?`` when the key may be absent): its
    text, the type text, and an SQL predicate true for a memory whose value there is not of that
    type. A column that is SQL NULL or not an object is not checked (the operations leave it alone)."""
    if not isinstance(expected, Mapping):
        raise MigrationValidationError(
            f"invalid expected shape {expected!r}: pass a dict from paths to JSON type names, such as "
            "{'topics': 'array', 'analysis.sentiment': 'string?'}"
        )
    found = []
    for raw, spec in expected.items():
        path = parse_path(raw, what="shape path")
        names, optional = _shape(spec, path)
        wrong = ", ".join(quote_literal(name) for name in names)
        absent = "false" if optional else "true"
        predicate = (
            "(SELECT CASE WHEN jsonb_typeof(_bm.v) = 'object' "
            f"THEN COALESCE(jsonb_typeof({_get('_bm.v', path)}) NOT IN ({wrong}), {absent}) ELSE false END "
            f"FROM (SELECT ({column})::jsonb AS v OFFSET 0) AS _bm)"
        )
        found.append((show_path(path), "|".join(names) + ("?" if optional else ""), predicate))
    return found


#: The seed of the sample ``describe_query`` reads, so that other queries can read the same one.
SAMPLE_SEED = 7


def sampled(table: str, sample_percent: float) -> str:
    """``table`` sampled: the same blocks for the same percentage, in every query."""
    return f"{table} TABLESAMPLE SYSTEM ({float(sample_percent)!r}) REPEATABLE ({SAMPLE_SEED})"


def describe_query(table: str, column: str, *, sample_percent: float | None) -> str:
    """A query of rows ``(path text[], json_type text, memories bigint)``: every key path of the
    column's objects (into objects, not arrays, up to DESCRIBE_DEPTH keys deep), each JSON type
    found there and how many memories have it; over :func:`sampled` blocks if ``sample_percent``."""
    source = table
    if sample_percent is not None:
        if (
            isinstance(sample_percent, bool)
            or not isinstance(sample_percent, int | float)
            or not math.isfinite(sample_percent)
            or not 0 < sample_percent <= 100
        ):
            raise MigrationValidationError(
                f"invalid sample_percent {sample_percent!r}: pass a number above 0 and at most 100, or None "
                "to read every memory"
            )
        source = sampled(table, sample_percent)
    objects = "CASE WHEN jsonb_typeof({0}) = 'object' THEN {0} ELSE '{{}}'::jsonb END"
    return (
        "WITH RECURSIVE walk(path, value) AS ("
        f" SELECT ARRAY[e.key], e.value FROM (SELECT ({column})::jsonb AS doc FROM {source}) AS m"
        f" CROSS JOIN LATERAL jsonb_each({objects.format('m.doc')}) AS e"
        " UNION ALL"
        " SELECT w.path || e.key, e.value FROM walk AS w"
        f" CROSS JOIN LATERAL jsonb_each({objects.format('w.value')}) AS e"
        f" WHERE cardinality(w.path) < {DESCRIBE_DEPTH}"
        ") SELECT path, jsonb_typeof(value) AS json_type, count(*) AS memories"
        " FROM walk GROUP BY path, jsonb_typeof(value) ORDER BY path, json_type"
    )
