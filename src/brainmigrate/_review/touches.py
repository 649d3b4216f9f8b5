"""What a migration touches: its statements' tables and columns, and what it declares.

SQL migrations (and a hybrid's SQL steps) show their statements (see :mod:`.statements`); data,
memory and structure migrations declare their source, ``writes`` and ``column``; Python
migrations are opaque.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Collection, Sequence

from .._model.data import DatabaseDataMigration, DataMigration
from .._model.hybrid import HybridMigration
from .._model.memory_structure import MemoryStructureMigration
from .._model.migration import DatabaseSchemaMigration, Migration
from .statements import Access, Statement, Table, Touch, parse_sql


async def migration_statements(migration: Migration, applied: Collection[str] = ()) -> list[Statement]:
    """The statements a migration runs, when it shows them (SQL migrations, a hybrid's SQL steps
    not ``applied`` yet)."""
    if isinstance(migration, HybridMigration):
        found: list[Statement] = []
        for step in migration.steps:
            if step.id not in applied:
                found.extend(await migration_statements(step.migration))
        return found
    if isinstance(migration, DatabaseSchemaMigration):
        return [s for text in await migration.get_forward_statements() for s in parse_sql(text)]
    if isinstance(migration, DatabaseDataMigration):
        batch = await migration.get_batch_statement()
        return parse_sql(batch) if batch else []
    return []


async def migration_touches(migration: Migration) -> tuple[Touch, ...]:
    """Everything a migration touches: its statements' touches and what it declares."""
    found = [touch for statement in await migration_statements(migration) for touch in statement.touches]
    if isinstance(migration, HybridMigration):
        for step in migration.steps:
            found.extend(await migration_touches(step.migration))
    elif isinstance(migration, DataMigration):
        found.extend(declared_touches(migration))
    return tuple(dict.fromkeys(found))


def declared_touches(migration: DataMigration) -> list[Touch]:
    """What a data, memory or structure migration declares: it reads its source's key and columns,
    and writes its ``writes``; when it declares none, the columns its transform names literally
    (see :func:`transform_writes`). A structure migration writes its ``column``."""
    source = type(migration).source
    if source is None:
        return []
    table = Table(source.table, source.schema).key
    reads = [source.key, *source.columns]
    if isinstance(migration, MemoryStructureMigration):
        writes: Sequence[str] = (migration.column,)
    else:
        declared = getattr(type(migration), "writes", ())
        writes = declared if declared else transform_writes(migration)
    touches = [Touch(table, column, Access.READ) for column in reads]
    touches.extend(Touch(table, column, Access.WRITE) for column in writes)
    return touches


#: The transform methods whose source tells which columns a data migration writes.
_TRANSFORMS = ("transform_row", "transform_batch", "transform_memory")


def transform_writes(migration: DataMigration) -> list[str]:
    """The columns a transform names in its source: the keywords of ``BulkMemoryItem(...)`` (but
    ``memory_id``), and the string keys of the dicts it returns (``return {"metadata": ...}``, also
    in a list comprehension). Columns computed at run time are not found."""
    columns: list[str] = []
    for name in _TRANSFORMS:
        function = getattr(type(migration), name, None)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) == "BulkMemoryItem":
                columns.extend(k.arg for k in node.keywords if k.arg is not None and k.arg != "memory_id")
            elif isinstance(node, ast.Return):
                value = node.value.elt if isinstance(node.value, ast.ListComp) else node.value
                if isinstance(value, ast.Dict):
                    columns.extend(
                        key.value
                        for key in value.keys
                        if isinstance(key, ast.Constant) and isinstance(key.value, str)
                    )
    return list(dict.fromkeys(columns))


def _called(call: ast.Call) -> str | None:
    function = call.func
    if isinstance(function, ast.Name):
        return function.id
    return function.attr if isinstance(function, ast.Attribute) else None
