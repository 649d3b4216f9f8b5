"""Taking connections from the application's pool, with failures to connect as typed errors.

A pool opens connections lazily (``min_size=0``, or after one broke), so taking a connection is
where a server that is down, unreachable or refusing brainmigrate shows up. :func:`acquire` turns
those driver errors into :class:`DatabaseUnavailableError` naming the server, and a pool with no
free connection in time into :class:`PoolExhaustedError`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._errors import DatabaseUnavailableError, PoolExhaustedError
from .._model.types import Pool

#: What opening a connection raises when the server is down, unreachable or rejects the session.
CONNECT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError)


async def acquire(pool: Pool, wait_seconds: float | None = None) -> PoolConnectionProxy[Any]:
    """A connection from ``pool``; give it back with ``pool.release``.

    Raises :class:`PoolExhaustedError` when none is free within ``wait_seconds``, and
    :class:`DatabaseUnavailableError` when a connection cannot be opened.
    """
    try:
        conn = await pool.acquire(timeout=wait_seconds)
    except TimeoutError as exc:
        if wait_seconds is None:  # no wait of ours: connecting itself timed out
            raise unavailable(pool, exc) from exc
        raise PoolExhaustedError(wait_seconds) from exc
    except CONNECT_ERRORS as exc:
        raise unavailable(pool, exc) from exc
    return conn


#: How long giving a connection back (its reset) may take. asyncpg bounds a release by the timeout
#: of the acquire that took the connection, which may have been the last millisecond of a wait.
RELEASE_SECONDS = 60.0


async def release(pool: Pool, conn: PoolConnectionProxy[Any]) -> None:
    """Give ``conn`` back to ``pool``, its reset bounded by :data:`RELEASE_SECONDS`, not by the wait
    it was taken with."""
    await pool.release(conn, timeout=RELEASE_SECONDS)


@asynccontextmanager
async def connection(
    pool: Pool, wait_seconds: float | None = None
) -> AsyncIterator[PoolConnectionProxy[Any]]:
    """:func:`acquire` as a context manager that releases the connection when the block ends."""
    conn = await acquire(pool, wait_seconds)
    try:
        yield conn
    finally:
        await release(pool, conn)


def unavailable(pool: Pool, exc: BaseException) -> DatabaseUnavailableError:
    """The typed error for a failure to connect through ``pool`` (to be raised ``from exc``)."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return DatabaseUnavailableError(server_of(pool), reason)


def server_of(pool: Pool) -> str | None:
    """The server ``pool`` connects to, as ``host:port`` (or a socket path), or None if unknown.

    Read defensively from the connect arguments asyncpg keeps on the pool (private attributes),
    with the PG* environment variables and defaults asyncpg would use; never the password.
    """
    try:
        args: Any = getattr(pool, "_connect_args", None) or ()
        kwargs: Any = getattr(pool, "_connect_kwargs", None) or {}
        dsn = args[0] if args and isinstance(args[0], str) else kwargs.get("dsn")
        hosts: list[str] = []
        ports: list[str] = []
        if isinstance(dsn, str) and "://" in dsn:
            hosts, ports = _hosts_in_dsn(dsn)
        host, port = kwargs.get("host"), kwargs.get("port")
        if host:
            hosts = [str(h) for h in host] if isinstance(host, list | tuple) else str(host).split(",")
        if port:
            ports = [str(p) for p in port] if isinstance(port, list | tuple) else str(port).split(",")
        if not hosts and os.environ.get("PGHOST"):
            hosts = os.environ["PGHOST"].split(",")
        if not hosts:
            return None
        if not ports:
            ports = os.environ.get("PGPORT", "5432").split(",")
        servers = []
        for index, name in enumerate(hosts):
            number = ports[index] if index < len(ports) else ports[-1]
            servers.append(f"{name}/.s.PGSQL.{number}" if name.startswith("/") else f"{name}:{number}")
        return ", ".join(servers)
    except Exception:  # a description only: never let it hide the real failure
        return None


def _hosts_in_dsn(dsn: str) -> tuple[list[str], list[str]]:
    """Hosts and ports of a ``postgresql://`` DSN (``host`` and ``port`` query parameters win)."""
    parts = urlsplit(dsn)
    hosts: list[str] = []
    ports: list[str] = []
    for spec in unquote(parts.netloc.rpartition("@")[2]).split(","):
        if not spec:
            continue
        if spec.startswith("["):  # [ipv6]:port
            name, _, rest = spec[1:].partition("]")
            number = rest.removeprefix(":")
        else:
            name, _, number = spec.partition(":") if spec.count(":") <= 1 else (spec, "", "")
        if name:
            hosts.append(name)
        if number:
            ports.append(number)
    query = parse_qs(parts.query)
    if query.get("host"):
        hosts = query["host"][-1].split(",")
    if query.get("port"):
        ports = query["port"][-1].split(",")
    return hosts, ports
