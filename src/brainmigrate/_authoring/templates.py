"""New migration modules, one template per kind, with the id, version and dependencies filled in.

A module is named ``NNN_name.py`` (the next number after the highest in the directory) and its
migration's id is ``name_001``, as in the Second Brain example. It depends on the heads of the
migration graph (the migrations nothing depends on yet), so it runs after everything known today.
Each template is a complete module that loads and runs as written, changing nothing, until you
replace its example body.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._catalog.graph import MigrationGraph
from .._catalog.loader import MigrationSource, load_migrations
from .._errors import ConfigError
from .._model.hybrid import HybridMigration
from .._model.metadata import MigrationMetadata, id_problem, version_key
from . import MIGRATION_KINDS

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_NUMBERED = re.compile(r"(\d+)_")
#: The version of the first migration, when there is none to follow.
FIRST_VERSION = "0.1.0"


def write_migration(
    kind: str,
    name: str,
    *,
    directory: str | os.PathLike[str],
    migration_id: str | None = None,
    version: str | None = None,
    dependencies: Sequence[str] | None = None,
    migrations: MigrationSource | None = None,
) -> Path:
    """Write a new migration module of ``kind`` into ``directory`` and return its path.

    ``kind`` is one of :data:`MIGRATION_KINDS`; ``name`` is snake_case (``add_topics``). The id
    defaults to ``name_001``, the version to the one after the highest known, the dependencies to
    the heads of the migrations in ``migrations`` (default: ``directory``). Nothing needs a
    database. Refused with ConfigError, nothing written, for an unknown kind, a name that cannot
    be part of an identifier, an id or a file that exists, or a dependency that does not.
    """
    if kind not in MIGRATION_KINDS:
        raise ConfigError(f"unknown kind of migration {kind!r}; use one of {', '.join(MIGRATION_KINDS)}")
    snake = _checked_name(name)
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(
            f"the migrations directory {folder} does not exist; create it (brainmigrate init) or pass "
            "another directory"
        )
    empty = not _has_modules(folder) and (migrations is None or _resolves_to(migrations, folder))
    graph, known = (MigrationGraph.build([]), {}) if empty else _graph(migrations or folder)
    mid = migration_id if migration_id is not None else f"{snake}_001"
    problem = id_problem(mid) if isinstance(mid, str) else "must be a string"
    if problem is not None:
        raise ConfigError(f"the migration id {problem}")
    new_ids = [mid, *(f"{mid}_{step}" for step in _STEPS)] if kind == "hybrid" else [mid]
    for new_id in new_ids:
        if new_id in known:
            raise ConfigError(
                f"a migration with id {new_id!r} exists already ({known[new_id]}); choose another name, "
                f"or pass another id (such as {_next_id(mid, known)!r})"
            )
    depends = tuple(dependencies) if dependencies is not None else heads(graph)
    missing = [dep for dep in depends if dep not in graph]
    if missing:
        raise ConfigError(
            f"dependencies {', '.join(map(repr, missing))} are not known migrations; depend on "
            "migrations that exist, or leave the dependencies out to depend on the heads"
        )
    chosen = version if version is not None else next_version(meta.version for meta in graph.nodes.values())
    try:
        MigrationMetadata(
            id=mid, name=snake, version=chosen, migration_type="database_schema", dependencies=depends
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot write migration {mid!r}: {exc}") from None
    path = folder / f"{next_number(folder)}_{snake}.py"
    text = render(kind, snake, migration_id=mid, version=chosen, dependencies=depends)
    try:
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; choose another name, or remove that file") from None
    return path


def migration_heads(migrations: MigrationSource) -> tuple[str, ...]:
    """The ids of the migrations nothing depends on yet, in run order; reads no database."""
    return heads(_graph(migrations)[0])


def heads(graph: MigrationGraph) -> tuple[str, ...]:
    """The migrations of ``graph`` that no other depends on, in run order."""
    depended_on = {dep for meta in graph.nodes.values() for dep in meta.dependencies}
    return tuple(mid for mid in graph.order if mid not in depended_on)


def next_number(directory: Path) -> str:
    """The number of the next module of ``directory``: one more than the highest ``NNN_`` prefix."""
    numbers = [match.group(1) for path in directory.glob("*.py") if (match := _NUMBERED.match(path.name))]
    highest = max((int(number) for number in numbers), default=0)
    width = max([3, *(len(number) for number in numbers)])
    return str(highest + 1).zfill(width)


def next_version(versions: Iterable[str]) -> str:
    """The version after the highest of ``versions`` (compared as versions): its minor part plus one."""
    known = list(versions)
    if not known:
        return FIRST_VERSION
    highest = max(known, key=version_key)
    leading = re.match(r"\d+(?:\.\d+)*", highest.strip().lstrip("vV"))
    release = [int(part) for part in leading.group().split(".")[:3]] if leading else [0]
    if len(release) == 1:
        return f"{release[0] + 1}"
    return ".".join([str(release[0]), str(release[1] + 1), *("0" for _ in release[2:])])


def migrations_directory(source: str | os.PathLike[str]) -> Path:
    """The directory a migrations source (a directory, or a package's dotted name) lives in."""
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        return path
    if path.suffix == ".py" or not all(part.isidentifier() for part in text.split(".")):
        raise ConfigError(
            f"migrations {text!r} is not a package nor a directory, so a new module cannot go next to "
            "them; name the directory to write into (--directory)"
        )
    try:
        spec = importlib.util.find_spec(text)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"cannot find the migrations package {text!r}: {exc}") from exc
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"migrations {text!r} is not a package, so a new module cannot go into it; name the "
            "directory to write into (--directory)"
        )
    return Path(locations[0])


