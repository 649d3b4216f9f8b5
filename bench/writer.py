"""An application writing to the memories at a steady rate, in a process of its own.

    python bench/writer.py DSN LOG --rate 100 --rows 100000 --seed 1

Until SIGTERM (or SIGINT), one connection runs one statement at each tick of ``--rate`` per
second: 40% inserts of a new memory, 40% updates of a memory's content, 20% deletes, the keys
drawn (seeded) from the store's (``md5('memory ' || i)`` for i in 1..rows) and from its own
inserts. Each statement returns the ``tableoid`` of the row it wrote, so a reader can tell a
write to the original table from one to the table swapped in. Each line of LOG is one statement
in JSON: ``op``, ``id``, ``content`` (inserts and updates), ``tableoid`` (null when an update or
delete found no row) and ``seconds`` (its latency). A statement that fails (for instance one
refused while a rewrite holds the table) is logged with ``error`` and not retried.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

INSERT = """
INSERT INTO memories (id, content, embedding, memory_type, metadata)
VALUES ($1, $2, $3::vector, 'episodic', '{"source": "writer"}')
RETURNING tableoid::int
"""
UPDATE = "UPDATE memories SET content = $2, updated_at = now() WHERE id = $1 RETURNING tableoid::int"
DELETE = "DELETE FROM memories WHERE id = $1 RETURNING tableoid::int"

SENTENCES = (
    "The new project kickoff was wonderful and energizing.",
    "The deploy went badly and left me frustrated.",
    "Lunch with the team happened on Tuesday afternoon.",
    "The refactor was exhausting but productive.",
    "The meeting was boring and far too long.",
)


def store_key(i: int) -> uuid.UUID:
    """The key of memory ``i`` of the generated store (``md5('memory ' || i)::uuid``)."""
    return uuid.UUID(hashlib.md5(f"memory {i}".encode()).hexdigest())


def _vector(rng: random.Random, dimensions: int) -> str:
    return "[" + ",".join(f"{rng.uniform(-0.5, 0.5):.4f}" for _ in range(dimensions)) + "]"


async def write(dsn: str, log: Path, rate: float, rows: int, seed: int, dimensions: int) -> int:
    rng = random.Random(seed)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "bench writer"})
    inserted: list[uuid.UUID] = []
    count = 0
    interval = 1 / rate
    next_tick = time.perf_counter()
    try:
        with log.open("w") as out:
            while not stopping.is_set():
                draw = rng.random()
                entry: dict[str, Any]
                if draw < 0.4:
                    key = uuid.UUID(int=rng.getrandbits(128), version=4)
                    content = f"{rng.choice(SENTENCES)} Written {count}."
                    entry = {"op": "insert", "id": str(key), "content": content}
                    statement, args = INSERT, (key, content, _vector(rng, dimensions))
                else:
                    pool_of_keys = inserted if inserted and rng.random() < 0.2 else None
                    key = rng.choice(pool_of_keys) if pool_of_keys else store_key(rng.randint(1, rows))
                    if draw < 0.8:
                        content = f"{rng.choice(SENTENCES)} Edited {count}."
                        entry = {"op": "update", "id": str(key), "content": content}
                        statement, args = UPDATE, (key, content)
                    else:
                        entry = {"op": "delete", "id": str(key)}
                        statement, args = DELETE, (key,)
                started = time.perf_counter()
                try:
                    entry["tableoid"] = await conn.fetchval(statement, *args)
                except asyncpg.PostgresError as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["seconds"] = time.perf_counter() - started
                entry["at"] = time.time()
                if entry["op"] == "insert" and "error" not in entry:
                    inserted.append(key)
                out.write(json.dumps(entry) + "\n")
                count += 1
                next_tick = max(next_tick + interval, time.perf_counter())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), next_tick - time.perf_counter())
    finally:
        await conn.close()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dsn")
    parser.add_argument("log", type=Path)
    parser.add_argument("--rate", type=float, default=100.0, help="statements per second (default 100)")
    parser.add_argument("--rows", type=int, required=True, help="memories in the generated store")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dimensions", type=int, default=384)
    args = parser.parse_args(argv)
    count = asyncio.run(write(args.dsn, args.log, args.rate, args.rows, args.seed, args.dimensions))
    print(f"{count} statements", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
