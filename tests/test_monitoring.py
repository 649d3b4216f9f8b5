"""Monitoring figures: memory and error rate in progress and metrics, and the history's success rate
and average rollback time (``Migrator.statistics`` and ``brainmigrate status``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brainmigrate import (
    BulkMemoryItem,
    ConfigError,
    HistoryRecord,
    HistoryStatistics,
    MigrationConfig,
    MigrationExecutionError,
    MigrationType,
    Migrator,
    Progress,
)
from brainmigrate._model.statistics import parse_window, summarise, window_start
from brainmigrate._runtime.memory import peak_rss_bytes, rss_bytes
from data_support import create_memories, memory_migration
from helpers import create_table, schema_migration

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(
    attempt_id: int,
    operation: str = "apply",
    status: str = "completed",
    *,
    migration_id: str = "m",
    seconds: float = 1.0,
    started_at: datetime | None = None,
    hybrid_id: str | None = None,
) -> HistoryRecord:
    started = started_at or T0 + timedelta(minutes=attempt_id)
    finished = None if status == "running" else started + timedelta(seconds=seconds)
    return HistoryRecord(
        attempt_id=attempt_id,
        migration_id=migration_id,
        name=migration_id,
        migration_type=MigrationType.DATABASE_SCHEMA,
        version="1",
        checksum="c",
        operation=operation,
        status=status,
        applied_after=None,
        started_at=started,
        finished_at=finished,
        duration_ms=None if finished is None else seconds * 1000,
        statement_index=None,
        statement_count=None,
        error=None,
        sqlstate=None,
        hostname="h",
        pid=1,
        db_user="u",
        hybrid_id=hybrid_id,
    )


# -- the figures, as pure logic ----------------------------------------------------------------------


def test_the_success_rate_counts_finished_runs_only() -> None:
    """Completed, failed and dirty apply/rollback attempts make the rate; running ones, rows written
    by hand (stamp, resolve, abandon) and a hybrid's steps are left out."""
    records = [
        record(1),
        record(2, status="failed"),
        record(3, status="dirty"),
        record(4, "rollback", seconds=2.0),
        record(5, status="running"),
        record(6, "stamp"),
        record(7, "resolve"),
        record(8, "abandon"),
        record(9, migration_id="step", hybrid_id="h"),
        record(10, migration_id="h", hybrid_id="h", status="failed"),
    ]

    statistics = summarise(records, None)

    assert statistics == HistoryStatistics(
        since=None,
        attempts=5,
        completed=2,
        failed=2,
        dirty=1,
        running=1,
        rollbacks=1,
        average_rollback_seconds=2.0,
    )
    assert statistics.success_rate == 2 / 5


def test_the_window_starts_at_since() -> None:
    """Attempts started before ``since`` are left out; one started exactly at it is counted."""
    records = [record(1, status="failed"), record(2), record(3, "rollback", seconds=4.0)]

    statistics = summarise(records, records[1].started_at)

    assert (statistics.attempts, statistics.completed, statistics.failed) == (2, 2, 0)
    assert statistics.average_rollback_seconds == 4.0


def test_no_attempts_give_no_rate() -> None:
    """An empty window has no success rate and no rollback time (not 0 or 100%)."""
    statistics = summarise([], None)

    assert (statistics.success_rate, statistics.average_rollback_seconds) == (None, None)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["apply", "rollback", "stamp"]),
            st.sampled_from(["completed", "failed", "dirty", "running"]),
            st.floats(min_value=0, max_value=1e5),
        ),
        max_size=30,
    )
)
def test_the_figures_add_up(rows: list[tuple[str, str, float]]) -> None:
    """For any history: attempts = completed + failed + dirty, the rate lies in [0, 1], and the
    average rollback time lies between the shortest and the longest completed rollback."""
    records = [record(i, op, status, seconds=s) for i, (op, status, s) in enumerate(rows)]

    statistics = summarise(records, None)

    assert statistics.attempts == statistics.completed + statistics.failed + statistics.dirty
    assert statistics.success_rate is None or 0 <= statistics.success_rate <= 1
    rollbacks = [s for op, status, s in rows if op == "rollback" and status == "completed"]
    assert statistics.rollbacks == len(rollbacks)
    if rollbacks:
        assert statistics.average_rollback_seconds is not None
        assert min(rollbacks) - 1e-6 <= statistics.average_rollback_seconds <= max(rollbacks) + 1e-6


