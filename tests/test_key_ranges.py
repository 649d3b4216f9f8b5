"""Parallel data runs split the key space into ranges in the key's own order: integer keys whose
text order differs from their numeric order (500 < 1000, but "1000" < "500") are each written
exactly once."""

from __future__ import annotations

from typing import Any, ClassVar

import asyncpg
import pytest

from brainmigrate import (
    DatabaseDataMigration,
    DataSource,
    MigrationConfig,
    MigrationMetadata,
    MigrationType,
    Migrator,
)

pytestmark = pytest.mark.anyio

NOTES = """
CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL, writes int NOT NULL DEFAULT 0);
CREATE FUNCTION count_note_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$;
CREATE TRIGGER notes_count_writes BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION count_note_writes();
"""


class ShoutNotes(DatabaseDataMigration):
    source: ClassVar[DataSource | None] = DataSource(table="notes", key="id", columns=("body",))

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="shout_notes_001",
            name="upper-case notes",
            version="1.0",
            migration_type=MigrationType.DATABASE_DATA,
        )

    async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        return {"body": str(row["body"]).upper()}


@pytest.mark.parametrize("workers", [2, 3, 4])
async def test_a_parallel_run_over_integer_keys_writes_every_row_exactly_once(
    brainmigrate_pool: asyncpg.Pool[Any], workers: int
) -> None:
    await brainmigrate_pool.execute(NOTES)
    await brainmigrate_pool.execute(
        "INSERT INTO notes (id, body) SELECT i, 'note ' || i FROM generate_series(1, 2000) AS i"
    )
    config = MigrationConfig(parallel_execution=True, max_workers=workers, batch_size=100)

    [result] = await Migrator(brainmigrate_pool, [ShoutNotes], config=config).run_pending()

    assert result.items_processed == 2000
    counts = dict(await brainmigrate_pool.fetch("SELECT writes, count(*) FROM notes GROUP BY writes"))
    assert counts == {1: 2000}
    assert await brainmigrate_pool.fetchval("SELECT count(*) FROM notes WHERE body <> upper(body)") == 0
    bounds = await brainmigrate_pool.fetch(
        "SELECT lower_key, upper_key FROM brainmigrate.data_chunks ORDER BY chunk"
    )
    uppers = [int(row["upper_key"]) for row in bounds if row["upper_key"] is not None]
    assert uppers == sorted(uppers) and len(set(uppers)) == len(uppers)
