"""A structure migration nesting every memory's tags, pausing before each checkpoint's batches.

``throttle()`` sleeps ``$BM_BATCH_DELAY`` seconds (0 when unset) before each group of key ranges,
outside any transaction, so that a test can catch the run between checkpoints.
"""

from __future__ import annotations

import os

from brainmigrate import MemoryStructureMigration, MigrationMetadata, MigrationType
from brainmigrate import structure as s

RESHAPE_ID = "nest_memory_tags_001"
DELAY_VARIABLE = "BM_BATCH_DELAY"


class NestMemoryTags(MemoryStructureMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=RESHAPE_ID,
            name="nest the tags of every memory",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_STRUCTURE,
        )

    def operations(self) -> list[s.Operation]:
        return [s.move("tags", "labels.all"), s.add("labels.version", 2), s.rename("n", "number")]

    async def throttle(self) -> float:
        return float(os.environ.get(DELAY_VARIABLE, "0"))
