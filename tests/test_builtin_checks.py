"""The standard checks: ``pytest --brainmigrate-checks``, the one-line test class, and the plain
functions of ``brainmigrate.testing``, over the example projects in tests/scenarios/checks.

Inner pytest runs are subprocesses on this session's server, as in test_plugin.py; the plain
functions run here, on the plugin's throwaway databases.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from brainmigrate import ConfigError
from brainmigrate.testing import (
    Check,
    MigrationCheckError,
    check_dry_runs,
    check_heads,
    check_kinds,
    check_stairway,
    check_upgrade,
    run_checks,
)
from helpers import snapshot

SCENARIOS = Path(__file__).parent / "scenarios" / "checks"
#: The migrations every scenario starts from (the memories table), ahead of its own.
SHARED = SCENARIOS / "shared"
EXAMPLES = Path(__file__).parent.parent / "examples" / "second_brain" / "migrations"


def migrations_of(scenario: str, directory: Path) -> Path:
    """Copy a scenario's migrations into ``directory``: the shared ones, then its own."""
    shutil.copytree(SHARED, directory, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        SCENARIOS / scenario / "migrations",
        directory,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return directory


def project(pytester: pytest.Pytester, scenario: str, *, sample_data: bool = True) -> Path:
    """Copy a scenario into pytester's directory: its migrations, and its sample data as conftest.py."""
    migrations_of(scenario, pytester.path / "migrations")
    sample = SCENARIOS / scenario / "sample_data.py"
    if sample_data and sample.exists():
        shutil.copy(sample, pytester.path / "conftest.py")
    (pytester.path / "pyproject.toml").write_text('[tool.brainmigrate]\nmigrations = "migrations"\n')
    return pytester.path


def run_checks_inner(pytester: pytest.Pytester, dsn: str, *args: str) -> pytest.RunResult:
    """``pytest --brainmigrate-checks`` in a subprocess in pytester's directory, verbose; without
    the plugins these runs do not use, whose loading takes most of a run's time."""
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:schemathesis",
        "-p",
        "no:hypothesispytest",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        f"--brainmigrate-dsn={dsn}",
        "-v",
        *args,
        timeout=180,
    )


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Each test of the verbose run (the part after the class name) and its outcome."""
    found: dict[str, str] = {}
    for line in result.outlines:
        matched = re.match(r"^\S+::(test_\S+) (PASSED|FAILED|ERROR|SKIPPED)", line)
        if matched:
            found[matched[1]] = matched[2]
    return found


GOOD_TESTS = {
    "test_heads": "PASSED",
    "test_kinds[create_memories]": "PASSED",
    "test_kinds[tag_source]": "PASSED",
    "test_kinds[index_content]": "PASSED",
    "test_upgrade": "PASSED",
    "test_stairway[create_memories]": "PASSED",
    "test_stairway[tag_source]": "PASSED",
    "test_stairway[index_content]": "PASSED",
    "test_dry_run[tag_source]": "PASSED",
}


def test_option_adds_one_test_per_check_and_migration(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """--brainmigrate-checks on a sound project: every check passes, as one test per check and, for
    kinds, stairway and dry runs, one per migration, named by its id."""
    project(pytester, "good")

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    assert outcomes(result) == GOOD_TESTS
    result.assert_outcomes(passed=len(GOOD_TESTS))


def test_without_the_option_no_check_runs(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """Without --brainmigrate-checks the plugin adds no test."""
    project(pytester, "good")

    result = run_checks_inner(pytester, brainmigrate_dsn)

    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_without_configured_migrations_each_check_says_what_to_set(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """--brainmigrate-checks in a project naming no migrations: every test errors with a ConfigError
    listing the settings that name them."""
    (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    assert set(outcomes(result).values()) == {"ERROR"}
    result.stdout.fnmatch_lines(
        [
            "E *brainmigrate._errors.ConfigError: the standard checks found no migrations to check: set "
            "the brainmigrate_migrations ini setting, or [[]tool.brainmigrate[]] migrations in "
            "*pyproject.toml, or $BRAINMIGRATE_MIGRATIONS, or migrations = ... on your StandardChecks class"
        ]
    )


def test_one_line_test_module_runs_the_same_checks(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """A test module holding only ``from pytest_brainmigrate import StandardChecks as TestMigrations``
    runs the same tests, with sample data from a conftest.py next to it."""
    project(pytester, "good", sample_data=False)
    tests = pytester.mkpydir("tests")
    shutil.copy(SCENARIOS / "good" / "sample_data.py", tests / "conftest.py")
    (tests / "test_migrations.py").write_text(
        "from pytest_brainmigrate import StandardChecks as TestMigrations\n"
    )

    result = run_checks_inner(pytester, brainmigrate_dsn, "tests")

    assert outcomes(result) == GOOD_TESTS
    result.assert_outcomes(passed=len(GOOD_TESTS))


def test_a_subclass_checks_the_migrations_it_names(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """``migrations`` on a StandardChecks subclass overrides the configured migrations."""
    project(pytester, "good")
    migrations_of("irreversible", pytester.path / "other")
    pytester.makepyfile(
        test_other="""
        from pytest_brainmigrate import StandardChecks

        class TestOther(StandardChecks):
            migrations = "other"
        """
    )

    result = run_checks_inner(pytester, brainmigrate_dsn)

    assert outcomes(result)["test_stairway[add_archived]"] == "FAILED"


def test_a_rollback_that_leaves_a_column_fails_its_stairway_step(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """A migration declared reversible whose rollback leaves its column behind: its stairway test
    fails with the diff and what to do; the migrations after it are still checked."""
    project(pytester, "irreversible")

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    found = outcomes(result)
    assert found["test_stairway[add_archived]"] == "FAILED"
    assert found["test_stairway[index_content]"] == "PASSED"
    assert found["test_upgrade"] == "PASSED"
    result.assert_outcomes(passed=len(found) - 1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "migration 'add_archived' is not reversible: after its rollback the database differs from "
            "before it (+ only after the rollback, - only before it):",
            "  + column public.memories.archived: boolean not null, position 4",
            "Make its rollback undo exactly what it applies, or declare it reversible=False.",
        ]
    )


def test_two_heads_fail_only_when_one_head_is_required(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """Two branches on separate tables pass; with brainmigrate_single_head = true, test_heads fails
    naming both heads."""
    project(pytester, "two_heads")

    default = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")
    strict = run_checks_inner(
        pytester, brainmigrate_dsn, "--brainmigrate-checks", "-o", "brainmigrate_single_head=true"
    )

    assert outcomes(default)["test_heads"] == "PASSED"
    default.assert_outcomes(passed=len(outcomes(default)))
    assert {name for name, outcome in outcomes(strict).items() if outcome == "FAILED"} == {"test_heads"}
    strict.stdout.fnmatch_lines(["*warning several_heads (create_links, create_tags): 2 migrations have*"])


def test_branches_changing_one_column_fail_the_heads_check(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """Two branches both changing memories.content: test_heads fails with the conflict and the
    dependency to add; the upgrade fails at the second of them."""
    project(pytester, "conflict")

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    found = outcomes(result)
    assert found["test_heads"] == "FAILED"
    assert found["test_upgrade"] == "FAILED"
    result.stdout.fnmatch_lines(
        [
            "the order of the migrations is not decided (as `brainmigrate check` reports):",
            "  error conflict (rename_content, widen_content): *add 'rename_content' to the "
            "dependencies of 'widen_content' (or the other way round)",
        ]
    )


def test_wrong_kind_declarations_fail_the_kinds_check_of_each(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """A DatabaseDataMigration declaring DATABASE_SCHEMA, and SQL that only updates rows declared
    DATABASE_SCHEMA: test_kinds fails for each of them, saying what to declare; the rest cannot load."""
    project(pytester, "wrong_kind")

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    found = outcomes(result)
    assert found["test_kinds[create_memories]"] == "PASSED"
    assert found["test_kinds[lowercase_content]"] == "FAILED"
    assert found["test_kinds[trim_content]"] == "FAILED"
    result.stdout.fnmatch_lines(
        [
            "migration 'lowercase_content' declares the wrong kind: migration 'lowercase_content' (*) is "
            "a DatabaseDataMigration (kind 'data') but declares migration_type=MigrationType.DATABASE_SCHEMA*"
            "Declare one of DATABASE_DATA*",
            "migration 'trim_content' declares migration_type=MigrationType.DATABASE_SCHEMA, but its "
            "statements only change rows (INSERT, UPDATE, DELETE), no definitions: declare "
            "MigrationType.DATABASE_DATA*",
        ]
    )


def test_a_dry_run_failing_on_the_sample_data_fails_its_test(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """A memory data migration whose transform breaks on a sample memory without a priority: its
    dry-run test fails naming it, the item and the error; the upgrade fails on it too."""
    project(pytester, "failing_dry_run")

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    found = outcomes(result)
    assert found["test_dry_run[score_importance]"] == "FAILED"
    assert found["test_upgrade"] == "FAILED"
    result.stdout.fnmatch_lines(
        [
            "the dry run of migration 'score_importance' on the sample data failed on 1 of the items it "
            "sampled",
            "Fix the migration (its transform, batch statement or operations) for data like this, or the "
            "sample data if it is not data the migration will meet.",
            "Applying it failed too: data migration 'score_importance' failed on item 2: KeyError: "
            "'priority'*",
        ]
    )


def test_without_sample_data_the_same_dry_run_passes(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """The failing dry run's project without its sample data: on an empty table every check passes,
    which is why the sample data fixture exists."""
    project(pytester, "failing_dry_run", sample_data=False)

    result = run_checks_inner(pytester, brainmigrate_dsn, "--brainmigrate-checks")

    result.assert_outcomes(passed=len(outcomes(result)))
    assert outcomes(result)["test_dry_run[score_importance]"] == "PASSED"


# -- the plain functions, without pytest's help ---------------------------------------------------


async def memories_without_priority(conn: Any) -> None:
    await conn.execute(
        "INSERT INTO memories (id, content, metadata) VALUES (1, 'a note', '{}'), "
        "(2, 'a task', '{\"priority\": \"low\"}')"
    )


@pytest.mark.anyio
async def test_run_checks_passes_on_the_examples(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """Every check passes over the example Second Brain migrations; the report lists each migration
    the stairway walked, in run order."""
    report = await run_checks(brainmigrate_pool, EXAMPLES)

    assert report.failures == ()
    assert report.migration_ids(Check.STAIRWAY)[:2] == ("enable_pgvector_001", "create_memories_001")
    assert report.migration_ids(Check.DRY_RUN) == (
        "enrich_memories_with_sentiment_001",
        "nest_memory_metadata_001",
    )


@pytest.mark.anyio
async def test_check_stairway_raises_a_typed_error_naming_the_migration(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """check_stairway raises MigrationCheckError, an AssertionError, carrying the check, the
    migration and the diff."""
    migrations = migrations_of("irreversible", tmp_path / "migrations")

    with pytest.raises(MigrationCheckError) as caught:
        await check_stairway(brainmigrate_pool, migrations)

    assert isinstance(caught.value, AssertionError)
    assert (caught.value.check, caught.value.migration_ids) == ("stairway", ("add_archived",))
    assert "  + column public.memories.archived: boolean not null, position 4" in str(caught.value)


@pytest.mark.anyio
async def test_check_kinds_needs_no_database(tmp_path: Path) -> None:
    """check_kinds reads the migrations only, and names every migration declaring the wrong kind."""
    migrations = migrations_of("wrong_kind", tmp_path / "migrations")

    with pytest.raises(MigrationCheckError) as caught:
        await check_kinds(migrations)

    assert caught.value.migration_ids == ("lowercase_content", "trim_content")
    assert len(caught.value.problems) == 2


@pytest.mark.anyio
async def test_check_heads_fails_on_several_heads_only_when_asked(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """check_heads passes two independent branches, and with single_head=True fails on them."""
    migrations = migrations_of("two_heads", tmp_path / "migrations")

    await check_heads(brainmigrate_pool, migrations)
    with pytest.raises(MigrationCheckError, match=r"several_heads \(create_links, create_tags\)"):
        await check_heads(brainmigrate_pool, migrations, single_head=True)


@pytest.mark.anyio
async def test_check_upgrade_names_the_migration_that_fails(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """check_upgrade on the conflicting branches: the second to run cannot apply, and is named."""
    migrations = migrations_of("conflict", tmp_path / "migrations")

    with pytest.raises(MigrationCheckError) as caught:
        await check_upgrade(brainmigrate_pool, migrations)

    assert (caught.value.check, caught.value.migration_ids) == ("upgrade", ("widen_content",))
    assert 'column "content" of relation "memories" does not exist' in str(caught.value)


@pytest.mark.anyio
async def test_sample_data_mapping_loads_before_the_named_migration(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """A mapping of migration ids to loaders: the loader runs just before its migration, whose dry
    run then fails on the memory without a priority."""
    migrations = migrations_of("failing_dry_run", tmp_path / "migrations")

    with pytest.raises(MigrationCheckError) as caught:
        await check_dry_runs(
            brainmigrate_pool,
            migrations,
            sample_data={"score_importance": memories_without_priority},
        )

    assert caught.value.migration_ids == ("score_importance",)
    assert "KeyError: 'priority'" in str(caught.value)


@pytest.mark.anyio
async def test_a_failing_sample_loader_fails_the_dry_run_and_keeps_nothing(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """A loader that raises: the dry-run check of the migration it came before fails saying so, and
    nothing it wrote stays (the stairway after it still passes)."""

    async def half_then_fail(conn: Any) -> None:
        await conn.execute("INSERT INTO memories (id, content) VALUES (1, 'kept?')")
        raise RuntimeError("the fixture file is missing")

    report = await run_checks(
        brainmigrate_pool, migrations_of("good", tmp_path / "migrations"), sample_data=half_then_fail
    )

    assert [(o.check, o.migration_id) for o in report.failures] == [(Check.DRY_RUN, "tag_source")]
    assert report.failures[0].problem is not None
    assert report.failures[0].problem.startswith(
        "the sample data could not be loaded before migration 'tag_source': RuntimeError: the fixture "
        "file is missing\nNothing of it was kept."
    )
    assert await brainmigrate_pool.fetchval("SELECT count(*) FROM memories") == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sample_data", "message"),
    [
        pytest.param(
            {"no_such_migration": memories_without_priority},
            "the sample data names 'no_such_migration', which is not a pending migration; name the "
            "migration each loader runs before (one of 'create_memories', 'score_importance')",
            id="unknown-id",
        ),
        pytest.param(
            "INSERT INTO memories ...",
            "the sample data must be an async callable taking a connection, or a mapping of migration ids "
            "to such callables; got 'INSERT INTO memories ...'",
            id="not-callable",
        ),
    ],
)
async def test_bad_sample_data_is_refused_before_anything_runs(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path, sample_data: Any, message: str
) -> None:
    """Sample data naming a migration that is not pending, or not a callable: ConfigError saying
    what to give, and the database as it was."""
    migrations = migrations_of("failing_dry_run", tmp_path / "migrations")
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(ConfigError) as caught:
        await run_checks(brainmigrate_pool, migrations, sample_data=sample_data)

    assert str(caught.value) == message
    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.anyio
async def test_fingerprint_of_empty_tables_matches_the_digest_query(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """fingerprint() skips the digest query for tables without rows; the entry it writes for them is
    the one that query gives, and a table with rows still gets its digest."""
    from brainmigrate._checks.fingerprint import _data_query
    from brainmigrate.testing import fingerprint

    await brainmigrate_pool.execute(
        "CREATE TABLE empty (id int); CREATE TABLE full_ (id int); INSERT INTO full_ VALUES (1)"
    )

    async with brainmigrate_pool.acquire() as conn:
        entries = {name: detail for kind, name, detail in (await fingerprint(conn)).entries if kind == "data"}
        queried = {
            row["name"]: f"{row['rows']} row{'' if row['rows'] == 1 else 's'}, md5 {row['digest']}"
            for row in await conn.fetch(
                _data_query(["public.empty", "public.full_"]), "public.empty", "public.full_"
            )
        }

    assert entries == queried
