"""Squashing: one SQL migration written to replace an applied chain of them.

The chain ``FROM..TO`` is a contiguous linear path of the dependency graph: each migration after
``FROM`` depends on the one before it, no other migration runs between them, and none outside the
chain depends on one inside it but ``TO``. The written migration runs the chain's forward statements
in order and its rollback statements newest first, declares ``replaces`` (the chain) and depends on
what the chain depended on from outside it.
"""

from __future__ import annotations

import importlib
import itertools
import keyword
import os
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._catalog_view import _Catalog
from .._errors import (
    ChecksumMismatchError,
    ConfigError,
    DependencyError,
    MigrationStateError,
    MigrationValidationError,
)
from .._ledger.history import MigrationState
from .._model.metadata import MigrationType, id_problem
from .._model.migration import DatabaseSchemaMigration, Migration, MigrationKind


async def write_squash(
    catalog: _Catalog,
    states: Mapping[str, MigrationState],
    from_id: str,
    to_id: str,
    *,
    directory: str | os.PathLike[str] | None,
    migration_id: str | None,
    source: Any,
) -> Path:
    """Check the chain ``from_id``..``to_id`` and write the squash migration's file; returns its path.

    Refused (nothing written) unless the chain is a linear path of transactional SQL schema
    migrations, each applied (and unchanged) per ``states``.
    """
    chain = squash_chain(catalog, from_id, to_id)
    migrations = [catalog.migrations[mid] for mid in chain]
    for migration in migrations:
        _refuse_unless_sql(migration)
    _refuse_unless_applied(chain, states, catalog.checksums)
    new_id = migration_id if migration_id is not None else f"{from_id}_squashed_{to_id}"
    _check_new_id(new_id, catalog, explicit=migration_id is not None)
    target = Path(directory) if directory is not None else migrations_directory(source)
    if not target.is_dir():
        raise ConfigError(f"cannot write the squash migration into {target}: it is not a directory")
    path = target / f"{_module_name(new_id)}.py"
    if path.exists():
        raise ConfigError(f"{path} exists already; pass another migration id (--id) for the squash")
    text = await render(new_id, migrations)
    compile(text, str(path), "exec")  # what is written is valid Python
    with path.open("x", encoding="utf-8") as file:
        file.write(text)
    return path


def squash_chain(catalog: _Catalog, from_id: str, to_id: str) -> list[str]:
    """The ids of ``from_id``..``to_id`` in order, or DependencyError saying why it is no chain."""
    catalog.top_level(from_id, "squash")
    catalog.top_level(to_id, "squash")
    graph = catalog.graph
    if from_id == to_id:
        raise ConfigError(f"squash needs two migrations or more; {from_id!r}..{to_id!r} is one")
    first, last = graph.position(from_id), graph.position(to_id)
    if first > last:
        raise DependencyError(
            f"cannot squash {from_id!r}..{to_id!r}: {from_id!r} runs after {to_id!r}; "
            f"give the first migration of the chain first ({to_id!r} {from_id!r})",
            migration_id=from_id,
        )
    chain = list(graph.order[first : last + 1])
    after_first = graph.descendants(from_id)
    if to_id not in after_first:
        raise DependencyError(
            f"cannot squash {from_id!r}..{to_id!r}: {to_id!r} does not depend on {from_id!r}, directly "
            "or not, so no chain leads from one to the other; give the first and the last migration "
            "of one chain of dependencies",
            migration_id=to_id,
        )
    on_path = {from_id, to_id} | (after_first & graph.ancestors(to_id))
    for mid in chain:
        if mid not in on_path:
            raise DependencyError(
                f"cannot squash {from_id!r}..{to_id!r}: it has a gap: {mid!r} runs between them but is "
                f"not on the chain of dependencies from {from_id!r} to {to_id!r}; squash a range that "
                f"{mid!r} is not inside (one ending before it, or starting after it)",
                migration_id=mid,
            )
    for previous, mid in itertools.pairwise(chain):
        inside = [dep for dep in graph.nodes[mid].dependencies if dep in chain]
        if inside != [previous]:
            raise DependencyError(
                f"cannot squash {from_id!r}..{to_id!r}: it is not a linear chain: {mid!r} depends on "
                f"{', '.join(map(repr, inside))} in it, where a chain has each migration depend on "
                f"the one before it ({previous!r}) only; squash a range without the branch",
                migration_id=mid,
            )
    inner = set(chain[:-1])
    for node, meta in graph.nodes.items():
        branching = [dep for dep in meta.dependencies if dep in inner]
        if node not in chain and branching:
            raise DependencyError(
                f"cannot squash {from_id!r}..{to_id!r}: it branches: {node!r}, outside the chain, "
                f"depends on {branching[0]!r} inside it; squash a range ending at {branching[0]!r}, "
                f"or one that includes {node!r}",
                migration_id=node,
            )
    return chain


def _refuse_unless_sql(migration: Migration) -> None:
    mid = migration.metadata.id
    if not isinstance(migration, DatabaseSchemaMigration) or migration.kind is not MigrationKind.SQL:
        kind = type(migration).kind.value
        raise MigrationValidationError(
            f"cannot squash {mid!r}: it is a {kind} migration, and squash combines SQL schema "
            "migrations only (DatabaseSchemaMigration, forward and rollback statements). Squash a "
            f"range that ends before {mid!r} or starts after it, and keep {mid!r} as it is",
            migration_id=mid,
        )
    if not migration.transactional:
        raise MigrationValidationError(
            f"cannot squash {mid!r}: it runs outside a transaction (transactional = False), and a "
            "squash runs its chain in one transaction. Squash a range that ends before "
            f"{mid!r} or starts after it, and keep {mid!r} as it is",
            migration_id=mid,
        )


