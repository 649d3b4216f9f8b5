"""pytest plugin for brainmigrate: throwaway PostgreSQL databases, reversibility checks and the
standard checks (``from pytest_brainmigrate import StandardChecks as TestMigrations``)."""

from .checks import StandardChecks

__all__ = ["StandardChecks"]
