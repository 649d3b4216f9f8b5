"""Starting, watching and stopping worker processes, and polling the server, for the fault tests."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import attrs

T = TypeVar("T")

WORKERS = Path(__file__).resolve().parent
RUN_PENDING = WORKERS / "run_pending.py"
DATA_WORKER = WORKERS / "data_worker.py"


def migrations_dir(name: str) -> Path:
    """One of the migration directories the workers (and the tests) load."""
    return WORKERS / name


@attrs.frozen
class Outcome:
    """How a worker process ended: its exit status and the JSON report it printed, if any."""

    returncode: int
    report: dict[str, Any] | None
    stderr: str

    @property
    def results(self) -> list[tuple[str, str]]:
        """``(migration_id, status)`` for each result run_pending() returned."""
        assert self.report is not None, self.stderr
        assert self.report["results"] is not None, self.report
        return [(mid, status) for mid, status in self.report["results"]]

    @property
    def error(self) -> dict[str, str] | None:
        assert self.report is not None, self.stderr
        error: dict[str, str] | None = self.report["error"]
        return error


async def start_worker(
    dsn: str,
    migrations: str,
    *,
    settings: Mapping[str, str] | None = None,
    ready_file: Path | None = None,
    start_file: Path | None = None,
    lock_wait: float | None = None,
) -> asyncio.subprocess.Process:
    """Start ``run_pending.py`` on the migration directory ``migrations``."""
    args = [str(RUN_PENDING), dsn, str(migrations_dir(migrations))]
    for name, value in (settings or {}).items():
        args += ["--setting", f"{name}={value}"]
    if ready_file is not None:
        args += ["--ready-file", str(ready_file)]
    if start_file is not None:
        args += ["--start-file", str(start_file)]
    if lock_wait is not None:
        args += ["--lock-wait", str(lock_wait)]
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def start_role_worker(
    script: str, dsn: str, migrations: str, *options: str
) -> asyncio.subprocess.Process:
    """Start the worker ``script`` (``data_worker.py``, ``reembed_worker.py``, ...) on the migration
    directory ``migrations`` with command-line ``options``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKERS / script),
        dsn,
        str(migrations_dir(migrations)),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def start_application(dsn: str, *options: str) -> asyncio.subprocess.Process:
    """Start ``application_worker.py`` (an application writing memories in a loop) on ``dsn``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKERS / "application_worker.py"),
        dsn,
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def start_data_worker(dsn: str, migrations: str, *options: str) -> asyncio.subprocess.Process:
    """Start ``data_worker.py`` on the migration directory ``migrations`` with command-line ``options``."""
    return await start_role_worker(DATA_WORKER.name, dsn, migrations, *options)


async def finish(process: asyncio.subprocess.Process, within: float) -> Outcome:
    """Wait (at most ``within`` seconds) for a worker to exit and read its report."""
    stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    lines = stdout.decode().strip().splitlines()
    report = json.loads(lines[-1]) if lines else None
    assert process.returncode is not None
    return Outcome(process.returncode, report, stderr.decode())


async def sigkill(process: asyncio.subprocess.Process) -> int:
    """SIGKILL a worker and reap it; returns its exit status."""
    process.send_signal(signal.SIGKILL)
    return await process.wait()


async def stop(process: asyncio.subprocess.Process) -> None:
    """Make sure a worker is gone (for ``finally`` blocks)."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def wait_until(
    probe: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.02, what: str
) -> T:
    """Call ``probe`` until it returns something truthy, for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def backends_running(pool: asyncpg.Pool[Any], query_prefix: str) -> list[int]:
    """Pids of this database's sessions whose current query starts with ``query_prefix``."""
    rows = await pool.fetch(
        """
        SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND state = 'active' AND starts_with(query, $1)
         ORDER BY pid
        """,
        query_prefix,
    )
    return [row["pid"] for row in rows]


