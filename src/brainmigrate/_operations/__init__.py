"""What each of the Migrator's methods does, one module per kind of operation; ``_migrator`` is the façade."""
