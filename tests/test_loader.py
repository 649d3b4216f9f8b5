"""Where migrations come from: classes, modules, packages, directories, pyproject or the environment."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from brainmigrate import ConfigError, MigrationLoadError, MigrationValidationError, Migrator
from brainmigrate._catalog.loader import configured_source, load_migrations

MIGRATION = """
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class {cls}(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="{id}", name="{id}", version="1.0", migration_type=MigrationType.DATABASE_SCHEMA
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE {id} (id int)"]
"""


def write_migration(path: Path, cls: str, migration_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MIGRATION.format(cls=cls, id=migration_id))


def ids(source: object) -> list[str]:
    return sorted(migration.metadata.id for migration, _ in load_migrations(source, None))


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable package `shop_migrations` with a migration in it and one in a subpackage."""
    name = f"shop_migrations_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    write_migration(root / "m001.py", "First", "first")
    (root / "more").mkdir()
    (root / "more" / "__init__.py").write_text("")
    write_migration(root / "more" / "m002.py", "Second", "second")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_dotted_name_loads_the_package_and_its_submodules(package: str) -> None:
    """Every Migration subclass defined in the package and its submodules is found."""
    assert ids(package) == ["first", "second"]


def test_a_module_object_is_searched_like_its_name(package: str) -> None:
    """Passing the imported module finds the same migrations as its dotted name."""
    module = __import__(package)
    assert ids(module) == ["first", "second"]


def test_a_directory_path_loads_every_python_file(tmp_path: Path) -> None:
    """A directory of .py files works without being importable; private files are ignored."""
    write_migration(tmp_path / "a.py", "A", "a")
    write_migration(tmp_path / "nested" / "b.py", "B", "b")
    write_migration(tmp_path / "_private.py", "C", "c")
    assert ids(tmp_path) == ["a", "b"]
    assert ids(str(tmp_path)) == ["a", "b"]


def test_imported_names_are_not_counted_twice(tmp_path: Path) -> None:
    """A class imported into another module is found only where it is defined."""
    write_migration(tmp_path / "a.py", "A", "a")
    (tmp_path / "b.py").write_text(
        "import sys\nA = [m for n, m in sys.modules.items() if n.endswith('_a')][0].A\n"
    )
    assert ids(tmp_path) == ["a"]


def test_a_package_that_fails_to_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An import error in a migrations module raises MigrationLoadError naming that module."""
    root = tmp_path / "broken_migrations_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "bad.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MigrationLoadError) as caught:
        ids("broken_migrations_pkg")
    assert caught.value.module == "broken_migrations_pkg.bad"
    assert "could not import migrations module 'broken_migrations_pkg.bad': RuntimeError: boom" in str(
        caught.value
    )
    sys.modules.pop("broken_migrations_pkg", None)


def test_an_unknown_module_name_is_a_load_error() -> None:
    """A dotted name that does not import raises MigrationLoadError naming it."""
    with pytest.raises(MigrationLoadError, match="could not import migrations module 'no_such_pkg_xyz'"):
        ids("no_such_pkg_xyz")


def test_a_list_of_non_migrations_is_refused() -> None:
    """Only Migration classes and instances are accepted in a list."""
    with pytest.raises(MigrationValidationError, match="is not a Migration subclass or instance"):
        ids([int])


def test_pyproject_names_the_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[tool.brainmigrate] migrations in ./pyproject.toml is the default source."""
    (tmp_path / "pyproject.toml").write_text('[tool.brainmigrate]\nmigrations = "myapp.migrations"\n')
    monkeypatch.delenv("BRAINMIGRATE_MIGRATIONS", raising=False)
    assert configured_source(tmp_path) == "myapp.migrations"


def test_the_environment_overrides_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$BRAINMIGRATE_MIGRATIONS wins over pyproject.toml, so a deployment can point elsewhere."""
    (tmp_path / "pyproject.toml").write_text('[tool.brainmigrate]\nmigrations = "myapp.migrations"\n')
    monkeypatch.setenv("BRAINMIGRATE_MIGRATIONS", "from.environment")
    assert configured_source(tmp_path) == "from.environment"


def test_without_any_source_the_error_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no argument, no pyproject setting and no environment variable: a clear ConfigError."""
    monkeypatch.delenv("BRAINMIGRATE_MIGRATIONS", raising=False)
    with pytest.raises(ConfigError) as caught:
        configured_source(tmp_path)
    message = str(caught.value)
    assert "Migrator(pool, migrations=...)" in message
    assert "[tool.brainmigrate]" in message
    assert "$BRAINMIGRATE_MIGRATIONS" in message


def test_a_wrong_pyproject_value_is_a_config_error(tmp_path: Path) -> None:
    """A non-string migrations setting is refused with the file named."""
    (tmp_path / "pyproject.toml").write_text("[tool.brainmigrate]\nmigrations = 3\n")
    with pytest.raises(ConfigError, match="must be a non-empty string"):
        configured_source(tmp_path)


@pytest.mark.anyio
async def test_migrator_reads_the_default_source_at_construction(
    brainmigrate_pool: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrator(pool) without migrations fails fast when nothing names them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRAINMIGRATE_MIGRATIONS", raising=False)
    with pytest.raises(ConfigError, match="no migrations given"):
        Migrator(brainmigrate_pool)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_migrator_uses_the_pyproject_source(
    brainmigrate_pool: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrator(pool) finds migrations through ./pyproject.toml."""
    write_migration(tmp_path / "migs" / "a.py", "A", "from_pyproject")
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [tool.brainmigrate]
        migrations = "{(tmp_path / "migs").as_posix()}"
        """)
    )
    monkeypatch.chdir(tmp_path)
    pending = await Migrator(brainmigrate_pool).pending()  # type: ignore[arg-type]
    assert [m.id for m in pending] == ["from_pyproject"]
