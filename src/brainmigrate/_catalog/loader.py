"""Finding the migrations a Migrator runs: classes, modules, packages or directories."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
import tomllib
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import attrs

from .._errors import ConfigError, MigrationLoadError, MigrationValidationError
from .._model.hybrid import HybridMigration
from .._model.migration import Migration

#: What ``Migrator(pool, migrations=...)`` accepts.
MigrationSource: TypeAlias = (
    "str | os.PathLike[str] | types.ModuleType | Iterable[type[Migration] | Migration]"
)

ENV_VARIABLE = "BRAINMIGRATE_MIGRATIONS"

logger = logging.getLogger("brainmigrate")


def configured_source(cwd: Path | None = None) -> str:
    """The source named by ``$BRAINMIGRATE_MIGRATIONS``, else by ``[tool.brainmigrate]`` in pyproject."""
    value = os.environ.get(ENV_VARIABLE)
    if value:
        return value
    pyproject = (cwd or Path.cwd()) / "pyproject.toml"
    if pyproject.is_file():
        try:
            settings = tomllib.loads(pyproject.read_text()).get("tool", {}).get("brainmigrate", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from exc
        value = settings.get("migrations")
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"[tool.brainmigrate] migrations in {pyproject} must be a non-empty string")
            return value
    raise ConfigError(
        "no migrations given: pass Migrator(pool, migrations=...), set [tool.brainmigrate] migrations = "
        f'"myapp.migrations" in pyproject.toml, or set ${ENV_VARIABLE}'
    )


def load_migrations(source: Any, pool: Any) -> list[tuple[Migration, str]]:
    """Instantiate every migration in ``source``; each comes with a label naming where it was found.

    The steps of hybrid migrations are left out: they run as part of their hybrid, never on their own.
    So are migrations a squash migration replaces (``MigrationMetadata.replaces``), whose files may
    still be there; dependencies on them become dependencies on the squash.
    """
    loaded = list(_instances(source, pool))
    owned = {
        cls
        for migration, _ in loaded
        if isinstance(migration, HybridMigration)
        for cls in migration.step_classes()
    }
    return _without_replaced(
        [(migration, label) for migration, label in loaded if type(migration) not in owned]
    )


def _without_replaced(loaded: list[tuple[Migration, str]]) -> list[tuple[Migration, str]]:
    """Hide the migrations squash migrations replace; point dependencies on them at the squash."""
    squash_of: dict[str, str] = {}
    for migration, label in loaded:
        meta = migration.metadata
        for replaced in meta.replaces:
            if replaced == meta.id or replaced in meta.dependencies:
                where = "its own id" if replaced == meta.id else "one of its dependencies too"
                raise MigrationValidationError(
                    f"squash migration {meta.id!r} ({label}) replaces {replaced!r}, {where}; a squash "
                    "replaces other migrations and depends on what they depended on: remove "
                    f"{replaced!r} from its replaces",
                    migration_id=meta.id,
                )
            if squash_of.setdefault(replaced, meta.id) != meta.id:
                raise MigrationValidationError(
                    f"migrations {squash_of[replaced]!r} and {meta.id!r} both replace {replaced!r}; a "
                    "migration is replaced by one squash only: remove it from one of the replaces lists",
                    migration_id=meta.id,
                )
    if not squash_of:
        return loaded
    kept: list[tuple[Migration, str]] = []
    for migration, label in loaded:
        meta = migration.metadata
        if meta.id in squash_of:
            logger.debug("migration %s is replaced by %s: left out", meta.id, squash_of[meta.id])
            continue
        dependencies = tuple(dict.fromkeys(squash_of.get(dep, dep) for dep in meta.dependencies))
        if dependencies != meta.dependencies:
            # Metadata is not part of the checksum, so the migration's checksum stays as it was.
            migration._metadata = attrs.evolve(meta, dependencies=dependencies)
        kept.append((migration, label))
    return kept


def _instances(source: Any, pool: Any) -> Iterator[tuple[Migration, str]]:
    if isinstance(source, types.ModuleType):
        yield from _from_classes(_classes_in_package_or_warn(source), pool)
    elif isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            files: list[Path] = []
            classes = _classes_in_directory(path, files)
            if not classes:
                _nothing_found(f"directory {text!r}", f"searched {len(files)} .py files", plural=True)
            yield from _from_classes(classes, pool)
        elif path.suffix == ".py" and path.is_file():
            classes = _classes_defined_in(_import_file(path))
            if not classes:
                _nothing_found(f"file {text!r}", "searched that file only", plural=False)
            yield from _from_classes(classes, pool)
        elif _looks_like_module_name(text):
            yield from _from_classes(_classes_in_package_or_warn(_import(text)), pool)
        else:
            raise ConfigError(f"migrations {text!r} is neither a directory, a .py file nor a module name")
    elif isinstance(source, Iterable):
        for item in source:
            if isinstance(item, Migration):
                yield item, _label(type(item))
            elif isinstance(item, type) and issubclass(item, Migration):
                yield from _from_classes([item], pool)
            else:
                raise MigrationValidationError(f"{item!r} is not a Migration subclass or instance")
    else:
        raise ConfigError(
            f"migrations must be a module, a dotted name, a directory or a list, got {source!r}"
        )


def _from_classes(classes: Iterable[type[Migration]], pool: Any) -> Iterator[tuple[Migration, str]]:
    for cls in classes:
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise MigrationValidationError(
                f"{_label(cls)} cannot be instantiated: it does not define {missing}"
            )
        yield cls(pool), _label(cls)


def _label(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _looks_like_module_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _import(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise MigrationLoadError(
            f"could not import migrations module {name!r}: {type(exc).__name__}: {exc}", module=name
        ) from exc


def _import_file(path: Path) -> types.ModuleType:
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"brainmigrate_migrations_{digest}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise MigrationLoadError(f"cannot load migrations file {path}", module=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise MigrationLoadError(
            f"could not import migrations file {path}: {type(exc).__name__}: {exc}", module=str(path)
        ) from exc
    return module


def _classes_in_package(module: types.ModuleType, searched: list[str] | None = None) -> list[type[Migration]]:
    """The migrations defined in ``module`` and its submodules; ``searched`` gets the modules' names."""
    seen = searched if searched is not None else []
    seen.append(module.__name__)
    classes = _classes_defined_in(module)
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{module.__name__}.", onerror=_raise_load):
            seen.append(info.name)
            classes.extend(_classes_defined_in(_import(info.name)))
    return classes


