"""The project's sample data for the standard checks' data checks."""

import json

import pytest


async def three_memories(conn):
    await conn.executemany(
        "INSERT INTO memories (id, content, metadata) VALUES ($1, $2, $3::jsonb)",
        [
            (1, "met Ada for coffee", json.dumps({"source": "chat"})),
            (2, "read a paper on vectors", json.dumps({"source": "web"})),
            (3, "call the plumber", json.dumps({})),
        ],
    )


@pytest.fixture
def brainmigrate_sample_data():
    return three_memories