# -- reading what exists ---------------------------------------------------------------------------


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith("_"):
        raise ConfigError(
            f"the migration name {name!r} cannot be part of an identifier; use snake_case letters, "
            "digits and underscores, starting with a letter, such as add_memory_topics"
        )
    return name.lower()


def _graph(source: Any) -> tuple[MigrationGraph, dict[str, str]]:
    """The graph of the migrations in ``source``, and every id known (hybrids' steps too) with where."""
    loaded = load_migrations(source, None)
    graph = MigrationGraph.build((migration.metadata, label) for migration, label in loaded)
    known = {migration.metadata.id: label for migration, label in loaded}
    for migration, label in loaded:
        if isinstance(migration, HybridMigration):
            for step in migration.steps:
                known[step.id] = f"a step of {label}"
    return graph, known


def _resolves_to(source: Any, folder: Path) -> bool:
    """Whether ``source`` names the migrations of ``folder`` (its path, or its package's name)."""
    if not isinstance(source, str | os.PathLike):
        return False
    try:
        return migrations_directory(source).resolve() == folder.resolve()
    except ConfigError:
        return False


def _has_modules(folder: Path) -> bool:
    """Whether ``folder`` holds a module the loader would read (an empty package warns otherwise)."""
    return any(
        not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
        for path in folder.rglob("*.py")
    )


def _next_id(mid: str, known: dict[str, str]) -> str:
    stem, _, number = mid.rpartition("_")
    base, start = (stem, int(number)) if number.isdigit() and stem else (mid, 0)
    count = start + 1
    while f"{base}_{count:03d}" in known:
        count += 1
    return f"{base}_{count:03d}"


# -- rendering -------------------------------------------------------------------------------------

_STEPS = ("expand", "backfill", "contract")


