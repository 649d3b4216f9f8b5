"""Calling a data migration's transform: bounded concurrency, a rate limit, retries with Retry-After."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import tenacity

from .._model.config import MigrationConfig, RetryPolicy
from .._runtime.retry import backoff

T = TypeVar("T")
R = TypeVar("R")


class RateLimiter:
    """At most ``rate`` calls per second, spaced evenly; shared by every task of a run."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 0.0 if not rate else 1.0 / rate
        self._next = 0.0

    @property
    def active(self) -> bool:
        """Whether calls are limited at all (without a rate, :meth:`wait` returns at once)."""
        return bool(self._interval)

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await anyio.sleep(slot - now)


def retry_after_seconds(exc: BaseException | None) -> float:
    """The wait an error asks for: its ``retry_after`` (seconds), or a ``Retry-After`` response header."""
    if exc is None:
        return 0.0
    value: Any = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except OverflowError:  # an integer too large for a float: no sensible wait
        return 0.0
    except (TypeError, ValueError):
        try:  # an HTTP date
            seconds = parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _wait(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    """The policy's backoff, but at least as long as the error asks (``Retry-After``)."""
    waits = backoff(policy)

    def wait(state: tenacity.RetryCallState) -> float:
        asked = retry_after_seconds(state.outcome.exception() if state.outcome else None)
        return max(float(waits(state)), asked)

    return wait


async def cancelled() -> bool:
    """Whether the current task is being cancelled: by a cancel scope around it, or ``Task.cancel()``.

    Tells a real cancellation from a CancelledError that user code raised on its own.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not in an asyncio loop
        task = None
    if task is not None and task.cancelling():
        return True
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except anyio.get_cancelled_exc_class():
        return True
    return False


class TransformCaller:
    """Runs transform calls for one run: ``concurrency`` at a time, rate-limited, retried."""

    def __init__(self, config: MigrationConfig, retry_on: tuple[type[BaseException], ...]) -> None:
        self._concurrency = config.concurrency
        self._limiter = RateLimiter(config.rate_limit)
        self._limited = self._limiter.active
        self._policy = config.retry
        self._retry_on = retry_on

    @property
    def direct(self) -> bool:
        """Whether :meth:`call` is the plain call: no retries, no rate limit."""
        return not self._retry_on and not self._limited

    async def call(self, fn: Callable[[T], Awaitable[R]], arg: T) -> R:
        """``fn(arg)``, retrying the exceptions the migration marked as retryable."""
        if not self._retry_on:
            if self._limited:
                await self._limiter.wait()
            return await fn(arg)
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(self._retry_on),
            stop=tenacity.stop_after_attempt(self._policy.attempts),
            wait=_wait(self._policy),
            sleep=anyio.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._limiter.wait()
                return await fn(arg)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def map(self, fn: Callable[[T], Awaitable[R]], args: Sequence[T]) -> list[R | BaseException]:
        """``fn`` over ``args`` in order, each result or the exception it raised.

        A CancelledError (or other BaseException) that ``fn`` raises itself is its result like any
        exception, so the item fails rather than vanishing; only a real cancellation of the run,
        KeyboardInterrupt and SystemExit propagate.
        """
        results: list[R | BaseException] = [None] * len(args)  # type: ignore[list-item]
        call = self.call
        direct = self.direct  # then call(fn, arg) is fn(arg)
        indexes = iter(range(len(args)))

        async def worker() -> None:
            for index in indexes:
                try:
                    results[index] = await (fn(args[index]) if direct else call(fn, args[index]))
                except Exception as exc:
                    results[index] = exc
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt | SystemExit) or await cancelled():
                        raise
                    results[index] = exc

        if self._concurrency == 1 or len(args) <= 1:
            await worker()
            return results

        async with anyio.create_task_group() as group:
            for _ in range(min(self._concurrency, len(args))):
                group.start_soon(worker)
        return results
