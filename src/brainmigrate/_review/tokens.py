"""The tokens of an SQL statement: words, quoted names, literals and punctuation, with comments
and whitespace left out, and what expressions made of them mention."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import attrs

from .._model.sqltext import block_comment_end

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*)
  | (?P<string>[Ee]'(?:[^'\\]|\\.|'')*'?|'(?:[^']|'')*'?)
  | (?P<ident>"(?:[^"]|"")*"?)
  | (?P<dollar>\$(?:[A-Za-z_\x80-\U0010FFFF][A-Za-z_0-9\x80-\U0010FFFF]*)?\$)
  | (?P<param>\$\d+)
  | (?P<word>[A-Za-z_\x80-\U0010FFFF][A-Za-z_0-9$\x80-\U0010FFFF]*)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)
  | (?P<cast>::)
  | (?P<punct>[(),.;=\[\]*])
  | (?P<op>[^\s\w'"$(),.;=\[\]*]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)


@attrs.frozen
class Token:
    kind: str
    #: A word folded to lower case; a quoted identifier unquoted; anything else as written.
    value: str

    @property
    def is_name(self) -> bool:
        return self.kind in ("word", "ident")

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.value in words


def tokens(sql: str) -> list[Token]:
    """The tokens of ``sql`` without whitespace and comments; literals are kept whole."""
    found: list[Token] = []
    pos = 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        assert match is not None  # the last alternative matches any character
        kind = match.lastgroup or "op"
        text = match.group()
        pos = match.end()
        if kind == "block_comment":
            pos = block_comment_end(sql, match.start())
        elif kind == "dollar":
            closing = sql.find(text, pos)
            pos = len(sql) if closing < 0 else closing + len(text)
            found.append(Token("string", sql[match.start() : pos]))
        elif kind == "word":
            found.append(Token("word", text.lower()))
        elif kind == "ident":
            found.append(Token("ident", text[1:-1].replace('""', '"') if text.endswith('"') else text[1:]))
        elif kind not in ("space", "line_comment"):
            found.append(Token(kind, text))
    return found


def split_top(items: Sequence[Token], separator: str = ",") -> list[list[Token]]:
    """``items`` cut at ``separator`` outside parentheses and brackets."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in items:
        if token.kind == "punct" and token.value in "([":
            depth += 1
        elif token.kind == "punct" and token.value in ")]":
            depth -= 1
        elif depth == 0 and token.kind == "punct" and token.value == separator:
            parts.append([])
            continue
        parts[-1].append(token)
    return [part for part in parts if part]


def parenthesised(items: Sequence[Token], start: int) -> tuple[list[Token], int]:
    """The tokens inside the parentheses opening at ``start``, and the index after them."""
    depth = 0
    for index in range(start, len(items)):
        token = items[index]
        if token.kind == "punct" and token.value == "(":
            depth += 1
        elif token.kind == "punct" and token.value == ")":
            depth -= 1
            if depth == 0:
                return list(items[start + 1 : index]), index + 1
    return list(items[start + 1 :]), len(items)


def at_depth_zero(items: Sequence[Token]) -> Iterator[tuple[int, Token]]:
    depth = 0
    for index, token in enumerate(items):
        if token.kind == "punct" and token.value in "([":
            depth += 1
        elif token.kind == "punct" and token.value in ")]":
            depth -= 1
        elif depth == 0:
            yield index, token


#: Words that are not column names where expressions mention columns.
KEYWORDS = frozenset(
    {
        "all", "and", "any", "array", "as", "asc", "between", "by", "case", "cast", "collate",
        "current_date", "current_time", "current_timestamp", "current_user", "default", "desc", "distinct",
        "else", "end", "false", "first", "from", "ilike", "in", "is", "isnull", "last", "like", "localtime",
        "localtimestamp", "not", "notnull", "null", "nulls", "or", "session_user", "similar", "some",
        "symmetric", "then", "to", "true", "unknown", "user", "when",
    }
)  # fmt: skip


def expression_columns(items: Sequence[Token]) -> list[str]:
    """The names an expression mentions that can be columns (not functions, types or keywords)."""
    columns: list[str] = []
    for index, token in enumerate(items):
        if not token.is_name or (token.kind == "word" and token.value in KEYWORDS):
            continue
        before = items[index - 1] if index else None
        after = items[index + 1] if index + 1 < len(items) else None
        if before is not None and before.kind in ("cast", "punct") and before.value in ("::", "."):
            continue
        if after is not None and after.kind == "punct" and after.value in ("(", "."):
            continue
        if token.value not in columns:
            columns.append(token.value)
    return columns


def functions_called(items: Sequence[Token]) -> list[str]:
    """The functions an expression calls (``name(``, the last part of a qualified name)."""
    called: list[str] = []
    for index, token in enumerate(items[:-1]):
        after = items[index + 1]
        cast = index > 0 and items[index - 1].kind == "cast"  # a type's modifier: '1'::numeric(5, 2)
        if token.is_name and not cast and after.value == "(" and token.value not in called:
            called.append(token.value)
    return called


def not_null_columns(items: Sequence[Token]) -> list[str]:
    """The columns a CHECK expression proves NOT NULL: ``col IS NOT NULL`` (or ``col NOTNULL``)."""
    found: list[str] = []
    for index, token in enumerate(items):
        if not token.is_name:
            continue
        rest = [t.value if t.kind == "word" else None for t in items[index + 1 : index + 4]]
        if rest == ["is", "not", "null"] or rest[:1] == ["notnull"]:
            found.append(token.value)
    return found


def tokens_text(items: Sequence[Token]) -> str:
    out = ""
    for token in items:
        value = '"' + token.value.replace('"', '""') + '"' if token.kind == "ident" else token.value
        glue = (token.kind == "punct" and token.value in "(),.[]") or out.endswith(("(", ".", "::", "["))
        out += value if glue or token.kind == "cast" or not out else f" {value}"
    return out
