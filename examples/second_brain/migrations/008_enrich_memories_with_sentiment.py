"""Add a sentiment to every memory's metadata: a memory data migration, streamed in batches.

brainmigrate pages through ``memories`` by ``id`` (keyset pages, never OFFSET), calls
``transform_memory`` on each memory, and writes each batch back with one set-based ``UPDATE``,
checkpointing as it goes: an interrupted run resumes where it stopped, and no memory is written
twice. Because the migration is reversible, the old ``metadata`` of each memory it writes is kept
as a before-image, and ``rollback()`` puts it back exactly.

The sentiment comes from a small word list, so the example needs no model and gives the same answer
every time. A real enrichment would call a model in ``transform_batch`` (many texts per call), with
``retry_on`` naming the errors worth another try.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from brainmigrate import (
    BulkMemoryItem,
    DataSource,
    MemoryDataMigration,
    MigrationMetadata,
    MigrationType,
)


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


POSITIVE = words(
    """
    good great excellent wonderful amazing awesome love loved lovely happy glad delighted enjoy enjoyed
    fun excited exciting proud calm grateful thankful helpful success successful win won progress
    beautiful brilliant best better nice pleasant productive relaxing relaxed energizing inspiring
    fantastic perfect solved fixed celebrate celebrated recommend easy smooth kind friendly
    """
)
NEGATIVE = words(
    """
    bad terrible awful horrible hate hated sad angry upset annoyed annoying frustrated frustrating
    worried anxious stressful stressed tired exhausted boring bored fail failed failure broken bug
    bugs problem problems late lost painful sick disappointing disappointed difficult hard worse
    worst confusing confused slow crash crashed delayed missed rude ugly noisy overwhelmed
    """
)
#: A negation flips the sentiment of the word right after it: "not great" counts as negative.
NEGATIONS = words("not no never hardly isn't wasn't don't didn't won't can't couldn't")
WORD = re.compile(r"[a-z']+")


def sentiment(text: str) -> dict[str, Any]:
    """A label, and a score between -1 and 1, from counting positive and negative words.

    The migration's checksum covers ``transform_memory`` and ``source``, not this helper: once the
    migration is applied, change the scoring in a new migration rather than here.
    """
    positive = negative = 0
    negated = False
    for word in WORD.findall(text.lower()):
        if word in NEGATIONS:
            negated = True
            continue
        if word in POSITIVE or word in NEGATIVE:
            if (word in POSITIVE) != negated:
                positive += 1
            else:
                negative += 1
        negated = False
    net = positive - negative
    score = round(net / math.sqrt(net * net + 4), 4)  # squashed to (-1, 1), like VADER's compound
    label = "positive" if score >= 0.2 else "negative" if score <= -0.2 else "neutral"
    return {"label": label, "score": score, "positive_words": positive, "negative_words": negative}


class EnrichMemoriesWithSentiment(MemoryDataMigration):
    # Read each memory's id, content and metadata, in id order. The filter leaves out memories
    # that already have a sentiment (written by the application, for instance).
    source = DataSource(
        table="memories",
        key="id",
        columns=("content", "metadata"),
        where="metadata->>'sentiment' IS NULL",
    )

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="enrich_memories_with_sentiment_001",
            name="Enrich memories with sentiment",
            description="Adds metadata.sentiment (label and score) to every memory, from a word list",
            version="2.11.0",
            migration_type=MigrationType.MEMORY_DATA,
            author="second-brain",
            created_at=datetime(2025, 3, 3, tzinfo=UTC),
            dependencies=["create_memories_001"],
            reversible=True,
        )

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        # metadata arrives as a dict (JSONB is decoded); only the fields given are written.
        metadata = memory["metadata"] or {}
        return BulkMemoryItem(
            memory_id=memory["id"],
            metadata={**metadata, "sentiment": sentiment(memory["content"])},
        )
