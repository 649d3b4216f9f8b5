"""Per-run configuration, validated when it is built."""

from __future__ import annotations

from typing import Any

import attrs

from .._errors import ConfigError

#: PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1); longer names are silently truncated.
MAX_IDENTIFIER_BYTES = 63


def check_schema_name(schema: object) -> None:
    """ConfigError unless ``schema`` can hold brainmigrate's tables under exactly that name.

    PostgreSQL truncates names longer than 63 bytes of UTF-8 (so two long names would share one
    schema, each under its own runner lock), and refuses to create ``pg_*`` schemas.
    """
    if not isinstance(schema, str) or not schema:
        raise ConfigError(f"schema must be a PostgreSQL identifier of 1 to 63 bytes in UTF-8, got {schema!r}")
    if "\0" in schema:
        raise ConfigError(
            f"schema must be a PostgreSQL identifier without NUL, got {schema!r}; pick another name"
        )
    try:
        size = len(schema.encode())
    except UnicodeEncodeError:
        raise ConfigError(f"schema {schema!r} is not valid Unicode; pick another schema name") from None
    if size > MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"schema must be a PostgreSQL identifier of at most {MAX_IDENTIFIER_BYTES} bytes in UTF-8, but "
            f"{schema[:20]!r}... is {size} bytes in UTF-8 and PostgreSQL would silently truncate it; "
            "pick a shorter schema name"
        )
    if schema.startswith("pg_") or schema == "information_schema":
        raise ConfigError(
            f"schema {schema!r} is reserved: PostgreSQL keeps pg_* names and information_schema for its "
            "own catalogs; pick another schema name, such as the default 'brainmigrate'"
        )


def _bool(_instance: Any, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be True or False, got {value!r}")


def _number_in(low: float, high: float, *, integer: bool = False) -> Any:
    """A validator that raises ConfigError unless ``low <= value <= high``."""

    def validate(_instance: Any, attribute: attrs.Attribute[float], value: object) -> None:
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{attribute.name} must be {kind}, got {value!r}")
        if not low <= value <= high:  # type: ignore[operator]
            raise ConfigError(f"{attribute.name} must be between {low:g} and {high:g}, got {value!r}")

    return validate


def _optional_rate(_instance: Any, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is not None:
        _number_in(0.001, 1_000_000)(_instance, attribute, value)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How transient failures (lock timeouts, deadlocks, serialization failures) are retried.

    Waits grow exponentially from ``initial_delay`` up to ``max_delay`` with random jitter; at most
    ``attempts`` tries in all. ``attempts=1`` turns retries off.
    """

    attempts: int = attrs.field(default=5, validator=_number_in(1, 100, integer=True))
    initial_delay: float = attrs.field(default=0.1, validator=_number_in(0, 60))
    max_delay: float = attrs.field(default=5.0, validator=_number_in(0, 600))
    jitter: float = attrs.field(default=0.1, validator=_number_in(0, 60))


def _retry_policy(_instance: Any, attribute: attrs.Attribute[RetryPolicy], value: object) -> None:
    if not isinstance(value, RetryPolicy):
        raise ConfigError(f"{attribute.name} must be a RetryPolicy, got {value!r}")


@attrs.frozen(kw_only=True)
class MigrationConfig:
    """How migrations run. Invalid values raise :class:`ConfigError` at construction.

    Derive variants with ``attrs.evolve(config, dry_run=True)``.
    """

    #: Run everything inside a transaction that is rolled back; write nothing, not even history.
    dry_run: bool = attrs.field(default=False, validator=_bool)
    #: Items per batch for data migrations.
    batch_size: int = attrs.field(default=1000, validator=_number_in(1, 100_000, integer=True))
    #: Reverse a failed migration's completed steps automatically (non-transactional migrations).
    enable_rollback: bool = attrs.field(default=True, validator=_bool)
    #: Run the ``validate_preconditions`` gate before executing.
    validate_before: bool = attrs.field(default=True, validator=_bool)
    #: Run the ``validate_postconditions`` gate before committing.
    validate_after: bool = attrs.field(default=True, validator=_bool)
    #: Use several workers for data migrations.
    parallel_execution: bool = attrs.field(default=False, validator=_bool)
    #: Items between durable checkpoints for data migrations.
    checkpoint_frequency: int = attrs.field(default=5000, validator=_number_in(1, 10_000_000, integer=True))
    #: Upper bound on one migration's run time.
    timeout_seconds: float = attrs.field(default=3600, validator=_number_in(0.001, 7 * 24 * 3600))
    #: Keep going after a failure; migrations that depend on a failed one are skipped.
    continue_on_error: bool = attrs.field(default=False, validator=_bool)
    #: How long to wait for another runner's migration lock before MigrationLockTimeout.
    lock_wait_seconds: float = attrs.field(default=60.0, validator=_number_in(0, 24 * 3600))
    #: PostgreSQL ``lock_timeout`` for each migration's statements, so DDL never queues behind a long
    #: transaction while blocking the application's traffic. Failures are retried.
    statement_lock_timeout_ms: int = attrs.field(
        default=500, validator=_number_in(1, 3_600_000, integer=True)
    )
    #: Retries of transient failures.
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=_retry_policy)
    #: Accept applied migrations whose content changed since they were applied.
    allow_checksum_drift: bool = attrs.field(default=False, validator=_bool)
    #: Transform calls in flight at once, per worker (remote model APIs gain most from this).
    concurrency: int = attrs.field(default=4, validator=_number_in(1, 1000, integer=True))
    #: With ``parallel_execution``: workers (each with its own connection) per process.
    max_workers: int = attrs.field(default=2, validator=_number_in(1, 64, integer=True))
    #: Transform calls per second at most (a model API's quota); None for no limit.
    rate_limit: float | None = attrs.field(default=None, validator=_optional_rate)
    #: How long a worker's claim on a part of the key space lasts without news from it; a worker
    #: whose session ended loses its claim at once.
    lease_seconds: float = attrs.field(default=60.0, validator=_number_in(1, 24 * 3600))
    #: Items a data migration's dry run transforms.
    dry_run_sample: int = attrs.field(default=100, validator=_number_in(1, 100_000, integer=True))
