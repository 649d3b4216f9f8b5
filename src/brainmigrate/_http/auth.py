"""Who calls: bearer tokens compared in constant time, or the host application's own callable."""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import attrs
from starlette.requests import Request

from .._errors import ConfigError
from .errors import HTTPProblem

#: The shortest token :class:`BearerAuth` accepts: a guessable token is no protection.
MIN_TOKEN_LENGTH = 16

_CHALLENGE = 'Bearer realm="brainmigrate"'


def _name(_instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"Actor.{attribute.name} must be a non-empty string, got {value!r}")


def _flag(_instance: Any, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"Actor.{attribute.name} must be True or False, got {value!r}")


@attrs.frozen(kw_only=True)
class Actor:
    """Who makes a request: ``name`` goes into the history rows it causes; only an ``admin`` may
    change anything (every POST), anyone authenticated may read."""

    name: str = attrs.field(validator=_name)
    admin: bool = attrs.field(validator=_flag)


def _token(_instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.name == "read_token":
        return
    if not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH or value != value.strip():
        raise ConfigError(
            f"BearerAuth.{attribute.name} must be a string of at least {MIN_TOKEN_LENGTH} characters "
            "without surrounding whitespace; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if not value.isascii() or not value.isprintable():
        raise ConfigError(
            f"BearerAuth.{attribute.name} must be printable ASCII (it travels in an HTTP header)"
        )


def _distinct(instance: BearerAuth, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value == instance.admin_token:
        raise ConfigError(
            "BearerAuth.read_token equals admin_token, so readers could change the database; "
            "give readers a token of their own"
        )


@attrs.frozen(kw_only=True, repr=False)
class BearerAuth:
    """``Authorization: Bearer <token>``: the admin token may do anything, the read token may only
    read (GET). Tokens are compared in constant time; neither appears in ``repr()``.

    The actors are named ``admin_name`` and ``read_name`` in history.
    """

    admin_token: str = attrs.field(validator=_token)
    read_token: str | None = attrs.field(default=None, validator=[_token, _distinct])
    admin_name: str = attrs.field(default="http-admin", validator=_name)
    read_name: str = attrs.field(default="http-reader", validator=_name)

    def __repr__(self) -> str:
        return f"BearerAuth(admin_name={self.admin_name!r}, read_name={self.read_name!r})"

    def __call__(self, request: Request) -> Actor | None:
        """The actor whose token the request carries, or None for a missing or unknown token."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode("utf-8", "surrogateescape")
        # Both comparisons always run, so the time taken tells nothing about which token matched.
        is_admin = hmac.compare_digest(given, self.admin_token.encode())
        is_reader = self.read_token is not None and hmac.compare_digest(given, self.read_token.encode())
        if is_admin:
            return Actor(name=self.admin_name, admin=True)
        if is_reader:
            return Actor(name=self.read_name, admin=False)
        return None


#: The host application's own authentication: the actor of a request, or None (401).
AuthCallable: TypeAlias = Callable[[Request], "Actor | Awaitable[Actor | None] | None"]


async def authenticate(auth: AuthCallable, request: Request, *, admin: bool) -> Actor:
    """The request's actor; HTTPProblem 401 when there is none, 403 when ``admin`` is needed but the
    actor is a reader."""
    found = auth(request)
    actor = await found if inspect.isawaitable(found) else found
    if actor is None:
        missing = "authorization" not in request.headers
        raise HTTPProblem(
            401,
            "AuthenticationRequired",
            "this endpoint needs an Authorization: Bearer <token> header"
            if missing
            else "the credentials given are not valid; send a valid Authorization: Bearer <token> header",
            headers={"WWW-Authenticate": _CHALLENGE if missing else f'{_CHALLENGE}, error="invalid_token"'},
        )
    if not isinstance(actor, Actor):
        raise TypeError(f"the auth callable must return an Actor or None, got {actor!r}")
    if admin and not actor.admin:
        raise HTTPProblem(
            403,
            "PermissionDenied",
            f"{actor.name!r} may only read; changing migrations needs an admin token",
        )
    return actor
