"""The online rewrite's instant swap back under faults: real processes killed while its mirror is
about to be installed, while it is to be taken off, and while the application writes through it.

With ``rewrite_swap_back = "instant"`` (``workers/rewrite_toy_instant``: the migration of
``rewrite_toy`` in that mode), the swap installs, in its one transaction, statement triggers on
the swapped-in table that write each statement's rows to the original too (the mirror), and log
the keys of a statement the original refuses, for the swap back to replay. A runner killed while
its swap waits for the table leaves no part of the mirror, and the next installs it once; a
rollback killed while its swap back waits changes nothing, and resumed gives the original every
row as the application last wrote it, mirrored or logged; an application transaction cut off
midway (its backend terminated, or its process SIGKILLed) leaves neither table with any of its
writes. The store, the workers, the kills and the end checks are ``rewrite_support``'s.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import attrs
import pytest

from brainmigrate._rewrite import capture
from brainmigrate._rewrite.names import RewriteNames
from rewrite_support import (
    REWRITE,
    Store,
    ToyRow,
    assert_swapped_in,
    capture_functions,
    create_toy_store,
    oid_of,
    only_relation,
    relations,
    resume_to_contract,
    rewritten,
    roll_back_into_the_original,
    rollback_killed_while_the_swap_back_waits,
    rows_of,
    runner_killed_while_the_swap_waits,
    write_after_the_swap,
)
from workers.application_worker import COUNTER, INSERTED_AT, writes
from workers.harness import end_sessions_named, sessions_named, sigkill, start_application, stop, wait_until

pytestmark = pytest.mark.anyio

INSTANT = "rewrite_toy_instant"
#: What the rewrite of ``memories`` creates, named as the rewrite names it.
NAMES = RewriteNames(REWRITE, "public", "memories", "brainmigrate")
#: The forward capture's triggers (on the original, until the swap), and the mirror's (after it).
FORWARD = capture.capture_triggers(NAMES)
MIRROR = (
    *(NAMES.mirror_trigger(event) for event in capture.MIRRORED_EVENTS),
    capture.truncate_trigger(NAMES),
)
APPLICATION_NAME = "rewrite application"


async def _triggers(pool: asyncpg.Pool[Any]) -> list[tuple[str, str, str]]:
    """Every user trigger of the database, on any table: (table, trigger, the function it calls)."""
    rows = await pool.fetch(
        "SELECT t.tgrelid::regclass::text, t.tgname::text, p.proname::text "
        "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal"
    )
    return sorted((row[0], row[1], row[2]) for row in rows)


def _on_the_table(triggers: Iterable[str], function: str) -> list[tuple[str, str, str]]:
    return sorted(("memories", trigger, function) for trigger in triggers)


async def _logged(pool: asyncpg.Pool[Any]) -> list[int]:
    """The keys the reverse change log holds for the swap back to replay, in the order logged."""
    log = NAMES.in_history_schema(NAMES.reverse_log)
    return [row[0] for row in await pool.fetch(f'SELECT "key" FROM {log} ORDER BY seq')]


def _overlaid(base: dict[int, ToyRow], written: dict[int, ToyRow], keys: Iterable[int]) -> dict[int, ToyRow]:
    """``base`` with the rows ``written`` holds for ``keys`` (a key it does not hold: deleted)."""
    rows = dict(base)
    for key in keys:
        if key in written:
            rows[key] = written[key]
        else:
            rows.pop(key, None)
    return rows


def _assert_same(actual: dict[int, ToyRow], want: dict[int, ToyRow]) -> None:
    """``actual == want``, row by row, saying which rows differ when not."""
    assert sorted(actual.keys() - want.keys()) == [] and sorted(want.keys() - actual.keys()) == []
    wrong = [key for key in want if actual[key] != want[key]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {[(k, actual[k], want[k]) for k in wrong[:3]]}"


async def test_a_runner_killed_while_its_swap_waits_leaves_no_mirror_and_the_next_installs_it_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the swap's LOCK TABLE waits behind this test's lock, the runner leaves the
    original as it was and no part of the mirror (no mirror trigger on either table, no mirror
    function, no reverse log), as the swap installs it in its own transaction. The next runner
    swaps once and installs the mirror once, and the application's writes after the swap are in
    both tables; contract then takes the mirror off."""
    pool = brainmigrate_pool
    store, shadow_oid = await runner_killed_while_the_swap_waits(
        brainmigrate_database, pool, migrations=INSTANT
    )

    assert await _triggers(pool) == _on_the_table(FORWARD, NAMES.forward_function)
    assert await capture_functions(pool) == [NAMES.forward_function]
    assert await relations(pool, "rewrite_") == [NAMES.forward_log]

    await resume_to_contract(pool, monkeypatch, migrations=INSTANT)

    assert await oid_of(pool) == shadow_oid
    assert await _triggers(pool) == _on_the_table(MIRROR, NAMES.reverse_function)
    assert await capture_functions(pool) == [NAMES.reverse_function]
    assert await relations(pool, "rewrite_") == [NAMES.reverse_log]
    written = await write_after_the_swap(pool)
    new = await rows_of(pool)
    assert new[written.edited][0] == "a sad edit after the swap" and written.deleted not in new
    assert new[written.added] == written.added_row
    mirrored = (written.edited, written.deleted, written.added)
    assert await _logged(pool) == []
    await assert_swapped_in(
        pool,
        store,
        expected=_overlaid(rewritten(store.rows), new, mirrored),
        old_rows=_overlaid(store.rows, new, mirrored),
        next_id=written.added + 1,
        migrations=INSTANT,
    )


