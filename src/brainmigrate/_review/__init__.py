"""Reviewing migrations before they run: conflicts, drift and unsafe DDL (``Migrator.check()``)."""
