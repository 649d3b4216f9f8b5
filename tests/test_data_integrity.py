"""Data migrations against transforms and sources that misbehave: items naming other
memories, transforms raising CancelledError, long non-ASCII ids, non-JSON values, duplicate keys,
preconditions of execute(), dry runs of transforms that mutate their input, and long identifiers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import anyio
import pytest

from brainmigrate import (
    BulkMemoryItem,
    DatabaseDataMigration,
    DataSource,
    MemoryDataMigration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate._engine import sql as run_sql
from brainmigrate.testing import fingerprint
from data_support import (
    create_memories,
    given_memories,
    key_at,
    memory_migration,
    meta,
    tag,
    tagged_count,
)
from helpers import history_rows, snapshot

pytestmark = pytest.mark.anyio

MIGRATION = "tag_memories_001"


async def metadata_of(pool: Any, key: str) -> dict[str, Any]:
    text = await pool.fetchval("SELECT metadata::text FROM memories WHERE id = $1::uuid", key)
    value: dict[str, Any] = json.loads(text)
    return value


def batch_migration(
    transform_batch: Any, *, migration_id: str = MIGRATION, batch_size: int = 64
) -> type[MemoryDataMigration]:
    """A MemoryDataMigration overriding transform_batch with ``transform_batch(memories)``."""

    class Made(MemoryDataMigration):
        transform_batch_size: ClassVar[int] = batch_size

        def _get_metadata(self) -> MigrationMetadata:
            return meta(migration_id, migration_type=MigrationType.MEMORY_DATA, reversible=True)

        async def transform_batch(self, memories: list[dict[str, Any]]) -> Sequence[BulkMemoryItem | None]:
            result: Sequence[BulkMemoryItem | None] = await transform_batch(memories)
            return result

    return Made


# -- 1. an item must belong to the memory it was returned for ----------------------------------------


async def test_an_item_naming_a_memory_outside_the_source_is_refused_and_that_memory_untouched(
    brainmigrate_pool: Any,
) -> None:
    """A transform returning a BulkMemoryItem for another memory (here one the source's `where` leaves
    out) is a programming error: MigrationValidationError names both memories, the other memory is
    never written, and the run's earlier batches are reversed."""
    await given_memories(brainmigrate_pool, 100)
    async with brainmigrate_pool.acquire() as conn:
        outsider = await conn.fetchval("SELECT id::text FROM memories WHERE (metadata->>'n')::int = 90")
        victim = await conn.fetchval(
            "SELECT id::text FROM memories WHERE (metadata->>'n')::int <= 50 ORDER BY id OFFSET 30 LIMIT 1"
        )
        before = await fingerprint(conn)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == victim:
            return BulkMemoryItem(memory_id=uuid.UUID(outsider), metadata={"hijacked": True})
        return tag(memory)

    source = DataSource(
        table="memories", key="id", columns=("content", "metadata"), where="(metadata->>'n')::int <= 50"
    )
    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform, source=source)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=10, checkpoint_frequency=10))

    assert caught.value.migration_id == MIGRATION
    assert (
        f"data migration {MIGRATION!r}: the transform returned an item for memory {outsider} when given "
        f"memory {victim}; an item must name the memory it was returned for"
    ) in str(caught.value)
    assert "its writes were reversed (30 rows restored)" in str(caught.value)
    assert "hijacked" not in await metadata_of(brainmigrate_pool, outsider)
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


