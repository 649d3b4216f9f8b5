"""The HTTP API on a real database, called through uvicorn on localhost and in-process (ASGI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from brainmigrate import BulkMemoryItem, ConfigError, DataSource, MigrationConfig, Migrator
from brainmigrate._http.router import ALL
from brainmigrate.http import Actor, BearerAuth, migrations_router
from brainmigrate.testing import DatabaseFactory
from data_support import create_memories, memory_migration, tagged_count
from helpers import snapshot
from http_support import (
    ADMIN,
    ADMIN_TOKEN,
    READ_TOKEN,
    READER,
    Gate,
    app_for,
    in_process,
    migrations,
    pool_on,
    served,
    wait_for_run,
)

pytestmark = pytest.mark.anyio

DATA_ID = "enrich_sentiment_001"
SCHEMA_ID = "add_user_preferences_001"

#: Every endpoint that changes something: (path, a body it accepts).
MUTATIONS = [
    pytest.param(f"/migrations/execute/{SCHEMA_ID}", {"dry_run": False}, id="execute"),
    pytest.param("/migrations/execute-all", {"dry_run": False}, id="execute-all"),
    pytest.param(f"/migrations/rollback/{SCHEMA_ID}", {}, id="rollback"),
    pytest.param(f"/migrations/validate/{SCHEMA_ID}", {}, id="validate"),
    pytest.param(f"/migrations/cancel/{DATA_ID}", {}, id="cancel"),
    pytest.param(f"/migrations/resume/{DATA_ID}", {}, id="resume"),
    pytest.param(f"/migrations/contract/{DATA_ID}", {}, id="contract"),
]
#: Every endpoint taking a migration id: (method, path before the id).
BY_ID = [
    pytest.param("GET", "/migrations/progress/", id="progress"),
    pytest.param("POST", "/migrations/execute/", id="execute"),
    pytest.param("POST", "/migrations/rollback/", id="rollback"),
    pytest.param("POST", "/migrations/validate/", id="validate"),
    pytest.param("POST", "/migrations/cancel/", id="cancel"),
    pytest.param("POST", "/migrations/resume/", id="resume"),
    pytest.param("POST", "/migrations/contract/", id="contract"),
]
READS = [
    "/migrations/pending",
    "/migrations/history",
    "/migrations/running",
    f"/migrations/progress/{DATA_ID}",
]


@attrs.define
class Api:
    """The router mounted in a host application, a client of it, and what is behind it."""

    app: Starlette
    client: httpx.AsyncClient
    pool: Any
    migrator: Migrator
    gate: Gate


@pytest.fixture(params=["uvicorn", "in-process"])
async def api(request: pytest.FixtureRequest, brainmigrate_database: str) -> AsyncIterator[Api]:
    """The API on a database holding 20 memories, through uvicorn on localhost or in-process."""
    async with pool_on(brainmigrate_database) as pool:
        async with pool.acquire() as conn:
            await create_memories(conn, 20)
        gate = Gate()
        migrator = Migrator(pool, migrations(gate.migration(DATA_ID)))
        app = app_for(migrator)
        if request.param == "uvicorn":
            async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
                yield Api(app, client, pool, migrator, gate)
                gate.open()
                await wait_for_run(app, DATA_ID)
        else:
            async with in_process(app) as client:
                yield Api(app, client, pool, migrator, gate)
                gate.open()
                await wait_for_run(app, DATA_ID)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["uvicorn", "in-process"])
async def still(request: pytest.FixtureRequest, brainmigrate_dsn: str) -> AsyncIterator[Api]:
    """One API for the tests that change nothing (each checks so): a database with 20 memories,
    through uvicorn on localhost or in-process, shared by the module's refusals."""
    async with DatabaseFactory(brainmigrate_dsn) as databases:
        dsn = await databases.create()
        try:
            async with pool_on(dsn) as pool:
                async with pool.acquire() as conn:
                    await create_memories(conn, 20)
                gate = Gate()
                gate.open()
                migrator = Migrator(pool, migrations(gate.migration(DATA_ID)))
                app = app_for(migrator)
                if request.param == "uvicorn":
                    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
                        yield Api(app, client, pool, migrator, gate)
                else:
                    async with in_process(app) as client:
                        yield Api(app, client, pool, migrator, gate)
        finally:
            await databases.drop(dsn)


@pytest.fixture
async def server(brainmigrate_database: str) -> AsyncIterator[tuple[Api, str]]:
    """The API through uvicorn only, with its base URL (for raw sockets)."""
    async with pool_on(brainmigrate_database) as pool:
        async with pool.acquire() as conn:
            await create_memories(conn, 20)
        gate = Gate()
        migrator = Migrator(pool, migrations(gate.migration(DATA_ID)))
        app = app_for(migrator)
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            yield Api(app, client, pool, migrator, gate), url
            gate.open()
            await wait_for_run(app, DATA_ID)


