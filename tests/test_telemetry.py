"""OpenTelemetry spans for each migration run and each stage, read with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from brainmigrate import MigrationConfig, MigrationExecutionError, Migrator
from helpers import create_table, schema_migration

pytestmark = pytest.mark.anyio

_EXPORTER = InMemorySpanExporter()
_ATTACHED: list[TracerProvider] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The global tracer provider can be set once per process (another module may have set it);
    this module's exporter is attached to it once, and its tests share that exporter."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not _ATTACHED:
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _ATTACHED.append(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def test_a_migration_has_a_span_with_one_child_per_stage(
    brainmigrate_pool: Any, spans: InMemorySpanExporter
) -> None:
    """brainmigrate.migration carries id, type, dry_run and status; the five stages are its children."""
    await Migrator(brainmigrate_pool, [create_table("a", "a")]).run_pending()

    finished = {span.name: span for span in spans.get_finished_spans()}
    migration = finished["brainmigrate.migration"]
    assert dict(migration.attributes or {}) == {
        "brainmigrate.migration.id": "a",
        "brainmigrate.migration.type": "database_schema",
        "brainmigrate.dry_run": False,
        "brainmigrate.attempt": 1,
        "brainmigrate.status": "completed",
    }
    stages = [s for s in spans.get_finished_spans() if s.name.startswith("brainmigrate.stage.")]
    assert [s.name for s in stages] == [
        "brainmigrate.stage.validate",
        "brainmigrate.stage.prepare",
        "brainmigrate.stage.execute",
        "brainmigrate.stage.verify",
        "brainmigrate.stage.commit",
    ]
    assert all(s.parent is not None and s.parent.span_id == migration.context.span_id for s in stages)
    assert migration.parent is not None
    assert migration.parent.span_id == finished["brainmigrate.run"].context.span_id


async def test_a_failure_is_recorded_on_the_span(brainmigrate_pool: Any, spans: InMemorySpanExporter) -> None:
    """A failed migration's span has error status, the failed status and the exception as an event."""
    with pytest.raises(MigrationExecutionError):
        await Migrator(brainmigrate_pool, [schema_migration("bad", ["SELECT 1/0"])]).run_pending()

    [migration] = [s for s in spans.get_finished_spans() if s.name == "brainmigrate.migration"]
    assert migration.status.status_code is StatusCode.ERROR
    assert (migration.attributes or {})["brainmigrate.status"] == "failed"
    [event] = [e for e in migration.events if e.name == "exception"]
    assert (event.attributes or {})["exception.type"].endswith("MigrationExecutionError")


async def test_a_dry_run_is_marked_on_its_spans(brainmigrate_pool: Any, spans: InMemorySpanExporter) -> None:
    """Dry runs are told apart from real runs by the dry_run attribute."""
    migrator = Migrator(brainmigrate_pool, [create_table("a", "a")])

    await migrator.run_pending(config=MigrationConfig(dry_run=True))

    [migration] = [s for s in spans.get_finished_spans() if s.name == "brainmigrate.migration"]
    assert (migration.attributes or {})["brainmigrate.dry_run"] is True


async def test_progress_is_logged_to_the_brainmigrate_logger(
    brainmigrate_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Applied migrations are logged through the stdlib logger named brainmigrate."""
    caplog.set_level("INFO", logger="brainmigrate")

    await Migrator(brainmigrate_pool, [create_table("logged", "logged")]).run_pending()

    assert any(
        r.name == "brainmigrate" and r.getMessage().startswith("applied logged in") for r in caplog.records
    )
