"""MigrationConfig and MigrationMetadata: defaults and validation, with no database."""

from __future__ import annotations

from datetime import datetime

import attrs
import pytest

from brainmigrate import ConfigError, MigrationConfig, MigrationMetadata, MigrationType, RetryPolicy
from brainmigrate._model.metadata import version_key


def test_defaults_are_the_seed_defaults() -> None:
    """The seed's fields keep the seed's defaults."""
    config = MigrationConfig()
    expected = {
        "dry_run": False,
        "batch_size": 1000,
        "enable_rollback": True,
        "validate_before": True,
        "validate_after": True,
        "parallel_execution": False,
        "checkpoint_frequency": 5000,
        "timeout_seconds": 3600,
        "continue_on_error": False,
    }
    assert {name: getattr(config, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param("batch_size", 0, "batch_size must be between 1 and 100000, got 0", id="batch-too-small"),
        pytest.param("batch_size", 100_001, "between 1 and 100000", id="batch-too-large"),
        pytest.param("batch_size", 10.5, "batch_size must be an integer", id="batch-float"),
        pytest.param("batch_size", True, "batch_size must be an integer", id="batch-bool"),
        pytest.param("timeout_seconds", 0, "timeout_seconds must be between", id="timeout-zero"),
        pytest.param("timeout_seconds", "60", "timeout_seconds must be a number", id="timeout-str"),
        pytest.param("checkpoint_frequency", -1, "checkpoint_frequency must be between", id="checkpoint"),
        pytest.param("dry_run", "yes", "dry_run must be True or False", id="dry-run-str"),
        pytest.param("lock_wait_seconds", -1, "lock_wait_seconds must be between", id="lock-wait"),
        pytest.param("statement_lock_timeout_ms", 0, "statement_lock_timeout_ms", id="ddl-lock-timeout"),
        pytest.param("retry", 3, "retry must be a RetryPolicy", id="retry-type"),
    ],
)
def test_invalid_values_raise_config_error(field: str, value: object, message: str) -> None:
    """Each invalid value raises ConfigError, which is also a ValueError, naming the field."""
    with pytest.raises(ConfigError, match=message) as caught:
        MigrationConfig(**{field: value})  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


def test_invalid_retry_policy_raises_config_error() -> None:
    """Retry attempts must be at least one."""
    with pytest.raises(ConfigError, match="attempts must be between 1 and 100, got 0"):
        RetryPolicy(attempts=0)


def test_variants_come_from_evolve_and_are_validated() -> None:
    """attrs.evolve makes a variant and validates it like a new config."""
    base = MigrationConfig()
    assert attrs.evolve(base, dry_run=True).dry_run is True
    with pytest.raises(ConfigError):
        attrs.evolve(base, batch_size=0)


def test_config_is_immutable() -> None:
    """A config cannot change after it is built, so a run's settings cannot shift under it."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        MigrationConfig().dry_run = True  # type: ignore[misc]


def test_metadata_accepts_the_seed_arguments() -> None:
    """The seed's MigrationMetadata call works as written; dependencies become a tuple."""
    meta = MigrationMetadata(
        id="add_user_preferences_001",
        name="Add user preferences table",
        description="Creates table for storing user preferences",
        version="2.6.0",
        migration_type=MigrationType.DATABASE_SCHEMA,
        author="system",
        created_at=datetime.now(),
        dependencies=[],
        reversible=True,
        checksum="abc123",
    )
    assert (meta.id, meta.dependencies, meta.migration_type) == (
        "add_user_preferences_001",
        (),
        MigrationType.DATABASE_SCHEMA,
    )


@pytest.mark.parametrize("value", ["DATABASE_SCHEMA", "database_schema", MigrationType.DATABASE_SCHEMA])
def test_migration_type_parses_names_and_values(value: str) -> None:
    """A type can be given as the member, its name or its value."""
    assert MigrationType.parse(value) is MigrationType.DATABASE_SCHEMA


@pytest.mark.parametrize(
    ("lower", "higher"),
    [("2.9.0", "2.10.0"), ("1.0", "1.0.1"), ("1.0rc1", "1.0"), ("0.9", "1"), ("2026.1.2", "2026.1.10")],
)
def test_versions_compare_as_versions(lower: str, higher: str) -> None:
    """Numeric parts compare as numbers, and a pre-release sorts before its release."""
    assert version_key(lower) < version_key(higher)


def test_trailing_zeros_do_not_change_a_version() -> None:
    """1.0 and 1.0.0 are the same version."""
    assert version_key("1.0") == version_key("1.0.0")
