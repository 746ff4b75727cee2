"""The rules engine of `migration-runner lint`: what a migration would do to a busy database and
to the application running against it, found in the files alone, without a database.

Statements are read as the runner reads them (sqlscript.split) and understood by PostgreSQL's
own parser (pglast). Each file is linted knowing how the runner runs it: an ordinary file in one
transaction, a `-- migrate:no-transaction` file a statement at a time. Rule ids are squawk's
where squawk has the rule (https://squawkhq.com/docs/rules), so that its documentation and its
`-- squawk-ignore` comments carry over.

A finding can be suppressed for one statement by a comment on the line above it, on its first
line, inside it, or after it on its last line:
`-- migration-runner:ignore RULE[, RULE...] reason: why this one is safe`. The reason is
mandatory. squawk's `-- squawk-ignore RULE -- reason: ...` works the same way for the rules
both tools have.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import takewhile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pglast import ast, enums, keywords, parser

from runner.errors import ConfigError
from runner.planner import FILE_NAME, MigrationFile, parse_files
from runner.sqlscript import TRANSACTION_CONTROL, Kind, ScriptSyntaxError, Statement, split

Level = Literal["error", "warning"]
LEVELS: tuple[Level, ...] = ("error", "warning")


@dataclass(frozen=True)
class Finding:
    rule: str
    level: Level
    file: str  # the migration's file name, as MigrationFile.filename
    line: int  # 1-based
    column: int  # 1-based, in characters
    message: str
    recipe: str  # the safe way to do it


@dataclass(frozen=True)
class Rule:
    id: str
    level: Level  # by default
    summary: str
    recipe: str


RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        # -- locks and table rewrites on a table in use ---------------------------------------
        Rule(
            "require-concurrent-index-creation",
            "error",
            "CREATE INDEX without CONCURRENTLY blocks writes to the table while the index builds",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ... in a file of its own whose first line "
            "is '-- migrate:no-transaction'",
        ),
        Rule(
            "require-concurrent-index-deletion",
            "error",
            "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the table",
            "DROP INDEX CONCURRENTLY IF EXISTS ... in a '-- migrate:no-transaction' file",
        ),
        Rule(
            "constraint-missing-not-valid",
            "error",
            "a CHECK or FOREIGN KEY constraint added without NOT VALID scans the whole table "
            "while it blocks writes",
            "ADD CONSTRAINT ... NOT VALID in one migration, then ALTER TABLE ... VALIDATE "
            "CONSTRAINT ... in a later one (it scans without blocking writes)",
        ),
        Rule(
            "adding-foreign-key-constraint",
            "error",
            "a foreign key added without NOT VALID blocks writes to both tables while the "
            "table is scanned",
            "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID in one migration, then VALIDATE "
            "CONSTRAINT ... in a later one",
        ),
        Rule(
            "disallowed-unique-constraint",
            "error",
            "a UNIQUE constraint builds its index under an ACCESS EXCLUSIVE lock",
            "CREATE UNIQUE INDEX CONCURRENTLY in a no-transaction file, then ADD CONSTRAINT ... "
            "UNIQUE USING INDEX ... in a later migration",
        ),
        Rule(
            "adding-field-with-default",
            "error",
            "a column added with a volatile default, an identity or a stored generated value "
            "rewrites the whole table under an ACCESS EXCLUSIVE lock",
            "add the column without the default, SET DEFAULT for new rows, backfill existing "
            "rows in batches (a constant default does not rewrite on PostgreSQL 11+)",
        ),
        Rule(
            "changing-column-type",
            "error",
            "changing a column's type rewrites the table under an ACCESS EXCLUSIVE lock and may "
            "break readers",
            "add a column of the new type, write both, backfill in batches, switch readers, "
            "then drop the old column",
        ),
        Rule(
            "adding-required-field",
            "error",
            "a column added NOT NULL without a default fails on a table with rows and breaks "
            "inserts of the running application",
            "add the column nullable (or with a constant DEFAULT), backfill, then make it NOT "
            "NULL with a validated CHECK constraint",
        ),
        Rule(
            "adding-not-nullable-field",
            "error",
            "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
            "ADD CONSTRAINT ..._not_null CHECK (col IS NOT NULL) NOT VALID; in a later "
            "migration VALIDATE CONSTRAINT ..._not_null, then SET NOT NULL (no scan: the "
            "validated check proves it) and DROP CONSTRAINT ..._not_null",
        ),
        Rule(
            "adding-serial-primary-key-field",
            "error",
            "a primary key added to a table builds its index under an ACCESS EXCLUSIVE lock",
            "CREATE UNIQUE INDEX CONCURRENTLY in a no-transaction file, then ADD CONSTRAINT ... "
            "PRIMARY KEY USING INDEX ...",
        ),
        Rule(
            "prefer-repack",
            "error",
            "VACUUM FULL and CLUSTER rewrite the table under an ACCESS EXCLUSIVE lock",
            "pg_repack (or REPACK (CONCURRENTLY) on PostgreSQL 19+), outside migrations",
        ),
        Rule(
            "ban-concurrent-index-creation-in-transaction",
            "error",
            "a CONCURRENTLY statement cannot run in a transaction, and an ordinary migration "
            "runs in one",
            "move it to a file of its own whose first line is '-- migrate:no-transaction', "
            "outside any BEGIN ... COMMIT block",
        ),
        Rule(
            "transaction-nesting",
            "error",
            "transaction control the runner cannot honour: it owns the migration's transaction",
            "remove it (a BEGIN first and a COMMIT last are allowed), or split the file; in a "
            "no-transaction file pair each BEGIN with one COMMIT",
        ),
        # -- changes that break the running application --------------------------------------
        Rule(
            "renaming-column",
            "error",
            "renaming a column breaks the running application's queries",
            "add the new column, write both, backfill, move readers, then drop the old column",
        ),
        Rule(
            "renaming-table",
            "error",
            "renaming a table breaks the running application's queries",
            "create the new table (or a view under the new name), move readers and writers, "
            "then drop the old one",
        ),
        Rule(
            "ban-drop-column",
            "error",
            "dropping a column breaks the running application if it still reads it",
            "stop reading and writing the column in a release first, then drop it",
        ),
        Rule(
            "ban-drop-table",
            "error",
            "dropping a table breaks the running application if it still uses it",
            "stop using the table in a release first, then drop it",
        ),
        Rule(
            "ban-drop-database",
            "error",
            "dropping a database from a migration",
            "do it by hand, outside migrations",
        ),
        Rule(
            "ban-drop-not-null",
            "error",
            "dropping NOT NULL lets NULLs reach readers that do not expect them",
            "make every reader handle NULL in a release first",
        ),
        Rule(
            "ban-truncate-cascade",
            "error",
            "TRUNCATE ... CASCADE also empties every table that refers to these, recursively",
            "TRUNCATE exactly the tables meant, without CASCADE",
        ),
        # -- hygiene ---------------------------------------------------------------------------
        Rule(
            "prefer-robust-stmts",
            "warning",
            "in a no-transaction file a statement that cannot run twice blocks the re-run after "
            "a failure",
            "IF NOT EXISTS / IF EXISTS, or DROP CONSTRAINT IF EXISTS before ADD CONSTRAINT",
        ),
        Rule(
            "prefer-bigint-over-int",
            "warning",
            "a 32-bit integer column runs out at 2,147,483,647",
            "bigint (bigserial: bigint GENERATED BY DEFAULT AS IDENTITY)",
        ),
        Rule(
            "prefer-identity",
            "warning",
            "serial columns own a separate sequence with its own permissions",
            "bigint GENERATED BY DEFAULT AS IDENTITY",
        ),
        Rule(
            "prefer-timestamptz",
            "warning",
            "timestamp without time zone drops the offset of every value written",
            "timestamptz",
        ),
        Rule(
            "prefer-text-field",
            "warning",
            "changing a varchar(n) limit later takes an ACCESS EXCLUSIVE lock",
            "text, with a CHECK (length(col) <= n) constraint if a limit is needed",
        ),
        Rule(
            "identifier-too-long",
            "warning",
            "PostgreSQL truncates identifiers to 63 bytes",
            "a name of at most 63 bytes",
        ),
        # -- this project's own ----------------------------------------------------------------
        Rule(
            "naming-table",
            "warning",
            "table names are plural snake_case",
            "rename it: plural snake_case (order_items)",
        ),
        Rule(
            "naming-column",
            "warning",
            "column names are singular snake_case",
            "rename it: singular snake_case (created_at)",
        ),
        Rule(
            "naming-index",
            "warning",
            "index names are idx_{table}_{columns}",
            "CREATE INDEX idx_{table}_{column}_{column} ON {table} ({column}, {column})",
        ),
        Rule(
            "naming-foreign-key",
            "warning",
            "foreign key names are fk_{table}_{referenced_table}",
            "CONSTRAINT fk_{table}_{referenced_table} FOREIGN KEY ...",
        ),
        Rule(
            "naming-version",
            "warning",
            "versions are 6 digits (000042) or a 14-digit timestamp (20240131120000)",
            "rename the files: `migration-runner new NAME` picks the next 6-digit version",
        ),
        Rule(
            "missing-down-file",
            "warning",
            "an up file without a down file cannot be rolled back",
            "add {version}_{name}.down.sql that undoes it",
        ),
        Rule(
            "no-lock-timeout-override",
            "error",
            "a migration that sets lock_timeout to 0 can queue every query behind its lock",
            "leave lock_timeout to the runner (DDL_LOCK_TIMEOUT); raise it for one file if a "
            "lock needs longer, never to 0",
        ),
        # -- about the lint itself -------------------------------------------------------------
        Rule(
            "suppression-without-reason",
            "error",
            "a suppression comment must say why the statement is safe",
            "-- migration-runner:ignore RULE reason: why this is safe here",
        ),
        Rule(
            "suppression-unknown-rule",
            "error",
            "a suppression comment names a rule that does not exist",
            "name one of the rules listed by the lint's documentation",
        ),
        Rule(
            "syntax-error",
            "error",
            "PostgreSQL's parser rejects the statement",
            "fix the statement",
        ),
    )
}

# Rules about a file as a whole: a suppression of one applies wherever it stands in the file.
FILE_RULES = frozenset({"naming-version", "missing-down-file"})


# -- configuration -----------------------------------------------------------------------------

ENVIRONMENT = {
    "disable": "MIGRATION_LINT_DISABLE",
    "warning": "MIGRATION_LINT_WARNING",
    "error": "MIGRATION_LINT_ERROR",
}
PYPROJECT_TABLE = "[tool.migration-runner.lint]"


@dataclass(frozen=True)
class LintConfig:
    disabled: frozenset[str] = frozenset()
    levels: tuple[tuple[str, Level], ...] = ()  # (rule, level) overrides

    def level(self, rule: str) -> Level | None:
        """The level of `rule`, None when it is disabled."""
        if rule in self.disabled:
            return None
        return dict(self.levels).get(rule, RULES[rule].level)


def load_config(project_root: Path, environ: Mapping[str, str]) -> LintConfig:
    """The `[tool.migration-runner.lint]` table of pyproject.toml, then the MIGRATION_LINT_*
    variables, which win rule by rule."""
    chosen: dict[str, str] = {}  # rule -> "disable", "warning" or "error"
    chosen.update(_pyproject_choices(project_root / "pyproject.toml"))
    chosen.update(_environment_choices(environ))
    levels: list[tuple[str, Level]] = []
    for rule, choice in sorted(chosen.items()):
        if choice == "warning":
            levels.append((rule, "warning"))
        elif choice == "error":
            levels.append((rule, "error"))
    return LintConfig(
        disabled=frozenset(rule for rule, choice in chosen.items() if choice == "disable"),
        levels=tuple(levels),
    )


def _pyproject_choices(path: Path) -> dict[str, str]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(str(path), f"cannot be read: {error}") from None
    table = document.get("tool", {}).get("migration-runner", {}).get("lint", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path} {PYPROJECT_TABLE}", "must be a table")
    unknown_keys = sorted(set(table) - set(ENVIRONMENT))
    if unknown_keys:
        raise ConfigError(
            f"{path} {PYPROJECT_TABLE} {unknown_keys[0]}",
            f"unknown key; the keys are {', '.join(ENVIRONMENT)}",
        )
    lists: dict[str, list[str]] = {}
    for key, value in table.items():
        where = f"{path} {PYPROJECT_TABLE} {key}"
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(where, 'must be a list of rule ids, e.g. ["prefer-text-field"]')
        lists[key] = value
    return _choices({f"{path} {PYPROJECT_TABLE} {key}": (key, ids) for key, ids in lists.items()})


def _environment_choices(environ: Mapping[str, str]) -> dict[str, str]:
    lists = {
        variable: (key, [item.strip() for item in environ[variable].split(",") if item.strip()])
        for key, variable in ENVIRONMENT.items()
        if variable in environ
    }
    return _choices(lists)


def _choices(lists: Mapping[str, tuple[str, list[str]]]) -> dict[str, str]:
    """rule -> choice from {where: (choice, rule ids)}; one source naming a rule twice over is
    a contradiction."""
    chosen: dict[str, tuple[str, str]] = {}
    for where, (choice, ids) in lists.items():
        for rule in ids:
            if rule not in RULES:
                raise ConfigError(
                    where, f"unknown rule {rule!r}; the rules are {', '.join(sorted(RULES))}"
                )
            earlier = chosen.get(rule)
            if earlier is not None and earlier[0] != choice:
                raise ConfigError(where, f"{rule} is also listed in {earlier[1]}")
            chosen[rule] = (choice, where)
    return {rule: choice for rule, (choice, _) in chosen.items()}


# -- linting -----------------------------------------------------------------------------------


def lint(
    files: Sequence[MigrationFile], config: LintConfig, *, only: Collection[str] | None = None
) -> list[Finding]:
    """Every finding in `files` (or in those named by `only`, the others giving context: what
    they create, which functions they define), in version order, up file before down file.

    A table created earlier in the same file, or in an earlier up file that is itself pending
    (named by `only`), is new: no running code uses it, so locks and breaking changes on it are
    harmless; so are breaking changes to a column added so. Without `only` no file is known to
    be pending, and only the first holds."""
    migrations = parse_files(files, strict=False)
    schema = _Schema()
    unseen = _Unseen()  # what pending up files created
    linted: list[_FileLint] = []
    ups: dict[str, _FileLint] = {}
    for migration in migrations:
        pending = only is not None and migration.up.filename in only
        up = _FileLint(migration.up, schema, unseen if pending else _Unseen())
        up.run()
        if pending:
            unseen = up.unseen
        up.file_level(migration.down is None)
        linted.append(up)
        ups[migration.up.filename] = up
    for migration in migrations:
        if migration.down is not None:
            down = _FileLint(migration.down, schema, _Unseen(), undoes=ups[migration.up.filename])
            down.run()
            linted.append(down)
    findings: list[Finding] = []
    for each in linted:
        if only is None or each.file.filename in only:
            findings.extend(each.findings(config))
    return findings


@dataclass
class _Schema:
    """What the files linted so far tell about the database, in version order."""

    volatility: dict[str, str] = field(default_factory=dict)  # function -> i, s or v
    constraints: set[str] = field(default_factory=set)  # every constraint name added
    not_null_checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> table, column
    proven_not_null: set[tuple[str, str]] = field(default_factory=set)  # validated checks
    validated_unknown: set[str] = field(default_factory=set)  # tables: VALIDATE of unseen checks
    index_tables: dict[str, str] = field(default_factory=dict)  # index -> its table


@dataclass
class _Unseen:
    """Tables and columns no running code has seen: a migration that runs now made them."""

    tables: set[str] = field(default_factory=set)
    columns: set[tuple[str, str]] = field(default_factory=set)

    def copy(self) -> _Unseen:
        return _Unseen(set(self.tables), set(self.columns))


@dataclass(frozen=True)
class _Raw:
    rule: str
    statement: int | None  # index in the file's statements; None for the file as a whole
    offset: int  # in the file, 0-based characters
    message: str
    recipe: str = ""


@dataclass(frozen=True)
class _Suppression:
    rules: frozenset[str]
    reason: str
    offset: int
    unknown: tuple[str, ...]


# The first words of the statements a rule looks at: every other statement (INSERT, COPY, ...)
# is left unparsed, so that a seed file of a million rows lints fast.
_LOOKED_AT = frozenset(
    {"create", "alter", "drop", "truncate", "vacuum", "cluster", "set", "reset", "select"}
)


class _FileLint:
    def __init__(
        self,
        file: MigrationFile,
        schema: _Schema,
        unseen: _Unseen,
        *,
        undoes: _FileLint | None = None,
    ) -> None:
        self.file = file
        self.schema = schema
        self.unseen = unseen.copy()
        self.new_tables = self.unseen.tables
        self.new_columns = self.unseen.columns
        self.undoes = undoes  # the up file that this down file undoes
        self.no_transaction = file.no_transaction
        self.text = ""
        self.statements: list[Statement] = []
        self.raw: list[_Raw] = []
        self.suppressions: list[_Suppression] = []  # every one, applied or not
        # By the statement they apply to; None: to the whole file.
        self.applied: dict[int | None, list[_Suppression]] = {}
        # What this file does, for its down file.
        self.created_tables: set[str] = set()
        self.added_columns: set[tuple[str, str]] = set()
        self.renamed_columns: set[tuple[str, str, str]] = set()  # table, old, new
        self.renamed_tables: set[tuple[str, str]] = set()
        self.set_not_null: set[tuple[str, str]] = set()
        # Constraints added NOT VALID in the transaction running now.
        self.not_valid_here: set[str] = set()
        self.dropped_constraints: set[str] = set()  # DROP CONSTRAINT IF EXISTS, for re-runs
        self.in_block: Statement | None = None  # an open BEGIN of a no-transaction file

    # -- the walk --------------------------------------------------------------------------

    def run(self) -> None:
        self.text = self.file.text()
        try:
            self.statements = split(self.text)
        except ScriptSyntaxError as error:
            offset = _offset_of_line(self.text, error.line)
            self.raw.append(_Raw("syntax-error", None, offset, str(error)))
            return
        self._transaction_control()
        previous_end = 0
        for index, statement in enumerate(self.statements):
            self._comments_between(previous_end, index)
            previous_end = statement.offset + len(statement.text)
            if statement.kind is Kind.COPY_FROM_STDIN:
                previous_end = _after_copy_data(self.text, previous_end)
            if self.no_transaction:
                self._track_block(statement)
            self._statement(index, statement)
            if self.no_transaction and self.in_block is None:
                self.not_valid_here.clear()
        self._comments_between(previous_end, len(self.statements))

    def file_level(self, without_down: bool) -> None:
        match = FILE_NAME.fullmatch(self.file.filename)
        if match is None:
            return
        version = match["version"]
        if not _good_version(version):
            self.raw.append(
                _Raw(
                    "naming-version",
                    None,
                    0,
                    f"version {version} is neither 6 digits nor a 14-digit timestamp "
                    "(YYYYMMDDHHMMSS)",
                )
            )
        if without_down:
            down = f"{version}_{match['name']}.down.sql"
            self.raw.append(
                _Raw(
                    "missing-down-file",
                    None,
                    0,
                    f"{self.file.filename} has no {down}: it cannot be rolled back",
                    f"add {down} that undoes what {self.file.filename} does",
                )
            )

    def _statement(self, index: int, statement: Statement) -> None:
        first_word = "".join(takewhile(str.isalpha, statement.text[:10])).lower()
        if first_word not in _LOOKED_AT or statement.kind is Kind.META_COMMAND:
            return
        try:
            parsed = parser.parse_sql(statement.text)
        except parser.ParseError as error:
            message, where = (*error.args, "", 0)[:2]
            where = where if isinstance(where, int) and 0 <= where < len(statement.text) else 0
            self.raw.append(_Raw("syntax-error", index, statement.offset + where, str(message)))
            return
        tokens = parser.scan(statement.text)
        self._comments_inside(index, statement, tokens)
        self._identifiers(index, statement, tokens)
        for raw in parsed:
            node = raw.stmt
            at = _Place(self, index, statement, tokens)
            if isinstance(node, ast.CreateStmt):
                self._create_table(at, node)
            elif isinstance(node, ast.CreateTableAsStmt):
                self._create_table_as(at, node)
            elif isinstance(node, ast.AlterTableStmt):
                self._alter_table(at, node)
            elif isinstance(node, ast.IndexStmt):
                self._create_index(at, node)
            elif isinstance(node, ast.DropStmt):
                self._drop(at, node)
            elif isinstance(node, ast.DropdbStmt):
                at.report("ban-drop-database", 0, f"DROP DATABASE {node.dbname} from a migration")
            elif isinstance(node, ast.RenameStmt):
                self._rename(at, node)
            elif isinstance(node, ast.TruncateStmt):
                self._truncate(at, node)
            elif isinstance(node, ast.VacuumStmt | ast.ClusterStmt):
                self._rewrite(at, node)
            elif isinstance(node, ast.VariableSetStmt):
                self._set(at, node)
            elif isinstance(node, ast.SelectStmt):
                self._set_config(at, node)
            elif isinstance(node, ast.CreateFunctionStmt):
                self._create_function(node)
            elif (
                isinstance(node, ast.CreateSeqStmt | ast.CreateSchemaStmt | ast.CreateExtensionStmt)
                and not node.if_not_exists
            ):
                self._not_rerunnable(at, 0, "this CREATE fails when it runs again", "IF NOT EXISTS")

    # -- transactions ----------------------------------------------------------------------

    def _transaction_control(self) -> None:
        """transaction-nesting and CONCURRENTLY in a transaction, as the planner sees them."""
        sent = [s for s in self.statements if s.kind is not Kind.META_COMMAND]
        first, last = (sent[0], sent[-1]) if sent else (None, None)
        control = [s for s in sent if s.kind in TRANSACTION_CONTROL]
        wrapper = [s.kind for s in control] == [Kind.BEGIN, Kind.COMMIT] and (
            control[0] is first and control[1] is last
        )
        block: Statement | None = None
        for index, statement in enumerate(self.statements):
            if statement.kind is Kind.NON_TRANSACTIONAL and "CONCURRENTLY" in statement.what:
                if not self.no_transaction:
                    self._report_at(
                        "ban-concurrent-index-creation-in-transaction",
                        index,
                        f"{statement.what} cannot run in the transaction this file runs in",
                    )
                elif block is not None:
                    self._report_at(
                        "ban-concurrent-index-creation-in-transaction",
                        index,
                        f"{statement.what} cannot run inside the BEGIN ... COMMIT block opened "
                        f"at line {block.line}",
                    )
            if statement.kind not in TRANSACTION_CONTROL:
                continue
            if statement.kind is Kind.PREPARE_TRANSACTION:
                self._report_at("transaction-nesting", index, "PREPARE TRANSACTION in a migration")
            elif not self.no_transaction:
                if not wrapper:
                    self._report_at(
                        "transaction-nesting",
                        index,
                        f"{_words(statement)}: this file runs in the runner's transaction, with "
                        "its tracking row; only a BEGIN first and a COMMIT last are allowed",
                    )
            elif statement.kind in (Kind.BEGIN, Kind.BEGIN_WITH_MODES):
                if block is not None:
                    self._report_at(
                        "transaction-nesting",
                        index,
                        f"BEGIN inside the block opened at line {block.line}",
                    )
                block = statement
            elif block is None:
                self._report_at(
                    "transaction-nesting", index, f"{_words(statement)} without a BEGIN"
                )
            else:
                block = None
        if block is not None:
            self._report_at(
                "transaction-nesting",
                self.statements.index(block),
                "this BEGIN has no COMMIT before the end of the file",
            )

    def _track_block(self, statement: Statement) -> None:
        if statement.kind in (Kind.BEGIN, Kind.BEGIN_WITH_MODES):
            self.in_block = statement
            self.not_valid_here.clear()
        elif statement.kind in (Kind.COMMIT, Kind.ROLLBACK, Kind.CHAIN):
            self.in_block = None

    # -- CREATE TABLE ------------------------------------------------------------------------

    def _create_table(self, at: _Place, node: ast.CreateStmt) -> None:
        table = _relname(node.relation)
        temporary = node.relation is not None and node.relation.relpersistence == "t"
        if (
            self.no_transaction
            and not node.if_not_exists
            and not (temporary and node.oncommit == enums.OnCommitAction.ONCOMMIT_DROP)
        ):
            self._not_rerunnable(
                at, 0, f"CREATE TABLE {table} fails when the file runs again", "IF NOT EXISTS"
            )
        if not temporary and node.partbound is None:
            self._table_name(at, table, _location(node.relation))
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                self._column_type(at, element)
                if not temporary:
                    self._column_name(at, table, element)
                for constraint in element.constraints or ():
                    self._foreign_key_name(at, table, constraint, [element.colname or ""])
            elif isinstance(element, ast.Constraint):
                self._foreign_key_name(at, table, element, _strings(element.fk_attrs))
        self.created_tables.add(table)
        self.new_tables.add(table)

    def _create_table_as(self, at: _Place, node: ast.CreateTableAsStmt) -> None:
        if node.objtype != enums.ObjectType.OBJECT_TABLE or node.into is None:
            return
        table = _relname(node.into.rel)
        if self.no_transaction and not node.if_not_exists:
            self._not_rerunnable(
                at, 0, f"CREATE TABLE {table} AS fails when the file runs again", "IF NOT EXISTS"
            )
        if node.into.rel is not None and node.into.rel.relpersistence != "t":
            self._table_name(at, table, _location(node.into.rel))
        self.created_tables.add(table)
        self.new_tables.add(table)

    # -- ALTER TABLE -------------------------------------------------------------------------

    def _alter_table(self, at: _Place, node: ast.AlterTableStmt) -> None:
        if node.objtype != enums.ObjectType.OBJECT_TABLE:
            return
        table = _relname(node.relation)
        new = table in self.new_tables
        commands = list(node.cmds or ())
        starts = _command_starts(at.statement.text, at.tokens, node, len(commands))
        for command, start in zip(commands, starts, strict=True):
            subtype = command.subtype
            kinds = enums.AlterTableType
            if subtype == kinds.AT_AddColumn and isinstance(command.def_, ast.ColumnDef):
                self._add_column(at, start, table, new, command)
            elif subtype == kinds.AT_DropColumn:
                self._drop_column(at, start, table, new, command)
            elif subtype == kinds.AT_AlterColumnType and isinstance(command.def_, ast.ColumnDef):
                self._column_type(at, command.def_, command.name or "")
                if not new:
                    at.report(
                        "changing-column-type",
                        start,
                        f"changing the type of {table}.{command.name} rewrites {table} under "
                        "an ACCESS EXCLUSIVE lock (unless the change is binary-coercible, as "
                        "varchar(n) to a wider varchar or to text)",
                    )
            elif subtype == kinds.AT_SetNotNull:
                self._set_not_null(at, start, table, new, command.name or "")
            elif subtype == kinds.AT_DropNotNull:
                column = command.name or ""
                unseen = new or (table, column) in self.new_columns
                if not unseen and not self._undone(table, column, self._undo_not_null):
                    at.report(
                        "ban-drop-not-null",
                        start,
                        f"{table}.{column} may now hold NULLs that running code does not expect",
                    )
            elif subtype == kinds.AT_AddConstraint and isinstance(command.def_, ast.Constraint):
                self._add_constraint(at, start, table, new, command.def_)
            elif subtype == kinds.AT_ValidateConstraint:
                self._validate(at, start, table, command.name or "")
            elif subtype == kinds.AT_DropConstraint:
                name = command.name or ""
                if command.missing_ok:
                    self.dropped_constraints.add(name)
                else:
                    self._not_rerunnable(
                        at,
                        start,
                        f"DROP CONSTRAINT {name} fails when the file runs again",
                        "DROP CONSTRAINT IF EXISTS",
                    )

    def _add_column(
        self, at: _Place, start: int, table: str, new: bool, command: ast.AlterTableCmd
    ) -> None:
        column = command.def_
        assert isinstance(column, ast.ColumnDef)
        name = column.colname or ""
        self.added_columns.add((table, name))
        self.new_columns.add((table, name))
        self._column_type(at, column)
        self._column_name(at, table, column)
        if not command.missing_ok:
            self._not_rerunnable(
                at,
                start,
                f"ADD COLUMN {name} fails when the file runs again",
                "ADD COLUMN IF NOT EXISTS",
            )
        constraints = list(column.constraints or ())
        for constraint in constraints:
            self._foreign_key_name(at, table, constraint, [name])
        if new:
            return
        kinds = enums.ConstrType
        by_type = {constraint.contype: constraint for constraint in constraints}
        default = by_type.get(kinds.CONSTR_DEFAULT)
        serial = _type_name(column.typeName) in _SERIAL_TYPES
        rewrite = self._rewrite_reason(column, by_type, serial)
        if rewrite:
            where = default.raw_expr if default is not None else None
            at.report(
                "adding-field-with-default",
                _location(where, _location(by_type.get(kinds.CONSTR_IDENTITY), start)),
                f"adding {table}.{name} {rewrite}: the whole table is rewritten under an "
                "ACCESS EXCLUSIVE lock",
                f"ALTER TABLE {table} ADD COLUMN {name} {_type_text(column.typeName)};\n"
                f"ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT ...;  -- new rows\n"
                "-- then backfill existing rows in batches, in later migrations or a job",
            )
        generated = kinds.CONSTR_GENERATED in by_type or kinds.CONSTR_IDENTITY in by_type
        if kinds.CONSTR_NOTNULL in by_type and default is None and not generated and not serial:
            at.report(
                "adding-required-field",
                start,
                f"{table}.{name} is added NOT NULL without a default: it fails if {table} has "
                "rows, and the running application's INSERTs do not set it",
                f"ALTER TABLE {table} ADD COLUMN {name} {_type_text(column.typeName)};\n"
                "-- backfill, then make it NOT NULL the safe way (adding-not-nullable-field); "
                "or give it a constant DEFAULT",
            )
        if kinds.CONSTR_PRIMARY in by_type:
            at.report(
                "adding-serial-primary-key-field",
                _location(by_type[kinds.CONSTR_PRIMARY], start),
                f"a PRIMARY KEY column added to {table} builds its index under an ACCESS "
                "EXCLUSIVE lock",
                _primary_key_recipe(table, [name]),
            )
        if kinds.CONSTR_UNIQUE in by_type:
            at.report(
                "disallowed-unique-constraint",
                _location(by_type[kinds.CONSTR_UNIQUE], start),
                f"a UNIQUE column added to {table} builds its index under an ACCESS EXCLUSIVE lock",
                _unique_recipe(table, [name]),
            )
        if kinds.CONSTR_FOREIGN in by_type:
            foreign = by_type[kinds.CONSTR_FOREIGN]
            at.report(
                "adding-foreign-key-constraint",
                _location(foreign, start),
                f"a column added to {table} with REFERENCES {_relname(foreign.pktable)} blocks "
                "writes to both tables while it is checked",
                _foreign_key_recipe(table, [name], foreign),
            )

    def _rewrite_reason(
        self, column: ast.ColumnDef, by_type: Mapping[Any, ast.Constraint], serial: bool
    ) -> str:
        """Why adding `column` rewrites the table, or ""."""
        kinds = enums.ConstrType
        if serial:
            return f"as {_type_name(column.typeName)} (a nextval() default for every row)"
        if kinds.CONSTR_IDENTITY in by_type:
            return "as an identity column (a value for every row)"
        generated = by_type.get(kinds.CONSTR_GENERATED)
        if generated is not None and generated.generated_kind != "v":
            return "as a stored generated column"
        default = by_type.get(kinds.CONSTR_DEFAULT)
        if default is None:
            return ""
        volatile, unknown = self._volatility(default.raw_expr)
        if volatile:
            return f"with the volatile default {volatile[0]}()"
        if unknown:
            return (
                f"with the default {unknown[0]}(), a function whose volatility lint does not "
                "know (a VOLATILE one rewrites every row; CREATE it in a migration, or suppress "
                "this with the reason it is STABLE or IMMUTABLE)"
            )
        return ""

    def _volatility(self, expression: ast.Node | None) -> tuple[list[str], list[str]]:
        """(volatile, unknown) functions called by `expression`."""
        volatile: list[str] = []
        unknown: list[str] = []
        for node in _nodes(expression):
            if not isinstance(node, ast.FuncCall):
                continue
            name = _strings(node.funcname)[-1].lower()
            known = self.schema.volatility.get(name)
            if known is None:
                known = "v" if name in _VOLATILE else "s" if name in _NOT_VOLATILE else None
            if known == "v":
                volatile.append(name)
            elif known is None:
                unknown.append(name)
        return volatile, unknown

    def _drop_column(
        self, at: _Place, start: int, table: str, new: bool, command: ast.AlterTableCmd
    ) -> None:
        column = command.name or ""
        if not command.missing_ok:
            self._not_rerunnable(
                at,
                start,
                f"DROP COLUMN {column} fails when the file runs again",
                "DROP COLUMN IF EXISTS",
            )
        if new or (table, column) in self.new_columns:
            return
        if self._undone(table, column, self._undo_add_column):
            return
        at.report(
            "ban-drop-column",
            start,
            f"dropping {table}.{column} breaks any running code that still reads or writes it",
        )

    def _set_not_null(self, at: _Place, start: int, table: str, new: bool, column: str) -> None:
        self.set_not_null.add((table, column))
        proven = (table, column) in self.schema.proven_not_null
        if new or proven or table in self.schema.validated_unknown:
            return
        check = f"{table}_{column}_not_null"
        at.report(
            "adding-not-nullable-field",
            start,
            f"SET NOT NULL on {table}.{column} scans all of {table} under an ACCESS EXCLUSIVE lock",
            f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID;"
            f"\n-- backfill NULLs; then, in a later migration:\n"
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {check};\n"
            f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL;\n"
            f"ALTER TABLE {table} DROP CONSTRAINT {check};",
        )

    def _add_constraint(
        self, at: _Place, start: int, table: str, new: bool, constraint: ast.Constraint
    ) -> None:
        kinds = enums.ConstrType
        name = constraint.conname or ""
        if name:
            self.schema.constraints.add(name)
        if constraint.contype == kinds.CONSTR_FOREIGN:
            self._foreign_key_name(at, table, constraint, _strings(constraint.fk_attrs))
        if self.no_transaction and name not in self.dropped_constraints:
            self._not_rerunnable(
                at,
                start,
                f"ADD CONSTRAINT {name or '...'} fails when the file runs again",
                f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name or '...'} first",
            )
        where = _location(constraint, start)
        columns = _strings(constraint.keys) or _strings(constraint.fk_attrs)
        if constraint.skip_validation:
            self.not_valid_here.add(name)
            checked = _not_null_check(constraint)
            if checked:
                self.schema.not_null_checks[name] = (table, checked)
            return
        if new:
            return
        if constraint.contype == kinds.CONSTR_CHECK:
            at.report(
                "constraint-missing-not-valid",
                start,
                f"CHECK constraint {name} scans all of {table} while it blocks writes",
                f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK (...) NOT VALID;\n"
                f"-- in a later migration:\nALTER TABLE {table} VALIDATE CONSTRAINT {name};",
            )
        elif constraint.contype == kinds.CONSTR_FOREIGN:
            recipe = _foreign_key_recipe(table, columns, constraint)
            referenced = _relname(constraint.pktable)
            at.report(
                "adding-foreign-key-constraint",
                where,
                f"foreign key {name} blocks writes to {table} and {referenced} while all of "
                f"{table} is checked",
                recipe,
            )
            at.report(
                "constraint-missing-not-valid",
                start,
                f"foreign key {name} is added without NOT VALID",
                recipe,
            )
        elif constraint.contype == kinds.CONSTR_UNIQUE and not constraint.indexname:
            at.report(
                "disallowed-unique-constraint",
                where,
                f"UNIQUE constraint {name} builds its index on {table} under an ACCESS "
                "EXCLUSIVE lock",
                _unique_recipe(table, columns, name),
            )
        elif constraint.contype == kinds.CONSTR_PRIMARY and not constraint.indexname:
            at.report(
                "adding-serial-primary-key-field",
                where,
                f"PRIMARY KEY on {table} builds its index under an ACCESS EXCLUSIVE lock",
                _primary_key_recipe(table, columns, name),
            )

    def _validate(self, at: _Place, start: int, table: str, name: str) -> None:
        if name in self.not_valid_here:
            at.report(
                "constraint-missing-not-valid",
                start,
                f"{name} is validated in the same transaction that added it NOT VALID: the "
                f"ACCESS EXCLUSIVE lock of the ADD is still held while {table} is scanned",
                f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}; in a later migration file",
            )
        checked = self.schema.not_null_checks.get(name)
        if checked is not None:
            self.schema.proven_not_null.add(checked)
        elif name not in self.schema.constraints:
            # Added by a migration lint does not see: trust it, as squawk does.
            self.schema.validated_unknown.add(table)

    # -- CREATE INDEX, DROP, RENAME ----------------------------------------------------------

    def _create_index(self, at: _Place, node: ast.IndexStmt) -> None:
        table = _relname(node.relation)
        name = node.idxname or ""
        if name:
            self.schema.index_tables[name] = table
        if self.no_transaction and not node.if_not_exists:
            how = "IF NOT EXISTS" if name else "a name and IF NOT EXISTS"
            self._not_rerunnable(
                at,
                0,
                f"CREATE INDEX {name} fails (or, unnamed, builds a second index) when the file "
                "runs again",
                how,
            )
        if not node.concurrent and table not in self.new_tables:
            at.report(
                "require-concurrent-index-creation",
                0,
                f"CREATE INDEX {name or '(unnamed)'} blocks writes to {table} while it builds",
                "-- migrate:no-transaction\n"
                f"CREATE {'UNIQUE ' if node.unique else ''}INDEX CONCURRENTLY IF NOT EXISTS "
                f"{name or _expected_index(table, node) or 'idx_...'} ON {table} (...);",
            )
        self._index_name(at, table, node)

    def _drop(self, at: _Place, node: ast.DropStmt) -> None:
        kinds = enums.ObjectType
        names = [
            _strings(item)[-1]
            for item in node.objects or ()
            if isinstance(item, tuple) and _strings(item)
        ]
        if self.no_transaction and not node.missing_ok:
            self._not_rerunnable(at, 0, "this DROP fails when the file runs again", "IF EXISTS")
        if node.removeType == kinds.OBJECT_TABLE:
            dropped = [
                name
                for name in names
                if name not in self.new_tables and not self._undone(name, "", self._undo_create)
            ]
            if dropped:
                at.report(
                    "ban-drop-table",
                    0,
                    f"dropping {', '.join(dropped)} breaks any running code that still uses it",
                )
            self.new_tables.difference_update(names)
        elif node.removeType == kinds.OBJECT_INDEX and not node.concurrent:
            busy = [n for n in names if self.schema.index_tables.get(n) not in self.new_tables]
            if busy:
                at.report(
                    "require-concurrent-index-deletion",
                    0,
                    f"DROP INDEX {', '.join(busy)} takes an ACCESS EXCLUSIVE lock on its table",
                    f"-- migrate:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS {busy[0]};",
                )

    def _rename(self, at: _Place, node: ast.RenameStmt) -> None:
        kinds = enums.ObjectType
        table = _relname(node.relation)
        new_name = node.newname or ""
        where = _token_at(at.tokens, "RENAME")
        if node.renameType == kinds.OBJECT_COLUMN and node.relationType == kinds.OBJECT_TABLE:
            old = node.subname or ""
            self.renamed_columns.add((table, old, new_name))
            new_column = (table, old) in self.new_columns
            if (table, old) in self.added_columns:
                self.added_columns.add((table, new_name))
            if new_column:
                self.new_columns.add((table, new_name))
            self._name_check(at, where, "naming-column", f"{table}.{new_name}", new_name, False)
            if (
                table not in self.new_tables
                and not new_column
                and not self._undone(table, f"{old}>{new_name}", self._undo_rename_column)
            ):
                at.report(
                    "renaming-column",
                    where,
                    f"renaming {table}.{old} to {new_name} breaks running code that uses {old}",
                )
        elif node.renameType == kinds.OBJECT_TABLE:
            self.renamed_tables.add((table, new_name))
            self._table_name(at, new_name, where)
            if table in self.new_tables:
                self.new_tables.discard(table)
                self.new_tables.add(new_name)
            elif not self._undone(table, new_name, self._undo_rename_table):
                at.report(
                    "renaming-table",
                    where,
                    f"renaming {table} to {new_name} breaks running code that uses {table}",
                )

    # A down file that undoes what its own up file did breaks nothing the up file's release
    # did not already have: these say whether it does.
    def _undone(self, table: str, detail: str, test: Callable[[_FileLint, str, str], bool]) -> bool:
        return self.undoes is not None and test(self.undoes, table, detail)

    @staticmethod
    def _undo_create(up: _FileLint, table: str, _: str) -> bool:
        return table in up.created_tables

    @staticmethod
    def _undo_add_column(up: _FileLint, table: str, column: str) -> bool:
        return table in up.created_tables or (table, column) in up.added_columns

    @staticmethod
    def _undo_not_null(up: _FileLint, table: str, column: str) -> bool:
        return _FileLint._undo_add_column(up, table, column) or (table, column) in up.set_not_null

    @staticmethod
    def _undo_rename_column(up: _FileLint, table: str, renamed: str) -> bool:
        """`renamed`: "old>new" of the down file's rename, which undoes new>old of the up's."""
        old, new = renamed.split(">")
        return (table, new, old) in up.renamed_columns

    @staticmethod
    def _undo_rename_table(up: _FileLint, table: str, new_name: str) -> bool:
        return (new_name, table) in up.renamed_tables

    # -- other statements --------------------------------------------------------------------

    def _truncate(self, at: _Place, node: ast.TruncateStmt) -> None:
        if node.behavior == enums.DropBehavior.DROP_CASCADE:
            tables = ", ".join(_relname(relation) for relation in node.relations or ())
            at.report(
                "ban-truncate-cascade",
                _token_at(at.tokens, "CASCADE"),
                f"TRUNCATE {tables} CASCADE also empties every table with a foreign key to "
                "these, and theirs, recursively",
                f"TRUNCATE {tables}, <each table meant, by name>;",
            )

    def _rewrite(self, at: _Place, node: ast.VacuumStmt | ast.ClusterStmt) -> None:
        if isinstance(node, ast.VacuumStmt):
            full = any(option.defname == "full" for option in node.options or ())
            if full:
                at.report(
                    "prefer-repack",
                    0,
                    "VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock",
                )
            return
        table = _relname(node.relation)
        if table not in self.new_tables:
            what = f"CLUSTER {table}" if table else "CLUSTER"
            at.report("prefer-repack", 0, f"{what} rewrites tables under an ACCESS EXCLUSIVE lock")

    def _set(self, at: _Place, node: ast.VariableSetStmt) -> None:
        kinds = enums.VariableSetKind
        if node.kind == kinds.VAR_RESET_ALL:
            self._lock_timeout_override(at, "RESET ALL resets lock_timeout")
        elif (node.name or "").lower() == "lock_timeout":
            if node.kind in (kinds.VAR_SET_DEFAULT, kinds.VAR_RESET):
                self._lock_timeout_override(at, "lock_timeout is reset to the server's default")
            elif node.kind == kinds.VAR_SET_VALUE and _is_zero(_constant(node.args)):
                self._lock_timeout_override(at, "lock_timeout is set to 0")

    def _set_config(self, at: _Place, node: ast.SelectStmt) -> None:
        for call in _nodes(node):
            if not isinstance(call, ast.FuncCall):
                continue
            arguments = list(call.args or ())
            if (
                _strings(call.funcname)[-1].lower() == "set_config"
                and len(arguments) >= 2
                and str(_constant(arguments[:1])).lower() == "lock_timeout"
                and _is_zero(_constant(arguments[1:2]))
            ):
                self._lock_timeout_override(at, "set_config() sets lock_timeout to 0")

    def _lock_timeout_override(self, at: _Place, what: str) -> None:
        if self.no_transaction:
            return  # the runner sets no lock_timeout for these: there is nothing to override
        at.report(
            "no-lock-timeout-override",
            0,
            f"{what}: this migration can then wait for a lock without end, and every query on "
            "that table queues behind it",
        )

    def _create_function(self, node: ast.CreateFunctionStmt) -> None:
        volatility = "v"
        for option in node.options or ():
            if option.defname == "volatility" and isinstance(option.arg, ast.String):
                volatility = (option.arg.sval or "volatile")[0]
        self.schema.volatility[_strings(node.funcname)[-1].lower()] = volatility

    def _not_rerunnable(self, at: _Place, start: int, what: str, fix: str) -> None:
        if self.no_transaction:
            at.report(
                "prefer-robust-stmts",
                start,
                f"{what}: a no-transaction file runs again from its first statement after a "
                "failure",
                f"use {fix}",
            )

    # -- types, names and identifiers --------------------------------------------------------

    def _column_type(self, at: _Place, column: ast.ColumnDef, altered: str = "") -> None:
        """`altered`: the column whose type an ALTER COLUMN ... TYPE changes."""
        type_name = column.typeName
        if type_name is None:
            return
        name = _type_name(type_name)
        where = _location(type_name)
        what = f"{column.colname or altered} {_type_text(type_name)}"
        if name in ("int4", "serial", "serial4"):
            at.report(
                "prefer-bigint-over-int",
                where,
                f"{what} is a 32-bit integer",
                "bigserial" if name.startswith("serial") else "bigint",
            )
        if name in _SERIAL_TYPES:
            at.report(
                "prefer-identity",
                where,
                f"{what} is a serial column",
                f"{'smallint' if name in ('serial2', 'smallserial') else 'bigint'} "
                "GENERATED BY DEFAULT AS IDENTITY",
            )
        if name == "timestamp":
            at.report(
                "prefer-timestamptz",
                where,
                f"{what} stores no time zone: the offset of every value written is dropped",
            )
        if name == "varchar" and type_name.typmods:
            at.report(
                "prefer-text-field",
                where,
                f"{what} has a length limit that can only be raised under an ACCESS EXCLUSIVE lock",
            )

    def _table_name(self, at: _Place, table: str, where: int) -> None:
        self._name_check(at, where, "naming-table", table, table, True)

    def _column_name(self, at: _Place, table: str, column: ast.ColumnDef) -> None:
        name = column.colname or ""
        # An array holds many, and has_items is about a flag: either number reads right.
        many = bool(column.typeName is not None and column.typeName.arrayBounds)
        flag = name.split("_", 1)[0] in _BOOLEAN_PREFIXES
        plural = None if many or flag else False
        self._name_check(at, _location(column), "naming-column", name, name, plural)

    def _name_check(
        self, at: _Place, where: int, rule: str, what: str, name: str, plural: bool | None
    ) -> None:
        """`plural`: what the last word must be; None: either."""
        if not _SNAKE_CASE.fullmatch(name):
            at.report(rule, where, f"{what} is not snake_case")
            return
        last = name.rsplit("_", 1)[-1]
        if plural is True and not _plural(last):
            at.report(rule, where, f"table {name} is not plural ({last})")
        elif plural is False and _plural(last) and last not in _EITHER_NUMBER:
            at.report(rule, where, f"column {what} is not singular ({last})")

    def _index_name(self, at: _Place, table: str, node: ast.IndexStmt) -> None:
        name = node.idxname or ""
        expected = _expected_index(table, node)
        prefix = f"idx_{table}_"
        if not name:
            at.report(
                "naming-index",
                0,
                f"this index on {table} has no name: PostgreSQL makes one up",
                f"name it {expected or prefix + '...'}",
            )
        elif expected is not None and name not in (expected, _truncated(expected)):
            at.report("naming-index", 0, f"index {name} should be named {expected}")
        elif expected is None and not name.startswith(prefix):
            at.report("naming-index", 0, f"index {name} should be named {prefix}...")

    def _foreign_key_name(
        self, at: _Place, table: str, constraint: Any, columns: list[str]
    ) -> None:
        if not isinstance(constraint, ast.Constraint):
            return
        if constraint.contype != enums.ConstrType.CONSTR_FOREIGN:
            return
        expected = f"fk_{table}_{_relname(constraint.pktable)}"
        name = constraint.conname or ""
        where = _location(constraint)
        if not name:
            at.report(
                "naming-foreign-key",
                where,
                f"this foreign key of {table} has no name: PostgreSQL calls it "
                f"{table}_{'_'.join(columns)}_fkey",
                f"CONSTRAINT {expected} FOREIGN KEY ...",
            )
        elif name != expected and not name.startswith(expected + "_"):
            at.report(
                "naming-foreign-key",
                where,
                f"foreign key {name} should be {expected}",
                f"CONSTRAINT {expected} FOREIGN KEY ... (or {expected}_{{what}} for a second one)",
            )

    def _identifiers(self, index: int, statement: Statement, tokens: Any) -> None:
        for token in tokens:
            if token.name != "IDENT":
                continue
            written = statement.text[token.start : token.end + 1]
            name = written[1:-1].replace('""', '"') if written.startswith('"') else written.lower()
            if len(name.encode()) > MAX_IDENTIFIER_BYTES:
                self.raw.append(
                    _Raw(
                        "identifier-too-long",
                        index,
                        statement.offset + token.start,
                        f"{name} is {len(name.encode())} bytes: PostgreSQL truncates it to "
                        f"{_truncated(name)}",
                        f"a name of at most {MAX_IDENTIFIER_BYTES} bytes",
                    )
                )

    # -- suppressions ------------------------------------------------------------------------

    def _comments_between(self, start: int, index: int) -> None:
        """The comments between the statement before `index` and statement `index` (the end
        of the file when there is none): a comment on the line where the statement before
        ends is that one's; the others belong to the next statement if only comments lie
        between them."""
        end = self.statements[index].offset if index < len(self.statements) else len(self.text)
        gap = self.text[start:end]
        if "--" not in gap and "/*" not in gap:
            return
        previous_line_end = self.text.find("\n", start)
        try:
            tokens = parser.scan(gap)
        except parser.ParseError:
            return  # not SQL (a COPY's data the reader did not end): no comment to read
        for token in tokens:
            if token.name not in ("SQL_COMMENT", "C_COMMENT"):
                continue
            offset = start + token.start
            body = gap[token.start : token.end + 1]
            trailing = index > 0 and (previous_line_end < 0 or offset < previous_line_end)
            if trailing:
                self._suppression(index - 1, body, offset)
            elif index < len(self.statements) and not _blank_line_in(
                self.text[offset + len(body) : end]
            ):
                self._suppression(index, body, offset)
            else:
                self._suppression(None, body, offset)

    def _comments_inside(self, index: int, statement: Statement, tokens: Any) -> None:
        for token in tokens:
            if token.name in ("SQL_COMMENT", "C_COMMENT"):
                body = statement.text[token.start : token.end + 1]
                self._suppression(index, body, statement.offset + token.start)

    def _suppression(self, index: int | None, comment: str, offset: int) -> None:
        """`index`: the statement the comment belongs to; None: none."""
        found = _parse_suppression(comment, offset)
        if found is None:
            return
        self.suppressions.append(found)
        if found.rules & FILE_RULES:
            self.applied.setdefault(None, []).append(found)
        if index is not None:
            self.applied.setdefault(index, []).append(found)

    # -- results -----------------------------------------------------------------------------

    def _report_at(self, rule: str, index: int, message: str, recipe: str = "") -> None:
        self.raw.append(_Raw(rule, index, self.statements[index].offset, message, recipe))

    def findings(self, config: LintConfig) -> list[Finding]:
        raw = [item for item in self.raw if not self._suppressed(item)]
        for suppression in self.suppressions:
            if not suppression.rules and not suppression.unknown:
                raw.append(
                    _Raw(
                        "suppression-unknown-rule",
                        None,
                        suppression.offset,
                        "this suppression names no rule",
                        "-- migration-runner:ignore RULE reason: why this is safe here",
                    )
                )
            elif not suppression.reason:
                raw.append(
                    _Raw(
                        "suppression-without-reason",
                        None,
                        suppression.offset,
                        f"this suppression of {', '.join(sorted(suppression.rules))} gives no "
                        "reason",
                    )
                )
            for unknown in suppression.unknown:
                raw.append(
                    _Raw(
                        "suppression-unknown-rule",
                        None,
                        suppression.offset,
                        f"there is no rule {unknown}",
                        f"the rules are {', '.join(sorted(RULES))}",
                    )
                )
        found: list[Finding] = []
        for item in raw:
            level = config.level(item.rule)
            if level is None:
                continue
            line, column = self._position(item)
            found.append(
                Finding(
                    rule=item.rule,
                    level=level,
                    file=self.file.filename,
                    line=line,
                    column=column,
                    message=item.message,
                    recipe=item.recipe or RULES[item.rule].recipe,
                )
            )
        return sorted(set(found), key=lambda f: (f.line, f.column, f.rule, f.message))

    def _suppressed(self, item: _Raw) -> bool:
        groups = [self.applied.get(None, [])]
        if item.statement is not None:
            groups.append(self.applied.get(item.statement, []))
        return any(item.rule in s.rules for group in groups for s in group)

    def _position(self, item: _Raw) -> tuple[int, int]:
        line_start = self.text.rfind("\n", 0, item.offset) + 1
        if item.statement is None:
            line = self.text.count("\n", 0, item.offset) + 1
        else:
            statement = self.statements[item.statement]
            line = statement.line + self.text.count("\n", statement.offset, item.offset)
        return line, item.offset - line_start + 1


@dataclass(frozen=True)
class _Place:
    """One statement being linted: where its findings go."""

    lint: _FileLint
    index: int
    statement: Statement
    tokens: Any

    def report(self, rule: str, at: int, message: str, recipe: str = "") -> None:
        """`at`: where in the statement's text, 0-based characters."""
        offset = self.statement.offset + max(at, 0)
        self.lint.raw.append(_Raw(rule, self.index, offset, message, recipe))


