"""How data migrations behave: failing items, retries, pacing, timeouts, dry runs, progress,
telemetry, and the plan of the batched write."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import attrs
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from brainmigrate import (
    BulkMemoryItem,
    DataSource,
    MemoryDataMigration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStateError,
    MigrationStatus,
    MigrationType,
    Migrator,
    Progress,
    RetryPolicy,
)
from brainmigrate._engine import sql as run_sql
from brainmigrate.testing import fingerprint
from data_support import (
    create_memories,
    given_memories,
    key_at,
    memory_migration,
    meta,
    stop_counting_writes,
    tag,
    tagged_count,
    write_counts,
)
from helpers import create_table, history_rows, snapshot

pytestmark = pytest.mark.anyio

MIGRATION = "tag_memories_001"

#: Retries without backoff, so tests measure only the waits an error asks for.
NO_BACKOFF = RetryPolicy(attempts=3, initial_delay=0, max_delay=0, jitter=0)


class FlakyModel(Exception):
    """A model API that fails now and then and works when asked again."""


class Response:
    """What a retry reads of an HTTP client's response: its headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class TooManyRequests(Exception):
    """A 429 from a model API, saying how long to wait: as an attribute or as a response header."""

    def __init__(self, *, retry_after: float | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__("429 Too Many Requests")
        if retry_after is not None:
            self.retry_after = retry_after
        if headers is not None:
            self.response = Response(headers)


# -- what a transform is given --------------------------------------------------------------------


async def test_a_transform_gets_each_column_as_the_pool_reads_it_with_json_parsed(
    brainmigrate_pool: Any,
) -> None:
    """Items carry the values asyncpg gives the user's pool for each column (the uuid key as a UUID,
    numeric as Decimal, real[] as a list), except JSONB, which arrives parsed although the pool has
    no JSON codec."""
    await given_memories(brainmigrate_pool, 20, count_writes=True)
    await brainmigrate_pool.execute("UPDATE memories SET embedding = ARRAY[0.5, 0.25]::real[]")
    seen: list[dict[str, Any]] = []

    async def keep(memory: dict[str, Any]) -> None:
        seen.append(memory)

    columns = ("content", "metadata", "memory_type", "importance_score", "embedding")
    source = DataSource(table="memories", key="id", columns=columns)

    [result] = await Migrator(
        brainmigrate_pool, [memory_migration(transform=keep, source=source)]
    ).run_pending()

    assert result.items_skipped == 20
    rows = {
        str(row["id"]): dict(row)
        for row in await brainmigrate_pool.fetch(f"SELECT id, {', '.join(columns)} FROM memories")
    }
    assert len(seen) == 20
    for memory in seen:
        assert set(memory) == {"id", *columns}
        row = rows[str(memory["id"])]
        for name in ("id", "content", "memory_type", "importance_score", "embedding"):
            assert (type(memory[name]), memory[name]) == (type(row[name]), row[name]), name
        assert isinstance(row["metadata"], str)
        assert memory["metadata"] == json.loads(row["metadata"])


# -- items that fail, with and without continue_on_error ----------------------------------------


async def test_items_whose_transform_raises_are_recorded_and_the_others_committed(
    brainmigrate_pool: Any,
) -> None:
    """With continue_on_error, the run completes; the failing items are counted, listed with their
    error and attempts, and left alone; every other item is written once."""
    await given_memories(brainmigrate_pool, 500, count_writes=True)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if memory["metadata"]["n"] % 7 == 0:
            raise ValueError(f"cannot tag memory {memory['metadata']['n']}")
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    [result] = await migrator.run_pending(
        config=MigrationConfig(continue_on_error=True, batch_size=40, checkpoint_frequency=120)
    )

    assert result.status is MigrationStatus.COMPLETED
    assert (result.items_processed, result.items_failed, result.items_skipped) == (429, 71, 0)
    rows = await brainmigrate_pool.fetch(
        "SELECT id::text, (metadata->>'n')::int FROM memories WHERE (metadata->>'n')::int % 7 = 0"
    )
    failed = await migrator.failed_items(MIGRATION)
    assert {item.key: item.error for item in failed} == {
        key: f"ValueError: cannot tag memory {n}" for key, n in rows
    }
    assert {item.attempts for item in failed} == {1}
    async with brainmigrate_pool.acquire() as conn:
        assert await tagged_count(conn) == result.items_processed
        assert await write_counts(conn) == {0: 71, 1: 429}
    [record] = await history_rows(brainmigrate_pool)
    assert (record["status"], record["applied_after"]) == ("completed", True)
    assert record["error"] == f"71 items failed; see Migrator.failed_items({MIGRATION!r})"


async def test_a_write_the_database_refuses_is_isolated_from_its_neighbours(brainmigrate_pool: Any) -> None:
    """An importance_score of 5 breaks the table's CHECK: with continue_on_error only those memories
    fail (found through savepoints); their neighbours in the same batch are written, and the result
    reports exactly what was committed."""
    await given_memories(brainmigrate_pool, 500, count_writes=True)

    async def rescore(memory: dict[str, Any]) -> BulkMemoryItem:
        score = 5 if memory["metadata"]["n"] % 50 == 0 else 0.9
        return BulkMemoryItem(memory_id=memory["id"], importance_score=score)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=rescore)])

    [result] = await migrator.run_pending(config=MigrationConfig(continue_on_error=True, batch_size=100))

    assert result.status is MigrationStatus.COMPLETED
    assert (result.items_processed, result.items_failed) == (490, 10)
    failed = await migrator.failed_items(MIGRATION)
    assert len(failed) == 10
    for item in failed:
        assert item.error.startswith("CheckViolationError:")
        assert "memories_importance_score_check" in item.error
    bad = {
        str(r[0])
        for r in await brainmigrate_pool.fetch("SELECT id FROM memories WHERE (metadata->>'n')::int % 50 = 0")
    }
    assert {item.key for item in failed} == bad
    async with brainmigrate_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM memories WHERE importance_score = 0.9") == 490
        # The refused ones keep their old score ((n % 100) / 100).
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM memories"
                " WHERE importance_score = ((metadata->>'n')::int % 100) / 100.0 AND importance_score <> 0.9"
            )
            == 10
        )
        assert await write_counts(conn) == {0: 10, 1: 490}
    progress = await migrator.progress(MIGRATION)
    assert progress is not None
    assert (progress.processed, progress.failed) == (490, 10)