def render(kind: str, name: str, *, migration_id: str, version: str, dependencies: Sequence[str]) -> str:
    """The text of a new migration module of ``kind``."""
    title = name.replace("_", " ").capitalize()
    cls = "".join(part.capitalize() for part in name.split("_") if part)
    when = datetime.now(UTC)
    parts = {
        "title": title,
        "created": f"datetime({when.year}, {when.month}, {when.day}, tzinfo=UTC)",
        "version": _literal(version),
    }

    def metadata(mid: str, mtype: str, deps: Sequence[str], label: str = title) -> str:
        return _METADATA.format(
            id=_literal(mid),
            name=_literal(label),
            version=parts["version"],
            type=mtype,
            created=parts["created"],
            dependencies=_list(deps),
        )

    if kind == "schema":
        body = _SCHEMA.format(cls=cls, metadata=metadata(migration_id, "DATABASE_SCHEMA", dependencies))
    elif kind == "python":
        body = _PYTHON.format(cls=cls, metadata=metadata(migration_id, "DATABASE_SCHEMA", dependencies))
    elif kind == "data":
        body = _DATA.format(cls=cls, metadata=metadata(migration_id, "DATABASE_DATA", dependencies))
    elif kind == "memory":
        body = _MEMORY.format(cls=cls, metadata=metadata(migration_id, "MEMORY_DATA", dependencies))
    elif kind == "structure":
        body = _STRUCTURE.format(cls=cls, metadata=metadata(migration_id, "MEMORY_STRUCTURE", dependencies))
    else:
        steps = {
            step: metadata(f"{migration_id}_{step}", mtype, (), f"{title}: {step}")
            for step, mtype in zip(
                _STEPS, ("DATABASE_SCHEMA", "DATABASE_DATA", "DATABASE_SCHEMA"), strict=True
            )
        }
        body = _HYBRID.format(
            cls=cls,
            metadata=metadata(migration_id, "HYBRID", dependencies),
            expand=steps["expand"],
            backfill=steps["backfill"],
            contract=steps["contract"],
        )
    header, imports = _HEADERS[kind]
    return f'"""{title}: {header}"""\n\nfrom __future__ import annotations\n\n{imports}\n{body}'


def _literal(text: str) -> str:
    """``text`` as a Python string literal (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


def _list(items: Sequence[str]) -> str:
    if not items:
        return "[]"
    if len(items) == 1:
        return f"[{_literal(items[0])}]"
    inner = "".join(f"                {_literal(item)},\n" for item in items)
    return f"[\n{inner}            ]"


_METADATA = """\
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id={id},
            name={name},
            description="",
            version={version},
            migration_type=MigrationType.{type},
            created_at={created},
            dependencies={dependencies},
            reversible=True,
        )
"""

_HEADERS = {
    "schema": (
        "a schema migration, SQL statements run in order in one transaction.",
        "from datetime import UTC, datetime\n\n"
        "from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType\n",
    ),
    "python": (
        "a migration written in Python, up() and down() in one transaction.",
        "from datetime import UTC, datetime\n\n"
        "from brainmigrate import Connection, Migration, MigrationMetadata, MigrationType\n",
    ),
    "data": (
        "a data migration, a transform over the rows of a table, in batches.",
        "from datetime import UTC, datetime\nfrom typing import Any\n\n"
        "from brainmigrate import (\n    DatabaseDataMigration,\n    DataSource,\n    MigrationMetadata,\n"
        "    MigrationType,\n)\n",
    ),
    "memory": (
        "a memory data migration, a transform over every memory in batches.",
        "from datetime import UTC, datetime\nfrom typing import Any\n\n"
        "from brainmigrate import (\n    BulkMemoryItem,\n    DataSource,\n    MemoryDataMigration,\n"
        "    MigrationMetadata,\n    MigrationType,\n)\n",
    ),
    "structure": (
        "a memory structure migration, reshaping JSONB on the server.",
        "from datetime import UTC, datetime\n\n"
        "from brainmigrate import (\n    DataSource,\n    MemoryStructureMigration,\n    MigrationMetadata,\n"
        "    MigrationType,\n)\n"
        "from brainmigrate import structure as s\n",
    ),
    "hybrid": (
        "a hybrid migration, expand, backfill, validate, then contract.",
        "from datetime import UTC, datetime\nfrom typing import Any\n\n"
        "from brainmigrate import (\n    DatabaseDataMigration,\n    DatabaseSchemaMigration,\n"
        "    DataSource,\n    HybridMigration,\n    MigrationMetadata,\n    MigrationType,\n)\n",
    ),
}

_SCHEMA = """
class {cls}(DatabaseSchemaMigration):
    # The statements run in one transaction. For CREATE INDEX CONCURRENTLY, which
    # PostgreSQL runs outside a transaction only, set transactional = False.