# -- small helpers -----------------------------------------------------------------------------

MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1

_SERIAL_TYPES = frozenset({"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"})

# Functions a column default commonly calls, by volatility (pg_proc.provolatile). A volatile
# default is evaluated once per existing row, which rewrites the table; a stable or immutable
# one once for the whole ALTER (PostgreSQL 11+).
_VOLATILE = frozenset(
    {
        "random", "random_normal", "gen_random_uuid", "uuidv4", "uuidv7", "uuid_generate_v1",
        "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes", "clock_timestamp",
        "timeofday", "nextval", "currval", "lastval", "setval",
    }
)  # fmt: skip
_NOT_VOLATILE = frozenset(
    {
        "now", "transaction_timestamp", "statement_timestamp", "current_setting", "lower",
        "upper", "btrim", "trim", "concat", "concat_ws", "jsonb_build_object",
        "json_build_object", "jsonb_build_array", "json_build_array", "to_jsonb", "to_json",
        "array_fill", "make_date", "make_interval", "make_timestamp", "make_timestamptz",
        "date_trunc", "to_timestamp", "to_char", "to_date", "format", "md5", "encode",
        "decode", "length", "substring", "replace", "timezone", "age", "current_database",
        "current_schema", "date_part", "extract", "translate", "lpad", "rpad", "left", "right",
        "abs", "round", "floor", "ceil", "sha256", "justify_interval", "string_to_array",
        "array_to_string", "txid_current", "pg_current_xact_id", "uuid_nil",
    }
)  # fmt: skip

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_IRREGULAR_PLURALS = frozenset(
    {"people", "children", "men", "women", "criteria", "phenomena", "indices", "matrices",
     "vertices", "mice", "geese", "feet", "teeth"}
)  # fmt: skip
# Words that are singular and plural at once, and units, which a column may carry in its name.
_EITHER_NUMBER = frozenset(
    {"data", "metadata", "media", "news", "series", "species", "information", "equipment",
     "feedback", "software", "staff", "sheep", "fish", "deer", "aircraft", "analytics", "ms",
     "us", "ns", "secs", "seconds", "minutes", "mins", "hours", "days", "weeks", "months",
     "years", "bytes", "bits", "cents"}
)  # fmt: skip
_BOOLEAN_PREFIXES = frozenset({"is", "has", "can", "should", "allow", "allows"})