async def test_without_continue_on_error_the_first_failure_stops_the_run_and_reverses_it(
    brainmigrate_pool: Any,
) -> None:
    """The 350th item fails after 300 were committed: the error names it, and the committed batches
    are reversed from their before-images, leaving the table as it was."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 500)
        await stop_counting_writes(conn)
        bad = await key_at(conn, 350)
        before = await fingerprint(conn)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == bad:
            raise RuntimeError("the model refused this memory")
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=50, checkpoint_frequency=100))

    message = str(caught.value)
    assert caught.value.migration_id == MIGRATION
    assert f"failed on item {bad}: RuntimeError: the model refused this memory" in message
    assert "pass MigrationConfig(continue_on_error=True)" in message
    assert "its writes were reversed (300 rows restored)" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert [r["status"] for r in await history_rows(brainmigrate_pool)] == ["failed"]
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED
    assert [m.id for m in await migrator.pending()] == [MIGRATION]


async def test_with_enable_rollback_off_a_failed_run_resumes_from_its_checkpoint(
    brainmigrate_pool: Any,
) -> None:
    """Without rollback the committed part stays and the run is FAILED; once the cause is gone,
    execute() resumes it from the checkpoint and no memory is written twice."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 500)
        broken = {await key_at(conn, 350)}

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) in broken:
            raise RuntimeError("the model is down")
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])
    config = MigrationConfig(batch_size=50, checkpoint_frequency=100, enable_rollback=False)

    with pytest.raises(MigrationExecutionError, match="it can be resumed from its last checkpoint"):
        await migrator.run_pending(config=config)

    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED
    progress = await migrator.progress(MIGRATION)
    assert progress is not None
    assert (progress.status, progress.processed) == ("failed", 300)
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {0: 200, 1: 300}

    broken.clear()
    result = await migrator.execute(MIGRATION, config=config)

    assert result.status is MigrationStatus.COMPLETED
    assert result.items_processed == 200
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 500}
    progress = await migrator.progress(MIGRATION)
    assert progress is not None
    assert (progress.status, progress.processed) == ("completed", 500)
    assert [r["status"] for r in await history_rows(brainmigrate_pool)] == ["failed", "completed"]


# -- retries and pacing ----------------------------------------------------------------------------