async def test_transform_batch_returning_items_out_of_order_is_refused(brainmigrate_pool: Any) -> None:
    """transform_batch must return one item per memory, in order: items swapped between two memories
    are refused, naming both, and nothing is written."""
    await given_memories(brainmigrate_pool, 20)
    async with brainmigrate_pool.acquire() as conn:
        first, second = await key_at(conn, 1), await key_at(conn, 2)
    before = await snapshot(brainmigrate_pool)

    async def swapped(memories: list[dict[str, Any]]) -> list[BulkMemoryItem]:
        items = [tag(memory) for memory in memories]
        items[0], items[1] = items[1], items[0]
        return items

    migrator = Migrator(brainmigrate_pool, [batch_migration(swapped)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    expected = f"the transform returned an item for memory {second} when given memory {first}"
    assert expected in str(caught.value)
    assert (await snapshot(brainmigrate_pool))[0] == before[0]


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(str, id="text"),
        pytest.param(lambda key: str(key).upper(), id="upper-case-text"),
        pytest.param(lambda key: uuid.UUID(str(key)), id="equal-uuid"),
    ],
)
async def test_an_item_may_name_its_memory_by_an_equal_uuid_or_its_text(
    brainmigrate_pool: Any, spell: Any
) -> None:
    """memory_id is compared as a uuid when the key is one: the text of the memory's id (any case)
    or an equal UUID object names the same memory, and every memory is written once."""
    await given_memories(brainmigrate_pool, 30)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(memory_id=spell(memory["id"]), metadata={**memory["metadata"], "tagged": True})

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=8))

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 30)
    assert await tagged_count(brainmigrate_pool) == 30


@pytest.mark.parametrize(
    "memory_id",
    [
        pytest.param("not-a-uuid", id="text-not-a-uuid"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
    ],
)
async def test_an_item_naming_no_memory_of_the_right_kind_is_refused(
    brainmigrate_pool: Any, memory_id: Any
) -> None:
    """A memory_id that is not the memory's id in any spelling is refused with
    MigrationValidationError naming both, before anything is written."""
    await given_memories(brainmigrate_pool, 10)
    async with brainmigrate_pool.acquire() as conn:
        first = await key_at(conn, 1)
    before = await snapshot(brainmigrate_pool)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(memory_id=memory_id, metadata={"x": 1})

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    expected = f"the transform returned an item for memory {memory_id} when given memory {first}"
    assert expected in str(caught.value)
    assert (await snapshot(brainmigrate_pool))[0] == before[0]


# -- 2. CancelledError raised by a transform is a failure, not a skip ------------------------------------


@pytest.mark.parametrize(
    "concurrency", [pytest.param(1, id="one-at-a-time"), pytest.param(4, id="concurrent")]
)
async def test_a_transform_raising_cancelled_error_fails_the_run_instead_of_skipping(
    brainmigrate_pool: Any, concurrency: int
) -> None:
    """A CancelledError the transform raises itself (not a cancellation of the run) fails its item
    like any exception: without continue_on_error the run fails, names the item, and is reversed."""
    await given_memories(brainmigrate_pool, 60)
    async with brainmigrate_pool.acquire() as conn:
        bad = await key_at(conn, 25)
        before = await fingerprint(conn)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == bad:
            raise asyncio.CancelledError("the model client gave up")
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending(
            config=MigrationConfig(batch_size=10, checkpoint_frequency=10, concurrency=concurrency)
        )

    assert (
        f"data migration {MIGRATION!r} failed on item {bad}: CancelledError: the model client gave up"
        in str(caught.value)
    )
    assert "its writes were reversed (20 rows restored)" in str(caught.value)
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


async def test_a_transform_raising_cancelled_error_is_recorded_with_continue_on_error(
    brainmigrate_pool: Any,
) -> None:
    """With continue_on_error, the item whose transform raised CancelledError is in the error ledger,
    counted failed (not skipped), and every other memory is written."""
    await given_memories(brainmigrate_pool, 40)
    async with brainmigrate_pool.acquire() as conn:
        bad = await key_at(conn, 7)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == bad:
            raise asyncio.CancelledError()
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    [result] = await migrator.run_pending(config=MigrationConfig(continue_on_error=True, batch_size=10))

    assert (result.items_processed, result.items_failed, result.items_skipped) == (39, 1, 0)
    assert [(item.key, item.error) for item in await migrator.failed_items(MIGRATION)] == [
        (bad, "CancelledError: ")
    ]
    assert await tagged_count(brainmigrate_pool) == 39


async def test_a_throttle_raising_cancelled_error_fails_the_run(brainmigrate_pool: Any) -> None:
    """Outside the transform too, a CancelledError the migration's code raises itself (here its
    throttle()) fails the run with a typed error and reverses it, instead of leaving it "running"."""
    await given_memories(brainmigrate_pool, 30)
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)
    made = memory_migration()
    calls: list[int] = []

    async def throttle(self: Any) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise asyncio.CancelledError("from throttle")
        return 0.0

    made.throttle = throttle  # type: ignore[method-assign]
    migrator = Migrator(brainmigrate_pool, [made])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=10, checkpoint_frequency=10))

    assert str(caught.value).startswith(
        f"data migration {MIGRATION!r} failed: CancelledError: from throttle (raised by the migration's "
        "code, not by a cancellation of the run); its writes were reversed (10 rows restored)"
    )
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


