"""`Migrator.check()` and `brainmigrate check`: heads, conflicts between pending migrations,
checksum drift and unsafe DDL, on a real PostgreSQL; and what SQL touches, as properties."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from brainmigrate import CheckReport, FindingCode, Migrator, Severity
from brainmigrate._ledger.lock import lock_key
from brainmigrate._review.statements import Access, Touch, parse_sql
from helpers import schema_migration, snapshot
from test_cli import cli, run

# -- conflicts and heads, on the command line --------------------------------------------------------

#: Two migrations on top of the one creating memories, both changing memories.topic, neither
#: depending on the other: two heads whose order only their versions decide.
BRANCHES = {
    "001_create_memories.py": ("create_memories_001", [], ["CREATE TABLE memories (id int PRIMARY KEY)"]),
    "002_add_topic.py": (
        "add_topic_001",
        ["create_memories_001"],
        ["ALTER TABLE memories ADD COLUMN topic text"],
    ),
    "003_fill_topic.py": (
        "fill_topic_001",
        ["create_memories_001"],
        ["UPDATE memories SET topic = 'none' WHERE topic IS NULL"],
    ),
}


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BRAINMIGRATE_DSN", "BRAINMIGRATE_MIGRATIONS", "BRAINMIGRATE_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def write_modules(directory: Path, modules: dict[str, tuple[str, list[str], list[str]]]) -> Path:
    """One schema migration module per entry: file name -> (id, dependencies, statements)."""
    directory.mkdir(exist_ok=True)
    for number, (name, (mid, dependencies, statements)) in enumerate(modules.items()):
        (directory / name).write_text(
            textwrap.dedent(
                f"""
                from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


                class Made(DatabaseSchemaMigration):
                    def _get_metadata(self):
                        return MigrationMetadata(
                            id={mid!r}, name={mid!r}, version="1.{number}.0",
                            migration_type=MigrationType.DATABASE_SCHEMA, dependencies={dependencies!r},
                        )

                    async def get_forward_statements(self):
                        return {statements!r}
                """
            )
        )
    return directory


def schemas(dsn: str) -> list[str]:
    """The schemas of the database that are not PostgreSQL's own."""

    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname NOT IN ('information_schema', 'public') ORDER BY 1"
            )
        finally:
            await conn.close()
        return [row[0] for row in rows]

    return anyio.run(read)


