"""A memory migration tagging every memory, and a schema migration that depends on it.

Each batch's transform first sleeps ``$BM_BATCH_DELAY`` seconds (0 when unset), so that a test can
catch a run midway; each memory it writes records the writing process's pid under ``"writer"``.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from brainmigrate import (
    BulkMemoryItem,
    DatabaseSchemaMigration,
    MemoryDataMigration,
    MigrationMetadata,
    MigrationType,
)

TAG_ID = "tag_memories_001"
INDEX_ID = "index_tagged_memories_002"
DELAY_VARIABLE = "BM_BATCH_DELAY"


class TagMemories(MemoryDataMigration):
    # One transform call per batch, so the delay is paid once per batch.
    transform_batch_size = 100_000

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=TAG_ID,
            name="tag every memory",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_DATA,
            reversible=True,
        )

    async def transform_batch(self, memories: list[dict[str, Any]]) -> list[BulkMemoryItem | None]:
        delay = float(os.environ.get(DELAY_VARIABLE, "0"))
        if delay:
            await anyio.sleep(delay)
        writer = os.getpid()
        return [
            BulkMemoryItem(
                memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True, "writer": writer}
            )
            for memory in memories
        ]


class IndexTaggedMemories(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=INDEX_ID,
            name="index memories by their tag",
            version="1.0.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=[TAG_ID],
        )

    async def get_forward_statements(self) -> list[str]:
        return ["CREATE INDEX memories_tagged_idx ON memories ((metadata->>'tagged'))"]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP INDEX memories_tagged_idx"]