def _error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["message"]
    return response.status_code, body["error"]


# -- the design document's examples ------------------------------------------------------------


async def test_the_seed_curl_examples_work_verbatim_with_a_token(api: Api) -> None:
    """The design's curl examples, each with a bearer token added: list pending, dry-run one,
    execute all schema migrations, check a data migration's progress, roll one back."""
    client = api.client

    pending = await client.get("/migrations/pending", headers=ADMIN)
    dry = await client.post(
        f"/migrations/execute/{SCHEMA_ID}",
        headers={**ADMIN, "Content-Type": "application/json"},
        content='{\n    "dry_run": true,\n    "batch_size": 1000,\n    "enable_rollback": true\n  }',
    )
    executed = await client.post("/migrations/execute-all?migration_type=DATABASE_SCHEMA", headers=ADMIN)
    progress = await client.get(f"/migrations/progress/{DATA_ID}", headers=ADMIN)
    rolled_back = await client.post(f"/migrations/rollback/{SCHEMA_ID}", headers=ADMIN)

    assert pending.status_code == 200
    assert [m["id"] for m in pending.json()["migrations"]] == [SCHEMA_ID, "add_notes_002", DATA_ID]
    assert (dry.status_code, dry.json()["dry_run"], dry.json()["status"]) == (200, True, "completed")
    assert executed.status_code == 200
    assert [(r["migration_id"], r["status"]) for r in executed.json()["results"]] == [
        (SCHEMA_ID, "completed"),
        ("add_notes_002", "completed"),
    ]
    assert progress.status_code == 200
    assert (progress.json()["status"], progress.json()["progress"]) == ("pending", None)
    assert rolled_back.status_code == 409  # add_notes_002 depends on it
    assert _error(rolled_back) == (409, "DependencyError")


async def test_the_ci_workflow_runs_every_pending_migration_with_a_json_body(api: Api) -> None:
    """The design's CI step (POST execute-all, a bearer token, a JSON body): 202 while the data
    migration runs in the background, then everything is applied, each row naming the admin."""
    api.gate.open()

    response = await api.client.post(
        "/migrations/execute-all",
        headers={**ADMIN, "Content-Type": "application/json"},
        content='{"dry_run": false, "enable_rollback": true}',
    )
    await wait_for_run(api.app, ALL)
    pending = await api.client.get("/migrations/pending", headers=READER)
    history = (await api.client.get("/migrations/history", headers=READER)).json()["attempts"]

    assert response.status_code == 202
    assert response.headers["location"] == "/migrations/running"
    assert response.json()["progress_url"] == "/migrations/running"
    assert pending.json() == {"migrations": []}
    assert [(r["migration_id"], r["status"], r["actor"]) for r in history] == [
        (SCHEMA_ID, "completed", "http-admin"),
        ("add_notes_002", "completed", "http-admin"),
        (DATA_ID, "completed", "http-admin"),
    ]
    async with api.pool.acquire() as conn:
        assert await tagged_count(conn) == 20


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, (401, "AuthenticationRequired"), id="missing"),
        pytest.param(
            {"Authorization": "Bearer not-the-token-at-all-0000"},
            (401, "AuthenticationRequired"),
            id="invalid",
        ),
        pytest.param(
            {"Authorization": f"Basic {ADMIN_TOKEN}"}, (401, "AuthenticationRequired"), id="not-bearer"
        ),
        pytest.param(READER, (403, "PermissionDenied"), id="read-only"),
    ],
)
async def test_a_mutation_without_an_admin_token_is_refused_and_changes_nothing(
    still: Api, path: str, body: dict[str, Any], headers: dict[str, str], expected: tuple[int, str]
) -> None:
    """Every POST needs the admin token: none or a wrong one is 401 with WWW-Authenticate, a read
    token is 403; the database (schema, data and history) is as it was."""
    before = await snapshot(still.pool)

    response = await still.client.post(path, json=body, headers=headers)

    assert _error(response) == expected
    if expected[0] == 401:
        assert response.headers["www-authenticate"].startswith('Bearer realm="brainmigrate"')
    assert await snapshot(still.pool) == before


@pytest.mark.parametrize("path", READS)
async def test_reads_need_a_token_and_a_read_token_is_enough(still: Api, path: str) -> None:
    """GET endpoints: 401 without a token, 200 with the read token."""
    anonymous = await still.client.get(path)
    reader = await still.client.get(path, headers=READER)

    assert _error(anonymous) == (401, "AuthenticationRequired")
    assert reader.status_code == 200


