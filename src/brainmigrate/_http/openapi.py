"""The OpenAPI 3.1 document of the HTTP API, written by hand as data."""

from __future__ import annotations

from typing import Any

from .._model.metadata import MigrationStatus, MigrationType
from .._model.states import AttemptStatus, HybridPhase, MigrationOperation, RunStatus
from .bodies import MAX_BODY_BYTES
from .runs import RunState

_NULL_STRING: dict[str, Any] = {"type": ["string", "null"]}
_NULL_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_NULL_NUMBER: dict[str, Any] = {"type": ["number", "null"]}
_NULL_INTEGER: dict[str, Any] = {"type": ["integer", "null"]}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def _enum(kind: Any) -> dict[str, Any]:
    return {"type": "string", "enum": [member.value for member in kind]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


#: The MigrationConfig fields a body may set, with their JSON Schema (the ranges MigrationConfig checks).
CONFIG_SCHEMA: dict[str, Any] = {
    "dry_run": {"type": "boolean", "description": "write nothing; answer with what would be done"},
    "batch_size": {"type": "integer", "minimum": 1, "maximum": 100_000},
    "enable_rollback": {"type": "boolean"},
    "validate_before": {"type": "boolean"},
    "validate_after": {"type": "boolean"},
    "parallel_execution": {"type": "boolean"},
    "checkpoint_frequency": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
    "timeout_seconds": {"type": "number", "minimum": 0.001, "maximum": 7 * 24 * 3600},
    "continue_on_error": {"type": "boolean"},
    "lock_wait_seconds": {"type": "number", "minimum": 0, "maximum": 24 * 3600},
    "statement_lock_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000},
    "allow_checksum_drift": {"type": "boolean"},
    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1000},
    "max_workers": {"type": "integer", "minimum": 1, "maximum": 64},
    "rate_limit": {"type": ["number", "null"], "minimum": 0.001, "maximum": 1_000_000},
    "lease_seconds": {"type": "number", "minimum": 1, "maximum": 24 * 3600},
    "dry_run_sample": {"type": "integer", "minimum": 1, "maximum": 100_000},
}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": {"type": "string", "description": "the error's class, such as MigrationNotFoundError"},
            "message": {"type": "string", "description": "what happened, and what to do"},
        }
    ),
    "Config": {
        "type": "object",
        "description": "MigrationConfig fields; those left out keep the Migrator's own",
        "properties": CONFIG_SCHEMA,
        "additionalProperties": False,
    },
    "RollbackConfig": {
        "type": "object",
        "properties": {
            **CONFIG_SCHEMA,
            "cascade": {"type": "boolean", "description": "first roll back the applied dependents"},
        },
        "additionalProperties": False,
    },
    "NoFields": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "MigrationMetadata": _object(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "string"},
            "migration_type": _enum(MigrationType),
            "description": {"type": "string"},
            "author": {"type": "string"},
            "created_at": _NULL_TIME,
            "dependencies": _STRINGS,
            "reversible": {"type": "boolean"},
            "checksum": _NULL_STRING,
            "replaces": _STRINGS,
        },
        ["id", "name", "version", "migration_type", "dependencies", "reversible"],
    ),
    "MigrationResult": _object(
        {
            "migration_id": {"type": "string"},
            "name": {"type": "string"},
            "migration_type": _enum(MigrationType),
            "operation": _enum(MigrationOperation),
            "status": _enum(MigrationStatus),
            "dry_run": {"type": "boolean"},
            "started_at": _NULL_TIME,
            "finished_at": _NULL_TIME,
            "duration_seconds": {"type": "number"},
            "statements": _STRINGS,
            "postconditions_passed": {"type": ["boolean", "null"]},
            "attempts": {"type": "integer"},
            "error": _NULL_STRING,
            "items_processed": {"type": "integer"},
            "items_skipped": {"type": "integer"},
            "items_failed": {"type": "integer"},
            "changes": {"type": "array", "items": {"type": "object"}},
            "violations": {"type": "array", "items": {"type": "object"}},
            "write_impact": {"type": ["object", "null"]},
        },
        ["migration_id", "name", "migration_type", "operation", "status", "dry_run"],
    ),
    "Results": _object({"results": {"type": "array", "items": _ref("MigrationResult")}}),
    "HistoryRecord": _object(
        {
            "attempt_id": {"type": "integer"},
            "migration_id": {"type": "string"},
            "name": {"type": "string"},
            "migration_type": _enum(MigrationType),
            "version": {"type": "string"},
            "checksum": {"type": "string"},
            "operation": _enum(MigrationOperation),
            "status": _enum(AttemptStatus),
            "applied_after": {"type": ["boolean", "null"]},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": _NULL_TIME,
            "duration_ms": _NULL_NUMBER,
            "statement_index": _NULL_INTEGER,
            "statement_count": _NULL_INTEGER,
            "error": _NULL_STRING,
            "sqlstate": _NULL_STRING,
            "hostname": {"type": "string"},
            "pid": {"type": "integer"},
            "db_user": {"type": "string"},
            "hybrid_id": _NULL_STRING,
            "hybrid_phase": _NULL_STRING,
            "actor": {**_NULL_STRING, "description": "who asked (the caller's name), when known"},
            "reason": _NULL_STRING,
        },
        ["attempt_id", "migration_id", "operation", "status", "started_at", "actor"],
    ),
    "Progress": _object(
        {
            "migration_id": {"type": "string"},
            "status": _enum(RunStatus),
            "processed": {"type": "integer"},
            "failed": {"type": "integer"},
            "skipped": {"type": "integer"},
            "total": _NULL_INTEGER,
            "batch_number": {"type": "integer"},
            "rate": _NULL_NUMBER,
            "started_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "workers": {"type": "integer"},
            "error": _NULL_STRING,
            "fraction": _NULL_NUMBER,
            "eta_seconds": _NULL_NUMBER,
        },
        ["migration_id", "status", "processed", "failed", "skipped", "total", "batch_number"],
    ),
    "HybridStatus": _object(
        {
            "migration_id": {"type": "string"},
            "phase": {"type": ["string", "null"], "enum": [*(p.value for p in HybridPhase), None]},
            "contract_mode": {"type": "string"},
            "steps": _STRINGS,
            "steps_done": _STRINGS,
            "current_step": _NULL_STRING,
            "error": _NULL_STRING,
            "started_at": _NULL_TIME,
            "updated_at": _NULL_TIME,
        },
        ["migration_id", "phase", "steps", "steps_done"],
    ),
    "BackgroundRun": _object(
        {
            "migration_id": {"type": ["string", "null"]},
            "operation": {"type": "string"},
            "actor": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"},
            "state": _enum(RunState),
            "finished_at": _NULL_TIME,
            "results": {"type": "array", "items": _ref("MigrationResult")},
            "error": _NULL_STRING,
            "error_type": _NULL_STRING,
        },
        ["migration_id", "operation", "actor", "started_at", "state"],
    ),
    "Accepted": {
        "allOf": [
            _ref("BackgroundRun"),
            _object({"progress_url": {"type": "string", "description": "GET it to follow the run"}}),
        ]
    },
    "ProgressReport": _object(
        {
            "migration_id": {"type": "string"},
            "status": _enum(MigrationStatus),
            "progress": {"oneOf": [_ref("Progress"), {"type": "null"}]},
            "hybrid": {"oneOf": [_ref("HybridStatus"), {"type": "null"}]},
            "run": {"oneOf": [_ref("BackgroundRun"), {"type": "null"}]},
        }
    ),
    "ValidationReport": _object(
        {"migration_id": {"type": "string"}, "valid": {"type": "boolean"}, "problems": _STRINGS}
    ),
    "Cancelled": _object({"migration_id": {"type": "string"}, "status": _enum(MigrationStatus)}),
}

