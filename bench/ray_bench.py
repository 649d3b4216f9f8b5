"""The Ray executor with 2 actors against 2 processes joining the same data run, on one server.

    python bench/ray_bench.py --dsn postgresql://postgres@127.0.0.1:5432/postgres [--rows 4000] [--rounds 3]
    nox -s bench_ray -- --dsn postgresql://postgres@127.0.0.1:5432/postgres

Needs ``brainmigrate[ray]``. Each variant gets a fresh database (a ``DatabaseFactory``'s) with the
same memories and runs the same memory migration, whose transform burns ``--work-ms`` of CPU per
memory (a stand-in for a model): ``ray`` is ``execute(id, executor=RayExecutor(workers=2))``,
``processes`` two ``python`` processes that each run ``execute(id)`` with one worker, the second
joining the run the first started. Wall time includes starting the workers (Ray's actors, or the
processes and their imports); Ray's own start-up (``ray.init``) is measured apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import asyncpg
import ray

from brainmigrate import MigrationConfig, Migrator
from brainmigrate.ray import RayExecutor
from brainmigrate.testing import DatabaseFactory

MIGRATION_ID = "0001_bench_on_ray"

MIGRATION = textwrap.dedent(
    '''
    """Tag every memory after burning a fixed amount of CPU on it (a model's stand-in)."""

    import hashlib
    import os
    import time
    from typing import Any

    from brainmigrate import BulkMemoryItem, MemoryDataMigration, MigrationMetadata, MigrationType

    WORK_SECONDS = float(os.environ.get("RAY_BENCH_WORK_MS", "2")) / 1000


    class BenchOnRay(MemoryDataMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="0001_bench_on_ray",
                name="bench on ray",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_DATA,
            )

        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            digest, until = memory["content"].encode(), time.process_time() + WORK_SECONDS
            while time.process_time() < until:
                digest = hashlib.sha256(digest).digest()
            return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "h": digest.hex()})
    '''
)

JOIN = textwrap.dedent(
    """
    import asyncio, sys
    import asyncpg
    from brainmigrate import MigrationConfig, Migrator

    async def main() -> None:
        pool = await asyncpg.create_pool(sys.argv[1], min_size=2, max_size=3)
        config = MigrationConfig(
            batch_size=50, checkpoint_frequency=50, parallel_execution=True, max_workers=1
        )
        result = await Migrator(pool, sys.argv[2], config=config).execute(sys.argv[3])
        print(result.status.value, result.items_processed)
        await pool.close()

    asyncio.run(main())
    """
)


async def _memories(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE TABLE memories (
                id uuid PRIMARY KEY, content text NOT NULL, metadata jsonb NOT NULL DEFAULT '{}',
                memory_type text NOT NULL DEFAULT 'semantic', importance_score real NOT NULL DEFAULT 0.5,
                embedding real[]);
            INSERT INTO memories (id, content, metadata)
            SELECT gen_random_uuid(), 'memory ' || i, jsonb_build_object('n', i)
              FROM generate_series(1, $1) i;
            ANALYZE memories;
            """.replace("$1", str(int(rows)))
        )
    finally:
        await conn.close()


async def _ray(dsn: str, migrations: str) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    config = MigrationConfig(batch_size=50, checkpoint_frequency=50)
    started = time.perf_counter()
    result = await Migrator(pool, migrations, config=config).execute(
        MIGRATION_ID, executor=RayExecutor(workers=2)
    )
    elapsed = time.perf_counter() - started
    await pool.close()
    assert result.status.value == "completed", result
    return elapsed


async def _processes(dsn: str, migrations: str) -> float:
    started = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", JOIN, dsn, migrations, MIGRATION_ID, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [(await proc.communicate())[0].decode().strip() for proc in procs]
    elapsed = time.perf_counter() - started
    # The last to finish records the run as applied; the other saw it still running elsewhere.
    assert sorted(out.split()[0] for out in outputs)[0] == "completed", outputs
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BRAINMIGRATE_BENCH_DSN"),
        help="a server whose user may create databases (default: $BRAINMIGRATE_BENCH_DSN)",
    )
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each variant once, in turn")
    parser.add_argument("--work-ms", type=float, default=2.0, help="CPU per memory in the transform")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or $BRAINMIGRATE_BENCH_DSN) is required")
    os.environ["RAY_BENCH_WORK_MS"] = str(args.work_ms)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - started:.2f} s")
    variants = [("ray, 2 actors", _ray), ("2 processes", _processes)]
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m0001_bench_on_ray.py").write_text(MIGRATION)
        async with DatabaseFactory(args.dsn, prefix="ray_bench") as databases:
            for turn in range(args.rounds):
                for name, variant in variants[turn % 2 :] + variants[: turn % 2]:
                    dsn = await databases.create()
                    await _memories(dsn, args.rows)
                    seconds = await variant(dsn, tmp)
                    samples[name].append(seconds)
                    print(f"round {turn + 1}, {name:>14}: {seconds:6.2f} s for {args.rows} memories")
                    await databases.drop(dsn)
    ray.shutdown()
    for name, seconds in samples.items():
        median = statistics.median(seconds)
        rate = args.rows / median
        print(f"{name:>14}: median {median:6.2f} s ({rate:7.1f} memories/s, {args.work_ms:g} ms CPU each)")
    ratios = [a / b for a, b in zip(samples["ray, 2 actors"], samples["2 processes"], strict=True)]
    print(f"ray / processes: median {statistics.median(ratios):.2f}x of the per-round ratios")


if __name__ == "__main__":
    asyncio.run(main())
