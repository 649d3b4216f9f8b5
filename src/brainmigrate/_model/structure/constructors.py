"""The functions that build operations, as users call them from :mod:`brainmigrate.structure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .key_operations import Add, Move, Remove, Rename
from .operation import Operation
from .paths import Path
from .value_operations import Convert, Unwrap, Wrap
from .within import Within


def rename(path: str | Path, to: str | tuple[str]) -> Rename:
    """The key at ``path`` takes the name ``to`` in the same parent (``move`` changes the parent);
    ``(name,)`` for a name that contains a dot."""
    return Rename(path, to)


def move(source: str | Path, target: str | Path) -> Move:
    """The value at ``source`` moves to ``target``, creating the target's missing parents."""
    return Move(source, target)


def add(path: str | Path, value: object) -> Add:
    """``value`` is set at ``path`` where the key is absent."""
    return Add(path, value)


def remove(path: str | Path, default: object = None) -> Remove:
    """The key at ``path`` is deleted (lossy); ``default`` is what the displayed inverse adds back."""
    return Remove(path, default)


def wrap(path: str | Path) -> Wrap:
    """A value ``v`` at ``path`` that is not an array becomes ``[v]``."""
    return Wrap(path)


def unwrap(path: str | Path) -> Unwrap:
    """An array of exactly one element at ``path`` becomes that element."""
    return Unwrap(path)


def convert(path: str | Path, table: Mapping[Any, Any] | Sequence[tuple[Any, Any]]) -> Convert:
    """A value at ``path`` equal to a key of ``table`` becomes the key's value."""
    return Convert(path, table)


def within(path: str | Path, operations: Sequence[Operation]) -> Within:
    """``operations`` applied to the object at ``path``, their paths relative to it."""
    return Within(path, operations)
