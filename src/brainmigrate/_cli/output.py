"""Rendering for people (``rich`` tables when installed, plain text otherwise) and for machines (JSON)."""

from __future__ import annotations

import datetime as _datetime
import enum
import json
import sys
from collections.abc import Sequence
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as JSON data, as the HTTP API gives it (see :mod:`brainmigrate._model.jsonable`).

    Imported when first called: every verb imports this module, and most print no JSON.
    """
    from brainmigrate._model.jsonable import jsonable as convert

    return convert(value)


def print_json(value: Any) -> None:
    """``value`` as one JSON document on stdout; NaN and the infinities are null by then."""
    print(json.dumps(jsonable(value), indent=2, allow_nan=False))


def has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, _datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).splitlines()[0] if str(value) else ""


def table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table for people on stdout."""
    cells = [[text(cell) for cell in row] for row in rows]
    if has_rich():
        from rich.console import Console
        from rich.table import Table

        grid = Table(title=title, title_justify="left")
        for header in headers:
            grid.add_column(header, overflow="fold")
        for row in cells:
            grid.add_row(*row)
        Console(soft_wrap=True).print(grid)
        return
    if title:
        print(title)
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    print("  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def say(message: str) -> None:
    print(message)


def error(message: str) -> None:
    """An error for people, on stderr."""
    print(f"brainmigrate: error: {message}", file=sys.stderr)


def result_lines(result: Any) -> list[str]:
    """One :class:`MigrationResult` for people; a dry run adds its SQL, sampled diffs and findings."""
    lines = [str(result)]
    if result.dry_run:
        for statement in result.statements:
            lines.append(f"  SQL: {' '.join(statement.split())}")
        for change in result.changes:
            lines.append(f"  {change.key} {change.column}: {change.before!r} -> {change.after!r}")
        for violation in result.violations:
            lines.append(f"  violation: {violation}")
        impact = result.write_impact
        if impact is not None:
            lines.append(
                f"  write impact on {impact.table}: {len(impact.touched_indexes)} indexes touched, "
                f"HOT {'possible' if impact.hot_possible else 'impossible'}"
            )
            lines.extend(f"  warning: {warning}" for warning in impact.warnings)
    return lines


def _beside_rate(progress: Any) -> str:
    """The error rate when items failed, and the memory when the report has it (after items/s)."""
    errors = f", {progress.error_rate:.1%} failed" if progress.failed and progress.error_rate else ""
    rss = progress.memory_rss_bytes
    memory = f", {rss / 2**20:,.0f} MiB RSS" if rss else ""
    return errors + memory


def progress_line(progress: Any) -> str:
    total = f"/{progress.total}" if progress.total is not None else ""
    rate = f", {progress.rate:.0f} items/s" if progress.rate else ""
    rate += _beside_rate(progress)
    eta = f", {progress.eta_seconds:.0f} s left" if progress.eta_seconds is not None else ""
    return (
        f"{progress.migration_id} {text(progress.status)}: {progress.done}{total} done "
        f"({progress.processed} written, {progress.skipped} skipped, {progress.failed} failed){rate}{eta}"
    )


class Bars:
    """Live progress bars (rate and time left) for data migrations, on stderr; quiet without rich."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        if enabled and has_rich():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> Bars:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, progress: Any) -> None:
        if self._bar is None:
            return
        rate = f"{progress.rate:,.0f} items/s" if progress.rate else ""
        rate = (rate + _beside_rate(progress)).removeprefix(", ")
        task = self._tasks.get(progress.migration_id)
        if task is None:
            task = self._bar.add_task(progress.migration_id, total=progress.total, rate=rate)
            self._tasks[progress.migration_id] = task
        self._bar.update(task, completed=progress.done, total=progress.total, rate=rate)
