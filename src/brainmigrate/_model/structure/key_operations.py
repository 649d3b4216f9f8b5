"""The operations on keys: :class:`Rename`, :class:`Move`, :class:`Add` and :class:`Remove`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ..._errors import MigrationValidationError
from .operation import Invertibility, Operation
from .paths import Path, _joined, parse_path, show_path
from .values import json_text, json_value


def _each_absent_or_not_empty(prefixes: Sequence[Path]) -> str:
    verb = "is" if len(prefixes) == 1 else "are each"
    return f"{_joined(prefixes)} {verb} absent or a non-empty object"


def _rename_path(value: object) -> Path:
    return parse_path(value, what="rename path")


def _move_source(value: object) -> Path:
    return parse_path(value, what="move source")


def _move_target(value: object) -> Path:
    return parse_path(value, what="move target")


def _add_path(value: object) -> Path:
    return parse_path(value, what="add path")


def _remove_path(value: object) -> Path:
    return parse_path(value, what="remove path")


def _new_name(to: object) -> str:
    if isinstance(to, tuple) and len(to) == 1:
        (to,) = to
        parse_path((to,), what="new name")
        return str(to)
    if not isinstance(to, str):
        raise MigrationValidationError(
            f"invalid new name {to!r}: it is a {type(to).__name__}; pass the new key name as a string"
        )
    if "." in to:
        raise MigrationValidationError(
            f"invalid new name {to!r}: rename() changes a key's name within its parent; use move() to "
            f"change the parent, or pass ({to!r},) for a key whose name contains a dot"
        )
    parse_path(to, what="new name")
    return to


@attrs.frozen(repr=False)
class Rename(Operation):
    """The key at ``path`` takes the name ``to``, in the same parent object."""

    path: Path = attrs.field(converter=_rename_path)
    to: str = attrs.field(converter=_new_name)

    def __attrs_post_init__(self) -> None:
        if self.to == self.path[-1]:
            raise MigrationValidationError(
                f"{self} does nothing: the new name is the old one; give another name or drop it"
            )

    @property
    def target(self) -> Path:
        return (*self.path[:-1], self.to)

    def inverse(self) -> Operation:
        return Rename(self.target, (self.path[-1],))

    @property
    def invertibility(self) -> Invertibility:
        return Invertibility.CONDITIONAL

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, self.target)

    def condition_at(self, root: Path) -> str | None:
        return f"no memory has the key {show_path(root + self.target)} already"

    def __str__(self) -> str:
        to = repr((self.to,)) if "." in self.to else repr(self.to)
        return f"rename({show_path(self.path)}, {to})"


@attrs.frozen(repr=False)
class Move(Operation):
    """The value at ``source`` moves to ``target``: missing parents of the target are created, and
    parents of the source left empty are removed (so the inverse move is exact)."""

    source: Path = attrs.field(converter=_move_source)
    target: Path = attrs.field(converter=_move_target)

    def __attrs_post_init__(self) -> None:
        if self.source == self.target:
            raise MigrationValidationError(f"{self} does nothing: the source is the target; drop it")
        if self.target[: len(self.source)] == self.source:
            raise MigrationValidationError(
                f"{self} moves {show_path(self.source)} into its own subtree; move it elsewhere"
            )
        if self.source[: len(self.target)] == self.target:
            raise MigrationValidationError(
                f"{self} moves {show_path(self.source)} onto {show_path(self.target)}, which contains "
                "it, and would drop the rest of it; move it to a new key, then remove the old one"
            )

    def inverse(self) -> Operation:
        return Move(self.target, self.source)

    @property
    def invertibility(self) -> Invertibility:
        return Invertibility.CONDITIONAL

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.source, self.target)

    def condition_at(self, root: Path) -> str | None:
        target = root + self.target
        text = f"no memory has the key {show_path(target)} already"
        prefixes = [target[:k] for k in range(len(root) + 1, len(target))]
        if prefixes:
            text += (
                f", and where a memory has {show_path(root + self.source)}, "
                f"{_each_absent_or_not_empty(prefixes)}"
            )
        return text

    def __str__(self) -> str:
        return f"move({show_path(self.source)}, {show_path(self.target)})"


def _added_value(value: object) -> Any:
    return json_value(value, what="value to add")


def _default_value(value: object) -> Any:
    return json_value(value, what="default")


@attrs.frozen(repr=False)
class Add(Operation):
    """``value`` is set at ``path`` where the key is absent, creating missing parent objects."""

    path: Path = attrs.field(converter=_add_path)
    value: Any = attrs.field(converter=_added_value, eq=json_text)

    def inverse(self) -> Operation:
        return Remove(self.path, self.value)

    @property
    def invertibility(self) -> Invertibility:
        return Invertibility.CONDITIONAL

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def condition_at(self, root: Path) -> str | None:
        path = root + self.path
        text = f"no memory has the key {show_path(path)} already"
        prefixes = [path[:k] for k in range(len(root) + 1, len(path))]
        if prefixes:
            text += f", and {_each_absent_or_not_empty(prefixes)}"
        return text

    def __str__(self) -> str:
        return f"add({show_path(self.path)}, {self.value!r})"


@attrs.frozen(repr=False)
class Remove(Operation):
    """The key at ``path`` is deleted, and its parent objects left empty with it (lossy: a rollback
    restores the before-images). ``default`` is the value its displayed inverse adds back."""

    path: Path = attrs.field(converter=_remove_path)
    default: Any = attrs.field(default=None, converter=_default_value, eq=json_text)

    def inverse(self) -> Operation:
        return Add(self.path, self.default)

    @property
    def invertibility(self) -> Invertibility:
        return Invertibility.LOSSY

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def __str__(self) -> str:
        default = "" if self.default is None else f", default={self.default!r}"
        return f"remove({show_path(self.path)}{default})"
