"""A writer process beside a migration, and what the table must hold because of what it wrote.

:func:`writer` runs ``writer.py`` for the length of a ``with`` block; :func:`expected` replays
its log over the source's rows: each write that returned the original table's ``tableoid``
happened before the swap, the first that returned another one after it. At the swap every row is
transformed (the rewrite's copy and replay); what is written after it is kept as written.
After a swap back, the original holds its own rows as written before the swap and, for each row
written after it, that row as it was in the table swapped in.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

WRITER = Path(__file__).resolve().parent / "writer.py"

#: A row as the checks compare it: content and metadata, or None for a row that is absent.
State = tuple[str, dict[str, Any]] | None
Transform = Callable[[str, dict[str, Any]], dict[str, Any]]


@contextmanager
def writer(dsn: str, log: Path, *, rows: int, rate: float, seed: int = 1) -> Iterator[None]:
    """``writer.py`` writing to ``dsn`` while the block runs; stopped (SIGTERM) when it ends."""
    options = ["--rows", str(rows), "--rate", str(rate), "--seed", str(seed)]
    process = subprocess.Popen(
        [sys.executable, str(WRITER), dsn, str(log), *options],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        if process.returncode != 0:
            raise RuntimeError(f"the writer failed ({process.returncode}): {stderr}")


def read_log(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line]


@attrs.frozen
class Expected:
    """The rows the writer touched, as they must be after the swap and after a swap back."""

    after_swap: dict[str, State]
    after_swap_back: dict[str, State]
    writes_before_swap: int
    writes_after_swap: int
    failed: int


def expected(
    entries: list[dict[str, Any]],
    source: Mapping[str, tuple[str, dict[str, Any]]],
    original_oid: int,
    transform: Transform,
) -> Expected:
    """What the rows the writer touched must hold, from its log over the source's rows."""
    written: dict[str, State] = {}  # in the original, before the swap
    swapped_in: dict[str, State] | None = None  # in the table swapped in, after it
    before = after = failed = 0

    def transformed(state: State) -> State:
        return None if state is None else (state[0], transform(*state))

    for entry in entries:
        if "error" in entry:
            failed += 1
            continue
        if entry["tableoid"] is None:  # an update or delete of a row that is not there
            continue
        key = entry["id"]
        if entry["tableoid"] != original_oid and swapped_in is None:
            swapped_in = {}
        if swapped_in is None:
            before += 1
            current = written.get(key, source.get(key))
            written[key] = _apply(entry, current)
        else:
            after += 1
            current = swapped_in[key] if key in swapped_in else transformed(written.get(key, source.get(key)))
            swapped_in[key] = _apply(entry, current)
    swapped_in = swapped_in or {}
    after_swap = {key: transformed(state) for key, state in written.items()} | swapped_in
    after_swap_back = written | swapped_in
    return Expected(after_swap, after_swap_back, before, after, failed)


def _apply(entry: dict[str, Any], current: State) -> State:
    if entry["op"] == "insert":
        return entry["content"], {"source": "writer"}
    if entry["op"] == "update":
        assert current is not None, entry
        return entry["content"], current[1]
    return None


def latency(entries: list[dict[str, Any]]) -> str:
    """Median, p99 and maximum of the writer's statement latencies, in ms."""
    seconds = sorted(entry["seconds"] for entry in entries)
    if len(seconds) < 2:
        return "too few statements"
    p99 = statistics.quantiles(seconds, n=100, method="inclusive")[98]
    return (
        f"{len(seconds):,} statements: median {statistics.median(seconds) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {seconds[-1] * 1000:.0f} ms"
    )
