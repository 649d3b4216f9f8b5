"""What a re-embedding works on, derived once from its declaration: names, types and SQL parts.

Every identifier is quoted here and every derived name fits PostgreSQL's 63 bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import attrs

from .._engine.sql import MAX_IDENTIFIER_BYTES, derived_name
from .._errors import MigrationValidationError
from .._model.embedding import (
    HALFVEC_INDEX_MAX_DIMENSIONS,
    VECTOR_INDEX_MAX_DIMENSIONS,
    ColumnType,
    EmbeddingModel,
)
from .._model.sqltext import quote_ident

#: Index options pgvector's HNSW takes, with the range each accepts.
HNSW_OPTIONS: Mapping[str, tuple[int, int]] = {"m": (2, 100), "ef_construction": (4, 1000)}


def _fitted(name: str, suffix: str) -> str:
    """``name`` + ``suffix`` when it fits in 63 bytes, else a derived name that does."""
    joined = f"{name}{suffix}"
    if len(joined.encode()) <= MAX_IDENTIFIER_BYTES:
        return joined
    return derived_name("", joined)


def _problem(migration_id: str, text: str) -> MigrationValidationError:
    return MigrationValidationError(f"re-embedding {migration_id!r}: {text}", migration_id=migration_id)


@attrs.frozen(kw_only=True)
class ReembedPlan:
    """The names and types of one re-embedding of ``table.column`` to ``model``."""

    migration_id: str
    model: EmbeddingModel
    table: str
    column: str
    text_column: str
    key: str
    table_schema: str | None
    column_type: str
    build_index: bool
    opclass: str | None
    index_options: Mapping[str, int]

    @classmethod
    def of(
        cls,
        migration_id: str,
        *,
        model: object,
        table: str,
        column: str,
        text_column: str,
        key: str,
        table_schema: str | None,
        column_type: ColumnType,
        build_index: bool,
        opclass: str | None,
        index_options: Mapping[str, int],
    ) -> ReembedPlan:
        """The plan, or MigrationValidationError saying what of the declaration is wrong."""
        if not isinstance(model, EmbeddingModel):
            raise _problem(
                migration_id,
                f"model must be an EmbeddingModel(name=..., dimensions=...), got {model!r}",
            )
        for attribute, value in (
            ("table", table),
            ("column", column),
            ("text_column", text_column),
            ("key", key),
            ("table_schema", table_schema),
        ):
            if value is None and attribute == "table_schema":
                continue
            if not isinstance(value, str) or "\0" in value or not 0 < len(value.encode()) <= 63:
                raise _problem(
                    migration_id,
                    f"{attribute} must be a PostgreSQL identifier of 1 to 63 bytes, got {value!r}",
                )
        if len({column, text_column, key}) < 3:
            raise _problem(migration_id, "column, text_column and key must be three different columns")
        dims = model.dimensions
        if column_type not in ("auto", "vector", "halfvec"):
            raise _problem(
                migration_id, f"column_type must be 'auto', 'vector' or 'halfvec', got {column_type!r}"
            )
        chosen = column_type
        if chosen == "auto":
            chosen = "vector" if dims <= VECTOR_INDEX_MAX_DIMENSIONS else "halfvec"
        if build_index:
            limit = VECTOR_INDEX_MAX_DIMENSIONS if chosen == "vector" else HALFVEC_INDEX_MAX_DIMENSIONS
            if dims > limit:
                hint = (
                    "set column_type = 'halfvec' (2-byte floats, indexed up to 4,000 dimensions) or 'auto'"
                    if chosen == "vector" and dims <= HALFVEC_INDEX_MAX_DIMENSIONS
                    else "choose a model of at most 4,000 dimensions (or one that can shorten its "
                    "vectors), or set build_index = False to search without an index"
                )
                raise _problem(
                    migration_id,
                    f"{model.name} has {dims:,} dimensions, more than pgvector can index in a "
                    f"{chosen} column (at most {limit:,}); {hint}",
                )
        if opclass is not None and (not isinstance(opclass, str) or not opclass.startswith(f"{chosen}_")):
            raise _problem(
                migration_id,
                f"index_opclass {opclass!r} is not an operator class of {chosen} (such as "
                f"{chosen}_cosine_ops, {chosen}_l2_ops or {chosen}_ip_ops)",
            )
        if not isinstance(index_options, Mapping):
            raise _problem(migration_id, f"index_options must be a mapping, got {index_options!r}")
        for name, option in index_options.items():
            bounds = HNSW_OPTIONS.get(name)
            if bounds is None:
                raise _problem(
                    migration_id,
                    f"index_options has {name!r}; HNSW takes {', '.join(sorted(HNSW_OPTIONS))}",
                )
            if (
                isinstance(option, bool)
                or not isinstance(option, int)
                or not bounds[0] <= option <= bounds[1]
            ):
                raise _problem(
                    migration_id,
                    f"index_options[{name!r}] must be an int from {bounds[0]} to {bounds[1]}, got {option!r}",
                )
        return cls(
            migration_id=migration_id,
            model=model,
            table=table,
            column=column,
            text_column=text_column,
            key=key,
            table_schema=table_schema,
            column_type=chosen,
            build_index=build_index,
            opclass=opclass,
            index_options=dict(index_options),
        )

    # -- names -----------------------------------------------------------------------------------

    @property
    def next_column(self) -> str:
        """The column the new model's vectors are written to, until cutover gives it the old name."""
        return _fitted(self.column, "_next")

    @property
    def hash_column(self) -> str:
        """Each new vector's text, as an MD5 (a uuid): a memory whose text changed is found stale."""
        return _fitted(self.column, "_next_md5")

    @property
    def previous_column(self) -> str:
        """The old model's vectors after cutover, until contract drops them."""
        return _fitted(self.column, "_previous")

    @property
    def next_index(self) -> str:
        """The new column's index until cutover gives it the old index's name.

        Index names are the schema's, not the table's: when ``{table}_{column}`` could be split
        another way (an underscore in either), a digest of the pair keeps two re-embeddings (of
        ``a_b.c`` and ``a.b_c``) from sharing one index name.
        """
        joined = f"{self.table}_{self.column}"
        if "_" in self.table or "_" in self.column:
            pair = json.dumps([self.table, self.column], ensure_ascii=False)
            joined += "_" + hashlib.sha256(pair.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        return _fitted(joined, "_next_idx")

    def index_name(self, number: int = 0) -> str:
        """``{table}_{column}_idx`` (then ``_idx1``, ``_idx2``...), as PostgreSQL names an index."""
        return _fitted(f"{self.table}_{self.column}", f"_idx{number or ''}")

    def previous_index(self, name: str) -> str:
        return _fitted(name, "_previous")

    @property
    def sql_type(self) -> str:
        return f"{self.column_type}({self.model.dimensions})"

    # -- quoted ----------------------------------------------------------------------------------

    def qualified(self, schema: str) -> str:
        return f"{quote_ident(schema)}.{quote_ident(self.table)}"

    def stale_condition(self) -> str:
        """Rows with text whose new vector is missing or was made from another text."""
        text, vector, md5 = (quote_ident(c) for c in (self.text_column, self.next_column, self.hash_column))
        return f"{text} IS NOT NULL AND ({vector} IS NULL OR {md5} IS DISTINCT FROM md5({text}::text)::uuid)"

    def index_sql(self, schema: str, opclass: str, options: Mapping[str, int]) -> str:
        with_ = ", ".join(f"{name} = {int(value)}" for name, value in sorted(options.items()))
        return (
            f"CREATE INDEX CONCURRENTLY {quote_ident(self.next_index)} ON {self.qualified(schema)} "
            f"USING hnsw ({quote_ident(self.next_column)} {quote_ident(opclass)})"
            + (f" WITH ({with_})" if with_ else "")
        )
