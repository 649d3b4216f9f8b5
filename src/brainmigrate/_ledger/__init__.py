"""The ledger: brainmigrate's own state in the database (schema, history, lock, sessions)."""