async def test_a_rollback_killed_while_the_swap_back_waits_is_resumed_into_the_original_as_last_written(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the swap the application inserts, edits, deletes and re-keys memories, one statement
    or several in a transaction, each mirrored into the original, and writes some the original
    refuses (logged instead). A rollback in another process is killed while its swap back waits
    behind this test's lock: nothing is swapped back, the mirror goes on. The rollback resumed
    leaves the original holding every row as the application last wrote it, mirrored or
    replayed from the log, and nothing else; the mirror, its log and the swapped-in table are gone."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    await resume_to_contract(pool, monkeypatch, migrations=INSTANT)
    new_oid = await oid_of(pool)
    old = await only_relation(pool, "bm_old_")
    # The original (and only it) refuses the contents starting with "refused": their mirror fails.
    await pool.execute(
        f"ALTER TABLE \"{old}\" ADD CONSTRAINT refused CHECK (NOT starts_with(content, 'refused')) NOT VALID"
    )

    await pool.execute("UPDATE memories SET content = content || ' (edited)' WHERE id BETWEEN 20 AND 24")
    await pool.execute("DELETE FROM memories WHERE id IN (30, 31)")
    added = await pool.fetchval("INSERT INTO memories (content) VALUES ('added after the swap') RETURNING id")
    await pool.execute("UPDATE memories SET id = 5000 WHERE id = 40")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE memories SET content = 'edited in a transaction' WHERE id = 50")
        await conn.execute("DELETE FROM memories WHERE id = 51")
        await conn.execute("UPDATE memories SET id = 5001, content = 'moved in a transaction' WHERE id = 52")
    refused_added = await pool.fetchval(
        "INSERT INTO memories (content) VALUES ('refused: added') RETURNING id"
    )
    await pool.execute("UPDATE memories SET content = 'refused: edited' WHERE id = 60")
    await pool.execute("UPDATE memories SET id = 5002, content = 'refused: moved' WHERE id = 62")
    await pool.execute(
        "UPDATE memories SET content = 'edited again after its edit was refused' WHERE id = 60"
    )
    await pool.execute("UPDATE memories SET content = 'edited after a refusal' WHERE id = 61")
    written = {*range(20, 25), 30, 31, added, 40, 5000, 50, 51, 52, 5001, refused_added, 60, 62, 5002, 61}
    refused = {refused_added, 62, 5002}  # 60's last write was mirrored

    new = await rows_of(pool)
    assert new[60][0] == "edited again after its edit was refused" and new[5002][0] == "refused: moved"
    assert new[refused_added][0] == "refused: added" and not {30, 31, 40, 51, 52, 62} & new.keys()
    _assert_same(await rows_of(pool, old), _overlaid(store.rows, new, written - refused))
    assert sorted(set(await _logged(pool))) == sorted({refused_added, 60, 62, 5002})
    await pool.execute(f'ALTER TABLE "{old}" DROP CONSTRAINT refused')  # the swap back can copy them
    before = await rows_of(pool, old)

    await rollback_killed_while_the_swap_back_waits(brainmigrate_database, pool, migrations=INSTANT)

    assert await oid_of(pool) == new_oid
    assert await rows_of(pool) == new
    assert await oid_of(pool, old) == store.oid
    assert await rows_of(pool, old) == before
    assert await _triggers(pool) == _on_the_table(MIRROR, NAMES.reverse_function)
    assert sorted(set(await _logged(pool))) == sorted({refused_added, 60, 62, 5002})
    # The mirror still writes what the application writes after the kill.
    await pool.execute("UPDATE memories SET content = 'edited after the killed rollback' WHERE id = 70")
    await pool.execute("DELETE FROM memories WHERE id = 71")
    written |= {70, 71}
    new = await rows_of(pool)
    assert (await rows_of(pool, old)).get(70) == new[70] and 71 not in await rows_of(pool, old)

    await roll_back_into_the_original(
        pool, store, _overlaid(store.rows, new, written), next_id=refused_added + 1, migrations=INSTANT
    )


# -- the application cut off inside the mirror ---------------------------------------------------


Step = Callable[["asyncpg.Pool[Any]", asyncio.subprocess.Process], Awaitable[None]]


async def _nothing(pool: asyncpg.Pool[Any], application: asyncio.subprocess.Process) -> None:
    """Nothing more to do."""


async def _terminate_its_backend(pool: asyncpg.Pool[Any], application: asyncio.subprocess.Process) -> None:
    """pg_terminate_backend the application's session."""
    await end_sessions_named(pool, APPLICATION_NAME)


async def _sigkill_its_process(pool: asyncpg.Pool[Any], application: asyncio.subprocess.Process) -> None:
    """SIGKILL the application's process; its session is left to find out."""
    assert await sigkill(application) == -signal.SIGKILL


async def _sigstop_its_process(pool: asyncpg.Pool[Any], application: asyncio.subprocess.Process) -> None:
    """SIGSTOP the application's process: once its statement is done, it sends no other."""
    application.send_signal(signal.SIGSTOP)


async def _terminate_its_backend_idle_in_its_transaction(
    pool: asyncpg.Pool[Any], application: asyncio.subprocess.Process
) -> None:
    """pg_terminate_backend the application's session once it waits, idle, in its transaction."""

    async def idle() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = $1 AND state = 'idle in transaction'",
                APPLICATION_NAME,
            )
        )

    await wait_until(idle, within=30, what="the application's session to wait in its transaction")
    await end_sessions_named(pool, APPLICATION_NAME)