def _plural(word: str) -> bool:
    if word in _IRREGULAR_PLURALS or word in _EITHER_NUMBER:
        return True
    return word.endswith("s") and not word.endswith(("ss", "us", "is"))


def _good_version(version: str) -> bool:
    if len(version) == 6:
        return True
    if len(version) != 14:
        return False
    try:
        datetime.strptime(version, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


def _truncated(name: str) -> str:
    return name.encode()[:MAX_IDENTIFIER_BYTES].decode(errors="ignore")


def _relname(relation: ast.RangeVar | None) -> str:
    return (relation.relname or "") if relation is not None else ""


def _location(node: Any, default: int = 0) -> int:
    location = getattr(node, "location", None)
    return location if isinstance(location, int) and location >= 0 else default


def _strings(values: Any) -> list[str]:
    return [value.sval or "" for value in values or () if isinstance(value, ast.String)]


def _type_name(type_name: ast.TypeName | None) -> str:
    names = _strings(type_name.names) if type_name is not None else []
    return names[-1] if names else ""


_TYPE_SPELLING = {"int4": "integer", "int8": "bigint", "int2": "smallint", "bool": "boolean"}


def _type_text(type_name: ast.TypeName | None) -> str:
    name = _type_name(type_name)
    return _TYPE_SPELLING.get(name, name) + ("[]" if type_name and type_name.arrayBounds else "")


def _expected_index(table: str, node: ast.IndexStmt) -> str | None:
    """idx_{table}_{columns}, or None when an element is an expression."""
    columns = [element.name for element in node.indexParams or ()]
    if not columns or not all(columns):
        return None
    return f"idx_{table}_{'_'.join(columns)}"


def _nodes(value: Any) -> Iterator[ast.Node]:
    """`value` and every node under it."""
    if isinstance(value, ast.Node):
        yield value
        for attribute in value:
            yield from _nodes(getattr(value, attribute))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _nodes(item)


def _constant(values: Any) -> object:
    """The value of the first A_Const of `values`, or None."""
    for value in values or ():
        if isinstance(value, ast.A_Const) and value.val is not None:
            inner = value.val
            for attribute in ("ival", "sval", "fval"):
                if hasattr(inner, attribute):
                    return getattr(inner, attribute)
    return None


def _is_zero(value: object) -> bool:
    """A lock_timeout value that means no timeout: 0, '0', '0ms', '0 s'."""
    text = str(value).strip().lower().rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    try:
        return float(text) == 0
    except ValueError:
        return False


def _not_null_check(constraint: ast.Constraint) -> str:
    """The column of a `CHECK (column IS NOT NULL)`, or ""."""
    test = constraint.raw_expr
    if constraint.contype != enums.ConstrType.CONSTR_CHECK or not isinstance(test, ast.NullTest):
        return ""
    if test.nulltesttype != enums.NullTestType.IS_NOT_NULL:
        return ""
    if not isinstance(test.arg, ast.ColumnRef):
        return ""
    names = _strings(test.arg.fields)
    return names[-1] if len(names) == 1 else ""


def _command_starts(text: str, tokens: Any, node: ast.AlterTableStmt, count: int) -> list[int]:
    """Where each command of an ALTER TABLE starts: after the table's name, then after each
    comma outside parentheses; the statement's start for all when that does not add up."""
    words = [t for t in tokens if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    relation_at = _location(node.relation, -1)
    position = next((i for i, t in enumerate(words) if t.start >= relation_at), len(words))
    position += 1
    while position + 1 < len(words) and text[words[position].start] == ".":
        position += 2
    if position < len(words) and text[words[position].start] == "*":
        position += 1
    starts = [words[position].start] if position < len(words) else []
    depth = 0
    for index in range(position, len(words)):
        character = text[words[index].start]
        if character in "([":
            depth += 1
        elif character in ")]":
            depth -= 1
        elif character == "," and depth == 0 and index + 1 < len(words):
            starts.append(words[index + 1].start)
    return starts if len(starts) == count else [0] * count


def _words(statement: Statement) -> str:
    return " ".join(statement.text.split(None, 3)[:3])


def _token_at(tokens: Any, name: str) -> int:
    return next((token.start for token in tokens if token.name == name), 0)


def _blank_line_in(text: str) -> bool:
    """Whether `text` has a line of blanks between two line ends."""
    return any(not line.strip() for line in text.split("\n")[1:-1])


def _offset_of_line(text: str, line: int) -> int:
    offset = 0
    for _ in range(line - 1):
        offset = text.find("\n", offset) + 1
        if offset == 0:
            return len(text)
    return offset


def _after_copy_data(text: str, copy_end: int) -> int:
    """Past the `\\.` line that ends the inline data of a COPY ... FROM stdin."""
    at = text.find("\n", copy_end)
    while at >= 0:
        line_end = text.find("\n", at + 1)
        line = text[at + 1 : line_end if line_end >= 0 else len(text)]
        if line.rstrip("\r") == "\\.":
            return line_end if line_end >= 0 else len(text)
        at = line_end
    return len(text)


_SQUAWK_ALIASES = {"prefer-timestamp-tz": "prefer-timestamptz"}


def _parse_suppression(comment: str, offset: int) -> _Suppression | None:
    """A `migration-runner:ignore` or `squawk-ignore` comment, or None. The rules come first,
    separated by commas or blanks; the reason follows `reason:`."""
    body = comment[2:-2] if comment.startswith("/*") else comment[2:]
    marker, _, rest = body.strip().partition(" ")
    squawk = marker == "squawk-ignore"
    if marker != "migration-runner:ignore" and not squawk:
        return None
    names, _, reason = rest.partition("reason:")
    rules = [_SQUAWK_ALIASES.get(n, n) for n in names.replace(",", " ").split() if n != "--"]
    if squawk:
        rules = [rule for rule in rules if rule in RULES]  # the others are squawk's alone
        if not rules:
            return None
    return _Suppression(
        rules=frozenset(rule for rule in rules if rule in RULES),
        reason=reason.strip(),
        offset=offset,
        unknown=tuple(rule for rule in rules if rule not in RULES),
    )


def _quote(name: str) -> str:
    if _SNAKE_CASE.fullmatch(name) and name.upper() not in keywords.RESERVED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _unique_recipe(table: str, columns: list[str], name: str = "") -> str:
    index = f"idx_{table}_{'_'.join(columns)}"
    constraint = name or f"{table}_{'_'.join(columns)}_key"
    return (
        "-- migrate:no-transaction\n"
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {_quote(index)} ON {_quote(table)} "
        f"({', '.join(map(_quote, columns))});\n"
        "-- then, in the next migration:\n"
        f"ALTER TABLE {_quote(table)} ADD CONSTRAINT {_quote(constraint)} UNIQUE USING INDEX "
        f"{_quote(index)};"
    )


def _primary_key_recipe(table: str, columns: list[str], name: str = "") -> str:
    index = f"idx_{table}_{'_'.join(columns)}"
    constraint = name or f"{table}_pkey"
    return (
        "-- migrate:no-transaction\n"
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {_quote(index)} ON {_quote(table)} "
        f"({', '.join(map(_quote, columns))});\n"
        "-- then, in the next migration:\n"
        f"ALTER TABLE {_quote(table)} ADD CONSTRAINT {_quote(constraint)} PRIMARY KEY USING "
        f"INDEX {_quote(index)};"
    )


def _foreign_key_recipe(table: str, columns: list[str], constraint: ast.Constraint) -> str:
    referenced = _relname(constraint.pktable)
    name = constraint.conname or f"fk_{table}_{referenced}"
    keys = _strings(constraint.pk_attrs)
    target = f"{_quote(referenced)}" + (f" ({', '.join(map(_quote, keys))})" if keys else "")
    return (
        f"ALTER TABLE {_quote(table)} ADD CONSTRAINT {_quote(name)} FOREIGN KEY "
        f"({', '.join(map(_quote, columns))}) REFERENCES {target} NOT VALID;\n"
        "-- then, in the next migration:\n"
        f"ALTER TABLE {_quote(table)} VALIDATE CONSTRAINT {_quote(name)};"
    )


# -- renderers ---------------------------------------------------------------------------------


def render_text(findings: Sequence[Finding]) -> str:
    """`file:line:column: level rule: message`, the recipe indented under it."""
    lines: list[str] = []
    for finding in findings:
        lines.append(
            f"{finding.file}:{finding.line}:{finding.column}: {finding.level} {finding.rule}: "
            f"{finding.message}"
        )
        lines.extend(f"    {line}" for line in finding.recipe.splitlines())
    return "".join(f"{line}\n" for line in lines)


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps([asdict(finding) for finding in findings], indent=2, ensure_ascii=False)


def render_github(findings: Sequence[Finding]) -> str:
    """GitHub Actions workflow commands: one annotation per finding."""
    lines = []
    for finding in findings:
        properties = ",".join(
            f"{key}={_github_property(str(value))}"
            for key, value in (
                ("file", finding.file),
                ("line", finding.line),
                ("col", finding.column),
                ("title", finding.rule),
            )
        )
        text = f"{finding.message}\n{finding.recipe}"
        lines.append(f"::{finding.level} {properties}::{_github_data(text)}\n")
    return "".join(lines)


def _github_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _github_property(text: str) -> str:
    return _github_data(text).replace(":", "%3A").replace(",", "%2C")


SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)


def render_sarif(findings: Sequence[Finding], tool_version: str) -> str:
    """SARIF 2.1.0, for code scanning: every rule, and one result per finding."""
    index = {rule_id: position for position, rule_id in enumerate(RULES)}
    rules = [
        {
            "id": rule.id,
            "shortDescription": {"text": rule.summary},
            "help": {"text": rule.recipe},
            "defaultConfiguration": {"level": rule.level},
        }
        for rule in RULES.values()
    ]
    results = [
        {
            "ruleId": finding.rule,
            "ruleIndex": index[finding.rule],
            "level": finding.level,
            "message": {"text": f"{finding.message}\n\n{finding.recipe}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": quote(finding.file)},
                        "region": {"startLine": finding.line, "startColumn": finding.column},
                    }
                }
            ],
        }
        for finding in findings
    ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "migration-runner",
                        "version": tool_version,
                        "informationUri": "https://squawkhq.com/docs/rules",
                        "rules": rules,
                    }
                },
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2, ensure_ascii=False)
