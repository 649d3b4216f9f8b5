"""`brainmigrate new` and `write_migration()`: a migration module of each kind, with the next
number, the next version and the heads as dependencies, that loads and runs as written."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from brainmigrate import ConfigError, MigrationStatus, Migrator, migration_heads, write_migration
from data_support import create_memories
from test_cli import cli, run

KINDS = ("schema", "python", "data", "memory", "structure", "hybrid")

#: A migration like those of the Second Brain example: file 007, version 2.10.0.
TRIGGER = """
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class {cls}(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="{mid}", name="{mid}", version="{version}",
            migration_type=MigrationType.DATABASE_SCHEMA, dependencies={dependencies!r},
        )

    async def get_forward_statements(self):
        return ["SELECT 1"]
"""


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BRAINMIGRATE_DSN", "BRAINMIGRATE_MIGRATIONS", "BRAINMIGRATE_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def module(directory: Path, file: str, mid: str, version: str, dependencies: list[str]) -> None:
    cls = "".join(part.capitalize() for part in mid.split("_"))
    text = TRIGGER.format(cls=cls, mid=mid, version=version, dependencies=dependencies)
    (directory / file).write_text(textwrap.dedent(text))


@pytest.fixture
def branches(tmp_path: Path) -> Path:
    """Migrations with two heads: 001 <- 002 and 001 <- 007 (the highest number and version)."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "__init__.py").write_text("")
    module(directory, "001_create_memories.py", "create_memories_001", "2.2.0", [])
    module(directory, "002_index_memories.py", "index_memories_001", "2.4.0", ["create_memories_001"])
    module(directory, "007_touch_memories.py", "touch_memories_001", "2.10.0", ["create_memories_001"])
    return directory


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# -- what it writes ----------------------------------------------------------------------------------


def test_new_depends_on_the_heads_with_the_next_number_and_version(
    branches: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """008 after 007, 2.11.0 after 2.10.0, and the two heads as dependencies: afterwards it is the
    only head."""
    assert migration_heads(str(branches)) == ("index_memories_001", "touch_memories_001")

    code, out, err = run(capsys, "--migrations", str(branches), "new", "schema", "add_topics")

    assert code == 0, err
    path = branches / "008_add_topics.py"
    assert out.strip() == f"wrote {path}"
    text = path.read_text()
    assert 'id="add_topics_001"' in text and 'version="2.11.0"' in text
    assert '"index_memories_001",\n                "touch_memories_001",' in text
    assert "class AddTopics(DatabaseSchemaMigration):" in text
    assert migration_heads(str(branches)) == ("add_topics_001",)


def test_new_takes_the_id_version_and_directory_given(
    branches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "--json", "new", "python", "seed_settings", "--id", "seed_settings_v2",
        "--version", "3.0.0", "--directory", str(branches),
    )  # fmt: skip

    assert code == 0, err
    written = Path(json.loads(out)["path"])
    assert written == branches / "008_seed_settings.py"
    text = written.read_text()
    assert 'id="seed_settings_v2"' in text and 'version="3.0.0"' in text
    assert "async def up(self, conn: Connection) -> None:" in text


def test_new_writes_into_the_package_named_in_pyproject(tmp_path: Path) -> None:
    """As a subprocess: a dotted package name resolves to its directory, from the current one."""
    package = tmp_path / "myapp" / "migrations"
    package.mkdir(parents=True)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text('[tool.brainmigrate]\nmigrations = "myapp.migrations"\n')

    first = cli("new", "schema", "create_notes")
    second = cli("new", "memory", "enrich_notes")

    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # an empty package is no reason for a warning
    assert second.returncode == 0, second.stderr
    assert files(package) == ["001_create_notes.py", "002_enrich_notes.py", "__init__.py"]
    assert 'dependencies=["create_notes_001"]' in (package / "002_enrich_notes.py").read_text()
    assert 'version="0.2.0"' in (package / "002_enrich_notes.py").read_text()


@pytest.mark.anyio
async def test_a_generated_migration_of_every_kind_loads_and_runs(
    tmp_path: Path, brainmigrate_pool: Any
) -> None:
    """Six modules, one per kind, each depending on the one before: they load (the loader's checks
    pass) and run_pending applies them all over a memories table, which they leave as it was."""
    directory = tmp_path / "generated"
    directory.mkdir()
    written = [write_migration(kind, f"{kind}_step", directory=directory) for kind in KINDS]
    assert [path.name for path in written] == [f"00{n}_{kind}_step.py" for n, kind in enumerate(KINDS, 1)]
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 30)
    before = await brainmigrate_pool.fetch("SELECT * FROM memories ORDER BY id")

    migrator = Migrator(brainmigrate_pool, str(directory))
    pending = await migrator.pending()
    results = await migrator.run_pending()

    assert [meta.id for meta in pending] == [f"{kind}_step_001" for kind in KINDS]
    assert [list(meta.dependencies) for meta in pending] == [[]] + [[f"{k}_step_001"] for k in KINDS[:-1]]
    assert [(r.migration_id, r.status) for r in results] == [
        (f"{kind}_step_001", MigrationStatus.COMPLETED) for kind in KINDS
    ]
    assert await brainmigrate_pool.fetch("SELECT * FROM memories ORDER BY id") == before
    assert (await migrator.check()).findings == ()


