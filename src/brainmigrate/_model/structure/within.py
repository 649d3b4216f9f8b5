""":class:`Within`: operations applied to the object at a path, their paths relative to it."""

from __future__ import annotations

import attrs

from ..._errors import MigrationValidationError
from .operation import _RANK, Invertibility, Operation, inverse_of
from .paths import Path, parse_path, show_path


def _within_path(value: object) -> Path:
    return parse_path(value, what="within path")


def _operations(operations: object) -> tuple[Operation, ...]:
    if not isinstance(operations, list | tuple):
        raise MigrationValidationError(
            f"invalid operations {operations!r}: within() takes a list of operations, such as "
            "[rename('mood', 'feeling')]"
        )
    if not operations:
        raise MigrationValidationError(
            "within() got an empty list of operations, which does nothing; give it at least one"
        )
    for item in operations:
        if not isinstance(item, Operation):
            raise MigrationValidationError(
                f"invalid operation {item!r} in within(): it is a {type(item).__name__}; build "
                "operations with rename(), move(), add(), remove(), wrap(), unwrap(), convert() or within()"
            )
    return tuple(operations)


@attrs.frozen(repr=False)
class Within(Operation):
    """``operations`` applied to the object at ``path``, with paths relative to it; nothing where
    that is absent or not an object. They never remove that object nor create it."""

    path: Path = attrs.field(converter=_within_path)
    operations: tuple[Operation, ...] = attrs.field(converter=_operations)

    def inverse(self) -> Operation:
        return Within(self.path, inverse_of(self.operations))

    @property
    def invertibility(self) -> Invertibility:
        return max((op.invertibility for op in self.operations), key=_RANK.__getitem__)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, *(self.path + path for op in self.operations for path in op.paths))

    def condition_at(self, root: Path) -> str | None:
        if self.invertibility is not Invertibility.CONDITIONAL:
            return None
        inner = root + self.path
        conditions = [op.condition_at(inner) for op in self.operations]
        return "; and ".join(condition for condition in conditions if condition)

    def __str__(self) -> str:
        return f"within({show_path(self.path)}, [{', '.join(map(str, self.operations))}])"
