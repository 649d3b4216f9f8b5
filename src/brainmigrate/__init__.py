"""brainmigrate: safe, async migrations for PostgreSQL-backed AI memory systems."""

import importlib as _importlib
import importlib.metadata as _importlib_metadata
import typing as _typing

if _typing.TYPE_CHECKING:
    from . import structure as structure
    from ._authoring.templates import migration_heads, write_migration
    from ._catalog.loader import MigrationSource
    from ._engine.executors import Executor, InProcessExecutor, WorkerJob, WorkerOutcome
    from ._errors import (
        BrainMigrateError,
        ChecksumMismatchError,
        ConfigError,
        CyclicDependencyError,
        DatabaseUnavailableError,
        DependencyError,
        DirtyMigrationError,
        DuplicateMigrationError,
        HybridPhaseError,
        IrreversibleMigrationError,
        MigrationExecutionError,
        MigrationLoadError,
        MigrationLockLost,
        MigrationLockTimeout,
        MigrationNotFoundError,
        MigrationStateError,
        MigrationValidationError,
        MissingDependencyError,
        PoolExhaustedError,
        PromotionRefusedError,
        SchemaVersionError,
        TableLockTimeout,
    )
    from ._migrator import Migrator
    from ._model.config import MigrationConfig, RetryPolicy
    from ._model.data import DatabaseDataMigration, MemoryDataMigration
    from ._model.embedding import EmbeddingGeneration, EmbeddingModel, GenerationStatus
    from ._model.hybrid import HybridMigration, HybridStatus
    from ._model.items import BulkMemoryItem, DataSource, Progress, ProgressCallback
    from ._model.memory_structure import MemoryStructureMigration
    from ._model.metadata import MigrationMetadata, MigrationStatus, MigrationType
    from ._model.migration import DatabaseSchemaMigration, Migration
    from ._model.results import (
        HistoryRecord,
        ItemChange,
        ItemError,
        KeyPathStats,
        MigrationResult,
        StructureDescription,
        ValidationReport,
        Violation,
        WriteImpact,
    )
    from ._model.states import AttemptStatus, HybridPhase, MigrationOperation, RunStatus
    from ._model.statistics import HistoryStatistics
    from ._model.types import Connection
    from ._reembed.migration import ReembedMigration
    from ._review.report import CheckReport, Finding, FindingCode, Severity

