"""Reading a migration file the way PostgreSQL reads it: statements, what each one is, and the
inline data of `COPY ... FROM stdin`.

Statement boundaries come from PostgreSQL's own lexer and what a statement is from its own
parser, both through pglast (libpg_query). A file is read in chunks, so a 200 MB seed file is
never in memory at once: only the statement being looked at is. Most files need none of this:
`needs_reading` says from one regular-expression pass whether any statement can be more than
ordinary SQL, and such files go to the server as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

CHUNK = 1 << 20  # characters read at a time


class Kind(Enum):
    """What a top-level statement is, for the runner."""

    PLAIN = "plain"  # ordinary SQL, SAVEPOINT and friends included
    BEGIN = "begin"  # BEGIN or START TRANSACTION, without transaction modes
    BEGIN_WITH_MODES = "begin with transaction modes"
    COMMIT = "commit"  # COMMIT or END
    ROLLBACK = "rollback"  # ROLLBACK or ABORT
    CHAIN = "commit or rollback and chain"
    PREPARE_TRANSACTION = "prepare transaction"
    NON_TRANSACTIONAL = "non-transactional"  # refused inside a transaction block
    COPY_FROM_STDIN = "copy from stdin"
    COPY_TO_STDOUT = "copy to stdout"
    META_COMMAND = "psql meta-command"


# Statements the runner may simply run again after a failure or an interruption: a named index
# build (its invalid leftover is dropped first), a drop that tolerates absence, a rebuild.
# psql meta-commands that only guard psql itself and mean nothing to the server: pg_dump (since
# 15.14, 16.10, 17.6) wraps its output in `\\restrict KEY` ... `\\unrestrict KEY`. They are
# skipped; every other meta-command is refused.
IGNORED_META_COMMANDS = frozenset({"\\restrict", "\\unrestrict"})

RETRY_SAFE = frozenset(
    {"CREATE INDEX CONCURRENTLY", "DROP INDEX CONCURRENTLY IF EXISTS", "REINDEX CONCURRENTLY"}
)

TRANSACTION_CONTROL = frozenset(
    {
        Kind.BEGIN,
        Kind.BEGIN_WITH_MODES,
        Kind.COMMIT,
        Kind.ROLLBACK,
        Kind.CHAIN,
        Kind.PREPARE_TRANSACTION,
    }
)


@dataclass(frozen=True)
class Statement:
    text: str  # from the first token to the last, without the closing ';'
    offset: int  # of the first token in the file, 0-based characters
    line: int  # of the first token, 1-based
    kind: Kind = Kind.PLAIN
    what: str = ""  # what a NON_TRANSACTIONAL statement is: "CREATE INDEX CONCURRENTLY"
    column: int = 1  # of the first token, 1-based


@dataclass(frozen=True)
class CopyData:
    """The inline data of the COPY FROM stdin statement before it, up to its `\\.` line, in
    pieces as it is read. Iterate it before asking the reader for the next unit, or not at all."""

    statement: Statement
    pieces: Iterator[str]


class ScriptSyntaxError(Exception):
    """The file cannot be split into statements (an unterminated quote, say)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


# -- the cheap look ----------------------------------------------------------------------------

# How a statement that may be more than ordinary SQL starts: a comment (which may hide what
# follows: a reason to look), a backslash, a word of transaction control, COPY, VACUUM or
# REINDEX, or CREATE, DROP or ALTER with, soon after, a word that only the non-transactional
# forms (and BEGIN ATOMIC bodies) have. A text where no statement starts so is ordinary SQL
# for certain. Two patterns, the second led by a literal ';', so that the regular-expression
# engine skips ahead at C speed: about 500 MB/s over a seed file of INSERTs.
_SPECIAL_START = (
    r"(?:/\*|--|\\"
    r"|(?i:begin|start|commit|end|rollback|abort|prepare|copy|vacuum|reindex)\b"
    r"|(?i:create|drop|alter)\b[^;]{0,2000}?"
    r"\b(?i:concurrently|database|tablespace|subscription|system|atomic)\b)"
)
_SPECIAL_FIRST = re.compile(r"[ \t\r\n\ufeff]*+" + _SPECIAL_START)
_SPECIAL_NEXT = re.compile(r";[ \t\r\n]*+" + _SPECIAL_START)


