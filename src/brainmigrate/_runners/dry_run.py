"""Dry runs, above every kind's runner: the plan in one transaction that is rolled back.

Each migration runs in a savepoint, between the validation gates; its kind's runner does the
step itself (its statements, ``up()``, or a sample of a data migration's items).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from .._errors import MigrationExecutionError
from .._ledger import sql as _sql
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.metadata import MigrationStatus
from .._model.migration import Migration, transaction_control_refusal
from .._model.results import MigrationResult
from .._model.states import MigrationOperation
from .._model.types import Connection, is_usable
from .._runtime import telemetry as telemetry
from .._runtime.steps import now, passes, run_gate
from .._runtime.translate import execution_error, reason
from .base import Runners, Sample, ended
from .transactions import left_transaction, roll_back

APPLY = MigrationOperation.APPLY


async def dry_run(
    runners: Runners,
    plan: Sequence[tuple[Migration, MigrationOperation]],
    config: MigrationConfig,
    session: RunnerSession,
) -> list[MigrationResult]:
    """Run ``(migration, operation)`` pairs in one transaction that is rolled back.

    Each migration runs in a savepoint; the run stops at the first failure, which is reported in
    its result rather than raised. Non-transactional migrations cannot run inside a transaction:
    they are reported with their statements and marked skipped. Each migration starts from the
    pool's session, and one that ended the dry-run transaction (Python code running COMMIT)
    raises a MigrationExecutionError saying so.
    """
    results: list[MigrationResult] = []
    conn = await session.work_connection()
    transaction = conn.transaction()
    await transaction.start()
    try:
        xact = int(await conn.fetchval(_sql.CURRENT_XACT))
        for index, (migration, operation) in enumerate(plan):
            if index:
                await _reset(session, conn, migration)
            result = await _dry_run_one(runners, conn, migration, operation, config, xact)
            results.append(result)
            if result.status is MigrationStatus.FAILED:
                break
    finally:
        with anyio.CancelScope(shield=True):
            await roll_back(conn, transaction)
    return results


async def _reset(session: RunnerSession, conn: Connection, migration: Migration) -> None:
    """Inside the dry-run transaction (so rolled back with it): the pool's session again."""
    try:
        await session.reset(conn)
    except Exception as exc:
        raise execution_error(
            f"could not reset the session before the dry run of migration {migration.metadata.id!r}: "
            f"{reason(exc)}; nothing of the dry run is kept. Run it again",
            exc,
            migration_id=migration.metadata.id,
        ) from exc


async def _dry_run_one(
    runners: Runners,
    conn: Connection,
    migration: Migration,
    operation: MigrationOperation,
    config: MigrationConfig,
    xact: int,
) -> MigrationResult:
    meta = migration.metadata
    runner = runners.of(migration)
    span_name = telemetry.SPAN_MIGRATION if operation == APPLY else telemetry.SPAN_ROLLBACK
    with telemetry.migration_span(span_name, meta.id, meta.migration_type, True) as span:
        statements = await runner.describe(migration, operation)
        started = now()
        postconditions_passed: bool | None = None
        status = MigrationStatus.COMPLETED if operation == APPLY else MigrationStatus.ROLLED_BACK
        error: str | None = None
        sample = Sample()
        refusal = transaction_control_refusal(migration, statements, rollback=operation != APPLY)
        if refusal is not None:
            status, error = MigrationStatus.FAILED, str(refusal)
        elif not migration.transactional:
            status = MigrationStatus.SKIPPED
            error = "not executed: a non-transactional migration cannot run inside a dry-run transaction"
        else:
            savepoint = conn.transaction()
            await savepoint.start()
            try:
                if operation == APPLY and config.validate_before:
                    await run_gate(migration.validate_preconditions, conn, "preconditions", meta.id)
                sample = await runner.dry_run(conn, migration, operation, config, statements)
                if sample.refusal is not None:
                    status, error = MigrationStatus.FAILED, sample.refusal
                if operation == APPLY and config.validate_after and error is None:
                    postconditions_passed = await passes(migration, conn)
                    if not postconditions_passed:
                        status = MigrationStatus.FAILED
                        error = "postconditions failed"
            except Exception as exc:  # the runner's step raises the public error
                status, error = MigrationStatus.FAILED, str(exc)
            # Releasing the savepoint keeps its work until the outer transaction is rolled back.
            await _end_savepoint(conn, savepoint, xact, meta.id, keep=status is not MigrationStatus.FAILED)
        span.set_attribute(telemetry.ATTR_STATUS, status.value)
        return ended(
            meta,
            operation,
            status,
            started,
            now(),
            dry_run=True,
            statements=statements,
            postconditions_passed=postconditions_passed,
            error=error,
            items_processed=sample.processed,
            items_skipped=sample.skipped,
            items_failed=sample.failed,
            changes=sample.changes,
            violations=sample.violations,
            write_impact=sample.write_impact,
        )


def _escaped(migration_id: str) -> MigrationExecutionError:
    return MigrationExecutionError(
        f"dry run of migration {migration_id!r} ended the dry-run transaction (with COMMIT, ROLLBACK, "
        "RELEASE SAVEPOINT or the like, such as conn.execute('COMMIT') in up()), so what it and the "
        "migrations before it in this dry run did may have been committed, although a dry run must "
        "change nothing. Inspect the database and undo such changes by hand; leave transaction control "
        "to brainmigrate (conn.transaction() gives a savepoint)",
        migration_id=migration_id,
    )


async def _end_savepoint(
    conn: Connection, savepoint: Any, xact: int, migration_id: str, *, keep: bool
) -> None:
    """Release (``keep``) or roll back a dry-run migration's savepoint, once sure the dry-run
    transaction is still the one in progress and the savepoint still there."""
    try:
        escaped = await left_transaction(conn, xact, after_failure=True)
        if not escaped:
            await (savepoint.commit() if keep else savepoint.rollback())
    except Exception as exc:
        if not is_usable(conn):
            raise MigrationExecutionError(
                f"the dry run of migration {migration_id!r} lost its connection ({reason(exc)}); nothing "
                "of the dry run is kept. Run it again",
                migration_id=migration_id,
            ) from exc
        raise _escaped(migration_id) from exc  # a migration released or rolled back past it
    if escaped:
        raise _escaped(migration_id)