@attrs.frozen
class CutOff:
    """How the application's transaction is cut off: ``held`` while its last statement waits inside
    the mirror, ``released`` once the row it waits for is let go."""

    held: Step
    released: Step = _nothing


async def _committed(pool: asyncpg.Pool[Any]) -> int:
    """The application's last committed transaction (0: none yet), as memory COUNTER names it."""
    content: str = await pool.fetchval("SELECT content FROM memories WHERE id = $1", COUNTER)
    return int(content.removeprefix("txn ")) if content.startswith("txn ") else 0


async def _blocked_by(pool: asyncpg.Pool[Any], holder: int) -> bool:
    """Whether the application's session waits for a lock session ``holder`` holds."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1 AND $2 = ANY(pg_blocking_pids(pid))",
            APPLICATION_NAME,
            holder,
        )
    )


@asynccontextmanager
async def _holding_the_counter(pool: asyncpg.Pool[Any], old: str) -> AsyncIterator[int]:
    """A transaction of this test holding memory COUNTER's row in the original ``old``, locked,
    until the block ends (then rolled back); yields its session's pid."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            # The mirror replaces a row (deletes it, inserts it again): the lock, when it waited for
            # a version the mirror was replacing, locked nothing, and is taken on its successor.
            locking = f'SELECT count(*) FROM (SELECT FROM "{old}" WHERE id = $1 FOR UPDATE) AS locked'
            while not await conn.fetchval(locking, COUNTER):
                pass
            yield await conn.fetchval("SELECT pg_backend_pid()")
        finally:
            await transaction.rollback()


