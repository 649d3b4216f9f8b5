"""The dependency graph of migrations: pure data, no database."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping

import attrs

from .._errors import CyclicDependencyError, DuplicateMigrationError, MissingDependencyError
from .._model.metadata import MigrationMetadata, version_key

_Neighbours = Callable[[str], Iterable[str]]


@attrs.frozen
class MigrationGraph:
    """Migrations by id, validated as a DAG, with a deterministic topological order.

    Ties between migrations whose dependencies are equally satisfied are broken by version (compared
    as a version) and then by id.
    """

    nodes: Mapping[str, MigrationMetadata]
    order: tuple[str, ...]
    _positions: Mapping[str, int] = attrs.field(
        init=False,
        default=attrs.Factory(lambda self: {node: i for i, node in enumerate(self.order)}, takes_self=True),
    )

    @classmethod
    def build(cls, entries: Iterable[tuple[MigrationMetadata, str]]) -> MigrationGraph:
        """Build from ``(metadata, source)`` pairs; ``source`` names where each came from for errors."""
        nodes: dict[str, MigrationMetadata] = {}
        sources: dict[str, str] = {}
        for meta, source in entries:
            if meta.id in nodes:
                raise DuplicateMigrationError(meta.id, [sources[meta.id], source])
            nodes[meta.id] = meta
            sources[meta.id] = source
        for meta in nodes.values():
            for dependency in meta.dependencies:
                if dependency not in nodes:
                    others = [node for node in nodes if node != meta.id]  # never itself: a cycle
                    raise MissingDependencyError(meta.id, dependency, known=others)
        return cls(nodes, _topological_order(nodes))

    def __contains__(self, migration_id: object) -> bool:
        return migration_id in self.nodes

    def position(self, migration_id: str) -> int:
        """Index of a migration in the run order."""
        return self._positions[migration_id]

    def ancestors(self, migration_id: str) -> set[str]:
        """Every migration that ``migration_id`` depends on, directly or not."""
        return _reach(migration_id, lambda node: self.nodes[node].dependencies)

    def descendants(self, migration_id: str) -> set[str]:
        """Every migration that depends on ``migration_id``, directly or not."""
        dependents: dict[str, list[str]] = {node: [] for node in self.nodes}
        for meta in self.nodes.values():
            for dependency in meta.dependencies:
                dependents[dependency].append(meta.id)
        return _reach(migration_id, lambda node: dependents[node])


def _reach(start: str, neighbours: _Neighbours) -> set[str]:
    seen: set[str] = set()
    stack = list(neighbours(start))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(neighbours(node))
    return seen


def _topological_order(nodes: Mapping[str, MigrationMetadata]) -> tuple[str, ...]:
    """Kahn's algorithm with a heap keyed by (version, id); raises on a cycle, naming it."""
    waiting = {node: len(set(meta.dependencies)) for node, meta in nodes.items()}
    dependents: dict[str, list[str]] = {node: [] for node in nodes}
    for meta in nodes.values():
        for dependency in set(meta.dependencies):
            dependents[dependency].append(meta.id)

    def key(node: str) -> tuple[tuple[tuple[float, int | str], ...], str]:
        return version_key(nodes[node].version), node

    ready = [(key(node), node) for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (key(dependent), dependent))
    if len(order) < len(nodes):
        raise CyclicDependencyError(_find_cycle(nodes, {node for node, count in waiting.items() if count}))
    return tuple(order)


def _find_cycle(nodes: Mapping[str, MigrationMetadata], candidates: set[str]) -> list[str]:
    """A cycle among ``candidates`` (nodes Kahn's algorithm could not order), as ``[a, b, ..., a]``."""
    for start in sorted(candidates):
        path: list[str] = []
        on_path: dict[str, int] = {}
        node = start
        # Every unordered node has an unordered dependency, so following them must close a loop.
        while node not in on_path:
            on_path[node] = len(path)
            path.append(node)
            node = min(dep for dep in nodes[node].dependencies if dep in candidates)
        cycle = path[on_path[node] :]
        # Report in dependency direction: a depends on b depends on ... depends on a.
        return [*cycle, cycle[0]]
    raise AssertionError("no cycle among candidates")  # pragma: no cover