def needs_reading(text: str) -> bool:
    """False when every statement of `text` is ordinary SQL for certain, without parsing."""
    return bool(_SPECIAL_FIRST.match(text) or _SPECIAL_NEXT.search(text))


# -- reading -----------------------------------------------------------------------------------


def read_units(read: Callable[[int], str]) -> Iterator[Statement | CopyData]:
    """The statements of a file in order, each COPY FROM stdin followed by its data.

    `read(n)` returns up to n more characters, "" at the end (a text file's read)."""
    return _Reader(read).units()


def split(text: str) -> list[Statement]:
    """Every statement of a text in memory (COPY data left out)."""
    chunks = iter((text,))
    units = read_units(lambda _size: next(chunks, ""))
    return [unit for unit in units if isinstance(unit, Statement)]


WINDOW = 1 << 16  # characters the lexer looks at first; doubled while no statement fits


class _Reader:
    def __init__(self, read: Callable[[int], str]) -> None:
        self._read = read
        self.buffer = ""
        self.position = 0  # the next character to look at, in buffer
        self.base = 0  # file offset of buffer[0]
        self.line = 1  # line of buffer[position]
        self.line_start = 0  # file offset of that line's first character
        self.eof = False

    def _fill(self) -> bool:
        """Read more, dropping what was consumed; False at the end of the file."""
        if self.eof:
            return False
        chunk = self._read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.base == 0 and not self.buffer:
            chunk = chunk.removeprefix("\ufeff")
        self.base += self.position
        self.buffer = self.buffer[self.position :] + chunk
        self.position = 0
        return True

    def _advance(self, to: int) -> None:
        newlines = self.buffer.count("\n", self.position, to)
        if newlines:
            self.line += newlines
            self.line_start = self.base + self.buffer.rfind("\n", self.position, to) + 1
        self.position = to

    def units(self) -> Iterator[Statement | CopyData]:
        self._fill()
        window = WINDOW
        while True:
            origin = self.position
            rest = self.buffer[origin : origin + window]
            whole_buffer = origin + window >= len(self.buffer)
            if whole_buffer and not rest.strip():
                if self._fill():
                    continue
                return
            first = _first_token(rest, 0)
            if rest.startswith("\\", first):  # before the lexer, which may choke on its words
                self._advance(origin + first)
                yield self._meta_command(self.base + self.position)
                continue
            at_end = whole_buffer and self.eof
            found = _complete_statements(rest, at_end=at_end)
            if found is None:  # not one whole statement in view yet
                if not whole_buffer:
                    window *= 2
                elif not self._fill() and at_end:
                    return  # only comments were left
                continue
            window = WINDOW
            for start, stop in found:
                start = _first_token(rest, start)
                self._advance(origin + start)
                offset = self.base + self.position
                if rest.startswith("\\", start):
                    # A psql meta-command ends with its line, not at a ';': what the lexer
                    # joined to it from the next lines is looked at again.
                    yield self._meta_command(offset)
                    break
                statement = _statement(
                    rest[start:stop], offset, self.line, offset - self.line_start
                )
                self._advance(origin + stop)
                if statement.kind is Kind.COPY_FROM_STDIN:
                    data = CopyData(statement, self._copy_data(statement))
                    yield data
                    for _ in data.pieces:  # the consumer did not want it
                        pass
                    break  # what the lexer saw after COPY was data: look again from here
                yield statement
            else:
                self._advance(origin + _past_semicolon(rest, found[-1][1]))

    def _meta_command(self, offset: int) -> Statement:
        """The psql meta-command at `position`: the rest of its line."""
        while (newline := self.buffer.find("\n", self.position)) < 0 and self._fill():
            pass
        end = newline if newline >= 0 else len(self.buffer)
        text = self.buffer[self.position : end].rstrip()
        statement = Statement(
            text, offset, self.line, Kind.META_COMMAND, column=offset - self.line_start + 1
        )
        self._advance(end)
        return statement

    def _copy_data(self, copy: Statement) -> Iterator[str]:
        """From the line after the COPY statement up to a line `\\.`, streamed a line at a time
        or more."""
        while (newline := self.buffer.find("\n", self.position)) < 0:
            if not self._fill():
                raise ScriptSyntaxError(copy.line, _NO_END_MARKER)
        after = self.buffer[self.position : newline].strip().removeprefix(";").strip()
        if after and not after.startswith("--"):
            raise ScriptSyntaxError(
                copy.line, "COPY ... FROM stdin must end its line: its data starts on the next"
            )
        self._advance(newline + 1)
        while True:
            found = self._end_marker()
            if found is not None:
                marker, past = found
                if marker > self.position:
                    yield self.buffer[self.position : marker]
                self._advance(past)
                return
            if self.eof:
                raise ScriptSyntaxError(copy.line, _NO_END_MARKER)
            last_newline = self.buffer.rfind("\n", self.position)
            if last_newline >= self.position:
                yield self.buffer[self.position : last_newline + 1]
                self._advance(last_newline + 1)
            self._fill()

    def _end_marker(self) -> tuple[int, int] | None:
        """(start, end) of the line `\\.` that ends COPY data; position is a line start."""
        buffer, at = self.buffer, self.position
        while (at := buffer.find("\\.", at)) >= 0:
            if at == self.position or buffer[at - 1] == "\n":
                after = buffer[at + 2 : at + 4]
                if after.startswith("\n"):
                    return at, at + 3
                if after == "\r\n":
                    return at, at + 4
                if self.eof and after in ("", "\r") and at + 2 + len(after) == len(buffer):
                    return at, len(buffer)
            at += 2
        return None