@pytest.mark.parametrize("how", ["move_on_after", "fail_after", "cancel_scope"])
async def test_a_real_cancellation_of_the_run_still_cancels_it(brainmigrate_pool: Any, how: str) -> None:
    """Cancelling the caller (a timeout around run_pending, or its cancel scope) while transforms
    are in flight cancels the run promptly: no item is counted skipped or failed, and the run is not
    recorded completed."""
    await given_memories(brainmigrate_pool, 40)
    started = anyio.Event()

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        started.set()
        await anyio.sleep(30)
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])
    config = MigrationConfig(batch_size=10, concurrency=4)
    clock = time.monotonic()

    if how == "fail_after":
        with pytest.raises(TimeoutError):
            with anyio.fail_after(1):
                await migrator.run_pending(config=config)
    else:
        with anyio.CancelScope() as scope:
            if how == "move_on_after":
                scope.deadline = anyio.current_time() + 1
                await migrator.run_pending(config=config)
            else:
                async with anyio.create_task_group() as group:
                    group.start_soon(migrator.run_pending, None, config)
                    await started.wait()
                    scope.cancel()
        assert scope.cancelled_caught

    assert time.monotonic() - clock < 10
    assert await tagged_count(brainmigrate_pool) == 0
    progress = await migrator.progress(MIGRATION)
    assert progress is not None
    assert (progress.status, progress.processed, progress.skipped, progress.failed) == ("running", 0, 0, 0)
    assert [r["status"] for r in await history_rows(brainmigrate_pool)] == []


# -- 3. before-image tables of long non-ASCII ids --------------------------------------------------------


def test_before_image_table_names_fit_in_63_bytes_and_differ() -> None:
    """Derived table names are cut on bytes, never inside a character, and differ for ids sharing a
    long prefix; an ASCII id keeps the name it always had."""
    ids = ["ü" * 40 + "_a", "ü" * 40 + "_b", "日本語" * 30, "x" * 200 + "1", "x" * 200 + "2"]

    names = [run_sql.image_table(migration_id) for migration_id in ids]

    assert all(len(name.encode()) <= 63 for name in names)
    assert len(set(names)) == len(names)
    digest = hashlib.sha256(b"tag_memories_001").hexdigest()[:10]
    assert run_sql.image_table("tag_memories_001") == f"before_tag_memories_001_{digest}"


