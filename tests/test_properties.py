"""Property tests of the pure parts (no database): ordering, versions, checksums, identifiers,
Retry-After parsing, progress arithmetic and configuration validation."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
import tenacity
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from brainmigrate import (
    ConfigError,
    CyclicDependencyError,
    MigrationConfig,
    MigrationMetadata,
    MigrationType,
    Progress,
    RetryPolicy,
)
from brainmigrate._catalog.graph import MigrationGraph
from brainmigrate._engine.sql import image_table
from brainmigrate._engine.transform import _wait, retry_after_seconds
from brainmigrate._model.metadata import version_key
from brainmigrate._model.sqltext import quote_ident, split_statements
from helpers import schema_migration

PURE = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# -- the dependency graph ---------------------------------------------------------------------

#: Valid migration ids: visible text (no control, formatting or surrogate characters) without
#: surrounding whitespace.
ids = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cf", "Cs"]), min_size=1, max_size=6
).filter(lambda s: s == s.strip() and bool(s))
versions = st.one_of(
    st.sampled_from(["1.0", "1.0.0", "2.9.0", "2.10.0", "1.0rc1", "0.1", "1"]),
    st.lists(st.integers(0, 12), min_size=1, max_size=4).map(lambda parts: ".".join(map(str, parts))),
)


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1) -> list[MigrationMetadata]:
    """Migrations where node ``i`` depends only on nodes with a lower index: a DAG by construction."""
    names = draw(st.lists(ids, min_size=min_size, max_size=12, unique=True))
    metas = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=4)) if i else []  # duplicates allowed
        metas.append(meta(name, draw(versions), [names[j] for j in deps]))
    return metas


def meta(migration_id: str, version: str, dependencies: list[str]) -> MigrationMetadata:
    return MigrationMetadata(
        id=migration_id,
        name=migration_id,
        version=version,
        migration_type=MigrationType.DATABASE_SCHEMA,
        dependencies=dependencies,
    )


def build(metas: list[MigrationMetadata]) -> MigrationGraph:
    return MigrationGraph.build((m, f"module.{m.id}") for m in metas)


@PURE
@given(metas=dags(), seed=st.randoms(use_true_random=False))
def test_the_order_is_a_deterministic_topological_order_of_every_migration(
    metas: list[MigrationMetadata], seed: random.Random
) -> None:
    """Every id appears once, after all its dependencies; shuffling the input changes nothing."""
    graph = build(metas)
    shuffled = list(metas)
    seed.shuffle(shuffled)

    assert sorted(m.id for m in metas) == sorted(graph.order)
    position = {node: i for i, node in enumerate(graph.order)}
    for m in metas:
        for dependency in m.dependencies:
            assert position[dependency] < position[m.id]
    assert graph.order == build(shuffled).order
    assert [graph.position(node) for node in graph.order] == list(range(len(metas)))


@PURE
@given(metas=dags())
def test_ties_go_to_the_lowest_version_then_id_among_the_ready_migrations(
    metas: list[MigrationMetadata],
) -> None:
    """At each step the order takes the ready migration with the smallest (version, id)."""
    graph = build(metas)
    by_id = {m.id: m for m in metas}
    placed: set[str] = set()
    for node in graph.order:
        ready = [m.id for m in metas if m.id not in placed and set(m.dependencies) <= placed]
        expected = min(ready, key=lambda mid: (version_key(by_id[mid].version), mid))
        assert expected == node
        placed.add(node)


@PURE
@given(metas=dags())
def test_ancestors_and_descendants_are_the_transitive_closure_and_its_inverse(
    metas: list[MigrationMetadata],
) -> None:
    """ancestors(x) is every migration x reaches through dependencies; y is a descendant of x iff
    x is an ancestor of y; ancestors run before."""
    graph = build(metas)
    by_id = {m.id: m for m in metas}

    def closure(node: str) -> set[str]:
        found: set[str] = set()
        frontier = list(by_id[node].dependencies)
        while frontier:
            dep = frontier.pop()
            if dep not in found:
                found.add(dep)
                frontier.extend(by_id[dep].dependencies)
        return found

    for m in metas:
        assert closure(m.id) == graph.ancestors(m.id)
        assert all(graph.position(a) < graph.position(m.id) for a in graph.ancestors(m.id))
        expected = {other.id for other in metas if m.id in closure(other.id)}
        assert expected == graph.descendants(m.id)


@st.composite
def cyclic_graphs(draw: st.DrawFn) -> list[MigrationMetadata]:
    """A DAG with a planted cycle through 1 to 4 of its nodes (1: a self-dependency)."""
    metas = draw(dags())
    members = draw(st.lists(st.sampled_from(range(len(metas))), min_size=1, max_size=4, unique=True))
    deps = {m.id: list(m.dependencies) for m in metas}
    for k, index in enumerate(members):
        deps[metas[index].id].append(metas[members[(k + 1) % len(members)]].id)
    return [meta(m.id, m.version, deps[m.id]) for m in metas]


@PURE
@given(metas=cyclic_graphs())
def test_a_planted_cycle_is_refused_naming_a_real_cycle(metas: list[MigrationMetadata]) -> None:
    """CyclicDependencyError's cycle is a closed walk a -> b -> ... -> a along real dependencies,
    visiting each migration once."""
    by_id = {m.id: m for m in metas}
    with pytest.raises(CyclicDependencyError) as caught:
        build(metas)

    cycle = caught.value.cycle
    assert cycle[0] == cycle[-1]
    assert len(cycle) >= 2
    assert len(set(cycle[:-1])) == len(cycle) - 1
    for node, dependency in itertools.pairwise(cycle):
        assert dependency in by_id[node].dependencies
    assert caught.value.migration_id == cycle[0]


# -- versions ---------------------------------------------------------------------------------

numeric = st.lists(st.integers(0, 30), min_size=1, max_size=5)


def dotted(parts: list[int], padding: Sequence[int] = ()) -> str:
    """``parts`` joined by dots, part ``i`` zero-padded by ``padding[i]`` extra digits (1.02.3)."""
    pads = [*padding, *[0] * len(parts)]
    return ".".join(str(part).zfill(len(str(part)) + pad) for part, pad in zip(parts, pads, strict=False))


def release(parts: list[int]) -> tuple[int, ...]:
    """The parts without trailing zeros: 1.0.0 is 1."""
    trimmed = list(parts)
    while trimmed and trimmed[-1] == 0:
        trimmed.pop()
    return tuple(trimmed)


def compare(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


@PURE
@example(a=[2, 10, 0], b=[2, 9, 0], pad=[])
@example(a=[1, 0], b=[1, 0, 0], pad=[])
@given(a=numeric, b=numeric, pad=st.lists(st.integers(0, 2), max_size=5))
def test_numeric_versions_compare_like_tuples_of_integers(a: list[int], b: list[int], pad: list[int]) -> None:
    """Dotted numbers compare as integer tuples, trailing zeros and zero padding ignored."""
    expected = compare(release(a), release(b))
    assert expected == compare(version_key(dotted(a, pad)), version_key(dotted(b)))


@PURE
@example(parts=[1, 0], tag="rc", number=1)
@given(
    parts=numeric,
    tag=st.sampled_from(["a", "b", "rc", "alpha", "beta", "RC", "dev", "pre"]),
    number=st.none() | st.integers(0, 20),
)
def test_a_prerelease_sorts_before_its_release_and_after_earlier_releases(
    parts: list[int], tag: str, number: int | None
) -> None:
    """1.0rc1 < 1.0 (and 1.0.0), and any release older than 1.0 is older than 1.0rc1 too."""
    base = dotted(parts)
    pre = f"{base}{tag}{'' if number is None else number}"
    assert version_key(pre) < version_key(base)
    assert version_key(pre) < version_key(base + ".0")
    if release(parts):
        older = list(release(parts))
        older[-1] -= 1
        assert version_key(dotted(older)) < version_key(pre)


version_text = st.one_of(
    st.text(max_size=12),
    st.text("0123456789.-abcrRC_ +", max_size=12),
    st.lists(st.integers(0, 5), max_size=4).map(lambda p: ".".join(map(str, p))),
)


@PURE
@given(a=version_text, b=version_text, c=version_text)
def test_version_order_is_a_total_preorder_on_any_text(a: str, b: str, c: str) -> None:
    """Any strings compare without error; exactly one of <, ==, > holds; the order is antisymmetric
    and transitive (so sorting by it is well defined)."""
    ka, kb, kc = version_key(a), version_key(b), version_key(c)
    assert sum([ka < kb, ka == kb, ka > kb]) == 1
    assert compare(ka, kb) == -compare(kb, ka)
    if ka <= kb and kb <= kc:
        assert ka <= kc
    if ka == kb:
        assert compare(ka, kc) == compare(kb, kc)


# -- checksums --------------------------------------------------------------------------------

words = st.sampled_from(
    ["CREATE", "TABLE", "t", "(id", "int)", "ALTER", "ADD", "COLUMN", "'x'", "--", "a.b", "1", "=", ";"]
) | st.text(
    st.characters(codec="utf-8", exclude_categories=["Zs", "Zl", "Zp", "Cc", "Cs"]), min_size=1, max_size=4
)
lines = st.lists(words, min_size=1, max_size=5).map(" ".join)
#: Statements holding some SQL: one of only comments or semicolons is refused when it is read.
statement = (
    st.lists(lines, min_size=1, max_size=3).map("\n".join).filter(lambda text: bool(split_statements(text)))
)
statements = st.lists(statement, min_size=1, max_size=3)
blank = st.sampled_from(["", " ", "\t", "  \t "])
newline = st.sampled_from(["\n", "\r\n"])


def checksum(forward: Sequence[str], rollback: Sequence[str] = (), migration_id: str = "m1") -> str:
    migration = schema_migration(migration_id, forward, list(rollback))()
    return asyncio.run(migration.checksum())


@st.composite
def reformatted(draw: st.DrawFn, statement: str) -> str:
    """The statement re-indented, with blank lines added and whitespace around it."""
    out = [draw(blank)]
    for line in statement.splitlines():
        out.extend(draw(blank) + draw(newline) for _ in range(draw(st.integers(0, 2))))
        out.append(draw(blank) + line + draw(blank) + draw(newline))
    out.append(draw(blank))
    return "".join(out)


@PURE
@given(data=st.data(), forward=statements)
def test_the_checksum_ignores_indentation_blank_lines_and_surrounding_whitespace(
    data: st.DataObject, forward: list[str]
) -> None:
    """Re-indenting a statement, adding blank lines or whitespace around it is not drift."""
    layout = [data.draw(reformatted(statement)) for statement in forward]
    assert checksum(forward) == checksum(layout)


visible = st.characters(codec="utf-8").filter(lambda ch: not ch.isspace() and ch != "\0")


@PURE
@given(data=st.data(), forward=statements, replacement=visible)
def test_the_checksum_changes_with_any_visible_character(
    data: st.DataObject, forward: list[str], replacement: str
) -> None:
    """Changing, removing or adding one non-whitespace character of one statement is drift."""
    which = data.draw(st.integers(0, len(forward) - 1))
    statement = forward[which]
    spots = [i for i, ch in enumerate(statement) if not ch.isspace()]
    i = data.draw(st.sampled_from(spots))
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    if kind == "replace":
        assume(replacement != statement[i])
        changed = statement[:i] + replacement + statement[i + 1 :]
    elif kind == "delete":
        assume(len(spots) > 1)  # an empty statement is refused, not checksummed
        changed = statement[:i] + statement[i + 1 :]
    else:
        changed = statement[:i] + replacement + statement[i:]
    assume(split_statements(changed))  # a statement left without SQL is refused, not checksummed
    edited = [*forward[:which], changed, *forward[which + 1 :]]
    assert checksum(forward) != checksum(edited)


@PURE
@given(forward=statements, extra=statement, rollback=st.lists(lines, max_size=2), other=ids)
def test_the_checksum_covers_statement_boundaries_and_the_id_but_not_the_rollback(
    forward: list[str], extra: str, rollback: list[str], other: str
) -> None:
    """Adding a statement, merging two, or changing the id is drift; editing the rollback is not."""
    base = checksum(forward)
    assert base != checksum([*forward, extra])
    if len(forward) > 1:
        assert base != checksum(["\n".join(forward[:2]), *forward[2:]])
    assert base == checksum(forward, rollback)
    if other != "m1":
        assert base != checksum(forward, migration_id=other)


# -- identifiers ------------------------------------------------------------------------------

name_chars = st.characters(codec="utf-8", exclude_characters="\0")
valid_names = st.one_of(
    st.text(name_chars, min_size=1, max_size=20),
    st.text('"ab ', min_size=1, max_size=30),
).filter(lambda s: len(s.encode()) <= 63)


@PURE
@example(name='my"schema')
@example(name='"')
@example(name="x" * 63)
@example(name="é" * 31)
@given(name=valid_names)
def test_a_quoted_identifier_reads_back_as_the_name(name: str) -> None:
    """quote_ident wraps in double quotes and doubles inner quotes: PostgreSQL's rules undo it."""
    quoted = quote_ident(name)
    assert quoted.startswith('"') and quoted.endswith('"') and len(quoted) >= 3
    inner = quoted[1:-1]
    assert '"' not in inner.replace('""', "")
    assert name == inner.replace('""', '"')


