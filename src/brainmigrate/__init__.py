"""brainmigrate: safe, async migrations for PostgreSQL-backed AI memory systems."""

import importlib.metadata as _importlib_metadata

from . import structure as structure
from ._catalog.loader import MigrationSource
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
    SchemaVersionError,
)
from ._migrator import Migrator
from ._model.config import MigrationConfig, RetryPolicy
from ._model.data import DatabaseDataMigration, MemoryDataMigration
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
from ._model.types import Connection

try:
    __version__ = _importlib_metadata.version("brainmigrate")
except _importlib_metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
    __version__ = "0.0.0"

__all__ = [
    "AttemptStatus",
    "BrainMigrateError",
    "BulkMemoryItem",
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
    "HistoryRecord",
    "HybridMigration",
    "HybridPhase",
    "HybridPhaseError",
    "HybridStatus",
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
    "RetryPolicy",
    "RunStatus",
    "SchemaVersionError",
    "StructureDescription",
    "ValidationReport",
    "Violation",
    "WriteImpact",
    "__version__",
]