_ERRORS: dict[str, str] = {
    "401": "no token, or not a valid one (with WWW-Authenticate: Bearer)",
    "403": "a read-only token: changes need an admin token",
    "404": "no migration has this id",
    "409": "refused in the database's current state: running already, applied already, "
    "dependencies not applied, dirty, or the migration failed (nothing applied unless the message says)",
    "413": f"a request body larger than {MAX_BODY_BYTES} bytes",
    "415": "a request body that is not JSON",
    "422": "bad JSON, an unknown field, a value of the wrong type or out of range",
    "503": "the database cannot be reached, or the pool has no free connection",
}


def _error(code: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[code],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if code == "401":
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ID = {
    "name": "migration_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "the migration's id",
}
_TYPE = {
    "name": "migration_type",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": [m.name for m in MigrationType] + [m.value for m in MigrationType]},
    "description": "only migrations of this type (such as DATABASE_SCHEMA)",
}


def _read(summary: str, ok: dict[str, Any], *, by_id: bool = False, query: bool = False) -> dict[str, Any]:
    codes = ["401", "404", "503"] if by_id else ["401", "503"]
    if query:
        codes.append("422")
    parameters = [_ID] if by_id else [_TYPE] if query else []
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {"200": ok, **{code: _error(code) for code in codes}},
        }
    }