@st.composite
def too_long_names(draw: st.DrawFn) -> str:
    base = draw(st.text(name_chars, max_size=30))
    return base + "x" * max(0, 64 - len(base.encode()))


@PURE
@example(name="")
@example(name="\0")
@example(name="x" * 64)
@example(name="é" * 32)
@given(
    name=st.one_of(
        st.just(""),
        st.tuples(st.text(name_chars, max_size=10), st.text(name_chars, max_size=10)).map(
            lambda p: p[0] + "\0" + p[1]
        ),
        too_long_names(),
    )
)
def test_an_empty_nul_or_over_63_byte_identifier_is_refused(name: str) -> None:
    """PostgreSQL names are 1 to 63 bytes of UTF-8 without NUL; anything else raises ValueError.

    (Longer names would be silently truncated by the server, so two could collide.)
    """
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        quote_ident(name)


migration_ids = st.text(name_chars, min_size=1, max_size=120)
non_ascii_prefixes = st.text(st.characters(min_codepoint=0x80, codec="utf-8"), min_size=40, max_size=80)


@PURE
@example(migration_id="é" * 80)
@example(migration_id="记忆迁移" * 20)
@given(migration_id=migration_ids | non_ascii_prefixes)
def test_a_before_image_table_name_fits_in_63_bytes(migration_id: str) -> None:
    """The name PostgreSQL stores is the name brainmigrate uses: at most 63 bytes of UTF-8."""
    assert len(image_table(migration_id).encode()) <= 63