#: The module defining each public name. A name is imported the first time it is used, so that
#: ``import brainmigrate`` (and the command line's ``--help``) does not load the driver.
_DEFINED_IN = {
    "AttemptStatus": "._model.states",
    "BrainMigrateError": "._errors",
    "BulkMemoryItem": "._model.items",
    "CheckReport": "._review.report",
    "ChecksumMismatchError": "._errors",
    "ConfigError": "._errors",
    "Connection": "._model.types",
    "CyclicDependencyError": "._errors",
    "DataSource": "._model.items",
    "DatabaseDataMigration": "._model.data",
    "DatabaseSchemaMigration": "._model.migration",
    "DatabaseUnavailableError": "._errors",
    "DependencyError": "._errors",
    "DirtyMigrationError": "._errors",
    "DuplicateMigrationError": "._errors",
    "EmbeddingGeneration": "._model.embedding",
    "EmbeddingModel": "._model.embedding",
    "Executor": "._engine.executors",
    "GenerationStatus": "._model.embedding",
    "Finding": "._review.report",
    "FindingCode": "._review.report",
    "HistoryRecord": "._model.results",
    "HistoryStatistics": "._model.statistics",
    "HybridMigration": "._model.hybrid",
    "HybridPhase": "._model.states",
    "HybridPhaseError": "._errors",
    "HybridStatus": "._model.hybrid",
    "InProcessExecutor": "._engine.executors",
    "IrreversibleMigrationError": "._errors",
    "ItemChange": "._model.results",
    "ItemError": "._model.results",
    "KeyPathStats": "._model.results",
    "MemoryDataMigration": "._model.data",
    "MemoryStructureMigration": "._model.memory_structure",
    "Migration": "._model.migration",
    "MigrationConfig": "._model.config",
    "MigrationExecutionError": "._errors",
    "MigrationLoadError": "._errors",
    "MigrationLockLost": "._errors",
    "MigrationLockTimeout": "._errors",
    "MigrationMetadata": "._model.metadata",
    "MigrationNotFoundError": "._errors",
    "MigrationOperation": "._model.states",
    "MigrationResult": "._model.results",
    "MigrationSource": "._catalog.loader",
    "MigrationStateError": "._errors",
    "MigrationStatus": "._model.metadata",
    "MigrationType": "._model.metadata",
    "MigrationValidationError": "._errors",
    "Migrator": "._migrator",
    "MissingDependencyError": "._errors",
    "PoolExhaustedError": "._errors",
    "PromotionRefusedError": "._errors",
    "Progress": "._model.items",
    "ProgressCallback": "._model.items",
    "ReembedMigration": "._reembed.migration",
    "RetryPolicy": "._model.config",
    "RunStatus": "._model.states",
    "SchemaVersionError": "._errors",
    "Severity": "._review.report",
    "StructureDescription": "._model.results",
    "TableLockTimeout": "._errors",
    "ValidationReport": "._model.results",
    "Violation": "._model.results",
    "WorkerJob": "._engine.executors",
    "WorkerOutcome": "._engine.executors",
    "WriteImpact": "._model.results",
    "migration_heads": "._authoring.templates",
    "structure": ".structure",
    "write_migration": "._authoring.templates",
}


def __getattr__(name: str) -> _typing.Any:
    """Import a public name from the module defining it, on first use."""
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    imported = _importlib.import_module(module, __name__)
    value = imported if module == f".{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "structure"})


try:
    __version__ = _importlib_metadata.version("brainmigrate")
except _importlib_metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
    __version__ = "0.0.0"

__all__ = [
    "AttemptStatus",
    "BrainMigrateError",
    "BulkMemoryItem",
    "CheckReport",
    "ChecksumMismatchError",
    "ConfigError",
    "Connection",
    "CyclicDependencyError",
    "DataSource",
    "DatabaseDataMigration",
    "DatabaseSchemaMigration",
    "DatabaseUnavailableError",
    "DependencyError",
    "DirtyMigrationError",
    "DuplicateMigrationError",
    "EmbeddingGeneration",
    "EmbeddingModel",
    "Executor",
    "Finding",
    "FindingCode",
    "GenerationStatus",
    "HistoryRecord",
    "HistoryStatistics",
    "HybridMigration",
    "HybridPhase",
    "HybridPhaseError",
    "HybridStatus",
    "InProcessExecutor",
    "IrreversibleMigrationError",
    "ItemChange",
    "ItemError",
    "KeyPathStats",
    "MemoryDataMigration",
    "MemoryStructureMigration",
    "Migration",
    "MigrationConfig",
    "MigrationExecutionError",
    "MigrationLoadError",
    "MigrationLockLost",
    "MigrationLockTimeout",
    "MigrationMetadata",
    "MigrationNotFoundError",
    "MigrationOperation",
    "MigrationResult",
    "MigrationSource",
    "MigrationStateError",
    "MigrationStatus",
    "MigrationType",
    "MigrationValidationError",
    "Migrator",
    "MissingDependencyError",
    "PoolExhaustedError",
    "Progress",
    "ProgressCallback",
    "PromotionRefusedError",
    "ReembedMigration",
    "RetryPolicy",
    "RunStatus",
    "SchemaVersionError",
    "Severity",
    "StructureDescription",
    "TableLockTimeout",
    "ValidationReport",
    "Violation",
    "WorkerJob",
    "WorkerOutcome",
    "WriteImpact",
    "__version__",
    "migration_heads",
    "write_migration",
]