def test_two_heads_touching_one_column_are_a_conflict_and_check_exits_1(
    brainmigrate_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names both migrations and the column, and says which dependency to add; the
    several heads are a warning. Nothing is written: not even brainmigrate's schema."""
    directory = write_modules(tmp_path / "migrations", BRANCHES)
    common = ["--dsn", brainmigrate_database, "--migrations", str(directory)]

    code, out, err = run(capsys, *common, "--json", "check")

    assert code == 1, err
    report = json.loads(out)
    assert report["ok"] is False
    assert [(f["code"], f["severity"]) for f in report["findings"]] == [
        ("conflict", "error"),
        ("several_heads", "warning"),
    ]
    conflict, heads = report["findings"]
    assert conflict["migration_ids"] == ["add_topic_001", "fill_topic_001"]
    assert "memories.topic" in conflict["message"]
    assert "add 'add_topic_001' to the dependencies of 'fill_topic_001'" in conflict["message"]
    assert heads["migration_ids"] == ["add_topic_001", "fill_topic_001"]
    assert schemas(brainmigrate_database) == []

    shown = cli(*common, "check")
    assert shown.returncode == 1, shown.stderr
    assert "error conflict (add_topic_001, fill_topic_001)" in shown.stdout
    assert "1 errors, 1 warnings" in shown.stdout
    assert "Traceback" not in shown.stderr


def test_a_dependency_between_the_branches_settles_the_order(
    brainmigrate_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With fill_topic depending on add_topic there is one head and no conflict: check exits 0."""
    mid, _, statements = BRANCHES["003_fill_topic.py"]
    directory = write_modules(
        tmp_path / "migrations", {**BRANCHES, "003_fill_topic.py": (mid, ["add_topic_001"], statements)}
    )

    code, out, err = run(capsys, "--dsn", brainmigrate_database, "--migrations", str(directory), "check")

    assert code == 0, err
    assert out.strip() == "0 errors, 0 warnings"


def test_an_index_and_an_update_of_one_column_do_not_conflict(
    brainmigrate_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reading a column (an index over it) and writing it may run in either order: only the heads
    are reported, as a warning, and check exits 0."""
    directory = write_modules(
        tmp_path / "migrations",
        {
            "001_create_memories.py": BRANCHES["001_create_memories.py"],
            "002_index_note.py": (
                "index_note_001",
                ["create_memories_001"],
                ["CREATE INDEX memories_note ON memories (note)"],
            ),
            "003_fill_note.py": ("fill_note_001", ["create_memories_001"], ["UPDATE memories SET note = ''"]),
        },
    )

    code, out, err = run(
        capsys, "--dsn", brainmigrate_database, "--migrations", str(directory), "--json", "check"
    )

    assert code == 0, err
    assert [f["code"] for f in json.loads(out)["findings"]] == ["several_heads"]


# -- the report, through the Migrator ------------------------------------------------------------

MEMORIES = "CREATE TABLE memories (id int PRIMARY KEY, note text, n int)"


async def memories_with_rows(pool: Any, rows: int = 20) -> None:
    await pool.execute(MEMORIES)
    await pool.execute(
        "INSERT INTO memories SELECT i, 'note ' || i, i FROM generate_series(1, $1) AS i", rows
    )
    await pool.execute("ANALYZE memories")


async def findings_of(pool: Any, *statements: str, transactional: bool = True) -> CheckReport:
    """check() of one pending migration running ``statements``."""
    migration = schema_migration("change_001", list(statements), transactional=transactional)
    return await Migrator(pool, [migration]).check()


@pytest.mark.anyio
async def test_checksum_drift_is_reported_after_editing_an_applied_migration(brainmigrate_pool: Any) -> None:
    migration = schema_migration("create_notes_001", ["CREATE TABLE notes (id int)"])
    await Migrator(brainmigrate_pool, [migration]).run_pending()
    assert (await Migrator(brainmigrate_pool, [migration]).check()).findings == ()

    migration.statements = ["CREATE TABLE notes (id bigint)"]
    report = await Migrator(brainmigrate_pool, [migration]).check()

    [finding] = report.findings
    assert (finding.code, finding.severity) == (FindingCode.CHECKSUM_DRIFT, Severity.ERROR)
    assert finding.migration_ids == ("create_notes_001",)
    assert "was changed after it was applied" in finding.message
    assert "restore its original content and write a new migration" in finding.message
    assert not report.ok


@pytest.mark.anyio
async def test_check_takes_no_lock_and_writes_nothing(brainmigrate_pool: Any) -> None:
    """While another session holds the runner lock, check answers at once, and the database and
    its history are as they were."""
    applied = schema_migration("create_notes_001", ["CREATE TABLE notes (id int)"])
    await Migrator(brainmigrate_pool, [applied]).run_pending()
    pending = schema_migration(
        "index_notes_001", ["CREATE INDEX notes_id ON notes (id)"], dependencies=["create_notes_001"]
    )
    before = await snapshot(brainmigrate_pool)
    async with brainmigrate_pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key("brainmigrate"))
        try:
            with anyio.fail_after(10):
                report = await Migrator(brainmigrate_pool, [applied, pending]).check()
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", lock_key("brainmigrate"))

    assert report.findings == ()  # notes is empty: an index on it blocks nothing
    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ("CREATE INDEX memories_note ON memories (note)", FindingCode.INDEX_NOT_CONCURRENT),
        ("ALTER TABLE memories ADD COLUMN u uuid DEFAULT gen_random_uuid()", FindingCode.VOLATILE_DEFAULT),
        (
            "ALTER TABLE memories ADD COLUMN t timestamptz DEFAULT clock_timestamp()",
            FindingCode.VOLATILE_DEFAULT,
        ),
        ("ALTER TABLE memories ADD COLUMN s bigserial", FindingCode.VOLATILE_DEFAULT),
        ("ALTER TABLE memories ALTER COLUMN n TYPE bigint", FindingCode.COLUMN_TYPE_CHANGE),
        ("ALTER TABLE memories ADD COLUMN flag boolean NOT NULL", FindingCode.NOT_NULL_WITHOUT_DEFAULT),
        ("ALTER TABLE memories ALTER COLUMN note SET NOT NULL", FindingCode.SET_NOT_NULL_WITHOUT_CHECK),
    ],
)
async def test_each_lint_rule_fires_on_a_table_with_rows(
    brainmigrate_pool: Any, statement: str, code: FindingCode
) -> None:
    await memories_with_rows(brainmigrate_pool)

    report = await findings_of(brainmigrate_pool, statement)

    [finding] = report.findings
    assert (finding.code, finding.severity, finding.migration_ids) == (code, Severity.ERROR, ("change_001",))
    assert finding.statement == statement
    assert "memories" in finding.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE memories ADD COLUMN c int DEFAULT 0",
        "ALTER TABLE memories ADD COLUMN t timestamptz DEFAULT now()",  # stable: no rewrite
        "ALTER TABLE memories ADD COLUMN label text DEFAULT 'x'::varchar(10)",
        "ALTER TABLE memories ADD COLUMN n2 bigint",
        "ALTER TABLE memories ADD COLUMN flag boolean NOT NULL DEFAULT false",
        "ALTER TABLE memories ALTER COLUMN n SET DEFAULT 1",
        "ALTER TABLE memories ALTER COLUMN id SET NOT NULL",  # NOT NULL already: nothing to scan
    ],
)
async def test_the_safe_forms_pass(brainmigrate_pool: Any, statement: str) -> None:
    await memories_with_rows(brainmigrate_pool)

    assert (await findings_of(brainmigrate_pool, statement)).findings == ()


