"""Environments side by side (``compare_environments``, ``brainmigrate envs``) and the promotion
guard (``check_promotion``, ``brainmigrate upgrade --env``), on two real databases of one server and
one that cannot be reached."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brainmigrate import (
    ConfigError,
    MigrationExecutionError,
    MigrationStatus,
    Migrator,
    PromotionRefusedError,
)
from brainmigrate._environments.config import has_password
from brainmigrate._ledger.lock import key_parts, lock_key
from brainmigrate.environments import (
    Environment,
    EnvironmentState,
    check_promotion,
    compare_environments,
    load_environments,
)
from brainmigrate.testing import DatabaseFactory, fingerprint

pytestmark = pytest.mark.anyio

#: Nothing listens on port 1 of this host: connecting is refused at once.
CLOSED = "postgresql://postgres@127.0.0.1:1/nothing"

_MIGRATION = """
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class Notes(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="notes_001", name="notes", version="1", migration_type=MigrationType.DATABASE_SCHEMA,
            reversible=True,
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE notes (id int PRIMARY KEY{extra})"]

    async def get_rollback_statements(self):
        return ["DROP TABLE notes"]


class Tags(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="tags_002", name="tags", version="2", migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["notes_001"], reversible=True,
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE tags (id int PRIMARY KEY)"]

    async def get_rollback_statements(self):
        return ["DROP TABLE tags"]
"""


def write_migrations(directory: Path, *, extra: str = "") -> Path:
    """notes_001 then tags_002 in ``directory``; ``extra`` changes notes_001's content."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "m_notes.py").write_text(textwrap.dedent(_MIGRATION.replace("{extra}", extra)))
    return directory


@pytest.fixture(scope="module")
def factory(brainmigrate_dsn: str) -> Iterator[DatabaseFactory]:
    """One factory (and template) for the module's databases."""
    made = DatabaseFactory(brainmigrate_dsn, prefix="brainmigrate_envs")
    yield made
    anyio.run(made.close)


@pytest.fixture
def databases(factory: DatabaseFactory) -> Iterator[tuple[str, str]]:
    """Two fresh databases on the test server (dev, staging), dropped afterwards."""
    dev, staging = anyio.run(factory.create), anyio.run(factory.create)
    yield dev, staging
    anyio.run(factory.drop, dev)
    anyio.run(factory.drop, staging)


@pytest.fixture
def database(factory: DatabaseFactory) -> Iterator[str]:
    """One fresh database on the test server, dropped afterwards."""
    dsn = anyio.run(factory.create)
    yield dsn
    anyio.run(factory.drop, dsn)


async def apply(dsn: str, migrations: Path, up_to: str | None = None) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    try:
        migrator = Migrator(pool, str(migrations))
        if up_to is None:
            await migrator.run_pending()
        else:
            await migrator.execute(up_to)
    finally:
        await pool.close()


async def everything(dsn: str) -> Any:
    """The database's fingerprint with brainmigrate's schema included, and whether it exists."""
    conn = await asyncpg.connect(dsn)
    try:
        schema = await conn.fetchval("SELECT to_regnamespace('brainmigrate') IS NOT NULL")
        return await fingerprint(conn, exclude_schemas=()), schema
    finally:
        await conn.close()


# -- the configuration, as pure logic -----------------------------------------------------------------


def test_environments_are_read_from_the_table() -> None:
    """A string is a DSN, "$NAME" or dsn_env a variable, and requires names another environment."""
    environments = load_environments(
        {
            "dev": "postgresql://localhost/dev",
            "staging": {"dsn_env": "STAGING_DATABASE_URL", "requires": "dev"},
            "production": {"dsn": "postgresql://db/prod", "requires": "staging"},
            "qa": "$QA_DATABASE_URL",
        }
    )

    assert environments == {
        "dev": Environment(name="dev", dsn="postgresql://localhost/dev"),
        "staging": Environment(name="staging", dsn_env="STAGING_DATABASE_URL", requires="dev"),
        "production": Environment(name="production", dsn="postgresql://db/prod", requires="staging"),
        "qa": Environment(name="qa", dsn_env="QA_DATABASE_URL"),
    }


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param("postgresql://app:secret@db/prod", id="uri"),
        pytest.param("postgresql://app@db/prod?password=secret", id="query"),
        pytest.param("host=db dbname=prod password=secret", id="keywords"),
        pytest.param("postgres://:secret@db/prod", id="no-user"),
    ],
)
def test_a_password_in_the_file_is_refused(dsn: str) -> None:
    """A DSN in pyproject.toml holding a password is a ConfigError telling to use a variable."""
    with pytest.raises(ConfigError, match="holds a password, which must not be written") as caught:
        load_environments({"production": {"dsn": dsn}})

    assert "dsn_env" in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"a": {"url": "postgresql://db/a"}}, "unknown keys", id="unknown-key"),
        pytest.param({"a": {"dsn": "postgresql://db/a", "requires": "b"}}, "which is not an", id="requires"),
        pytest.param(
            {"a": {"dsn": "postgresql://db/a", "requires": "b"}, "b": {"dsn": "x", "requires": "a"}},
            "cycle: a -> b -> a",
            id="cycle",
        ),
        pytest.param({"a": {"dsn": "postgresql://db/a", "dsn_env": "A"}}, "both dsn and dsn_env", id="both"),
        pytest.param({"a": {"requires": "a"}}, "needs dsn or dsn_env", id="neither"),
        pytest.param({"a": 5}, "must be a DSN", id="number"),
        pytest.param({"a": ""}, "non-empty string", id="empty"),
        pytest.param({"a": "$not a name"}, "must name an environment variable", id="variable"),
        pytest.param(["a"], "must be a table", id="list"),
    ],
)
def test_a_bad_configuration_is_refused(settings: Any, message: str) -> None:
    """Each mistake in [tool.brainmigrate.envs] is a ConfigError (a ValueError) saying what is wrong."""
    with pytest.raises(ConfigError, match=message) as caught:
        load_environments(settings)

    assert isinstance(caught.value, ValueError)


