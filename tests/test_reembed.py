"""Re-embedding a memory store with a new embedding model: expand, backfill, validate, index,
cutover, contract, against real PostgreSQL with pgvector."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import asyncpg
import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brainmigrate import (
    BrainMigrateError,
    EmbeddingGeneration,
    EmbeddingModel,
    GenerationStatus,
    HybridPhase,
    IrreversibleMigrationError,
    MigrationConfig,
    MigrationExecutionError,
    MigrationStateError,
    MigrationStatus,
    MigrationValidationError,
    Migrator,
    ReembedMigration,
    RetryPolicy,
    TableLockTimeout,
)
from brainmigrate._reembed.embedder import embed_checked, text_md5
from brainmigrate._reembed.plan import ReembedPlan
from brainmigrate.testing import Fingerprint, fingerprint
from helpers import snapshot
from reembed_support import (
    NEW_DIMENSIONS,
    OLD_DIMENSIONS,
    REEMBED,
    TOY,
    columns,
    create_store,
    indexes,
    reembed,
    texts,
    toy_vector,
    vectors,
)

pytestmark = pytest.mark.anyio

CONFIG = MigrationConfig(batch_size=50, concurrency=4)


async def test_a_reembedding_moves_every_memory_to_the_new_model_and_waits_before_contract(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 300)
    old = await vectors(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [reembed()], config=CONFIG)

    await migrator.run_pending()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    texts = {
        row["id"]: row["content"] for row in await brainmigrate_pool.fetch("SELECT id, content FROM memories")
    }
    new = await vectors(brainmigrate_pool)
    assert new.keys() == texts.keys()
    for key, vector in new.items():
        assert vector == pytest.approx(toy_vector(texts[key]), abs=1e-6)
    assert await vectors(brainmigrate_pool, "embedding_previous") == old
    shape = await columns(brainmigrate_pool)
    assert shape["embedding"] == "vector(12)" and shape["embedding_previous"] == "vector(8)"
    named = await indexes(brainmigrate_pool)
    assert "embedding vector_cosine_ops" in named["memories_embedding_idx"]
    assert "(embedding_previous" in named["memories_embedding_idx_previous"]
    assert "m='8'" in named["memories_embedding_idx"]  # the old index's options carried over
    active = await migrator.embedding_model(table="memories", column="embedding")
    assert active == TOY

    await migrator.contract(REEMBED)

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.COMPLETED
    assert set(await columns(brainmigrate_pool)) == {"id", "content", "metadata", "embedding"}
    assert set(await indexes(brainmigrate_pool)) == {"memories_pkey", "memories_embedding_idx"}
    generations = await migrator.embedding_generations(table="memories", column="embedding")
    assert [(g.model.name, g.status) for g in generations] == [
        ("unknown", GenerationStatus.RETIRED),
        ("toy-embedder", GenerationStatus.ACTIVE),
    ]
    assert generations[0].model.dimensions == 8


# -- helpers -----------------------------------------------------------------------------------

FAST = MigrationConfig(
    batch_size=50,
    concurrency=4,
    retry=RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0),
)
ORIGINAL_COLUMNS = {"id": "bigint", "content": "text", "metadata": "jsonb", "embedding": "vector(8)"}
ORIGINAL_INDEXES = {"memories_pkey", "memories_embedding_idx"}


async def _public(pool: asyncpg.Pool[Any]) -> Fingerprint:
    async with pool.acquire() as conn:
        return await fingerprint(conn)


async def _assert_untouched(pool: asyncpg.Pool[Any], before: Fingerprint) -> None:
    """The user's tables are as ``before``: schema and rows, no column or index left behind."""
    assert before.diff(await _public(pool)) == []
    assert await columns(pool) == ORIGINAL_COLUMNS
    assert set(await indexes(pool)) == ORIGINAL_INDEXES


async def _assert_every_vector_is_of_its_current_text(
    pool: asyncpg.Pool[Any], dimensions: int = NEW_DIMENSIONS
) -> None:
    current = await texts(pool)
    new = await vectors(pool)
    assert new.keys() == current.keys()
    for key, vector in new.items():
        assert vector == pytest.approx(toy_vector(current[key], dimensions), abs=1e-6), key


def _statuses(generations: list[EmbeddingGeneration]) -> list[tuple[str, GenerationStatus]]:
    return [(g.model.name, g.status) for g in generations]


