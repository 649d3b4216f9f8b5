"""Hybrid migrations: coordinated changes in phases, expand → backfill → validate → cutover →
contract.

A :class:`HybridMigration` owns ordinary migrations as its steps: schema migrations that add what
the new code needs (expand), data or structure migrations that fill it (backfill), schema
migrations that switch over to it once the backfill is validated (cutover: building an index,
swapping names), and schema migrations that remove what only the old code used (contract). The
steps keep their own ids, checksums and rollbacks; they are not loaded as migrations of their own.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, get_args

import attrs

from .._errors import MigrationStateError, MigrationValidationError
from .metadata import MigrationMetadata, MigrationType
from .migration import Migration, MigrationKind, check_definition
from .states import HybridPhase
from .types import Connection

#: The phases that hold steps, in the order they run, with the attribute declaring each.
STEP_PHASES: tuple[tuple[HybridPhase, str], ...] = (
    (HybridPhase.EXPANDING, "expand"),
    (HybridPhase.BACKFILLING, "backfill"),
    (HybridPhase.CUTTING_OVER, "cutover"),
    (HybridPhase.CONTRACTING, "contract"),
)

#: The kinds of migration each phase accepts as steps, and how to say so.
_KINDS: dict[HybridPhase, tuple[frozenset[MigrationKind], str]] = {
    HybridPhase.EXPANDING: (
        frozenset({MigrationKind.SQL, MigrationKind.PYTHON}),
        "schema migrations (DatabaseSchemaMigration or Migration)",
    ),
    HybridPhase.BACKFILLING: (
        frozenset({MigrationKind.DATA, MigrationKind.STRUCTURE}),
        "data, memory or structure migrations",
    ),
    HybridPhase.CUTTING_OVER: (
        frozenset({MigrationKind.SQL, MigrationKind.PYTHON}),
        "schema migrations (DatabaseSchemaMigration or Migration)",
    ),
    HybridPhase.CONTRACTING: (
        frozenset({MigrationKind.SQL, MigrationKind.PYTHON}),
        "schema migrations (DatabaseSchemaMigration or Migration)",
    ),
}

ContractMode = Literal["auto", "manual"]
#: The values ``contract_mode`` (and a rewrite's ``rewrite_contract_mode``) may take.
CONTRACT_MODES: tuple[ContractMode, ...] = get_args(ContractMode)


@attrs.frozen
class HybridStep:
    """One step of a hybrid: the phase it runs in, its place in that phase, and the migration."""

    phase: HybridPhase
    position: int
    migration: Migration = attrs.field(eq=False)

    @property
    def id(self) -> str:
        return self.migration.metadata.id

    @property
    def attribute(self) -> str:
        """The class attribute that declares it (``expand``, ``backfill`` or ``contract``)."""
        return dict(STEP_PHASES)[self.phase]


@attrs.frozen(kw_only=True)
class HybridStatus:
    """Where a hybrid migration stands, as any process reads it (``Migrator.hybrid_status``)."""

    migration_id: str
    #: None when it never ran (or, after ``rollback``/``abandon``, the latest run's phase).
    phase: HybridPhase | None
    contract_mode: str
    #: Every step's id, in the order they run.
    steps: tuple[str, ...]
    #: The steps applied now, in the order they run.
    steps_done: tuple[str, ...] = ()
    #: The step the run is at (or stopped at), if any.
    current_step: str | None = None
    #: Why the run stopped, when it failed or was abandoned.
    error: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None

    def __str__(self) -> str:
        phase = self.phase.value if self.phase is not None else "not started"
        text = f"{self.migration_id} {phase}: {len(self.steps_done)} of {len(self.steps)} steps done"
        if self.current_step:
            text += f", at {self.current_step}"
        if self.error:
            text += f": {self.error.splitlines()[0]}"
        return text


class ReadyMadeStep:
    """What every step of a ready-made hybrid (a re-embedding, a table rewrite) shares: its id and
    version are the hybrid's, its name says what it does to what.

    Mixed in before a migration class, which provides the pool and the step's work.
    """

    #: The step's part of the hybrid's id (``<hybrid id>/<suffix>``) and its title.
    suffix: ClassVar[str]
    title: ClassVar[str]
    step_type: ClassVar[MigrationType] = MigrationType.DATABASE_SCHEMA
    step_reversible: ClassVar[bool] = True

    @property
    def hybrid_metadata(self) -> MigrationMetadata:
        """The metadata of the hybrid the step belongs to."""
        raise NotImplementedError

    @property
    def subject(self) -> str:
        """What the step works on, shown in its name (``memories``, ``memories.embedding to ...``)."""
        raise NotImplementedError

    def _get_metadata(self) -> MigrationMetadata:
        hybrid = self.hybrid_metadata
        return MigrationMetadata(
            id=f"{hybrid.id}/{self.suffix}",
            name=f"{self.title} ({self.subject})",
            version=hybrid.version,
            migration_type=self.step_type,
            reversible=self.step_reversible,
        )

    def outside_a_migrator(self, hybrid: str) -> MigrationStateError:
        """The error for a step run on its own, where the migrator's own schema is unknown."""
        return MigrationStateError(
            f"step {self.suffix!r} of {hybrid} runs only through a Migrator (run_pending, execute or "
            "rollback)",
            migration_id=self.hybrid_metadata.id,
        )