async def advisory_waiters(pool: asyncpg.Pool[Any], query_prefix: str) -> list[int]:
    """Pids of this database's sessions blocked on an advisory lock in a query like ``query_prefix``."""
    rows = await pool.fetch(
        """
        SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
           AND starts_with(query, $1)
         ORDER BY pid
        """,
        query_prefix,
    )
    return [row["pid"] for row in rows]


async def sessions_that_ran(pool: asyncpg.Pool[Any], application_name: str, fragment: str) -> list[int]:
    """Pids of sessions named ``application_name`` whose latest query contains ``fragment``."""
    rows = await pool.fetch(
        """
        SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1 AND strpos(query, $2) > 0
         ORDER BY pid
        """,
        application_name,
        fragment,
    )
    return [row["pid"] for row in rows]


async def advisory_holders(pool: asyncpg.Pool[Any], key: int) -> list[int]:
    """Pids of this database's sessions holding the advisory lock on the bigint ``key``."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    rows = await pool.fetch(
        """
        SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid::int8 = $1 AND objid::int8 = $2 AND objsubid = 1
         ORDER BY pid
        """,
        unsigned >> 32,
        unsigned & 0xFFFF_FFFF,
    )
    return [row["pid"] for row in rows]


async def end_sessions(pool: asyncpg.Pool[Any], pids: list[int]) -> None:
    """Terminate server sessions and wait until they are gone."""
    for pid in pids:
        await pool.execute("SELECT pg_terminate_backend($1)", pid)

    async def gone() -> bool:
        return not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids)

    await wait_until(gone, within=10, what=f"sessions {pids} to end")


async def sessions_named(pool: asyncpg.Pool[Any], application_name: str) -> list[int]:
    """The server sessions of this database whose application name is ``application_name``."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        application_name,
    )
    return [row[0] for row in rows]


async def end_sessions_named(pool: asyncpg.Pool[Any], application_name: str) -> None:
    """Terminate what is left of a dead worker on the server, and wait until none of it is left."""
    for pid in await sessions_named(pool, application_name):
        await pool.execute("SELECT pg_terminate_backend($1)", pid)

    async def gone() -> bool:
        return not await sessions_named(pool, application_name)

    await wait_until(gone, within=15, what="the dead worker's sessions to end")


async def committed(pool: asyncpg.Pool[Any], migration_id: str) -> int:
    """Items the checkpoints of a data run (or a hybrid's data step) have committed so far."""
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"):
        return 0
    count: int = await pool.fetchval(
        "SELECT coalesce(sum(processed), 0) FROM brainmigrate.data_chunks WHERE migration_id = $1",
        migration_id,
    )
    return count


async def applied(pool: asyncpg.Pool[Any], migration_id: str) -> bool:
    """Whether history holds a completed apply of a migration (or a hybrid's step)."""
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.migration_history') IS NOT NULL"):
        return False
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM brainmigrate.migration_history WHERE migration_id = $1 "
            "AND operation = 'apply' AND status = 'completed'",
            migration_id,
        )
    )


async def history_rows(pool: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
    """The history table's rows (the facts that matter here), or [] when it does not exist."""
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.migration_history') IS NOT NULL"):
        return []
    rows = await pool.fetch(
        """
        SELECT migration_id, operation, status, applied_after, statement_index, statement_count, sqlstate
          FROM brainmigrate.migration_history
         ORDER BY attempt_id
        """
    )
    return [dict(row) for row in rows]


async def public_schema(pool: asyncpg.Pool[Any]) -> list[tuple[str, ...]]:
    """Every table column and index in the public schema, sorted: a fingerprint of the user's schema."""
    columns = await pool.fetch(
        """
        SELECT table_name, column_name FROM information_schema.columns
         WHERE table_schema = 'public'
        """
    )
    indexes = await pool.fetch(
        """
        SELECT c.relname, i.indisvalid::text
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public'
        """
    )
    return sorted(
        [("column", row["table_name"], row["column_name"]) for row in columns]
        + [("index", row["relname"], row["indisvalid"]) for row in indexes]
    )
