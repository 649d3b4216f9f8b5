"""The ``serve`` verb: the HTTP API, mounted at /migrations, under uvicorn."""

from __future__ import annotations

import argparse

from .. import output
from ..exit_codes import OK

ADMIN_TOKEN_VARIABLE = "BRAINMIGRATE_ADMIN_TOKEN"
READ_TOKEN_VARIABLE = "BRAINMIGRATE_READ_TOKEN"


async def serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API, mounted at /migrations, with uvicorn until stopped (Ctrl-C)."""
    import os

    from brainmigrate import ConfigError

    admin_token = os.environ.get(ADMIN_TOKEN_VARIABLE)
    if not admin_token:
        raise ConfigError(
            f"serve needs an admin token: set ${ADMIN_TOKEN_VARIABLE} (and ${READ_TOKEN_VARIABLE} for "
            "read-only access) to a secret of at least 16 characters, such as the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount

        from brainmigrate.http import BearerAuth, migrations_router
    except ImportError as exc:
        raise ConfigError(
            f"serve needs uvicorn and starlette: pip install 'brainmigrate[serve]' ({exc})"
        ) from exc
    from ..settings import migrator

    auth = BearerAuth(admin_token=admin_token, read_token=os.environ.get(READ_TOKEN_VARIABLE) or None)
    async with migrator(args) as m:
        router = migrations_router(m, auth=auth)
        app = Starlette(routes=[Mount("/migrations", app=router)])
        config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="off", log_level="info")
        output.say(f"serving the HTTP API at http://{args.host}:{args.port}/migrations")
        try:
            await uvicorn.Server(config).serve()
        finally:
            await router.state.runs.aclose()  # a run stopped here stays resumable
    return OK
