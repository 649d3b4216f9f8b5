"""Give every memory's metadata its version 2 shape: a memory structure migration, run on the server.

After 008, a memory's metadata reads::

    {"source": "chat", "user_id": 5, "language": "en", "tags": ["work", "idea"],
     "sentiment": {"label": "neutral", "score": 0.0, "positive_words": 0, "negative_words": 0}}

and this migration makes it::

    {"source": "chat", "user_id": 5, "languages": ["en"], "tags": ["work", "idea"],
     "analysis": {"sentiment": {"label": "neutral", "score": 0.0, "positive_words": 0,
                                "negative_words": 0}},
     "schema_version": 2}

The operations are declared, not written as a transform: brainmigrate compiles them to one SQL
expression and runs it as an ``UPDATE`` per key range, checkpointed like any data migration, and
writes only the memories whose metadata changes. No memory leaves the server. Each operation here
has an exact inverse, given a condition on the data (no memory has ``analysis.sentiment``,
``languages`` or ``schema_version`` already, and so on): a run checks those conditions before its
first batch and refuses to start if a memory breaks one, so ``rollback()`` applies the inverse
operations, in reverse order, and keeps no copy of the old metadata. ``expected`` is checked on the
server before the run is recorded as applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import ClassVar

from brainmigrate import DataSource, MemoryStructureMigration, MigrationMetadata, MigrationType
from brainmigrate import structure as s


class NestMemoryMetadata(MemoryStructureMigration):
    # The defaults, spelled out: the memories, by id (no column is read into Python), and the
    # JSONB column to reshape.
    source = DataSource(table="memories", key="id")
    column = "metadata"

    #: The shape every memory's metadata has afterwards; ``?`` marks a key that may be absent.
    expected: ClassVar[Mapping[str | tuple[str, ...], str] | None] = {
        "analysis.sentiment": "object",
        "languages": "array?",
        "schema_version": "number",
    }

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="nest_memory_metadata_001",
            name="Nest memory metadata",
            description="Moves the sentiment under analysis, makes language a list, adds schema_version",
            version="2.12.0",
            migration_type=MigrationType.MEMORY_STRUCTURE,
            author="second-brain",
            created_at=datetime(2025, 3, 17, tzinfo=UTC),
            dependencies=["enrich_memories_with_sentiment_001"],
            reversible=True,
        )

    def operations(self) -> list[s.Operation]:
        return [
            # Nest what 008 wrote: later analyses (topics, entities) go next to it.
            s.move("sentiment", "analysis.sentiment"),
            # A memory may mix languages: "en" becomes ["en"].
            s.rename("language", "languages"),
            s.wrap("languages"),
            s.add("schema_version", 2),
        ]