def _through_the_mirror(
    store: Store, committed: int, inserted_at: str
) -> tuple[dict[int, ToyRow], dict[int, ToyRow], set[int]]:
    """The rows of the swapped-in table and of the original once the application's transactions 1
    to ``committed`` have run (each row they write mirrored, whole), and the keys they wrote."""
    new, old = rewritten(store.rows), dict(store.rows)
    written: set[int] = set()
    for number in range(1, committed + 1):
        w = writes(number)
        new[w.inserted] = (w.inserted_content, w.inserted_metadata, None, inserted_at)
        if w.edited in new:
            new[w.edited] = (w.edited_content, *new[w.edited][1:])
        new.pop(w.deleted, None)
        if w.rekeyed in new:
            new[w.rekeyed_to] = new.pop(w.rekeyed)
        new[COUNTER] = (w.counter_content, *new[COUNTER][1:])
        keys = (w.inserted, w.edited, w.deleted, w.rekeyed, w.rekeyed_to, COUNTER)
        old = _overlaid(old, new, keys)
        written.update(keys)
    return new, old, written


@pytest.mark.parametrize(
    "cut_off",
    [
        pytest.param(CutOff(_terminate_its_backend), id="backend terminated in the mirror"),
        pytest.param(CutOff(_sigkill_its_process), id="process SIGKILLed in the mirror"),
        pytest.param(
            CutOff(_sigstop_its_process, _terminate_its_backend_idle_in_its_transaction),
            id="backend terminated idle in the transaction",
        ),
    ],
)
async def test_an_application_transaction_cut_off_midway_leaves_neither_table_with_any_of_its_writes(
    brainmigrate_database: str,
    brainmigrate_pool: asyncpg.Pool[Any],
    monkeypatch: pytest.MonkeyPatch,
    cut_off: CutOff,
) -> None:
    """An application process writes through the mirror in transactions of five statements (an
    insert, an edit, a deletion, a key change, then memory COUNTER's edit) when this test holds
    memory COUNTER's row in the original: a transaction stops inside its last statement's mirror,
    four statements mirrored. Cut off there (its backend terminated, or its process SIGKILLed), or
    once that statement is done too and the transaction waits (its process stopped, its backend
    terminated), it leaves neither table with any of its writes; both hold every transaction
    committed before it, row by row, and nothing is logged. A write
    committed afterwards reaches both, and the swap back gives the original every row written
    since the swap as the swapped-in table holds it (the rest as before: the migration's label
    goes with the swapped-in table)."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    await resume_to_contract(pool, monkeypatch, migrations=INSTANT)
    old = await only_relation(pool, "bm_old_")
    inserted_at: str = await pool.fetchval("SELECT $1::timestamptz::text", INSERTED_AT)
    application = await start_application(brainmigrate_database, f"--application-name={APPLICATION_NAME}")
    try:

        async def some_committed() -> bool:
            return await _committed(pool) >= 3

        await wait_until(some_committed, within=30, what="the application to commit some transactions")
        async with _holding_the_counter(pool, old) as holder:
            await wait_until(
                lambda: _blocked_by(pool, holder), within=30, what="the application to wait inside the mirror"
            )
            await cut_off.held(pool, application)
        await cut_off.released(pool, application)

        async def gone() -> bool:
            return not await sessions_named(pool, APPLICATION_NAME)

        # A session whose process was killed finishes its statement once the row is free, finds
        # its client gone and rolls its transaction back.
        await wait_until(gone, within=30, what="the application's session to end")
    finally:
        await stop(application)

    committed = await _committed(pool)
    assert committed >= 3
    new, mirrored, written = _through_the_mirror(store, committed, inserted_at)
    cut = writes(committed + 1)
    for table in ("memories", old):
        rows = await rows_of(pool, table)
        assert cut.inserted not in rows and cut.rekeyed_to not in rows
        assert rows[COUNTER][0] == f"txn {committed}" and rows.get(cut.edited, ("",))[0] != cut.edited_content
    _assert_same(await rows_of(pool), new)
    _assert_same(await rows_of(pool, old), mirrored)
    assert await _logged(pool) == []

    await pool.execute("UPDATE memories SET content = 'written after the cut-off' WHERE id = 2")
    late = await pool.fetchval(
        "INSERT INTO memories (content) VALUES ('inserted after the cut-off') RETURNING id"
    )
    written |= {2, late}
    new = await rows_of(pool)
    assert new[2][0] == "written after the cut-off" and new[late][0] == "inserted after the cut-off"
    original = await rows_of(pool, old)
    assert (original[2], original[late]) == (new[2], new[late])
    _assert_same(original, _overlaid(store.rows, new, written))

    await roll_back_into_the_original(
        pool, store, _overlaid(store.rows, new, written), next_id=late + 1, migrations=INSTANT
    )
