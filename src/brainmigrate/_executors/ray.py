"""The Ray executor: a data run's workers as Ray actors, each leasing chunks from PostgreSQL.

Each actor opens its own asyncpg pool, loads the project's migrations from the source the
Migrator was given (module names, files or directories; or the classes themselves, shipped by
Ray), and so constructs the migration, and its model, once; then each call of ``work`` runs one
brainmigrate :class:`~brainmigrate._engine.chunks.ChunkWorker` until no chunk is left to lease.
The driver (the process that claimed the run) watches the calls: when an actor dies its
PostgreSQL session ends and its lease with it, and the driver hands the freed chunk to an actor
still alive, or to a replacement it starts. Correctness comes from the leases alone: a worker
that lost its lease can never commit, so a duplicate or retried call is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from contextlib import suppress
from typing import Any

import anyio
import asyncpg
import attrs
import ray
import ray.exceptions

from .._catalog.loader import load_migrations
from .._engine.batches import Counts
from .._engine.chunks import ChunkWorker, Stop
from .._engine.executors import PortableSource, WorkerJob, WorkerOutcome
from .._engine.plan import make_plan
from .._engine.progress import Tracker
from .._engine.state import RunState
from .._engine.transform import TransformCaller
from .._errors import ConfigError, MigrationExecutionError
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.hybrid import HybridMigration
from .._model.migration import Migration
from .._runtime import telemetry as telemetry

logger = logging.getLogger("brainmigrate")

#: How often the driver reads the run's persisted progress for ``on_progress``, in seconds.
PROGRESS_INTERVAL = 0.5
#: How often the driver looks whether a dead actor's session has ended, in seconds.
_LEASE_POLL = 0.05


@attrs.frozen(kw_only=True)
class RemoteJob:
    """What an actor is told: the portable part of a :class:`WorkerJob`."""

    migration_id: str
    checksum: str
    schema: str
    config: MigrationConfig
    source: PortableSource
    dsn: str
    pool_size: int


@attrs.frozen
class WorkReport:
    """What one call of an actor's ``work`` did: its counts, why it stopped, or how it failed."""

    counts: Counts
    stop: str | None = None
    error: str | None = None


def _find(loaded: list[tuple[Migration, str]], migration_id: str) -> DataMigration:
    """The data migration ``migration_id`` among those loaded, or among the hybrids' steps."""
    for migration, _ in loaded:
        candidates = [migration]
        if isinstance(migration, HybridMigration):
            candidates += [step.migration for step in migration.steps]
        for candidate in candidates:
            if candidate.metadata.id == migration_id and isinstance(candidate, DataMigration):
                return candidate
    raise ConfigError(
        f"data migration {migration_id!r} is not among the migrations this Ray worker loaded; "
        "the workers must see the same migrations as the Migrator (install the project where they run)"
    )


class ChunkActor:
    """A Ray actor's state: its pool, its migration (constructed once), the run's plan."""

    def __init__(self, job: RemoteJob) -> None:
        self.job = job
        self.pool: Any = None
        self.plan: Any = None

    async def setup(self) -> str | None:
        """Connect, construct the migration and plan the run; an error message, or None."""
        job = self.job
        try:
            self.pool = await asyncpg.create_pool(job.dsn, min_size=1, max_size=job.pool_size)
            source: Any = list(job.source) if isinstance(job.source, tuple) else job.source
            migration = _find(load_migrations(source, self.pool), job.migration_id)
            checksum = await migration.checksum()
            if checksum != job.checksum:
                return (
                    f"its code differs from the driver's (checksum {checksum[:12]} here, "
                    f"{job.checksum[:12]} there); deploy the same migrations to the Ray workers"
                )
            async with self.pool.acquire() as conn:
                self.plan = await make_plan(conn, job.schema, migration, checksum)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def pid(self) -> int:
        """The process this actor runs in."""
        return os.getpid()

    async def work(self, owner: str, seconds_left: float) -> WorkReport:
        """Lease chunks and work through them, as worker ``owner``, until none is left to lease."""
        job, plan = self.job, self.plan
        metrics = telemetry.data_metrics()
        tracker = Tracker(job.migration_id, None, None, metrics)
        caller = TransformCaller(job.config, plan.migration.retry_on)
        deadline = time.monotonic() + seconds_left
        chunker = ChunkWorker(job.schema, metrics, self.pool, plan, job.config, caller, tracker, deadline)
        chunker.owner = uuid.UUID(owner)
        stop: str | None = None
        try:
            await chunker.run()
        except Stop as stopped:
            stop = stopped.reason
        except Exception as exc:
            return WorkReport(tracker.counts, error=f"{type(exc).__name__}: {exc}")
        finally:
            with anyio.CancelScope(shield=True):
                await chunker.close()
        return WorkReport(tracker.counts, stop)


