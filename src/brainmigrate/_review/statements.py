"""What one SQL statement touches, and the actions of it the lint rules look at.

SQL is split into statements by the lexical splitter of :mod:`brainmigrate._model.sqltext`, then
each statement is read token by token (see :mod:`.tokens`): ``CREATE TABLE``, ``CREATE INDEX``,
``ALTER TABLE`` (each of its actions), ``DROP TABLE``, ``UPDATE``, ``INSERT``, ``DELETE`` and
``TRUNCATE``. Other statements touch nothing that is known. Each statement also yields its
actions: an index built, a column added, retyped or made NOT NULL, a CHECK added or validated.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from .._model.sqltext import quote_ident, split_statements
from .tokens import (
    Token,
    at_depth_zero,
    expression_columns,
    functions_called,
    not_null_columns,
    parenthesised,
    split_top,
    tokens,
    tokens_text,
)


class Access(enum.IntEnum):
    """How a statement touches a table or column; the higher, the more order matters."""

    #: Reads it (an index over it, a data migration's input).
    READ = 1
    #: Changes its values (UPDATE, a data migration's output).
    WRITE = 2
    #: Changes its definition (created, dropped, retyped, renamed, constrained).
    DEFINE = 3


@attrs.frozen
class Table:
    """A table as a statement names it; unquoted names folded to lower case, as PostgreSQL does."""

    name: str
    schema: str | None = None

    @property
    def key(self) -> str:
        """The name compared between migrations (``public.`` is the default schema)."""
        return self.name if self.schema in (None, "public") else f"{self.schema}.{self.name}"

    @property
    def regclass(self) -> str | None:
        """The name quoted, for ``to_regclass``; None for a name PostgreSQL would not keep as written
        (empty, or longer than 63 bytes)."""
        try:
            quoted = quote_ident(self.name)
            return quoted if self.schema is None else f"{quote_ident(self.schema)}.{quoted}"
        except ValueError:
            return None


@attrs.frozen
class Touch:
    """One table (``column`` None: all of it) or column, and how it is touched."""

    table: str
    column: str | None
    access: Access

    def clashes(self, other: Touch) -> bool:
        """Whether the order of the two matters: the same column (or table) and not reads only, nor
        a read and a write (an index does not care which value it indexes first)."""
        if self.table != other.table:
            return False
        if self.column is not None and other.column is not None and self.column != other.column:
            return False
        accesses = {self.access, other.access}
        return Access.DEFINE in accesses or accesses == {Access.WRITE}

    def __str__(self) -> str:
        return self.table if self.column is None else f"{self.table}.{self.column}"


class ActionKind(enum.StrEnum):
    CREATE_INDEX = "create_index"
    ADD_COLUMN = "add_column"
    ALTER_TYPE = "alter_type"
    SET_NOT_NULL = "set_not_null"
    ADD_CHECK = "add_check"
    VALIDATE_CONSTRAINT = "validate_constraint"


@attrs.frozen(kw_only=True)
class Action:
    """What the lint rules need to know of one part of a statement."""

    kind: ActionKind
    table: Table
    column: str | None = None
    #: CREATE INDEX: built CONCURRENTLY.
    concurrently: bool = False
    #: ADD COLUMN: its DEFAULT expression as written, and the functions it calls.
    default: str | None = None
    functions: tuple[str, ...] = ()
    not_null: bool = False
    #: ADD COLUMN: serial, identity or generated, which fill every row whatever the default.
    rewrites: str | None = None
    #: ADD CHECK and VALIDATE CONSTRAINT: the constraint's name; ADD CHECK: the columns it proves
    #: NOT NULL and whether it is validated at once (no NOT VALID).
    constraint: str | None = None
    not_null_columns: tuple[str, ...] = ()
    valid: bool = True


@attrs.frozen
class Statement:
    """One SQL statement, what it touches and its actions."""

    text: str
    touches: tuple[Touch, ...] = ()
    actions: tuple[Action, ...] = ()


class _Reader:
    """A cursor over a statement's tokens."""

    def __init__(self, items: list[Token]) -> None:
        self.items = items
        self.pos = 0

    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.items[index] if index < len(self.items) else None

    def accept(self, *words: str) -> bool:
        """Step over the words given, in this order, if they come next."""
        for offset, word in enumerate(words):
            token = self.peek(offset)
            if token is None or not token.is_word(word):
                return False
        self.pos += len(words)
        return True

    def name(self) -> Table | None:
        """A name, qualified or not (``schema.table``; a database prefix is dropped)."""
        parts: list[str] = []
        while True:
            token = self.peek()
            if token is None or not token.is_name:
                return None
            parts.append(token.value)
            self.pos += 1
            dot = self.peek()
            if dot is None or dot.kind != "punct" or dot.value != ".":
                break
            self.pos += 1
        return Table(parts[-1], parts[-2] if len(parts) > 1 else None)

    def rest(self) -> list[Token]:
        return self.items[self.pos :]