def test_a_span_counts_back_from_now() -> None:
    """A timedelta names the window ending now; a time is taken as it is."""
    now = T0 + timedelta(days=10)

    assert window_start(timedelta(days=7), now) == T0 + timedelta(days=3)
    assert window_start(T0) == T0
    assert window_start(None) is None


@pytest.mark.parametrize(
    ("since", "message"),
    [
        pytest.param(datetime(2026, 12, 1), "timezone-aware", id="naive"),
        pytest.param(timedelta(days=-1), "positive span", id="negative"),
        pytest.param("7d", "a datetime, a timedelta or None", id="text"),
    ],
)
def test_a_bad_window_is_refused(since: Any, message: str) -> None:
    """A naive time, a negative span or another type is a ConfigError saying what to give."""
    with pytest.raises(ConfigError, match=message):
        window_start(since)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("90s", timedelta(seconds=90), id="seconds"),
        pytest.param("30m", timedelta(minutes=30), id="minutes"),
        pytest.param("24h", timedelta(hours=24), id="hours"),
        pytest.param("7d", timedelta(days=7), id="days"),
        pytest.param("2w", timedelta(weeks=2), id="weeks"),
        pytest.param("2026-12-01T12:00:00+00:00", T0, id="iso"),
    ],
)
def test_the_command_line_window(text: str, expected: Any) -> None:
    """--since takes a span back from now or an ISO time with its offset."""
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "2026-12-01T12:00:00", "-3d"])
def test_a_bad_command_line_window_is_refused(text: str) -> None:
    """Anything else is a ConfigError naming both accepted forms."""
    with pytest.raises(ConfigError, match=r"neither a span|timezone-aware"):
        parse_window(text)


# -- the figures, from a real history ---------------------------------------------------------------


async def _known_history(pool: Any) -> Migrator:
    """Apply a (completed) and bad (failed), dry-run b, stamp nothing, roll a back (completed)."""
    migrator = Migrator(
        pool, [create_table("a", "a"), schema_migration("bad", ["SELECT 1/0"], dependencies=["a"])]
    )
    with pytest.raises(MigrationExecutionError):
        await migrator.run_pending()
    await migrator.run_pending(config=MigrationConfig(dry_run=True))
    await migrator.rollback("a")
    return migrator


async def test_statistics_over_a_real_history(brainmigrate_pool: Any) -> None:
    """Two completed attempts (apply and rollback of a) and one failed (bad) give 2/3; the dry run
    wrote nothing and is not counted; the rollback time is the rollback row's duration."""
    migrator = await _known_history(brainmigrate_pool)
    rows = await migrator.history()
    [rollback] = [r for r in rows if r.operation == "rollback"]

    statistics = await migrator.statistics()

    assert (statistics.attempts, statistics.completed, statistics.failed, statistics.dirty) == (3, 2, 1, 0)
    assert statistics.success_rate == 2 / 3
    assert statistics.rollbacks == 1
    assert rollback.duration_ms is not None
    assert statistics.average_rollback_seconds == pytest.approx(rollback.duration_ms / 1000)


async def test_statistics_since_a_time(brainmigrate_pool: Any) -> None:
    """A window starting at the rollback's start counts the rollback only; a span reaching back a
    day counts everything; a naive time is refused."""
    migrator = await _known_history(brainmigrate_pool)
    [rollback] = [r for r in await migrator.history() if r.operation == "rollback"]

    recent = await migrator.statistics(since=rollback.started_at)
    day = await migrator.statistics(since=timedelta(days=1))

    assert (recent.attempts, recent.completed, recent.since) == (1, 1, rollback.started_at)
    assert day.attempts == 3
    with pytest.raises(ConfigError, match="timezone-aware"):
        await migrator.statistics(since=datetime(2026, 1, 1))


