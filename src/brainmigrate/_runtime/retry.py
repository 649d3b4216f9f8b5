"""Retrying transient PostgreSQL failures with tenacity."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import asyncpg
import tenacity

from .._errors import DatabaseUnavailableError
from .._model.config import RetryPolicy

logger = logging.getLogger("brainmigrate")

#: lock_not_available, deadlock_detected, serialization_failure: worth another try.
TRANSIENT_SQLSTATES = frozenset({"55P03", "40P01", "40001"})


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying."""
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning("transient failure (attempt %d), retrying: %s", state.attempt_number, exc)


def backoff(policy: RetryPolicy) -> tenacity.wait.wait_base:
    """The waits between tries: exponential from ``initial_delay`` up to ``max_delay``, with jitter."""
    return tenacity.wait_exponential(
        multiplier=policy.initial_delay, max=policy.max_delay
    ) + tenacity.wait_random(0, policy.jitter)


def retrying(
    policy: RetryPolicy,
    retry_if: Callable[[BaseException], bool] = is_transient,
    before_sleep: Callable[[tenacity.RetryCallState], None] = _log_retry,
) -> tenacity.AsyncRetrying:
    """Retries of failures ``retry_if`` accepts, with :func:`backoff`, bounded by ``policy.attempts``.

    The last error is re-raised.
    """
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(retry_if),
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=backoff(policy),
        sleep=anyio.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def is_recoverable(exc: BaseException) -> bool:
    """Whether a data migration's batch is worth retrying from its checkpoint: a lost connection
    (the session was ended, the server restarted) or a transient conflict.

    A connection the server refused is judged by the refusal: an unknown database or role is not
    worth waiting for, a server that is restarting is.
    """
    if isinstance(exc, DatabaseUnavailableError) and exc.__cause__ is not None:
        return is_recoverable(exc.__cause__)
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | OSError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state in TRANSIENT_SQLSTATES or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return False
