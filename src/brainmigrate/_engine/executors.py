"""Where a data run's workers run: the seam between handing out chunks and working on them.

The driver claims a run and settles it under the runner lock; in between, an :class:`Executor`
runs the workers that lease the run's chunks and work through them. The run's state stays in the
database (chunks, leases, checkpoints, counters, status), so a worker may run in this process or
on another machine: it needs only what a :class:`WorkerJob` says. Leases keep it correct wherever
it runs: a worker that lost its lease can never commit, and a worker that dies frees its lease
with its session, for another to take the chunk over from its checkpoint.

:class:`InProcessExecutor`, the default, runs the workers as tasks of this process.
"""

from __future__ import annotations

import os
import time
import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeAlias, runtime_checkable

import anyio
import attrs

from .._errors import ConfigError, MigrationExecutionError
from .._model.config import MigrationConfig
from .._model.items import ProgressCallback
from .._model.migration import Migration
from .._model.types import Pool
from .._runtime import telemetry as telemetry
from .batches import Counts, unwrap
from .chunks import ChunkWorker, Stop
from .plan import QUERY, RunPlan
from .progress import Tracker
from .transform import TransformCaller, cancelled

#: Where a worker elsewhere finds the migrations: a dotted module name, a file or directory path,
#: or migration classes (shipped by value or by reference, as the executor can).
PortableSource: TypeAlias = "str | tuple[type[Migration], ...]"


@attrs.define
class WorkerOutcome:
    """What the workers did, and why they stopped."""

    counts: Counts = attrs.field(factory=Counts)
    stop: str | None = None  # "cancelled", "timeout", "failed" (elsewhere), or None when out of work


@attrs.frozen(kw_only=True)
class WorkerJob:
    """Everything the workers of one claimed data run need.

    A worker elsewhere needs the portable part: how to connect (``dsn``), which migration
    (``migration_id``, found in ``source``, checked against ``checksum``), the history ``schema``,
    the ``config`` and the time left (``deadline``, on this process's monotonic clock, so
    :meth:`seconds_left`). The in-process part (``pool``, ``plan``, ``tracker``, ``metrics``) is
    for workers of this process, and for drivers that watch the run from here.
    """

    migration_id: str
    checksum: str
    schema: str
    config: MigrationConfig
    deadline: float
    #: Where the Migrator found its migrations, or None when they cannot be found elsewhere.
    source: PortableSource | None
    #: How a worker elsewhere connects (a libpq URI), or None when the driver does not know it.
    dsn: str | None
    pool: Pool
    plan: RunPlan
    tracker: Tracker
    metrics: telemetry.DataMetrics
    on_progress: ProgressCallback | None = None

    def seconds_left(self) -> float:
        """How long the workers may still run before the run times out."""
        return max(0.0, self.deadline - time.monotonic())


@runtime_checkable
class Executor(Protocol):
    """Runs the workers of a claimed data run, wherever they run.

    ``prepare`` returns the configuration the run is claimed with (an executor of many workers
    asks for a key space cut into chunks enough for them); ``run_workers`` runs workers until no
    chunk is left to lease, or the run is stopped (cancelled, failed, out of time), and returns
    their counts and the reason they stopped. A failure of a worker is raised.
    """

    def prepare(self, config: MigrationConfig) -> MigrationConfig: ...

    async def run_workers(self, job: WorkerJob) -> WorkerOutcome: ...


@attrs.frozen
class InProcessExecutor:
    """Runs the run's workers as tasks of this process: ``max_workers`` of them with
    ``parallel_execution`` (one for a query's slices), else one."""

    def prepare(self, config: MigrationConfig) -> MigrationConfig:
        return config

    async def run_workers(self, job: WorkerJob) -> WorkerOutcome:
        plan, config = job.plan, job.config
        outcome = WorkerOutcome()
        workers = config.max_workers if config.parallel_execution and plan.mode != QUERY else 1
        caller = TransformCaller(config, plan.migration.retry_on)
        errors: list[BaseException] = []

        async def worker(scope: anyio.CancelScope) -> None:
            chunker = ChunkWorker(
                job.schema, job.metrics, job.pool, plan, config, caller, job.tracker, job.deadline
            )
            try:
                await chunker.run()
            except Stop as stop:
                outcome.stop = stop.reason
            except Exception as exc:  # the first failure stops the other workers too
                errors.append(unwrap(exc))
                scope.cancel()
            except BaseException as exc:
                # A CancelledError the migration's own code raised (throttle(), its query) is a
                # failure: the task group would swallow it, leaving the run neither done nor failed.
                if isinstance(exc, KeyboardInterrupt | SystemExit) or await cancelled():
                    raise
                error = MigrationExecutionError(
                    f"data migration {plan.migration_id!r} failed: {type(exc).__name__}: {exc} (raised by "
                    "the migration's code, not by a cancellation of the run)",
                    migration_id=plan.migration_id,
                )
                error.__cause__ = exc
                errors.append(error)
                scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await chunker.close()

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker, group.cancel_scope)
        outcome.counts = job.tracker.counts
        if errors:
            raise errors[0]
        return outcome


# -- which executor a run uses -----------------------------------------------------------------


@attrs.frozen
class Placement:
    """The executor the data runs started in this context use, and what it may need to know."""

    executor: Executor
    source: PortableSource | None = None
    dsn: str | None = None


_placement: ContextVar[Placement | None] = ContextVar("brainmigrate_executor", default=None)


def check_executor(executor: object) -> Executor:
    """``executor`` if it is an :class:`Executor`; ConfigError otherwise."""
    if not isinstance(executor, Executor):
        raise ConfigError(
            f"executor must be an Executor (such as brainmigrate.ray.RayExecutor), got {executor!r}"
        )
    return executor


@contextmanager
def placed(executor: Executor | None, *, source: Any = None, pool: Any = None) -> Iterator[None]:
    """Within the block, data runs work on ``executor`` (None: the one already in place, or in process).

    ``source`` (what the Migrator was given) and ``pool`` tell a worker elsewhere where to find
    the migrations and how to connect, when they can be told.
    """
    if executor is None:
        yield
        return
    token = _placement.set(Placement(check_executor(executor), portable_source(source), pool_dsn(pool)))
    try:
        yield
    finally:
        _placement.reset(token)


def placement() -> Placement:
    """The executor in place (the in-process one unless :func:`placed` put another)."""
    return _placement.get() or Placement(InProcessExecutor())


def portable_source(source: Any) -> PortableSource | None:
    """``source`` as a worker elsewhere can load it: a module by name, a path made absolute,
    classes as they are (instances by their classes); None if it is none of those."""
    if isinstance(source, types.ModuleType):
        return source.__name__
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        return os.path.abspath(text) if os.path.exists(text) else text
    if isinstance(source, Iterable):
        classes = [item if isinstance(item, type) else type(item) for item in source]
        if all(isinstance(cls, type) and issubclass(cls, Migration) for cls in classes):
            return tuple(classes)
    return None


#: Keyword arguments of asyncpg.create_pool that say where to connect, besides the DSN.
_CONNECTION_KEYWORDS = frozenset({"host", "port", "user", "password", "database", "passfile", "ssl"})


def pool_dsn(pool: Any) -> str | None:
    """The DSN an asyncpg pool was created with, when the DSN alone says how to connect."""
    args = getattr(pool, "_connect_args", None)
    kwargs = getattr(pool, "_connect_kwargs", None) or {}
    dsn = args[0] if args and isinstance(args[0], str) else kwargs.get("dsn")
    if not isinstance(dsn, str) or _CONNECTION_KEYWORDS & set(kwargs):
        return None
    return dsn
