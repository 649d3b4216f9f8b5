"""Type aliases shared by the modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    #: A connection as users and brainmigrate see it: direct, or borrowed from a pool.
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    Pool: TypeAlias = asyncpg.Pool[Any]
else:  # the same at run time, where asyncpg's classes take no type arguments: get_type_hints() works
    Connection = asyncpg.Connection | PoolConnectionProxy
    Pool = asyncpg.Pool


def is_usable(conn: Connection) -> bool:
    """Whether ``conn`` can still run statements.

    When the server ends a pooled connection's session, the pool takes the connection back and
    every call on the borrowed handle raises InterfaceError: that handle is not usable either.
    """
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False