async def test_two_migrations_with_a_long_shared_non_ascii_prefix_keep_their_own_before_images(
    brainmigrate_pool: Any,
) -> None:
    """Two reversible memory migrations whose ids share a 40-character non-ASCII prefix (80 bytes)
    keep separate before-images: rolling back the first (applied first) restores its column as it
    was, and leaves the second's writes in place."""
    await given_memories(brainmigrate_pool, 30)
    first_id, second_id = "ü" * 40 + "_1_tag", "ü" * 40 + "_2_score"

    async def score(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(memory_id=memory["id"], importance_score=Decimal("0.125"))

    first = memory_migration(first_id)
    second = memory_migration(second_id, transform=score, dependencies=[])
    async with brainmigrate_pool.acquire() as conn:
        metadata_before = await conn.fetch("SELECT id, metadata::text FROM memories ORDER BY id")
    migrator = Migrator(brainmigrate_pool, [first, second])
    applied = await migrator.run_pending()
    assert [r.migration_id for r in applied] == [first_id, second_id]

    [result] = await migrator.rollback(first_id)

    assert result.status is MigrationStatus.ROLLED_BACK
    async with brainmigrate_pool.acquire() as conn:
        assert await conn.fetch("SELECT id, metadata::text FROM memories ORDER BY id") == metadata_before
        scores = {row[0] for row in await conn.fetch("SELECT importance_score FROM memories")}
    assert scores == {Decimal("0.125")}
    assert await migrator.status(second_id) is MigrationStatus.COMPLETED


# -- 4. execute(id) runs the precondition gate ------------------------------------------------------------


async def test_execute_of_a_data_migration_runs_its_preconditions(brainmigrate_pool: Any) -> None:
    """execute(id) of a data migration whose validate_preconditions returns False is refused like
    run_pending(): MigrationValidationError, nothing written, no run started."""
    await given_memories(brainmigrate_pool, 30)
    made = memory_migration()

    async def refuse(self: Any, conn: Any) -> bool:
        return False

    made.validate_preconditions = refuse  # type: ignore[method-assign]
    migrator = Migrator(brainmigrate_pool, [made])
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.execute(MIGRATION)

    assert str(caught.value) == (
        f"preconditions of migration {MIGRATION!r} failed (validate_preconditions returned False); "
        "it was not applied"
    )
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.progress(MIGRATION) is None
    assert await migrator.status(MIGRATION) is MigrationStatus.PENDING


async def test_a_dry_run_of_a_data_migration_runs_its_preconditions(brainmigrate_pool: Any) -> None:
    """A dry run asks the same gate as a real run: a data migration whose validate_preconditions
    returns False is reported failed, with nothing transformed or written."""
    await given_memories(brainmigrate_pool, 30)
    made = memory_migration()

    async def refuse(self: Any, conn: Any) -> bool:
        return False

    made.validate_preconditions = refuse  # type: ignore[method-assign]
    before = await snapshot(brainmigrate_pool)

    [result] = await Migrator(brainmigrate_pool, [made], config=MigrationConfig(dry_run=True)).run_pending()

    assert (result.status, result.items_processed, result.changes) == (MigrationStatus.FAILED, 0, ())
    assert "validate_preconditions returned False" in (result.error or "")
    assert await snapshot(brainmigrate_pool) == before


async def test_postconditions_that_switch_role_do_not_decide_who_writes_history(
    brainmigrate_pool: Any,
) -> None:
    """A data migration's postconditions run in the transaction that records it completed: a SET
    ROLE there (to a role that cannot write history) neither fails that record nor reaches the pool."""
    role = f"bm_reader_{uuid.uuid4().hex[:8]}"
    await given_memories(brainmigrate_pool, 20)
    made = memory_migration()

    async def switch_role(self: Any, conn: Any) -> bool:
        await conn.execute(f'SET ROLE "{role}"')
        return True

    made.validate_postconditions = switch_role  # type: ignore[method-assign]
    await brainmigrate_pool.execute(f'CREATE ROLE "{role}"')
    try:
        [result] = await Migrator(brainmigrate_pool, [made]).run_pending()

        assert MigrationStatus.COMPLETED is result.status
        assert await tagged_count(brainmigrate_pool) == 20
        users = set()
        for _ in range(brainmigrate_pool.get_max_size()):
            async with brainmigrate_pool.acquire() as conn:
                users.add(await conn.fetchval("SELECT current_user"))
        assert {await brainmigrate_pool.fetchval("SELECT session_user")} == users
    finally:
        await brainmigrate_pool.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


# -- 5. a dry run of a transform that mutates its input ---------------------------------------------------


async def test_a_dry_run_of_a_transform_mutating_its_input_reports_the_change(brainmigrate_pool: Any) -> None:
    """A transform that edits the memory's metadata in place and returns it: the dry run's `before`
    is the value as read, so the change is reported; nothing is written."""
    await given_memories(brainmigrate_pool, 20)
    before = await snapshot(brainmigrate_pool)

    async def mutate(memory: dict[str, Any]) -> BulkMemoryItem:
        memory["metadata"]["sentiment"] = "x"
        return BulkMemoryItem(memory_id=memory["id"], metadata=memory["metadata"])

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=mutate)])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True, dry_run_sample=5))

    assert (result.items_processed, len(result.changes)) == (5, 5)
    for change in result.changes:
        assert change.column == "metadata"
        assert "sentiment" not in change.before
        assert change.after == {**change.before, "sentiment": "x"}
    assert await snapshot(brainmigrate_pool) == before


