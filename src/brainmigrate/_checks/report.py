"""What a run of the standard checks found: one outcome per check (and per migration where the
check looks at each migration on its own)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping

import attrs

from .._errors import MigrationCheckError
from .._model.types import Connection

#: Puts sample rows in place, on a connection inside a transaction committed when it returns.
SampleLoader = Callable[[Connection], Awaitable[None]]
#: One loader, run before the first data, memory or structure migration; or a loader per
#: migration id, each run just before that migration.
SampleData = SampleLoader | Mapping[str, SampleLoader]


class Check(enum.StrEnum):
    """The standard checks, in the order they run."""

    #: No pending migrations touching one table in an undecided order (and, if asked, one head).
    HEADS = "heads"
    #: Every migration's class runs the ``migration_type`` it declares.
    KINDS = "kinds"
    #: Every migration applies, in order, on an empty database.
    UPGRADE = "upgrade"
    #: Each reversible migration: apply, roll back, compare fingerprints, apply again.
    STAIRWAY = "stairway"
    #: Each data, memory and structure migration's dry run, on the sample data.
    DRY_RUN = "dry_run"


@attrs.frozen(kw_only=True)
class CheckOutcome:
    """How one check went, for the whole set of migrations (``migration_id`` None) or for one."""

    check: Check
    migration_id: str | None = None
    #: What went wrong and what to do; None when the check passed.
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None


@attrs.frozen(kw_only=True)
class ChecksReport:
    """Every outcome of a run of the standard checks, in the order they were found."""

    outcomes: tuple[CheckOutcome, ...] = ()

    @property
    def failures(self) -> tuple[CheckOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.passed)

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return not self.failures

    def migration_ids(self, check: Check) -> tuple[str, ...]:
        """The migrations ``check`` looked at one by one, in the order checked."""
        return tuple(o.migration_id for o in self.outcomes if o.check is check and o.migration_id is not None)

    def assert_passed(self, check: Check | None = None, migration_id: str | None = None) -> None:
        """Raise :class:`~brainmigrate.testing.MigrationCheckError` listing every failure (of
        ``check``, and of ``migration_id`` where given); return when there is none.

        With ``migration_id``, a failure of the whole check (the migrations could not be loaded, say)
        counts too, and a migration the check did not look at is a failure.
        """
        chosen = [o for o in self.outcomes if check is None or o.check is check]
        if migration_id is not None:
            if not any(o.migration_id in (migration_id, None) for o in chosen):
                what = f"the {check.value} check" if check is not None else "the checks"
                raise MigrationCheckError(
                    check.value if check is not None else "",
                    (migration_id,),
                    (
                        f"migration {migration_id!r} was not looked at by {what}: it is not among the "
                        "migrations checked; check that the migrations source is the one you mean",
                    ),
                )
            chosen = [o for o in chosen if o.migration_id in (migration_id, None)]
        failed = [o for o in chosen if o.problem is not None]
        if not failed:
            return
        names = dict.fromkeys(o.check.value for o in failed)
        ids = tuple(dict.fromkeys(o.migration_id for o in failed if o.migration_id is not None))
        raise MigrationCheckError(", ".join(names), ids, tuple(o.problem for o in failed if o.problem))
