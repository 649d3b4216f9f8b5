"""The ``brainmigrate`` command: its parser, and the dispatch of verbs with their exit codes.

Exit codes: 0 success; 1 a migration failed or was refused; 2 a usage error; 3 no database
connection, or a configuration error; 4 ``status --check`` found pending or dirty migrations;
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .exit_codes import FAILED, INTERRUPTED, UNAVAILABLE, USAGE

_EPILOG = """\
exit codes:
  0  success
  1  a migration failed or was refused, or check found an error
  2  usage error
  3  cannot connect to the database, or a configuration error
  4  status --check: migrations are pending or dirty
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brainmigrate")
    except PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        return "0.0.0"


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every verb takes, before or after the verb (after it, they leave defaults alone)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--dsn", default=default(None), help="PostgreSQL DSN (else $BRAINMIGRATE_DSN, else pyproject)"
    )
    group.add_argument(
        "--embedded",
        action="store_true",
        default=default(False),
        help="use the embedded PostgreSQL for local development",
    )
    group.add_argument(
        "--data-dir",
        default=default(None),
        metavar="PATH",
        help="the embedded PostgreSQL's data directory (default: .brainmigrate/postgres)",
    )
    group.add_argument(
        "--migrations",
        default=default(None),
        help="a package, module, directory or .py file (else $BRAINMIGRATE_MIGRATIONS, else pyproject)",
    )
    group.add_argument(
        "--schema",
        default=default(None),
        help="the schema of brainmigrate's history tables (else $BRAINMIGRATE_SCHEMA, else pyproject, "
        "else brainmigrate)",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="output JSON")
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks of errors"
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``brainmigrate`` command."""
    parser = argparse.ArgumentParser(
        prog="brainmigrate",
        description="Safe, async migrations for PostgreSQL-backed AI memory stores.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"brainmigrate {_version()}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, description=help, parents=[common])

    init = verb("init", "create a migrations package and the [tool.brainmigrate] setting")
    init.add_argument("directory", nargs="?", default="migrations", help="default: migrations")
    status = verb("status", "pending, applied, dirty and running migrations")
    status.add_argument(
        "--check", action="store_true", help="exit 4 when anything is pending or dirty (a readiness probe)"
    )
    status.add_argument(
        "--since",
        metavar="WHEN",
        help="the success rate and rollback time over attempts since WHEN: a span back (24h, 7d) or an "
        "ISO time (default: all history)",
    )
    upgrade = verb("upgrade", "apply pending migrations (up to and including ID)")
    upgrade.add_argument("id", nargs="?", metavar="ID")
    upgrade.add_argument("--dry-run", action="store_true", help="print the SQL and sampled diffs only")
    upgrade.add_argument("--type", metavar="TYPE", help="only migrations of this type (e.g. database_schema)")
    upgrade.add_argument(
        "--env",
        metavar="NAME",
        help="the environment of [tool.brainmigrate.envs] to migrate (its DSN; refused unless each "
        "migration completed in the environment it requires)",
    )
    upgrade.add_argument(
        "--executor",
        choices=("in-process", "ray"),
        default="in-process",
        help="where data migrations' workers run: in this process (default), or as Ray actors "
        "(needs brainmigrate[ray])",
    )
    upgrade.add_argument("--workers", type=int, metavar="N", help="Ray actors working on a data run (4)")
    upgrade.add_argument("--num-gpus", type=float, metavar="G", help="GPUs each Ray actor needs (0)")
    downgrade = verb("downgrade", "roll back a migration")
    downgrade.add_argument("id", metavar="ID")
    downgrade.add_argument("--cascade", action="store_true", help="first roll back its applied dependents")
    verb("history", "every recorded attempt, oldest first")
    verb("show", "one migration: status, attempts, progress or phase").add_argument("id", metavar="ID")
    progress = verb("progress", "how far a data migration's run got (from any process)")
    progress.add_argument("id", metavar="ID")
    progress.add_argument("--watch", action="store_true", help="follow the run live until it stops")
    progress.add_argument("--interval", type=float, default=1.0, help="seconds between reads (--watch)")
    verb("cancel", "stop a running data migration at its next batch").add_argument("id", metavar="ID")
    verb("resume", "carry on a cancelled or failed migration").add_argument("id", metavar="ID")
    verb("retry-failed", "transform a data migration's failed items again").add_argument("id", metavar="ID")
    verb("contract", "run a hybrid migration's contract steps").add_argument("id", metavar="ID")
    abandon = verb("abandon", "give up a stuck hybrid migration's run")
    abandon.add_argument("id", metavar="ID")
    abandon.add_argument("--reason", required=True, help="why, for the history record")
    abandon.add_argument("--actor", metavar="NAME", help="who, for the history record (default: you)")
    stamp = verb("stamp", "record a migration (and its dependencies) as applied without running it")
    stamp.add_argument("id", metavar="ID")
    stamp.add_argument("--reason", metavar="TEXT", help="why, for the history record")
    stamp.add_argument("--actor", metavar="NAME", help="who, for the history record (default: you)")
    squash = verb("squash", "write one migration replacing the applied chain FROM..TO")
    squash.add_argument("from_id", metavar="FROM")
    squash.add_argument("to_id", metavar="TO")
    squash.add_argument("--id", dest="squash_id", metavar="ID", help="the new migration's id")
    new = verb("new", "write a new migration module, depending on the current heads")
    new.add_argument("kind", choices=_migration_kinds(), metavar="KIND", help=", ".join(_migration_kinds()))
    new.add_argument("name", metavar="NAME", help="snake_case, such as add_memory_topics")
    new.add_argument("--id", dest="migration_id", metavar="ID", help="the id (default: NAME_001)")
    new.add_argument("--version", dest="migration_version", metavar="V", help="default: the next one")
    new.add_argument("--directory", metavar="DIR", help="where to write it (default: the migrations)")
    verb("check", "conflicts, checksum drift and unsafe DDL; exit 1 on an error")
    verb("envs", "each migration's status in every environment of [tool.brainmigrate.envs], read-only")
    timeline = verb("timeline", "write the migration timeline (every attempt) as one HTML file")
    timeline.add_argument(
        "--output", default="brainmigrate-timeline.html", metavar="FILE", help="default: %(default)s"
    )
    serve = verb(
        "serve",
        "serve the HTTP API at /migrations (tokens from $BRAINMIGRATE_ADMIN_TOKEN, $BRAINMIGRATE_READ_TOKEN)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s (this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    return parser


def _migration_kinds() -> list[str]:
    from brainmigrate._authoring import MIGRATION_KINDS

    return list(MIGRATION_KINDS)


def _verb(name: str) -> Callable[[argparse.Namespace], Any]:
    from . import verbs

    function: Callable[[argparse.Namespace], Any] = getattr(verbs, name.replace("-", "_"))
    return function


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return exc.code if isinstance(exc.code, int) else USAGE
    try:
        return _run(args)
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            raise
        from . import output

        if args.debug:
            import traceback

            traceback.print_exception(exc)
        output.error(str(_for_the_command_line(exc, getattr(args, "env", None))))
        return code


def _run(args: argparse.Namespace) -> int:
    import inspect

    function = _verb(args.verb)
    if not inspect.iscoroutinefunction(function):
        code: int = function(args)
        return code
    import anyio

    result: int = anyio.run(function, args)
    return result


def _for_the_command_line(exc: Exception, env: str | None = None) -> Exception:
    """The error as the command line names things: a DSN, not an application's pool."""
    from brainmigrate import DatabaseUnavailableError

    if isinstance(exc, DatabaseUnavailableError):
        origin = (
            f"environment {env!r} of [tool.brainmigrate.envs] (--env)"
            if env
            else "the DSN brainmigrate was given (--dsn, $BRAINMIGRATE_DSN or [tool.brainmigrate] dsn)"
        )
        return DatabaseUnavailableError(
            exc.server,
            exc.reason,
            origin=origin,
            remedy="the DSN names the right host, port, database, user and password",
        )
    return exc


def _exit_code(exc: BaseException) -> int | None:
    """The exit code of an error a user can cause; None for a bug (which keeps its traceback)."""
    from brainmigrate import BrainMigrateError, ConfigError, DatabaseUnavailableError, MigrationLoadError

    if isinstance(exc, ConfigError | DatabaseUnavailableError | MigrationLoadError | OSError):
        return UNAVAILABLE
    if isinstance(exc, BrainMigrateError | ValueError):
        return FAILED
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
