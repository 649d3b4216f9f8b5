"""The environments ``[tool.brainmigrate.envs]`` names: each a DSN, or the variable holding one.

::

    [tool.brainmigrate.envs]
    dev = "postgresql://localhost/dev"
    staging = { dsn_env = "STAGING_DATABASE_URL", requires = "dev" }
    production = { dsn_env = "PRODUCTION_DATABASE_URL", requires = "staging" }

A string is a DSN, or with a leading ``$`` the name of a variable (``"$STAGING_DATABASE_URL"``).
A password never belongs in the file: a DSN there that holds one is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from .._errors import ConfigError

_WHERE = "[tool.brainmigrate.envs]"
_KEYS = frozenset({"dsn", "dsn_env", "requires"})
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=", re.IGNORECASE)
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@attrs.frozen(kw_only=True)
class Environment:
    """One named database: its DSN (or the variable holding it), and the environment whose migrations
    must have completed first (``requires``), if any."""

    name: str
    #: The DSN itself (never shown: it may hold a password when given in code).
    dsn: str | None = attrs.field(default=None, repr=False)
    #: The name of the environment variable holding the DSN.
    dsn_env: str | None = None
    #: An environment each migration must have completed in, with the same checksum, before this one.
    requires: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"an environment's name must be a non-empty string, got {self.name!r}")
        if (self.dsn is None) == (self.dsn_env is None):
            raise ConfigError(
                f"environment {self.name!r} needs exactly one of dsn (the DSN) and dsn_env (the name of "
                "the environment variable holding it)"
            )

    def resolve_dsn(self, environ: Mapping[str, str] | None = None) -> str:
        """The DSN: ``dsn``, or the value of the variable ``dsn_env`` (a ConfigError when it is unset)."""
        if self.dsn is not None:
            return self.dsn
        assert self.dsn_env is not None
        value = (os.environ if environ is None else environ).get(self.dsn_env)
        if not value:
            raise ConfigError(
                f"environment {self.name!r} takes its DSN from ${self.dsn_env}, which is not set here; "
                f"set {self.dsn_env} to the environment's DSN"
            )
        return value


def has_password(dsn: str) -> bool:
    """Whether a DSN (a URI or ``key=value`` pairs) holds a password (an empty one, as in
    ``user:@host``, holds none)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        try:
            password = parts.password
        except ValueError:
            password = None
        return bool(password) or "password" in {key.lower() for key in parse_qs(parts.query)}
    return bool(_KEYWORD_PASSWORD.search(dsn))


def load_environments(settings: Mapping[str, Any]) -> dict[str, Environment]:
    """The environments of a ``[tool.brainmigrate.envs]`` table, checked (a ConfigError says what
    is wrong: a password in a DSN, an unknown key, a ``requires`` naming no environment, a cycle)."""
    if not isinstance(settings, Mapping):
        raise ConfigError(f"{_WHERE} must be a table of environments, name = DSN or name = {{ ... }}")
    environments = {name: _environment(name, value) for name, value in settings.items()}
    for environment in environments.values():
        _check_requires(environment, environments)
    return environments


def _environment(name: Any, value: Any) -> Environment:
    where = f"{_WHERE} {name}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{_WHERE} has an environment whose name is not a non-empty string: {name!r}")
    if isinstance(value, str):
        value = {"dsn_env": value[1:]} if value.startswith("$") else {"dsn": value}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f'{where} must be a DSN, "$VARIABLE" or a table such as {{ dsn_env = "VARIABLE", '
            f'requires = "staging" }}, got {value!r}'
        )
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; the keys are dsn, dsn_env and requires")
    for key in _KEYS:
        if key in value and (not isinstance(value[key], str) or not value[key]):
            raise ConfigError(f"{where}: {key} must be a non-empty string")
    dsn, variable = value.get("dsn"), value.get("dsn_env")
    if dsn is not None and has_password(dsn):
        raise ConfigError(
            f"{where}: the DSN holds a password, which must not be written in pyproject.toml; remove it "
            f'and give the DSN in an environment variable instead (dsn_env = "VARIABLE"), or let '
            "libpq find the password (PGPASSWORD, ~/.pgpass)"
        )
    if variable is not None and not _VARIABLE.fullmatch(variable):
        raise ConfigError(f"{where}: dsn_env must name an environment variable, got {variable!r}")
    if dsn is None and variable is None:
        raise ConfigError(f"{where} needs dsn or dsn_env")
    if dsn is not None and variable is not None:
        raise ConfigError(f"{where} gives both dsn and dsn_env; keep one")
    return Environment(name=name, dsn=dsn, dsn_env=variable, requires=value.get("requires"))


def _check_requires(environment: Environment, environments: Mapping[str, Environment]) -> None:
    seen = [environment.name]
    current = environment
    while current.requires is not None:
        if current.requires not in environments:
            raise ConfigError(
                f"{_WHERE} {current.name} requires {current.requires!r}, which is not an environment "
                f"there (they are {', '.join(sorted(environments))})"
            )
        if current.requires in seen:
            cycle = " -> ".join([*seen, current.requires])
            raise ConfigError(f"{_WHERE}: the requires of environments go round in a cycle: {cycle}")
        seen.append(current.requires)
        current = environments[current.requires]
