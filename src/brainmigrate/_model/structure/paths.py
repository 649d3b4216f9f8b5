"""Paths into a memory's object: parsing them from what users write, and showing them back."""

from __future__ import annotations

from collections.abc import Sequence

from ..._errors import MigrationValidationError

#: A path into a memory's object, one key per segment.
Path = tuple[str, ...]

_PATH_HINT = (
    "pass a dotted string such as 'analysis.mood', or a tuple of keys such as ('a.b', 'c') when a key "
    "contains a dot"
)


def _key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"has a segment that is not a string ({key!r})"
    if not key:
        return "has an empty segment"
    if "\0" in key:
        return "contains a NUL character, which PostgreSQL's jsonb cannot hold"
    try:
        key.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode"
    return None


def parse_path(path: object, *, what: str = "path") -> Path:
    """``"a.b"`` as ``("a", "b")``; a tuple of strings as it is (for keys that contain dots).

    MigrationValidationError for anything else: another type, an empty path or segment, NUL.
    """
    if isinstance(path, str):
        if not path:
            problem: str | None = "is empty"
        else:
            segments: tuple[object, ...] = tuple(path.split("."))
            problem = next(filter(None, map(_key_problem, segments)), None)
            if problem is None:
                return tuple(path.split("."))
    elif isinstance(path, tuple):
        if not path:
            problem = "is empty"
        else:
            problem = next(filter(None, map(_key_problem, path)), None)
            if problem is None:
                return path
    else:
        problem = f"is a {type(path).__name__}, not a string or a tuple of strings"
    raise MigrationValidationError(f"invalid {what} {path!r}: it {problem}; {_PATH_HINT}")


def show_path(path: Path) -> str:
    """A path as users write it: ``'a.b'``, or ``('a.b', 'c')`` when a key contains a dot."""
    if any("." in key for key in path):
        return repr(path)
    return repr(".".join(path))


def _joined(paths: Sequence[Path]) -> str:
    shown = [show_path(path) for path in paths]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