@pytest.mark.anyio
async def test_create_index_concurrently_passes(brainmigrate_pool: Any) -> None:
    await memories_with_rows(brainmigrate_pool)

    report = await findings_of(
        brainmigrate_pool, "CREATE INDEX CONCURRENTLY memories_note ON memories (note)", transactional=False
    )

    assert report.findings == ()


@pytest.mark.anyio
async def test_the_volatility_of_a_default_is_what_pg_proc_says(brainmigrate_pool: Any) -> None:
    """Functions of the database's own, unknown to any list, are judged by their provolatile."""
    await memories_with_rows(brainmigrate_pool)
    await brainmigrate_pool.execute("CREATE FUNCTION pick() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1'")
    await brainmigrate_pool.execute(
        "CREATE FUNCTION fixed() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'"
    )

    volatile = await findings_of(
        brainmigrate_pool, "ALTER TABLE memories ADD COLUMN p int DEFAULT pick() + 1"
    )
    immutable = await findings_of(brainmigrate_pool, "ALTER TABLE memories ADD COLUMN f int DEFAULT fixed()")

    assert volatile.codes() == ["volatile_default"]
    assert "calls pick, which PostgreSQL marks volatile" in volatile.findings[0].message
    assert immutable.findings == ()


@pytest.mark.anyio
async def test_set_not_null_after_a_validated_check_passes(brainmigrate_pool: Any) -> None:
    """The safe sequence: a CHECK added NOT VALID, validated, then SET NOT NULL; whether the CHECK
    is in the database already or in earlier pending migrations. Not validated, it still fires."""
    await memories_with_rows(brainmigrate_pool)
    add = "ALTER TABLE memories ADD CONSTRAINT note_present CHECK (note IS NOT NULL) NOT VALID"
    validate = "ALTER TABLE memories VALIDATE CONSTRAINT note_present"
    set_not_null = "ALTER TABLE memories ALTER COLUMN note SET NOT NULL"

    unvalidated = await findings_of(brainmigrate_pool, add, set_not_null)
    pending = await findings_of(brainmigrate_pool, add, validate, set_not_null)
    await brainmigrate_pool.execute(add)
    await brainmigrate_pool.execute(validate)
    in_the_database = await findings_of(brainmigrate_pool, set_not_null)

    assert unvalidated.codes() == ["set_not_null_without_check"]
    assert pending.findings == ()
    assert in_the_database.findings == ()