def _classes_in_package_or_warn(module: types.ModuleType) -> list[type[Migration]]:
    """Like :func:`_classes_in_package`, warning when nothing is found (a wrong or empty package)."""
    searched: list[str] = []
    classes = _classes_in_package(module, searched)
    name = module.__name__
    if not classes:
        if not hasattr(module, "__path__"):
            _nothing_found(f"module {name!r}", f"searched {name}, which is not a package", plural=False)
        elif len(searched) == 1:
            _nothing_found(f"package {name!r}", f"searched {name}, no submodules", plural=True)
        else:
            shown = ", ".join(searched[:_SHOWN])
            more = f" and {len(searched) - _SHOWN} more" if len(searched) > _SHOWN else ""
            _nothing_found(f"package {name!r}", f"searched {shown}{more}", plural=True)
    return classes


#: How many searched modules a warning names.
_SHOWN = 10


def _nothing_found(where: str, searched: str, *, plural: bool) -> None:
    """Warn that a source yielded no migrations: probably a wrong name, or migrations not written yet."""
    logger.warning(
        "no migrations found in %s (%s); a migration is a concrete Migration subclass defined in %s",
        where,
        searched,
        "one of them" if plural else "it",
    )


def _raise_load(name: str) -> None:
    _import(name)  # re-raises the import error as MigrationLoadError naming the module


def _classes_in_directory(directory: Path, searched: list[Path] | None = None) -> list[type[Migration]]:
    """The migrations defined in the directory's ``.py`` files; ``searched`` gets the files read."""
    classes: list[type[Migration]] = []
    for path in sorted(directory.rglob("*.py")):
        if not any(part.startswith((".", "_")) for part in path.relative_to(directory).parts):
            if searched is not None:
                searched.append(path)
            classes.extend(_classes_defined_in(_import_file(path)))
    return classes


def _classes_defined_in(module: types.ModuleType) -> list[type[Migration]]:
    """Concrete Migration subclasses defined in the module itself (not imported into it)."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Migration)
        and value.__module__ == module.__name__
        and not inspect.isabstract(value)
    ]