_RemoteChunkActor: Any = ray.remote(ChunkActor)


def _number(name: str, value: object, low: float, *, integer: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low:  # type: ignore[operator]
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"RayExecutor: {name} must be {kind} of at least {low:g}, got {value!r}")


@attrs.define
class RayExecutor:
    """Runs a data run's workers as ``workers`` Ray actors (``num_cpus`` and ``num_gpus`` each).

    ``dsn`` is how the actors connect (by default the DSN the Migrator's pool was created with);
    ``address`` the Ray cluster to join when Ray is not initialised yet (None: ``$RAY_ADDRESS``,
    or a local cluster). Up to ``replacements`` actors (by default ``workers``) are started in
    place of actors that die; ``pool_size`` is each actor's number of connections (one for the
    worker, the rest for what the migration's own code asks of its pool).
    """

    workers: int = 4
    num_gpus: float = 0
    num_cpus: float = 1
    dsn: str | None = None
    address: str | None = None
    replacements: int | None = None
    pool_size: int = 2
    _actors: list[Any] = attrs.field(factory=list, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _number("workers", self.workers, 1, integer=True)
        if self.workers > 64:
            raise ConfigError(f"RayExecutor: workers must be at most 64, got {self.workers!r}")
        _number("num_gpus", self.num_gpus, 0)
        _number("num_cpus", self.num_cpus, 0)
        _number("pool_size", self.pool_size, 2, integer=True)
        if self.replacements is not None:
            _number("replacements", self.replacements, 0, integer=True)
        if self.dsn is not None and (not isinstance(self.dsn, str) or not self.dsn):
            raise ConfigError(f"RayExecutor: dsn must be a non-empty libpq URI or None, got {self.dsn!r}")

    @property
    def actors(self) -> list[Any]:
        """The handles of the actors working on the current run (none between runs)."""
        return list(self._actors)

    def prepare(self, config: MigrationConfig) -> MigrationConfig:
        """The run is cut into chunks enough for every actor (``parallel_execution``)."""
        return attrs.evolve(
            config, parallel_execution=True, max_workers=max(config.max_workers, self.workers)
        )

    async def run_workers(self, job: WorkerJob) -> WorkerOutcome:
        """Start the actors, hand out their work until no chunk is left, and stop them."""
        remote = self._remote_job(job)
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        budget = self.workers if self.replacements is None else self.replacements
        try:
            return await _Drive(self, job, remote, budget).run()
        finally:
            for actor in self._actors:
                ray.kill(actor)
            self._actors.clear()

    def _remote_job(self, job: WorkerJob) -> RemoteJob:
        dsn = self.dsn or job.dsn
        if dsn is None:
            raise ConfigError(
                "RayExecutor needs to know how its workers connect: pass RayExecutor(dsn=...) (the "
                "Migrator's pool was not created from a DSN alone)"
            )
        if job.source is None:
            raise ConfigError(
                "RayExecutor's workers load the migrations themselves: give the Migrator a module name, "
                "a module, a file or a directory, or migration classes"
            )
        return RemoteJob(
            migration_id=job.migration_id,
            checksum=job.checksum,
            schema=job.schema,
            config=job.config,
            source=job.source,
            dsn=dsn,
            pool_size=self.pool_size,
        )

    async def _start_actor(self, remote: RemoteJob) -> Any:
        """A new actor, set up (connected, its migration constructed); raises if it could not be."""
        actor = _RemoteChunkActor.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus).remote(remote)
        self._actors.append(actor)
        problem = await _awaited(actor.setup.remote())
        if problem is not None:
            raise MigrationExecutionError(
                f"data migration {remote.migration_id!r} could not start on a Ray worker: {problem}",
                migration_id=remote.migration_id,
            )
        return actor


def _awaited(ref: Any) -> asyncio.Future[Any]:
    """An asyncio future of a Ray object reference."""
    return asyncio.wrap_future(ref.future())