@pytest.mark.anyio
async def test_on_an_empty_table_a_rewrite_is_a_warning_and_a_new_table_is_left_alone(
    brainmigrate_pool: Any,
) -> None:
    await brainmigrate_pool.execute(MEMORIES)

    empty = await findings_of(brainmigrate_pool, "ALTER TABLE memories ALTER COLUMN n TYPE bigint")
    index = await findings_of(brainmigrate_pool, "CREATE INDEX memories_note ON memories (note)")
    new = await findings_of(
        brainmigrate_pool,
        "CREATE TABLE notes (id int, body text)",
        "CREATE INDEX notes_body ON notes (body)",
        "ALTER TABLE notes ALTER COLUMN id TYPE bigint",
    )

    assert [(f.code, f.severity) for f in empty.findings] == [
        (FindingCode.COLUMN_TYPE_CHANGE, Severity.WARNING)
    ]
    assert empty.ok
    assert index.findings == ()
    assert new.findings == ()


# -- what SQL touches, as properties -----------------------------------------------------------------

#: Words the statements below use as keywords: an unquoted name must not be one.
_RESERVED = {
    "add", "alter", "column", "constraint", "create", "default", "drop", "exists", "from", "if",
    "index", "not", "null", "on", "only", "set", "table", "to", "type", "update", "using", "where",
    "check", "primary", "unique", "foreign", "exclude", "rename", "validate", "concurrently", "include",
    "returning", "cascade", "is", "and", "or", "in", "as",
}  # fmt: skip

unquoted = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True).filter(lambda n: n not in _RESERVED)
quoted_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20
)


@st.composite
def names(draw: st.DrawFn) -> tuple[str, str]:
    """A name as SQL writes it, and as PostgreSQL reads it."""
    if draw(st.booleans()):
        name = draw(unquoted)
        written = "".join(c.upper() if draw(st.booleans()) else c for c in name)
        return written, name
    name = draw(quoted_text)
    return '"' + name.replace('"', '""') + '"', name


def case(text: str, upper: bool) -> str:
    return text.upper() if upper else text.lower()


noise = st.sampled_from([" ", "\n  ", " /* ; ALTER TABLE other DROP x */ ", " -- ; DROP TABLE other\n"])


@given(table=names(), column=names(), upper=st.booleans(), gap=noise)
@example(table=("memories", "memories"), column=('"Topic"', "Topic"), upper=True, gap=" ")
@settings(max_examples=200, deadline=None)
def test_the_table_and_column_each_statement_touches_are_found(
    table: tuple[str, str], column: tuple[str, str], upper: bool, gap: str
) -> None:
    """Whatever the case of keywords, the quoting of names, and comments between the words."""
    (t, table_name), (c, column_name) = table, column

    def k(words: str) -> str:
        return gap.join(case(word, upper) for word in words.split())

    cases = [
        (f"{k('ALTER TABLE')} {t} {k('ADD COLUMN')} {c} int", Access.DEFINE, column_name),
        (
            f"{k('ALTER TABLE')} {t}{gap}{k('ALTER COLUMN')} {c} {k('TYPE')} bigint",
            Access.DEFINE,
            column_name,
        ),
        (f"{k('ALTER TABLE')} {t} {k('DROP COLUMN IF EXISTS')} {c}", Access.DEFINE, column_name),
        (f"{k('UPDATE')} {t} {k('SET')} {c} = 'a;b' {k('WHERE')} {c} IS NULL", Access.WRITE, column_name),
        (f"{k('CREATE INDEX')} ix {k('ON')} {t} ({c} DESC)", Access.READ, column_name),
        (f"{k('DROP TABLE IF EXISTS')} {t}", Access.DEFINE, None),
        (f"{k('CREATE TABLE')} {t} ({c} int, other text)", Access.DEFINE, None),
    ]
    for sql, access, touched in cases:
        [statement] = parse_sql(sql + ";")
        assert statement.touches == (Touch(table_name, touched, access),), sql


