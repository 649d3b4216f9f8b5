"""The Ray executor on a local Ray cluster: a data run's workers as Ray actors, kept correct by leases.

The migration of these tests is a file its actors load themselves. A gate table makes one actor
get stuck: the first process to have committed a write records its process id and the memory it
is on there, and waits on that memory (until it is killed, or the test releases it), so every
fault is injected at an observed state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import ray

from brainmigrate import ConfigError, MigrationConfig, MigrationStatus, Migrator
from brainmigrate.ray import RayExecutor
from data_support import create_memories, write_counts
from workers.harness import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_cluster")]

MIGRATION_ID = "0001_tag_on_ray"
ROWS = 200
#: A guard against a hang only: every wait below ends on an observed state long before it.
HANG_GUARD_SECONDS = 150

MIGRATION_FILE = textwrap.dedent(
    '''
    """Tag every memory, recording which process wrote it; gets stuck once on the gate's memory."""

    import asyncio
    import os
    from typing import Any

    from brainmigrate import BulkMemoryItem, MemoryDataMigration, MigrationMetadata, MigrationType


    class TagMemoriesOnRay(MemoryDataMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="0001_tag_on_ray",
                name="tag memories on ray",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_DATA,
                reversible=True,
            )

        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            me = os.getpid()
            if await self.pool.fetchval(
                "SELECT holder_pid IS NULL FROM ray_gate"
            ) and await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM memories WHERE metadata->>'by' = $1)", str(me)
            ):
                # The first process to have committed a write gets stuck on its next memory.
                held = await self.pool.fetchval(
                    "UPDATE ray_gate SET holder_pid = $1, stuck_key = $2 WHERE holder_pid IS NULL "
                    "RETURNING holder_pid",
                    me,
                    memory["id"],
                )
                while held is not None and not await self.pool.fetchval("SELECT released FROM ray_gate"):
                    await asyncio.sleep(0.02)  # stuck until the test kills this process or releases it
            return BulkMemoryItem(
                memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True, "by": os.getpid()}
            )
    '''
)


@pytest.fixture
def migrations(tmp_path: Path) -> str:
    """A directory holding the migration, as a project would deploy it to its workers."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "m0001_tag_on_ray.py").write_text(MIGRATION_FILE)
    return str(directory)


async def _prepare(pool: asyncpg.Pool[Any]) -> None:
    """The memories, and the gate: no process stuck yet, none released."""
    async with pool.acquire() as conn:
        await create_memories(conn, ROWS)
        await conn.execute(
            "CREATE TABLE ray_gate (stuck_key uuid, holder_pid integer, released boolean NOT NULL)"
        )
        await conn.execute("INSERT INTO ray_gate VALUES (NULL, NULL, false)")


async def _holder(pool: asyncpg.Pool[Any]) -> int:
    """Once an actor is stuck on the gate's memory: its process id."""

    async def holder() -> int | None:
        pid: int | None = await pool.fetchval("SELECT holder_pid FROM ray_gate")
        return pid

    return await wait_until(holder, within=HANG_GUARD_SECONDS, what="an actor stuck on the gate's memory")


async def _writers(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    """Which process wrote each memory, by id."""
    rows = await pool.fetch("SELECT id::text, metadata::text FROM memories")
    return {row[0]: json.loads(row[1]).get("by") for row in rows}


def _config() -> MigrationConfig:
    # A lease outlives the test: only the end of a dead actor's session can free its chunk.
    return MigrationConfig(batch_size=10, checkpoint_frequency=10, lease_seconds=3600)


async def test_a_run_over_two_actors_finishes_when_one_is_killed_mid_chunk_writing_each_row_once(
    brainmigrate_pool: asyncpg.Pool[Any], migrations: str
) -> None:
    await _prepare(brainmigrate_pool)
    executor = RayExecutor(workers=2)  # connects with the DSN the Migrator's pool was made from
    migrator = Migrator(brainmigrate_pool, migrations, config=_config())
    results: list[Any] = []
    killed: list[int] = []

    async def run() -> None:
        results.append(await migrator.execute(MIGRATION_ID, executor=executor))

    with anyio.fail_after(HANG_GUARD_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            victim = await _holder(brainmigrate_pool)
            # Progress is the run's persisted counters, whichever process committed them.

            async def committed() -> Any:
                progress = await migrator.progress(MIGRATION_ID)
                return progress if progress is not None and progress.processed else None

            await wait_until(committed, within=HANG_GUARD_SECONDS, what="a committed checkpoint")
            # How many actors hold a lease at this moment depends on how fast the other one started
            # and worked; that two took part is asserted from who wrote the memories, below.
            for actor in executor.actors:
                if await actor.pid.remote() == victim:
                    ray.kill(actor)
                    killed.append(victim)

    assert killed == [victim]
    assert results[0].status is MigrationStatus.COMPLETED
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: ROWS}  # the killed actor's open writes were rolled back
    writers = await _writers(brainmigrate_pool)
    stuck = str(await brainmigrate_pool.fetchval("SELECT stuck_key FROM ray_gate"))
    assert victim in writers.values()  # it had committed checkpoints before it was killed
    assert writers[stuck] not in (None, victim)  # its chunk was taken over from its checkpoint
    final = await migrator.progress(MIGRATION_ID)
    assert final is not None and final.processed == ROWS and final.workers == 0
    assert results[0].items_processed <= ROWS
    assert await migrator.status(MIGRATION_ID) is MigrationStatus.COMPLETED
    assert executor.actors == []  # stopped once the run was settled


async def test_a_run_on_ray_cancelled_from_another_session_stops_at_a_checkpoint_and_resumes_in_process(
    brainmigrate_pool: asyncpg.Pool[Any], migrations: str
) -> None:
    await _prepare(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, migrations, config=_config())
    results: list[Any] = []

    async def run() -> None:
        results.append(await migrator.execute(MIGRATION_ID, executor=RayExecutor(workers=2)))

    with anyio.fail_after(HANG_GUARD_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await _holder(brainmigrate_pool)
            assert await migrator.cancel(MIGRATION_ID) is MigrationStatus.CANCELLING
            await brainmigrate_pool.execute("UPDATE ray_gate SET released = true")

    assert results[0].status is MigrationStatus.CANCELLED
    paused = await migrator.progress(MIGRATION_ID)
    assert paused is not None and paused.processed < ROWS and paused.workers == 0
    assert await migrator.status(MIGRATION_ID) is MigrationStatus.CANCELLED

    resumed = await migrator.execute(MIGRATION_ID)  # the in-process executor takes it from here
    assert resumed.status is MigrationStatus.COMPLETED
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: ROWS}


async def test_a_ray_executor_with_a_bad_setting_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="workers must be an integer of at least 1, got 0"):
        RayExecutor(workers=0)
    with pytest.raises(ConfigError, match="num_gpus must be a number of at least 0, got -1"):
        RayExecutor(num_gpus=-1)
    with pytest.raises(ConfigError, match="dsn must be a non-empty libpq URI"):
        RayExecutor(dsn="")


async def test_an_executor_that_is_not_one_is_refused_with_nothing_written(
    brainmigrate_pool: asyncpg.Pool[Any], migrations: str
) -> None:
    await _prepare(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, migrations)
    with pytest.raises(ConfigError, match="executor must be an Executor"):
        await migrator.execute(MIGRATION_ID, executor="ray")  # type: ignore[arg-type]
    assert await migrator.progress(MIGRATION_ID) is None
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {0: ROWS}
        assert await conn.fetchval("SELECT to_regclass('brainmigrate.data_runs')") is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m brainmigrate ARGS``, joining this session's Ray cluster."""
    address = ray.get_runtime_context().gcs_address
    return subprocess.run(
        [sys.executable, "-m", "brainmigrate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_ADDRESS": address},
        timeout=HANG_GUARD_SECONDS,
        check=False,
    )


async def test_the_upgrade_command_runs_a_data_migration_on_ray_actors(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str, migrations: str
) -> None:
    await _prepare(brainmigrate_pool)
    await brainmigrate_pool.execute("UPDATE ray_gate SET released = true")  # nothing gets stuck
    common = ["--dsn", brainmigrate_database, "--migrations", migrations, "--json"]

    refused = await anyio.to_thread.run_sync(lambda: _cli(*common, "upgrade", "--workers", "2"))
    assert refused.returncode != 0
    assert "--workers and --num-gpus are for --executor ray" in refused.stderr
    assert await brainmigrate_pool.fetchval("SELECT to_regclass('brainmigrate.data_runs')") is None

    done = await anyio.to_thread.run_sync(
        lambda: _cli(*common, "upgrade", "--executor", "ray", "--workers", "2", "--num-gpus", "0")
    )
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert (result["migration_id"], result["status"]) == (MIGRATION_ID, "completed")
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: ROWS}
    writers = set((await _writers(brainmigrate_pool)).values())
    assert os.getpid() not in writers and len(writers) >= 1  # written by the actors, not here
