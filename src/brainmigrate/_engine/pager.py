"""The one key pager: every keyset loop of a data run reads its pages here."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import anyio.lowlevel
import attrs

from .._model.types import Connection
from .batches import InFlight

#: The keyset query for a combination of bounds: from a key (``lower`` is ``>``, ``>=`` or None)
#: and before a key (``upper``), as :meth:`RunPlan.page_sql` gives it; $1 is the page size.
StatementFor = Callable[[str | None, bool], str]
Rows = list[Any]
#: Starts a read in the background (see :func:`batches.in_background`).
ReadAhead = Callable[[Callable[[], Awaitable[Rows]]], InFlight[Rows]]


@attrs.frozen
class Page:
    rows: Rows
    #: The key the next page starts after, as text.
    cursor: str
    #: No page follows (this one was short).
    last: bool
    #: The next page, being read in the background (with ``read_ahead``).
    ahead: InFlight[Rows] | None = None


def last_key(rows: Sequence[Any]) -> str:
    """The cursor after a page of rows whose first column is the key."""
    return str(rows[-1][0])


def range_end(rows: Sequence[Any]) -> str:
    """The cursor after a key range (:func:`sql.key_range`: its last key as text)."""
    end: str = rows[0][2]
    return end


def range_count(rows: Sequence[Any]) -> int:
    """The number of rows in a key range (:func:`sql.key_range`)."""
    count: int = rows[0][3]
    return count


def bounds(
    statement_for: StatementFor, cursor: str | None, lower: str | None, upper: str | None
) -> tuple[str, list[str]]:
    """The query after ``cursor`` (or from the chunk's ``lower`` key) and before ``upper``, and its
    bound parameters after the page size."""
    args = []
    op = None
    if cursor is not None:
        op, args = ">", [cursor]
    elif lower is not None:
        op, args = ">=", [lower]
    if upper is not None:
        args.append(upper)
    return statement_for(op, upper is not None), args


async def pages(
    conn: Connection,
    statement_for: StatementFor,
    lower: str | None,
    upper: str | None,
    size: int,
    *,
    cursor: str | None = None,
    first: Rows | None = None,
    read_ahead: ReadAhead | None = None,
    cursor_of: Callable[[Sequence[Any]], str] = last_key,
    count_of: Callable[[Sequence[Any]], int] = len,
) -> AsyncGenerator[Page, None]:
    """Pages of up to ``size`` rows in key order, after ``cursor`` (or from ``lower``) and before
    ``upper``, each with the cursor after it, until a page is short or empty.

    ``first`` is the first page when it was read already (after ``cursor``). With ``read_ahead``,
    the next page is read in the background as soon as a full page is yielded. ``cursor_of`` and
    ``count_of`` read a page (by default rows keyed by their first column; a key range's one row
    with :func:`range_end` and :func:`range_count`).
    """
    rows = first
    ahead: InFlight[Rows] | None = None
    while True:
        if rows is None:
            if ahead is not None:
                rows = await ahead.result()
            else:
                text, args = bounds(statement_for, cursor, lower, upper)
                rows = await conn.fetch(text, size, *args)
        count = count_of(rows)
        if not count:
            return
        cursor = cursor_of(rows)
        last = count < size
        ahead = None
        if read_ahead is not None and not last:
            text, args = bounds(statement_for, cursor, lower, upper)
            ahead = read_ahead(functools.partial(conn.fetch, text, size, *args))
            await anyio.lowlevel.checkpoint()  # let it send the query now
        yield Page(rows, cursor, last, ahead)
        if last:
            return
        rows = None