@PURE
@example(prefix="é" * 40, a="a", b="b")
@example(prefix="x", a="A", b="a")
@example(prefix="x", a="-", b="_")
@given(
    prefix=non_ascii_prefixes | st.text(name_chars, max_size=60),
    a=st.text(name_chars, max_size=8),
    b=st.text(name_chars, max_size=8),
)
def test_distinct_migrations_get_distinct_before_image_tables(prefix: str, a: str, b: str) -> None:
    """Ids sharing a long (non-ASCII) prefix, or differing only in case or punctuation, get different
    names, also once cut to PostgreSQL's 63 bytes."""
    assume(a != b and (prefix + a).strip() and (prefix + b).strip())
    first, second = image_table(prefix + a), image_table(prefix + b)
    assert first.encode()[:63] != second.encode()[:63]


# -- Retry-After ------------------------------------------------------------------------------


class Asked(Exception):
    """An error that names its wait in ``retry_after``."""

    def __init__(self, value: Any) -> None:
        super().__init__("rate limited")
        self.retry_after = value


class Responded(Exception):
    """An error carrying an HTTP response with a Retry-After header."""

    def __init__(self, value: Any) -> None:
        super().__init__("429")
        self.response = SimpleNamespace(headers={"Retry-After": value})


def http_date(moment: datetime, style: int) -> str:
    if style == 0:
        return format_datetime(moment, usegmt=True)
    if style == 1:
        return format_datetime(moment)  # +0000
    return format_datetime(moment.replace(tzinfo=None))  # -0000: no zone given