class _Drive:
    """The driver's side of one run on Ray: hands out calls of ``work``, replaces dead actors."""

    def __init__(self, executor: RayExecutor, job: WorkerJob, remote: RemoteJob, budget: int) -> None:
        self.executor = executor
        self.job = job
        self.remote = remote
        self.budget = budget
        self.state = RunState(job.schema)
        self.outcome = WorkerOutcome()
        self.calls: dict[asyncio.Future[Any], Any] = {}
        self.idle: list[Any] = []

    async def run(self) -> WorkerOutcome:
        actors = await asyncio.gather(
            *(self.executor._start_actor(self.remote) for _ in range(self.executor.workers))
        )
        for actor in actors:
            self._call(actor)
        reporter = None
        if self.job.on_progress is not None:
            reporter = asyncio.ensure_future(self._report_progress())
        try:
            await self._watch()
        finally:
            for call in self.calls:
                call.cancel()
            if reporter is not None:
                reporter.cancel()
                with suppress(asyncio.CancelledError):
                    await reporter
        return self.outcome

    def _call(self, actor: Any) -> None:
        owner = str(uuid.uuid4())
        self.calls[_awaited(actor.work.remote(owner, self.job.seconds_left()))] = actor

    async def _watch(self) -> None:
        migration_id = self.job.migration_id
        while self.calls:
            done, _ = await asyncio.wait(self.calls, return_when=asyncio.FIRST_COMPLETED)
            for call in done:
                actor = self.calls.pop(call)
                try:
                    report: WorkReport = call.result()
                except ray.exceptions.RayActorError as exc:
                    logger.warning("data migration %s: a Ray worker died: %s", migration_id, exc)
                    with suppress(ValueError):
                        self.executor._actors.remove(actor)
                    await self._replace()
                    continue
                except ray.exceptions.RayError as exc:  # the call's result was lost, or not delivered
                    raise MigrationExecutionError(
                        f"data migration {migration_id!r}: a Ray worker's call failed: "
                        f"{type(exc).__name__}: {exc}; run it again to resume from its checkpoints",
                        migration_id=migration_id,
                    ) from exc
                self.outcome.counts.add(report.counts)
                if report.error is not None:
                    raise MigrationExecutionError(
                        f"data migration {migration_id!r} failed on a Ray worker: {report.error}",
                        migration_id=migration_id,
                    )
                if report.stop is not None:
                    self.outcome.stop = self.outcome.stop or report.stop
                else:
                    self.idle.append(actor)
            if self.outcome.stop is None and self.idle:
                for _ in range(min(len(self.idle), await self._free_chunks())):
                    self._call(self.idle.pop())

    async def _replace(self) -> None:
        """After an actor died: wait for its session to end, then start a replacement if one is due."""
        job = self.job
        deadline = time.monotonic() + job.config.lease_seconds
        while time.monotonic() < deadline:
            async with job.pool.acquire() as conn:
                progress = await self.state.progress(conn, job.migration_id)
            # Each call in flight holds at most one lease; one more is the dead actor's, or elsewhere's.
            if progress is None or progress.workers <= len(self.calls):
                break
            await anyio.sleep(_LEASE_POLL)
        if self.outcome.stop is None and await self._free_chunks() > len(self.idle):
            if self.budget > 0:
                self.budget -= 1
                self._call(await self.executor._start_actor(self.remote))
            elif not self.calls and not self.idle:
                logger.warning(
                    "data migration %s: every Ray worker died and no replacement is left; run it again "
                    "to resume from its checkpoints",
                    job.migration_id,
                )

    async def _free_chunks(self) -> int:
        """Chunks of the run neither done nor leased by a live worker."""
        async with self.job.pool.acquire() as conn:
            progress = await self.state.progress(conn, self.job.migration_id)
            left = await self.state.chunks_left(conn, self.job.migration_id)
        return max(0, left - (progress.workers if progress is not None else 0))

    async def _report_progress(self) -> None:
        """Push the run's persisted progress to ``on_progress`` as it changes."""
        job, last = self.job, None
        callback = job.on_progress
        assert callback is not None
        while True:
            await anyio.sleep(PROGRESS_INTERVAL)
            async with job.pool.acquire() as conn:
                progress = await self.state.progress(conn, job.migration_id)
            seen = None if progress is None else (progress.processed, progress.failed, progress.skipped)
            if progress is not None and seen != last:
                last = seen
                result = callback(progress)
                if result is not None:
                    await result