def test_an_unset_variable_is_named() -> None:
    """Resolving an environment whose variable is unset says which variable to set."""
    environment = Environment(name="staging", dsn_env="BRAINMIGRATE_TEST_UNSET_VARIABLE")

    with pytest.raises(ConfigError, match=r"\$BRAINMIGRATE_TEST_UNSET_VARIABLE, which is not set"):
        environment.resolve_dsn({})
    assert environment.resolve_dsn({"BRAINMIGRATE_TEST_UNSET_VARIABLE": "postgresql://x/y"}) == (
        "postgresql://x/y"
    )


_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@given(user=_WORD, password=_WORD, host=_WORD, database=_WORD)
def test_a_password_is_found_in_any_uri(user: str, password: str, host: str, database: str) -> None:
    """For any URI, the password is found when there is one, and only then (an empty one, as in
    the embedded server's ``postgres:@``, is none)."""
    assert has_password(f"postgresql://{user}:{password}@{host}/{database}")
    assert not has_password(f"postgresql://{user}@{host}/{database}")
    assert not has_password(f"postgresql://{user}:@{host}/{database}")
    assert not has_password(f"host={host} user={user} dbname={database}")


# -- side by side, through the Python API -------------------------------------------------------------


async def test_environments_side_by_side(databases: tuple[str, str], tmp_path: Path) -> None:
    """dev has notes_001 applied; staging was never migrated (not initialised, every migration
    pending, and brainmigrate's schema is still not there after the read); a closed port is
    reported unreachable with the reason, and the two others are still read."""
    dev, staging = databases
    migrations = write_migrations(tmp_path / "migrations")
    await apply(dev, migrations, up_to="notes_001")
    environments = [
        Environment(name="dev", dsn=dev),
        Environment(name="staging", dsn=staging),
        Environment(name="gone", dsn=CLOSED),
    ]

    report = await compare_environments(environments, str(migrations), connect_timeout=5)

    by_name = {reading.name: reading for reading in report.environments}
    assert [r.state for r in report.environments] == [
        EnvironmentState.READY,
        EnvironmentState.NOT_INITIALISED,
        EnvironmentState.UNREACHABLE,
    ]
    assert "ConnectionRefusedError" in (by_name["gone"].error or "")
    assert by_name["gone"].server == "127.0.0.1:1"
    assert [(row.migration_id, dict(row.statuses)) for row in report.migrations] == [
        ("notes_001", {"dev": MigrationStatus.COMPLETED, "staging": MigrationStatus.PENDING}),
        ("tags_002", {"dev": MigrationStatus.PENDING, "staging": MigrationStatus.PENDING}),
    ]
    assert report.mismatches == ()
    assert [r.name for r in report.unreachable] == ["gone"]
    assert not report.ok
    assert (await everything(staging))[1] is False


