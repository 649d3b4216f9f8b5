"""The names the surgery gives what a table holds while it does not carry its original's name:
``names.index(position(original name), side)``, the same on any connection."""

from __future__ import annotations

import hashlib

from ..._errors import MigrationValidationError
from ..definition import TableDefinition
from ..names import RewriteNames


def position(name: str) -> int:
    """The position the rewrite's names give the index, constraint or sequence ``name``."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") % 1_000_000


def side_name(names: RewriteNames, original: str, side: str) -> str:
    return names.index(position(original), side)


def check_positions(defn: TableDefinition) -> None:
    """MigrationValidationError when two of the table's objects would get one name."""
    seen: dict[int, str] = {}
    for name in [index.name for index in defn.indexes] + [s.name for s in defn.sequences if s.identity]:
        other = seen.setdefault(position(name), name)
        if other != name:
            raise MigrationValidationError(
                f"migration {defn.migration_id!r}: the indexes or sequences {other!r} and {name!r} of "
                f"{defn.schema}.{defn.table} would get the same temporary name in the rewrite; rename "
                "one of them. Nothing was created.",
                migration_id=defn.migration_id,
            )