class HybridMigration(Migration):
    """A change in phases: expand, backfill, validate, cutover, contract (declare
    ``migration_type=HYBRID``).

    ``expand``, ``backfill``, ``cutover`` and ``contract`` list migration classes, run in that
    order: schema migrations, then data or structure migrations, then schema migrations again.
    :meth:`validate_backfill` must pass before cutover (and contract). With
    ``contract_mode = "manual"``, the run stops once validated and cut over (phase
    READY_TO_CONTRACT) until ``await migrator.contract(id)``, so the application's
    new code can be deployed in between. A failure before contract rolls the completed steps back
    in reverse order; contract, once started, is only ever carried on.
    """

    kind: ClassVar[MigrationKind] = MigrationKind.HYBRID
    migration_types: ClassVar[frozenset[MigrationType]] = frozenset({MigrationType.HYBRID})

    #: Additive steps: schema migrations (new columns, tables, indexes).
    expand: ClassVar[Sequence[type[Migration]]] = ()
    #: Steps that fill what expand added: data, memory or structure migrations.
    backfill: ClassVar[Sequence[type[Migration]]] = ()
    #: Steps run once the backfill is validated, before contract: schema migrations that switch
    #: over (build an index, rename the new column into place). Compensated like expand.
    cutover: ClassVar[Sequence[type[Migration]]] = ()
    #: Destructive steps, run only after validation: schema migrations. Put what removes the old
    #: read path (dropping a column the old code reads) last.
    contract: ClassVar[Sequence[type[Migration]]] = ()
    #: ``"auto"``: contract right after validation; ``"manual"``: wait for ``migrator.contract(id)``.
    contract_mode: ClassVar[ContractMode] = "auto"

    def __init__(self, pool: Any = None) -> None:
        super().__init__(pool)
        self._steps: tuple[HybridStep, ...] | None = None

    async def validate_backfill(self, conn: Connection) -> bool:
        """The gate before contract: False (or raising) refuses contract and compensates.

        By default, every backfill step's ``validate_postconditions`` passes. brainmigrate checks
        besides that every backfill step is applied and left no failed items.
        """
        for step in self.steps_of(HybridPhase.BACKFILLING):
            if not await step.migration.validate_postconditions(conn):
                return False
        return True

    # -- the steps -------------------------------------------------------------------------------

    @classmethod
    def step_classes(cls) -> Iterator[type[Migration]]:
        """The migration classes its phases declare (for the loader, which leaves them out)."""
        for _, attribute in STEP_PHASES:
            declared = getattr(cls, attribute, ())
            if isinstance(declared, list | tuple):
                for item in declared:
                    if isinstance(item, type):
                        yield item
                    elif isinstance(item, Migration):
                        yield type(item)

    @property
    def steps(self) -> tuple[HybridStep, ...]:
        """Every step, in the order they run, instantiated with the hybrid's pool."""
        if self._steps is None:
            self._steps = tuple(self._make_steps())
        return self._steps

    def steps_of(self, phase: HybridPhase) -> tuple[HybridStep, ...]:
        return tuple(step for step in self.steps if step.phase is phase)

    def rolled_back_when_abandoned(self, applied: Collection[str]) -> bool:
        """Whether abandoning a run first rolls back its steps applied (or stopped midway), given
        the ids of the steps applied. A hybrid's abandon undoes nothing; a ready-made hybrid whose
        steps leave what nothing else would remove (a table rewrite before its swap) says so."""
        return False

    def _make_steps(self) -> Iterator[HybridStep]:
        for phase, attribute in STEP_PHASES:
            declared = getattr(type(self), attribute, ())
            if isinstance(declared, type) or not isinstance(declared, list | tuple):
                shown = declared.__name__ if isinstance(declared, type) else repr(declared)
                raise MigrationValidationError(
                    f"{self._where()}: {attribute} must be a tuple of migration classes, got {shown}; "
                    f"write {attribute} = ({shown},)",
                    migration_id=self.metadata.id,
                )
            for position, item in enumerate(declared):
                yield HybridStep(phase, position, self._instantiate(item, attribute, position))

    def _instantiate(self, item: object, attribute: str, position: int) -> Migration:
        where = f"{self._where()}: {attribute}[{position}]"
        if isinstance(item, Migration):
            item.pool = self.pool
            return item
        if not (isinstance(item, type) and issubclass(item, Migration)):
            raise MigrationValidationError(
                f"{where} is {item!r}, not a migration class; list Migration subclasses",
                migration_id=self.metadata.id,
            )
        if inspect.isabstract(item):
            missing = ", ".join(sorted(item.__abstractmethods__))
            raise MigrationValidationError(
                f"{where} ({item.__qualname__}) cannot be instantiated: it does not define {missing}",
                migration_id=self.metadata.id,
            )
        return item(self.pool)

    def _where(self) -> str:
        return f"hybrid migration {self.metadata.id!r} ({type(self).__module__}.{type(self).__qualname__})"

    async def check_steps(self) -> None:
        """Refuse steps brainmigrate could not run as this hybrid declares them; nothing runs.

        ``contract_mode`` is ``"auto"`` or ``"manual"``; there is at least one step; each phase
        holds only the kinds it accepts (no hybrid inside a hybrid); step ids are unique; a step
        depends only on earlier steps of this hybrid; and each step is a valid migration.
        """
        hybrid_id = self.metadata.id
        mode = type(self).contract_mode
        if mode not in CONTRACT_MODES:
            allowed = " or ".join(repr(value) for value in CONTRACT_MODES)
            raise MigrationValidationError(
                f"{self._where()}: contract_mode must be {allowed}, got {mode!r}",
                migration_id=hybrid_id,
            )
        steps = self.steps
        if not steps:
            raise MigrationValidationError(
                f"{self._where()} declares no steps; list migration classes in expand, backfill and contract",
                migration_id=hybrid_id,
            )
        seen: dict[str, HybridStep] = {}
        for step in steps:
            where = (
                f"{self._where()}: step {step.id!r} ({type(step.migration).__qualname__}) in "
                f"{step.attribute} (phase {step.phase.name})"
            )
            kinds, accepted = _KINDS[step.phase]
            kind = step.migration.kind
            if kind not in kinds:
                shown = kind.value if isinstance(kind, MigrationKind) else repr(kind)
                raise MigrationValidationError(
                    f"{where} is a migration of kind {shown!r}, which {step.attribute} does not run: "
                    f"{step.attribute} takes {accepted} only. Move it to the phase its kind belongs to",
                    migration_id=hybrid_id,
                )
            if step.id == hybrid_id or step.id in seen:
                raise MigrationValidationError(
                    f"{where} has the id {step.id!r}, which "
                    f"{'the hybrid itself' if step.id == hybrid_id else 'an earlier step'} has; "
                    "give each step its own id",
                    migration_id=hybrid_id,
                )
            for dependency in step.migration.metadata.dependencies:
                if dependency not in seen:
                    raise MigrationValidationError(
                        f"{where} depends on {dependency!r}, which is not an earlier step of this hybrid; "
                        "steps run in the order the hybrid lists them, so declare that dependency on "
                        "the hybrid instead",
                        migration_id=hybrid_id,
                    )
            try:
                await check_definition(step.migration)
            except MigrationValidationError as exc:
                raise MigrationValidationError(f"{where}: {exc}", migration_id=hybrid_id) from exc
            seen[step.id] = step

    async def checksum_material(self) -> str:
        """The steps, in order, with their own checksums: a changed step changes the hybrid."""
        parts = [f"{step.phase.value}:{step.id}:{await step.migration.checksum()}" for step in self.steps]
        return "\n".join(parts)