async def test_a_retryable_transform_failing_30_percent_of_calls_still_writes_every_item_once(
    brainmigrate_pool: Any,
) -> None:
    """Exceptions listed in retry_on are retried; every item ends up transformed and written once."""
    await given_memories(brainmigrate_pool, 300, count_writes=True)
    rng = random.Random(20240601)
    calls = Counter[str]()
    succeeded = Counter[Any]()

    async def flaky(memory: dict[str, Any]) -> BulkMemoryItem:
        calls["all"] += 1
        if rng.random() < 0.3:
            calls["failed"] += 1
            raise FlakyModel("503 Service Unavailable")
        succeeded[memory["id"]] += 1
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=flaky, retry_on=(FlakyModel,))])
    policy = RetryPolicy(attempts=20, initial_delay=0, max_delay=0, jitter=0)

    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=50, retry=policy))

    assert (result.status, result.items_processed, result.items_failed) == (MigrationStatus.COMPLETED, 300, 0)
    assert 0.2 < calls["failed"] / calls["all"] < 0.4
    assert len(succeeded) == 300
    assert set(succeeded.values()) == {1}
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 300}


@pytest.mark.parametrize(
    ("error", "asked"),
    [
        pytest.param(TooManyRequests(retry_after=0.3), 0.3, id="retry_after-attribute"),
        pytest.param(TooManyRequests(headers={"Retry-After": "1"}), 1.0, id="Retry-After-header"),
    ],
)
async def test_a_retry_waits_at_least_as_long_as_the_error_asks(
    brainmigrate_pool: Any, error: TooManyRequests, asked: float
) -> None:
    """A 429 carrying retry_after (or a response with a Retry-After header) delays its retry by at
    least that long, although the retry policy itself would not wait at all."""
    await given_memories(brainmigrate_pool, 5, count_writes=True)
    tries: dict[Any, list[float]] = {}

    async def limited(memory: dict[str, Any]) -> BulkMemoryItem:
        tries.setdefault(memory["id"], []).append(time.monotonic())
        if len(tries) == 1 and len(tries[memory["id"]]) == 1:
            raise error
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=limited, retry_on=(TooManyRequests,))])

    [result] = await migrator.run_pending(config=MigrationConfig(concurrency=1, retry=NO_BACKOFF))

    assert (result.items_processed, result.items_failed) == (5, 0)
    [retried] = [times for times in tries.values() if len(times) == 2]
    assert asked - 0.01 <= retried[1] - retried[0] < asked + 2


async def test_rate_limit_bounds_transform_calls_per_second(brainmigrate_pool: Any) -> None:
    """rate_limit=100 spaces 60 calls (8 allowed in flight) over at least ~0.59 s."""
    await given_memories(brainmigrate_pool, 60, count_writes=True)
    started: list[float] = []

    async def timed(memory: dict[str, Any]) -> BulkMemoryItem:
        started.append(time.monotonic())
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=timed)])

    [result] = await migrator.run_pending(
        config=MigrationConfig(batch_size=20, concurrency=8, rate_limit=100)
    )

    assert result.items_processed == 60
    span = max(started) - min(started)
    assert span >= 59 / 100 * 0.95
    assert len(started) / span <= 100 * 1.1 + 1
    assert span < 5


async def test_a_pause_asked_for_by_throttle_is_honoured(brainmigrate_pool: Any) -> None:
    """throttle() is asked before each batch; the batch is transformed only after the pause asked for."""
    await given_memories(brainmigrate_pool, 100, count_writes=True)
    events: list[tuple[str, float]] = []

    async def timed(memory: dict[str, Any]) -> BulkMemoryItem:
        events.append(("transform", time.monotonic()))
        return tag(memory)

    class Throttled(memory_migration(transform=timed)):  # type: ignore[misc]
        async def throttle(self) -> float:
            events.append(("throttle", time.monotonic()))
            return 0.1

    [result] = await Migrator(brainmigrate_pool, [Throttled]).run_pending(
        config=MigrationConfig(batch_size=25, concurrency=1)
    )

    assert result.items_processed == 100
    pauses = [i for i, (kind, _) in enumerate(events) if kind == "throttle"]
    assert len(pauses) >= 4
    followed = [i for i in pauses if i + 1 < len(events) and events[i + 1][0] == "transform"]
    assert len(followed) == 4
    for i in followed:
        assert events[i + 1][1] - events[i][1] >= 0.1 - 0.01