numbers = st.one_of(
    st.integers(),
    st.floats(),
    st.sampled_from([2**1024, -(2**1024), float("nan"), float("inf"), -float("inf"), True, 0, -0.0]),
)
dates = st.builds(
    http_date,
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    st.integers(0, 2),
)
garbage = st.one_of(
    st.none(),
    st.text(),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(object),
    st.sampled_from(
        [
            "1e400",
            "-5",
            "nan",
            "inf",
            " 7 ",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Mon, 01 Jan 0001 00:00:00 -1200",
        ]
    ),
    st.sampled_from([timedelta(seconds=5), complex(1, 1)]),
)
retry_values = numbers | numbers.map(str) | dates | garbage


@PURE
@example(value=2**1024)
@example(value="Fri, 31 Dec 9999 23:59:59 -1200")
@example(value="Mon, 01 Jan 0001 00:00:00 +1400")
@given(value=retry_values)
def test_retry_after_is_always_a_finite_non_negative_number(value: Any) -> None:
    """Whatever retry_after or Retry-After holds (number, text, HTTP date, junk), the wait is a finite
    float >= 0 and reading it never raises."""
    for exc in (Asked(value), Responded(value)):
        seconds = retry_after_seconds(exc)
        assert isinstance(seconds, float)
        assert math.isfinite(seconds)
        assert seconds >= 0


