"""Score each memory's importance from metadata.priority, which some memories lack."""

from typing import Any

from brainmigrate import BulkMemoryItem, MemoryDataMigration, MigrationMetadata, MigrationType

SCORES = {"high": 1.0, "normal": 0.5, "low": 0.1}


class ScoreImportance(MemoryDataMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="score_importance",
            name="Score importance",
            version="1.1.0",
            migration_type=MigrationType.MEMORY_DATA,
            dependencies=["create_memories"],
        )

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        metadata = memory["metadata"]
        return BulkMemoryItem(
            memory_id=memory["id"], metadata={**metadata, "importance": SCORES[metadata["priority"]]}
        )