@pytest.mark.parametrize("make_auth", ["sync", "async"])
async def test_the_hosts_own_auth_callable_names_the_actor_recorded_in_history(
    brainmigrate_database: str, make_auth: str
) -> None:
    """A host callable (sync or async) returning an Actor: its name is in the history rows; a
    non-admin actor is refused changes (403); None is 401."""

    def who(request: Request) -> Actor | None:
        user = request.headers.get("x-user")
        return None if user is None else Actor(name=user, admin=user == "alice")

    async def who_async(request: Request) -> Actor | None:
        return who(request)

    async with pool_on(brainmigrate_database) as pool:
        migrator = Migrator(pool, migrations())
        app = app_for(migrator, auth=who if make_auth == "sync" else who_async)
        async with in_process(app) as client:
            refused = await client.post(f"/migrations/execute/{SCHEMA_ID}", headers={"X-User": "bob"})
            anonymous = await client.post(f"/migrations/execute/{SCHEMA_ID}")
            done = await client.post(f"/migrations/execute/{SCHEMA_ID}", headers={"X-User": "alice"})
            history = (await client.get("/migrations/history", headers={"X-User": "bob"})).json()

    assert _error(refused) == (403, "PermissionDenied")
    assert _error(anonymous) == (401, "AuthenticationRequired")
    assert (done.status_code, done.json()["status"]) == (200, "completed")
    assert [(r["migration_id"], r["actor"]) for r in history["attempts"]] == [(SCHEMA_ID, "alice")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"admin_token": "short"}, "at least 16 characters", id="short"),
        pytest.param({"admin_token": " " + ADMIN_TOKEN}, "whitespace", id="whitespace"),
        pytest.param({"admin_token": ADMIN_TOKEN, "read_token": ADMIN_TOKEN}, "own", id="same-token"),
        pytest.param({"admin_token": "é" * 20}, "ASCII", id="not-ascii"),
    ],
)
def test_bearer_auth_refuses_weak_or_shared_tokens(kwargs: dict[str, Any], message: str) -> None:
    """BearerAuth checks its tokens when built: long enough, ASCII, and distinct."""
    with pytest.raises(ConfigError, match=message):
        BearerAuth(**kwargs)


def test_bearer_auth_keeps_its_tokens_out_of_repr() -> None:
    """repr() (as in a log line) shows no token."""
    text = repr(BearerAuth(admin_token=ADMIN_TOKEN, read_token=READ_TOKEN))

    assert ADMIN_TOKEN not in text and READ_TOKEN not in text


def test_actor_is_checked_when_built() -> None:
    """An Actor needs a name and a boolean admin flag."""
    with pytest.raises(ConfigError, match="name"):
        Actor(name=" ", admin=True)
    with pytest.raises(ConfigError, match="admin"):
        Actor(name="alice", admin="yes")  # type: ignore[arg-type]


def test_migrations_router_needs_a_migrator_and_an_auth() -> None:
    """Misuse of migrations_router is a ConfigError naming what it needs."""
    with pytest.raises(ConfigError, match="needs a Migrator"):
        migrations_router(object(), auth=lambda request: None)  # type: ignore[arg-type]


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "prefix"), BY_ID)
async def test_an_unknown_id_is_404_and_changes_nothing(still: Api, method: str, prefix: str) -> None:
    """An id no migration has: 404 MigrationNotFoundError, with the database unchanged."""
    before = await snapshot(still.pool)

    response = await still.client.request(method, prefix + "add_user_preference_001", headers=ADMIN)

    assert _error(response) == (404, "MigrationNotFoundError")
    assert "did you mean 'add_user_preferences_001'" in response.json()["message"]
    assert await snapshot(still.pool) == before


