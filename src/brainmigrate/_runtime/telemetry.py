"""OpenTelemetry names and helpers. brainmigrate depends on the API only; the SDK is the user's."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace

from .._model.metadata import MigrationType
from .memory import rss_bytes

if TYPE_CHECKING:
    from .._model.items import Progress

TRACER_NAME = "brainmigrate"

SPAN_RUN = "brainmigrate.run"
SPAN_MIGRATION = "brainmigrate.migration"
SPAN_ROLLBACK = "brainmigrate.rollback"
STAGE_VALIDATE = "validate"
STAGE_PREPARE = "prepare"
STAGE_EXECUTE = "execute"
STAGE_VERIFY = "verify"
STAGE_COMMIT = "commit"

ATTR_MIGRATION_ID = "brainmigrate.migration.id"
ATTR_MIGRATION_TYPE = "brainmigrate.migration.type"
ATTR_DRY_RUN = "brainmigrate.dry_run"
ATTR_STATUS = "brainmigrate.status"
ATTR_STAGE = "brainmigrate.stage"
ATTR_ATTEMPT = "brainmigrate.attempt"
ATTR_PENDING_COUNT = "brainmigrate.pending_count"


#: Created once: before a provider is installed this is the API's proxy, which follows the provider
#: installed later.
_TRACER = trace.get_tracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    """brainmigrate's tracer."""
    return _TRACER


def stage_span_name(stage: str) -> str:
    return f"brainmigrate.stage.{stage}"


@contextmanager
def migration_span(
    name: str, migration_id: str, migration_type: MigrationType, dry_run: bool
) -> Iterator[trace.Span]:
    """A span for one migration run; exceptions are recorded and mark it as an error."""
    with tracer().start_as_current_span(
        name,
        attributes={
            ATTR_MIGRATION_ID: migration_id,
            ATTR_MIGRATION_TYPE: migration_type.value,
            ATTR_DRY_RUN: dry_run,
        },
        record_exception=False,  # the executor records the public error, not the driver's
    ) as span:
        yield span


@contextmanager
def stage_span(stage: str, migration_id: str) -> Iterator[trace.Span]:
    """A child span for one workflow stage (skipped when nothing records the migration's span)."""
    current = trace.get_current_span()
    if not current.is_recording():
        yield current
        return
    with tracer().start_as_current_span(
        stage_span_name(stage), attributes={ATTR_STAGE: stage, ATTR_MIGRATION_ID: migration_id}
    ) as span:
        yield span


SPAN_BATCH = "brainmigrate.batch"
ATTR_BATCH_NUMBER = "brainmigrate.batch.number"
ATTR_BATCH_SIZE = "brainmigrate.batch.size"
ATTR_BATCH_FAILED = "brainmigrate.batch.failed"

METRIC_ITEMS_PROCESSED = "brainmigrate.items.processed"
METRIC_ITEMS_FAILED = "brainmigrate.items.failed"
METRIC_BATCH_DURATION = "brainmigrate.batch.duration"
#: The resident set size of this process, in bytes (see :func:`.memory.rss_bytes`).
METRIC_MEMORY_RSS = "brainmigrate.process.memory.rss"
#: Per migration, the latest :attr:`Progress.rate` (items per second) this process reported.
METRIC_ITEMS_RATE = "brainmigrate.items.rate"
#: Per migration, the latest :attr:`Progress.error_rate` (failed / handled, 0 to 1) this process reported.
METRIC_ERROR_RATE = "brainmigrate.items.error_rate"


def start_batch_span(migration_id: str, number: int, start_time: int | None = None) -> trace.Span:
    """A span for one batch (from ``start_time``, in ns), a child of the current (migration) span.

    It is ended when the batch is committed.
    """
    return tracer().start_span(
        SPAN_BATCH,
        attributes={ATTR_MIGRATION_ID: migration_id, ATTR_BATCH_NUMBER: number},
        start_time=start_time,
    )


def end_batch_span(span: trace.Span, *, size: int, failed: int) -> None:
    span.set_attribute(ATTR_BATCH_SIZE, size)
    span.set_attribute(ATTR_BATCH_FAILED, failed)
    span.end()


class _Gauges:
    """The observable gauges, registered once per process (a second registration of an observable
    instrument would lose its callback): memory, and each migration's latest rate and error rate."""

    def __init__(self) -> None:
        self.rates: dict[str, float] = {}
        self.error_rates: dict[str, float] = {}
        meter = metrics.get_meter(TRACER_NAME)
        meter.create_observable_gauge(
            METRIC_MEMORY_RSS,
            callbacks=[self._memory],
            unit="By",
            description="Memory this process holds in RAM (resident set size; the peak outside Linux)",
        )
        meter.create_observable_gauge(
            METRIC_ITEMS_RATE,
            callbacks=[self._observe(self.rates)],
            unit="{item}/s",
            description="Items per second of a data migration's run, at its latest checkpoint here",
        )
        meter.create_observable_gauge(
            METRIC_ERROR_RATE,
            callbacks=[self._observe(self.error_rates)],
            unit="1",
            description="Share of a data migration run's handled items that failed (0 to 1)",
        )

    @staticmethod
    def _memory(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        value = rss_bytes()
        return [] if value is None else [metrics.Observation(value)]

    @staticmethod
    def _observe(
        values: dict[str, float],
    ) -> metrics.CallbackT:
        def callback(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            return [metrics.Observation(v, {ATTR_MIGRATION_ID: k}) for k, v in list(values.items())]

        return callback


_GAUGES: list[_Gauges] = []


def _gauges() -> _Gauges:
    if not _GAUGES:
        _GAUGES.append(_Gauges())
    return _GAUGES[0]


class DataMetrics:
    """Counters of items processed and failed, a histogram of batch durations (seconds), and gauges
    of this process's memory and each run's rate and error rate."""

    def __init__(self) -> None:
        meter = metrics.get_meter(TRACER_NAME)
        self._processed = meter.create_counter(
            METRIC_ITEMS_PROCESSED, unit="{item}", description="Items a data migration wrote or skipped"
        )
        self._failed = meter.create_counter(
            METRIC_ITEMS_FAILED, unit="{item}", description="Items a data migration could not migrate"
        )
        self._duration = meter.create_histogram(
            METRIC_BATCH_DURATION, unit="s", description="Time from reading a batch to committing it"
        )
        self._gauges = _gauges()

    def record_batch(self, migration_id: str, processed: int, failed: int, seconds: float) -> None:
        attributes = {ATTR_MIGRATION_ID: migration_id}
        self._processed.add(processed, attributes)
        if failed:
            self._failed.add(failed, attributes)
        self._duration.record(seconds, attributes)

    def record_progress(self, progress: Progress) -> None:
        """A checkpoint's rate and error rate, for the gauges (the latest value per migration)."""
        if progress.rate is not None:
            self._gauges.rates[progress.migration_id] = progress.rate
        if progress.error_rate is not None:
            self._gauges.error_rates[progress.migration_id] = progress.error_rate


def data_metrics() -> DataMetrics:
    return DataMetrics()