async def _assert_rolled_back(pool: asyncpg.Pool[Any], migrator: Migrator, before: Fingerprint) -> None:
    """The re-embedding rolled back: the user's tables as ``before``, and the old model's generation
    active again, the new one's rolled back."""
    await _assert_untouched(pool, before)
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.ROLLED_BACK
    assert _statuses(await migrator.embedding_generations()) == [
        ("unknown", GenerationStatus.ACTIVE),
        (TOY.name, GenerationStatus.ROLLED_BACK),
    ]


class Overloaded(Exception):
    """What a rate-limited model API raises."""


# -- a model that answers wrongly --------------------------------------------------------------


async def _seven_dimensions(texts: list[str]) -> list[list[float]]:
    return [toy_vector(text, 7) for text in texts]


async def _one_vector_short(texts: list[str]) -> list[list[float]]:
    return [toy_vector(text) for text in texts][:-1]


async def _nan(texts: list[str]) -> list[list[float]]:
    return [[*toy_vector(text)[:-1], math.nan] for text in texts]


async def _strings(texts: list[str]) -> list[str]:
    return ["0.5" * NEW_DIMENSIONS for _ in texts]


@pytest.mark.parametrize(
    ("embed", "message"),
    [
        (_seven_dimensions, r"returned a vector of 7 dimensions at position 0; the model declared has 12"),
        (_one_vector_short, r"returned 49 vectors for 50 texts; it must return one vector per text"),
        (_nan, r"returned a vector holding NaN or infinity at position 0"),
        (_strings, r"returned a vector that is not a list of numbers at position 0"),
    ],
    ids=["wrong-dimensions", "wrong-count", "nan", "strings"],
)
async def test_a_model_answering_wrongly_is_refused_compensated_and_nothing_is_left(
    brainmigrate_pool: asyncpg.Pool[Any], embed: Any, message: str
) -> None:
    await create_store(brainmigrate_pool, 100)
    before = await _public(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [reembed(embed=embed)], config=FAST)

    with pytest.raises(MigrationValidationError, match=message) as raised:
        await migrator.run_pending()

    assert isinstance(raised.value, BrainMigrateError)
    assert "nothing of this batch was written. Fix the model call" in str(raised.value)
    assert "was compensated" in str(raised.value)
    await _assert_rolled_back(brainmigrate_pool, migrator, before)
    assert await migrator.embedding_model() == EmbeddingModel(name="unknown", dimensions=OLD_DIMENSIONS)


async def test_a_model_failing_on_every_call_is_retried_then_refused_and_nothing_is_left(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 30)  # one batch, one embed call: retried 3 times
    before = await _public(brainmigrate_pool)
    calls: list[int] = []

    async def overloaded(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        raise Overloaded("429 Too Many Requests")

    migrator = Migrator(brainmigrate_pool, [reembed(embed=overloaded, retry_on=(Overloaded,))], config=FAST)

    with pytest.raises(MigrationExecutionError, match=r"Overloaded: 429 Too Many Requests") as raised:
        await migrator.run_pending()

    assert "was compensated" in str(raised.value)
    assert calls == [30, 30, 30]
    await _assert_untouched(brainmigrate_pool, before)
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.ROLLED_BACK


# -- dimensions pgvector cannot index --------------------------------------------------------

BIG = EmbeddingModel(name="big-embedder", dimensions=3_000)


async def test_a_vector_column_beyond_pgvectors_index_limit_is_refused_at_load_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 20)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [reembed(model=BIG, column_type="vector")], config=FAST)

    with pytest.raises(
        MigrationValidationError,
        match=r"big-embedder has 3,000 dimensions, more than pgvector can index in a vector column "
        r"\(at most 2,000\); set column_type = 'halfvec'",
    ):
        await migrator.run_pending()

    assert await snapshot(brainmigrate_pool) == before
    assert not await brainmigrate_pool.fetchval("SELECT to_regclass('brainmigrate.hybrid_runs') IS NOT NULL")


async def test_auto_column_type_gives_3000_dimensions_an_indexed_halfvec_column(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 20)
    migrator = Migrator(brainmigrate_pool, [reembed(model=BIG)], config=FAST)

    await migrator.run_pending()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    shape = await columns(brainmigrate_pool)
    assert shape["embedding"] == "halfvec(3000)" and shape["embedding_previous"] == "vector(8)"
    assert (
        "USING hnsw (embedding halfvec_cosine_ops)"
        in (await indexes(brainmigrate_pool))["memories_embedding_idx"]
    )
    current = await texts(brainmigrate_pool)
    for key, vector in (await vectors(brainmigrate_pool)).items():  # halfvec: 2-byte floats
        assert vector == pytest.approx(toy_vector(current[key], 3_000), abs=1e-3)
    [generation] = [g for g in await migrator.embedding_generations() if g.model == BIG]
    assert (generation.column_type, generation.status) == ("halfvec", GenerationStatus.ACTIVE)