async def test_statistics_of_an_empty_database(brainmigrate_pool: Any) -> None:
    """No history table yet: no attempts, no rate, and nothing is created."""
    statistics = await Migrator(brainmigrate_pool, [create_table("a", "a")]).statistics()

    assert (statistics.attempts, statistics.success_rate) == (0, None)
    assert await brainmigrate_pool.fetchval("SELECT to_regnamespace('brainmigrate')") is None


# -- memory and error rate in progress -------------------------------------------------------------


async def _failing_every_fifth(memory: dict[str, Any]) -> BulkMemoryItem:
    if memory["metadata"]["n"] % 5 == 0:
        raise ValueError("unreadable memory")
    return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})


async def test_progress_reports_memory_and_error_rate(brainmigrate_pool: Any) -> None:
    """Each on_progress report of a run with failing items carries this process's RSS (of the
    order of its peak) and error_rate = failed / done; the final report's is 1 in 5."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 200)
    reports: list[Progress] = []
    migrator = Migrator(
        brainmigrate_pool,
        [memory_migration("tag_001", transform=_failing_every_fifth)],
        on_progress=reports.append,
    )

    await migrator.run_pending(config=MigrationConfig(batch_size=50, continue_on_error=True))

    peak = peak_rss_bytes()
    assert reports  # commits may group batches: one report or more
    for report in reports:
        assert report.memory_rss_bytes is not None and report.memory_rss_bytes > 0
        assert peak is None or report.memory_rss_bytes <= 2 * peak
        assert report.error_rate == report.failed / report.done
    assert (reports[-1].failed, reports[-1].done, reports[-1].error_rate) == (40, 200, 0.2)


async def test_progress_read_from_the_database_has_the_error_rate_but_no_memory(
    brainmigrate_pool: Any,
) -> None:
    """Progress read back (as any process would) has the run's error rate; the RSS was the running
    process's, so it is None there."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 100)
    migrator = Migrator(brainmigrate_pool, [memory_migration("tag_001", transform=_failing_every_fifth)])
    await migrator.run_pending(config=MigrationConfig(batch_size=50, continue_on_error=True))

    progress = await migrator.progress("tag_001")

    assert progress is not None
    assert (progress.error_rate, progress.memory_rss_bytes) == (0.2, None)


def test_error_rate_before_any_item() -> None:
    """Before any item was handled there is no error rate (not 0)."""
    progress = Progress(
        migration_id="m",
        status="running",
        processed=0,
        failed=0,
        skipped=0,
        total=10,
        batch_number=0,
        rate=None,
        started_at=T0,
        updated_at=T0,
    )

    assert progress.error_rate is None


def test_rss_is_this_process_memory() -> None:
    """The RSS is of the order of the peak the kernel reports (which it updates lazily, so the
    current figure may run slightly above it)."""
    current = rss_bytes()
    peak = peak_rss_bytes()

    assert current is not None and current > 1_000_000  # a Python process with asyncpg loaded
    assert peak is not None and peak / 2 <= current <= 2 * peak


# -- metrics, with the SDK's in-memory reader in a process of its own ---------------------------------

_METRICS_SCRIPT = """
import asyncio, json, sys
from typing import ClassVar

import asyncpg
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

from brainmigrate import DatabaseDataMigration, DataSource, MigrationConfig, MigrationMetadata, Migrator
from brainmigrate._runtime.memory import peak_rss_bytes


class Notes(DatabaseDataMigration):
    source: ClassVar[DataSource] = DataSource(table="notes", key="id", columns=("n",))

    def _get_metadata(self):
        return MigrationMetadata(id="notes_001", name="notes", version="1", migration_type="database_data")

    async def transform_row(self, row):
        if row["n"] % 4 == 0:
            raise ValueError("bad note")
        return {"n": row["n"] + 1000}


async def main():
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=3)
    await pool.execute("CREATE TABLE notes (id int PRIMARY KEY, n int NOT NULL)")
    await pool.execute("INSERT INTO notes SELECT i, i FROM generate_series(1, 120) AS i")
    await Migrator(pool, [Notes]).run_pending(config=MigrationConfig(batch_size=30, continue_on_error=True))
    await pool.close()
    points = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = [
                    {"value": p.value, "attributes": dict(p.attributes)} for p in metric.data.data_points
                    if hasattr(p, "value")
                ]
    print(json.dumps({"points": points, "peak": peak_rss_bytes()}))


asyncio.run(main())
"""