async def test_each_state_is_shown(databases: tuple[str, str], tmp_path: Path) -> None:
    """A failed migration shows as failed, a rolled-back one as rolled back, in their environment."""
    dev, staging = databases
    migrations = write_migrations(tmp_path / "migrations")
    (migrations / "m_bad.py").write_text(
        textwrap.dedent(
            """
            from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


            class Bad(DatabaseSchemaMigration):
                def _get_metadata(self):
                    return MigrationMetadata(
                        id="bad_003", name="bad", version="3", dependencies=["tags_002"],
                        migration_type=MigrationType.DATABASE_SCHEMA,
                    )

                async def get_forward_statements(self):
                    return ["SELECT 1/0"]
            """
        )
    )
    pool = await asyncpg.create_pool(dev, min_size=1, max_size=3)
    try:
        migrator = Migrator(pool, str(migrations))
        await migrator.execute("notes_001")
        await migrator.execute("tags_002")
        with pytest.raises(MigrationExecutionError):
            await migrator.execute("bad_003")
        await migrator.rollback("tags_002")
    finally:
        await pool.close()

    report = await compare_environments(
        [Environment(name="dev", dsn=dev), Environment(name="staging", dsn=staging)], str(migrations)
    )

    assert {row.migration_id: row.statuses["dev"] for row in report.migrations} == {
        "notes_001": MigrationStatus.COMPLETED,
        "tags_002": MigrationStatus.ROLLED_BACK,
        "bad_003": MigrationStatus.FAILED,
    }


async def test_the_same_id_with_different_content_is_flagged(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    """notes_001 applied with one content in dev and another in staging is a checksum mismatch;
    the environment whose content the code no longer has is named as drifted."""
    dev, staging = databases
    await apply(dev, write_migrations(tmp_path / "old", extra=", body text"), up_to="notes_001")
    current = write_migrations(tmp_path / "current")
    await apply(staging, current, up_to="notes_001")

    report = await compare_environments(
        [Environment(name="dev", dsn=dev), Environment(name="staging", dsn=staging)], str(current)
    )

    [mismatch] = report.mismatches
    assert mismatch.migration_id == "notes_001"
    assert mismatch.checksum_mismatch
    assert mismatch.drifted == ("dev",)
    assert mismatch.applied_checksums["staging"] == mismatch.checksum


async def test_reading_takes_no_lock_and_writes_nothing(database: str, tmp_path: Path) -> None:
    """While another session holds dev's migration lock, the comparison still answers (it never
    waits for the lock), and dev's schema, data and history are exactly as they were."""
    dev = database
    migrations = write_migrations(tmp_path / "migrations")
    await apply(dev, migrations, up_to="notes_001")
    before = await everything(dev)
    holder = await asyncpg.connect(dev)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key("brainmigrate"))
        with anyio.fail_after(120):  # a guard against a hang, not a measurement
            report = await compare_environments([Environment(name="dev", dsn=dev)], str(migrations))
        held = await holder.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = $1::bigint::oid AND objid = $2::bigint::oid "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            *key_parts(lock_key("brainmigrate")),
        )
    finally:
        await holder.close()

    assert report.migrations[0].statuses == {"dev": MigrationStatus.COMPLETED}
    assert held == 1  # only the holder's
    assert await everything(dev) == before


