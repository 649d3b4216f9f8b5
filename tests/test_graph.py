"""The dependency graph: ordering and validation, with no database."""

from __future__ import annotations

import pytest

from brainmigrate import (
    CyclicDependencyError,
    DuplicateMigrationError,
    MigrationMetadata,
    MigrationType,
    MissingDependencyError,
)
from brainmigrate._catalog.graph import MigrationGraph


def meta(migration_id: str, version: str = "1.0.0", *dependencies: str) -> MigrationMetadata:
    return MigrationMetadata(
        id=migration_id,
        name=migration_id,
        version=version,
        migration_type=MigrationType.DATABASE_SCHEMA,
        dependencies=list(dependencies),
    )


def graph(*metas: MigrationMetadata) -> MigrationGraph:
    return MigrationGraph.build((m, f"module.{m.id}") for m in metas)


def test_dependencies_run_before_their_dependents() -> None:
    """A migration runs after everything it depends on, whatever its version."""
    order = graph(meta("b", "1.0.0", "a"), meta("a", "9.0.0"), meta("c", "0.1.0", "b")).order
    assert order == ("a", "b", "c")


def test_ties_are_broken_by_version_compared_as_a_version() -> None:
    """Independent migrations run by version, where 2.10.0 comes after 2.9.0."""
    order = graph(meta("x", "2.10.0"), meta("y", "2.9.0"), meta("z", "2.9.1")).order
    assert order == ("y", "z", "x")


def test_equal_versions_are_ordered_by_id() -> None:
    """With equal versions, the id decides, so the order never depends on discovery order."""
    assert graph(meta("m2"), meta("m1"), meta("m3")).order == ("m1", "m2", "m3")
    assert graph(meta("m3"), meta("m1"), meta("m2")).order == ("m1", "m2", "m3")


def test_a_cycle_is_named_in_dependency_order() -> None:
    """A cycle raises CyclicDependencyError whose message shows the whole loop."""
    with pytest.raises(CyclicDependencyError) as caught:
        graph(meta("a", "1", "c"), meta("b", "1", "a"), meta("c", "1", "b"), meta("d", "1"))
    assert caught.value.cycle == ("a", "c", "b", "a")
    assert "cyclic dependency: a -> c -> b -> a" in str(caught.value)


def test_a_self_dependency_is_a_cycle() -> None:
    """A migration that depends on itself is a cycle of one."""
    with pytest.raises(CyclicDependencyError, match="a -> a"):
        graph(meta("a", "1", "a"))


def test_an_unknown_dependency_is_missing() -> None:
    """Depending on an id no migration has raises MissingDependencyError naming both ids."""
    with pytest.raises(MissingDependencyError) as caught:
        graph(meta("a"), meta("b", "1", "nope"))
    assert (caught.value.migration_id, caught.value.missing) == ("b", "nope")
    assert "'b' depends on 'nope', which is not a known migration" in str(caught.value)


def test_two_migrations_with_one_id_are_refused() -> None:
    """Duplicate ids raise DuplicateMigrationError naming where both came from."""
    with pytest.raises(DuplicateMigrationError) as caught:
        graph(meta("a"), meta("a", "2.0"))
    assert caught.value.sources == ("module.a", "module.a")
    assert "duplicate migration id 'a'" in str(caught.value)


def test_descendants_and_ancestors_are_transitive() -> None:
    """The graph answers who depends on a migration, directly or not, and the reverse."""
    g = graph(meta("a"), meta("b", "1", "a"), meta("c", "1", "b"), meta("d", "1"))
    assert g.descendants("a") == {"b", "c"}
    assert g.ancestors("c") == {"a", "b"}
    assert g.descendants("d") == set()
