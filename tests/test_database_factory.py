"""brainmigrate.testing.DatabaseFactory: the public factory of throwaway databases, on a real server."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

import brainmigrate.testing
from brainmigrate.testing import DatabaseFactory
from pytest_brainmigrate import plugin

pytestmark = pytest.mark.anyio


def name_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/"))


async def existing(admin_dsn: str, *names: str) -> set[str]:
    """Which of ``names`` exist on the server."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", list(names)
        )
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


def test_database_factory_is_public_and_the_plugins() -> None:
    """Exported by brainmigrate.testing, documented, and the very class the pytest plugin uses."""
    assert "DatabaseFactory" in brainmigrate.testing.__all__
    assert DatabaseFactory.__doc__
    assert DatabaseFactory.__module__.startswith("brainmigrate.")
    assert plugin.DatabaseFactory is DatabaseFactory


async def test_create_gives_an_empty_database_and_drop_removes_it(brainmigrate_dsn: str) -> None:
    factory = DatabaseFactory(brainmigrate_dsn, prefix="brainmigrate_factorytest")
    try:
        dsn = await factory.create()
        name = name_of(dsn)
        assert name.startswith("brainmigrate_factorytest_")
        assert name.startswith(factory.prefix)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
            tables = await conn.fetchval(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public'"
            )
            assert tables == 0
        finally:
            await conn.close()
        assert await existing(brainmigrate_dsn, name, factory.template) == {name, factory.template}

        await factory.drop(dsn)

        assert await existing(brainmigrate_dsn, name) == set()
    finally:
        await factory.close()
    assert await existing(brainmigrate_dsn, factory.template) == set()


@pytest.mark.parametrize("file_copy", [False, True])
async def test_copy_of_copies_a_database_with_its_rows(brainmigrate_dsn: str, file_copy: bool) -> None:
    async with DatabaseFactory(brainmigrate_dsn) as factory:
        source = await factory.create()
        conn = await asyncpg.connect(source)
        try:
            await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            await conn.execute("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 50) AS i")
        finally:
            await conn.close()

        copy = await factory.create(copy_of=source, file_copy=file_copy)

        assert name_of(copy) != name_of(source)
        conn = await asyncpg.connect(copy)
        try:
            assert await conn.fetchval("SELECT count(*) FROM notes") == 50
            await conn.execute("DELETE FROM notes")
        finally:
            await conn.close()
        conn = await asyncpg.connect(source)
        try:
            assert await conn.fetchval("SELECT count(*) FROM notes") == 50  # the copy is its own
        finally:
            await conn.close()


async def test_leaving_the_block_drops_what_is_left(brainmigrate_dsn: str) -> None:
    """async with: every database still there and the template are dropped, even a connected one."""
    async with DatabaseFactory(brainmigrate_dsn) as factory:
        kept = [await factory.create() for _ in range(2)]
        dropped = await factory.create()
        await factory.drop(dropped)
        conn = await asyncpg.connect(kept[0])  # a session left open does not stop the drop
    try:
        names = [name_of(dsn) for dsn in [*kept, dropped]]
        assert await existing(brainmigrate_dsn, *names, factory.template) == set()
    finally:
        await conn.close()


async def test_close_without_any_database_connects_to_nothing() -> None:
    """A factory never used does not touch the server when closed (here, no server at all)."""
    async with DatabaseFactory("postgresql://nobody@127.0.0.1:1/none"):
        pass
