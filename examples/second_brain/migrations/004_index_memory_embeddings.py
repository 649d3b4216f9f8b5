"""An HNSW index for cosine similarity search over memory embeddings."""

from datetime import UTC, datetime

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class IndexMemoryEmbeddings(DatabaseSchemaMigration):
    # Built inside the migration's transaction, which blocks writes to memories while it runs:
    # instant on a new store. On a large, busy store, build it like 003 instead
    # (``transactional = False`` and ``CREATE INDEX CONCURRENTLY``).

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="index_memory_embeddings_001",
            name="Index memory embeddings",
            description="HNSW index with cosine distance for nearest-memory search",
            version="2.4.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="second-brain",
            created_at=datetime(2025, 1, 13, tzinfo=UTC),
            dependencies=["create_memories_001"],
            reversible=True,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            """
            CREATE INDEX idx_memories_embedding_hnsw ON memories
                USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)
            """,
        ]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP INDEX IF EXISTS idx_memories_embedding_hnsw"]
