"""The catalog: finding migrations and ordering them (loader, dependency graph)."""
