"""The operations on values: :class:`Wrap`, :class:`Unwrap` and :class:`Convert`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..._errors import MigrationValidationError
from .operation import Invertibility, Operation
from .paths import Path, parse_path, show_path
from .values import _is_scalar, _scalar_key, json_text, json_value


def _wrap_path(value: object) -> Path:
    return parse_path(value, what="wrap path")


def _unwrap_path(value: object) -> Path:
    return parse_path(value, what="unwrap path")


def _convert_path(value: object) -> Path:
    return parse_path(value, what="convert path")


@attrs.frozen(repr=False)
class Wrap(Operation):
    """A present value ``v`` that is not an array becomes ``[v]``; arrays are left as they are."""

    path: Path = attrs.field(converter=_wrap_path)

    def inverse(self) -> Operation:
        return Unwrap(self.path)

    @property
    def invertibility(self) -> Invertibility:
        return Invertibility.CONDITIONAL

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def condition_at(self, root: Path) -> str | None:
        return f"no memory has an array of exactly one element at {show_path(root + self.path)}"

    def __str__(self) -> str:
        return f"wrap({show_path(self.path)})"


@attrs.frozen(repr=False)
class Unwrap(Operation):
    """An array of exactly one element becomes that element; anything else is left as it is."""

    path: Path = attrs.field(converter=_unwrap_path)

    def inverse(self) -> Operation:
        return Wrap(self.path)

    @property
    def invertibility(self) -> Invertibility:
        return Invertibility.CONDITIONAL

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def condition_at(self, root: Path) -> str | None:
        return (
            f"every memory that has {show_path(root + self.path)} has there an array of exactly one "
            "element, which is not itself an array"
        )

    def __str__(self) -> str:
        return f"unwrap({show_path(self.path)})"


Table = tuple[tuple[Any, Any], ...]


def _table(table: object) -> Table:
    if isinstance(table, Mapping):
        pairs: list[object] = list(table.items())
    elif isinstance(table, list | tuple):
        pairs = list(table)
    else:
        raise MigrationValidationError(
            f"invalid convert table {table!r}: it is a {type(table).__name__}; pass a dict from the old "
            "values to the new ones, such as {'note': 'semantic'}"
        )
    if not pairs:
        raise MigrationValidationError("invalid convert table: it is empty; map at least one value")
    result: list[tuple[Any, Any]] = []
    seen: dict[tuple[str, Any], Any] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise MigrationValidationError(
                f"invalid convert table entry {pair!r}: pass a dict, or a list of (old, new) pairs"
            )
        old, new = pair
        if isinstance(old, list | tuple | dict):
            raise MigrationValidationError(
                f"invalid convert table key {old!r}: keys are JSON scalars (None, a bool, a number or a "
                "string), compared with jsonb equality"
            )
        old = json_value(old, what="convert table key")
        key = _scalar_key(old)
        if key in seen:
            raise MigrationValidationError(
                f"invalid convert table: its keys {seen[key]!r} and {old!r} are equal JSON values; keep one"
            )
        seen[key] = old
        result.append((old, json_value(new, what="convert table value")))
    return tuple(result)


def _table_key(table: Table) -> str:
    return json_text(sorted([json_text(old), json_text(new)] for old, new in table))


@attrs.frozen(repr=False)
class Convert(Operation):
    """A present value equal (jsonb ``=``: 1 equals 1.0) to a key of ``table`` becomes its value."""

    path: Path = attrs.field(converter=_convert_path)
    table: Table = attrs.field(converter=_table, eq=_table_key)

    def _bijective(self) -> bool:
        results = [new for _, new in self.table]
        if not all(map(_is_scalar, results)):
            return False
        return len({_scalar_key(new) for new in results}) == len(results)

    def unmapped_results(self) -> tuple[Any, ...]:
        """The values the table maps to but not from (a memory holding one breaks the condition)."""
        keys = {_scalar_key(old) for old, _ in self.table}
        return tuple(new for _, new in self.table if _is_scalar(new) and _scalar_key(new) not in keys)

    def inverse(self) -> Operation:
        if not self._bijective():
            raise MigrationValidationError(
                f"{self} cannot be inverted: its table maps two keys to one value, or to a list or an "
                "object; keep before-images to roll it back"
            )
        return Convert(self.path, tuple((new, old) for old, new in self.table))

    @property
    def invertibility(self) -> Invertibility:
        if not self._bijective():
            return Invertibility.IRREVERSIBLE
        return Invertibility.CONDITIONAL if self.unmapped_results() else Invertibility.INVERTIBLE

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def condition_at(self, root: Path) -> str | None:
        if self.invertibility is not Invertibility.CONDITIONAL:
            return None
        values = ", ".join(repr(value) for value in self.unmapped_results())
        return (
            f"no memory has at {show_path(root + self.path)} a value the table maps to but not from "
            f"({values})"
        )

    def __str__(self) -> str:
        keys = [old for old, _ in self.table]
        if len(set(keys)) == len(keys):  # a dict would keep every key (True and 1 would collide)
            table = "{" + ", ".join(f"{old!r}: {new!r}" for old, new in self.table) + "}"
        else:
            table = repr(list(self.table))
        return f"convert({show_path(self.path)}, {table})"
