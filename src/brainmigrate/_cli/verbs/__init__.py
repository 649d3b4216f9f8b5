"""The verbs: each is a thin call of one public :class:`Migrator` method, then rendering; grouped by
what they do: the project's files (``authoring``), reads and reports (``reports``), applying and
reversing (``runs``), and the HTTP API (``serve``).

A verb returns its exit code (see :mod:`brainmigrate._cli.main`); errors are raised as the library
raises them, and ``main`` turns them into a message and an exit code.
"""

from .authoring import init, new, squash
from .reports import check, envs, history, progress, show, status, timeline
from .runs import abandon, cancel, contract, downgrade, resume, retry_failed, stamp, upgrade
from .serve import serve

__all__ = [
    "abandon",
    "cancel",
    "check",
    "contract",
    "downgrade",
    "envs",
    "history",
    "init",
    "new",
    "progress",
    "resume",
    "retry_failed",
    "serve",
    "show",
    "squash",
    "stamp",
    "status",
    "timeline",
    "upgrade",
]
