"""Sample data with a memory that has no priority, as some in production have."""

import json

import pytest


async def memories_before_scoring(conn):
    await conn.executemany(
        "INSERT INTO memories (id, content, metadata) VALUES ($1, $2, $3::jsonb)",
        [
            (1, "ship the release", json.dumps({"priority": "high"})),
            (2, "an old note without a priority", json.dumps({})),
        ],
    )


@pytest.fixture
def brainmigrate_sample_data():
    return {"score_importance": memories_before_scoring}
