"""The promotion guard: an environment that ``requires`` another takes only migrations that
completed there first, with the same checksum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._catalog.loader import MigrationSource, configured_source
from .._errors import ConfigError, PromotionRefusedError
from .._model.metadata import MigrationStatus
from .config import Environment
from .read import CONNECT_TIMEOUT, EnvironmentState, read_environment
from .report import local_checksums


def environment_named(name: str, environments: Mapping[str, Environment]) -> Environment:
    """The environment called ``name``; a ConfigError naming the known ones otherwise."""
    try:
        return environments[name]
    except KeyError:
        known = ", ".join(sorted(environments)) or "none"
        raise ConfigError(
            f"no environment {name!r} in [tool.brainmigrate.envs] (the environments are: {known})"
        ) from None


async def check_promotion(
    environment: str,
    environments: Mapping[str, Environment],
    migration_ids: Sequence[str],
    migrations: MigrationSource | None = None,
    *,
    schema: str = "brainmigrate",
    connect_timeout: float = CONNECT_TIMEOUT,
) -> None:
    """Refuse, with :class:`PromotionRefusedError`, to apply ``migration_ids`` to ``environment``
    unless each has completed in the environment it ``requires``, with the checksum the code has now.

    The required environment is read read-only. One that cannot be read refuses every migration
    (nothing can be confirmed). An environment that requires none passes everything.
    """
    target = environment_named(environment, environments)
    if target.requires is None or not migration_ids:
        return
    required = environment_named(target.requires, environments)
    source = migrations if migrations is not None else configured_source()
    checksums = await local_checksums(source)
    reading = await read_environment(
        required, source, list(checksums), schema=schema, connect_timeout=connect_timeout
    )
    if reading.state in (EnvironmentState.UNREACHABLE, EnvironmentState.UNREADABLE):
        why = f"{required.name!r} could not be read ({reading.error}), so it cannot be confirmed"
        raise PromotionRefusedError(target.name, required.name, [(mid, why) for mid in migration_ids])
    refusals: list[tuple[str, str]] = []
    for migration_id in migration_ids:
        status = reading.statuses.get(migration_id, MigrationStatus.PENDING)
        if status is not MigrationStatus.COMPLETED:
            refusals.append((migration_id, f"it is {status.value} in {required.name!r}, not completed"))
            continue
        there, here = reading.checksums.get(migration_id), checksums.get(migration_id)
        if here is not None and there != here:
            refusals.append(
                (
                    migration_id,
                    f"it completed in {required.name!r} with checksum {there}, but the migration now "
                    f"has checksum {here}: its content changed since",
                )
            )
    if refusals:
        raise PromotionRefusedError(target.name, required.name, refusals)