_NO_END_MARKER = (
    "COPY ... FROM stdin has no end to its data: pg_dump's form is the data on the lines after "
    "it, then a line '\\.'"
)


def _past_semicolon(text: str, stop: int) -> int:
    return stop + 1 if stop < len(text) and text[stop] == ";" else stop


def _complete_statements(text: str, *, at_end: bool) -> list[tuple[int, int]] | None:
    """(start, stop) of each statement of `text` known to be whole: closed by a ';', or the
    last one when `at_end`. None when there is none yet. A lexical error at the end of the
    file is the file's: raised once the statements before it are taken."""
    from pglast import parser

    limit = len(text)
    error: tuple[str, int] | None = None
    try:
        slices = parser.split(text, with_parser=False, only_slices=True)
    except parser.ParseError as failure:
        error = (str(failure.args[0]), int(failure.args[1]))
        limit = error[1]
        try:
            slices = parser.split(text[:limit], with_parser=False, only_slices=True)
        except parser.ParseError:
            slices = ()
    spans = _with_dropped(text, [(s.start, s.stop) for s in slices], limit)
    spans = _join_atomic_bodies(text, spans, at_end=at_end)
    last_is_whole = at_end and error is None
    whole = [
        (start, stop)
        for start, stop in spans
        if (stop < limit and text[stop] == ";") or (last_is_whole and stop <= limit)
    ]
    if whole:
        return whole
    if error is not None and at_end:
        raise ScriptSyntaxError(text.count("\n", 0, error[1]) + 1, error[0])
    return None


