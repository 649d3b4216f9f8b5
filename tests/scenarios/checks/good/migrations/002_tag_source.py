"""Copy each memory's source into a tag: a memory data migration, reversible from before-images."""

from typing import Any

from brainmigrate import BulkMemoryItem, MemoryDataMigration, MigrationMetadata, MigrationType


class TagSource(MemoryDataMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="tag_source",
            name="Tag each memory with its source",
            version="1.1.0",
            migration_type=MigrationType.MEMORY_DATA,
            dependencies=["create_memories"],
        )

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        metadata = memory["metadata"] or {}
        return BulkMemoryItem(
            memory_id=memory["id"], metadata={**metadata, "tags": [metadata.get("source", "unknown")]}
        )