def _refuse_unless_applied(
    chain: Sequence[str], states: Mapping[str, MigrationState], checksums: Mapping[str, str]
) -> None:
    missing = [mid for mid in chain if not (mid in states and states[mid].applied)]
    if missing:
        raise MigrationStateError(
            f"cannot squash {chain[0]!r}..{chain[-1]!r}: {', '.join(map(repr, missing))} "
            f"{'is' if len(missing) == 1 else 'are'} not applied on this database. Squash only "
            "migrations every database applied: run them first (run_pending()), or squash a "
            "shorter chain. Nothing was written",
            migration_id=missing[0],
        )
    for mid in chain:
        if states[mid].checksum != checksums[mid]:
            raise ChecksumMismatchError(mid, expected=states[mid].checksum, actual=checksums[mid])


def _check_new_id(new_id: str, catalog: _Catalog, *, explicit: bool) -> None:
    problem = id_problem(new_id) if isinstance(new_id, str) else "must be a string"
    if problem is not None:
        hint = "" if explicit else " (the default, from the chain's ids); pass a shorter one (--id)"
        raise ConfigError(f"the squash migration's id {new_id!r} {problem}{hint}")
    if new_id in catalog.migrations or new_id in catalog.steps:
        raise ConfigError(f"a migration with id {new_id!r} exists already; pass another id for the squash")


def migrations_directory(source: Any) -> Path:
    """The directory the migrations of ``source`` are in (their package's, or their file's)."""
    if isinstance(source, str | os.PathLike):
        path = Path(os.fspath(source))
        if path.is_dir():
            return path
        if path.suffix == ".py" and path.is_file():
            return path.parent
        source = importlib.import_module(os.fspath(source))
    if isinstance(source, types.ModuleType):
        if hasattr(source, "__path__"):
            return Path(next(iter(source.__path__)))
        if source.__file__:
            return Path(source.__file__).parent
    raise ConfigError(
        "cannot tell which directory the migrations are in (they were given as classes); pass "
        "directory= for the squash migration's file"
    )


def _module_name(migration_id: str) -> str:
    """A module name for the id: an identifier (``m`` before a leading digit), never hidden by ``_``."""
    name = re.sub(r"\W", "_", migration_id, flags=re.ASCII).lstrip("_") or "squash"
    name = f"m{name}" if name[0].isdigit() else name
    return name if not keyword.iskeyword(name) else f"{name}_"


def _class_name(migration_id: str) -> str:
    return "Squash" + "".join(
        part[:1].upper() + part[1:] for part in re.split(r"[\W_]+", migration_id, flags=re.ASCII)
    )


def _literal(text: str) -> str:
    """``text`` as a Python literal: triple-quoted when it spans lines and can be, else in double
    quotes when it can be, else as repr() gives it."""
    if "\n" in text and not any(c in text for c in ('"""', "\\", "\r")) and not text.endswith('"'):
        return f'"""{text}"""'
    shown = repr(text)
    if shown.startswith("'") and '"' not in text:
        return f'"{shown[1:-1]}"'
    return shown


def _list(items: Sequence[str]) -> str:
    return f"[{', '.join(_literal(item) for item in items)}]"


def _statements(parts: Sequence[tuple[str, Sequence[str]]]) -> str:
    lines: list[str] = []
    for mid, statements in parts:
        lines.append(f"            # {mid}")
        lines.extend(f"            {_literal(statement)}," for statement in statements)
    return "\n".join(lines)


async def render(new_id: str, migrations: Sequence[Migration]) -> str:
    """The source of the squash migration of ``migrations`` (a checked chain, in order)."""
    chain = [migration.metadata.id for migration in migrations]
    forward: list[tuple[str, tuple[str, ...]]] = []
    rollback: list[tuple[str, tuple[str, ...]]] = []
    for migration in migrations:
        assert isinstance(migration, DatabaseSchemaMigration)
        forward.append((migration.metadata.id, await migration._read_statements("get_forward_statements")))
        if migration.metadata.reversible:
            undo = await migration._read_statements("get_rollback_statements")
            if undo:
                rollback.append((migration.metadata.id, undo))
    reversible = len(rollback) == len(migrations)
    dependencies = list(
        dict.fromkeys(
            dep for migration in migrations for dep in migration.metadata.dependencies if dep not in chain
        )
    )
    types_ = {migration.metadata.migration_type for migration in migrations}
    migration_type = types_.pop() if len(types_) == 1 else MigrationType.DATABASE_SCHEMA
    last = migrations[-1].metadata
    span = f"{chain[0]}..{chain[-1]}"
    text = f'''"""Squash of {span}: one migration replacing {len(chain)} applied ones.

Databases that applied them record it as applied without running it; fresh ones run it. The
replaced migrations are no longer loaded: their files can be deleted.
"""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class {_class_name(new_id)}(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id={_literal(new_id)},
            name={_literal(f"squash of {span}")},
            version={_literal(last.version)},
            migration_type=MigrationType.{migration_type.name},
            dependencies={_list(dependencies)},
            replaces={_list(chain)},
            reversible={reversible!r},
        )

    async def get_forward_statements(self) -> list[str]:
        return [
{_statements(forward)}
        ]
'''
    if reversible:
        text += f"""
    async def get_rollback_statements(self) -> list[str]:
        return [
{_statements(list(reversed(rollback)))}
        ]
"""
    return text
