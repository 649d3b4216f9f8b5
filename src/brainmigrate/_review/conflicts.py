"""What the dependency graph leaves undecided: several heads, and pending migrations whose order
is not decided although they touch one table or column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._catalog.graph import MigrationGraph
from .report import Finding, FindingCode, Severity
from .statements import Access, Touch

_VERBS = {Access.READ: "reads", Access.WRITE: "writes", Access.DEFINE: "changes the definition of"}


def graph_heads(graph: MigrationGraph) -> tuple[str, ...]:
    """The migrations no other depends on, in run order."""
    depended_on = {dep for meta in graph.nodes.values() for dep in meta.dependencies}
    return tuple(mid for mid in graph.order if mid not in depended_on)


def several_heads(graph: MigrationGraph) -> list[Finding]:
    """A warning when the graph has more than one head."""
    heads = graph_heads(graph)
    if len(heads) < 2:
        return []
    return [
        Finding(
            code=FindingCode.SEVERAL_HEADS,
            severity=Severity.WARNING,
            migration_ids=heads,
            message=(
                f"{len(heads)} migrations have nothing depending on them, so their branches run in "
                "an order only versions decide; a new migration depending on all of them (as "
                "`brainmigrate new` writes it) joins the branches"
            ),
        )
    ]


def conflicts(
    graph: MigrationGraph, pending: Sequence[str], touches: Mapping[str, Sequence[Touch]]
) -> list[Finding]:
    """An error for each pair of pending migrations that touch one table or column in ways whose
    order matters, with no dependency path between them."""
    ancestors = {mid: graph.ancestors(mid) for mid in pending}
    findings: list[Finding] = []
    for index, first in enumerate(pending):
        for second in pending[index + 1 :]:
            if first in ancestors[second] or second in ancestors[first]:
                continue
            clashes = [
                (a, b) for a in touches.get(first, ()) for b in touches.get(second, ()) if a.clashes(b)
            ]
            if not clashes:
                continue
            a, b = clashes[0]
            where = ", ".join(dict.fromkeys(str(a if a.column is not None else b) for a, b in clashes))
            findings.append(
                Finding(
                    code=FindingCode.CONFLICT,
                    severity=Severity.ERROR,
                    migration_ids=(first, second),
                    message=(
                        f"{first!r} {_VERBS[a.access]} {a} and {second!r} {_VERBS[b.access]} {b}, and "
                        f"neither depends on the other, so the order they run in is not decided "
                        f"(touched by both: {where}); add {first!r} to the dependencies of {second!r} "
                        "(or the other way round)"
                    ),
                )
            )
    return findings
