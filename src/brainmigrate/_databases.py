"""Throwaway databases cloned from a template, for tests (used by the pytest plugin)."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ._sql import quote_ident


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server URI pointing at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URI, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


class DatabaseFactory:
    """Creates databases from one template on a server and drops them again.

    The template is created empty on first use; each new database is a copy of it.
    Needs the CREATEDB privilege. Database names carry the pytest-xdist worker id, if any.
    """

    def __init__(self, admin_dsn: str, *, prefix: str = "brainmigrate") -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.admin_dsn = admin_dsn
        self.prefix = f"{prefix}_{worker}_{os.getpid()}"
        self.template = f"{self.prefix}_template"
        self._template_ready = False

    async def create(self) -> str:
        """Create a fresh database and return its DSN."""
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            if not self._template_ready:
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.template)} WITH (FORCE)")
                await conn.execute(f"CREATE DATABASE {quote_ident(self.template)} TEMPLATE template0")
                self._template_ready = True
            await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(self.template)}")
        finally:
            await conn.close()
        return dsn_with_database(self.admin_dsn, name)

    async def drop(self, dsn: str) -> None:
        """Drop a database made by :meth:`create`, ending any sessions still connected to it."""
        name = urlsplit(dsn).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()

    async def close(self) -> None:
        """Drop the template."""
        if self._template_ready:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.template)} WITH (FORCE)")
            finally:
                await conn.close()
            self._template_ready = False
