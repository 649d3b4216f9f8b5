"""The HTTP API under faults: a ``brainmigrate serve`` process killed or stopped mid-run.

Each scenario runs real ``brainmigrate serve`` processes on localhost against a real server, over
a few thousand memories whose trigger counts the writes of each row, so "exactly once" is a fact
read back from the table. The migration (``workers/tag_memories``) sleeps a little in each batch's
transform (``$BM_BATCH_DELAY``), so that a test can catch a run midway; the test finds where it
stands by polling the run's chunks in ``brainmigrate.data_chunks`` and the sessions in
``pg_stat_activity`` (each serve process names its sessions after itself).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import httpx
import pytest

from data_support import create_memories, write_counts
from workers.harness import migrations_dir, sigkill, stop, wait_until

pytestmark = pytest.mark.anyio

MEMORIES = 3_000
BATCH = 100
DELAY = 0.1  # seconds per batch: 30 batches, so a run lasts at least 3 s
TAG = "tag_memories_001"
ADMIN_TOKEN = "fault-admin-token-00000001"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: Batches of BATCH memories, a checkpoint after each; leases far longer than any test.
BODY = {"batch_size": BATCH, "checkpoint_frequency": BATCH, "lease_seconds": 120}


@attrs.frozen
class Server:
    """A ``brainmigrate serve`` process, its base URL and the name its database sessions carry."""

    process: asyncio.subprocess.Process
    url: str
    name: str
    log: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=ADMIN, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _named(dsn: str, name: str) -> str:
    """``dsn`` with its sessions named ``name`` (asyncpg passes the parameter on as a setting)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name.replace(' ', '%20')}"


@asynccontextmanager
async def serving(dsn: str, logs: Path, name: str, *, delay: float) -> AsyncIterator[Server]:
    """``brainmigrate serve`` on a free port of localhost until the block ends, its batches
    sleeping ``delay`` s; its output goes to a file (a pipe nobody reads would fill and block it)."""
    port = _free_port()
    log = logs / f"{name.replace(' ', '-')}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINMIGRATE_", "BM_"))}
    env |= {"BRAINMIGRATE_ADMIN_TOKEN": ADMIN_TOKEN, "BM_BATCH_DELAY": str(delay)}
    with log.open("w") as output:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "brainmigrate", "--dsn", _named(dsn, name), "serve"],
            *["--migrations", str(migrations_dir("tag_memories")), "--port", str(port)],
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = Server(process=process, url=f"http://127.0.0.1:{port}", name=name, log=log)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:

            async def answering() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"serve exited with {process.returncode}: {log.read_text()}")
                try:
                    return (await client.get("/migrations/openapi.json")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(answering, within=60, interval=0.05, what=f"{name} to answer")
        yield server
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)  # a stopped process ends on SIGINT only once continued
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                await stop(process)


async def _committed(pool: asyncpg.Pool[Any]) -> int:
    """Memories the run's checkpoints have committed so far (0 before it starts)."""
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"):
        return 0
    committed: int = await pool.fetchval(
        "SELECT coalesce(sum(processed), 0) FROM brainmigrate.data_chunks WHERE migration_id = $1", TAG
    )
    return committed


async def _sessions_of(pool: asyncpg.Pool[Any], server: Server) -> list[int]:
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        server.name,
    )
    return [row["pid"] for row in rows]


async def _settled(pool: asyncpg.Pool[Any], server: Server) -> bool:
    """Whether no session of ``server`` runs a query (a stopped server's last ones are over)."""
    active: int = await pool.fetchval(
        """
        SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1 AND state = 'active'
        """,
        server.name,
    )
    return active == 0


async def _lease_held_by(pool: asyncpg.Pool[Any], server: Server) -> bool:
    """Whether a live session of ``server`` holds a chunk of the run not done yet."""
    holders = await pool.fetch(
        """
        SELECT a.application_name
          FROM brainmigrate.data_chunks c JOIN pg_stat_activity a ON a.pid = c.lease_pid
         WHERE c.migration_id = $1 AND NOT c.done AND c.lease_owner IS NOT NULL
        """,
        TAG,
    )
    return any(row["application_name"] == server.name for row in holders)


async def _midway(pool: asyncpg.Pool[Any], server: Server) -> int:
    """Memories committed once ``server`` holds the run's lease and has committed a checkpoint; else 0."""
    committed = await _committed(pool)
    if not committed or not await _lease_held_by(pool, server):
        return 0
    return committed


async def _writers(pool: asyncpg.Pool[Any]) -> dict[int, int]:
    """Memories tagged, by the pid of the process that wrote them."""
    rows = await pool.fetch(
        "SELECT (metadata->>'writer')::int, count(*) FROM memories WHERE metadata ? 'writer' GROUP BY 1"
    )
    return {row[0]: row[1] for row in rows}