def parse_statement(text: str) -> Statement:
    """What one statement touches, and its actions for the lint rules."""
    reader = _Reader([t for t in tokens(text) if not (t.kind == "punct" and t.value == ";")])
    touches: list[Touch] = []
    actions: list[Action] = []
    if reader.accept("create"):
        _create(reader, touches, actions)
    elif reader.accept("alter", "table"):
        _alter_table(reader, touches, actions)
    elif reader.accept("drop", "table"):
        reader.accept("if", "exists")
        for part in split_top(reader.rest()):
            table = _Reader(part).name()
            if table is not None:
                touches.append(Touch(table.key, None, Access.DEFINE))
    elif reader.accept("update"):
        _update(reader, touches)
    elif reader.accept("insert", "into"):
        table = reader.name()
        if table is not None:
            nxt = reader.peek()
            columns = _columns_in(reader) if nxt is not None and nxt.value == "(" else []
            touches.extend(Touch(table.key, column, Access.WRITE) for column in _or_table(columns))
    elif reader.accept("delete", "from"):
        reader.accept("only")
        table = reader.name()
        if table is not None:
            touches.append(Touch(table.key, None, Access.WRITE))
    elif reader.accept("truncate"):
        reader.accept("table")
        for part in split_top(reader.rest()):
            sub = _Reader(part)
            sub.accept("only")
            table = sub.name()
            if table is not None:
                touches.append(Touch(table.key, None, Access.WRITE))
    return Statement(text, tuple(dict.fromkeys(touches)), tuple(actions))


def parse_sql(sql: str) -> list[Statement]:
    """Every statement of ``sql``, split where PostgreSQL would split it."""
    return [parse_statement(text) for _, text in split_statements(sql)]


def _or_table(columns: Sequence[str]) -> list[str | None]:
    """The columns once each, or None (the whole table) when there are none."""
    return [*dict.fromkeys(columns)] or [None]


def _columns_in(reader: _Reader) -> list[str]:
    """Names of a parenthesised column list at the reader (first name of each element)."""
    inside, reader.pos = parenthesised(reader.items, reader.pos)
    return [part[0].value for part in split_top(inside) if part[0].is_name]


def _create(reader: _Reader, touches: list[Touch], actions: list[Action]) -> None:
    reader.accept("or", "replace")
    for word in ("global", "local", "temporary", "temp", "unlogged"):
        reader.accept(word)
    if reader.accept("table"):
        reader.accept("if", "not", "exists")
        table = reader.name()
        if table is not None:
            touches.append(Touch(table.key, None, Access.DEFINE))
        return
    reader.accept("unique")
    if not reader.accept("index"):
        return
    concurrently = reader.accept("concurrently")
    reader.accept("if", "not", "exists")
    if not reader.accept("on"):
        reader.name()
        if not reader.accept("on"):
            return
    reader.accept("only")
    table = reader.name()
    if table is None:
        return
    if reader.accept("using"):
        reader.name()
    columns: list[str] = []
    nxt = reader.peek()
    if nxt is not None and nxt.value == "(":
        inside, reader.pos = parenthesised(reader.items, reader.pos)
        for element in split_top(inside):
            second = element[1] if len(element) > 1 else None
            if element[0].is_name and not (second is not None and second.value in ("(", ".")):
                columns.append(element[0].value)  # a column, then its collation, opclass, order
            else:
                columns.extend(expression_columns(element))
        if reader.accept("include"):
            columns.extend(_columns_in(reader))
    touches.extend(Touch(table.key, column, Access.READ) for column in _or_table(columns))
    actions.append(Action(kind=ActionKind.CREATE_INDEX, table=table, concurrently=concurrently))


def _alter_table(reader: _Reader, touches: list[Touch], actions: list[Action]) -> None:
    reader.accept("if", "exists")
    reader.accept("only")
    table = reader.name()
    if table is None:
        return
    star = reader.peek()
    if star is not None and star.value == "*":
        reader.pos += 1
    for part in split_top(reader.rest()):
        _alter_action(_Reader(part), table, touches, actions)


_CONSTRAINT_STARTS = ("constraint", "check", "primary", "unique", "foreign", "exclude")
_SERIALS = frozenset({"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"})
#: Words that end a column's DEFAULT expression.
_AFTER_DEFAULT = frozenset(
    {"constraint", "not", "null", "check", "references", "primary", "unique", "generated", "collate"}
)


