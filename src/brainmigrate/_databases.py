"""Throwaway databases cloned from a template: the pytest plugin's, the benchmarks', and yours.

Public as :class:`brainmigrate.testing.DatabaseFactory`.
"""

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


def database_of(dsn: str) -> str:
    """The name of the database a server URI points at."""
    return unquote(urlsplit(dsn).path.lstrip("/"))


class DatabaseFactory:
    """Creates databases on a server, each a copy of a template, and drops them again.

    ::

        async with DatabaseFactory("postgresql://postgres@localhost/postgres") as databases:
            dsn = await databases.create()  # a fresh, empty database
            ...
            await databases.drop(dsn)

    ``admin_dsn`` names a maintenance database (such as ``postgres``) of a role with the CREATEDB
    privilege. The factory's template is created empty on first use; :meth:`create` copies it,
    which is cheap, or copies another database (``copy_of=``). Database names start with
    ``prefix``, then carry the pytest-xdist worker id (``main`` outside xdist), the process id and
    random parts, so two runs on one server never choose the same names.

    Each database it creates, the template included, is marked with a comment holding a token of
    this factory's own (:attr:`marker`). It drops only databases that carry that mark: never one
    it did not create, whatever its name. :meth:`close` (or leaving the ``async with`` block)
    drops the template and every database it created that is still there.
    """

    def __init__(self, admin_dsn: str, *, prefix: str = "brainmigrate") -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        token = uuid.uuid4().hex
        #: The URI of the maintenance database the factory connects to.
        self.admin_dsn = admin_dsn
        #: The comment that marks this factory's databases.
        self.marker = f"{MARKER_PREFIX}{token}"
        #: The start of every database name it chooses.
        self.prefix = f"{prefix}_{worker}_{os.getpid()}_{token[:8]}"
        #: The name of its template database.
        self.template = f"{self.prefix}_template"
        self._template_ready = False
        self._created: set[str] = set()

    async def __aenter__(self) -> DatabaseFactory:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.close()

    async def create(self, *, copy_of: str | None = None, file_copy: bool = False) -> str:
        """Create a fresh database and return its DSN.

        It is a copy of the factory's empty template, or, with ``copy_of`` (a DSN), of that
        database, which no session may be connected to meanwhile. ``file_copy=True`` copies it
        file by file (``STRATEGY FILE_COPY``, with a checkpoint before and after; PostgreSQL 15+,
        ignored before), which is faster than the default for a large database.
        """
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            if copy_of is None:
                if not self._template_ready:
                    await self._create(conn, self.template, "template0")
                    self._template_ready = True
                source = self.template
            else:
                source = database_of(copy_of)
            strategy = file_copy and int(await conn.fetchval("SHOW server_version_num")) >= 150000
            await self._create(conn, name, source, strategy=" STRATEGY FILE_COPY" if strategy else "")
            self._created.add(name)
        finally:
            await conn.close()
        return dsn_with_database(self.admin_dsn, name)

    async def drop(self, dsn: str) -> None:
        """Drop a database made by :meth:`create`, ending any sessions still connected to it.

        A database without this factory's mark is left alone.
        """
        name = database_of(dsn)
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await self._drop(conn, name)
        finally:
            await conn.close()

    async def close(self) -> None:
        """Drop every database :meth:`create` made that is still there, then the template."""
        if not (self._template_ready or self._created):
            return
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            for name in sorted(self._created):
                await self._drop(conn, name)
            if self._template_ready:
                await self._drop(conn, self.template)
                self._template_ready = False
        finally:
            await conn.close()

    async def _create(
        self, conn: asyncpg.Connection[Any], name: str, template: str, *, strategy: str = ""
    ) -> None:
        """Create ``name`` as a copy of ``template`` and mark it as this factory's."""
        await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}{strategy}")
        # The marker is a prefix and hex digits: nothing to escape.
        await conn.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS '{self.marker}'")

    async def _drop(self, conn: asyncpg.Connection[Any], name: str) -> bool:
        """Drop ``name`` if it carries this factory's mark; whether it did."""
        self._created.discard(name)
        mark = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
        )
        if mark != self.marker:
            return False
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        return True