# -- 6. values that are not JSON -----------------------------------------------------------------------

NOT_JSON = [
    pytest.param(b"\x00raw", "Object of type bytes is not JSON serializable", id="bytes"),
    pytest.param({1, 2}, "Object of type set is not JSON serializable", id="set"),
    pytest.param(object(), "Object of type object is not JSON serializable", id="object"),
    pytest.param(
        datetime(2025, 1, 1, tzinfo=UTC), "Object of type datetime is not JSON serializable", id="datetime"
    ),
    pytest.param(Decimal("0.5"), "Object of type Decimal is not JSON serializable", id="decimal"),
    pytest.param(uuid.UUID(int=7), "Object of type UUID is not JSON serializable", id="uuid"),
    pytest.param(float("nan"), "Out of range float values are not JSON compliant", id="nan"),
]


@pytest.mark.parametrize(("value", "reason"), NOT_JSON)
async def test_a_value_that_is_not_json_fails_its_item_alone_with_continue_on_error(
    brainmigrate_pool: Any, value: Any, reason: str
) -> None:
    """A metadata value JSON cannot represent is never written as its str(): with continue_on_error
    its item is in the error ledger, naming the column and why, and the other items are written."""
    await given_memories(brainmigrate_pool, 30)
    async with brainmigrate_pool.acquire() as conn:
        bad = await key_at(conn, 12)
        bad_before = await metadata_of(brainmigrate_pool, bad)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == bad:
            return BulkMemoryItem(memory_id=memory["id"], metadata={"nested": [value]})
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    [result] = await migrator.run_pending(config=MigrationConfig(continue_on_error=True, batch_size=10))

    assert (result.status, result.items_processed, result.items_failed) == (MigrationStatus.COMPLETED, 29, 1)
    [failed] = await migrator.failed_items(MIGRATION)
    assert failed.key == bad
    assert failed.error.startswith(f"column 'metadata' (jsonb) cannot hold the value given: {reason}")
    assert await metadata_of(brainmigrate_pool, bad) == bad_before
    assert await tagged_count(brainmigrate_pool) == 29


@pytest.mark.parametrize(("value", "reason"), NOT_JSON)
async def test_a_value_that_is_not_json_stops_the_run_without_continue_on_error(
    brainmigrate_pool: Any, value: Any, reason: str
) -> None:
    """Without continue_on_error, a value JSON cannot represent stops the run with an error naming
    the item and the column; nothing of its batch is written and earlier batches are reversed."""
    await given_memories(brainmigrate_pool, 30)
    async with brainmigrate_pool.acquire() as conn:
        bad = await key_at(conn, 15)
        before = await fingerprint(conn)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == bad:
            return BulkMemoryItem(memory_id=memory["id"], metadata={"nested": [value]})
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=10, checkpoint_frequency=10))

    assert str(caught.value).startswith(
        f"data migration {MIGRATION!r} failed on item {bad}: column 'metadata' (jsonb) cannot hold the "
        f"value given: {reason}"
    )
    assert "its writes were reversed (10 rows restored)" in str(caught.value)
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