async def test_a_column_without_a_vector_index_gets_one_and_the_next_reembedding_builds_its_own(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """The new index is named as PostgreSQL would name it, never left under the temporary name a
    later re-embedding of the column builds its own index under."""
    await create_store(brainmigrate_pool, 30)
    await brainmigrate_pool.execute("DROP INDEX memories_embedding_idx")
    other = EmbeddingModel(name="other-embedder", dimensions=16)
    catalog = [
        reembed(contract_mode="auto"),
        reembed("reembed_other_001", model=other, contract_mode="auto"),
    ]
    migrator = Migrator(brainmigrate_pool, catalog[:1], config=FAST)

    await migrator.run_pending()

    named = await indexes(brainmigrate_pool)
    assert set(named) == ORIGINAL_INDEXES
    assert "USING hnsw (embedding vector_cosine_ops)" in named["memories_embedding_idx"]

    await Migrator(brainmigrate_pool, catalog, config=FAST).run_pending()

    assert await columns(brainmigrate_pool) == {**ORIGINAL_COLUMNS, "embedding": "vector(16)"}
    named = await indexes(brainmigrate_pool)
    assert set(named) == ORIGINAL_INDEXES
    assert "USING hnsw (embedding vector_cosine_ops)" in named["memories_embedding_idx"]
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool, 16)
    assert _statuses(await migrator.embedding_generations()) == [
        ("unknown", GenerationStatus.RETIRED),
        (TOY.name, GenerationStatus.RETIRED),
        (other.name, GenerationStatus.ACTIVE),
    ]


async def test_a_rollback_of_a_reembedding_that_built_the_columns_first_index_drops_it(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 30)
    await brainmigrate_pool.execute("DROP INDEX memories_embedding_idx")
    original = await _public(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [reembed()], config=FAST)
    await migrator.run_pending()
    assert set(await indexes(brainmigrate_pool)) == ORIGINAL_INDEXES

    await migrator.rollback(REEMBED)

    assert original.diff(await _public(brainmigrate_pool)) == []
    assert set(await indexes(brainmigrate_pool)) == {"memories_pkey"}


# -- a cutover behind a long transaction -----------------------------------------------------


def _reader_left_open(application: asyncpg.Connection[Any]) -> type[ReembedMigration]:
    """A re-embedding whose embed, on its first call (after expand), opens a transaction on
    ``application`` reading memories and leaves it open: ACCESS SHARE on the table until it ends.
    (Sent as one simple query, it holds no snapshot, so CREATE INDEX CONCURRENTLY does not wait
    for it.) Cutover waits 100 ms for the table's lock, twice."""
    busy = anyio.Lock()

    async def embed_then_hold(texts: list[str]) -> list[list[float]]:
        async with busy:
            if not application.is_in_transaction():
                await application.execute("BEGIN; SELECT count(*) FROM memories")
        return [toy_vector(text) for text in texts]

    return reembed(embed=embed_then_hold, cutover_lock_timeout_ms=100, cutover_attempts=2)


async def test_a_cutover_blocked_by_a_long_transaction_times_out_switches_nothing_and_carries_on_later(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    await create_store(brainmigrate_pool, 100)
    application = await asyncpg.connect(brainmigrate_database)
    try:
        migrator = Migrator(brainmigrate_pool, [_reader_left_open(application)], config=FAST)

        with pytest.raises(TableLockTimeout) as raised:
            await migrator.run_pending()

        error = raised.value
        assert error.tries == 2
        assert f"pid {application.get_server_pid()} (idle in transaction" in str(error)
        assert 'could not lock "public"."memories" within 100 ms in 2 tries' in str(error)
        assert "Nothing was switched" in str(error)
        assert await migrator.hybrid_phase(REEMBED) is HybridPhase.CUTTING_OVER
        assert await columns(brainmigrate_pool) == {
            **ORIGINAL_COLUMNS,
            "embedding_next": "vector(12)",
            "embedding_next_md5": "uuid",
        }
        named = await indexes(brainmigrate_pool)
        assert set(named) == {*ORIGINAL_INDEXES, "memories_embedding_next_idx"}
        assert "(embedding vector_cosine_ops)" in named["memories_embedding_idx"]
        assert "(embedding_next vector_cosine_ops)" in named["memories_embedding_next_idx"]
        assert _statuses(await migrator.embedding_generations()) == [
            ("unknown", GenerationStatus.ACTIVE),
            (TOY.name, GenerationStatus.BUILDING),
        ]
    finally:
        await application.execute("ROLLBACK")
        await application.close()

    await migrator.run_pending()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    assert (await columns(brainmigrate_pool))["embedding"] == "vector(12)"
    assert (await columns(brainmigrate_pool))["embedding_previous"] == "vector(8)"
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool)
    assert await migrator.embedding_model() == TOY


