"""An application writing to ``memories`` in transactions of five statements, in a loop, until
it is killed (or its session is ended), for the instant swap back's fault tests.

Usage::

    python application_worker.py DSN [--application-name NAME]

Transaction ``n`` (1, 2, 3, ...) runs the statements :func:`writes` describes, in this order: an
insert, an edit, a deletion, a key change, and last the edit of memory ``COUNTER`` to ``"txn n"``.
Memory ``COUNTER`` so names the last transaction committed, and a test holding that memory's row
in another table the statement writes to (the original, through the rewrite's mirror) stops the
transaction after its first four statements, inside its fifth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import attrs

#: The memory whose content names the last transaction committed.
COUNTER = 1
#: Transaction ``n`` edits, deletes and re-keys three of the memories from ``FIRST`` on, in turn.
FIRST, SPAN = 10, 1_188
#: Transaction ``n`` inserts memory ``INSERTED + n`` and moves a memory to key ``REKEYED + n``.
INSERTED, REKEYED = 100_000, 200_000
#: The ``created_at`` of the memories inserted.
INSERTED_AT = datetime(2026, 3, 1, tzinfo=UTC)


@attrs.frozen(kw_only=True)
class Writes:
    """What transaction ``number`` writes; a statement on a key that is gone writes nothing."""

    number: int
    inserted: int
    inserted_content: str
    inserted_metadata: dict[str, Any]
    edited: int
    edited_content: str
    deleted: int
    rekeyed: int
    rekeyed_to: int
    counter_content: str


def writes(number: int) -> Writes:
    offset = (3 * number) % SPAN
    return Writes(
        number=number,
        inserted=INSERTED + number,
        inserted_content=f"txn {number} insert",
        inserted_metadata={"txn": number},
        edited=FIRST + offset,
        edited_content=f"txn {number} edit",
        deleted=FIRST + offset + 1,
        rekeyed=FIRST + offset + 2,
        rekeyed_to=REKEYED + number,
        counter_content=f"txn {number}",
    )


async def run(dsn: str, application_name: str) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": application_name})
    number = 0
    while True:
        number += 1
        w = writes(number)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO memories (id, content, metadata, created_at) VALUES ($1, $2, $3::jsonb, $4)",
                w.inserted,
                w.inserted_content,
                json.dumps(w.inserted_metadata),
                INSERTED_AT,
            )
            await conn.execute("UPDATE memories SET content = $2 WHERE id = $1", w.edited, w.edited_content)
            await conn.execute("DELETE FROM memories WHERE id = $1", w.deleted)
            await conn.execute("UPDATE memories SET id = $2 WHERE id = $1", w.rekeyed, w.rekeyed_to)
            await conn.execute("UPDATE memories SET content = $2 WHERE id = $1", COUNTER, w.counter_content)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--application-name", default="application")
    arguments = parser.parse_args(sys.argv[1:])
    asyncio.run(run(arguments.dsn, arguments.application_name))
