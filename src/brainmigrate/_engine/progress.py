"""This process's view of a data run's progress, reported to ``on_progress`` after each checkpoint."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .._model.items import Progress, ProgressCallback
from .._runtime.memory import rss_bytes
from .._runtime.telemetry import DataMetrics
from .batches import Counts


class Tracker:
    """This process's view of a run's progress, pushed to ``on_progress`` after each checkpoint."""

    def __init__(
        self,
        migration_id: str,
        baseline: Progress | None,
        callback: ProgressCallback | None,
        metrics: DataMetrics | None = None,
    ) -> None:
        self.migration_id = migration_id
        self.baseline = baseline
        self.callback = callback
        self.metrics = metrics
        self.counts = Counts()
        self.started = time.monotonic()
        self.started_at = baseline.started_at if baseline is not None else datetime.now(UTC)

    async def committed(self, counts: Counts) -> None:
        self.counts.add(counts)
        if self.callback is None and self.metrics is None:
            return
        base = self.baseline
        elapsed = time.monotonic() - self.started
        done = self.counts.processed + self.counts.failed + self.counts.skipped
        progress = Progress(
            migration_id=self.migration_id,
            status="running",
            processed=(base.processed if base else 0) + self.counts.processed,
            failed=(base.failed if base else 0) + self.counts.failed,
            skipped=(base.skipped if base else 0) + self.counts.skipped,
            total=base.total if base else None,
            batch_number=(base.batch_number if base else 0) + self.counts.batches,
            rate=done / elapsed if elapsed > 0 else None,
            started_at=self.started_at,
            updated_at=datetime.now(UTC),
            memory_rss_bytes=rss_bytes(),
        )
        if self.metrics is not None:
            self.metrics.record_progress(progress)
        if self.callback is None:
            return
        result = self.callback(progress)
        if result is not None:
            await result