def _change(
    summary: str, responses: dict[str, Any], body: str, *, by_id: bool = True, query: bool = False
) -> dict[str, Any]:
    codes = ["401", "403", "409", "413", "415", "422", "503"]
    if by_id:
        codes.insert(2, "404")
    parameters = [_ID] if by_id else [_TYPE] if query else []
    return {
        "post": {
            "summary": summary,
            "parameters": parameters,
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {**responses, **{code: _error(code) for code in codes}},
        }
    }


_ACCEPTED = _ok("Accepted", "a data, memory, structure or hybrid migration started in the background")


def openapi_document(*, server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI document, with the router's mount point as its server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "brainmigrate",
            "version": "1",
            "description": "Plan, run and follow the migrations of a PostgreSQL-backed memory store. "
            "Schema migrations and dry runs answer 200 with their results; other kinds answer 202 and "
            "run in the background of the serving process.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/pending": _read(
                "migrations not applied yet, in the order they would run",
                {
                    "description": "the pending migrations",
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {"migrations": {"type": "array", "items": _ref("MigrationMetadata")}}
                            )
                        }
                    },
                },
                query=True,
            ),
            "/history": _read(
                "every recorded attempt, oldest first",
                {
                    "description": "the history",
                    "content": {
                        "application/json": {
                            "schema": _object({"attempts": {"type": "array", "items": _ref("HistoryRecord")}})
                        }
                    },
                },
            ),
            "/running": _read(
                "data runs in flight (from any process) and this server's background runs",
                {
                    "description": "the runs",
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {
                                    "runs": {"type": "array", "items": _ref("Progress")},
                                    "background": {"type": "array", "items": _ref("BackgroundRun")},
                                }
                            )
                        }
                    },
                },
            ),
            "/progress/{migration_id}": _read(
                "where a migration stands: status, a data run's progress, a hybrid's phase",
                _ok("ProgressReport", "the migration's progress"),
                by_id=True,
            ),
            "/execute/{migration_id}": _change(
                "apply one migration",
                {"200": _ok("MigrationResult", "a schema migration or a dry run, done"), "202": _ACCEPTED},
                "Config",
            ),
            "/execute-all": _change(
                "apply every pending migration (of migration_type, if given)",
                {
                    "200": _ok("Results", "schema migrations only, or a dry run: done"),
                    "202": _ok("Accepted", "started in the background (follow it at running)"),
                },
                "Config",
                by_id=False,
                query=True,
            ),
            "/rollback/{migration_id}": _change(
                "roll back a migration (with cascade, its applied dependents first)",
                {"200": _ok("Results", "a schema migration or a dry run: done"), "202": _ACCEPTED},
                "RollbackConfig",
            ),
            "/validate/{migration_id}": _change(
                "check, without changing anything, whether a migration could be applied now",
                {"200": _ok("ValidationReport", "the report")},
                "NoFields",
            ),
            "/cancel/{migration_id}": _change(
                "stop a running data migration at its next batch (resume carries it on)",
                {"200": _ok("Cancelled", "cancelling, or cancelled")},
                "NoFields",
            ),
            "/resume/{migration_id}": _change(
                "carry on a cancelled or failed run from its checkpoint",
                {"200": _ok("MigrationResult", "a schema migration or a dry run, done"), "202": _ACCEPTED},
                "Config",
            ),
            "/contract/{migration_id}": _change(
                "run a hybrid migration's contract steps",
                {"200": _ok("MigrationResult", "done"), "202": _ACCEPTED},
                "Config",
            ),
            "/timeline": {
                "get": {
                    "summary": "the timeline page (its data comes from timeline/data, with a token)",
                    "security": [],
                    "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
                }
            },
            "/timeline/data": _read(
                "the timeline's data",
                {"description": "the attempts, runs and phases", "content": {"application/json": {}}},
            ),
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "security": [],
                    "responses": {
                        "200": {"description": "the document", "content": {"application/json": {}}}
                    },
                }
            },
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an admin token (anything) or a read token (GET only)",
                }
            },
        },
    }