@pytest.mark.parametrize(("method", "prefix"), BY_ID)
@pytest.mark.parametrize(
    "raw_id",
    [
        pytest.param("..%2F..%2F..%2Fetc%2Fpasswd", id="encoded-traversal"),
        pytest.param("%2E%2E", id="encoded-dot-dot"),
        pytest.param("%00", id="nul"),
        pytest.param("a%0Ab", id="newline"),
        pytest.param("%20padded%20", id="spaces"),
        pytest.param("x" * 300, id="too-long"),
        pytest.param("%E2%80%8B", id="invisible"),
        pytest.param("%FF%FE", id="not-utf8"),
        pytest.param("%3Cscript%3E", id="markup"),
    ],
)
async def test_odd_ids_are_404_and_never_touch_anything(
    still: Api, method: str, prefix: str, raw_id: str
) -> None:
    """Path traversal, control and invisible characters, over-long ids: 404 with a JSON error,
    the database unchanged (ids are looked up among the migrations, never as files)."""
    before = await snapshot(still.pool)

    response = await still.client.request(method, prefix + raw_id, headers=ADMIN)

    # NotFound: the host's own 404, for a newline, which Starlette's Mount matches in no path.
    assert _error(response) in {(404, "MigrationNotFoundError"), (404, "NotFound")}
    assert await snapshot(still.pool) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{", "not valid JSON", id="truncated"),
        pytest.param('{"dry_run": NaN}', "not valid JSON", id="nan"),
        pytest.param("\xff", "not valid JSON", id="not-utf8"),
        pytest.param("[]", "must be a JSON object, got an array", id="array"),
        pytest.param('"dry_run"', "must be a JSON object, got a string", id="string"),
        pytest.param("[" * 100_00 + "]" * 100_00, "", id="deep"),
        pytest.param('{"dry_run": "yes"}', "dry_run must be true or false, got a string", id="wrong-type"),
        pytest.param('{"batch_size": 10.5}', "batch_size must be an integer, got a number", id="float"),
        pytest.param('{"batch_size": true}', "batch_size must be an integer, got a boolean", id="bool-int"),
        pytest.param('{"batch_size": 0}', "batch_size must be between 1 and 100000", id="range"),
        pytest.param('{"batch_size": 1e999}', "batch_size must be an integer", id="infinity"),
        pytest.param('{"batch_size": ' + "9" * 5000 + "}", "not valid JSON", id="huge-number"),
        pytest.param('{"dryrun": true}', "unknown field 'dryrun'", id="unknown-field"),
        pytest.param('{"retry": {}}', "unknown field 'retry'", id="nested-field"),
    ],
)
async def test_bad_json_and_wrong_types_are_422_and_change_nothing(
    still: Api, content: str, message: str
) -> None:
    """Bodies that are not JSON objects of known config fields with the right types: 422 saying
    what is wrong, never a 500, and nothing changed."""
    before = await snapshot(still.pool)

    response = await still.client.post(
        f"/migrations/execute/{SCHEMA_ID}",
        content=content.encode("latin-1"),
        headers={**ADMIN, "Content-Type": "application/json"},
    )

    assert _error(response) == (422, "InvalidRequestBody")
    assert message in response.json()["message"]
    assert await snapshot(still.pool) == before


@pytest.mark.parametrize(
    ("path", "content", "expected"),
    [
        pytest.param(
            f"/migrations/validate/{SCHEMA_ID}",
            '{"dry_run": true}',
            (422, "InvalidRequestBody"),
            id="validate-field",
        ),
        pytest.param(
            f"/migrations/cancel/{DATA_ID}", '{"now": 1}', (422, "InvalidRequestBody"), id="cancel-field"
        ),
        pytest.param(
            f"/migrations/rollback/{SCHEMA_ID}",
            '{"cascade": "yes"}',
            (422, "InvalidRequestBody"),
            id="cascade-type",
        ),
        pytest.param(
            "/migrations/execute-all?migration_type=SCHEMA", "", (422, "InvalidQueryParameter"), id="bad-type"
        ),
        pytest.param(
            "/migrations/pending?migration_type=x", None, (422, "InvalidQueryParameter"), id="pending-type"
        ),
    ],
)
async def test_other_bad_fields_and_parameters_are_422(
    still: Api, path: str, content: str | None, expected: tuple[int, str]
) -> None:
    """Fields an endpoint does not take, and an unknown migration_type: 422, nothing changed."""
    before = await snapshot(still.pool)

    if content is None:
        response = await still.client.get(path, headers=ADMIN)
    else:
        response = await still.client.post(
            path, content=content, headers={**ADMIN, "Content-Type": "application/json"}
        )

    assert _error(response) == expected
    assert await snapshot(still.pool) == before


async def test_a_body_that_is_not_json_is_415(still: Api) -> None:
    """A form body (curl -d without a JSON content type): 415 saying to send JSON."""
    response = await still.client.post(
        f"/migrations/execute/{SCHEMA_ID}",
        content="dry_run=true",
        headers={**ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
    )

    assert _error(response) == (415, "UnsupportedMediaType")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_huge_body_is_413_and_changes_nothing(still: Api, chunked: bool) -> None:
    """A body over 64 KiB, declared or streamed without a length: 413, nothing changed."""
    before = await snapshot(still.pool)
    huge = b'{"dry_run": true, "x": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    response = await still.client.post(
        f"/migrations/execute/{SCHEMA_ID}",
        content=stream() if chunked else huge,
        headers={**ADMIN, "Content-Type": "application/json"},
    )

    assert _error(response) == (413, "PayloadTooLarge")
    assert await snapshot(still.pool) == before