async def _progress(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(f"/migrations/progress/{TAG}")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


async def _run_over(client: httpx.AsyncClient) -> dict[str, Any]:
    """The progress report once the server's background run of TAG is over (finished or failed).

    The report is asked for again once the run is seen over: a report's status is read before its
    run, so the one that first shows the run over may hold the status of a moment before it ended.
    """

    async def over() -> bool:
        report = await _progress(client)
        return report["run"] is not None and report["run"]["state"] != "running"

    await wait_until(over, within=60, interval=0.1, what="the background run to end")
    return await _progress(client)


async def _attempts(client: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    """``(operation, status, actor)`` of each recorded attempt at TAG, oldest first."""
    response = await client.get("/migrations/history")
    assert response.status_code == 200, response.text
    return [
        (row["operation"], row["status"], row["actor"])
        for row in response.json()["attempts"]
        if row["migration_id"] == TAG
    ]


async def test_serve_killed_mid_run_leaves_it_resumable_through_another_serve_writing_each_memory_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """A serve process SIGKILLed mid-run leaves the run failed and resumable; another one resumes it.

    The run started by ``POST /execute`` keeps what its checkpoints committed. A second serve
    process reports it failed with no live worker (not running), accepts ``POST /resume`` (202),
    and completes it from the checkpoint: every memory is written exactly once, and the history
    records the migration applied once, by the HTTP caller.
    """
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
    async with serving(brainmigrate_database, tmp_path, "serve one", delay=DELAY) as first:
        async with first.client() as client:
            started = await client.post(f"/migrations/execute/{TAG}", json=BODY)
        assert started.status_code == 202, started.text
        await wait_until(lambda: _midway(brainmigrate_pool, first), within=30, what="the first checkpoints")
        assert await sigkill(first.process) == -signal.SIGKILL

    async def sessions_ended() -> bool:
        return not await _sessions_of(brainmigrate_pool, first)

    await wait_until(sessions_ended, within=30, what="the killed server's sessions to end")
    at_kill = await _committed(brainmigrate_pool)

    async with (
        serving(brainmigrate_database, tmp_path, "serve two", delay=0) as second,
        second.client() as client,
    ):
        after_kill = await _progress(client)
        counts_after_kill = await write_counts(brainmigrate_pool)
        resumed = await client.post(f"/migrations/resume/{TAG}", json=BODY)
        done = await _run_over(client)
        attempts = await _attempts(client)

    assert 0 < at_kill < MEMORIES
    assert after_kill["status"] == "failed"
    assert after_kill["run"] is None  # the second server started nothing yet
    assert (after_kill["progress"]["workers"], after_kill["progress"]["processed"]) == (0, at_kill)
    assert counts_after_kill == {0: MEMORIES - at_kill, 1: at_kill}
    assert resumed.status_code == 202, resumed.text
    assert resumed.headers["Location"] == f"/migrations/progress/{TAG}"
    assert (resumed.json()["operation"], resumed.json()["actor"]) == ("resume", "http-admin")
    assert done["status"] == "completed", done
    assert done["run"]["state"] == "finished", done
    [result] = done["run"]["results"]
    assert (result["status"], result["items_processed"]) == ("completed", MEMORIES - at_kill)
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    assert await _writers(brainmigrate_pool) == {
        first.process.pid: at_kill,
        second.process.pid: MEMORIES - at_kill,
    }
    assert attempts == [("apply", "completed", "http-admin")]


async def test_serve_stopped_mid_run_keeps_its_lease_so_another_serve_refuses_until_it_finishes(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """A serve process SIGSTOPped mid-run still holds its lease: another serve refuses the run (409).

    While the first process is stopped, a second one answers ``POST /execute`` and
    ``POST /resume`` with 409 and reports the run as running with a live worker. Once the first
    process is continued it completes the run alone: every memory is written exactly once, by it,
    and the history records the migration applied once, by the HTTP caller.
    """
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
    async with (
        serving(brainmigrate_database, tmp_path, "serve one", delay=DELAY) as first,
        serving(brainmigrate_database, tmp_path, "serve two", delay=0) as second,
        first.client() as one,
        second.client() as two,
    ):
        started = await one.post(f"/migrations/execute/{TAG}", json=BODY)
        assert started.status_code == 202, started.text
        await wait_until(lambda: _midway(brainmigrate_pool, first), within=30, what="the first checkpoints")
        first.process.send_signal(signal.SIGSTOP)
        try:
            await wait_until(
                lambda: _settled(brainmigrate_pool, first), within=30, what="the stopped server's queries"
            )
            at_stop = await _committed(brainmigrate_pool)
            while_stopped = await _progress(two)
            execute_refused = await two.post(f"/migrations/execute/{TAG}", json=BODY)
            resume_refused = await two.post(f"/migrations/resume/{TAG}", json=BODY)
            still_held = await _lease_held_by(brainmigrate_pool, first)
            committed_while_stopped = await _committed(brainmigrate_pool)
        finally:
            first.process.send_signal(signal.SIGCONT)
        done = await _run_over(one)
        attempts = await _attempts(two)

    assert 0 < at_stop < MEMORIES
    assert while_stopped["status"] == "running"
    assert while_stopped["progress"]["workers"] >= 1
    assert while_stopped["run"] is None
    for refused in (execute_refused, resume_refused):
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "MigrationStateError"
        assert TAG in refused.json()["message"]
    assert "running already" in execute_refused.json()["message"]
    assert still_held
    assert committed_while_stopped == at_stop  # nobody else worked on the run meanwhile
    assert done["status"] == "completed", done
    assert done["run"]["state"] == "finished", done
    [result] = done["run"]["results"]
    assert (result["status"], result["items_processed"]) == ("completed", MEMORIES)
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    assert await _writers(brainmigrate_pool) == {first.process.pid: MEMORIES}
    assert attempts == [("apply", "completed", "http-admin")]
