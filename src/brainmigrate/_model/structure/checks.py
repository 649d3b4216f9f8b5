"""Checking a migration's list of operations: refusing one that is empty, holds something else, or
contradicts itself."""

from __future__ import annotations

from ..._errors import MigrationValidationError
from .key_operations import Add, Move, Remove, Rename
from .lists import _shown
from .operation import Operation
from .paths import Path, show_path
from .value_operations import Unwrap, Wrap
from .within import Within


def _related(one: Path, other: Path) -> bool:
    """Whether one path is the other or inside it, or the other way round."""
    return one[: len(other)] == other or other[: len(one)] == one


class _Checker:
    """Follows what each operation leaves behind, to refuse one that contradicts an earlier one."""

    def __init__(self, migration_id: str) -> None:
        self.migration_id = migration_id
        self.gone: dict[Path, str] = {}  # moved or removed, and not put back since
        self.written: dict[Path, str] = {}  # put there by a rename, move or add
        self.wrapped: dict[Path, str] = {}  # turned into an array
        self.label = ""

    def fail(self, problem: str, remedy: str) -> None:
        raise MigrationValidationError(
            f"structure migration {self.migration_id!r}: {self.label} {problem}; {remedy}",
            migration_id=self.migration_id,
        )

    def _inside_array(self, path: Path) -> None:
        for k in range(1, len(path)):
            if path[:k] in self.wrapped:
                self.fail(
                    f"works inside {show_path(path[:k])}, which {self.wrapped[path[:k]]} turned into an "
                    "array (paths do not go into arrays)",
                    "reorder the operations, or unwrap it first",
                )

    def read(self, path: Path) -> None:
        for k in range(1, len(path) + 1):
            if path[:k] in self.gone:
                self.fail(
                    f"works on {show_path(path)}, but {self.gone[path[:k]]} before it took "
                    f"{show_path(path[:k])} away",
                    "reorder the operations, or use the path it has by then",
                )
        self._inside_array(path)

    def write(self, path: Path, by: str) -> None:
        self._inside_array(path)
        if path in self.written:
            self.fail(
                f"puts a value at {show_path(path)}, where {self.written[path]} already put one",
                "drop one of them, or send one of the values elsewhere",
            )
        for other in [p for p in self.gone if _related(p, path)]:
            del self.gone[other]
        for known in (self.written, self.wrapped):
            for other in [p for p in known if p[: len(path)] == path]:
                del known[other]
        self.written[path] = by

    def take(self, path: Path, by: str) -> None:
        for known in (self.written, self.wrapped, self.gone):
            for other in [p for p in known if p[: len(path)] == path]:
                del known[other]
        self.gone[path] = by

    def visit(self, op: Operation, root: Path, label: str) -> None:
        self.label = label
        shown = str(_shown(root, op))
        if isinstance(op, Rename | Move):
            source, target = (op.path, op.target) if isinstance(op, Rename) else (op.source, op.target)
            self.read(root + source)
            self.take(root + source, shown)
            self.write(root + target, shown)
        elif isinstance(op, Add):
            self.write(root + op.path, shown)
        elif isinstance(op, Remove):
            self.read(root + op.path)
            self.take(root + op.path, shown)
        elif isinstance(op, Wrap):
            self.read(root + op.path)
            if root + op.path in self.wrapped:
                self.fail(
                    f"wraps {show_path(root + op.path)} again after {self.wrapped[root + op.path]}",
                    "drop one of them",
                )
            self.wrapped[root + op.path] = shown
        elif isinstance(op, Unwrap):
            self.read(root + op.path)
            self.wrapped.pop(root + op.path, None)
        elif isinstance(op, Within):
            self.read(root + op.path)
            for inner in op.operations:
                self.visit(inner, root + op.path, label)
        else:
            self.read(root + op.paths[0])


def check_operations(operations: object, migration_id: str) -> None:
    """Refuse a list of operations that is empty, holds something else, or contradicts itself.

    Contradictions: two renames, moves or adds putting a value at one key (without it being taken
    away in between); an operation on a path an earlier one moved or removed (and did not put back);
    an operation inside a path an earlier one wrapped into an array; wrapping one path twice.
    Renames to the same name and moves into their own subtree cannot be built at all.
    """
    if not isinstance(operations, list | tuple):
        raise MigrationValidationError(
            f"structure migration {migration_id!r}: its operations are a {type(operations).__name__}; "
            "declare them as a list, such as [rename('topic', 'topics')]",
            migration_id=migration_id,
        )
    if not operations:
        raise MigrationValidationError(
            f"structure migration {migration_id!r} has no operations; declare at least one, such as "
            "rename('topic', 'topics')",
            migration_id=migration_id,
        )
    checker = _Checker(migration_id)
    for index, op in enumerate(operations, 1):
        if not isinstance(op, Operation):
            raise MigrationValidationError(
                f"structure migration {migration_id!r}: operation {index} is {op!r}, a "
                f"{type(op).__name__}; build operations with the functions of brainmigrate.structure",
                migration_id=migration_id,
            )
        checker.visit(op, (), f"operation {index}, {op},")
