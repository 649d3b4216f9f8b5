"""``Migrator.check()``: every finding about the migrations and the database, read-only."""

from __future__ import annotations

from collections.abc import Mapping

from .._catalog_view import _Catalog
from .._errors import ChecksumMismatchError
from .._ledger.history import MigrationState
from .._model.types import Connection
from .conflicts import conflicts, several_heads
from .lint import lint
from .report import CheckReport, Finding, FindingCode, Severity, sorted_findings
from .touches import migration_statements, migration_touches


async def review(conn: Connection, catalog: _Catalog, states: Mapping[str, MigrationState]) -> CheckReport:
    """Heads, conflicts between pending migrations, checksum drift and unsafe DDL; it runs in a
    read-only transaction and takes no lock of brainmigrate's."""
    findings = several_heads(catalog.graph)
    findings.extend(drift(catalog, states))
    pending = catalog.pending(states, None)
    ids = [migration.metadata.id for migration in pending]
    touches = {migration.metadata.id: await migration_touches(migration) for migration in pending}
    findings.extend(conflicts(catalog.graph, ids, touches))
    applied = {mid for mid, state in states.items() if state.applied}
    statements = [(m.metadata.id, await migration_statements(m, applied)) for m in pending]
    async with conn.transaction(readonly=True):
        findings.extend(await lint(conn, statements))
    return CheckReport(findings=sorted_findings(findings))


def drift(catalog: _Catalog, states: Mapping[str, MigrationState]) -> list[Finding]:
    """An error for each applied migration (or hybrid step) whose checksum differs from history's."""
    findings: list[Finding] = []
    for state in states.values():
        actual = catalog.checksums.get(state.migration_id)
        if state.applied and actual is not None and actual != state.checksum:
            error = ChecksumMismatchError(state.migration_id, expected=state.checksum, actual=actual)
            findings.append(
                Finding(
                    code=FindingCode.CHECKSUM_DRIFT,
                    severity=Severity.ERROR,
                    migration_ids=(state.migration_id,),
                    message=str(error),
                )
            )
    return findings
