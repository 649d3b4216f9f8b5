"""A migration's own batch writer: the one seam through which a data migration may write a batch
of entries its own way (a re-embedding's vectors, sent in binary), instead of the batch UPDATE.

A migration offers one with ``async _batch_writer(conn, table)``; the engine asks once per plan
(never for a run that saves before-images), and uses it for every batch whose set of written
columns it :meth:`~BatchWriter.handles`, in the same transaction (and savepoints) as the UPDATE it
replaces: checkpoints, leases and the isolation of failing items stay the engine's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._model.types import Connection
from .table import TableShape

if TYPE_CHECKING:
    from .entries import Entry


class BatchWriter(Protocol):
    """Writes batches of entries with one set of columns, as the batch UPDATE would."""

    def handles(self, fields: tuple[str, ...]) -> bool:
        """Whether this writer writes entries changing exactly ``fields``."""

    def encode(self, entries: list[Entry]) -> None:
        """Prepare the entries' values for :meth:`write` in place, as soon as their call returns
        (spread between the calls); a value it cannot prepare is left for :meth:`write` to refuse."""

    async def write(self, conn: Connection, entries: Sequence[Entry]) -> int:
        """Write ``entries`` (in the caller's transaction); the number of rows written."""


async def batch_writer(conn: Connection, migration: Any, table: TableShape | None) -> BatchWriter | None:
    """The migration's own writer for ``table`` (asked on ``conn``), if it offers one."""
    offer = getattr(migration, "_batch_writer", None)
    if table is None or not callable(offer):
        return None
    writer: BatchWriter | None = await offer(conn, table)
    return writer
