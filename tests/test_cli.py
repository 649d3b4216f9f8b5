"""The ``brainmigrate`` command line, on a real PostgreSQL: as a subprocess and through ``main()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from brainmigrate._cli.main import main

SCHEMA = "create_memories_001"
TAG = "tag_memories_002"
HYBRID = "topics_to_column_003"
#: The tagging transform fails while this is set, so a run can fail and be resumed.
FAIL = "BRAINMIGRATE_CLI_TEST_FAIL_TAGGING"
#: Seconds the tagging transform sleeps per row while this is set, so a run can be watched and cancelled.
SLOW = "BRAINMIGRATE_CLI_TEST_SLOW_TAGGING"
#: How many memories the schema migration inserts (default 40).
ROWS = "BRAINMIGRATE_CLI_TEST_ROWS"

MIGRATIONS = {
    "m001_create_memories.py": f'''
        import os

        from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


        class CreateMemories(DatabaseSchemaMigration):
            def _get_metadata(self):
                return MigrationMetadata(
                    id="{SCHEMA}", name="create memories", version="1.0.0",
                    migration_type=MigrationType.DATABASE_SCHEMA, reversible=True,
                )

            async def get_forward_statements(self):
                return [
                    "CREATE TABLE memories (id int PRIMARY KEY, metadata jsonb NOT NULL)",
                    "INSERT INTO memories SELECT i, jsonb_build_object('topic', 't' || (i % 3)) "
                    "FROM generate_series(1, " + os.environ.get("{ROWS}", "40") + ") AS i",
                ]

            async def get_rollback_statements(self):
                return ["DROP TABLE memories"]
    ''',
    "m002_tag_memories.py": f'''
        import asyncio
        import os
        from typing import ClassVar

        from brainmigrate import DatabaseDataMigration, DataSource, MigrationMetadata, MigrationType


        class TagMemories(DatabaseDataMigration):
            source: ClassVar[DataSource] = DataSource(table="memories", key="id", columns=("metadata",))

            def _get_metadata(self):
                return MigrationMetadata(
                    id="{TAG}", name="tag memories", version="1.0.0",
                    migration_type=MigrationType.DATABASE_DATA, reversible=True,
                    dependencies=["{SCHEMA}"],
                )

            async def transform_row(self, row):
                if os.environ.get("{FAIL}"):
                    raise RuntimeError("tagging is switched off")
                if os.environ.get("{SLOW}"):
                    await asyncio.sleep(float(os.environ["{SLOW}"]))
                return {{"metadata": {{**row["metadata"], "tagged": True}}}}
    ''',
    "m003_topics_to_column.py": f'''
        from typing import ClassVar

        from brainmigrate import (
            DatabaseDataMigration, DatabaseSchemaMigration, DataSource, HybridMigration,
            MigrationMetadata, MigrationType,
        )


        def _meta(mid, kind, dependencies=()):
            return MigrationMetadata(
                id=mid, name=mid, version="1.0.0", migration_type=kind, reversible=True,
                dependencies=list(dependencies),
            )


        class AddTopic(DatabaseSchemaMigration):
            def _get_metadata(self):
                return _meta("add_topic_003a", MigrationType.DATABASE_SCHEMA)

            async def get_forward_statements(self):
                return ["ALTER TABLE memories ADD COLUMN topic text"]

            async def get_rollback_statements(self):
                return ["ALTER TABLE memories DROP COLUMN topic"]


        class FillTopic(DatabaseDataMigration):
            source: ClassVar[DataSource] = DataSource(table="memories", key="id", columns=("metadata",))

            def _get_metadata(self):
                return _meta("fill_topic_003b", MigrationType.DATABASE_DATA)

            async def transform_row(self, row):
                return {{"topic": row["metadata"]["topic"]}}


        class DropTopicKey(DatabaseSchemaMigration):
            def _get_metadata(self):
                return _meta("drop_topic_key_003c", MigrationType.DATABASE_SCHEMA)

            async def get_forward_statements(self):
                return ["UPDATE memories SET metadata = metadata - 'topic'"]

            async def get_rollback_statements(self):
                return ["UPDATE memories SET metadata = metadata || jsonb_build_object('topic', topic)"]


        class TopicsToColumn(HybridMigration):
            expand = (AddTopic,)
            backfill = (FillTopic,)
            contract = (DropTopicKey,)
            contract_mode = "manual"

            def _get_metadata(self):
                return _meta("{HYBRID}", MigrationType.HYBRID, ["{TAG}"])
    ''',
}


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A directory of migrations: a schema, a data and a hybrid migration, in that dependency order."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in MIGRATIONS.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BRAINMIGRATE_DSN", "BRAINMIGRATE_MIGRATIONS", FAIL, SLOW, ROWS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m brainmigrate ARGS`` in the current directory."""
    return subprocess.run(
        [sys.executable, "-m", "brainmigrate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(ARGS)`` in this process: its exit code, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def statuses(capsys: pytest.CaptureFixture[str], common: list[str]) -> dict[str, str]:
    code, out, _ = run(capsys, *common, "--json", "status")
    assert code == 0
    return {item["id"]: item["status"] for item in json.loads(out)["migrations"]}


# -- as a subprocess -------------------------------------------------------------------------------


def test_the_verbs_as_a_subprocess(brainmigrate_database: str, migrations: Path) -> None:
    """status --check, a dry run, upgrade to an id, history --json and downgrade, as users run them."""
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]

    probe = cli(*common, "status", "--check")
    assert probe.returncode == 4, probe.stderr
    assert SCHEMA in probe.stdout and "pending" in probe.stdout

    dry = cli(*common, "upgrade", SCHEMA, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "CREATE TABLE memories" in dry.stdout and "(dry run)" in dry.stdout
    assert TAG not in dry.stdout  # up to and including SCHEMA only

    applied = cli(*common, "--json", "upgrade", SCHEMA)
    assert applied.returncode == 0, applied.stderr
    [result] = json.loads(applied.stdout)
    assert (result["migration_id"], result["status"]) == (SCHEMA, "completed")

    history = cli(*common, "history", "--json")  # global options after the verb work too
    assert history.returncode == 0, history.stderr
    [record] = json.loads(history.stdout)
    assert (record["migration_id"], record["operation"], record["status"]) == (SCHEMA, "apply", "completed")

    down = cli(*common, "downgrade", SCHEMA)
    assert down.returncode == 0, down.stderr
    assert f"{SCHEMA} rollback rolled_back" in down.stdout


def test_a_data_migration_that_fails_is_resumed_and_shown(
    brainmigrate_database: str, migrations: Path
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]

    failed = cli(*common, "upgrade", TAG, env={FAIL: "1"})
    assert failed.returncode == 1
    assert "tagging is switched off" in failed.stderr
    assert "Traceback" not in failed.stderr

    shown = cli(*common, "--json", "show", TAG)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "failed"

    resumed = cli(*common, "resume", TAG)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{TAG} apply completed" in resumed.stdout

    progress = cli(*common, "--json", "progress", TAG, "--watch")
    assert progress.returncode == 0, progress.stderr
    report = json.loads(progress.stdout)
    assert (report["status"], report["processed"], report["total"]) == ("completed", 40, 40)


def test_a_running_data_migration_is_watched_cancelled_and_resumed_from_another_process(
    brainmigrate_database: str,
    migrations: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`progress` and `cancel` reach a run in another process; `resume` finishes it."""
    monkeypatch.setenv(ROWS, "3000")
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]
    assert run(capsys, *common, "upgrade", SCHEMA)[0] == 0
    upgrade = subprocess.Popen(
        [sys.executable, "-m", "brainmigrate", *common, "upgrade", TAG],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, SLOW: "0.002"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            code, out, err = run(capsys, *common, "--json", "progress", TAG)
            assert code == 0, err
            report = json.loads(out)
            if report is not None and report["status"] == "running":
                break
            assert time.monotonic() < deadline, "the data migration never started"
            time.sleep(0.05)

        code, out, err = run(capsys, *common, "cancel", TAG)
        assert code == 0, err
        assert out.strip() in (f"{TAG}: cancelling", f"{TAG}: cancelled")
        stdout, stderr = upgrade.communicate(timeout=60)
    finally:
        if upgrade.poll() is None:
            upgrade.kill()
            upgrade.wait()
    assert f"{TAG} apply cancelled" in stdout, stderr
    assert upgrade.returncode == 1  # it did not apply what it was asked to

    code, out, err = run(capsys, *common, "progress", TAG)
    assert code == 0, err
    assert f"{TAG} cancelled:" in out and "/3000 done" in out

    code, out, err = run(capsys, *common, "resume", TAG)
    assert code == 0, err
    assert f"{TAG} apply completed" in out

    code, out, err = run(capsys, *common, "--json", "progress", TAG, "--watch")
    assert code == 0, err
    report = json.loads(out)
    assert (report["status"], report["processed"], report["total"]) == ("completed", 3000, 3000)


def test_a_dsn_that_does_not_connect_exits_3_with_a_clear_message(migrations: Path) -> None:
    refused = cli(
        "--dsn", "postgresql://postgres@127.0.0.1:1/postgres", "--migrations", str(migrations), "status"
    )

    assert refused.returncode == 3
    assert "could not connect to the database server at 127.0.0.1:1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""


def test_debug_shows_the_traceback(migrations: Path) -> None:
    refused = cli(
        "--debug",
        "--dsn",
        "postgresql://postgres@127.0.0.1:1/postgres",
        "--migrations",
        str(migrations),
        "history",
    )

    assert refused.returncode == 3
    assert "Traceback" in refused.stderr and "DatabaseUnavailableError" in refused.stderr


def test_help_and_version() -> None:
    shown = cli("--help")
    assert shown.returncode == 0
    assert "upgrade" in shown.stdout and "exit codes" in shown.stdout
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("brainmigrate ")


# -- through main() --------------------------------------------------------------------------------


def test_every_verb_through_main(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """upgrade, status, show, progress, cancel, retry-failed, abandon and contract, in one story."""
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]

    code, out, err = run(capsys, *common, "upgrade", "--type", "database_schema")
    assert code == 0, err
    assert f"{SCHEMA} apply completed" in out
    assert statuses(capsys, common) == {SCHEMA: "completed", TAG: "pending", HYBRID: "pending"}

    code, out, err = run(capsys, *common, "upgrade")
    assert code == 0, err
    assert f"{TAG} apply completed" in out and "40 written" in out
    assert "READY_TO_CONTRACT" in out  # the manual hybrid waits for `contract`

    code, out, err = run(capsys, *common, "status", "--check")
    assert code == 4, err  # the hybrid is not applied until its contract ran
    assert "1 pending, 0 dirty" in out

    code, out, err = run(capsys, *common, "--json", "show", HYBRID)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["status"] == "running" and shown["hybrid"]["phase"] == "ready_to_contract"

    code, out, err = run(capsys, *common, "progress", TAG)
    assert code == 0, err
    assert f"{TAG} completed: 40/40 done" in out

    code, out, err = run(capsys, *common, "--json", "progress", TAG)
    assert code == 0, err
    report = json.loads(out)  # the fields of Progress, then its share done and seconds left
    assert (report["processed"], report["total"], report["fraction"]) == (40, 40, 1.0)
    assert report["eta_seconds"] == (0.0 if report["rate"] else None)

    code, out, err = run(capsys, *common, "cancel", TAG)
    assert code == 1
    assert "nothing to cancel" in err

    code, out, err = run(capsys, *common, "--json", "retry-failed", TAG)
    assert code == 0, err
    assert json.loads(out)[0]["items_failed"] == 0

    code, out, err = run(capsys, *common, "retry-failed", SCHEMA)
    assert code == 1
    assert "not a data migration" in err

    code, out, err = run(capsys, *common, "--json", "abandon", HYBRID, "--reason", "testing the command line")
    assert code == 0, err
    assert json.loads(out)["migration_id"] == HYBRID
    assert statuses(capsys, common)[HYBRID] == "pending"

    code, out, err = run(capsys, *common, "upgrade", HYBRID)  # a new run carries on
    assert code == 0, err
    code, out, err = run(capsys, *common, "contract", HYBRID)
    assert code == 0, err
    assert f"{HYBRID} apply completed" in out
    assert statuses(capsys, common)[HYBRID] == "completed"
    code, out, err = run(capsys, *common, "status", "--check")
    assert code == 0, err
    assert "0 pending, 0 dirty, 0 running" in out

    code, out, err = run(capsys, *common, "contract", TAG)
    assert code == 1
    assert "not a hybrid migration" in err

    code, out, err = run(capsys, *common, "downgrade", SCHEMA)
    assert code == 1
    assert "applied migrations depend on it" in err

    code, out, err = run(capsys, *common, "--json", "downgrade", SCHEMA, "--cascade")
    assert code == 0, err
    assert [r["migration_id"] for r in json.loads(out)] == [HYBRID, TAG, SCHEMA]

    code, out, err = run(capsys, *common, "history")
    assert code == 0, err
    assert "History" in out and "rollback" in out


def test_status_check_exits_4_when_a_migration_is_pending(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]
    code, out, _ = run(capsys, *common, "--json", "status", "--check")
    assert code == 4
    report = json.loads(out)
    assert report["pending"] == [SCHEMA, TAG, HYBRID] and report["dirty"] == []


def test_an_unknown_migration_id_exits_1(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]
    code, _, err = run(capsys, *common, "show", "nope")
    assert code == 1
    assert "no migration with id 'nope'" in err and "Traceback" not in err

    code, _, err = run(capsys, *common, "upgrade", "nope")
    assert code == 1
    assert "no migration with id 'nope'" in err

    code, _, err = run(capsys, *common, "upgrade", TAG, "--type", "database_schema")
    assert code == 1
    assert f"migration {TAG!r} is pending but not of type database_schema" in err
    assert statuses(capsys, common)[SCHEMA] == "pending"  # nothing ran


def test_the_dsn_and_migrations_come_from_the_environment_and_pyproject(
    brainmigrate_database: str,
    migrations: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[tool.brainmigrate]\nmigrations = "{migrations.name}"\n')
    monkeypatch.setenv("BRAINMIGRATE_DSN", brainmigrate_database)
    code, out, err = run(capsys, "--json", "status")
    assert code == 0, err
    assert json.loads(out)["pending"] == [SCHEMA, TAG, HYBRID]

    monkeypatch.delenv("BRAINMIGRATE_DSN")
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.brainmigrate]\nmigrations = "{migrations.name}"\ndsn = "{brainmigrate_database}"\n'
    )
    code, out, err = run(capsys, "--json", "status")
    assert code == 0, err


def test_no_database_given_is_a_configuration_error(
    migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--migrations", str(migrations), "history")
    assert code == 3
    assert "no database given" in err and "--dsn" in err


def test_an_unknown_verb_or_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice: 'frobnicate'" in err

    code, _, err = run(capsys, "status", "--frobnicate")
    assert code == 2
    assert "unrecognized arguments: --frobnicate" in err

    code, _, err = run(capsys, "abandon", "some_id")
    assert code == 2
    assert "--reason" in err


def test_init_creates_the_package_and_the_setting_and_refuses_to_overwrite(
    tmp_path: Path, brainmigrate_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "myapp"\n')

    code, out, err = run(capsys, "init")
    assert code == 0, err
    assert "created migrations/" in out
    assert (tmp_path / "migrations" / "__init__.py").is_file()
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith('[project]\nname = "myapp"\n')
    assert '[tool.brainmigrate]\nmigrations = "migrations"\n' in text

    code, _, err = run(capsys, "init")
    assert code == 3
    assert "exists already" in err
    assert (tmp_path / "pyproject.toml").read_text() == text

    code, _, err = run(capsys, "init", "other")
    assert code == 3
    assert "has a [tool.brainmigrate] migrations setting already" in err
    assert not (tmp_path / "other").exists()

    code, out, err = run(capsys, "--dsn", brainmigrate_database, "--json", "status", "--check")
    assert code == 0, err  # the new package is where migrations are looked for: none yet
    assert json.loads(out)["migrations"] == []


def test_init_without_a_pyproject_creates_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json", "init", "db/migrations")
    assert code == 0, err
    assert json.loads(out)["package"] == "db/migrations"
    assert (tmp_path / "pyproject.toml").read_text() == '[tool.brainmigrate]\nmigrations = "db/migrations"\n'


def test_embedded_keeps_its_data_under_dot_brainmigrate(tmp_path: Path, migrations: Path) -> None:
    """--embedded starts a local PostgreSQL whose data outlives the command: a second run sees it."""
    applied = cli("--embedded", "--migrations", str(migrations), "upgrade", SCHEMA)
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / ".brainmigrate" / "postgres").is_dir()

    status = cli("--embedded", "--migrations", str(migrations), "--json", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == [TAG, HYBRID]

    elsewhere = cli(
        "--embedded", "--data-dir", str(tmp_path / "pg"), "--migrations", str(migrations), "--json", "status"
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout)["pending"] == [SCHEMA, TAG, HYBRID]


def test_upgrade_draws_a_progress_bar_for_a_data_migration_on_a_terminal(
    brainmigrate_database: str,
    migrations: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(
        capsys, "--dsn", brainmigrate_database, "--migrations", str(migrations), "upgrade", TAG
    )
    assert code == 0, err
    assert f"{TAG} apply completed" in out
    assert TAG in err and "40/40" in err and "items/s" in err


def test_without_rich_the_tables_are_plain_text(
    brainmigrate_database: str,
    migrations: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from brainmigrate._cli import output

    monkeypatch.setattr(output, "has_rich", lambda: False)
    code, out, err = run(capsys, "--dsn", brainmigrate_database, "--migrations", str(migrations), "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["Migrations", "id                    status"]
    assert lines[2] == f"{SCHEMA}   pending"
    assert "┃" not in out
