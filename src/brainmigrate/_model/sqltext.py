"""Finding SQL that would end or replace the transaction a transactional migration runs in.

A cheap lexical check, made before anything runs: each statement string is split where PostgreSQL
would split it (at semicolons outside string literals, quoted identifiers, dollar quotes, comments
and ``BEGIN ATOMIC ... END`` bodies, the way psql tells them apart), and the leading keywords of each
part are compared with the commands that control transactions. It can miss a statement (an unquoted
column named ``begin`` makes it stop splitting), never refuse one that only mentions such a word;
the executor's check that its transaction is still the one in progress is the authoritative one.
"""

from __future__ import annotations

import re

#: Commands that end the transaction, start another, or release or roll back to a savepoint
#: (brainmigrate's own, in a dry run); ``SAVEPOINT`` alone is harmless and allowed.
_FIRST_WORDS = frozenset({"ABORT", "BEGIN", "COMMIT", "END", "RELEASE", "ROLLBACK"})
#: Commands recognised by their first two words.
_FIRST_TWO_WORDS = frozenset({("START", "TRANSACTION"), ("PREPARE", "TRANSACTION")})

_IDENT_START = r"A-Za-z_\x80-\U0010FFFF"
_WORD = re.compile(rf"[{_IDENT_START}][{_IDENT_START}0-9$]*")
_DOLLAR_QUOTE = re.compile(rf"\$(?:[{_IDENT_START}][{_IDENT_START}0-9]*)?\$")
#: What can start something other than a plain word or a run of insignificant characters.
_INTERESTING = re.compile(rf"""[{_IDENT_START}'";$]|--|/\*""")
_STRING = re.compile(r"'[^']*(?:''[^']*)*'")
_ESCAPE_STRING = re.compile(r"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL)
_QUOTED_IDENT = re.compile(r'"[^"]*(?:""[^"]*)*"')


def block_comment_end(sql: str, pos: int) -> int:
    """Where the (nestable) block comment opening at ``pos`` ends; the end of ``sql`` if never."""
    depth = 0
    while pos < len(sql):
        if sql.startswith("/*", pos):
            depth, pos = depth + 1, pos + 2
        elif sql.startswith("*/", pos):
            depth, pos = depth - 1, pos + 2
            if depth == 0:
                return pos
        else:
            pos += 1
    return pos


def split_statements(sql: str) -> list[tuple[tuple[str, ...], str]]:
    """The statements of ``sql`` as PostgreSQL would run them: (leading keywords upper-cased, text).

    The leading keywords are the words before any other token (at most two are kept). Empty
    statements are left out; an unterminated literal or comment runs to the end.
    """
    statements: list[tuple[tuple[str, ...], str]] = []
    start: int | None = None  # where the statement's first token (not a comment) is
    pos = 0
    words: list[str] = []
    leading = True  # still reading the statement's leading keywords
    identifiers = depth = 0  # psql's rule for BEGIN ... END bodies (and CASE ... END inside them)

    def close(end: int) -> None:
        if start is not None:
            statements.append((tuple(words), sql[start:end].strip()))

    while True:
        found = _INTERESTING.search(sql, pos)
        if found is None:
            break
        gap = sql[pos : found.start()]
        if gap.strip():  # a number, an operator, a parenthesis...
            leading = False
            if start is None:
                start = pos + len(gap) - len(gap.lstrip())
        pos = found.start()
        char = sql[pos]
        if start is None and char != ";" and not sql.startswith(("--", "/*"), pos):
            start = pos
        if sql.startswith("--", pos):
            newline = sql.find("\n", pos)
            pos = len(sql) if newline < 0 else newline + 1
        elif sql.startswith("/*", pos):
            pos = block_comment_end(sql, pos)
        elif char == ";":
            if depth == 0:
                close(pos)
                start, words, leading, identifiers = None, [], True, 0
            pos += 1
        elif char == "'":
            literal = _STRING.match(sql, pos)
            pos = literal.end() if literal else len(sql)
            leading = False
        elif char == '"':
            quoted = _QUOTED_IDENT.match(sql, pos)
            pos = quoted.end() if quoted else len(sql)
            leading = False
        elif char == "$":
            quote = _DOLLAR_QUOTE.match(sql, pos)
            if quote is None:  # a parameter such as $1
                pos += 1
            else:
                closing = sql.find(quote.group(), quote.end())
                pos = len(sql) if closing < 0 else closing + len(quote.group())
            leading = False
        else:
            word = _WORD.match(sql, pos)
            assert word is not None
            text = word.group()
            pos = word.end()
            if text in ("E", "e") and sql.startswith("'", pos):  # E'...': backslash escapes
                literal = _ESCAPE_STRING.match(sql, pos)
                pos = literal.end() if literal else len(sql)
                leading = False
                continue
            upper = text.upper()
            identifiers += 1
            if upper in ("BEGIN", "CASE"):
                if identifiers > 1:
                    depth += 1
            elif upper == "END" and depth > 0:
                depth -= 1
            if leading and len(words) < 2:
                words.append(upper)
    gap = sql[pos:]
    if start is None and gap.strip():
        start = pos + len(gap) - len(gap.lstrip())
    close(len(sql))
    return statements


def transaction_control(sql: str) -> str | None:
    """The first statement of ``sql`` that controls the transaction (COMMIT, ROLLBACK, BEGIN, END,
    ABORT, RELEASE, ROLLBACK TO, START TRANSACTION, PREPARE TRANSACTION...), or None."""
    for words, text in split_statements(sql):
        if words and (words[0] in _FIRST_WORDS or words[:2] in _FIRST_TWO_WORDS):
            return text
    return None


def first_line(text: str) -> str:
    """The first line of ``text`` without surrounding whitespace, for messages ('' when blank)."""
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def shorten(statement: str, limit: int = 100) -> str:
    """A statement's first line, cut to ``limit`` characters, for messages."""
    line = first_line(statement)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (``my"schema`` becomes ``"my""schema"``).

    ValueError if ``name`` is empty, contains NUL, or exceeds 63 bytes of UTF-8 (PostgreSQL would
    silently truncate it, so two long names could become one).
    """
    if not name:
        raise ValueError("invalid SQL identifier: it is empty")
    if "\0" in name:
        raise ValueError(f"invalid SQL identifier {name!r}: it contains NUL")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise ValueError(f"invalid SQL identifier {name!r}: it is not valid Unicode") from None
    if size > 63:  # NAMEDATALEN - 1
        raise ValueError(
            f"invalid SQL identifier {name[:20]!r}...: it is {size} bytes in UTF-8, and PostgreSQL "
            "identifiers hold at most 63 (longer ones are silently truncated)"
        )
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as an SQL string constant, read alike whatever ``standard_conforming_strings`` says
    (as PostgreSQL's ``quote_literal``: quotes doubled, and an ``E''`` constant when it has backslashes)."""
    if "\0" in text:
        raise ValueError("an SQL string constant cannot hold a NUL character")
    quoted = "'" + text.replace("'", "''").replace("\\", "\\\\") + "'"
    return "E" + quoted if "\\" in text else quoted
