"""A hybrid migration over the memories table: each memory's topic moves from a JSONB key to a column.

expand adds the ``topic`` column and an index; backfill copies ``metadata->>'topic'`` into the
column in batches; the gate checks every memory's column against its key; contract drops the key
from the metadata (the old read path), then makes the column NOT NULL.

Each phase can be held up so that a test catches a runner in it: the second expand step, the gate
and the second contract step each first run ``SELECT '<phase> pause', pg_sleep(...)`` for as many
seconds as the connection's ``bm.<phase>_pause`` setting says (0 when unset), and each backfill
batch's transform sleeps ``$BM_BATCH_DELAY`` seconds. A killed run and its rerun therefore run the
same statements (and checksums), sleeping for different times. ``$BM_CONTRACT_MODE=manual`` makes
the hybrid wait for ``contract(id)`` (the contract mode is no part of its checksum), and
``$BM_REFUSE_VALIDATION=1`` makes the gate refuse, so that the hybrid compensates; the rollback of
the second expand step is held up by ``bm.compensate_pause``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio

from brainmigrate import (
    DatabaseDataMigration,
    DatabaseSchemaMigration,
    DataSource,
    HybridMigration,
    MigrationMetadata,
    MigrationType,
)

HYBRID_ID = "topics_to_column_001"
DELAY_VARIABLE = "BM_BATCH_DELAY"
MODE_VARIABLE = "BM_CONTRACT_MODE"
REFUSE_VARIABLE = "BM_REFUSE_VALIDATION"


def pause(phase: str) -> str:
    """The statement that holds ``phase`` up for ``bm.<phase>_pause`` seconds."""
    return (
        f"SELECT '{phase} pause', "
        f"pg_sleep(coalesce(nullif(current_setting('bm.{phase}_pause', true), ''), '0')::float)"
    )


def _metadata(migration_id: str, name: str, migration_type: MigrationType) -> MigrationMetadata:
    return MigrationMetadata(id=migration_id, name=name, version="1.0.0", migration_type=migration_type)


class AddTopicColumn(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return _metadata("add_topic_column_001", "add the topic column", MigrationType.DATABASE_SCHEMA)

    async def get_forward_statements(self) -> list[str]:
        return ["ALTER TABLE memories ADD COLUMN topic text"]

    async def get_rollback_statements(self) -> list[str]:
        return ["ALTER TABLE memories DROP COLUMN topic"]


class IndexTopics(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return _metadata("index_topics_002", "index memories by topic", MigrationType.DATABASE_SCHEMA)

    async def get_forward_statements(self) -> list[str]:
        return [pause("expand"), "CREATE INDEX memories_topic_idx ON memories (topic)"]

    async def get_rollback_statements(self) -> list[str]:
        return [pause("compensate"), "DROP INDEX memories_topic_idx"]


class FillTopic(DatabaseDataMigration):
    source: ClassVar[DataSource | None] = DataSource(table="memories", key="id", columns=("metadata",))
    # One transform call per batch, so the delay is paid once per batch.
    transform_batch_size: ClassVar[int] = 100_000

    def _get_metadata(self) -> MigrationMetadata:
        return _metadata(
            "fill_topic_003", "copy each memory's topic into its column", MigrationType.DATABASE_DATA
        )

    async def transform_batch(self, rows: list[dict[str, Any]]) -> Sequence[dict[str, Any] | None]:
        delay = float(os.environ.get(DELAY_VARIABLE, "0"))
        if delay:
            await anyio.sleep(delay)
        return [{"topic": row["metadata"]["topic"]} for row in rows]


class DropTopicKey(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return _metadata(
            "drop_topic_key_004", "drop the topic key from the metadata", MigrationType.DATABASE_SCHEMA
        )

    async def get_forward_statements(self) -> list[str]:
        return ["UPDATE memories SET metadata = metadata - 'topic'"]

    async def get_rollback_statements(self) -> list[str]:
        return ["UPDATE memories SET metadata = metadata || jsonb_build_object('topic', topic)"]


class RequireTopic(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return _metadata("require_topic_005", "make the topic column NOT NULL", MigrationType.DATABASE_SCHEMA)

    async def get_forward_statements(self) -> list[str]:
        return [pause("contract"), "ALTER TABLE memories ALTER COLUMN topic SET NOT NULL"]

    async def get_rollback_statements(self) -> list[str]:
        return ["ALTER TABLE memories ALTER COLUMN topic DROP NOT NULL"]


class TopicsToColumn(HybridMigration):
    expand = (AddTopicColumn, IndexTopics)
    backfill = (FillTopic,)
    contract = (DropTopicKey, RequireTopic)
    contract_mode = "manual" if os.environ.get(MODE_VARIABLE) == "manual" else "auto"

    def _get_metadata(self) -> MigrationMetadata:
        return _metadata(HYBRID_ID, "move each memory's topic to a column", MigrationType.HYBRID)

    async def validate_backfill(self, conn: Any) -> bool:
        await conn.execute(pause("validate"))
        if os.environ.get(REFUSE_VARIABLE) == "1":
            return False
        return not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memories WHERE topic IS DISTINCT FROM metadata->>'topic')"
        )
