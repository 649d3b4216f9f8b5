"""``ReembedMigration``: move a vector column to a new embedding model, safely, as a hybrid."""

from __future__ import annotations

import abc
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from .._errors import MigrationValidationError
from .._model.embedding import ColumnType, EmbeddingModel
from .._model.hybrid import ContractMode, HybridMigration, HybridStep
from .._model.sqltext import quote_ident
from .._model.states import HybridPhase
from .._model.types import Connection
from .catalog import read_table
from .plan import ReembedPlan
from .steps import BackfillStep, ExpandStep
from .switch import ContractStep, CutoverStep, IndexStep


class ReembedMigration(HybridMigration):
    """Re-embed a vector column with a new model: a ready-made hybrid migration.

    Declare ``model`` and override :meth:`embed`; ``table``, ``column``, ``text_column`` and ``key``
    default to a Second Brain store's ``memories``, ``embedding``, ``content`` and ``id``. Its
    phases: expand (a new column of the model's dimensions, ``halfvec`` beyond 2,000), backfill
    (leased batches calling :meth:`embed`, writing only the new column and a hash of each text),
    validate, cutover (the new column's HNSW index built concurrently, then the names switched in
    one short locked transaction) and contract (the previous column and index dropped; by hand,
    ``await migrator.contract(id)``, unless ``contract_mode = "auto"``). Rolling back before
    contract switches the names back at once.
    """

    #: The model to move to (required).
    model: ClassVar[EmbeddingModel]
    table: ClassVar[str] = "memories"
    column: ClassVar[str] = "embedding"
    text_column: ClassVar[str] = "content"
    key: ClassVar[str] = "id"
    #: The table's schema (None: the search path's).
    table_schema: ClassVar[str | None] = None
    #: The model the column holds now, recorded on the first re-embedding of a column that
    #: brainmigrate has no record of (else it is recorded as "unknown").
    current_model: ClassVar[EmbeddingModel | None] = None
    #: ``auto``: ``vector`` up to 2,000 dimensions (pgvector's index limit), ``halfvec`` beyond.
    column_type: ClassVar[ColumnType] = "auto"
    #: Build an HNSW index on the new column before cutover (its old index's operator class and
    #: options, unless ``index_opclass`` and ``index_options`` say otherwise).
    build_index: ClassVar[bool] = True
    index_opclass: ClassVar[str | None] = None
    index_options: ClassVar[Mapping[str, int]] = {}
    #: Texts per :meth:`embed` call.
    embed_batch_size: ClassVar[int] = 64
    #: Exceptions of :meth:`embed` worth another try (a rate-limited or overloaded model API);
    #: ``Retry-After`` is honoured, as for any data migration.
    retry_on: ClassVar[tuple[type[BaseException], ...]] = ()
    #: How long cutover and contract wait for the table's lock each try, and how many tries.
    cutover_lock_timeout_ms: ClassVar[int] = 2_000
    cutover_attempts: ClassVar[int] = 5
    #: Passes over the memories written since the backfill read them, before the index build and
    #: before each try of the switch; a table written faster than the model embeds never catches
    #: up, and the switch is then put off (TableLockTimeout).
    catch_up_passes: ClassVar[int] = 20
    #: Stale memories allowed at validation, as a share of those with text (written since the
    #: backfill read them; cutover embeds them under its lock).
    max_stale_at_validation: ClassVar[float] = 0.05
    #: Contract (dropping the previous column) waits for ``migrator.contract(id)``: a soak period.
    contract_mode: ClassVar[ContractMode] = "manual"
    #: The table's ``toast_tuple_target`` while its rows hold two vectors (128 to 8,160, set by
    #: expand, reset by contract or by rolling back): small enough that both vectors are stored
    #: out of line, so the backfill's updates stay HOT and skip the old column's HNSW index
    #: (measured in docs/benchmarks.md). None leaves the table's storage settings alone; a table
    #: that has a ``toast_tuple_target`` of its own keeps it.
    toast_tuple_target: ClassVar[int | None] = 128

    @abc.abstractmethod
    async def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        """The new model's vectors of ``texts``, one per text, in order."""

    # -- the plan and the steps ------------------------------------------------------------------

    @property
    def plan(self) -> ReembedPlan:
        """The names, types and SQL parts of this re-embedding (checked once)."""
        plan: ReembedPlan | None = self.__dict__.get("_plan")
        if plan is None:
            cls = type(self)
            plan = ReembedPlan.of(
                self.metadata.id,
                model=getattr(cls, "model", None),
                table=cls.table,
                column=cls.column,
                text_column=cls.text_column,
                key=cls.key,
                table_schema=cls.table_schema,
                column_type=cls.column_type,
                build_index=cls.build_index,
                opclass=cls.index_opclass,
                index_options=cls.index_options,
            )
            self.__dict__["_plan"] = plan
        return plan

    def _make_steps(self) -> Iterator[HybridStep]:
        yield HybridStep(HybridPhase.EXPANDING, 0, ExpandStep(self))
        yield HybridStep(HybridPhase.BACKFILLING, 0, BackfillStep.of(self))
        yield HybridStep(HybridPhase.CUTTING_OVER, 0, IndexStep(self))
        yield HybridStep(HybridPhase.CUTTING_OVER, 1, CutoverStep(self))
        yield HybridStep(HybridPhase.CONTRACTING, 0, ContractStep(self))

    def _check_definition(self) -> None:
        cls = type(self)
        where = f"re-embedding {self.metadata.id!r}"
        self.plan  # noqa: B018 - checks the declaration
        for name, value, low, high in (
            ("embed_batch_size", cls.embed_batch_size, 1, 10_000),
            ("cutover_lock_timeout_ms", cls.cutover_lock_timeout_ms, 1, 600_000),
            ("cutover_attempts", cls.cutover_attempts, 1, 100),
            ("catch_up_passes", cls.catch_up_passes, 1, 1_000),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise MigrationValidationError(
                    f"{where}: {name} must be an int from {low} to {high:,}, got {value!r}",
                    migration_id=self.metadata.id,
                )
        target = cls.toast_tuple_target
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int) or not 128 <= target <= 8160
        ):
            raise MigrationValidationError(
                f"{where}: toast_tuple_target must be None or an int from 128 to 8,160, got {target!r}",
                migration_id=self.metadata.id,
            )
        share = cls.max_stale_at_validation
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise MigrationValidationError(
                f"{where}: max_stale_at_validation must be a share from 0 to 1, got {share!r}",
                migration_id=self.metadata.id,
            )
        if cls.current_model is not None and not isinstance(cls.current_model, EmbeddingModel):
            raise MigrationValidationError(
                f"{where}: current_model must be an EmbeddingModel or None, got {cls.current_model!r}",
                migration_id=self.metadata.id,
            )

    async def checksum_material(self) -> str:
        try:
            embed = inspect.getsource(type(self).embed)
        except (OSError, TypeError):
            embed = f"{type(self).__module__}.{type(self).__qualname__}.embed"
        return f"{await super().checksum_material()}\n{embed}"

    # -- the gate before cutover -----------------------------------------------------------------

    async def validate_backfill(self, conn: Connection) -> bool:
        """Every vector of the declared type and dimensions and finite; memories with text but no
        new vector (written since the backfill) at most ``max_stale_at_validation`` of them.

        Raises MigrationValidationError saying what is wrong (the hybrid compensates).
        """
        plan = self.plan
        facts = await read_table(conn, plan)
        new = facts.column(plan.next_column)
        if new is None or new.type_name != plan.column_type or new.dimensions != plan.model.dimensions:
            found = "missing" if new is None else f"{new.type_name}({new.dimensions})"
            raise MigrationValidationError(
                f"re-embedding {plan.migration_id!r}: the new column {plan.next_column} is {found}, "
                f"not {plan.sql_type}",
                migration_id=plan.migration_id,
            )
        norm = "vector_norm" if plan.column_type == "vector" else "l2_norm"
        vector, text = quote_ident(plan.next_column), quote_ident(plan.text_column)
        row: Any = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE {text} IS NOT NULL) AS with_text, "
            f"count(*) FILTER (WHERE {plan.stale_condition()}) AS stale, "
            f"count(*) FILTER (WHERE {vector} IS NOT NULL AND NOT ({norm}({vector}) < 'Infinity'::float8)) "
            f"AS broken FROM {plan.qualified(facts.schema)}"
        )
        if row["broken"]:
            raise MigrationValidationError(
                f"re-embedding {plan.migration_id!r}: {row['broken']} new vectors hold NaN or infinity",
                migration_id=plan.migration_id,
            )
        if row["stale"] > self.max_stale_at_validation * row["with_text"]:
            raise MigrationValidationError(
                f"re-embedding {plan.migration_id!r}: {row['stale']} of {row['with_text']} memories "
                "with text have no vector of the new model (more than max_stale_at_validation = "
                f"{self.max_stale_at_validation:g} of them)",
                migration_id=plan.migration_id,
            )
        return await super().validate_backfill(conn)
