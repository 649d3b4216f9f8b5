"""Lists of operations: flattened out of ``within``, and which of them are conditional, irreversible
or lossy."""

from __future__ import annotations

from collections.abc import Iterable

from .operation import Invertibility, Operation
from .paths import Path
from .within import Within


def flatten(operations: Iterable[Operation], root: Path = ()) -> list[tuple[Path, Operation]]:
    """Every operation that is not a ``within``, in order, with the path of the object it applies to."""
    leaves: list[tuple[Path, Operation]] = []
    for op in operations:
        if isinstance(op, Within):
            leaves.extend(flatten(op.operations, root + op.path))
        else:
            leaves.append((root, op))
    return leaves


def _shown(root: Path, op: Operation) -> Operation:
    return Within(root, (op,)) if root else op


def conditional(operations: Iterable[Operation]) -> list[Operation]:
    """The CONDITIONAL operations (those inside a ``within`` as ``within(path, [op])``)."""
    return [
        _shown(root, op) for root, op in flatten(operations) if op.invertibility is Invertibility.CONDITIONAL
    ]


def irreversible(operations: Iterable[Operation]) -> list[Operation]:
    """The IRREVERSIBLE operations (those inside a ``within`` as ``within(path, [op])``)."""
    return [
        _shown(root, op) for root, op in flatten(operations) if op.invertibility is Invertibility.IRREVERSIBLE
    ]


def needs_images(operations: Iterable[Operation]) -> bool:
    """Whether some operation is LOSSY, so before-images must be kept for an exact rollback."""
    return any(op.invertibility is Invertibility.LOSSY for _, op in flatten(operations))