@given(
    table=names(),
    literal=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_what_strings_and_dollar_quotes_hold_touches_nothing(table: tuple[str, str], literal: str) -> None:
    """SQL inside a string constant or a function body is data, not a statement."""
    t, table_name = table
    quoted = "'" + literal.replace("'", "''") + "'"
    sql = (
        f"UPDATE {t} SET note = {quoted} || 'ALTER TABLE x DROP COLUMN y;'; "
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $body$ UPDATE secret SET x = 1; $body$"
    )

    assert [statement.touches for statement in parse_sql(sql)] == [
        (Touch(table_name, "note", Access.WRITE),),
        (),
    ]


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_text_is_read_without_error(sql: str) -> None:
    parse_sql(sql)


def test_overlapping_touches_clash_unless_they_only_read_or_read_and_write() -> None:
    define = Touch("memories", "topic", Access.DEFINE)
    write = Touch("memories", "topic", Access.WRITE)
    read = Touch("memories", "topic", Access.READ)
    table = Touch("memories", None, Access.DEFINE)

    assert define.clashes(read) and define.clashes(write) and write.clashes(write)
    assert not read.clashes(write) and not read.clashes(read)
    assert table.clashes(Touch("memories", "other", Access.READ))
    assert not define.clashes(Touch("memories", "other", Access.DEFINE))
    assert not define.clashes(Touch("notes", "topic", Access.DEFINE))


def test_the_second_brain_examples_have_only_several_heads(
    brainmigrate_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a fresh database the example store's migrations conflict nowhere: their indexes read
    what the data and structure migrations write, which may run in either order."""
    examples = Path(__file__).parent.parent / "examples" / "second_brain" / "migrations"

    code, out, err = run(
        capsys, "--dsn", brainmigrate_database, "--migrations", str(examples), "--json", "check"
    )

    assert code == 0, err
    assert [f["code"] for f in json.loads(out)["findings"]] == ["several_heads"]


@pytest.mark.anyio
async def test_what_data_and_structure_migrations_declare_conflicts_too(brainmigrate_pool: Any) -> None:
    """A structure migration writes its column, a memory migration the columns it reads: with a
    migration retyping that column and no dependency between them, both pairs are conflicts."""
    from brainmigrate import (
        DataSource,
        MemoryDataMigration,
        MemoryStructureMigration,
        MigrationMetadata,
        MigrationType,
    )
    from brainmigrate import structure as s

    def meta(mid: str, kind: MigrationType) -> MigrationMetadata:
        return MigrationMetadata(id=mid, name=mid, version="1.0.0", migration_type=kind)

    class Reshape(MemoryStructureMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return meta("reshape_001", MigrationType.MEMORY_STRUCTURE)

        def operations(self) -> list[s.Operation]:
            return [s.rename("topic", "topics")]

    class Enrich(MemoryDataMigration):
        source = DataSource(table="memories", key="id", columns=("content",))
        writes = ("embedding",)  # declared: it writes embedding, and only reads content

        def _get_metadata(self) -> MigrationMetadata:
            return meta("enrich_001", MigrationType.MEMORY_DATA)

    retype = schema_migration("retype_001", ["ALTER TABLE memories ALTER COLUMN metadata TYPE json"])
    reword = schema_migration("reword_001", ["UPDATE memories SET content = lower(content)"])

    report = await Migrator(brainmigrate_pool, [Reshape, Enrich, retype, reword]).check()

    conflicts = [f.migration_ids for f in report.findings if f.code is FindingCode.CONFLICT]
    assert sorted(conflicts) == [("reshape_001", "retype_001")]


def test_a_transform_names_the_columns_it_writes() -> None:
    """Without ``writes``, the columns a transform writes are those it names: BulkMemoryItem's
    keywords, or the keys of the dicts it returns; the columns it only reads are not writes."""
    from brainmigrate import (
        BulkMemoryItem,
        DatabaseDataMigration,
        DataSource,
        MemoryDataMigration,
        MigrationMetadata,
        MigrationType,
    )
    from brainmigrate._review.touches import declared_touches

    class Sentiment(MemoryDataMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(id="m", name="m", version="1", migration_type=MigrationType.MEMORY_DATA)

        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "mood": "calm"})

    class Tag(DatabaseDataMigration):
        source = DataSource(table="notes", key="id", columns=("body",))

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="t", name="t", version="1", migration_type=MigrationType.DATABASE_DATA
            )

        async def transform_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
            return [{"tags": row["body"].split()} for row in rows]

    assert [str(t) for t in declared_touches(Sentiment()) if t.access is Access.WRITE] == [
        "memories.metadata"
    ]
    assert [str(t) for t in declared_touches(Tag()) if t.access is Access.WRITE] == ["notes.tags"]
    assert {str(t) for t in declared_touches(Tag()) if t.access is Access.READ} == {"notes.id", "notes.body"}