def test_metrics_report_memory_rate_and_error_rate(brainmigrate_database: str, tmp_path: Path) -> None:
    """A data run exports gauges of the process's RSS (of the order of its peak), the run's
    items/s and its error rate (30 failed of 120 items: 0.25) beside the item counters."""
    script = tmp_path / "run.py"
    script.write_text(_METRICS_SCRIPT)

    done = subprocess.run(
        [sys.executable, str(script), brainmigrate_database],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ},
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    points = result["points"]
    [memory] = points["brainmigrate.process.memory.rss"]
    assert result["peak"] / 2 <= memory["value"] <= 2 * result["peak"]
    attributes = {"brainmigrate.migration.id": "notes_001"}
    assert points["brainmigrate.items.error_rate"] == [{"value": 0.25, "attributes": attributes}]
    [rate] = points["brainmigrate.items.rate"]
    assert rate["attributes"] == attributes and rate["value"] > 0
    assert [p["value"] for p in points["brainmigrate.items.failed"]] == [30]
    assert [p["value"] for p in points["brainmigrate.items.processed"]] == [90]


# -- brainmigrate status ---------------------------------------------------------------------------

_MIGRATION = """
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class Notes(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="notes_001", name="notes", version="1", migration_type=MigrationType.DATABASE_SCHEMA,
            reversible=True,
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE notes (id int PRIMARY KEY)"]

    async def get_rollback_statements(self):
        return ["DROP TABLE notes"]
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRAINMIGRATE_")}
    return subprocess.run(
        [sys.executable, "-m", "brainmigrate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=120,
        check=False,
    )


def test_status_shows_the_history_figures(brainmigrate_database: str, tmp_path: Path) -> None:
    """After an upgrade and a downgrade, status says 100% of 2 attempts and one rollback's time,
    in its table's footer and under "statistics" in --json; --since in the future counts none."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "m001_notes.py").write_text(textwrap.dedent(_MIGRATION))
    common = ["--dsn", brainmigrate_database, "--migrations", str(tmp_path / "migrations")]
    assert _cli(*common, "upgrade", cwd=tmp_path).returncode == 0
    assert _cli(*common, "downgrade", "notes_001", cwd=tmp_path).returncode == 0

    human = _cli(*common, "status", cwd=tmp_path)
    machine = _cli(*common, "--json", "status", cwd=tmp_path)
    future = _cli(*common, "--json", "status", "--since", "2999-01-01T00:00:00+00:00", cwd=tmp_path)
    bad = _cli(*common, "status", "--since", "last week", cwd=tmp_path)

    assert human.returncode == 0, human.stderr
    assert "success rate 100.0% of 2 attempts (2 completed, 0 failed, 0 dirty)" in human.stdout
    assert "average rollback" in human.stdout and "over 1 rollbacks" in human.stdout
    statistics = json.loads(machine.stdout)["statistics"]
    assert {k: statistics[k] for k in ("attempts", "completed", "failed", "rollbacks", "success_rate")} == {
        "attempts": 2,
        "completed": 2,
        "failed": 0,
        "rollbacks": 1,
        "success_rate": 1.0,
    }
    assert statistics["average_rollback_seconds"] >= 0
    assert json.loads(future.stdout)["statistics"]["attempts"] == 0
    assert bad.returncode == 3
    assert "neither a span" in bad.stderr


def test_the_progress_line_shows_the_error_rate_and_memory() -> None:
    """The command line's progress line puts the error rate and the memory beside items/s."""
    from brainmigrate._cli.output import progress_line

    progress = Progress(
        migration_id="tag_001",
        status="running",
        processed=80,
        failed=20,
        skipped=0,
        total=200,
        batch_number=2,
        rate=50.0,
        started_at=T0,
        updated_at=T0,
        memory_rss_bytes=96 * 2**20,
    )

    assert progress_line(progress) == (
        "tag_001 running: 100/200 done (80 written, 0 skipped, 20 failed), 50 items/s, 20.0% failed, "
        "96 MiB RSS, 2 s left"
    )
