"""The HTTP API, from the optional ``http`` extra (``pip install 'brainmigrate[http]'``)::

    from brainmigrate.http import BearerAuth, migrations_router

    app.mount(
        "/migrations",
        migrations_router(migrator, auth=BearerAuth(admin_token=admin, read_token=reader)),
    )

A plain Starlette application, so it mounts in Starlette and in FastAPI alike. ``auth`` may also
be the host's own callable ``(request) -> Actor | None``, sync or async.
"""

try:
    import starlette as _starlette  # noqa: F401
except ImportError as _exc:
    from ._errors import ConfigError as _ConfigError

    raise _ConfigError(
        "brainmigrate.http needs Starlette, which is not installed: pip install 'brainmigrate[http]'"
    ) from _exc

from ._http.auth import Actor, BearerAuth
from ._http.router import migrations_router

__all__ = ["Actor", "BearerAuth", "migrations_router"]