async def test_transform_batch_gets_transform_batch_size_items_and_concurrency_is_bounded(
    brainmigrate_pool: Any,
) -> None:
    """Pages of 100 are cut into calls of 16 (the last shorter); 3 calls run at once, never more."""
    await given_memories(brainmigrate_pool, 250, count_writes=True)
    sizes: list[int] = []
    in_flight = Counter[str]()

    class Batched(MemoryDataMigration):
        transform_batch_size = 16

        def _get_metadata(self) -> MigrationMetadata:
            return meta("summarise_memories_001", migration_type=MigrationType.MEMORY_DATA, reversible=True)

        async def transform_batch(self, memories: list[dict[str, Any]]) -> Sequence[BulkMemoryItem | None]:
            sizes.append(len(memories))
            in_flight["now"] += 1
            in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
            await anyio.sleep(0.01)
            in_flight["now"] -= 1
            return [tag(memory) for memory in memories]

    [result] = await Migrator(brainmigrate_pool, [Batched]).run_pending(
        config=MigrationConfig(batch_size=100, concurrency=3)
    )

    assert result.items_processed == 250
    assert sorted(sizes) == sorted([16] * 6 + [4] + [16] * 6 + [4] + [16] * 3 + [2])
    assert in_flight["peak"] == 3
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 250}


async def test_concurrency_bounds_transform_memory_calls_in_flight(brainmigrate_pool: Any) -> None:
    """With concurrency=5, five transform_memory calls overlap, never six."""
    await given_memories(brainmigrate_pool, 100, count_writes=True)
    in_flight = Counter[str]()

    async def slow(memory: dict[str, Any]) -> BulkMemoryItem:
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        await anyio.sleep(0.005)
        in_flight["now"] -= 1
        return tag(memory)

    [result] = await Migrator(brainmigrate_pool, [memory_migration(transform=slow)]).run_pending(
        config=MigrationConfig(batch_size=50, concurrency=5)
    )

    assert result.items_processed == 100
    assert in_flight["peak"] == 5


# -- timeouts --------------------------------------------------------------------------------------


def slow_tag(delay: float) -> Any:
    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        await anyio.sleep(delay)
        return tag(memory)

    return transform


async def test_a_run_out_of_time_stops_at_a_batch_boundary_and_is_reversed(brainmigrate_pool: Any) -> None:
    """timeout_seconds stops the run between batches; with enable_rollback its writes are undone."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 200)
        await stop_counting_writes(conn)
        before = await fingerprint(conn)
    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=slow_tag(0.01))])
    config = MigrationConfig(batch_size=20, checkpoint_frequency=20, concurrency=1, timeout_seconds=0.5)

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending(config=config)

    message = str(caught.value)
    assert "did not finish within timeout_seconds=0.5; it stopped at a batch boundary" in message
    assert "its writes were reversed" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


async def test_a_run_out_of_time_without_rollback_is_left_resumable(brainmigrate_pool: Any) -> None:
    """Without enable_rollback a timed-out run keeps whole batches only, and execute() finishes it."""
    await given_memories(brainmigrate_pool, 200, count_writes=True)
    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=slow_tag(0.01))])
    config = MigrationConfig(
        batch_size=20, checkpoint_frequency=20, concurrency=1, timeout_seconds=0.5, enable_rollback=False
    )

    with pytest.raises(MigrationExecutionError, match="it can be resumed from its last checkpoint"):
        await migrator.run_pending(config=config)

    progress = await migrator.progress(MIGRATION)
    assert progress is not None
    assert progress.status == "failed"
    assert 0 < progress.processed < 200
    assert progress.processed % 20 == 0
    async with brainmigrate_pool.acquire() as conn:
        assert await tagged_count(conn) == progress.processed
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED

    result = await migrator.execute(
        MIGRATION, config=attrs.evolve(config, timeout_seconds=60, concurrency=10)
    )

    assert result.status is MigrationStatus.COMPLETED
    assert result.items_processed == 200 - progress.processed
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 200}


# -- dry runs and progress ---------------------------------------------------------------------------


async def test_a_dry_run_transforms_a_sample_and_writes_nothing(brainmigrate_pool: Any) -> None:
    """dry_run transforms dry_run_sample items, shows before/after examples, and leaves the database
    and the history untouched."""
    await given_memories(brainmigrate_pool, 200, count_writes=True)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [memory_migration()])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True, dry_run_sample=25))

    assert (result.dry_run, result.status) == (True, MigrationStatus.COMPLETED)
    assert (result.items_processed, result.items_failed, result.items_skipped) == (25, 0, 0)
    assert result.changes
    first = {str(r[0]) for r in await brainmigrate_pool.fetch("SELECT id FROM memories ORDER BY id LIMIT 25")}
    for change in result.changes:
        assert str(change.key) in first
        assert change.column == "metadata"
        assert "tagged" not in change.before
        assert change.after == {**change.before, "tagged": True}
    assert await snapshot(brainmigrate_pool) == before
    assert await migrator.progress(MIGRATION) is None
    assert await migrator.status(MIGRATION) is MigrationStatus.PENDING


async def test_on_progress_follows_each_checkpoint(brainmigrate_pool: Any) -> None:
    """After each checkpoint on_progress gets the items processed so far, the total, a rate and an
    ETA; afterwards migrator.progress() reports the finished run."""
    await given_memories(brainmigrate_pool, 600, count_writes=True)
    seen: list[Progress] = []

    async def on_progress(progress: Progress) -> None:
        seen.append(progress)

    migrator = Migrator(brainmigrate_pool, [memory_migration()], on_progress=on_progress)

    await migrator.run_pending(config=MigrationConfig(batch_size=50, checkpoint_frequency=100))

    processed = [p.processed for p in seen]
    assert processed == sorted(processed)
    assert sorted(set(processed)) == [100, 200, 300, 400, 500, 600]
    for progress in seen:
        assert (progress.migration_id, progress.status, progress.total) == (MIGRATION, "running", 600)
        assert progress.rate is not None and progress.rate > 0
        assert progress.eta_seconds is not None
    assert seen[0].eta_seconds is not None and seen[0].eta_seconds > 0
    assert [p.batch_number for p in seen] == sorted(p.batch_number for p in seen)

    final = await migrator.progress(MIGRATION)
    assert final is not None
    assert (final.status, final.processed, final.failed, final.total) == ("completed", 600, 0, 600)
    assert (final.batch_number, final.fraction, final.workers) == (12, 1.0, 0)


async def test_progress_of_a_schema_migration_is_refused(brainmigrate_pool: Any) -> None:
    """Only data migrations have progress; asking for a schema migration's is a state error."""
    migrator = Migrator(brainmigrate_pool, [create_table("notes_001", "notes")])
    await migrator.run_pending()

    with pytest.raises(MigrationStateError, match="'notes_001' is not a data migration; only those report"):
        await migrator.progress("notes_001")


