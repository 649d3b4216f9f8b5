"""The HTTP API under test: the seed's migrations, a data migration held at a gate, servers on localhost."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount

from brainmigrate import BulkMemoryItem, Migrator
from brainmigrate.http import BearerAuth, migrations_router
from data_support import memory_migration
from helpers import create_table, schema_migration

ADMIN_TOKEN = "admin-token-for-the-tests-0001"
READ_TOKEN = "read-token-for-the-tests-00001"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
AUTH = BearerAuth(admin_token=ADMIN_TOKEN, read_token=READ_TOKEN)

#: The design document's schema migration (its curl examples name it).
AddUserPreferences = schema_migration(
    "add_user_preferences_001",
    [
        """
        CREATE TABLE user_preferences (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id UUID NOT NULL,
            theme VARCHAR(50) DEFAULT 'gruvbox_light',
            notifications_enabled BOOLEAN DEFAULT true,
            created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
        )
        """,
        "CREATE INDEX idx_user_preferences_user_id ON user_preferences(user_id)",
    ],
    ["DROP TABLE IF EXISTS user_preferences"],
)
AddNotes = create_table("add_notes_002", "notes", dependencies=["add_user_preferences_001"])


class Gate:
    """Holds a data migration's transforms until :meth:`open`; says when the first one is waiting."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.reached = asyncio.Event()

    def open(self) -> None:
        self.opened.set()

    def migration(self, migration_id: str = "enrich_sentiment_001") -> type[Any]:
        """A memory data migration (tagging each memory) whose every transform waits at the gate."""
        gate = self

        async def transform(memory: dict[str, Any]) -> BulkMemoryItem:
            gate.reached.set()
            await gate.opened.wait()
            return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})

        return memory_migration(migration_id, transform)


async def _host_not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "message": f"no route at {request.url.path}"}, 404)


def app_for(migrator: Migrator, auth: Any = AUTH) -> Starlette:
    """A host application mounting the router at /migrations, as the guide shows.

    The host answers its own 404s in JSON too: Starlette's Mount matches no path holding a newline
    (``%0A`` in an id), so such a request is the host's to answer, never reaching the router.
    """
    return Starlette(
        routes=[Mount("/migrations", app=migrations_router(migrator, auth=auth))],
        exception_handlers={404: _host_not_found},
    )


def in_process(app: Any) -> httpx.AsyncClient:
    """A client calling ``app`` in this process, with no socket (httpx's ASGI transport)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def free_socket() -> socket.socket:
    """A listening socket on a free port of localhost (bound before the server starts: no race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on localhost in this event loop; yields its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await anyio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def pool_on(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool roomy enough for a background run and concurrent requests."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


async def wait_for_run(app: Starlette, migration_id: str) -> None:
    """Until the background run of ``migration_id`` started by ``app``'s router is over."""
    router = app.routes[0].app  # type: ignore[attr-defined]
    await router.state.runs.wait(migration_id)


def migrations(*extra: type[Any]) -> Sequence[type[Any]]:
    """The seed's schema migrations, and ``extra``."""
    return [AddUserPreferences, AddNotes, *extra]
