"""``brainmigrate serve``: the HTTP API on uvicorn, as a subprocess on localhost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN_TOKEN = "serve-admin-token-000000001"
READ_TOKEN = "serve-read-token-0000000001"
_SERVE = [sys.executable, "-m", "brainmigrate", "serve"]

MIGRATION = """
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class AddUserPreferences(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="add_user_preferences_001", name="Add user preferences table", version="2.6.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE user_preferences (id int PRIMARY KEY, theme text)"]

    async def get_rollback_statements(self):
        return ["DROP TABLE user_preferences"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _as_from_a_terminal() -> None:
    """In the child before it starts: Ctrl-C's signal with its default action, as a shell gives a
    command it starts (a process inherits an ignored SIGINT, and this one's may be ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(**tokens: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINMIGRATE_")}
    return {**env, **tokens}


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "m001_add_user_preferences.py").write_text(textwrap.dedent(MIGRATION))
    return directory


@pytest.fixture
def serving(brainmigrate_database: str, migrations: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``brainmigrate serve`` running on a free port of localhost, until the test ends."""
    port = _free_port()
    process = subprocess.Popen(
        [*_SERVE, "--dsn", brainmigrate_database, "--migrations", str(migrations), "--port", str(port)],
        env=_env(BRAINMIGRATE_ADMIN_TOKEN=ADMIN_TOKEN, BRAINMIGRATE_READ_TOKEN=READ_TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        while not _listening(port):  # until the port accepts a connection, or the process ends
            if process.poll() is not None:
                assert process.stdout is not None
                raise AssertionError(f"serve exited with {process.returncode}: {process.stdout.read()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


def test_serve_answers_with_the_api_at_migrations(serving: tuple[str, subprocess.Popen[str]]) -> None:
    """The verb serves the router at /migrations: a read token lists pending migrations, the
    admin token applies them, the read token may not; Ctrl-C stops it."""
    url, process = serving

    with httpx.Client(base_url=url) as client:
        pending = client.get("/migrations/pending", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        refused = client.post("/migrations/execute-all", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        done = client.post("/migrations/execute-all", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        anonymous = client.get("/migrations/history")

    assert [m["id"] for m in pending.json()["migrations"]] == ["add_user_preferences_001"]
    assert refused.status_code == 403
    assert [(r["migration_id"], r["status"]) for r in done.json()["results"]] == [
        ("add_user_preferences_001", "completed")
    ]
    assert anonymous.status_code == 401
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        pytest.param({}, "serve needs an admin token: set $BRAINMIGRATE_ADMIN_TOKEN", id="no-token"),
        pytest.param({"BRAINMIGRATE_ADMIN_TOKEN": "short"}, "at least 16 characters", id="short-token"),
    ],
)
def test_serve_refuses_to_start_without_a_proper_admin_token(
    brainmigrate_database: str, migrations: Path, tokens: dict[str, str], message: str
) -> None:
    """No admin token (or a weak one): exit 3 with a message saying which variable to set."""
    done = subprocess.run(
        [
            *_SERVE,
            "--dsn",
            brainmigrate_database,
            "--migrations",
            str(migrations),
            "--port",
            str(_free_port()),
        ],
        env=_env(**tokens),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 3
    assert message in done.stderr
