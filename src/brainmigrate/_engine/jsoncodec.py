"""JSON text as the engine reads and writes it: with orjson when it is installed (the ``orjson``
extra), with the standard library's ``json`` otherwise, and the same results either way.

orjson does more than JSON and differs at its edges, so each of its results is checked or
avoided where it would differ from ``json``'s, and ``json`` decides there:

* encoding: orjson writes UUIDs, enums, datetimes and dataclasses, and NaN as ``null``, where
  ``json`` raises; it refuses integers beyond 64 bits and keys that are not ``str``, which
  ``json`` writes. So orjson encodes only values made of plain ``dict``, ``list``, ``tuple``,
  ``str``, ``int``, ``bool``, ``None`` and finite ``float`` (checked first), and anything it
  refuses is encoded by ``json``, which also raises the same errors as without orjson.
* decoding: orjson reads integers beyond 64 bits as floats, where ``json`` keeps them exact; it
  refuses ``NaN``, infinities and lone surrogates, which ``json`` reads. A text orjson refuses,
  or whose result holds an integral float of 2**63 or more, is decoded by ``json`` again.

Floats are spelled alike from 1e-4 up; a value holding a smaller non-zero float is encoded
by ``json`` (orjson writes ``0.00001`` or ``1e-7`` where ``json`` writes ``1e-05``, ``1e-07``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - the extra is installed in the tests' environment
    _orjson = None  # type: ignore[assignment]

#: What ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` builds
#: on every call (any argument but the value makes it build a new encoder); built once here.
#: Values JSON has no type for (bytes, sets, datetimes, Decimals, UUIDs, other objects) raise
#: TypeError, and NaN or infinities ValueError (PostgreSQL refuses them).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

#: Types orjson and ``json`` encode alike (floats too, when finite).
_LEAVES = frozenset({str, int, bool, type(None)})

#: Non-zero floats smaller than this (in magnitude) orjson spells otherwise than ``json``.
_SMALLEST_ALIKE = 1e-4
#: Integral floats at least this large may be integers orjson could not hold exactly.
_INEXACT = float(2**63)


def stdlib_dumps(value: Any) -> str:
    """``value`` as compact JSON text, by the standard library."""
    return _ENCODER.encode(value)


def stdlib_loads(text: str) -> Any:
    """JSON text as Python values, by the standard library."""
    return json.loads(text)


def _plain(value: Any) -> bool:
    """Whether ``value`` is made only of types orjson encodes exactly as ``json`` does."""
    kind = type(value)
    if kind in _LEAVES:
        return True
    if kind is float:
        # Finite (not NaN nor infinite), and not below 1e-4, where orjson writes 0.00001 or
        # 1e-7 and json 1e-05 or 1e-07: the same number, a different text.
        return bool(value - value == 0.0) and (value == 0.0 or abs(value) >= _SMALLEST_ALIKE)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:  # noqa: SIM110 (a loop: all() over a generator is slower here)
        if type(item) not in _LEAVES and not _plain(item):
            return False
    return True


def _exact(value: Any) -> bool:
    """Whether a value orjson decoded holds no integral float of 2**63 or more (which may have
    been an integer too large for it)."""
    kind = type(value)
    if kind is float:
        return not (value.is_integer() and abs(value) >= _INEXACT)
    if kind is dict:
        items = value.values()
    elif kind is list:
        items = value
    else:
        return True
    for item in items:
        kind = type(item)
        if kind in _LEAVES:
            continue
        if not _exact(item):
            return False
    return True


def orjson_dumps(value: Any) -> str:
    """``value`` as compact JSON text, by orjson where it gives what ``json`` gives, else by ``json``."""
    assert _orjson is not None
    try:
        if _plain(value):
            text: str = _orjson.dumps(value).decode()
            return text
    except (_orjson.JSONEncodeError, RecursionError):  # an int beyond 64 bits, a key not str, depth
        pass
    return _ENCODER.encode(value)


def orjson_loads(text: str) -> Any:
    """JSON text as Python values, by orjson where it reads what ``json`` reads, else by ``json``."""
    assert _orjson is not None
    try:
        value = _orjson.loads(text)
    except _orjson.JSONDecodeError:
        return stdlib_loads(text)
    try:
        if type(value) in _LEAVES or _exact(value):
            return value
    except RecursionError:
        pass
    return stdlib_loads(text)


#: Whether orjson is installed, and so used.
FAST = _orjson is not None

#: Encode a JSON value as compact text (non-ASCII kept, NaN refused).
dumps: Callable[[Any], str] = orjson_dumps if FAST else stdlib_dumps
#: Decode JSON text.
loads: Callable[[str], Any] = orjson_loads if FAST else stdlib_loads