@pytest.mark.parametrize(
    "path", [f"/migrations/execute/{SCHEMA_ID}", "/migrations/execute-all", f"/migrations/cancel/{DATA_ID}"]
)
async def test_a_get_on_a_mutation_is_405(still: Api, path: str) -> None:
    """Mutations are POST only: GET is 405 with an Allow header, and nothing runs."""
    before = await snapshot(still.pool)

    response = await still.client.get(path, headers=ADMIN)

    assert _error(response) == (405, "MethodNotAllowed")
    assert response.headers["allow"] == "POST"
    assert await snapshot(still.pool) == before


async def test_no_cors_headers_are_sent(still: Api) -> None:
    """A cross-origin request gets no Access-Control-Allow-Origin; a preflight is refused."""
    response = await still.client.get(
        "/migrations/pending", headers={**READER, "Origin": "https://evil.example"}
    )
    preflight = await still.client.options(
        "/migrations/execute-all",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert "access-control-allow-origin" not in response.headers
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers


async def test_an_unknown_path_is_a_json_404(still: Api) -> None:
    """A path the router does not have: 404 JSON."""
    response = await still.client.get("/migrations/nothing-here", headers=READER)

    assert _error(response) == (404, "NotFound")


# -- running in the background ---------------------------------------------------------------------


async def test_a_data_migration_runs_in_the_background_and_a_second_execute_is_409(api: Api) -> None:
    """Execute of a memory migration answers 202 with its progress URL while it runs; a second
    execute (and a resume) while it runs is 409; once the gate opens it completes, with the
    actor in history."""
    started = await api.client.post(f"/migrations/execute/{DATA_ID}", headers=ADMIN)
    await api.gate.reached.wait()

    second = await api.client.post(f"/migrations/execute/{DATA_ID}", headers=ADMIN)
    resumed = await api.client.post(f"/migrations/resume/{DATA_ID}", headers=ADMIN)
    during = await api.client.get(f"/migrations/progress/{DATA_ID}", headers=READER)
    running = await api.client.get("/migrations/running", headers=READER)
    api.gate.open()
    await wait_for_run(api.app, DATA_ID)
    after = await api.client.get(started.json()["progress_url"], headers=READER)

    assert started.status_code == 202
    assert started.headers["location"] == f"/migrations/progress/{DATA_ID}"
    assert (started.json()["state"], started.json()["actor"]) == ("running", "http-admin")
    assert _error(second) == (409, "MigrationStateError")
    assert _error(resumed) == (409, "MigrationStateError")
    assert (during.json()["status"], during.json()["run"]["state"]) == ("running", "running")
    assert [run["migration_id"] for run in running.json()["background"]] == [DATA_ID]
    report = after.json()
    assert (report["status"], report["run"]["state"], report["progress"]["processed"]) == (
        "completed",
        "finished",
        20,
    )
    assert [r["status"] for r in report["run"]["results"]] == ["completed"]
    history = (await api.client.get("/migrations/history", headers=READER)).json()["attempts"]
    assert {(r["migration_id"], r["actor"]) for r in history} == {(DATA_ID, "http-admin")}


async def test_a_run_in_another_process_is_409_too(api: Api) -> None:
    """A data migration running through another Migrator (as in another process) is reported by
    the engine: execute through the API is 409 and nothing more is written."""
    other = Migrator(api.pool, migrations(api.gate.migration(DATA_ID)))
    async with anyio.create_task_group() as group:
        group.start_soon(other.execute, DATA_ID)
        await api.gate.reached.wait()
        while not [p for p in await api.migrator.running() if p.workers]:  # noqa: ASYNC110 - polls the database
            await anyio.sleep(0.01)

        response = await api.client.post(f"/migrations/execute/{DATA_ID}", headers=ADMIN)
        api.gate.open()

    assert _error(response) == (409, "MigrationStateError")
    assert "running already" in response.json()["message"]


async def test_cancel_then_resume_carries_the_run_on(api: Api) -> None:
    """Cancel stops a running data migration at its batch boundary (cancelled, resumable); resume
    answers 202 and the run completes."""
    await api.client.post(f"/migrations/execute/{DATA_ID}", json={"batch_size": 5}, headers=ADMIN)
    await api.gate.reached.wait()

    cancelled = await api.client.post(f"/migrations/cancel/{DATA_ID}", headers=ADMIN)
    api.gate.open()
    await wait_for_run(api.app, DATA_ID)
    paused = await api.client.get(f"/migrations/progress/{DATA_ID}", headers=READER)
    resumed = await api.client.post(f"/migrations/resume/{DATA_ID}", json={"batch_size": 5}, headers=ADMIN)
    await wait_for_run(api.app, DATA_ID)
    done = await api.client.get(f"/migrations/progress/{DATA_ID}", headers=READER)

    assert cancelled.json() == {"migration_id": DATA_ID, "status": "cancelling"}
    assert paused.json()["status"] == "cancelled"
    assert resumed.status_code == 202
    assert (done.json()["status"], done.json()["progress"]["processed"]) == ("completed", 20)


async def test_resume_of_a_migration_with_no_stopped_run_is_409(still: Api) -> None:
    """Resume is for a cancelled or failed run only: a pending migration is 409, nothing changed."""
    before = await snapshot(still.pool)

    response = await still.client.post(f"/migrations/resume/{SCHEMA_ID}", headers=ADMIN)

    assert _error(response) == (409, "MigrationStateError")
    assert "nothing to resume" in response.json()["message"]
    assert await snapshot(still.pool) == before


async def test_contract_of_a_migration_that_is_not_hybrid_is_409(still: Api) -> None:
    """Contract is for hybrid migrations: another kind is 409 MigrationStateError, nothing changed."""
    before = await snapshot(still.pool)

    response = await still.client.post(f"/migrations/contract/{SCHEMA_ID}", headers=ADMIN)

    assert _error(response) == (409, "MigrationStateError")
    assert await snapshot(still.pool) == before


async def test_validate_reports_without_changing_anything(still: Api) -> None:
    """Validate answers whether a migration could run now (dependencies, dirt), writing nothing."""
    before = await snapshot(still.pool)

    ready = await still.client.post(f"/migrations/validate/{SCHEMA_ID}", headers=ADMIN)
    blocked = await still.client.post("/migrations/validate/add_notes_002", headers=ADMIN)

    assert ready.json() == {"migration_id": SCHEMA_ID, "valid": True, "problems": []}
    assert blocked.json()["valid"] is False
    assert blocked.json()["problems"] == [f"dependencies not applied: {SCHEMA_ID}"]
    assert await snapshot(still.pool) == before


async def test_execute_before_its_dependencies_is_409(still: Api) -> None:
    """A migration whose dependencies are pending: 409 DependencyError, nothing changed."""
    before = await snapshot(still.pool)

    response = await still.client.post("/migrations/execute/add_notes_002", headers=ADMIN)

    assert _error(response) == (409, "DependencyError")
    assert await snapshot(still.pool) == before


async def test_a_schema_rollback_answers_200_with_its_results_and_records_the_actor(api: Api) -> None:
    """A schema migration executes and rolls back in the request (200 with results); the
    rollback's history row names the actor."""
    await api.client.post(f"/migrations/execute/{SCHEMA_ID}", headers=ADMIN)

    response = await api.client.post(
        f"/migrations/rollback/{SCHEMA_ID}", json={"cascade": True}, headers=ADMIN
    )
    history = (await api.client.get("/migrations/history", headers=READER)).json()["attempts"]

    assert response.status_code == 200
    assert [(r["migration_id"], r["operation"], r["status"]) for r in response.json()["results"]] == [
        (SCHEMA_ID, "rollback", "rolled_back")
    ]
    assert [(r["operation"], r["actor"]) for r in history] == [
        ("apply", "http-admin"),
        ("rollback", "http-admin"),
    ]


async def test_a_slow_client_holding_a_request_open_does_not_stop_a_run_or_other_requests(
    server: tuple[Api, str],
) -> None:
    """A client sends half a request and holds it while a data migration runs: the run proceeds
    to completion and other requests are answered; the slow request is answered once its body ends."""
    api, url = server
    host, port = url.removeprefix("http://").split(":")
    body = b"{" + b" " * 48 + b"}"
    head = (
        f"POST /migrations/validate/{SCHEMA_ID} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = await api.client.post(f"/migrations/execute/{DATA_ID}", headers=ADMIN)
    await api.gate.reached.wait()

    async with await anyio.connect_tcp(host, int(port)) as slow:
        await slow.send(head + body[:10])
        pending = await api.client.get("/migrations/pending", headers=READER)
        api.gate.open()
        await wait_for_run(api.app, DATA_ID)
        progress = await api.client.get(f"/migrations/progress/{DATA_ID}", headers=READER)
        await slow.send(body[10:])
        answer = b""
        try:
            while True:
                answer += await slow.receive()
        except anyio.EndOfStream:
            pass

    assert started.status_code == 202
    assert pending.status_code == 200
    assert progress.json()["status"] == "completed"
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"valid":true' in answer


async def test_dry_run_of_a_data_migration_answers_200_with_sampled_changes(api: Api) -> None:
    """A dry run is done in the request even for a data migration: 200, nothing written."""
    api.gate.open()
    before = await snapshot(api.pool)

    response = await api.client.post(f"/migrations/execute/{DATA_ID}", json={"dry_run": True}, headers=ADMIN)

    assert response.status_code == 200
    assert response.json()["dry_run"] is True
    assert response.json()["changes"]
    assert await snapshot(api.pool) == before


async def test_a_dry_runs_changes_to_a_numeric_column_are_json_numbers(brainmigrate_database: str) -> None:
    """A numeric column's values (Decimals) in a dry run's changes are numbers, not their text, as
    ``--json`` prints them; nothing is written."""

    async def halve(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(memory_id=memory["id"], importance_score=memory["importance_score"] / 2)

    source = DataSource(table="memories", key="id", columns=("importance_score",))
    async with pool_on(brainmigrate_database) as pool:
        async with pool.acquire() as conn:
            await create_memories(conn, 3)
            scores = {
                str(row["id"]): row["importance_score"] for row in await conn.fetch("SELECT * FROM memories")
            }
        migrator = Migrator(pool, migrations(memory_migration("halve_scores_001", halve, source=source)))
        before = await snapshot(pool)
        async with in_process(app_for(migrator)) as client:
            response = await client.post(
                "/migrations/execute/halve_scores_001", json={"dry_run": True}, headers=ADMIN
            )
        assert await snapshot(pool) == before

    assert response.status_code == 200
    changes = response.json()["changes"]
    assert {change["key"]: (change["before"], change["after"]) for change in changes} == {
        key: (float(score), float(score / 2)) for key, score in scores.items()
    }
    assert all(type(change["after"]) is float for change in changes)


# -- mounting, the document, the timeline ----------------------------------------------------------


async def test_it_mounts_in_fastapi(brainmigrate_database: str) -> None:
    """The router mounted in a FastAPI application serves reads and changes alike."""
    from fastapi import FastAPI

    async with pool_on(brainmigrate_database) as pool:
        app = FastAPI()
        app.mount(
            "/migrations",
            migrations_router(
                Migrator(pool, migrations()), auth=BearerAuth(admin_token=ADMIN_TOKEN, read_token=READ_TOKEN)
            ),
        )
        async with in_process(app) as client:
            pending = await client.get("/migrations/pending", headers=READER)
            done = await client.post("/migrations/execute-all", headers=ADMIN)
            refused = await client.post("/migrations/execute-all", headers=READER)

    assert [m["id"] for m in pending.json()["migrations"]] == [SCHEMA_ID, "add_notes_002"]
    assert [r["status"] for r in done.json()["results"]] == ["completed", "completed"]
    assert _error(refused) == (403, "PermissionDenied")


async def test_it_mounts_at_any_path_and_its_urls_follow(brainmigrate_database: str) -> None:
    """Mounted elsewhere (/ops/db), the progress URL and the document's server say so."""
    async with pool_on(brainmigrate_database) as pool:
        async with pool.acquire() as conn:
            await create_memories(conn, 3)
        gate = Gate()
        gate.open()
        router = migrations_router(
            Migrator(pool, [gate.migration(DATA_ID)]), auth=BearerAuth(admin_token=ADMIN_TOKEN)
        )
        app = Starlette(routes=[Mount("/ops/db", app=router)])
        async with in_process(app) as client:
            started = await client.post(f"/ops/db/execute/{DATA_ID}", headers=ADMIN)
            await router.state.runs.wait(DATA_ID)
            document = await client.get("/ops/db/openapi.json")

    assert started.json()["progress_url"] == f"/ops/db/progress/{DATA_ID}"
    assert document.json()["servers"] == [{"url": "/ops/db"}]


async def test_the_openapi_document_is_served_without_a_token(still: Api) -> None:
    """GET openapi.json: the document, every endpoint in it, the bearer scheme declared."""
    response = await still.client.get("/migrations/openapi.json")

    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert sorted(document["paths"]) == sorted(
        [
            "/pending",
            "/history",
            "/running",
            "/progress/{migration_id}",
            "/execute/{migration_id}",
            "/execute-all",
            "/rollback/{migration_id}",
            "/validate/{migration_id}",
            "/cancel/{migration_id}",
            "/resume/{migration_id}",
            "/contract/{migration_id}",
            "/timeline",
            "/timeline/data",
            "/openapi.json",
        ]
    )
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_the_timeline_page_opens_without_a_token_and_its_data_needs_one(still: Api) -> None:
    """GET timeline: the HTML shell, no data in it, for a browser; timeline/data needs a token."""
    page = await still.client.get("/migrations/timeline")
    anonymous = await still.client.get("/migrations/timeline/data")
    data = await still.client.get("/migrations/timeline/data", headers=READER)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/migrations/timeline/data" in page.text
    assert _error(anonymous) == (401, "AuthenticationRequired")
    assert [group["id"] for group in data.json()["migrations"]] == [SCHEMA_ID, "add_notes_002", DATA_ID]


def test_the_default_config_of_the_migrator_is_the_base_of_a_body() -> None:
    """Fields left out of a body keep the Migrator's config (checked without a database)."""
    from brainmigrate._http.bodies import config_from

    base = MigrationConfig(batch_size=50, lock_wait_seconds=5)

    config, extra = config_from({"dry_run": True, "cascade": False}, base, extra={"cascade": "true or false"})

    assert (config.dry_run, config.batch_size, config.lock_wait_seconds, extra) == (
        True,
        50,
        5,
        {"cascade": False},
    )


def test_the_http_module_exports_exactly_its_public_names() -> None:
    """brainmigrate.http's __all__ is its three public names, sorted."""
    import brainmigrate.http as http

    public = sorted(name for name in vars(http) if not name.startswith("_"))

    assert http.__all__ == ["Actor", "BearerAuth", "migrations_router"] == public


async def test_a_run_stopped_with_its_server_stays_resumable(api: Api) -> None:
    """When the serving process stops its background runs (as at shutdown), the data run stays
    resumable: a new server's resume answers 202 and the run completes."""
    await api.client.post(f"/migrations/execute/{DATA_ID}", json={"batch_size": 5}, headers=ADMIN)
    await api.gate.reached.wait()
    router = api.app.routes[0].app  # type: ignore[attr-defined]

    await router.state.runs.aclose()
    stopped = await api.client.get(f"/migrations/progress/{DATA_ID}", headers=READER)
    api.gate.open()
    restarted = app_for(api.migrator)
    async with in_process(restarted) as client:
        resumed = await client.post(f"/migrations/resume/{DATA_ID}", headers=ADMIN)
        await wait_for_run(restarted, DATA_ID)
        done = await client.get(f"/migrations/progress/{DATA_ID}", headers=READER)

    assert stopped.json()["status"] in {"failed", "cancelled"}
    assert stopped.json()["run"]["state"] == "failed"
    assert resumed.status_code == 202
    assert (done.json()["status"], done.json()["progress"]["processed"]) == ("completed", 20)
    async with api.pool.acquire() as conn:
        assert await tagged_count(conn) == 20


async def test_a_manual_hybrid_executes_then_contracts_in_the_background(brainmigrate_database: str) -> None:
    """A hybrid with contract_mode manual: contract before it ran is 409; execute answers 202 and
    stops at ready_to_contract; contract answers 202 and completes it; every row names the actor."""
    from hybrid_support import HYBRID, topics_to_column
    from hybrid_support import create_memories as create_topic_memories

    async with pool_on(brainmigrate_database) as pool:
        async with pool.acquire() as conn:
            await create_topic_memories(conn, 30)
        app = app_for(Migrator(pool, [topics_to_column(mode="manual")]))
        async with in_process(app) as client:
            early = await client.post(f"/migrations/contract/{HYBRID}", headers=ADMIN)
            executed = await client.post(f"/migrations/execute/{HYBRID}", headers=ADMIN)
            await wait_for_run(app, HYBRID)
            waiting = (await client.get(f"/migrations/progress/{HYBRID}", headers=READER)).json()
            contracted = await client.post(f"/migrations/contract/{HYBRID}", headers=ADMIN)
            await wait_for_run(app, HYBRID)
            done = (await client.get(f"/migrations/progress/{HYBRID}", headers=READER)).json()
            history = (await client.get("/migrations/history", headers=READER)).json()["attempts"]

    assert _error(early) == (409, "HybridPhaseError")
    assert (executed.status_code, contracted.status_code) == (202, 202)
    assert (waiting["status"], waiting["hybrid"]["phase"]) == ("running", "ready_to_contract")
    assert (done["status"], done["hybrid"]["phase"], done["run"]["state"]) == (
        "completed",
        "completed",
        "finished",
    )
    assert history
    assert {record["actor"] for record in history} == {"http-admin"}


async def test_a_data_rollback_runs_in_the_background_and_restores_every_memory(api: Api) -> None:
    """Rolling back an applied data migration answers 202 and restores the memories; rolling back
    one that is not applied is 409, with nothing changed."""
    api.gate.open()
    before = await snapshot(api.pool)
    refused = await api.client.post(f"/migrations/rollback/{DATA_ID}", headers=ADMIN)
    unchanged = await snapshot(api.pool)
    await api.client.post(f"/migrations/execute/{DATA_ID}", headers=ADMIN)
    await wait_for_run(api.app, DATA_ID)

    rolled_back = await api.client.post(f"/migrations/rollback/{DATA_ID}", headers=ADMIN)
    await wait_for_run(api.app, DATA_ID)
    done = (await api.client.get(f"/migrations/progress/{DATA_ID}", headers=READER)).json()

    assert _error(refused) == (409, "MigrationStateError")
    assert unchanged == before
    assert rolled_back.status_code == 202
    assert (done["status"], done["run"]["operation"], done["run"]["state"]) == (
        "rolled_back",
        "rollback",
        "finished",
    )
    async with api.pool.acquire() as conn:
        assert await tagged_count(conn) == 0
