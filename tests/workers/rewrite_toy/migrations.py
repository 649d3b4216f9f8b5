"""A memory migration run as an online table rewrite, for the rewrite fault tests.

It labels each memory's sentiment in its metadata (``"negative"`` when its text says "sad",
``"positive"`` otherwise) and leaves the memories marked ``"keep"`` as they are, so that the
rewrite's fill copies those unchanged. Each batch of the transform first sleeps
``$BM_REWRITE_DELAY`` seconds (0 when unset), so that a test can catch a runner mid-copy; a killed
run and its rerun run the same code (and checksums), sleeping for different times.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio

from brainmigrate import BulkMemoryItem, MemoryDataMigration, MigrationMetadata, MigrationType

REWRITE_ID = "rewrite_toy_faults_001"
DELAY_VARIABLE = "BM_REWRITE_DELAY"


def sentiment(content: str) -> str:
    """The label of a memory's text."""
    return "negative" if "sad" in content else "positive"


def labelled(content: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata the migration gives a memory of ``content`` and ``metadata`` (None: unchanged)."""
    if metadata.get("keep") or "sentiment" in metadata:
        return None
    return {**metadata, "sentiment": sentiment(content)}


class LabelSentiment(MemoryDataMigration):
    strategy: ClassVar[Any] = "rewrite"
    rewrite_contract_mode: ClassVar[Any] = "manual"

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=REWRITE_ID,
            name="label each memory's sentiment",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_DATA,
            reversible=True,
        )

    async def transform_batch(self, memories: list[dict[str, Any]]) -> Sequence[BulkMemoryItem | None]:
        delay = float(os.environ.get(DELAY_VARIABLE) or 0)
        if delay > 0:
            await anyio.sleep(delay)
        return [await self.transform_memory(memory) for memory in memories]

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        metadata = labelled(memory["content"], dict(memory["metadata"]))
        if metadata is None:
            return None
        return BulkMemoryItem(memory_id=memory["id"], metadata=metadata)
