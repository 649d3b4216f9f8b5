"""Move every memory to a new embedding model: a re-embedding, the ready-made hybrid migration.

The store was created for a 1,536-dimension model (``vector(1536)``, 002) and indexed with HNSW
(004). This migration moves the ``embedding`` column to a 64-dimension model, in phases:

1. expand: a new column ``embedding_next vector(64)`` (and a hash of each memory's text), and a
   record of the new model in brainmigrate's ``embedding_generations``;
2. backfill: every memory's content embedded in batches of 64, concurrently, checkpointed and
   resumable, writing only the new column;
3. validate: no memory with content lacks a vector of 64 finite dimensions;
4. cutover: the new column's HNSW index built with ``CREATE INDEX CONCURRENTLY``, then, in one
   short transaction under ``lock_timeout``, the new column and index take the old names (the
   old ones are kept as ``embedding_previous``);
5. contract, by hand (``await migrator.contract(id)``) after a soak period: the previous column
   and its index are dropped. Until then, ``rollback(id)`` switches back at once.

The model here is a stand-in that needs no network: it hashes each word of a memory into one of
64 dimensions (feature hashing), so memories sharing words end up near each other. A real model
goes in ``embed`` the same way: a call to an embeddings API, or a local model run in a thread.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from brainmigrate import EmbeddingModel, MigrationMetadata, MigrationType, ReembedMigration

_WORD = re.compile(r"[a-z']+")


def hashed_words(text: str, dimensions: int) -> list[float]:
    """``text`` as a unit vector: each word adds ±1 to the dimension its hash picks."""
    vector = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
        vector[digest % dimensions] += 1.0 if digest >> 63 else -1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


class ReembedMemories(ReembedMigration):
    # The defaults, spelled out: the memories, their embedding, re-embedded from their content.
    table = "memories"
    column = "embedding"
    text_column = "content"
    model = EmbeddingModel(name="hashed-words-64", dimensions=64, provider="local", version="1")
    #: What the column was made for, recorded as the model it held before.
    current_model = EmbeddingModel(name="text-embedding-3-small", dimensions=1536, provider="openai")
    embed_batch_size = 64

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="reembed_memories_hashed_words_001",
            name="Re-embed memories with hashed-words-64",
            description="Move memories.embedding from the 1,536-dimension model to a 64-dimension one",
            version="3.0.0",
            migration_type=MigrationType.HYBRID,
            author="second-brain",
            created_at=datetime(2025, 3, 3, tzinfo=UTC),
            dependencies=["index_memory_embeddings_001"],
        )

    async def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        return [hashed_words(text, self.model.dimensions) for text in texts]
