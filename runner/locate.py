"""Where in a migration file a server error points: pure functions of the text and of what
the server said (an error position, the index of the failing statement, a COPY context)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from runner import sqlscript
from runner.sqlscript import Statement

Where = tuple[int | None, int | None]  # line and column in the file, 1-based
NOWHERE: Where = (None, None)
_COPY_LINE = re.compile(r"\bline (\d+)")


def position(text: str | None) -> int | None:
    """The server's 1-based character position (the diagnostic's statement_position) as a
    0-based offset."""
    return int(text) - 1 if text and text.isdigit() else None


def in_text(text: str, *, offset: int | None, statement_index: int) -> Where:
    """Where in the file `text` a failure points: its character `offset` in the text when the
    server gave one, else the start of its `statement_index`-th statement."""
    if offset is not None and 0 <= offset < len(text):
        return sqlscript.line_of(text, offset), offset - text.rfind("\n", 0, offset)
    if statement_index >= 0:
        statements = sqlscript.split(text)
        if statement_index < len(statements):
            return statements[statement_index].line, statements[statement_index].column
    return NOWHERE


def in_statement(statement: Statement, offset: int) -> Where:
    """The file's line and column of a character of `statement`."""
    before = statement.text[:offset]
    newlines = before.count("\n")
    if newlines:
        return statement.line + newlines, offset - before.rfind("\n")
    return statement.line, statement.column + offset


def in_batch(
    statements: Sequence[Statement], starts: Sequence[int], offset: int | None, index: int
) -> Where:
    """Several statements sent as one query, each starting at `starts[i]` in it."""
    if offset is not None:
        at = bisect.bisect_right(starts, offset) - 1
        return in_statement(statements[at], offset - starts[at])
    if 0 <= index < len(statements):
        return statements[index].line, None
    return NOWHERE


def in_copy_data(statement: Statement, context: str | None) -> Where:
    """A bad line of COPY data: "COPY t, line 3" is the third line of data, which starts on
    the line after the COPY statement's."""
    found = _COPY_LINE.search(context or "")
    return statement.line + (int(found.group(1)) if found else 0), None


def blanked(text: str, skipped: Sequence[Statement]) -> str:
    """The file with what is not sent (its own BEGIN and COMMIT, pg_dump's \\restrict lines)
    blanked out, lines and columns kept."""
    for statement in skipped:
        end = statement.offset + len(statement.text)
        text = text[: statement.offset] + re.sub(r"[^\n]", " ", statement.text) + text[end:]
    return text


def one_line(text: str) -> str:
    return " ".join(text.split())