# -- OpenTelemetry -------------------------------------------------------------------------------

_SPANS = InMemorySpanExporter()
_METRICS = InMemoryMetricReader()
_INSTALLED: list[bool] = []


@pytest.fixture
def telemetry() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    """Providers can be set once per process: install them (or join the tracer provider another
    module installed) once, and share one span exporter and one metric reader."""
    if not _INSTALLED:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(_SPANS))
        metrics.set_meter_provider(MeterProvider(metric_readers=[_METRICS]))
        _INSTALLED.append(True)
    _SPANS.clear()
    yield _SPANS, _METRICS
    _SPANS.clear()


def _batch_spans(exporter: InMemorySpanExporter, migration_id: str) -> list[ReadableSpan]:
    spans = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "brainmigrate.batch"
        and (s.attributes or {}).get("brainmigrate.migration.id") == migration_id
    ]
    return sorted(spans, key=lambda s: (s.attributes or {})["brainmigrate.batch.number"])


def _points(reader: InMemoryMetricReader, name: str, migration_id: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if point.attributes.get("brainmigrate.migration.id") == migration_id
    ]


async def test_batch_spans_are_children_of_the_migration_span_and_metrics_count_items(
    brainmigrate_pool: Any, telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    """Each committed batch has a brainmigrate.batch span under the migration's span, with its number,
    size and failed items; the items.processed / items.failed counters and the batch.duration
    histogram record the same run."""
    spans, reader = telemetry
    await given_memories(brainmigrate_pool, 250, count_writes=True)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if memory["metadata"]["n"] % 25 == 0:
            raise ValueError("unreadable")
        return tag(memory)

    migration_id = "spanned_memories_001"
    migrator = Migrator(brainmigrate_pool, [memory_migration(migration_id, transform=transform)])

    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=50, continue_on_error=True))

    assert (result.items_processed, result.items_failed) == (240, 10)
    [migration] = [s for s in spans.get_finished_spans() if s.name == "brainmigrate.migration"]
    assert (migration.attributes or {})["brainmigrate.migration.id"] == migration_id
    committed = [
        s for s in _batch_spans(spans, migration_id) if "brainmigrate.batch.size" in (s.attributes or {})
    ]
    assert [(s.attributes or {})["brainmigrate.batch.number"] for s in committed] == [1, 2, 3, 4, 5]
    assert all((s.attributes or {})["brainmigrate.batch.size"] == 50 for s in committed)
    assert sum((s.attributes or {})["brainmigrate.batch.failed"] for s in committed) == 10
    for span in committed:
        assert span.parent is not None
        assert span.parent.span_id == migration.context.span_id
        assert span.context.trace_id == migration.context.trace_id

    assert sum(p.value for p in _points(reader, "brainmigrate.items.processed", migration_id)) == 240
    assert sum(p.value for p in _points(reader, "brainmigrate.items.failed", migration_id)) == 10
    [duration] = _points(reader, "brainmigrate.batch.duration", migration_id)
    assert duration.count == 5
    assert duration.sum > 0


