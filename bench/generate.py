"""Writes the same chain of small schema migrations for brainmigrate and for Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config


def table(index: int) -> str:
    return f"t_{index:04d}"


def forward_sql(index: int) -> str:
    return f"CREATE TABLE {table(index)} (id int PRIMARY KEY, v text)"


def rollback_sql(index: int) -> str:
    return f"DROP TABLE {table(index)}"


def migration_id(index: int) -> str:
    return f"m{index:04d}"


_BRAINMIGRATE_FILE = '''\
"""Create {table}."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class Create{Table}(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id={id!r},
            name="Create {table}",
            version="1.{index}",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies={dependencies!r},
        )

    async def get_forward_statements(self) -> list[str]:
        return [{forward!r}]

    async def get_rollback_statements(self) -> list[str]:
        return [{rollback!r}]
'''


def write_brainmigrate_migrations(directory: Path, count: int) -> Path:
    """One file per migration, each depending on the previous one."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = _BRAINMIGRATE_FILE.format(
            table=table(i),
            Table=table(i).replace("_", "").title(),
            id=migration_id(i),
            index=i,
            dependencies=[migration_id(i - 1)] if i else [],
            forward=forward_sql(i),
            rollback=rollback_sql(i),
        )
        (directory / f"{migration_id(i)}_create_{table(i)}.py").write_text(source)
    return directory


_ALEMBIC_ENV = '''\
"""Runs on the connection the caller shares through ``config.attributes["connection"]``."""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    transaction_per_migration=config.attributes.get("transaction_per_migration", False),
)
with context.begin_transaction():
    context.run_migrations()
'''

_ALEMBIC_REVISION = '''\
"""Create {table}."""

from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute({forward!r})


def downgrade() -> None:
    op.execute({rollback!r})
'''


def write_alembic_project(directory: Path, count: int) -> Path:
    """An Alembic script directory (env.py and a linear chain of revisions); returns its path."""
    versions = directory / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (directory / "env.py").write_text(_ALEMBIC_ENV)
    for i in range(count):
        source = _ALEMBIC_REVISION.format(
            table=table(i),
            revision=migration_id(i),
            down_revision=migration_id(i - 1) if i else None,
            forward=forward_sql(i),
            rollback=rollback_sql(i),
        )
        (versions / f"{migration_id(i)}_create_{table(i)}.py").write_text(source)
    return directory


def alembic_config(script_location: Path, *, transaction_per_migration: bool = False) -> Config:
    """An in-memory Alembic configuration (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("path_separator", "os")
    config.attributes["transaction_per_migration"] = transaction_per_migration
    return config
