"""The operations of structure migrations: values that reshape the JSON object of each memory.

An operation is a frozen value: printable as the call that builds it, comparable and hashable. It
knows its inverse and how far that inverse can be trusted (:class:`Invertibility`); the SQL that
applies it is compiled by the engine. Paths run through objects only: a segment is always a key.

The modules: :mod:`.paths` (paths), :mod:`.values` (JSON values), :mod:`.operation` (the base class
and invertibility), :mod:`.key_operations`, :mod:`.value_operations` and :mod:`.within` (the
operations), :mod:`.constructors` (the functions that build them), :mod:`.lists` and :mod:`.checks`
(lists of operations).
"""

from __future__ import annotations

from .checks import check_operations
from .constructors import add, convert, move, remove, rename, unwrap, within, wrap
from .key_operations import Add, Move, Remove, Rename
from .lists import conditional, flatten, irreversible, needs_images
from .operation import Invertibility, Operation, inverse_of
from .paths import Path, parse_path, show_path
from .value_operations import Convert, Table, Unwrap, Wrap
from .values import json_text, json_value
from .within import Within

__all__ = [
    "Add",
    "Convert",
    "Invertibility",
    "Move",
    "Operation",
    "Path",
    "Remove",
    "Rename",
    "Table",
    "Unwrap",
    "Within",
    "Wrap",
    "add",
    "check_operations",
    "conditional",
    "convert",
    "flatten",
    "inverse_of",
    "irreversible",
    "json_text",
    "json_value",
    "move",
    "needs_images",
    "parse_path",
    "remove",
    "rename",
    "show_path",
    "unwrap",
    "within",
    "wrap",
]