async def test_an_index_build_waits_for_an_old_snapshot_instead_of_failing_the_reembedding(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every transaction holding an older snapshot (here a
    report in REPEATABLE READ): a wait that blocks no one, so it is not cut short by the statement
    lock timeout (500 ms), and the re-embedding carries on once the report ends."""
    await create_store(brainmigrate_pool, 100)
    report = await asyncpg.connect(brainmigrate_database)
    busy = anyio.Lock()
    held = report.transaction(isolation="repeatable_read")
    waited: list[str] = []

    async def embed_under_a_report(texts: list[str]) -> list[list[float]]:
        async with busy:
            if not report.is_in_transaction():
                await held.start()
                await report.fetchval("SELECT count(*) FROM memories")
        return [toy_vector(text) for text in texts]

    async def end_the_report_once_the_build_waits() -> None:
        with anyio.fail_after(30):
            while True:
                phase = await brainmigrate_pool.fetchval(
                    "SELECT phase FROM pg_stat_progress_create_index WHERE relid = 'memories'::regclass"
                )
                if phase is not None and phase.startswith("waiting"):
                    waited.append(phase)
                    break
                await anyio.sleep(0.02)
        await anyio.sleep(1.5)  # three times the statement lock timeout
        await held.rollback()

    migrator = Migrator(brainmigrate_pool, [reembed(embed=embed_under_a_report)], config=FAST)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(end_the_report_once_the_build_waits)
            await migrator.run_pending()
    finally:
        await report.close()

    assert waited == ["waiting for old snapshots"]
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    assert (
        "USING hnsw (embedding vector_cosine_ops)"
        in (await indexes(brainmigrate_pool))["memories_embedding_idx"]
    )
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool)


async def test_a_rollback_behind_the_long_transaction_fails_cleanly_and_succeeds_once_it_ends(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    await create_store(brainmigrate_pool, 100)
    original = await _public(brainmigrate_pool)
    application = await asyncpg.connect(brainmigrate_database)
    try:
        migrator = Migrator(brainmigrate_pool, [_reader_left_open(application)], config=FAST)
        with pytest.raises(TableLockTimeout):
            await migrator.run_pending()

        with pytest.raises(
            MigrationExecutionError,
            match=rf"could not roll back migration '{REEMBED}/index': \[55P03\] canceling statement "
            rf"due to lock timeout.*then call rollback\('{REEMBED}'\) again",
        ):
            await migrator.rollback(REEMBED)

        assert (await columns(brainmigrate_pool))["embedding"] == "vector(8)"  # nothing switched
    finally:
        await application.execute("ROLLBACK")
        await application.close()

    await migrator.rollback(REEMBED)

    await _assert_rolled_back(brainmigrate_pool, migrator, original)


# -- a declaration that does not fit the table -----------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (
            {"text_column": "body"},
            r"table public.memories has no column 'body' \(its declared text_column\); set text_column",
        ),
        ({"table": "notes"}, r"there is no table \"notes\""),
        (
            {"column": "metadata"},
            r"public.memories.metadata is a column of type jsonb, not a pgvector vector or halfvec column",
        ),
        ({"column": "vectors"}, r"public.memories.vectors is no such column"),
    ],
    ids=["no-text-column", "no-table", "not-a-vector-column", "no-vector-column"],
)
async def test_a_declaration_that_does_not_fit_the_table_is_refused_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any], attributes: dict[str, Any], message: str
) -> None:
    await create_store(brainmigrate_pool, 20)
    before = await _public(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [reembed(**attributes)], config=FAST)

    with pytest.raises(MigrationValidationError, match=message):
        await migrator.run_pending()

    await _assert_untouched(brainmigrate_pool, before)
    assert await migrator.embedding_generations() == []


ODD_STORE = '''
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA "Brain ""Store""";
CREATE TABLE "Brain ""Store"""."Mémoires ""x""" (
    "Clé" bigint PRIMARY KEY, "Le texte" text, "Vecteur d'origine" vector(3)
);
INSERT INTO "Brain ""Store"""."Mémoires ""x"""
SELECT i, 'texte ' || i || ' 🧠', '[1,2,3]' FROM generate_series(1, 40) AS i;
CREATE INDEX "Index ""v""" ON "Brain ""Store"""."Mémoires ""x"""
    USING hnsw ("Vecteur d'origine" vector_l2_ops);
'''


async def test_quoted_and_non_ascii_names_are_reembedded_rolled_back_and_contracted(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await brainmigrate_pool.execute(ODD_STORE)
    original = await _public(brainmigrate_pool)
    where: dict[str, Any] = {
        "table": 'Mémoires "x"',
        "column": "Vecteur d'origine",
        "table_schema": 'Brain "Store"',
    }
    declared: dict[str, Any] = {**where, "text_column": "Le texte", "key": "Clé", "contract_mode": "auto"}
    migrator = Migrator(brainmigrate_pool, [reembed(**{**declared, "contract_mode": "manual"})], config=FAST)
    await migrator.run_pending()

    await migrator.rollback(REEMBED)

    assert original.diff(await _public(brainmigrate_pool)) == []
    await Migrator(brainmigrate_pool, [reembed(**declared)], config=FAST).run_pending()

    rows = await brainmigrate_pool.fetch(
        'SELECT "Le texte" AS text, "Vecteur d\'origine"::text AS v FROM "Brain ""Store"""."Mémoires ""x"""'
    )
    assert len(rows) == 40
    for row in rows:
        vector = [float(x) for x in row["v"].strip("[]").split(",")]
        assert vector == pytest.approx(toy_vector(row["text"]), abs=1e-6)
    definitions = await brainmigrate_pool.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'Brain \"Store\"'"
    )
    assert {row["indexname"] for row in definitions} == {'Mémoires "x"_pkey', 'Index "v"'}
    assert any("vector_l2_ops" in row["indexdef"] for row in definitions)  # the metric carried over
    assert _statuses(await migrator.embedding_generations(**where)) == [
        ("unknown", GenerationStatus.RETIRED),
        (TOY.name, GenerationStatus.ROLLED_BACK),
        (TOY.name, GenerationStatus.ACTIVE),
    ]


# -- one re-embedding of a column at a time --------------------------------------------------


async def test_a_second_reembedding_of_a_column_being_reembedded_is_refused_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 300)
    reached, release = anyio.Event(), anyio.Event()
    calls: list[int] = []

    async def pausing(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        if len(calls) == 2:
            reached.set()
            await release.wait()
        return [toy_vector(text) for text in texts]

    first = [reembed(embed=pausing)]
    migrator = Migrator(brainmigrate_pool, first, config=MigrationConfig(batch_size=50, concurrency=1))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(migrator.run_pending)
        await reached.wait()
        await Migrator(brainmigrate_pool, first).cancel(f"{REEMBED}/backfill")
        release.set()
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.BACKFILLING
    assert await migrator.status(f"{REEMBED}/backfill") is MigrationStatus.CANCELLED
    before = await _public(brainmigrate_pool)
    generations = await migrator.embedding_generations()
    assert _statuses(generations) == [
        ("unknown", GenerationStatus.ACTIVE),
        (TOY.name, GenerationStatus.BUILDING),
    ]

    other = EmbeddingModel(name="other-embedder", dimensions=16)
    second = Migrator(brainmigrate_pool, [reembed("reembed_other_001", model=other)], config=FAST)
    with pytest.raises(MigrationStateError, match=rf"is being re-embedded already, to .* by '{REEMBED}'"):
        await second.run_pending()

    assert before.diff(await _public(brainmigrate_pool)) == []
    assert await migrator.embedding_generations() == generations


async def test_a_reembedding_to_the_model_the_column_holds_is_refused_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    migrator = Migrator(brainmigrate_pool, [reembed(contract_mode="auto")], config=FAST)
    await migrator.run_pending()
    before = await _public(brainmigrate_pool)
    generations = await migrator.embedding_generations()

    again = Migrator(brainmigrate_pool, [reembed("reembed_toy_002")], config=FAST)
    with pytest.raises(
        MigrationValidationError,
        match=r"memories.embedding holds toy-embedder 1 \(tests\), "
        r"12 dimensions already \(generation 2\); there is nothing to re-embed",
    ):
        await again.run_pending()

    assert before.diff(await _public(brainmigrate_pool)) == []
    assert await again.embedding_generations() == generations


async def test_a_reembedding_while_the_last_one_awaits_contract_is_refused_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """The column keeps the previous model's vectors until contract: a second re-embedding would
    find no name for the vectors it replaces, so it is refused before it embeds anything."""
    await create_store(brainmigrate_pool, 50)
    migrator = Migrator(brainmigrate_pool, [reembed()], config=FAST)
    await migrator.run_pending()
    before = await _public(brainmigrate_pool)
    generations = await migrator.embedding_generations()
    calls: list[int] = []

    async def counted(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return [toy_vector(text, 16) for text in texts]

    other = EmbeddingModel(name="other-embedder", dimensions=16)
    second = Migrator(
        brainmigrate_pool, [reembed("reembed_other_001", model=other, embed=counted)], config=FAST
    )
    with pytest.raises(
        MigrationStateError,
        match=rf"keeps the vectors of unknown, 8 dimensions in embedding_previous until '{REEMBED}' is "
        rf"contracted; contract it \(`await migrator.contract\('{REEMBED}'\)`\)",
    ):
        await second.run_pending()

    assert calls == []
    assert before.diff(await _public(brainmigrate_pool)) == []
    assert await migrator.embedding_generations() == generations


# -- rollback ---------------------------------------------------------------------------------


async def test_a_rollback_before_contract_switches_the_names_back_and_restores_the_previous_model(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 100)
    original = await _public(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [reembed()], config=FAST)
    await migrator.run_pending()
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT

    await migrator.rollback(REEMBED)

    await _assert_rolled_back(brainmigrate_pool, migrator, original)
    assert await migrator.embedding_model() == EmbeddingModel(name="unknown", dimensions=OLD_DIMENSIONS)


async def test_a_rollback_after_contract_is_refused_and_nothing_is_changed(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    migrator = Migrator(brainmigrate_pool, [reembed()], config=FAST)
    await migrator.run_pending()
    await migrator.contract(REEMBED)
    before = await snapshot(brainmigrate_pool)
    generations = await migrator.embedding_generations()

    with pytest.raises(IrreversibleMigrationError, match=rf"'{REEMBED}/contract' is not reversible"):
        await migrator.rollback(REEMBED)

    assert await snapshot(brainmigrate_pool) == before
    assert await migrator.embedding_generations() == generations
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.COMPLETED


# -- same dimensions, another model ----------------------------------------------------------


async def test_a_model_of_the_same_dimensions_is_still_a_new_generation_and_replaces_every_vector(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 100)
    old = await vectors(brainmigrate_pool)
    same = EmbeddingModel(name="toy-embedder-8", dimensions=OLD_DIMENSIONS)
    migrator = Migrator(brainmigrate_pool, [reembed(model=same)], config=FAST)

    await migrator.run_pending()

    assert (await columns(brainmigrate_pool))["embedding"] == "vector(8)"
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool, OLD_DIMENSIONS)
    new = await vectors(brainmigrate_pool)
    assert all(new[key] != old[key] for key in old)
    assert await vectors(brainmigrate_pool, "embedding_previous") == old
    assert _statuses(await migrator.embedding_generations()) == [
        ("unknown", GenerationStatus.PREVIOUS),
        ("toy-embedder-8", GenerationStatus.ACTIVE),
    ]

    await migrator.contract(REEMBED)

    assert _statuses(await migrator.embedding_generations()) == [
        ("unknown", GenerationStatus.RETIRED),
        ("toy-embedder-8", GenerationStatus.ACTIVE),
    ]
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool, OLD_DIMENSIONS)


# -- the application writes while the re-embedding runs ---------------------------------------


async def test_memories_written_during_the_backfill_end_with_the_vector_of_their_current_text(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """An insert and an edit made during the backfill (caught by the catch-up before the index is
    built), then an edit on each catch-up call (the last one left for cutover's pass under the
    table lock, the edit tried under that lock waiting in vain)."""
    await create_store(brainmigrate_pool, 300)
    application = await asyncpg.connect(brainmigrate_database)
    await application.execute("SET lock_timeout = '200ms'")
    busy = anyio.Lock()
    calls: list[int] = []
    edited: list[int] = []
    during_backfill: list[int] = []
    blocked: list[str] = []

    async def edit_one_embedded(new_text: str) -> bool:
        key = await application.fetchval(
            "SELECT min(id) FROM memories WHERE embedding_next IS NOT NULL AND content LIKE 'memory number %'"
        )
        if key is None:
            return False
        await application.execute("UPDATE memories SET content = $2 WHERE id = $1", key, new_text)
        edited.append(key)
        return True

    async def embedded() -> int:
        count: int = await brainmigrate_pool.fetchval(
            "SELECT count(*) FROM memories WHERE embedding_next IS NOT NULL"
        )
        return count

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        if len(calls) == 2:  # during the backfill, once its first batch is committed
            with anyio.fail_after(10):
                while True:  # polling the database: no event to wait for
                    if await embedded():
                        break
                    await anyio.sleep(0.01)
            async with busy:  # an edit of an embedded memory, and a new memory
                assert await edit_one_embedded("edited during the backfill")
                await application.execute(
                    "INSERT INTO memories (id, content) VALUES (1000, 'a memory written meanwhile')"
                )
            during_backfill.append(await embedded())
        elif any(text.startswith("edited") for text in texts):  # re-embedding an edit
            async with busy:
                try:
                    assert await edit_one_embedded(f"edited again ({len(edited)})")
                except asyncpg.LockNotAvailableError:  # cutover holds the table: this waits
                    blocked.append(texts[0])
        return [toy_vector(text) for text in texts]

    config = attrs.evolve(FAST, checkpoint_frequency=50)  # each batch committed as it is written
    migrator = Migrator(brainmigrate_pool, [reembed(embed=embed)], config=config)
    try:
        await migrator.run_pending()
    finally:
        await application.close()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    assert during_backfill and during_backfill[0] < 300  # the backfill was not over yet
    assert len(edited) >= 2 and len(set(edited)) == len(edited)
    assert blocked  # an embed call ran under cutover's lock: its in-lock pass
    current = await texts(brainmigrate_pool)
    assert current[1000] == "a memory written meanwhile"
    assert all(current[key].startswith("edited") for key in edited)
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool)


async def test_memories_without_text_get_no_vector_and_embed_gets_at_most_embed_batch_size_texts(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 60)
    await brainmigrate_pool.execute("UPDATE memories SET content = NULL WHERE id % 10 = 0")
    sizes: list[int] = []

    async def counted(texts: list[str]) -> list[list[float]]:
        sizes.append(len(texts))
        return [toy_vector(text) for text in texts]

    migrator = Migrator(brainmigrate_pool, [reembed(embed=counted, embed_batch_size=7)], config=FAST)

    await migrator.run_pending()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    assert sum(sizes) == 54 and max(sizes) == 7
    new = await vectors(brainmigrate_pool)
    assert sorted(set(range(1, 61)) - set(new)) == [10, 20, 30, 40, 50, 60]
    current = await texts(brainmigrate_pool)
    for key, vector in new.items():
        assert vector == pytest.approx(toy_vector(current[key]), abs=1e-6)


# -- the model a column holds ----------------------------------------------------------------


async def test_embedding_model_is_none_before_a_reembedding_and_the_declared_current_model_is_recorded(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    current = EmbeddingModel(name="old-embedder", dimensions=OLD_DIMENSIONS, provider="tests", version="0")
    migrator = Migrator(brainmigrate_pool, [reembed(current_model=current)], config=FAST)

    assert await migrator.embedding_model() is None
    assert await migrator.embedding_generations() == []

    await migrator.run_pending()

    assert await migrator.embedding_model() == TOY
    generations = await migrator.embedding_generations()
    assert [(g.model, g.status, g.migration_id) for g in generations] == [
        (current, GenerationStatus.PREVIOUS, None),
        (TOY, GenerationStatus.ACTIVE, REEMBED),
    ]
    assert generations[1].activated_at is not None and generations[1].index_phase == "done"
    assert await migrator.embedding_model(table="notes") is None
    assert await migrator.embedding_model(column="metadata") is None


# -- run again, contract by itself ------------------------------------------------------------


async def test_run_pending_again_after_ready_to_contract_does_nothing_more(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    calls: list[int] = []

    async def counted(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return [toy_vector(text) for text in texts]

    migrator = Migrator(brainmigrate_pool, [reembed(embed=counted)], config=FAST)
    await migrator.run_pending()
    embedded, before = len(calls), await snapshot(brainmigrate_pool)

    for _ in range(2):
        [result] = await migrator.run_pending()
        assert result.status is MigrationStatus.RUNNING
        assert "waits at READY_TO_CONTRACT" in (result.error or "")

    assert len(calls) == embedded
    assert await snapshot(brainmigrate_pool) == before
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT


async def test_contract_mode_auto_goes_straight_to_completed(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    await create_store(brainmigrate_pool, 50)
    migrator = Migrator(brainmigrate_pool, [reembed(contract_mode="auto")], config=FAST)

    [result] = await migrator.run_pending()

    assert result.status is MigrationStatus.COMPLETED
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.COMPLETED
    assert await columns(brainmigrate_pool) == {**ORIGINAL_COLUMNS, "embedding": "vector(12)"}
    assert set(await indexes(brainmigrate_pool)) == ORIGINAL_INDEXES
    await _assert_every_vector_is_of_its_current_text(brainmigrate_pool)
    assert _statuses(await migrator.embedding_generations()) == [
        ("unknown", GenerationStatus.RETIRED),
        (TOY.name, GenerationStatus.ACTIVE),
    ]
    assert await migrator.run_pending() == []


# -- the pure parts, over many inputs ----------------------------------------------------------

#: PostgreSQL identifiers: 1 to 63 bytes of UTF-8, no NUL (non-ASCII, quotes and dots included).
identifiers = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=63
).filter(lambda name: len(name.encode()) <= 63)


def _plan(table: str, column: str) -> ReembedPlan:
    return ReembedPlan.of(
        "reembed_names",
        model=TOY,
        table=table,
        column=column,
        text_column="the text" if column != "the text" else "content",  # not in the names
        key="the key" if column != "the key" else "id",
        table_schema=None,
        column_type="auto",
        build_index=True,
        opclass=None,
        index_options={},
    )


def _names(plan: ReembedPlan) -> tuple[str, ...]:
    return (plan.next_column, plan.hash_column, plan.previous_column)


@settings(max_examples=300, deadline=None, database=None)
@example(first=("memories", "embedding"), second=("memories", "embedding_next"))
@example(first=("a_b", "c"), second=("a", "b_c"))
@example(first=("m", "é" * 31), second=("m", "é" * 30 + "e"))
@example(first=("t" * 63, "c" * 63), second=("t" * 63, "c" * 62 + "d"))
@given(first=st.tuples(identifiers, identifiers), second=st.tuples(identifiers, identifiers))
def test_derived_names_fit_postgresql_and_never_collide(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    """Every name a re-embedding derives is at most 63 bytes (PostgreSQL would cut a longer one),
    differs from its column and from its other names, and two re-embeddings of different columns
    (of one table: column names; of any tables: index names, which are the schema's) share none."""
    one, two = _plan(*first), _plan(*second)
    for plan in (one, two):
        derived = (*_names(plan), plan.next_index, plan.previous_index(plan.next_index))
        assert all(0 < len(name.encode()) <= 63 for name in derived)
        assert len({plan.column, *_names(plan)}) == 4
    if first != second:
        assert one.next_index != two.next_index
        if first[0] == second[0]:
            assert not set(_names(one)) & set(_names(two))


@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0")))
@example(text="")
@example(text="mémoire 🧠 記憶")
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_text_md5_is_postgresqls_md5_of_the_text(brainmigrate_database: str, text: str) -> None:
    """The hash the backfill writes is the one the stale check computes in SQL: a memory whose text
    did not change is never re-embedded, and one whose text changed always is."""

    async def in_postgresql() -> Any:
        conn = await asyncpg.connect(brainmigrate_database)
        try:
            return await conn.fetchval("SELECT md5($1::text)::uuid", text)
        finally:
            await conn.close()

    assert text_md5(text) == asyncio.run(in_postgresql())


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
values = st.one_of(
    finite,
    st.integers(-3, 3),
    st.sampled_from([math.nan, math.inf, -math.inf, True, "0.5", None, b"1"]),
)
vector_shapes = st.one_of(
    st.lists(values, min_size=2, max_size=4),
    st.text(alphabet="0123456789", min_size=3, max_size=3),
    st.binary(min_size=3, max_size=3),
    st.none(),
)


@settings(max_examples=400, deadline=None, database=None)
@example(answer=[[0.0, 1.0, 2.0]] * 2)
@example(answer=["123", [0.0, 1.0, 2.0]])
@example(answer=[b"\x01\x02\x03", [0.0, 1.0, 2.0]])
@example(answer=[[0.0, 1.0, math.nan], [0.0, 1.0, 2.0]])
@example(answer=[[0.0, 1.0, 2.0]])
@example(answer="0.1,0.2,0.3")
@given(
    answer=st.one_of(
        st.lists(st.one_of(vector_shapes, st.lists(finite, min_size=3, max_size=3)), max_size=3),
        vector_shapes,
    )
)
def test_embed_checked_accepts_exactly_one_list_of_finite_numbers_of_the_dimensions_per_text(
    answer: Any,
) -> None:
    texts = ["one", "two"]

    async def embed(_texts: list[str]) -> Any:
        return answer

    well_formed = (
        isinstance(answer, list)
        and len(answer) == len(texts)
        and all(
            isinstance(vector, list)
            and len(vector) == 3
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in vector
            )
            for vector in answer
        )
    )
    if well_formed:
        checked = asyncio.run(embed_checked(embed, texts, 3, "reembed_checked"))
        assert checked == [[float(v) for v in vector] for vector in answer]
    else:
        with pytest.raises(
            MigrationValidationError,
            match=r"^re-embedding 'reembed_checked': embed\(\) returned .*; nothing of this batch was "
            "written",
        ):
            asyncio.run(embed_checked(embed, texts, 3, "reembed_checked"))
