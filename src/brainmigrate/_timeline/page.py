"""The timeline page: one self-contained HTML document (inline CSS and script, nothing fetched
but its data), live from a data URL or static with the snapshot embedded."""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from importlib.resources import files
from typing import Any

#: Milliseconds between two reads of the data URL.
POLL_MS = 1000

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="referrer" content="no-referrer">
<title>brainmigrate: migration timeline</title>
<style>{style}</style>
</head>
<body>
<main id="timeline"><noscript>The timeline needs JavaScript.</noscript></main>
<script type="application/json" id="timeline-config">{config}</script>
<script>{script}</script>
</body>
</html>
"""

#: Characters that could end the script element or start markup, and the line separators some
#: JavaScript parsers read as line ends: written as JSON escapes, which decode to the same text.
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(value: Any) -> str:
    """``value`` as JSON safe to place inside a ``<script type="application/json">`` element."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in _ESCAPES.items():
        text = text.replace(char, escaped)
    return text


@cache
def _assets() -> tuple[str, str]:
    here = files(__package__ or "brainmigrate._timeline")
    return (here / "timeline.css").read_text("utf-8"), (here / "timeline.js").read_text("utf-8")


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def timeline_page(*, data_url: str | None, snapshot: dict[str, Any] | None) -> str:
    """The timeline as one HTML document.

    With ``data_url`` (absolute, or relative to the page) the page reads the snapshot there about
    once a second, sending ``Authorization: Bearer <token>`` with the token from the page address's
    fragment (``#token=...``, kept in the tab's sessionStorage) or typed into the page. With
    ``snapshot`` (from :func:`timeline_snapshot`) it is embedded and drawn at once, with no request:
    a static file. Given both, it is drawn at once, then kept live.
    """
    if data_url is None and snapshot is None:
        raise ValueError("timeline_page needs a data_url to read, or a snapshot to embed (or both)")
    if data_url is not None and (not isinstance(data_url, str) or not data_url.strip()):
        raise ValueError(f"data_url must be a non-empty string or None, got {data_url!r}")
    if snapshot is not None and not isinstance(snapshot, dict):
        raise ValueError(f"snapshot must be a dict from timeline_snapshot() or None, got {type(snapshot)}")
    style, script = _assets()
    # Only this page's own style and script run: an injected handler or element would not.
    policy = (
        f"default-src 'none'; script-src {_digest(script)}; style-src {_digest(style)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
    )
    config = embed_json({"data_url": data_url, "snapshot": snapshot, "poll_ms": POLL_MS})
    return _PAGE.format(policy=policy, style=style, config=config, script=script)
