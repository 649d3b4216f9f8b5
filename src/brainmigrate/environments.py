"""Environments side by side, and the promotion guard between them::

    from brainmigrate.environments import compare_environments, load_environments

    environments = load_environments({"staging": {"dsn_env": "STAGING_DATABASE_URL"}})
    report = await compare_environments(environments, "myapp.migrations")

Environments are read only: no lock is taken and nothing is written in any of them.
"""

from ._environments.config import Environment, load_environments
from ._environments.guard import check_promotion
from ._environments.read import EnvironmentReading, EnvironmentState
from ._environments.report import EnvironmentsReport, MigrationSync, compare_environments

__all__ = [
    "Environment",
    "EnvironmentReading",
    "EnvironmentState",
    "EnvironmentsReport",
    "MigrationSync",
    "check_promotion",
    "compare_environments",
    "load_environments",
]
