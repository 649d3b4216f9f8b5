"""Embedding models as values: what a vector column holds, generation by generation."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

import attrs

#: pgvector's limits: dimensions a ``vector`` column may have, and that its HNSW and IVFFlat
#: indexes take; a ``halfvec`` (2-byte floats) is indexed up to twice as many.
VECTOR_MAX_DIMENSIONS = 16_000
VECTOR_INDEX_MAX_DIMENSIONS = 2_000
HALFVEC_INDEX_MAX_DIMENSIONS = 4_000

#: The column type of a re-embedding's new column: ``auto`` is ``vector`` up to 2,000 dimensions,
#: ``halfvec`` beyond (so that it can still be indexed).
ColumnType = Literal["auto", "vector", "halfvec"]


def _name(_instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"EmbeddingModel.{attribute.name} must be a non-empty string, got {value!r}")


def _optional_name(_instance: Any, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None:
        _name(_instance, attribute, value)  # type: ignore[arg-type]


def _dimensions(_instance: Any, _attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= VECTOR_MAX_DIMENSIONS:
        raise ValueError(
            f"EmbeddingModel.dimensions must be an int from 1 to {VECTOR_MAX_DIMENSIONS:,} (pgvector's "
            f"limit), got {value!r}"
        )


@attrs.frozen(kw_only=True)
class EmbeddingModel:
    """An embedding model's identity: two models are the same only if all four fields are.

    Two models of the same dimensions are still different models: their vectors must never be
    mixed in one column, which is why a re-embedding records the model, not only the dimensions.
    """

    name: str = attrs.field(validator=_name)
    dimensions: int = attrs.field(validator=_dimensions)
    provider: str | None = attrs.field(default=None, validator=_optional_name)
    version: str | None = attrs.field(default=None, validator=_optional_name)

    def __str__(self) -> str:
        by = f" ({self.provider})" if self.provider else ""
        version = f" {self.version}" if self.version else ""
        return f"{self.name}{version}{by}, {self.dimensions} dimensions"


class GenerationStatus(enum.StrEnum):
    """Where one embedding generation of a column stands."""

    #: Its vectors are being computed into a column of its own (a re-embedding in progress).
    BUILDING = "building"
    #: The column the application reads holds its vectors.
    ACTIVE = "active"
    #: Replaced by a cutover, its vectors kept under the "previous" column until contract.
    PREVIOUS = "previous"
    #: Its vectors are gone (contract dropped them).
    RETIRED = "retired"
    #: A re-embedding to it was rolled back.
    ROLLED_BACK = "rolled_back"


@attrs.frozen(kw_only=True)
class EmbeddingGeneration:
    """One model's vectors in one column, as ``Migrator.embedding_generations`` reads them."""

    generation_id: int
    table: str
    column: str
    model: EmbeddingModel
    #: ``vector`` or ``halfvec``.
    column_type: str
    status: GenerationStatus = attrs.field(converter=GenerationStatus)
    #: The re-embedding that made it (None for the model a column held before brainmigrate knew).
    migration_id: str | None
    created_at: datetime
    activated_at: datetime | None = None
    retired_at: datetime | None = None
    #: While its vector index is built: ``pg_stat_progress_create_index``'s phase, and its
    #: progress (tuples or blocks done of total), read by any process.
    index_phase: str | None = None
    index_done: int | None = None
    index_total: int | None = None
