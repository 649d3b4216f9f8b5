"""Figures over the history table: the success rate of attempts and the average rollback time."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import attrs

from .._errors import ConfigError
from .results import HistoryRecord
from .states import AttemptStatus, MigrationOperation

#: The operations whose attempts are runs of a migration (``resolve``, ``stamp`` and ``abandon``
#: rows are written by hand and run nothing).
COUNTED_OPERATIONS = frozenset({MigrationOperation.APPLY, MigrationOperation.ROLLBACK})


@attrs.frozen(kw_only=True)
class HistoryStatistics:
    """Success rate and average rollback time over the attempts recorded in a window of history.

    The attempts counted are the history rows of runs: operation ``apply`` or ``rollback``, started
    at or after ``since`` (every row when it is None). Rows written by hand (``resolve``, ``stamp``,
    ``abandon``) run nothing and are left out; dry runs write no rows. A hybrid migration counts
    once per attempt (its own row), not once per step. An attempt still ``running`` has no outcome
    yet: it is counted in ``running`` only.
    """

    #: The start of the window (None: the whole history).
    since: datetime | None
    #: Attempts that finished: ``completed + failed + dirty``.
    attempts: int
    completed: int
    failed: int
    #: Attempts interrupted midway (non-transactional, or their runner died).
    dirty: int
    #: Attempts in progress (or whose runner died unnoticed so far), not part of ``attempts``.
    running: int
    #: Completed rollback attempts, the ones ``average_rollback_seconds`` is over.
    rollbacks: int
    #: Mean duration, in seconds, of the completed rollback attempts; None when there is none.
    average_rollback_seconds: float | None

    #: The derived properties its JSON (``status --json``) gives after the fields.
    json_properties: ClassVar[tuple[str, ...]] = ("success_rate",)

    @property
    def success_rate(self) -> float | None:
        """``completed / attempts``, from 0 to 1; None when no attempt finished in the window."""
        return self.completed / self.attempts if self.attempts else None


def window_start(since: datetime | timedelta | None, now: datetime | None = None) -> datetime | None:
    """The start of the window ``since`` names: a time (timezone-aware), or a span back from ``now``."""
    if since is None:
        return None
    if isinstance(since, timedelta):
        if since < timedelta(0):
            raise ConfigError(f"since must be a positive span of time, got {since!r}")
        return (now or datetime.now(UTC)) - since
    if isinstance(since, datetime):
        if since.tzinfo is None or since.utcoffset() is None:
            raise ConfigError(
                f"since must be a timezone-aware datetime, got the naive {since!r}; "
                "give it a tzinfo, such as datetime.now(UTC) - timedelta(days=7)"
            )
        return since
    raise ConfigError(f"since must be a datetime, a timedelta or None, got {since!r}")


def summarise(records: Iterable[HistoryRecord], since: datetime | None) -> HistoryStatistics:
    """The figures over ``records`` started at or after ``since`` (see :class:`HistoryStatistics`)."""
    counts = dict.fromkeys(AttemptStatus, 0)
    rollback_seconds: list[float] = []
    for record in records:
        if record.operation not in COUNTED_OPERATIONS:
            continue
        if record.hybrid_id is not None and record.hybrid_id != record.migration_id:
            continue  # a step of a hybrid migration: the hybrid's own row counts the attempt
        if since is not None and record.started_at < since:
            continue
        counts[record.status] += 1
        if record.operation is MigrationOperation.ROLLBACK and record.status is AttemptStatus.COMPLETED:
            rollback_seconds.append(_seconds(record))
    completed = counts[AttemptStatus.COMPLETED]
    failed = counts[AttemptStatus.FAILED]
    dirty = counts[AttemptStatus.DIRTY]
    return HistoryStatistics(
        since=since,
        attempts=completed + failed + dirty,
        completed=completed,
        failed=failed,
        dirty=dirty,
        running=counts[AttemptStatus.RUNNING],
        rollbacks=len(rollback_seconds),
        average_rollback_seconds=sum(rollback_seconds) / len(rollback_seconds) if rollback_seconds else None,
    )


def _seconds(record: HistoryRecord) -> float:
    if record.duration_ms is not None:
        return record.duration_ms / 1000
    if record.finished_at is not None:
        return (record.finished_at - record.started_at).total_seconds()
    return 0.0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(text: str) -> datetime | timedelta:
    """A window's start as the command line gives it: a span back from now (``90s``, ``30m``,
    ``24h``, ``7d``, ``2w``) or an ISO 8601 time with its offset (``2026-12-01T00:00:00+00:00``)."""
    value = text.strip()
    number, unit = value[:-1], value[-1:].lower()
    if unit in _UNITS and number.isdigit():
        return timedelta(seconds=int(number) * _UNITS[unit])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a span (such as 90s, 30m, 24h, 7d or 2w) nor an ISO 8601 "
            "time (such as 2026-12-01T00:00:00+00:00)"
        ) from None
    window_start(moment)  # refuses a naive time
    return moment
