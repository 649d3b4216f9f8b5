"""The Second Brain memory store: an AI memory kept in PostgreSQL with pgvector."""