@PURE
@given(value=st.floats(min_value=1e-9, max_value=1e12) | st.integers(1, 10**12), as_text=st.booleans())
def test_a_positive_retry_after_is_taken_as_it_is(value: float, as_text: bool) -> None:
    """A positive number of seconds (or its text) is the wait."""
    given_value = str(value) if as_text else value
    assert float(value) == retry_after_seconds(Asked(given_value))
    assert float(value) == retry_after_seconds(Responded(given_value))


@PURE
@given(ahead=st.integers(60, 10**8), style=st.integers(0, 1), past=st.booleans())
def test_an_http_date_asks_for_the_time_until_it(ahead: int, style: int, past: bool) -> None:
    """A future date waits until then (to the second); a past date waits nothing."""
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=-ahead if past else ahead)
    expected = 0.0 if past else moment.timestamp() - time.time()
    assert math.isclose(expected, retry_after_seconds(Responded(http_date(moment, style))), abs_tol=2.0)


policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 100),
    initial_delay=st.floats(0, 60),
    max_delay=st.floats(0, 600),
    jitter=st.floats(0, 60),
)


@PURE
@example(policy=RetryPolicy(), attempt=1, value=2**1024)
@example(policy=RetryPolicy(initial_delay=1, max_delay=2), attempt=3, value="120")
@given(policy=policies, attempt=st.integers(1, 200), value=retry_values)
def test_the_retry_wait_is_never_shorter_than_the_error_asks(
    policy: RetryPolicy, attempt: int, value: Any
) -> None:
    """The wait is at least the Retry-After and at least the policy's backoff floor, and finite."""
    exc = Asked(value)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    state.outcome = tenacity.Future.construct(attempt, exc, True)

    waited = _wait(policy)(state)

    try:
        floor = min(policy.initial_delay * 2 ** (attempt - 1), policy.max_delay)
    except OverflowError:
        floor = policy.max_delay
    assert waited >= retry_after_seconds(exc)
    assert waited >= floor
    assert math.isfinite(waited)


# -- progress ---------------------------------------------------------------------------------

counts = st.integers(0, 10**12)
moment = datetime(2026, 1, 1, tzinfo=UTC)


@PURE
@example(processed=5, failed=0, skipped=0, total=0, rate=1.0)
@example(processed=50, failed=0, skipped=0, total=10, rate=2.0)
@given(
    processed=counts,
    failed=counts,
    skipped=counts,
    total=st.none() | counts,
    rate=st.none() | st.just(0.0) | st.floats(min_value=1e-6, max_value=1e9),
)
def test_progress_fraction_and_eta_are_bounded_and_consistent(
    processed: int, failed: int, skipped: int, total: int | None, rate: float | None
) -> None:
    """done sums the counts; fraction is in [0, 1] (None without a total); eta is >= 0 and equals
    what is left over the rate (None without a total or a rate)."""
    progress = Progress(
        migration_id="m",
        status="running",
        processed=processed,
        failed=failed,
        skipped=skipped,
        total=total,
        batch_number=0,
        rate=rate,
        started_at=moment,
        updated_at=moment,
    )
    assert processed + failed + skipped == progress.done
    if not total:
        assert progress.fraction is None
    else:
        assert progress.fraction is not None and 0.0 <= progress.fraction <= 1.0
        assert min(1.0, progress.done / total) == progress.fraction
    if total is None or not rate:
        assert progress.eta_seconds is None
    else:
        assert progress.eta_seconds is not None and progress.eta_seconds >= 0
        assert max(0, total - progress.done) / rate == progress.eta_seconds


# -- configuration ----------------------------------------------------------------------------