def _alter_action(reader: _Reader, table: Table, touches: list[Touch], actions: list[Action]) -> None:
    def define(*columns: str | None) -> None:
        touches.extend(Touch(table.key, column, Access.DEFINE) for column in columns)

    first = reader.peek()
    if first is None:
        return
    if reader.accept("add"):
        nxt = reader.peek()
        if nxt is not None and nxt.is_word(*_CONSTRAINT_STARTS):
            _add_constraint(reader, table, touches, actions)
            return
        reader.accept("column")
        reader.accept("if", "not", "exists")
        column = reader.name()
        if column is not None:
            define(column.name)
            actions.append(_add_column(table, column.name, reader.rest()))
    elif reader.accept("drop"):
        if reader.accept("constraint"):
            return
        reader.accept("column")
        reader.accept("if", "exists")
        column = reader.name()
        if column is not None:
            define(column.name)
    elif reader.accept("alter"):
        reader.accept("column")
        column = reader.name()
        if column is None:
            return
        define(column.name)
        if reader.accept("type") or reader.accept("set", "data", "type"):
            actions.append(Action(kind=ActionKind.ALTER_TYPE, table=table, column=column.name))
        elif reader.accept("set", "not", "null"):
            actions.append(Action(kind=ActionKind.SET_NOT_NULL, table=table, column=column.name))
    elif reader.accept("rename"):
        if reader.accept("constraint"):
            return
        if reader.accept("to"):
            new = reader.name()
            define(None)
            if new is not None:
                touches.append(Touch(Table(new.name, table.schema).key, None, Access.DEFINE))
            return
        reader.accept("column")
        old = reader.name()
        if old is not None and reader.accept("to"):
            new = reader.name()
            define(old.name, *([new.name] if new is not None else []))
    elif reader.accept("validate", "constraint"):
        name = reader.name()
        if name is not None:
            actions.append(Action(kind=ActionKind.VALIDATE_CONSTRAINT, table=table, constraint=name.name))


def _add_column(table: Table, column: str, rest: list[Token]) -> Action:
    top = list(at_depth_zero(rest))
    words = [token.value if token.kind == "word" else "" for _, token in top]
    default: list[Token] | None = None
    if "default" in words:
        start = top[words.index("default")][0] + 1
        end = next(
            (i for i, token in top if i >= start and token.kind == "word" and token.value in _AFTER_DEFAULT),
            len(rest),
        )
        default = rest[start:end]
    not_null = any(words[i : i + 2] == ["not", "null"] for i in range(len(words)))
    rewrites = None
    if rest and rest[0].is_word(*_SERIALS):
        rewrites = f"its type {rest[0].value} takes its values from a sequence"
    elif "generated" in words:
        after = words[words.index("generated") :]
        rewrites = (
            "it is an identity column, numbered from a sequence"
            if "identity" in after
            else "it is a stored generated column, computed for every row"
        )
    return Action(
        kind=ActionKind.ADD_COLUMN,
        table=table,
        column=column,
        default=tokens_text(default) if default is not None else None,
        functions=tuple(functions_called(default or [])),
        not_null=not_null,
        rewrites=rewrites,
    )


def _add_constraint(reader: _Reader, table: Table, touches: list[Touch], actions: list[Action]) -> None:
    name = None
    if reader.accept("constraint"):
        named = reader.name()
        name = named.name if named is not None else None
    if reader.accept("check"):
        nxt = reader.peek()
        if nxt is None or nxt.value != "(":
            return
        inside, reader.pos = parenthesised(reader.items, reader.pos)
        touches.extend(Touch(table.key, column, Access.DEFINE) for column in expression_columns(inside))
        rest = [token.value for token in reader.rest() if token.kind == "word"]
        valid = not any(rest[i : i + 2] == ["not", "valid"] for i in range(len(rest)))
        actions.append(
            Action(
                kind=ActionKind.ADD_CHECK,
                table=table,
                constraint=name,
                not_null_columns=tuple(not_null_columns(inside)),
                valid=valid,
            )
        )
        return
    while reader.peek() is not None:
        token = reader.peek()
        if token is not None and token.value == "(":
            touches.extend(Touch(table.key, column, Access.DEFINE) for column in _columns_in(reader))
            return
        reader.pos += 1


def _update(reader: _Reader, touches: list[Touch]) -> None:
    reader.accept("only")
    table = reader.name()
    if table is None:
        return
    while reader.peek() is not None and not reader.accept("set"):
        reader.pos += 1  # '*', an alias
    rest = reader.rest()
    stop = next(
        (i for i, token in at_depth_zero(rest) if token.is_word("from", "where", "returning")), len(rest)
    )
    clause = rest[:stop]
    columns: list[str] = []
    for target in split_top(clause):
        if target[0].kind == "punct" and target[0].value == "(":
            inside, _ = parenthesised(target, 0)
            columns.extend(part[0].value for part in split_top(inside) if part[0].is_name)
        elif target[0].is_name:
            columns.append(target[0].value)
    touches.extend(Touch(table.key, column, Access.WRITE) for column in _or_table(columns))
