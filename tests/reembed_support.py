"""A memory store with embeddings, and a small deterministic embedder, for re-embedding tests.

The embedder needs no network: each text's vector is derived from its SHA-256, so a test can
compute the vector a memory must end up with.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from brainmigrate import EmbeddingModel, MigrationMetadata, MigrationType, ReembedMigration

OLD_DIMENSIONS = 8
NEW_DIMENSIONS = 12
REEMBED = "reembed_toy_001"
TOY = EmbeddingModel(name="toy-embedder", dimensions=NEW_DIMENSIONS, provider="tests", version="1")

STORE = f"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id         bigint PRIMARY KEY,
    content    text,
    metadata   jsonb NOT NULL DEFAULT '{{}}',
    embedding  vector({OLD_DIMENSIONS})
);
INSERT INTO memories (id, content, metadata, embedding)
SELECT i, 'memory number ' || i, jsonb_build_object('n', i),
       (SELECT array_agg(((i * 7 + d) % 10)::real / 10)::real[]::vector
          FROM generate_series(1, {OLD_DIMENSIONS}) AS d)
  FROM generate_series(1, $1::int) AS i;
CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops) WITH (m = 8);
"""


async def create_store(pool: Any, count: int) -> None:
    """``count`` memories with 8-dimensional embeddings and an HNSW index on them."""
    statements = STORE.split(";\nINSERT")
    await pool.execute(statements[0])
    await pool.execute("INSERT" + statements[1].split(";\nCREATE INDEX")[0], count)
    await pool.execute("CREATE INDEX" + statements[1].split(";\nCREATE INDEX")[1])


def toy_vector(text: str, dimensions: int = NEW_DIMENSIONS) -> list[float]:
    """The toy model's vector of ``text``: deterministic, finite, in [-1, 1)."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < 2 * dimensions:
        digest += hashlib.sha256(digest).digest()
    values = struct.unpack(f">{dimensions}h", digest[: 2 * dimensions])
    return [value / 32768 for value in values]


Embed = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]


def reembed(
    migration_id: str = REEMBED,
    *,
    model: EmbeddingModel = TOY,
    embed: Embed | None = None,
    **attributes: Any,
) -> type[ReembedMigration]:
    """A re-embedding of memories.embedding to ``model``, with the toy embedder unless ``embed``."""

    async def toy(texts: list[str]) -> Sequence[Sequence[float]]:
        return [toy_vector(text, model.dimensions) for text in texts]

    chosen = embed or toy

    class ToyReembed(ReembedMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name="re-embed memories with the toy model",
                version="1.0.0",
                migration_type=MigrationType.HYBRID,
            )

        async def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
            return await chosen(texts)

    ToyReembed.model = model
    for name, value in attributes.items():
        setattr(ToyReembed, name, value)
    return ToyReembed


async def vectors(pool: Any, column: str = "embedding") -> dict[int, list[float]]:
    rows = await pool.fetch(f"SELECT id, {column}::text AS v FROM memories WHERE {column} IS NOT NULL")
    return {row["id"]: [float(x) for x in row["v"].strip("[]").split(",")] for row in rows}


async def columns(pool: Any) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'memories'::regclass AND attnum > 0 AND NOT attisdropped"
    )
    return {row[0]: row[1] for row in rows}


async def indexes(pool: Any) -> dict[str, str]:
    rows = await pool.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'memories'")
    return {row[0]: row[1] for row in rows}


TextsSeen = ClassVar[list[str]]


async def texts(pool: Any) -> dict[int, str]:
    """Each memory's text, by id."""
    return {row["id"]: row["content"] for row in await pool.fetch("SELECT id, content FROM memories")}


def vector_text(vector: Sequence[float]) -> str:
    """``vector`` as pgvector's text input."""
    return "[" + ",".join(map(repr, vector)) + "]"
