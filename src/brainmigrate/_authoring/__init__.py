"""Writing migrations: new migration modules from one template per kind (``templates``)."""

#: The kinds of migration ``write_migration`` writes, and what each is. Here, not in ``templates``,
#: so that the command line's parser names them without importing the rest.
MIGRATION_KINDS: dict[str, str] = {
    "schema": "DatabaseSchemaMigration: SQL statements up and down",
    "python": "Migration: async up() and down() in Python",
    "data": "DatabaseDataMigration: a transform over a table's rows, in batches",
    "memory": "MemoryDataMigration: a transform over memories, in batches",
    "structure": "MemoryStructureMigration: declared reshaping of a JSONB column",
    "hybrid": "HybridMigration: expand, backfill, validate, contract",
}
