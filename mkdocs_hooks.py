"""Hooks of the docs build: links to the repository's files, and docstrings' cross-reference roles."""

from __future__ import annotations

import re
from typing import Any

#: Where links from the pages to files outside ``docs/`` (the examples) point on the site.
REPOSITORY_FILES = "https://github.com/brainmigrate/brainmigrate/blob/main/"

_OUTSIDE_DOCS = re.compile(r"\]\((?:\.\./)+((?:examples|bench|src|tests)/[^)]*)\)")
#: ``:class:`X``` in a docstring renders as ``:class:<code>X</code>``: keep the code only.
_ROLE = re.compile(r":(?:class|meth|attr|func|mod|data|exc|obj):(?=<code>)")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Links to the examples (valid on the repository's own pages) point at the repository."""
    return _OUTSIDE_DOCS.sub(lambda match: f"]({REPOSITORY_FILES}{match.group(1)})", markdown)


def on_page_content(html: str, **_: Any) -> str:
    """Drop the role prefix of cross references written for Sphinx in the docstrings."""
    return _ROLE.sub("", html)
