"""The background runs of this process: long migrations started by a request, outliving it."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import attrs

from .._errors import BrainMigrateError, MigrationStateError
from .._model.results import MigrationResult

logger = logging.getLogger("brainmigrate.http")


class RunState(enum.StrEnum):
    """Where a background run stands in this process."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class BackgroundRun:
    """One run started by a request: who started it, when, and (once over) how it ended."""

    migration_id: str
    operation: str
    actor: str
    started_at: datetime
    state: RunState = RunState.RUNNING
    finished_at: datetime | None = None
    results: tuple[MigrationResult, ...] = ()
    error: str | None = None
    error_type: str | None = None


class RunRegistry:
    """The runs this process started in the background, by migration id.

    The tasks are kept here (strong references) until they end, so none is collected midway; the
    latest run of each id is remembered for the progress endpoint. A run of an id still running is
    refused (MigrationStateError), in the same step as its check: two requests cannot both start it.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, BackgroundRun] = {}

    def active(self, migration_id: str) -> bool:
        """Whether a run of ``migration_id`` started here is still going."""
        return migration_id in self._tasks

    def latest(self, migration_id: str) -> BackgroundRun | None:
        """The latest run of ``migration_id`` started here, going or over."""
        return self._runs.get(migration_id)

    def going(self) -> list[BackgroundRun]:
        """The runs started here that are still going, by migration id."""
        return [self._runs[key] for key in sorted(self._tasks)]

    def start(
        self,
        migration_id: str,
        operation: str,
        actor: str,
        work: Callable[[], Awaitable[list[MigrationResult]]],
    ) -> BackgroundRun:
        """Start ``work`` in the background for ``migration_id``; refused while one is going."""
        if migration_id in self._tasks:
            raise MigrationStateError(
                f"migration {migration_id!r} is running already (started here by "
                f"{self._runs[migration_id].actor}); follow its progress, or cancel it first",
                migration_id=migration_id,
            )
        run = BackgroundRun(
            migration_id=migration_id, operation=operation, actor=actor, started_at=datetime.now(UTC)
        )
        self._runs[migration_id] = run
        self._tasks[migration_id] = asyncio.get_running_loop().create_task(
            self._run(run, work), name=f"brainmigrate {operation} {migration_id}"
        )
        return run

    async def _run(self, run: BackgroundRun, work: Callable[[], Awaitable[list[MigrationResult]]]) -> None:
        try:
            results = await work()
        except BrainMigrateError as exc:
            logger.warning("background %s of %s failed: %s", run.operation, run.migration_id, exc)
            self._end(run, RunState.FAILED, error=exc)
        except Exception as exc:  # a bug: logged, and reported on the progress endpoint
            logger.exception("background %s of %s failed", run.operation, run.migration_id)
            self._end(run, RunState.FAILED, error=exc)
        except BaseException:  # cancelled (the server stops): the run stays resumable, as any run
            self._end(run, RunState.FAILED, error=None)
            raise
        else:
            self._end(run, RunState.FINISHED, results=tuple(results))

    def _end(
        self,
        run: BackgroundRun,
        state: RunState,
        *,
        results: tuple[MigrationResult, ...] = (),
        error: BaseException | None = None,
    ) -> None:
        self._runs[run.migration_id] = attrs.evolve(
            run,
            state=state,
            finished_at=datetime.now(UTC),
            results=results,
            error=str(error) if error is not None else ("interrupted" if state is RunState.FAILED else None),
            error_type=type(error).__name__ if error is not None else None,
        )
        self._tasks.pop(run.migration_id, None)

    async def wait(self, migration_id: str) -> None:
        """Until the run of ``migration_id`` started here (if any) is over."""
        task = self._tasks.get(migration_id)
        if task is not None:
            await asyncio.wait([task])

    async def aclose(self) -> None:
        """Cancel the runs still going and wait for them; each stays resumable, as any run."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
