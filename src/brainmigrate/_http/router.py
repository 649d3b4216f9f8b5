"""The endpoints, on a plain Starlette application the host mounts (``app.mount("/migrations", ...)``).

Schema migrations (``DATABASE_SCHEMA``) and dry runs answer ``200`` with their results; every other
kind (data, memory, structure, hybrid) runs in the background of the serving process and answers
``202 Accepted`` with its progress URL.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .._errors import (
    BrainMigrateError,
    ConfigError,
    DependencyError,
    HybridPhaseError,
    MigrationStateError,
)
from .._migrator import Migrator
from .._model.jsonable import jsonable
from .._model.metadata import MigrationMetadata, MigrationStatus, MigrationType
from .._model.results import MigrationResult
from .._model.states import HybridPhase
from .auth import Actor, AuthCallable, authenticate
from .bodies import checked_id, config_from, json_object, migration_type
from .errors import HTTPProblem, error_response, problem_response, unexpected_response
from .openapi import openapi_document
from .runs import BackgroundRun, RunRegistry

#: The registry's key for a background ``execute-all`` (no migration id can hold a NUL).
ALL = "\0execute-all"
#: The phases a hybrid's contract can start (or carry on) from.
_CONTRACTABLE = (HybridPhase.READY_TO_CONTRACT, HybridPhase.CONTRACTING)
#: The statuses a run can be resumed from.
_RESUMABLE = (MigrationStatus.CANCELLED, MigrationStatus.FAILED)

Handler = Callable[[Request, Actor], Awaitable[Response]]


def migrations_router(migrator: Migrator, *, auth: AuthCallable) -> Starlette:
    """The HTTP API of ``migrator``, as a Starlette application to mount (in Starlette or FastAPI).

    ``auth`` is a :class:`BearerAuth` or the host's own callable ``(request) -> Actor | None``
    (sync or async). Reading (GET) needs an actor; every change (POST) needs an admin. The actor's
    name is recorded in the history rows its requests write. No CORS headers are sent.
    """
    if not isinstance(migrator, Migrator):
        raise ConfigError(f"migrations_router needs a Migrator, got {migrator!r}")
    if not callable(auth):
        raise ConfigError(
            "migrations_router needs auth: BearerAuth(admin_token=..., read_token=...) or a callable "
            f"(request) -> Actor | None, got {auth!r}"
        )
    api = _API(migrator, RunRegistry())

    def route(path: str, handler: Handler, method: str, *, admin: bool) -> Route:
        return Route(path, _guarded(handler, auth, admin=admin), methods=[method], name=handler.__name__)

    routes = [
        route("/pending", api.pending, "GET", admin=False),
        route("/history", api.history, "GET", admin=False),
        route("/running", api.running, "GET", admin=False),
        route("/progress/{migration_id:path}", api.progress, "GET", admin=False),
        route("/execute-all", api.execute_all, "POST", admin=True),
        route("/execute/{migration_id:path}", api.execute, "POST", admin=True),
        route("/rollback/{migration_id:path}", api.rollback, "POST", admin=True),
        route("/validate/{migration_id:path}", api.validate, "POST", admin=True),
        route("/cancel/{migration_id:path}", api.cancel, "POST", admin=True),
        route("/resume/{migration_id:path}", api.resume, "POST", admin=True),
        route("/contract/{migration_id:path}", api.contract, "POST", admin=True),
        route("/timeline/data", api.timeline_data, "GET", admin=False),
        Route("/timeline", _public(api.timeline), methods=["GET"], name="timeline"),
        Route("/openapi.json", _public(api.openapi), methods=["GET"], name="openapi"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    app.state.runs = api.runs
    return app


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, a method not allowed) as JSON errors."""
    assert isinstance(exc, HTTPException)
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    message = {
        404: f"no endpoint at {request.url.path}; GET openapi.json lists them",
        405: f"{request.method} is not allowed here; changes are POST only, reads GET only",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse(
        {"error": names.get(exc.status_code, "HTTPError"), "message": message},
        exc.status_code,
        headers=dict(exc.headers or {}),
    )


def _guarded(
    handler: Handler, auth: AuthCallable, *, admin: bool
) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            actor = await authenticate(auth, request, admin=admin)
            return await handler(request, actor)
        except HTTPProblem as problem:
            return problem_response(problem)
        except BrainMigrateError as exc:
            return error_response(exc)
        except Exception as exc:
            return unexpected_response(exc)

    return endpoint


def _public(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except BrainMigrateError as exc:
            return error_response(exc)
        except Exception as exc:
            return unexpected_response(exc)

    return endpoint


def _url(request: Request, *parts: str) -> str:
    """The URL path of ``parts`` under the router's mount point (ids percent-encoded)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + "/" + "/".join(quote(part, safe="") for part in parts)


def _no_fields(body: dict[str, Any]) -> None:
    if body:
        raise HTTPProblem(
            422,
            "InvalidRequestBody",
            f"unknown field {sorted(body)[0]!r}; this endpoint takes no fields (send no body, or {{}})",
        )


def _long(kind: MigrationType | None) -> bool:
    """Whether a migration of ``kind`` runs in the background (202) rather than in the request."""
    return kind is not None and kind is not MigrationType.DATABASE_SCHEMA


class _API:
    """The endpoints' bodies, on one Migrator and this process's registry of background runs."""

    def __init__(self, migrator: Migrator, runs: RunRegistry) -> None:
        self.migrator = migrator
        self.runs = runs

    # -- reading -------------------------------------------------------------------------------

    async def pending(self, request: Request, actor: Actor) -> Response:
        pending = await self.migrator.pending(migration_type(request))
        return JSONResponse({"migrations": jsonable(pending)})

    async def history(self, request: Request, actor: Actor) -> Response:
        return JSONResponse({"attempts": jsonable(await self.migrator.history())})

    async def running(self, request: Request, actor: Actor) -> Response:
        runs = await self.migrator.running()
        here = [_run_json(run) for run in self.runs.going()]
        return JSONResponse({"runs": jsonable(runs), "background": here})

    async def progress(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        status = await self.migrator.status(migration_id)
        try:
            progress = await self.migrator.progress(migration_id)
        except MigrationStateError:  # not a data migration
            progress = None
        try:
            hybrid = await self.migrator.hybrid_status(migration_id)
        except MigrationStateError:  # not a hybrid migration
            hybrid = None
        return JSONResponse(
            {
                "migration_id": migration_id,
                "status": status.value,
                "progress": jsonable(progress),
                "hybrid": jsonable(hybrid),
                "run": jsonable(self.runs.latest(migration_id)),
            }
        )

    async def validate(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        _no_fields(await json_object(request))
        return JSONResponse(jsonable(await self.migrator.validate(migration_id)))

    # -- changing ------------------------------------------------------------------------------

    async def execute(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        config, _ = config_from(await json_object(request), self.migrator.config)
        return await self._execute(request, actor, migration_id, config, "execute")

    async def resume(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        config, _ = config_from(await json_object(request), self.migrator.config)
        status = await self.migrator.status(migration_id)
        if status not in _RESUMABLE and not self.runs.active(migration_id):
            raise MigrationStateError(
                f"migration {migration_id!r} is {status.value}, so there is nothing to resume; only a "
                "cancelled or failed run resumes (execute runs a pending migration)",
                migration_id=migration_id,
            )
        return await self._execute(request, actor, migration_id, config, "resume")

    async def _execute(
        self, request: Request, actor: Actor, migration_id: str, config: Any, op: str
    ) -> Response:
        await self._refuse_running(migration_id)
        pending = {meta.id: meta for meta in await self.migrator.pending()}
        meta = pending.get(migration_id)
        if meta is not None:
            _refuse_missing_dependencies(meta, pending)
        if config.dry_run or not _long(meta.migration_type if meta else None):
            result = await self.migrator.execute(migration_id, config=config, actor=actor.name)
            return JSONResponse(jsonable(result))

        async def work() -> list[MigrationResult]:
            return [await self.migrator.execute(migration_id, config=config, actor=actor.name)]

        return self._accepted(request, migration_id, op, actor, work)

    async def execute_all(self, request: Request, actor: Actor) -> Response:
        kind = migration_type(request)
        config, _ = config_from(await json_object(request), self.migrator.config)
        pending = await self.migrator.pending(kind)
        if config.dry_run or not any(_long(meta.migration_type) for meta in pending):
            if self.runs.active(ALL):
                raise _all_running()
            results = await self.migrator.run_pending(kind, config, actor=actor.name)
            return JSONResponse({"results": jsonable(results)})
        if self.runs.active(ALL):
            raise _all_running()

        async def work() -> list[MigrationResult]:
            return await self.migrator.run_pending(kind, config, actor=actor.name)

        run = self.runs.start(ALL, "execute-all", actor.name, work)
        url = _url(request, "running")
        body = {**_run_json(run), "progress_url": url}
        return JSONResponse(body, 202, headers={"Location": url})

    async def rollback(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        config, extra = config_from(
            await json_object(request), self.migrator.config, extra={"cascade": "true or false"}
        )
        cascade = bool(extra.get("cascade", False))
        await self._refuse_running(migration_id)
        kinds = [r.migration_type for r in await self.migrator.history() if r.migration_id == migration_id]
        if config.dry_run or not _long(kinds[-1] if kinds else None):
            results = await self.migrator.rollback(
                migration_id, cascade=cascade, config=config, actor=actor.name
            )
            return JSONResponse({"results": jsonable(results)})
        status = await self.migrator.status(migration_id)
        if status in (MigrationStatus.PENDING, MigrationStatus.ROLLED_BACK):
            raise MigrationStateError(
                f"migration {migration_id!r} is not applied, so there is nothing to roll back",
                migration_id=migration_id,
            )

        async def work() -> list[MigrationResult]:
            return await self.migrator.rollback(
                migration_id, cascade=cascade, config=config, actor=actor.name
            )

        return self._accepted(request, migration_id, "rollback", actor, work)

    async def cancel(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        _no_fields(await json_object(request))
        status = await self.migrator.cancel(migration_id)
        return JSONResponse({"migration_id": migration_id, "status": status.value})

    async def contract(self, request: Request, actor: Actor) -> Response:
        migration_id = checked_id(request.path_params["migration_id"])
        config, _ = config_from(await json_object(request), self.migrator.config)
        await self._refuse_running(migration_id)
        pending = {meta.id: meta for meta in await self.migrator.pending()}
        meta = pending.get(migration_id)
        if config.dry_run or meta is None or meta.migration_type is not MigrationType.HYBRID:
            result = await self.migrator.contract(migration_id, config=config, actor=actor.name)
            return JSONResponse(jsonable(result))
        phase = (await self.migrator.hybrid_status(migration_id)).phase
        if phase not in _CONTRACTABLE:
            raise HybridPhaseError(
                f"cannot contract hybrid migration {migration_id!r} in phase "
                f"{phase.value if phase else 'never run'}: its contract runs once its backfill is "
                "validated (phase ready_to_contract); execute it first, and follow its progress",
                migration_id=migration_id,
                phase=phase.value if phase else None,
            )

        async def work() -> list[MigrationResult]:
            return [await self.migrator.contract(migration_id, config=config, actor=actor.name)]

        return self._accepted(request, migration_id, "contract", actor, work)

    # -- the timeline and the document ---------------------------------------------------------

    async def timeline(self, request: Request) -> Response:
        from .._timeline import timeline_page

        page = timeline_page(data_url=_url(request, "timeline", "data"), snapshot=None)
        return HTMLResponse(page, headers={"X-Content-Type-Options": "nosniff"})

    async def timeline_data(self, request: Request, actor: Actor) -> Response:
        from .._timeline import timeline_snapshot

        return JSONResponse(await timeline_snapshot(self.migrator))

    async def openapi(self, request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return JSONResponse(openapi_document(server_url=root or "/"))

    # -- machinery -----------------------------------------------------------------------------

    async def _refuse_running(self, migration_id: str) -> None:
        """409 while ``migration_id`` runs: in this process's background, or anywhere (the engine
        reports a data run with live workers; one whose workers all died is resumable instead)."""
        if self.runs.active(migration_id) or migration_id in {
            progress.migration_id for progress in await self.migrator.running() if progress.workers
        }:
            raise MigrationStateError(
                f"migration {migration_id!r} is running already; follow its progress, or cancel it "
                "first (cancel, then resume, is pause and resume)",
                migration_id=migration_id,
            )

    def _accepted(
        self,
        request: Request,
        migration_id: str,
        operation: str,
        actor: Actor,
        work: Callable[[], Awaitable[list[MigrationResult]]],
    ) -> Response:
        run = self.runs.start(migration_id, operation, actor.name, work)
        url = _url(request, "progress", migration_id)
        return JSONResponse({**jsonable(run), "progress_url": url}, 202, headers={"Location": url})


def _refuse_missing_dependencies(meta: MigrationMetadata, pending: dict[str, MigrationMetadata]) -> None:
    missing = [dep for dep in meta.dependencies if dep in pending]
    if missing:
        raise DependencyError(
            f"migration {meta.id!r} depends on {', '.join(map(repr, missing))}, not applied yet; "
            "apply those first or use execute-all",
            migration_id=meta.id,
        )


def _run_json(run: BackgroundRun) -> dict[str, Any]:
    """A background run as JSON; ``execute-all`` has no migration id (null)."""
    body: dict[str, Any] = jsonable(run)
    if run.migration_id == ALL:
        body["migration_id"] = None
    return body


def _all_running() -> MigrationStateError:
    return MigrationStateError(
        "execute-all is running already in the background; follow it at running", migration_id="*"
    )