async def test_a_dry_run_counts_an_item_with_a_value_that_is_not_json_as_failed(
    brainmigrate_pool: Any,
) -> None:
    """A dry run checks the values as the run would write them: an item whose metadata holds bytes
    is counted failed, not reported as a change; nothing is written."""
    await given_memories(brainmigrate_pool, 20)
    async with brainmigrate_pool.acquire() as conn:
        bad = await key_at(conn, 3)
    before = await snapshot(brainmigrate_pool)

    async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
        if str(memory["id"]) == bad:
            return BulkMemoryItem(memory_id=memory["id"], metadata={"raw": b"\x00"})
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True, dry_run_sample=10))

    assert (result.items_processed, result.items_failed) == (9, 1)
    assert bad not in {str(change.key) for change in result.changes}
    assert await snapshot(brainmigrate_pool) == before


# -- 7. duplicate keys in one batch -----------------------------------------------------------------------


async def test_transform_batch_returning_one_memory_twice_is_reported_as_a_duplicate(
    brainmigrate_pool: Any,
) -> None:
    """Two items for one memory in one transform_batch result are a duplicate, named as such (not
    "rows that do not exist"); nothing is written."""
    await given_memories(brainmigrate_pool, 20)
    async with brainmigrate_pool.acquire() as conn:
        first, second = await key_at(conn, 1), await key_at(conn, 2)
    before = await snapshot(brainmigrate_pool)

    async def twice(memories: list[dict[str, Any]]) -> list[BulkMemoryItem]:
        return [tag(memories[0]), *(tag(memory) for memory in memories[:-1])]

    migrator = Migrator(brainmigrate_pool, [batch_migration(twice)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    assert (
        f"transform_batch returned two items for memory {first} (a duplicate, the second in place of "
        f"memory {second})"
    ) in str(caught.value)
    assert "do not exist" not in str(caught.value)
    assert (await snapshot(brainmigrate_pool))[0] == before[0]


class ReturnsOneMemoryTwice(MemoryDataMigration):
    """A query-mode migration whose query returns its first memory twice."""

    def _get_metadata(self) -> MigrationMetadata:
        return meta("query_twice_001", migration_type=MigrationType.MEMORY_DATA, reversible=True)

    async def get_memories_to_migrate(self) -> list[dict[str, Any]]:
        assert self.pool is not None
        rows = await self.pool.fetch(
            "SELECT id, content, metadata FROM memories WHERE NOT metadata ? 'tagged' ORDER BY id LIMIT 10"
        )
        memories = [dict(row) for row in rows]
        return [*memories, memories[0]] if memories else []

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        return tag(memory)


DUPLICATE_IN_QUERY = (
    "data migration 'query_twice_001': get_memories_to_migrate() returned memory {} twice; "
    "return each memory once"
)


async def test_a_query_returning_one_memory_twice_is_reported_as_a_duplicate(brainmigrate_pool: Any) -> None:
    """get_memories_to_migrate() returning a memory twice in one slice is refused, naming the memory
    and saying to return each memory once; nothing is written."""
    await given_memories(brainmigrate_pool, 20)
    async with brainmigrate_pool.acquire() as conn:
        first = await key_at(conn, 1)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [ReturnsOneMemoryTwice])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    assert DUPLICATE_IN_QUERY.format(first) in str(caught.value)
    assert "do not exist" not in str(caught.value)
    assert (await snapshot(brainmigrate_pool))[0] == before[0]
    assert await migrator.status("query_twice_001") is MigrationStatus.FAILED


async def test_a_dry_run_of_a_query_returning_one_memory_twice_reports_the_duplicate(
    brainmigrate_pool: Any,
) -> None:
    """A dry run samples the query's slice with the same check: the result is FAILED with the
    duplicate named, and nothing is written."""
    await given_memories(brainmigrate_pool, 20)
    async with brainmigrate_pool.acquire() as conn:
        first = await key_at(conn, 1)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [ReturnsOneMemoryTwice])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True))

    assert result.status is MigrationStatus.FAILED
    assert result.error is not None
    assert DUPLICATE_IN_QUERY.format(first) in result.error
    assert await snapshot(brainmigrate_pool) == before


