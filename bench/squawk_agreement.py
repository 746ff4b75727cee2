#!/usr/bin/env python3
"""How far `runner.lint` agrees with squawk, rule by rule, on real migration sets.

    python bench/squawk_agreement.py DIR [DIR ...]         # golang-migrate style directories
    python bench/squawk_agreement.py --tests               # the example SQL of tests/test_lint.py
    python bench/squawk_agreement.py DIR --pending-from 42 # versions >= 42 count as pending

For each rule both tools have, it prints how many findings squawk made, how many ours made,
and how many agree (same file, same line), then every disagreement with both messages. squawk
is told what the runner knows about each file as far as its flags go: an ordinary file runs
in one transaction (`--assume-in-transaction`), a `-- migrate:no-transaction` file does not.
Without --pending-from no file counts as pending, so that ours, like squawk, sees each file's
own tables only; with it, only the pending files are compared. A script run by hand, not a
test: it needs squawk (`pip install squawk-cli`, in the test extras) on PATH or given with
--squawk.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/squawk_agreement.py`: import the checkout's runner
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runner.lint import RULES, LintConfig, lint
from runner.migrations import load
from runner.planner import FILE_NAME, MigrationFile, parse_files

# squawk's rule ids (https://squawkhq.com/docs/rules), as of squawk 2.70.
SQUAWK_RULES = frozenset(
    {
        "adding-field-with-default", "adding-foreign-key-constraint", "adding-not-nullable-field",
        "adding-required-field", "adding-serial-primary-key-field",
        "ban-alter-domain-with-add-constraint", "ban-char-field",
        "ban-concurrent-index-creation-in-transaction", "ban-create-domain-with-constraint",
        "ban-drop-column", "ban-drop-database", "ban-drop-not-null", "ban-drop-table",
        "ban-duplicate-column-assignments", "ban-truncate-cascade", "ban-uncommitted-transaction",
        "changing-column-type", "constraint-missing-not-valid", "disallowed-unique-constraint",
        "identifier-too-long", "prefer-bigint-over-int", "prefer-bigint-over-smallint",
        "prefer-identity", "prefer-repack", "prefer-robust-stmts", "prefer-text-field",
        "prefer-timestamptz", "renaming-column", "renaming-table",
        "require-concurrent-index-creation", "require-concurrent-index-deletion",
        "require-concurrent-partition-detach", "require-concurrent-reindex",
        "require-enum-value-ordering", "require-lock-timeout", "require-statement-timeout",
        "require-table-schema", "syntax-error", "transaction-nesting",
    }
)  # fmt: skip
SQUAWK_ALIASES = {"prefer-timestamp-tz": "prefer-timestamptz"}
SHARED = sorted(SQUAWK_RULES & set(RULES))


@dataclass(frozen=True)
class Hit:
    rule: str
    file: str
    line: int
    message: str


def ours(files: Sequence[MigrationFile], pending: set[str] | None) -> list[Hit]:
    return [
        Hit(f.rule, f.file, f.line, f.message)
        for f in lint(files, LintConfig(), only=pending)
        if f.rule in SHARED
    ]


def squawks(squawk: str, directory: Path, files: Sequence[MigrationFile]) -> list[Hit]:
    """squawk on `files`: the ordinary ones as running in a transaction each."""
    hits: list[Hit] = []
    for in_transaction in (True, False):
        paths = [
            str(directory / file.filename)
            for file in files
            if file.no_transaction != in_transaction
        ]
        if not paths:
            continue
        flags = ["--assume-in-transaction"] if in_transaction else []
        done = subprocess.run(
            [squawk, "--reporter", "json", *flags, *paths],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode not in (0, 1) or not done.stdout.strip():
            sys.exit(f"squawk failed ({done.returncode}): {done.stderr.strip()}")
        for violation in json.loads(done.stdout):
            rule = SQUAWK_ALIASES.get(violation["rule_name"], violation["rule_name"])
            if rule in SHARED:
                hits.append(
                    Hit(
                        rule,
                        Path(violation["file"]).name,
                        violation["line"] + 1,
                        violation["message"],
                    )
                )
    return hits


def compare(
    theirs: Iterable[Hit], mine: Iterable[Hit]
) -> dict[str, tuple[int, int, int, list[str]]]:
    """rule -> (squawk's count, ours, agreed, disagreements)."""
    result = {}
    theirs, mine = list(theirs), list(mine)
    for rule in SHARED:
        by_them = Counter((h.file, h.line) for h in theirs if h.rule == rule)
        by_us = Counter((h.file, h.line) for h in mine if h.rule == rule)
        agreed = by_them & by_us
        lines = []
        for label, counted, hits in (("squawk only", by_them, theirs), ("ours only", by_us, mine)):
            for where in sorted((counted - agreed).elements()):
                message = next(
                    h.message for h in hits if h.rule == rule and (h.file, h.line) == where
                )
                lines.append(f"  {label:11} {where[0]}:{where[1]}: {message}")
        result[rule] = (sum(by_them.values()), sum(by_us.values()), sum(agreed.values()), lines)
    return result


def report(title: str, result: dict[str, tuple[int, int, int, list[str]]]) -> None:
    print(f"\n## {title}\n")
    print("| rule | squawk | ours | agreed |")
    print("|---|---:|---:|---:|")
    for rule, (theirs, mine, agreed, _) in result.items():
        if theirs or mine:
            print(f"| {rule} | {theirs} | {mine} | {agreed} |")
    for rule, (_, _, _, lines) in result.items():
        if lines:
            print(f"\n{rule}:")
            print("\n".join(lines))


def merge(
    into: dict[str, tuple[int, int, int, list[str]]],
    more: dict[str, tuple[int, int, int, list[str]]],
) -> None:
    for rule, (theirs, mine, agreed, lines) in more.items():
        old = into.get(rule, (0, 0, 0, []))
        into[rule] = (old[0] + theirs, old[1] + mine, old[2] + agreed, old[3] + lines)


def directory_run(squawk: str, directory: Path, pending_from: int | None) -> None:
    files = [f for f in load(directory) if FILE_NAME.fullmatch(f.filename)]
    known = {m.up.filename for m in parse_files(files, strict=False)} | {
        m.down.filename for m in parse_files(files, strict=False) if m.down is not None
    }
    files = [f for f in files if f.filename in known]
    pending = None
    if pending_from is not None:
        pending = {
            f.filename
            for f in files
            if int(FILE_NAME.fullmatch(f.filename)["version"]) >= pending_from  # type: ignore[index]
        }
    theirs = [
        hit for hit in squawks(squawk, directory, files) if pending is None or hit.file in pending
    ]
    result = compare(theirs, ours(files, pending))
    report(f"{directory} ({len(files)} files)", result)


def tests_run(squawk: str) -> None:
    """Each example of tests/test_lint.py in a directory of its own, its migration pending."""
    from tests.test_lint import CASES

    total: dict[str, tuple[int, int, int, list[str]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for number, case in enumerate(CASES):
            directory = Path(scratch) / f"case_{number:03}"
            directory.mkdir()
            for file in case.files():
                (directory / file.filename).write_bytes(file.content or b"")
            files = load(directory)
            pending = {f.filename for f in files if not f.filename.startswith("000001_base")}
            target = [f for f in files if f.filename == case.target]
            mine = [h for h in ours(files, pending) if h.file == case.target]
            theirs = squawks(squawk, directory, target)
            result = compare(theirs, mine)
            for rule, (t, m, a, lines) in result.items():
                result[rule] = (
                    t,
                    m,
                    a,
                    [f"{line}   [case {number}: {case.sql!r}]" for line in lines],
                )
            merge(total, result)
    report(f"tests/test_lint.py examples ({len(CASES)} cases)", total)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="*", type=Path)
    parser.add_argument("--tests", action="store_true", help="compare on tests' example SQL")
    parser.add_argument("--squawk", default=shutil.which("squawk") or "squawk")
    parser.add_argument("--pending-from", type=int, help="versions from this one are pending")
    options = parser.parse_args(argv)
    if not options.directories and not options.tests:
        parser.error("name a directory, or --tests")
    print(f"shared rules: {', '.join(SHARED)}")
    for directory in options.directories:
        directory_run(options.squawk, directory, options.pending_from)
    if options.tests:
        tests_run(options.squawk)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