def _with_dropped(text: str, spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The lexer's split leaves out a statement that does not begin with a keyword (a typo such
    as `SELEC 1`, or `foo;`), which must reach the server and fail there, not vanish: what lies
    between two of its statements becomes statements too."""
    filled: list[tuple[int, int]] = []
    position = 0
    for start, stop in [*spans, (limit, limit)]:
        if start > position:
            filled.extend(_statements_between(text, position, start))
        if start < limit:
            filled.append((start, stop))
        position = _past_semicolon(text, stop)
    return filled


def _statements_between(text: str, begin: int, end: int) -> list[tuple[int, int]]:
    from pglast import parser

    if not text[begin:end].strip():
        return []
    try:
        tokens = parser.scan(text[begin:end])
    except parser.ParseError:
        return [(begin, end)]  # the server will say what is wrong with it
    found: list[tuple[int, int]] = []
    first: int | None = None
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            continue
        if token.name == "ASCII_59":
            if first is not None:
                found.append((begin + first, begin + token.start))
            first = None
        elif first is None:
            first = token.start
    if first is not None:
        found.append((begin + first, end))
    return found


_ROUTINE = re.compile(r"create\s+(?:or\s+replace\s+)?(?:function|procedure)\b", re.IGNORECASE)
_BEGIN_ATOMIC = re.compile(r"\bbegin\s+atomic\b", re.IGNORECASE)


def _join_atomic_bodies(
    text: str, spans: list[tuple[int, int]], *, at_end: bool
) -> list[tuple[int, int]]:
    """The lexer ends a statement at every ';', also inside a function's BEGIN ATOMIC ... END
    body: join the pieces again until the parser accepts the whole. A body whose end is not
    in `text` yet ends the list, unless the file ends there."""
    from pglast import parser

    joined: list[tuple[int, int]] = []
    index = 0
    while index < len(spans):
        start, stop = spans[index]
        index += 1
        piece = text[_first_token(text, start) : stop]
        if _ROUTINE.match(piece) and _BEGIN_ATOMIC.search(piece):
            while True:
                try:
                    parser.parse_sql(text[start:stop])
                    break
                except parser.ParseError:
                    if index == len(spans):
                        return joined if not at_end else [*joined, (start, stop)]
                    stop = spans[index][1]
                    index += 1
        joined.append((start, stop))
    return joined


_COMMENTS = re.compile(r"(?:\s+|--[^\n]*)+")


def _first_token(text: str, start: int) -> int:
    """Past the blanks and comments at `start`: the lexer's slices may begin with them."""
    while True:
        blank = _COMMENTS.match(text, start)
        if blank:
            start = blank.end()
        if not text.startswith("/*", start):
            return start
        depth, at = 0, start
        while at < len(text):
            if text.startswith("/*", at):
                depth, at = depth + 1, at + 2
            elif text.startswith("*/", at):
                depth, at = depth - 1, at + 2
                if depth == 0:
                    break
            else:
                at += 1
        start = at


# -- what a statement is -----------------------------------------------------------------------

_FIRST_WORD = re.compile(r"[A-Za-z]+")
_CANDIDATES = frozenset(
    {
        "begin", "start", "commit", "end", "rollback", "abort", "prepare", "copy", "create",
        "drop", "reindex", "vacuum", "alter",
    }
)  # fmt: skip


def _statement(text: str, offset: int, line: int, before: int) -> Statement:
    """`before`: how many characters of its line come before it."""
    kind, what = Kind.PLAIN, ""
    if (word := _FIRST_WORD.match(text)) and word.group(0).lower() in _CANDIDATES:
        kind, what = classify(text)
    return Statement(text, offset, line, kind, what, column=before + 1)


def classify(text: str) -> tuple[Kind, str]:
    """What one statement is, by PostgreSQL's parser; (PLAIN, "") for one it cannot parse,
    which the server will then refuse with its own message."""
    from pglast import ast, enums, parser

    try:
        parsed = parser.parse_sql(text)
    except parser.ParseError:
        return Kind.PLAIN, ""
    if len(parsed) != 1:
        return Kind.PLAIN, ""
    node: Any = parsed[0].stmt
    transaction = enums.TransactionStmtKind
    if isinstance(node, ast.TransactionStmt):
        if node.kind in (transaction.TRANS_STMT_BEGIN, transaction.TRANS_STMT_START):
            return (Kind.BEGIN_WITH_MODES if node.options else Kind.BEGIN), ""
        if node.kind == transaction.TRANS_STMT_COMMIT:
            return (Kind.CHAIN if node.chain else Kind.COMMIT), ""
        if node.kind == transaction.TRANS_STMT_ROLLBACK:
            return (Kind.CHAIN if node.chain else Kind.ROLLBACK), ""
        if node.kind == transaction.TRANS_STMT_PREPARE:
            return Kind.PREPARE_TRANSACTION, ""
        if node.kind in (
            transaction.TRANS_STMT_COMMIT_PREPARED,
            transaction.TRANS_STMT_ROLLBACK_PREPARED,
        ):
            return Kind.NON_TRANSACTIONAL, "COMMIT PREPARED / ROLLBACK PREPARED"
        return Kind.PLAIN, ""
    if isinstance(node, ast.CopyStmt) and node.filename is None and not node.is_program:
        return (Kind.COPY_FROM_STDIN if node.is_from else Kind.COPY_TO_STDOUT), ""
    what = _non_transactional(node)
    return (Kind.NON_TRANSACTIONAL, what) if what else (Kind.PLAIN, "")