# -- identifiers of a source are at most 63 bytes --------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("table", "é" * 33, id="table-66-bytes"),
        pytest.param("key", "é" * 32, id="key-64-bytes"),
        pytest.param("schema", "日" * 22, id="schema-66-bytes"),
        pytest.param("table", "x" * 64, id="table-64-ascii"),
        pytest.param("table", "\udc80", id="table-not-utf8"),
    ],
)
async def test_a_source_identifier_longer_than_63_bytes_is_refused(
    brainmigrate_pool: Any, field: str, value: str
) -> None:
    """PostgreSQL cuts identifiers at 63 bytes, so a longer name would silently name another table:
    DataSource refuses it with MigrationValidationError, before any database work."""
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as caught:
        DataSource(**{"table": "memories", field: value})

    assert str(caught.value) == (
        f"DataSource.{field} must be a PostgreSQL identifier of 1 to 63 bytes in UTF-8, got {value!r}"
    )
    assert await snapshot(brainmigrate_pool) == before


async def test_a_source_column_longer_than_63_bytes_is_refused(brainmigrate_pool: Any) -> None:
    """A column name PostgreSQL would cut is refused by DataSource too, naming it."""
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as caught:
        DataSource(table="memories", columns=("content", "é" * 32))

    assert str(caught.value) == (
        f"DataSource.columns holds an invalid column name {'é' * 32!r}: a column name is a PostgreSQL "
        "identifier of 1 to 63 bytes in UTF-8"
    )
    assert await snapshot(brainmigrate_pool) == before


async def test_a_source_table_of_63_bytes_is_accepted(brainmigrate_pool: Any) -> None:
    """A non-ASCII table name of exactly 63 bytes is a valid source, and its rows are migrated."""
    table = "é" * 31 + "x"
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 10)
        await conn.execute(f'ALTER TABLE memories RENAME TO "{table}"')

    migrator = Migrator(
        brainmigrate_pool,
        [memory_migration(source=DataSource(table=table, key="id", columns=("content", "metadata")))],
    )
    [result] = await migrator.run_pending()

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 10)


class _BumpCounters(DatabaseDataMigration):
    """A batch statement that is not idempotent: running it twice on a row would show."""

    strategy: ClassVar[Any] = "in_place"
    source = DataSource(table="counters", key="id")
    writes = ("n",)

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="bump_counters_001", name="bump", version="1", migration_type=MigrationType.DATABASE_DATA
        )

    async def get_batch_statement(self) -> str | None:
        return "UPDATE counters SET n = n + 1 WHERE id BETWEEN $1 AND $2"


async def test_a_batch_statement_runs_once_on_each_row_when_some_keys_have_more_digits(
    brainmigrate_pool: Any,
) -> None:
    # The ranges' cursor is the last key as text; it must follow the key's order (10 after 9),
    # not the text's ("50" before "9"), or ranges overlap and rows are written twice.
    await brainmigrate_pool.execute(
        "CREATE TABLE counters (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);"
        "INSERT INTO counters (id) SELECT generate_series(1, 300)"
    )
    config = MigrationConfig(batch_size=50, checkpoint_frequency=50)
    [result] = await Migrator(brainmigrate_pool, [_BumpCounters], config=config).run_pending()
    counts = await brainmigrate_pool.fetch("SELECT n, count(*) FROM counters GROUP BY n")
    assert {row[0]: row[1] for row in counts} == {1: 300}
    assert result.items_processed == 300
