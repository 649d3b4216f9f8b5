"""The public surface: what `brainmigrate` exports and how its errors are shaped."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import brainmigrate
from brainmigrate import BrainMigrateError, Connection


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ and the module's public names never drift apart, and __all__ is sorted (the names
    are imported on first use, so dir() lists them, and each of them resolves)."""
    public = {
        name
        for name in dir(brainmigrate)
        if not name.startswith("_") and not inspect.ismodule(getattr(brainmigrate, name))
    }
    assert sorted(brainmigrate.__all__) == brainmigrate.__all__
    assert public | {"__version__"} == set(brainmigrate.__all__)


def test_the_environments_module_exports_exactly_its_public_names() -> None:
    """brainmigrate.environments' __all__ is sorted and lists exactly its public names."""
    import brainmigrate.environments as environments

    public = sorted(name for name in vars(environments) if not name.startswith("_"))

    assert sorted(environments.__all__) == environments.__all__ == public


def test_the_contract_names_are_exported() -> None:
    """The names users are promised import from the package root."""
    promised = {
        "Migrator", "MigrationConfig", "MigrationMetadata", "MigrationType", "MigrationStatus",
        "MigrationResult", "Migration", "DatabaseSchemaMigration", "BrainMigrateError",
        "MigrationValidationError", "DependencyError", "CyclicDependencyError", "MissingDependencyError",
        "DuplicateMigrationError", "ChecksumMismatchError", "IrreversibleMigrationError",
        "MigrationNotFoundError", "MigrationLockTimeout", "MigrationExecutionError", "ConfigError",
    }  # fmt: skip
    assert promised <= set(brainmigrate.__all__)


def test_every_error_has_one_root() -> None:
    """Every exported exception is a BrainMigrateError; ConfigError is also a ValueError."""
    errors = [v for v in vars(brainmigrate).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert all(issubclass(error, BrainMigrateError) for error in errors)
    assert issubclass(brainmigrate.ConfigError, ValueError)
    assert issubclass(brainmigrate.CyclicDependencyError, brainmigrate.DependencyError)
    assert issubclass(brainmigrate.MissingDependencyError, brainmigrate.DependencyError)


def test_no_error_is_named_like_a_builtin() -> None:
    """Catching an error by name never shadows a builtin."""
    import builtins

    names = {name for name in brainmigrate.__all__ if name.endswith(("Error", "Timeout"))}
    assert names.isdisjoint(dir(builtins))


def test_the_package_is_typed() -> None:
    """py.typed ships with the package, so type checkers read its annotations."""
    from importlib.resources import files

    assert files("brainmigrate").joinpath("py.typed").is_file()


def test_the_connection_alias_resolves_at_run_time() -> None:
    """A hook annotated with brainmigrate.Connection can be introspected (get_type_hints resolves it)."""
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    class Annotated(brainmigrate.Migration):
        def _get_metadata(self) -> brainmigrate.MigrationMetadata:
            raise NotImplementedError

        async def up(self, conn: Connection) -> None:
            return None

    hints = typing.get_type_hints(Annotated.up)

    assert hints["conn"] == asyncpg.Connection | PoolConnectionProxy


def test_importing_the_package_loads_neither_the_driver_nor_the_runners() -> None:
    """``import brainmigrate`` stays light (the command line's --help depends on it): the driver
    and the runners load when a name that needs them is first used."""
    code = (
        "import sys, brainmigrate; "
        "heavy = ('asyncpg', 'brainmigrate._migrator', 'opentelemetry'); "
        "print(sorted(m for m in heavy if m in sys.modules)); "
        "brainmigrate.Migrator; "
        "print('brainmigrate._migrator' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split("\n")[:2] == ["[]", "True"]
