"""What every worker script shares: the start barrier, and running ``main`` with one line of JSON out.

A worker prints ``{"pid": ..., "results": [[id, status], ...], "error": null, ...}`` and exits with
status 0 when its ``main`` returns, or ``{"pid": ..., "results": null, "error": {"type", "module",
"message"}}`` and exits with status 1 when it raises.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio

from brainmigrate import MigrationResult

BARRIER_TIMEOUT_SECONDS = 30.0


async def wait_for_start(ready_file: Path | None, start_file: Path | None) -> None:
    """Create ``ready_file``, then wait until a test creates ``start_file`` (either may be None)."""
    if ready_file is not None:
        await anyio.Path(ready_file).touch()
    if start_file is None:
        return
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while not await anyio.Path(start_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{start_file} did not appear within {BARRIER_TIMEOUT_SECONDS:g} s")
        await asyncio.sleep(0.005)


def results_report(results: Sequence[MigrationResult], **extra: Any) -> dict[str, Any]:
    """The success report: this process's pid and ``[id, status]`` per result, plus ``extra``."""
    pairs = [[r.migration_id, r.status.value] for r in results]
    return {"pid": os.getpid(), "results": pairs, **extra, "error": None}


def run_and_report(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Run ``main`` on a new event loop, print its report (or the error's) and exit accordingly."""
    try:
        report = asyncio.run(main())
    except Exception as exc:
        error = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
        print(json.dumps({"pid": os.getpid(), "results": None, "error": error}), flush=True)
        sys.exit(1)
    print(json.dumps(report), flush=True)
