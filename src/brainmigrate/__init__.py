"""brainmigrate: safe, async migrations for PostgreSQL-backed AI memory systems."""

import importlib.metadata as _importlib_metadata

from ._config import MigrationConfig, RetryPolicy
from ._data import DatabaseDataMigration, MemoryDataMigration
from ._errors import (
    BrainMigrateError,
    ChecksumMismatchError,
    ConfigError,
    CyclicDependencyError,
    DatabaseUnavailableError,
    DependencyError,
    DirtyMigrationError,
    DuplicateMigrationError,
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
)
from ._items import BulkMemoryItem, DataSource, Progress
from ._metadata import MigrationMetadata, MigrationStatus, MigrationType
from ._migration import DatabaseSchemaMigration, Migration
from ._migrator import Migrator
from ._results import (
    AttemptStatus,
    HistoryRecord,
    ItemChange,
    ItemError,
    MigrationOperation,
    MigrationResult,
    ValidationReport,
)
from ._types import Connection

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
    "IrreversibleMigrationError",
    "ItemChange",
    "ItemError",
    "MemoryDataMigration",
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
    "MigrationStateError",
    "MigrationStatus",
    "MigrationType",
    "MigrationValidationError",
    "Migrator",
    "MissingDependencyError",
    "PoolExhaustedError",
    "Progress",
    "RetryPolicy",
    "ValidationReport",
    "__version__",
]
