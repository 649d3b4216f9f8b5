"""Migrations of the Second Brain memory store: its schema, then data and structure migrations.

Use them with ``Migrator(pool, migrations="second_brain.migrations")`` (every submodule is searched)
or with the path of this directory. File names are for readers: the run order comes from each
migration's ``dependencies`` first, then from its ``version``, compared as a version ("2.10.0"
runs after "2.9.0").

| file | id | version | what it does |
|---|---|---|---|
| 001 | enable_pgvector_001 | 2.1.0 | the ``vector`` extension |
| 002 | create_memories_001 | 2.2.0 | the ``memory_type`` enum and the ``memories`` table |
| 003 | index_memory_metadata_001 | 2.3.0 | a GIN index on ``metadata``, built concurrently |
| 004 | index_memory_embeddings_001 | 2.4.0 | an HNSW cosine index on ``embedding`` |
| 005 | add_user_preferences_001 | 2.6.0 | the ``user_preferences`` table |
| 006 | index_importance_by_type_001 | 2.9.0 | one partial index per memory type (Python) |
| 007 | touch_memories_updated_at_001 | 2.10.0 | a trigger keeping ``updated_at`` current |
| 008 | enrich_memories_with_sentiment_001 | 2.11.0 | ``metadata.sentiment`` on every memory (data) |
| 009 | nest_memory_metadata_001 | 2.12.0 | nests ``metadata.sentiment`` under ``analysis`` (structure) |

008 is a ``MEMORY_DATA`` migration: run the schema first with
``run_pending(MigrationType.DATABASE_SCHEMA)`` and the data later with
``run_pending(MigrationType.MEMORY_DATA)``, or everything at once with ``run_pending()``. 009 is a
``MEMORY_STRUCTURE`` migration, reshaping the metadata 008 wrote, on the server.
"""