async def test_the_sessions_are_read_only(database: str, tmp_path: Path) -> None:
    """The comparison's sessions write nothing: a trigger that would record any change to the
    history table records none."""
    dev = database
    migrations = write_migrations(tmp_path / "migrations")
    await apply(dev, migrations)
    conn = await asyncpg.connect(dev)
    try:
        await conn.execute(
            """
            CREATE TABLE history_writes (at timestamptz NOT NULL DEFAULT now());
            CREATE FUNCTION note_history_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO history_writes DEFAULT VALUES; RETURN NULL; END $$;
            CREATE TRIGGER history_written AFTER INSERT OR UPDATE OR DELETE ON brainmigrate.migration_history
                FOR EACH STATEMENT EXECUTE FUNCTION note_history_write();
            """
        )
    finally:
        await conn.close()

    report = await compare_environments([Environment(name="dev", dsn=dev)], str(migrations))

    conn = await asyncpg.connect(dev)
    try:
        writes = await conn.fetchval("SELECT count(*) FROM history_writes")
    finally:
        await conn.close()
    assert report.environments[0].state is EnvironmentState.READY
    assert writes == 0


# -- the promotion guard, through the Python API --------------------------------------------------------


async def test_promotion_needs_the_required_environment_first(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    """staging requires dev: tags_002 (pending in dev) is refused, notes_001 (completed in dev with
    the same content) passes; nothing is written to either database by the check."""
    dev, staging = databases
    migrations = write_migrations(tmp_path / "migrations")
    await apply(dev, migrations, up_to="notes_001")
    environments = {
        "dev": Environment(name="dev", dsn=dev),
        "staging": Environment(name="staging", dsn=staging, requires="dev"),
    }
    before = await everything(dev), await everything(staging)

    await check_promotion("staging", environments, ["notes_001"], str(migrations))
    with pytest.raises(PromotionRefusedError) as caught:
        await check_promotion("staging", environments, ["notes_001", "tags_002"], str(migrations))

    assert caught.value.refusals == (("tags_002", "it is pending in 'dev', not completed"),)
    assert (caught.value.environment, caught.value.required, caught.value.migration_id) == (
        "staging",
        "dev",
        "tags_002",
    )
    assert "upgrade --env dev" in str(caught.value)
    assert (await everything(dev), await everything(staging)) == before


async def test_promotion_refuses_other_content(databases: tuple[str, str], tmp_path: Path) -> None:
    """notes_001 completed in dev with content the code no longer has is refused, naming both
    checksums."""
    dev, staging = databases
    await apply(dev, write_migrations(tmp_path / "old", extra=", body text"), up_to="notes_001")
    environments = {
        "dev": Environment(name="dev", dsn=dev),
        "staging": Environment(name="staging", dsn=staging, requires="dev"),
    }

    with pytest.raises(PromotionRefusedError, match="its content changed since") as caught:
        await check_promotion("staging", environments, ["notes_001"], str(write_migrations(tmp_path / "new")))

    assert [migration_id for migration_id, _ in caught.value.refusals] == ["notes_001"]


async def test_an_unreachable_required_environment_refuses_everything(database: str, tmp_path: Path) -> None:
    """When the required environment cannot be read nothing can be confirmed: every migration is
    refused, with the reason."""
    staging = database
    environments = {
        "dev": Environment(name="dev", dsn=CLOSED),
        "staging": Environment(name="staging", dsn=staging, requires="dev"),
    }

    with pytest.raises(PromotionRefusedError, match="could not be read") as caught:
        await check_promotion(
            "staging", environments, ["notes_001", "tags_002"], str(write_migrations(tmp_path / "m"))
        )

    assert [migration_id for migration_id, _ in caught.value.refusals] == ["notes_001", "tags_002"]


# -- the command line -------------------------------------------------------------------------------


def project(directory: Path, dev: str, *, staging_requires: str | None = "dev") -> Path:
    """A project with its migrations and three environments: dev (a DSN), staging (a variable,
    requiring dev) and gone (a closed port)."""
    write_migrations(directory / "migrations")
    requires = f', requires = "{staging_requires}"' if staging_requires else ""
    (directory / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [tool.brainmigrate]
            migrations = "migrations"

            [tool.brainmigrate.envs]
            dev = "{dev}"
            staging = {{ dsn_env = "BRAINMIGRATE_TEST_STAGING"{requires} }}
            gone = "{CLOSED}"
            """
        )
    )
    return directory


def cli(directory: Path, staging: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRAINMIGRATE_")}
    return subprocess.run(
        [sys.executable, "-m", "brainmigrate", *args],
        capture_output=True,
        text=True,
        cwd=directory,
        env={**environ, "BRAINMIGRATE_TEST_STAGING": staging},
        timeout=120,
        check=False,
    )


def test_envs_on_the_command_line(databases: tuple[str, str], tmp_path: Path) -> None:
    """`envs` shows one row per migration with a column per environment, says the closed port is
    unreachable (exit 3) while showing the others, and --json gives the same for CI."""
    dev, staging = databases
    directory = project(tmp_path, dev)
    assert cli(directory, staging, "upgrade", "--env", "dev", "notes_001").returncode == 0

    human = cli(directory, staging, "envs")
    machine = cli(directory, staging, "--json", "envs")

    assert human.returncode == 3, human.stderr
    lines = human.stdout.splitlines()
    assert any("notes_001" in line and "completed" in line and "pending" in line for line in lines)
    assert any("tags_002" in line and line.count("pending") == 2 for line in lines)
    # The server is shown as host:port, or not at all for a Unix socket (the embedded server's).
    assert re.search(r"^staging( \([^)]+\))?: not initialised$", human.stdout, re.MULTILINE)
    assert "gone (127.0.0.1:1): unreachable: ConnectionRefusedError" in human.stdout
    assert machine.returncode == 3
    document = json.loads(machine.stdout)
    assert document["ok"] is False
    assert [(e["name"], e["state"]) for e in document["environments"]] == [
        ("dev", "ready"),
        ("staging", "not_initialised"),
        ("gone", "unreachable"),
    ]
    assert [(m["migration_id"], m["statuses"]) for m in document["migrations"]] == [
        ("notes_001", {"dev": "completed", "staging": "pending"}),
        ("tags_002", {"dev": "pending", "staging": "pending"}),
    ]
    assert document["mismatches"] == []
    assert dev not in human.stdout + machine.stdout  # servers are shown, never DSNs


def test_envs_flags_a_checksum_mismatch(databases: tuple[str, str], tmp_path: Path) -> None:
    """notes_001 applied with other content in dev than in staging: `envs` flags the row, says so on
    stderr and exits 1; --json lists it under mismatches."""
    dev, staging = databases
    directory = project(tmp_path, dev, staging_requires=None)
    old = write_migrations(tmp_path / "old", extra=", body text")
    cli(directory, staging, "--migrations", str(old), "upgrade", "--env", "dev", "notes_001")
    cli(directory, staging, "upgrade", "--env", "staging", "notes_001")

    human = cli(directory, staging, "envs")
    machine = cli(directory, staging, "--json", "envs")

    assert human.returncode == 1
    assert "CHECKSUM MISMATCH" in human.stdout
    assert "notes_001 is applied with different content in different environments" in human.stderr
    document = json.loads(machine.stdout)
    assert document["mismatches"] == ["notes_001"]
    [row] = [m for m in document["migrations"] if m["migration_id"] == "notes_001"]
    assert (row["checksum_mismatch"], row["drifted"]) == (True, ["dev"])


def test_upgrade_env_is_guarded(databases: tuple[str, str], tmp_path: Path) -> None:
    """`upgrade --env staging` (a dry run too) before dev has the migrations is refused (exit 1,
    with the refusals as JSON under --json; staging untouched: not even brainmigrate's schema is
    created); once dev has them, it applies them."""
    dev, staging = databases
    directory = project(tmp_path, dev)
    before = anyio.run(everything, staging)

    refused = cli(directory, staging, "upgrade", "--env", "staging")
    dry_run = cli(directory, staging, "--json", "upgrade", "--env", "staging", "--dry-run")
    after_refusal = anyio.run(everything, staging)
    to_dev = cli(directory, staging, "upgrade", "--env", "dev")
    promoted = cli(directory, staging, "--json", "upgrade", "--env", "staging")

    assert refused.returncode == 1
    assert "refused to migrate environment 'staging'" in refused.stderr
    assert "notes_001: it is pending in 'dev'" in refused.stderr
    assert dry_run.returncode == 1  # a dry run is held to the same rule
    assert json.loads(dry_run.stdout) == {
        "refused": True,
        "environment": "staging",
        "requires": "dev",
        "refusals": [
            {"migration_id": "notes_001", "reason": "it is pending in 'dev', not completed"},
            {"migration_id": "tags_002", "reason": "it is pending in 'dev', not completed"},
        ],
    }
    assert after_refusal == before
    assert after_refusal[1] is False
    assert to_dev.returncode == 0, to_dev.stderr
    assert promoted.returncode == 0, promoted.stderr
    assert [r["migration_id"] for r in json.loads(promoted.stdout)] == ["notes_001", "tags_002"]


def test_upgrade_env_up_to_an_id(databases: tuple[str, str], tmp_path: Path) -> None:
    """Only the migrations up to ID are checked: notes_001 completed in dev is promoted alone,
    while tags_002 (still pending in dev) is refused."""
    dev, staging = databases
    directory = project(tmp_path, dev)
    cli(directory, staging, "upgrade", "--env", "dev", "notes_001")

    first = cli(directory, staging, "upgrade", "--env", "staging", "notes_001")
    second = cli(directory, staging, "upgrade", "--env", "staging")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 1
    assert "tags_002: it is pending in 'dev'" in second.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--dsn", CLOSED, "upgrade", "--env", "dev"], "not both", id="dsn-and-env"),
        pytest.param(["upgrade", "--env", "nowhere"], "no environment 'nowhere'", id="unknown"),
        pytest.param(
            ["upgrade", "--env", "gone"], "environment 'gone' of [tool.brainmigrate.envs]", id="unreachable"
        ),
    ],
)
def test_upgrade_env_mistakes(database: str, tmp_path: Path, args: list[str], message: str) -> None:
    """--env with --dsn, or naming no environment, is a configuration error (exit 3), dev untouched."""
    dev = database
    directory = project(tmp_path, dev)
    before = anyio.run(everything, dev)

    done = cli(directory, CLOSED, *args)

    assert done.returncode == 3
    assert message in done.stderr
    assert anyio.run(everything, dev) == before


def test_envs_without_environments(tmp_path: Path) -> None:
    """`envs` in a project naming no environments says how to name them (exit 3)."""
    write_migrations(tmp_path / "migrations")
    (tmp_path / "pyproject.toml").write_text('[tool.brainmigrate]\nmigrations = "migrations"\n')

    done = cli(tmp_path, CLOSED, "envs")

    assert done.returncode == 3
    assert "[tool.brainmigrate.envs]" in done.stderr


def test_a_password_in_pyproject_is_refused(tmp_path: Path) -> None:
    """A password in an environment's DSN in pyproject.toml stops `envs` with a configuration error
    (exit 3) that does not repeat the password."""
    write_migrations(tmp_path / "migrations")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.brainmigrate]\nmigrations = "migrations"\n\n'
        '[tool.brainmigrate.envs]\nprod = "postgresql://app:hunter2@db/prod"\n'
    )

    done = cli(tmp_path, CLOSED, "envs")

    assert done.returncode == 3
    assert "holds a password" in done.stderr
    assert "hunter2" not in done.stderr