{metadata}
    async def get_forward_statements(self) -> list[str]:
        # The statements that apply the change, in order, such as
        # "ALTER TABLE memories ADD COLUMN topic text". This one changes nothing.
        return ["SELECT 1"]

    async def get_rollback_statements(self) -> list[str]:
        # The statements that undo the change, in order, such as
        # "ALTER TABLE memories DROP COLUMN topic".
        return ["SELECT 1"]
"""

_PYTHON = """
class {cls}(Migration):
    # up() and down() run inside the migration's transaction, on the connection they
    # are given. The source of up() is the migration's checksum: keep its SQL in it.

{metadata}
    async def up(self, conn: Connection) -> None:
        # Apply the change, such as
        # await conn.execute("ALTER TABLE memories ADD COLUMN topic text")
        await conn.execute("SELECT 1")

    async def down(self, conn: Connection) -> None:
        # Undo it, such as
        # await conn.execute("ALTER TABLE memories DROP COLUMN topic")
        await conn.execute("SELECT 1")
"""

_DATA = """
class {cls}(DatabaseDataMigration):
    # The rows to page through, by their unique key, and the columns it reads.
    source = DataSource(table="memories", key="id", columns=("metadata",))

{metadata}
    async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        # The new values of some of the row's columns, such as
        # {{"metadata": {{**row["metadata"], "reviewed": True}}}},
        # or None to leave the row as it is.
        return None
"""

_MEMORY = """
class {cls}(MemoryDataMigration):
    # The memories to page through, by id, and the columns transform_memory reads.
    source = DataSource(table="memories", key="id", columns=("content", "metadata"))

{metadata}
    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        # The memory's new values, such as BulkMemoryItem(
        #     memory_id=memory["id"], metadata={{**memory["metadata"], "reviewed": True}}
        # ), or None to leave it as it is.
        return None
"""

_STRUCTURE = """
class {cls}(MemoryStructureMigration):
    # The memories, by id, and the JSONB column to reshape.
    source = DataSource(table="memories", key="id")
    column = "metadata"

{metadata}
    def operations(self) -> list[s.Operation]:
        # The reshaping, in order: s.rename, s.move, s.add, s.wrap, s.unwrap, s.convert,
        # s.remove and s.within (see brainmigrate.structure). This one renames a key no
        # memory has yet.
        return [s.rename("example_key", "example_key_renamed")]
"""

_HYBRID = """
class {cls}Expand(DatabaseSchemaMigration):
    # Expand: add what the new code needs, such as
    # "ALTER TABLE memories ADD COLUMN topic text".

{expand}
    async def get_forward_statements(self) -> list[str]:
        return ["SELECT 1"]

    async def get_rollback_statements(self) -> list[str]:
        return ["SELECT 1"]


class {cls}Backfill(DatabaseDataMigration):
    # Backfill: fill what expand added, in batches, such as
    # {{"topic": row["metadata"]["topic"]}}.
    source = DataSource(table="memories", key="id", columns=("metadata",))

{backfill}
    async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        return None


class {cls}Contract(DatabaseSchemaMigration):
    # Contract: remove what only the old code used, once the backfill is validated,
    # such as "UPDATE memories SET metadata = metadata - 'topic'".

{contract}
    async def get_forward_statements(self) -> list[str]:
        return ["SELECT 1"]

    async def get_rollback_statements(self) -> list[str]:
        return ["SELECT 1"]


class {cls}(HybridMigration):
    expand = ({cls}Expand,)
    backfill = ({cls}Backfill,)
    contract = ({cls}Contract,)
    # "manual": wait after validation until `brainmigrate contract ID`, to deploy the
    # new code first.
    contract_mode = "auto"

{metadata}"""
