"""The verbs that write the project's files: ``init`` (a migrations package and its setting),
``new`` (a migration module) and ``squash`` (one migration replacing an applied chain)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import output
from ..exit_codes import OK

_INIT_PACKAGE = '''"""Migrations, found by brainmigrate: each module defines Migration subclasses."""
'''


def init(args: argparse.Namespace) -> int:
    """Create a migrations package and point ``[tool.brainmigrate] migrations`` at it."""
    from brainmigrate import ConfigError

    directory = Path(args.directory)
    pyproject = Path("pyproject.toml")
    if directory.exists():
        raise ConfigError(f"{directory} exists already; init creates it, so it leaves it alone")
    if "migrations" in _settings():
        raise ConfigError("pyproject.toml has a [tool.brainmigrate] migrations setting already")
    text = pyproject.read_text() if pyproject.is_file() else ""
    setting = f'migrations = "{directory.as_posix()}"\n'
    if "[tool.brainmigrate]" in text:
        text = text.replace("[tool.brainmigrate]\n", "[tool.brainmigrate]\n" + setting, 1)
    else:
        text += ("\n" if text and not text.endswith("\n\n") else "") + "[tool.brainmigrate]\n" + setting
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text(_INIT_PACKAGE)
    pyproject.write_text(text)
    if args.json:
        output.print_json({"package": directory.as_posix(), "pyproject": str(pyproject)})
    else:
        output.say(f"created {directory.as_posix()}/ and set [tool.brainmigrate] migrations in {pyproject}")
    return OK


def _settings() -> dict[str, Any]:
    from ..settings import pyproject_settings

    return pyproject_settings()


def new(args: argparse.Namespace) -> int:
    """Write a new migration module of KIND, depending on the heads; no database needed."""
    import os

    from brainmigrate import ConfigError, write_migration
    from brainmigrate._authoring.templates import migrations_directory
    from brainmigrate._catalog.loader import configured_source

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a package's dotted name resolves from here, as upgrade's does
    if args.directory:
        directory, source = Path(args.directory), None
    else:
        try:
            source = args.migrations or configured_source()
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or pass --migrations or --directory to new") from None
        directory = migrations_directory(source)
    path = write_migration(
        args.kind,
        args.name,
        directory=directory,
        migration_id=args.migration_id,
        version=args.migration_version,
        migrations=source,
    )
    if args.json:
        output.print_json({"path": str(path), "kind": args.kind})
    else:
        output.say(f"wrote {path}")
    return OK


async def squash(args: argparse.Namespace) -> int:
    """Write one migration replacing the applied chain FROM..TO, next to the migrations."""
    from ..settings import migrator

    async with migrator(args) as m:
        path = await m.squash(args.from_id, args.to_id, migration_id=args.squash_id)
    if args.json:
        output.print_json({"path": str(path), "from": args.from_id, "to": args.to_id})
    else:
        output.say(f"wrote {path}: it replaces {args.from_id}..{args.to_id}")
    return OK