def _non_transactional(node: Any) -> str:
    """What `node` is when PostgreSQL refuses it inside a transaction block, else ""."""
    from pglast import ast, enums

    if isinstance(node, ast.IndexStmt) and node.concurrent:
        return "CREATE INDEX CONCURRENTLY" + ("" if node.idxname else " without an index name")
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return "DROP INDEX CONCURRENTLY" + (" IF EXISTS" if node.missing_ok else "")
    if isinstance(node, ast.ReindexStmt):
        if any(option.defname == "concurrently" for option in node.params or ()):
            return "REINDEX CONCURRENTLY"
        if node.kind in (
            enums.ReindexObjectType.REINDEX_OBJECT_DATABASE,
            enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM,
        ):
            return "REINDEX DATABASE / SYSTEM"
        return ""
    if isinstance(node, ast.AlterTableStmt):
        for command in node.cmds or ():
            partition = getattr(command, "def_", None)
            if isinstance(partition, ast.PartitionCmd) and partition.concurrent:
                return "DETACH PARTITION ... CONCURRENTLY"
        return ""
    if isinstance(node, ast.AlterDatabaseStmt):
        if any(option.defname == "tablespace" for option in node.options or ()):
            return "ALTER DATABASE ... SET TABLESPACE"
        return ""
    if isinstance(node, ast.CreateSubscriptionStmt):
        options = {option.defname: option for option in node.options or ()}
        create_slot = options.get("create_slot")
        if create_slot is None or _true(create_slot):
            return "CREATE SUBSCRIPTION (with create_slot)"
        return ""
    named = {
        ast.VacuumStmt: "VACUUM",
        ast.CreatedbStmt: "CREATE DATABASE",
        ast.DropdbStmt: "DROP DATABASE",
        ast.CreateTableSpaceStmt: "CREATE TABLESPACE",
        ast.DropTableSpaceStmt: "DROP TABLESPACE",
        ast.AlterSystemStmt: "ALTER SYSTEM",
        ast.DropSubscriptionStmt: "DROP SUBSCRIPTION",
    }
    for node_type, name in named.items():
        if isinstance(node, node_type):
            if node_type is ast.VacuumStmt and not getattr(node, "is_vacuumcmd", True):
                return ""  # ANALYZE runs in a transaction
            return name
    return ""


def _true(option: Any) -> bool:
    value = getattr(getattr(option, "arg", None), "sval", None)
    if value is None:
        value = getattr(getattr(option, "arg", None), "boolval", True)
    return str(value).lower() not in ("false", "off", "0", "no")


def line_of(script: str, offset: int) -> int:
    """1-based line of a 0-based character offset."""
    return script.count("\n", 0, max(offset, 0)) + 1


_CREATE_INDEX_CONCURRENTLY = re.compile(
    r"create\s+(unique\s+)?index\s+concurrently\s+(if\s+not\s+exists\s+)?"
    r"(?P<name>\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)\s+on\s+(only\s+)?"
    r"(?P<table>(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)"
    r"(\.(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*))?)",
    re.IGNORECASE,
)


def concurrent_index(statement: str) -> tuple[str, str] | None:
    """(index name, table as written) of a CREATE INDEX CONCURRENTLY statement."""
    match = _CREATE_INDEX_CONCURRENTLY.match(statement)
    if match is None:
        return None
    name = match["name"]
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return name, match["table"]
