"""A re-embedding of ``memories.embedding`` to the toy model, for the re-embedding fault tests.

Its ``embed`` is the toy model's (``reembed_support.toy_vector``): each call first sleeps
``$BM_EMBED_DELAY`` seconds (0 when unset), then appends the texts it embedded, one a line, to the
file ``$BM_EMBED_LOG`` names (when set), so that a test counts the model's calls per text across
processes. A killed run and its rerun run the same code (and checksums), sleeping for different
times. The cutover waits up to two minutes for the table's lock, once: a test holds the lock and
catches the runner waiting for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from brainmigrate import MigrationMetadata, MigrationType, ReembedMigration
from reembed_support import TOY, toy_vector

REEMBED_ID = "reembed_toy_faults_001"
DELAY_VARIABLE = "BM_EMBED_DELAY"
LOG_VARIABLE = "BM_EMBED_LOG"


def log_texts(texts: list[str]) -> None:
    """Append ``texts`` to ``$BM_EMBED_LOG`` in one write (a killed process leaves whole lines)."""
    path = os.environ.get(LOG_VARIABLE)
    if not path or not texts:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{text}\n" for text in texts).encode())
    finally:
        os.close(fd)


class ToyReembed(ReembedMigration):
    model = TOY
    embed_batch_size = 25
    cutover_lock_timeout_ms = 120_000
    cutover_attempts = 1

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=REEMBED_ID,
            name="re-embed memories with the toy model",
            version="1.0.0",
            migration_type=MigrationType.HYBRID,
        )

    async def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        delay = float(os.environ.get(DELAY_VARIABLE) or 0)
        if delay > 0:
            await anyio.sleep(delay)
        vectors = [toy_vector(text) for text in texts]
        log_texts(texts)
        return vectors
