"""Throwaway databases cloned from a template, for tests (used by the pytest plugin)."""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from ._model.sqltext import quote_ident

#: The start of the comment that marks a database as made by a :class:`DatabaseFactory`.
MARKER_PREFIX = "brainmigrate-test:"


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server URI pointing at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URI, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


class DatabaseFactory:
    """Creates databases from one template on a server and drops them again.

    The template is created empty on first use; each new database is a copy of it.
    Needs the CREATEDB privilege. Database names carry the pytest-xdist worker id, if any, the
    process id and a random part, so two runs on one server never choose the same names.

    Each database it creates, the template included, is marked with a comment holding a token of
    this factory's own (:attr:`marker`). It drops only databases that carry that mark: never one
    it did not create, whatever its name.
    """

    def __init__(self, admin_dsn: str, *, prefix: str = "brainmigrate") -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        token = uuid.uuid4().hex
        self.admin_dsn = admin_dsn
        self.marker = f"{MARKER_PREFIX}{token}"
        self.prefix = f"{prefix}_{worker}_{os.getpid()}_{token[:8]}"
        self.template = f"{self.prefix}_template"
        self._template_ready = False

    async def create(self) -> str:
        """Create a fresh database and return its DSN."""
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            if not self._template_ready:
                await self._create(conn, self.template, "template0")
                self._template_ready = True
            await self._create(conn, name, self.template)
        finally:
            await conn.close()
        return dsn_with_database(self.admin_dsn, name)

    async def drop(self, dsn: str) -> None:
        """Drop a database made by :meth:`create`, ending any sessions still connected to it.

        A database without this factory's mark is left alone.
        """
        name = unquote(urlsplit(dsn).path.lstrip("/"))
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await self._drop(conn, name)
        finally:
            await conn.close()

    async def close(self) -> None:
        """Drop the template."""
        if self._template_ready:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                await self._drop(conn, self.template)
            finally:
                await conn.close()
            self._template_ready = False

    async def _create(self, conn: asyncpg.Connection[Any], name: str, template: str) -> None:
        """Create ``name`` as a copy of ``template`` and mark it as this factory's."""
        await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}")
        # The marker is a prefix and hex digits: nothing to escape.
        await conn.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS '{self.marker}'")

    async def _drop(self, conn: asyncpg.Connection[Any], name: str) -> bool:
        """Drop ``name`` if it carries this factory's mark; whether it did."""
        mark = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
        )
        if mark != self.marker:
            return False
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        return True
