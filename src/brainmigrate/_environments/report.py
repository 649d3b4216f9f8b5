"""Environments side by side: one row per migration, with checksum differences flagged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import anyio
import attrs

from .._catalog.graph import MigrationGraph
from .._catalog.loader import MigrationSource, configured_source, load_migrations
from .._model.metadata import MigrationStatus
from .config import Environment
from .read import CONNECT_TIMEOUT, EnvironmentReading, read_environment


@attrs.frozen(kw_only=True)
class MigrationSync:
    """One migration across the environments read."""

    migration_id: str
    #: The checksum of the migration as the code has it now; None when only a history knows it.
    checksum: str | None
    #: Its status in each environment that could be read, by environment name.
    statuses: Mapping[str, MigrationStatus]
    #: The checksum recorded where it is applied, by environment name.
    applied_checksums: Mapping[str, str]

    #: The derived properties its JSON (``envs --json``) gives after the fields.
    json_properties: ClassVar[tuple[str, ...]] = ("checksum_mismatch", "drifted")

    @property
    def checksum_mismatch(self) -> bool:
        """Applied in two environments or more with different content: the dangerous case."""
        return len(set(self.applied_checksums.values())) > 1

    @property
    def drifted(self) -> tuple[str, ...]:
        """The environments where it was applied with other content than the code has now."""
        if self.checksum is None:
            return ()
        return tuple(name for name, value in self.applied_checksums.items() if value != self.checksum)


@attrs.frozen(kw_only=True)
class EnvironmentsReport:
    """Each environment as read, and each migration's row across them (in run order, then the ids
    only histories know)."""

    environments: tuple[EnvironmentReading, ...]
    migrations: tuple[MigrationSync, ...]

    @property
    def mismatches(self) -> tuple[MigrationSync, ...]:
        """Migrations applied with different content in different environments."""
        return tuple(row for row in self.migrations if row.checksum_mismatch)

    @property
    def unreachable(self) -> tuple[EnvironmentReading, ...]:
        """Environments that could not be read (unreachable or unreadable)."""
        return tuple(reading for reading in self.environments if not reading.readable)

    @property
    def ok(self) -> bool:
        """Every environment was read and no migration differs between them."""
        return not self.mismatches and not self.unreachable


async def local_checksums(migrations: MigrationSource) -> dict[str, str]:
    """Each migration's checksum as the code has it now, in run order (nothing touches a database)."""
    loaded = load_migrations(migrations, None)
    graph = MigrationGraph.build((migration.metadata, label) for migration, label in loaded)
    by_id = {migration.metadata.id: migration for migration, _ in loaded}
    return {migration_id: await by_id[migration_id].checksum() for migration_id in graph.order}


async def compare_environments(
    environments: Iterable[Environment] | Mapping[str, Environment],
    migrations: MigrationSource | None = None,
    *,
    schema: str = "brainmigrate",
    connect_timeout: float = CONNECT_TIMEOUT,
) -> EnvironmentsReport:
    """Read every environment (concurrently, read-only) and set them side by side.

    ``migrations`` is what ``Migrator`` takes (default: ``[tool.brainmigrate] migrations``). An
    environment that cannot be read is reported as such, with the reason; the others are still
    read. Nothing is written anywhere, no lock is taken, and brainmigrate's tables are never created.
    """
    chosen = list(environments.values() if isinstance(environments, Mapping) else environments)
    source = migrations if migrations is not None else configured_source()
    checksums = await local_checksums(source)
    ids = list(checksums)
    readings: list[EnvironmentReading | None] = [None] * len(chosen)

    async def read(index: int, environment: Environment) -> None:
        readings[index] = await read_environment(
            environment, source, ids, schema=schema, connect_timeout=connect_timeout
        )

    async with anyio.create_task_group() as group:
        for index, environment in enumerate(chosen):
            group.start_soon(read, index, environment)
    done = tuple(reading for reading in readings if reading is not None)
    return EnvironmentsReport(environments=done, migrations=tuple(_rows(checksums, done)))


def _rows(checksums: Mapping[str, str], readings: Sequence[EnvironmentReading]) -> list[MigrationSync]:
    ids = list(checksums)
    for reading in readings:
        ids.extend(mid for mid in reading.statuses if mid not in checksums and mid not in ids)
    return [
        MigrationSync(
            migration_id=mid,
            checksum=checksums.get(mid),
            statuses={r.name: r.statuses[mid] for r in readings if r.readable and mid in r.statuses},
            applied_checksums={r.name: r.checksums[mid] for r in readings if mid in r.checksums},
        )
        for mid in ids
    ]