#: Every numeric setting: (low, high, integer only), as documented.
NUMERIC = {
    MigrationConfig: {
        "batch_size": (1, 100_000, True),
        "checkpoint_frequency": (1, 10_000_000, True),
        "timeout_seconds": (0.001, 7 * 24 * 3600, False),
        "lock_wait_seconds": (0, 24 * 3600, False),
        "statement_lock_timeout_ms": (1, 3_600_000, True),
        "concurrency": (1, 1000, True),
        "max_workers": (1, 64, True),
        "rate_limit": (0.001, 1_000_000, False),
        "lease_seconds": (1, 24 * 3600, False),
        "dry_run_sample": (1, 100_000, True),
    },
    RetryPolicy: {
        "attempts": (1, 100, True),
        "initial_delay": (0, 60, False),
        "max_delay": (0, 600, False),
        "jitter": (0, 60, False),
    },
}
BOOLEAN = {
    MigrationConfig: [
        "dry_run",
        "enable_rollback",
        "validate_before",
        "validate_after",
        "parallel_execution",
        "continue_on_error",
        "allow_checksum_drift",
    ],
    RetryPolicy: [],
}
OTHER = {MigrationConfig: ["retry"], RetryPolicy: []}
wrong_types = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
    st.just(b"1"),
)


def test_the_tables_below_cover_every_setting() -> None:
    """A new setting without a validation property here is noticed."""
    for cls in (MigrationConfig, RetryPolicy):
        expected = sorted(f.name for f in attrs.fields(cls))
        assert expected == sorted([*NUMERIC[cls], *BOOLEAN[cls], *OTHER[cls]])


@st.composite
def numeric_setting(draw: st.DrawFn, valid: bool) -> tuple[type, str, Any]:
    cls = draw(st.sampled_from([MigrationConfig, RetryPolicy]))
    name = draw(st.sampled_from(sorted(NUMERIC[cls])))
    low, high, integer = NUMERIC[cls][name]
    if valid:
        value = draw(
            st.integers(math.ceil(low), high)
            if integer
            else st.floats(low, high) | st.integers(math.ceil(low), high)
        )
    else:
        if integer:
            below, above = st.integers(max_value=low - 1), st.integers(min_value=high + 1)
        else:  # (-0.0 is not below 0)
            below = st.floats(max_value=low).filter(lambda v: v < low)
            above = st.floats(min_value=high).filter(lambda v: v > high)
        wrong = [below, above, wrong_types, st.booleans()]
        if integer:
            wrong.append(st.floats(low, high))  # 5.0 is not an integer
        else:
            wrong.append(st.just(float("nan")))
        value = draw(st.one_of(*wrong))
        if name == "rate_limit":
            assume(value is not None)
    return cls, name, value


@PURE
@given(setting=numeric_setting(valid=True))
def test_in_range_numbers_are_accepted(setting: tuple[type, str, Any]) -> None:
    """Every value within a setting's documented range (of its type) is kept as given."""
    cls, name, value = setting
    assert value == getattr(cls(**{name: value}), name)


@PURE
@example(setting=(MigrationConfig, "batch_size", True))
@example(setting=(MigrationConfig, "timeout_seconds", float("inf")))
@example(setting=(RetryPolicy, "attempts", 2.0))
@given(setting=numeric_setting(valid=False))
def test_out_of_range_or_wrongly_typed_numbers_raise_config_error(setting: tuple[type, str, Any]) -> None:
    """Below or above the range, NaN, a bool, a float for an integer, or not a number: ConfigError,
    which is also a ValueError."""
    cls, name, value = setting
    with pytest.raises(ConfigError) as caught:
        cls(**{name: value})
    assert isinstance(caught.value, ValueError)


@PURE
@given(
    name=st.sampled_from(BOOLEAN[MigrationConfig]),
    value=wrong_types | st.integers() | st.floats(),
    flag=st.booleans(),
)
def test_switches_take_only_true_or_false(name: str, value: Any, flag: bool) -> None:
    """A bool setting accepts True and False, and refuses 0, 1, "yes" or None with ConfigError."""
    assert flag == getattr(MigrationConfig(**{name: flag}), name)
    with pytest.raises(ConfigError):
        MigrationConfig(**{name: value})


@PURE
@given(value=wrong_types | st.integers() | st.builds(MigrationConfig))
def test_retry_must_be_a_retry_policy(value: Any) -> None:
    """retry= takes a RetryPolicy and nothing else."""
    with pytest.raises(ConfigError):
        MigrationConfig(retry=value)


def test_rate_limit_none_means_unlimited() -> None:
    """rate_limit=None is accepted: no limit."""
    assert MigrationConfig(rate_limit=None).rate_limit is None
