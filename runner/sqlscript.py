"""Splitting a SQL script into statements the way PostgreSQL's own lexer does.

The runner sends a transactional migration to the server as written, in one simple query;
the split is used to name the line of a failing statement. It knows quotes, E'' strings,
quoted identifiers, dollar quoting, nested block comments, and BEGIN ATOMIC bodies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Identifiers: a letter or _ (any script), then letters, digits, _ (and $ outside tags).
_DOLLAR_TAG = re.compile(r"\$([^\W\d]\w*)?\$")
_WORD = re.compile(r"[^\W\d][\w$]*")
_ROUTINE = re.compile(r"create\s+(or\s+replace\s+)?(function|procedure)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Statement:
    text: str
    offset: int  # of the statement's first token in the script, 0-based characters
    line: int  # of the statement's first token, 1-based


def split(script: str) -> list[Statement]:
    """Statements in order; empty ones (only blanks, comments or ';') are left out, as the
    server leaves them out."""
    statements: list[Statement] = []
    first_token: int | None = None
    words: list[str] = []  # leading keywords of the current statement, lowercased
    depth = 0  # BEGIN ATOMIC / CASE nesting inside a routine body
    i = 0
    n = len(script)

    def finish(end: int) -> None:
        if first_token is not None:
            text = script[first_token:end].strip()
            line = script.count("\n", 0, first_token) + 1
            statements.append(Statement(text=text, offset=first_token, line=line))

    while i < n:
        char = script[i]
        nxt = script[i + 1] if i + 1 < n else ""
        if char == "-" and nxt == "-":
            newline = script.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if char == "/" and nxt == "*":
            i = _skip_block_comment(script, i)
            continue
        if char.isspace():
            i += 1
            continue
        if first_token is None:
            first_token = i
        if char == ";":
            if depth == 0:
                if first_token == i:  # a lone ';'
                    first_token = None
                else:
                    finish(i + 1)
                    first_token = None
                    words = []
            i += 1
            continue
        if char in "'\"":
            escaped = (
                char == "'" and i > 0 and script[i - 1] in "eE" and _starts_word(script, i - 1)
            )
            i = _skip_quoted(script, i, char, backslash=escaped)
            continue
        if char == "$":
            tag = _DOLLAR_TAG.match(script, i)
            if tag and not (i > 0 and (script[i - 1].isalnum() or script[i - 1] == "_")):
                close = script.find(tag.group(0), tag.end())
                i = n if close < 0 else close + len(tag.group(0))
                continue
            i += 1
            continue
        word = _WORD.match(script, i)
        if word:
            lowered = word.group(0).lower()
            if len(words) < 4:
                words.append(lowered)
            if _ROUTINE.match(" ".join(words)):
                if lowered in ("begin", "case"):
                    depth += 1
                elif lowered == "end" and depth > 0:
                    depth -= 1
            i = word.end()
            continue
        i += 1
    finish(n)
    return statements


def line_of(script: str, offset: int) -> int:
    """1-based line of a 0-based character offset."""
    return script.count("\n", 0, max(offset, 0)) + 1


def _starts_word(script: str, i: int) -> bool:
    return i == 0 or not (script[i - 1].isalnum() or script[i - 1] in "_$")


def _skip_block_comment(script: str, i: int) -> int:
    depth = 0
    n = len(script)
    while i < n:
        if script.startswith("/*", i):
            depth += 1
            i += 2
        elif script.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_quoted(script: str, i: int, quote: str, *, backslash: bool) -> int:
    n = len(script)
    i += 1
    while i < n:
        char = script[i]
        if backslash and char == "\\":
            i += 2
            continue
        if char == quote:
            if i + 1 < n and script[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


# Statements PostgreSQL refuses inside a transaction block, with the first words that say so.
_NON_TRANSACTIONAL = re.compile(
    r"(create\s+(unique\s+)?index\s+concurrently"
    r"|drop\s+index\s+concurrently"
    r"|reindex\b[^;]*?\bconcurrently"
    r"|vacuum\b"
    r"|(create|drop)\s+database\b"
    r"|(create|drop)\s+tablespace\b"
    r"|alter\s+system\b"
    r"|create\s+subscription\b"
    r"|alter\s+database\s+\S+\s+set\s+tablespace\b)",
    re.IGNORECASE,
)


_MAYBE_NON_TRANSACTIONAL = re.compile(
    r"concurrently|vacuum|database|tablespace|system|subscription", re.IGNORECASE
)


def non_transactional_statement(script: str) -> Statement | None:
    """The first statement that cannot run inside a transaction block, if any."""
    if not _MAYBE_NON_TRANSACTIONAL.search(script):
        return None  # the common case, without splitting
    for statement in split(script):
        if _NON_TRANSACTIONAL.match(statement.text):
            return statement
    return None


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
