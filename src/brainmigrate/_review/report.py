"""What ``Migrator.check()`` reports: findings, each with a code, a severity and what to do."""

from __future__ import annotations

import enum

import attrs


class Severity(enum.StrEnum):
    """How much a finding matters: an error fails ``brainmigrate check``, a warning does not."""

    ERROR = "error"
    WARNING = "warning"


class FindingCode(enum.StrEnum):
    """What a finding is about."""

    #: Several migrations nothing depends on: branches whose order only versions decide.
    SEVERAL_HEADS = "several_heads"
    #: Two pending migrations touch one table or column, and neither depends on the other.
    CONFLICT = "conflict"
    #: An applied migration was edited: its checksum differs from the one in history.
    CHECKSUM_DRIFT = "checksum_drift"
    #: ``CREATE INDEX`` without ``CONCURRENTLY`` on a table with rows: it blocks writes meanwhile.
    INDEX_NOT_CONCURRENT = "index_not_concurrent"
    #: ``ADD COLUMN`` with a volatile default (or serial, identity, generated): a table rewrite.
    VOLATILE_DEFAULT = "volatile_default"
    #: ``ALTER COLUMN ... TYPE``: a rewrite of the table and its indexes.
    COLUMN_TYPE_CHANGE = "column_type_change"
    #: ``ADD COLUMN ... NOT NULL`` without a default on a table with rows: it fails.
    NOT_NULL_WITHOUT_DEFAULT = "not_null_without_default"
    #: ``SET NOT NULL`` without a validated ``CHECK (column IS NOT NULL)``: a scan under lock.
    SET_NOT_NULL_WITHOUT_CHECK = "set_not_null_without_check"


@attrs.frozen(kw_only=True)
class Finding:
    """One thing ``check()`` found, with the migrations involved and a message saying what to do."""

    code: FindingCode
    severity: Severity
    migration_ids: tuple[str, ...]
    message: str
    #: The statement concerned, for the lint rules.
    statement: str | None = None

    def __str__(self) -> str:
        return f"{self.severity.value} {self.code.value} ({', '.join(self.migration_ids)}): {self.message}"


@attrs.frozen(kw_only=True)
class CheckReport:
    """Every finding of ``Migrator.check()``, errors first."""

    findings: tuple[Finding, ...] = ()

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        """Whether nothing of error severity was found (warnings alone are ok)."""
        return not self.errors

    def codes(self) -> list[str]:
        """The findings' codes, in order (for tests and scripts)."""
        return [finding.code.value for finding in self.findings]


def sorted_findings(findings: list[Finding]) -> tuple[Finding, ...]:
    """Errors first, then warnings; each in the order found."""
    return tuple(sorted(findings, key=lambda finding: finding.severity is not Severity.ERROR))