def test_a_generated_module_is_one_ruff_and_mypy_would_accept() -> None:
    """The templates hold no TODO, and every kind's module compiles."""
    for kind in KINDS:
        from brainmigrate._authoring.templates import render

        text = render(kind, "add_topics", migration_id="add_topics_001", version="1.0.0", dependencies=["a"])
        compile(text, f"{kind}.py", "exec")
        assert "TODO" not in text and "XXX" not in text
        assert max(len(line) for line in text.splitlines()) <= 88


# -- refusals ----------------------------------------------------------------------------------------


def test_new_refuses_an_id_that_exists_and_writes_nothing(
    branches: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files(branches)

    with pytest.raises(
        ConfigError, match=r"a migration with id 'touch_memories_001' exists already"
    ) as caught:
        write_migration("schema", "touch_memories", directory=branches)
    assert "choose another name, or pass another id (such as 'touch_memories_002')" in str(caught.value)

    code, _, err = run(
        capsys, "--migrations", str(branches), "new", "schema", "other", "--id", "create_memories_001"
    )
    assert code == 3
    assert "a migration with id 'create_memories_001' exists already" in err
    assert files(branches) == before


def test_new_refuses_an_unknown_kind_and_writes_nothing(
    branches: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files(branches)

    with pytest.raises(
        ConfigError, match=r"unknown kind of migration 'view'; use one of schema, python, data"
    ):
        write_migration("view", "add_view", directory=branches)

    code, _, err = run(capsys, "--migrations", str(branches), "new", "view", "add_view")
    assert code == 2
    assert "invalid choice: 'view'" in err
    assert files(branches) == before


@pytest.mark.parametrize("name", ["add-topics", "1st_migration", "", "add topics", "trailing_", "naïve"])
def test_new_refuses_a_name_that_cannot_be_part_of_an_identifier(branches: Path, name: str) -> None:
    before = files(branches)

    with pytest.raises(ConfigError, match=r"cannot be part of an identifier; use snake_case"):
        write_migration("schema", name, directory=branches)

    assert files(branches) == before


def test_new_refuses_a_directory_that_does_not_exist_and_a_dependency_unknown(
    branches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "new", "schema", "add_topics", "--directory", str(tmp_path / "nowhere"))
    assert code == 3
    assert "does not exist; create it (brainmigrate init)" in err
    assert not (tmp_path / "nowhere").exists()

    with pytest.raises(ConfigError, match=r"dependencies 'nope_001' are not known migrations"):
        write_migration("schema", "add_topics", directory=branches, dependencies=["nope_001"])
    assert not any(re.match(r"008_", name) for name in files(branches))


def test_new_without_migrations_configured_says_where_to_set_them(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "new", "schema", "add_topics")

    assert code == 3
    assert "no migrations given" in err
