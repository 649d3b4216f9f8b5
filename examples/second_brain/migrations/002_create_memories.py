"""The memories table: content, its embedding, its type and the scores that age it."""

from datetime import UTC, datetime

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class CreateMemories(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="create_memories_001",
            name="Create memories table",
            description="The memory_type enum and the memories table with a 1536-dimension embedding",
            version="2.2.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="second-brain",
            created_at=datetime(2025, 1, 6, tzinfo=UTC),
            dependencies=["enable_pgvector_001"],
            reversible=True,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            "CREATE TYPE memory_type AS ENUM ('semantic', 'episodic', 'procedural')",
            """
            CREATE TABLE memories (
                id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                content             text NOT NULL,
                embedding           vector(1536),
                memory_type         memory_type NOT NULL DEFAULT 'semantic',
                importance_score    numeric(5, 4) NOT NULL DEFAULT 0.5
                    CONSTRAINT memories_importance_score_range
                    CHECK (importance_score >= 0 AND importance_score <= 1),
                access_count        integer NOT NULL DEFAULT 0,
                last_accessed       timestamptz,
                created_at          timestamptz NOT NULL DEFAULT now(),
                updated_at          timestamptz NOT NULL DEFAULT now(),
                semantic_metadata   jsonb NOT NULL DEFAULT '{}',
                episodic_metadata   jsonb NOT NULL DEFAULT '{}',
                procedural_metadata jsonb NOT NULL DEFAULT '{}',
                consolidation_score numeric,
                last_consolidated   timestamptz,
                decay_applied       boolean NOT NULL DEFAULT false,
                metadata            jsonb NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX idx_memories_created_at ON memories (created_at DESC)",
        ]

    async def get_rollback_statements(self) -> list[str]:
        return [
            "DROP TABLE IF EXISTS memories",
            "DROP TYPE IF EXISTS memory_type",
        ]
