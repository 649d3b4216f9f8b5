"""Shared test helpers. Fixtures for databases come from the brainmigrate pytest plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