async def test_there_is_one_batch_span_per_committed_batch(
    brainmigrate_pool: Any, telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    """A run of 5 batches exports 5 batch spans, each with its size and failed count: reading the
    empty page that ends the key range is not a batch."""
    spans, _ = telemetry
    await given_memories(brainmigrate_pool, 250, count_writes=True)
    migration_id = "counted_batches_001"
    migrator = Migrator(brainmigrate_pool, [memory_migration(migration_id)])

    await migrator.run_pending(config=MigrationConfig(batch_size=50))

    progress = await migrator.progress(migration_id)
    assert progress is not None and progress.batch_number == 5
    batches = _batch_spans(spans, migration_id)
    assert [
        (
            (s.attributes or {}).get("brainmigrate.batch.number"),
            (s.attributes or {}).get("brainmigrate.batch.size"),
            (s.attributes or {}).get("brainmigrate.batch.failed"),
        )
        for s in batches
    ] == [(1, 50, 0), (2, 50, 0), (3, 50, 0), (4, 50, 0), (5, 50, 0)]


# -- the batched write's plan ------------------------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


async def _explain_batch_write(
    conn: Any, *, planner_settings: bool, image: str | None
) -> list[dict[str, Any]]:
    """EXPLAIN the library's batch UPDATE of 1,000 consecutive keys (5% of the table)."""
    statement = run_sql.write_batch(
        '"memories"', '"id"', "uuid", [('"metadata"', "text[]", "::jsonb")], image
    )
    keys = [r[0] for r in await conn.fetch("SELECT id FROM memories ORDER BY id OFFSET 5000 LIMIT 1000")]
    values = [json.dumps({"n": i}) for i in range(len(keys))]
    args: list[Any] = [keys, values] + ([["metadata"]] if image else [])
    transaction = conn.transaction()
    await transaction.start()
    try:  # rolled back, so the settings end with it
        if planner_settings:
            await conn.execute(run_sql.PLANNER_SETTINGS)
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *args)
    finally:
        await transaction.rollback()
    return list(_plan_nodes(json.loads(raw)[0]["Plan"]))


@pytest.mark.parametrize("with_images", [False, True], ids=["plain", "saving-before-images"])
async def test_the_batch_write_finds_rows_through_the_primary_key(
    brainmigrate_pool: Any, with_images: bool
) -> None:
    """With the planner settings the library applies, a batch of 5% of a 20,000-row table is written
    through memories_pkey: no hash join and no sequential scan of memories. Without them the
    planner would hash-join over a scan of the whole table."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 20_000)
        image = None
        if with_images:
            image = '"public"."before_images_test"'
            await conn.execute(run_sql.create_images(image, '"memories"', '"id"', ['"metadata"']))
            await conn.execute(f"ANALYZE {image}")

        nodes = await _explain_batch_write(conn, planner_settings=True, image=image)
        unguarded = await _explain_batch_write(conn, planner_settings=False, image=image)

    kinds = [node["Node Type"] for node in nodes]
    on_memories = [node for node in nodes if node.get("Relation Name") == "memories"]
    assert "Hash Join" not in kinds and "Merge Join" not in kinds
    assert not any(node["Node Type"] == "Seq Scan" for node in on_memories)
    assert any(
        node.get("Index Name") == "memories_pkey"
        for node in on_memories
        if node["Node Type"] != "ModifyTable"
    )
    # The trap the settings avoid.
    assert "Hash Join" in [node["Node Type"] for node in unguarded]
    assert any(
        node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "memories" for node in unguarded
    )
