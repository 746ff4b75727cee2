"""What `plan --locks` says: which table locks each pending statement takes, what they block,
whether the statement rewrites or scans the table meanwhile, and what a file holds until its
COMMIT.

Lock modes and their conflicts are PostgreSQL's (Explicit Locking, table-level locks); which
statement takes which mode is PostgreSQL 15's, read from the statement's parse tree and checked
against pg_locks by tests/test_locks.py. A statement whose locks cannot be told from its text
(a DO block, a function call) is reported as not analysed rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import psycopg
from pglast import ast, enums, parse_sql
from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from pglast.parser import ParseError

from runner import db
from runner.errors import MigrationSetError
from runner.planner import MigrationFile
from runner.sqlscript import CopyData, Kind, ScriptSyntaxError, Statement, read_units


class LockMode(IntEnum):
    """The eight table-level lock modes, weakest first, numbered as PostgreSQL numbers them:
    where several apply, PostgreSQL takes the highest."""

    ACCESS_SHARE = 1
    ROW_SHARE = 2
    ROW_EXCLUSIVE = 3
    SHARE_UPDATE_EXCLUSIVE = 4
    SHARE = 5
    SHARE_ROW_EXCLUSIVE = 6
    EXCLUSIVE = 7
    ACCESS_EXCLUSIVE = 8

    @property
    def sql(self) -> str:
        """As LOCK TABLE spells it: "SHARE ROW EXCLUSIVE"."""
        return self.name.replace("_", " ")

    @property
    def pg_locks(self) -> str:
        """As pg_locks.mode shows it: "ShareRowExclusiveLock"."""
        return "".join(word.capitalize() for word in self.name.split("_")) + "Lock"

    def conflicts_with(self, other: LockMode) -> bool:
        return other in _CONFLICTS[self]

    @property
    def blocks(self) -> tuple[str, ...]:
        """What other sessions cannot do on the table while this mode is held."""
        return blocked_by((self,))


_AS, _RS, _RE = LockMode.ACCESS_SHARE, LockMode.ROW_SHARE, LockMode.ROW_EXCLUSIVE
_SUE, _SHARE = LockMode.SHARE_UPDATE_EXCLUSIVE, LockMode.SHARE
_SRE, _EX, _AE = LockMode.SHARE_ROW_EXCLUSIVE, LockMode.EXCLUSIVE, LockMode.ACCESS_EXCLUSIVE

# Table 13.2, Conflicting Lock Modes.
_CONFLICTS: dict[LockMode, frozenset[LockMode]] = {
    _AS: frozenset({_AE}),
    _RS: frozenset({_EX, _AE}),
    _RE: frozenset({_SHARE, _SRE, _EX, _AE}),
    _SUE: frozenset({_SUE, _SHARE, _SRE, _EX, _AE}),
    _SHARE: frozenset({_RE, _SUE, _SRE, _EX, _AE}),
    _SRE: frozenset({_RE, _SUE, _SHARE, _SRE, _EX, _AE}),
    _EX: frozenset({_RS, _RE, _SUE, _SHARE, _SRE, _EX, _AE}),
    _AE: frozenset(LockMode),
}

# What other sessions do to a table, by the mode it needs: a held mode that conflicts with it
# makes them wait. DDL is most of ALTER TABLE, DROP, TRUNCATE, VACUUM FULL; every mode blocks
# it, which is why a waiting ALTER TABLE queues even SELECTs behind a long one.
OPERATIONS: dict[str, LockMode] = {
    "SELECT": _AS,
    "INSERT/UPDATE/DELETE": _RE,
    "VACUUM/ANALYZE": _SUE,
    "DDL": _AE,
}


def blocked_by(modes: Collection[LockMode]) -> tuple[str, ...]:
    """The operations (OPERATIONS) that wait while all of `modes` are held."""
    return tuple(
        operation
        for operation, needs in OPERATIONS.items()
        if any(mode.conflicts_with(needs) for mode in modes)
    )


class Effect(IntEnum):
    """Whether a statement rewrites or reads the whole table while it holds the lock."""

    NO = 0
    MAYBE = 1
    YES = 2

    @property
    def word(self) -> str:
        return ("no", "may", "yes")[self]


@dataclass(frozen=True)
class TableLock:
    """One table a statement locks. `table` is schema-qualified as written; when `of_index`,
    it names an index and the lock is on that index's table (DROP INDEX names no table)."""

    table: str
    mode: LockMode
    rewrite: Effect = Effect.NO
    scan: Effect = Effect.NO
    note: str = ""
    of_index: bool = False


@dataclass(frozen=True)
class StatementLocks:
    """A statement of a file, or a run of consecutive ones that take the same locks."""

    line: int
    last_line: int  # of the last statement of the run
    sql: str  # its first words
    locks: tuple[TableLock, ...]
    not_analysed: str = ""  # why its locks cannot be told from its text
    count: int = 1


@dataclass(frozen=True)
class HeldLock:
    """A table locked in a transaction, from the statement that first locked it to COMMIT."""

    table: str
    mode: LockMode  # the strongest taken
    modes: tuple[LockMode, ...]  # every mode taken, weakest first
    since_line: int  # of the first statement that locked it
    mode_line: int  # of the first statement that took `mode`
    new: bool = False  # created in this transaction: no other session sees it before COMMIT
    of_index: bool = False

    @property
    def blocks(self) -> tuple[str, ...]:
        return blocked_by(self.modes)


@dataclass(frozen=True)
class TransactionLocks:
    first_line: int
    last_line: int
    held: tuple[HeldLock, ...]
    unknown_lines: tuple[int, ...] = ()  # statements whose locks are not analysed


ONE_TRANSACTION = "one transaction"
NO_TRANSACTION = "no transaction: statement by statement"


@dataclass(frozen=True)
class FileLockPlan:
    filename: str
    transaction: str  # ONE_TRANSACTION or NO_TRANSACTION
    statements: tuple[StatementLocks, ...]
    # ONE_TRANSACTION: the whole file; NO_TRANSACTION: each BEGIN ... COMMIT block in it.
    transactions: tuple[TransactionLocks, ...]
    problem: str = ""  # the file cannot be read: nothing else is known


@dataclass(frozen=True)
class TableSize:
    table: str  # as the catalog names it
    rows: int | None  # pg_class.reltuples; None: never analyzed
    total_bytes: int | None  # None: the table was locked by another session


# -- one statement -----------------------------------------------------------------------------


def statement_locks(statement: Statement) -> list[TableLock]:
    """The tables `statement` locks, one entry per table, in the order it names them."""
    return list(_analyse(statement).locks)


@dataclass(frozen=True)
class _Analysis:
    locks: tuple[TableLock, ...] = ()
    not_analysed: str = ""  # why the locks cannot be told from the text
    created: tuple[str, ...] = ()  # tables the statement creates


def _analyse(statement: Statement) -> _Analysis:
    if statement.kind is Kind.META_COMMAND:
        return _Analysis()
    try:
        parsed = parse_sql(statement.text)
    except ParseError:
        return _Analysis(not_analysed="PostgreSQL's parser refuses it: the server will too")
    locks: list[TableLock] = []
    created: list[str] = []
    reason = ""
    for raw in parsed:
        node: Any = raw.stmt
        created.extend(_created(node))
        handler = _HANDLERS.get(type(node))
        found = handler(node) if handler else [] if isinstance(node, _NO_TABLE_LOCKS) else None
        if found is None:
            words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", type(node).__name__.removesuffix("Stmt"))
            reason = f"{words.upper()} is not analysed"
        elif isinstance(found, str):
            reason = found
        else:
            locks.extend(found)
    return _Analysis(tuple(_merge(locks)), reason, tuple(created))


def _created(node: Any) -> list[str]:
    """Tables `node` creates: until COMMIT no other session sees them or waits on them."""
    if isinstance(node, ast.CreateStmt):
        return [_name(node.relation)]
    if isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        return [_name(node.into.rel)]
    if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        return [_name(node.intoClause.rel)]
    return []


def _merge(locks: Sequence[TableLock]) -> list[TableLock]:
    """One entry per table: PostgreSQL holds the strongest mode requested."""
    merged: dict[tuple[str, bool], TableLock] = {}
    for lock in locks:
        key = (lock.table, lock.of_index)
        old = merged.get(key)
        if old is None:
            merged[key] = lock
            continue
        notes = dict.fromkeys(note for note in (old.note, lock.note) if note)
        merged[key] = TableLock(
            lock.table,
            max(old.mode, lock.mode),
            max(old.rewrite, lock.rewrite),
            max(old.scan, lock.scan),
            "; ".join(notes),
            lock.of_index,
        )
    return list(merged.values())


_KEYWORDS = RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


def _identifier(name: str) -> str:
    if _PLAIN_IDENTIFIER.fullmatch(name) and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _name(relation: Any) -> str:
    """A RangeVar, or a list of String nodes, as a qualified name."""
    if isinstance(relation, ast.RangeVar):
        parts = [relation.schemaname, relation.relname]
    else:
        parts = [part.sval for part in relation]
    return ".".join(_identifier(part) for part in parts if part)


def _nodes(value: Any) -> Iterator[Any]:
    """Every node in `value` (a node or a tuple of them), depth first, `value` included."""
    if isinstance(value, tuple):
        for item in value:
            yield from _nodes(item)
    elif isinstance(value, ast.Node):
        yield value
        for attribute in value:
            yield from _nodes(getattr(value, attribute))


# -- queries: SELECT, INSERT, UPDATE, DELETE, MERGE, COPY ---------------------------------------

_DML = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_FK_NOTE = "its foreign keys also take ROW SHARE on the tables they reference"


def _query(node: Any) -> list[TableLock]:
    """Targets of INSERT, UPDATE, DELETE and MERGE take ROW EXCLUSIVE, tables locked with FOR
    UPDATE/SHARE take ROW SHARE, every other table read takes ACCESS SHARE."""
    every = list(_nodes(node))
    ctes = {n.ctename for n in every if isinstance(n, ast.CommonTableExpr)}
    # Not tables read: a table SELECT INTO creates, the names FOR UPDATE OF refers to.
    skip = {id(n.rel) for n in every if isinstance(n, ast.IntoClause)}
    skip.update(
        id(rel) for n in every if isinstance(n, ast.LockingClause) for rel in n.lockedRels or ()
    )
    targets: dict[int, TableLock] = {}
    row_locked: set[str] = set()  # names and aliases under FOR UPDATE/SHARE
    for n in every:
        if isinstance(n, _DML):
            targets[id(n.relation)] = _target(n)
        elif isinstance(n, ast.SelectStmt) and n.lockingClause:
            for clause in n.lockingClause:
                if clause.lockedRels:
                    row_locked.update(rel.relname or "" for rel in clause.lockedRels)
                else:
                    row_locked.update(_aliases(n.fromClause))
    locks: list[TableLock] = []
    tables = [n for n in every if isinstance(n, ast.RangeVar) and id(n) not in skip]
    for n in sorted(tables, key=lambda n: n.location or 0):
        if id(n) in targets:
            locks.append(targets[id(n)])
        elif n.schemaname is None and n.relname in ctes:
            continue
        elif n.relname in row_locked or (n.alias and n.alias.aliasname in row_locked):
            locks.append(TableLock(_name(n), _RS, scan=Effect.MAYBE, note="FOR UPDATE/SHARE"))
        else:
            locks.append(TableLock(_name(n), _AS, scan=Effect.MAYBE))
    return locks


def _aliases(from_clause: Any) -> set[str]:
    names: set[str] = set()
    for n in _nodes(from_clause):
        if isinstance(n, ast.RangeVar):
            names.add((n.alias.aliasname if n.alias else n.relname) or "")
    return names


def _target(node: Any) -> TableLock:
    table = _name(node.relation)
    if isinstance(node, ast.InsertStmt):
        return TableLock(table, _RE, note=f"INSERT: {_FK_NOTE}")
    if isinstance(node, ast.MergeStmt):
        return TableLock(table, _RE, scan=Effect.MAYBE, note=f"MERGE: {_FK_NOTE}")
    verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
    if node.whereClause is None:
        note = f"{verb} without WHERE: every row stays locked against other writers until COMMIT"
        return TableLock(table, _RE, scan=Effect.YES, note=note)
    note = f"{verb}: the rows it changes stay locked against other writers until COMMIT"
    return TableLock(table, _RE, scan=Effect.MAYBE, note=note)


def _copy(node: ast.CopyStmt) -> list[TableLock]:
    if node.relation is None:
        return _query(node.query)  # COPY (query) TO
    if node.is_from:
        return [TableLock(_name(node.relation), _RE, note=f"COPY FROM: {_FK_NOTE}")]
    return [TableLock(_name(node.relation), _AS, scan=Effect.YES, note="COPY TO")]


# -- CREATE ------------------------------------------------------------------------------------


def _create_table(node: ast.CreateStmt) -> list[TableLock]:
    """A new table locks no existing one, except those it is tied to."""
    locks: list[TableLock] = []
    for parent in node.inhRelations or ():
        if node.partbound is not None:
            locks.append(
                TableLock(
                    _name(parent),
                    _AE,
                    note="CREATE TABLE ... PARTITION OF: a DEFAULT partition is scanned for "
                    "rows that belong to the new one",
                )
            )
        else:
            locks.append(TableLock(_name(parent), _SUE, note="CREATE TABLE ... INHERITS"))
    for element in node.tableElts or ():
        if isinstance(element, ast.TableLikeClause):
            locks.append(TableLock(_name(element.relation), _AS, note="CREATE TABLE (LIKE ...)"))
            continue
        constraints = element.constraints if isinstance(element, ast.ColumnDef) else (element,)
        for constraint in constraints or ():
            if _is(constraint, enums.ConstrType.CONSTR_FOREIGN):
                locks.append(
                    TableLock(
                        _name(constraint.pktable),
                        _SRE,
                        note="referenced by a FOREIGN KEY: CREATE TABLE adds its triggers here",
                    )
                )
    return locks


def _is(node: Any, contype: enums.ConstrType) -> bool:
    return isinstance(node, ast.Constraint) and node.contype == contype


def _create_table_as(node: ast.CreateTableAsStmt) -> list[TableLock]:
    what = "MATERIALIZED VIEW" if node.objtype == enums.ObjectType.OBJECT_MATVIEW else "TABLE AS"
    reads = _query(node.query)
    if node.into is not None and node.into.skipData:
        return [TableLock(lock.table, lock.mode) for lock in reads]
    return [
        TableLock(lock.table, lock.mode, scan=lock.scan, note=f"CREATE {what}: runs its query")
        for lock in reads
    ]


def _create_view(node: ast.ViewStmt) -> list[TableLock]:
    reads = [TableLock(lock.table, _AS) for lock in _query(node.query)]
    if not node.replace:
        return reads
    note = "CREATE OR REPLACE VIEW: queries using the view wait, if it exists"
    return [TableLock(_name(node.view), _AE, note=note), *reads]


def _policy(node: ast.CreatePolicyStmt | ast.AlterPolicyStmt) -> list[TableLock]:
    return [TableLock(_name(node.table), _AE, note="CREATE/ALTER POLICY: catalog only, quick")]


def _create_index(node: ast.IndexStmt) -> list[TableLock]:
    if node.concurrent:
        return [
            TableLock(
                _name(node.relation),
                _SUE,
                scan=Effect.YES,
                note="CREATE INDEX CONCURRENTLY: reads and writes go on; it scans the table "
                "twice and waits for transactions older than it",
            )
        ]
    return [
        TableLock(
            _name(node.relation),
            _SHARE,
            scan=Effect.YES,
            note="CREATE INDEX: writes wait for the whole build; CREATE INDEX CONCURRENTLY "
            "lets them go on",
        )
    ]


def _create_trigger(node: ast.CreateTrigStmt) -> list[TableLock]:
    return [TableLock(_name(node.relation), _SRE, note="CREATE TRIGGER: catalog only")]


def _create_statistics(node: ast.CreateStatsStmt) -> list[TableLock]:
    note = "CREATE STATISTICS: catalog only"
    return [TableLock(_name(relation), _SUE, note=note) for relation in node.relations or ()]


# -- DROP, TRUNCATE, RENAME, COMMENT, LOCK -----------------------------------------------------

_DROPPED = {
    enums.ObjectType.OBJECT_TABLE: "DROP TABLE",
    enums.ObjectType.OBJECT_MATVIEW: "DROP MATERIALIZED VIEW",
    enums.ObjectType.OBJECT_VIEW: "DROP VIEW",
    enums.ObjectType.OBJECT_FOREIGN_TABLE: "DROP FOREIGN TABLE",
}
_DROPPED_ON_A_TABLE = {  # named "name ON table"
    enums.ObjectType.OBJECT_TRIGGER: "DROP TRIGGER",
    enums.ObjectType.OBJECT_POLICY: "DROP POLICY",
    enums.ObjectType.OBJECT_RULE: "DROP RULE",
}
_DROPPED_FOREIGN_KEY = (
    "a table it has a FOREIGN KEY to gets ACCESS EXCLUSIVE too, to drop the key's triggers"
)


def _drop(node: ast.DropStmt) -> list[TableLock] | str:
    objects = node.objects or ()
    if node.removeType == enums.ObjectType.OBJECT_INDEX:
        mode, note = (
            (_SUE, "DROP INDEX CONCURRENTLY: waits for transactions using the index")
            if node.concurrent
            else (_AE, "DROP INDEX: quick; DROP INDEX CONCURRENTLY lets reads and writes go on")
        )
        return [TableLock(_name(name), mode, note=note, of_index=True) for name in objects]
    kind = node.removeType
    if kind in _DROPPED:
        note = (
            f"DROP TABLE: {_DROPPED_FOREIGN_KEY}" if kind == enums.ObjectType.OBJECT_TABLE else ""
        )
        return [TableLock(_name(name), _AE, note=note or _DROPPED[kind]) for name in objects]
    if kind in _DROPPED_ON_A_TABLE:
        return [
            TableLock(_name(name[:-1]), _AE, note=_DROPPED_ON_A_TABLE[kind]) for name in objects
        ]
    if (
        node.behavior == enums.DropBehavior.DROP_CASCADE
        or kind == enums.ObjectType.OBJECT_EXTENSION
    ):
        return "what depends on it is dropped too, with its own locks"
    return []


def _truncate(node: ast.TruncateStmt) -> list[TableLock]:
    return [
        TableLock(_name(relation), _AE, note="TRUNCATE: swaps in an empty file, quick")
        for relation in node.relations or ()
    ]


_RENAMED = {
    enums.ObjectType.OBJECT_TABLE: "RENAME TO",
    enums.ObjectType.OBJECT_COLUMN: "RENAME COLUMN",
    enums.ObjectType.OBJECT_TABCONSTRAINT: "RENAME CONSTRAINT",
    enums.ObjectType.OBJECT_MATVIEW: "RENAME TO",
    enums.ObjectType.OBJECT_VIEW: "RENAME TO",
    enums.ObjectType.OBJECT_FOREIGN_TABLE: "RENAME TO",
    enums.ObjectType.OBJECT_TRIGGER: "ALTER TRIGGER ... RENAME",
}


def _rename(node: ast.RenameStmt) -> list[TableLock] | str:
    what = _RENAMED.get(node.renameType) if node.renameType is not None else None
    if what is None or node.relation is None:
        return "this RENAME: not analysed"
    return [TableLock(_name(node.relation), _AE, note=f"{what}: catalog only, quick")]


_COMMENTED = frozenset(
    {
        enums.ObjectType.OBJECT_TABLE,
        enums.ObjectType.OBJECT_MATVIEW,
        enums.ObjectType.OBJECT_VIEW,
        enums.ObjectType.OBJECT_FOREIGN_TABLE,
        enums.ObjectType.OBJECT_COLUMN,
        enums.ObjectType.OBJECT_TABCONSTRAINT,
    }
)


def _comment(node: ast.CommentStmt) -> list[TableLock]:
    if node.objtype not in _COMMENTED or not isinstance(node.object, tuple):
        return []
    names = node.object
    if node.objtype in (enums.ObjectType.OBJECT_COLUMN, enums.ObjectType.OBJECT_TABCONSTRAINT):
        names = names[:-1]
    return [TableLock(_name(names), _SUE, note="COMMENT ON")]


def _lock(node: ast.LockStmt) -> list[TableLock]:
    mode = LockMode(node.mode or _AE)  # LOCK TABLE without a mode: ACCESS EXCLUSIVE
    relations = node.relations or ()
    return [TableLock(_name(relation), mode, note="LOCK TABLE") for relation in relations]


# -- maintenance: VACUUM, ANALYZE, CLUSTER, REINDEX, REFRESH -----------------------------------


def _vacuum(node: ast.VacuumStmt) -> list[TableLock] | str:
    options = {option.defname for option in node.options or ()}
    if not node.rels:
        return "every table of the database, one after the other"
    if not node.is_vacuumcmd:
        mode, rewrite, scan = _SUE, Effect.NO, Effect.NO
        note = "ANALYZE: reads a sample of the rows"
    elif "full" in options:
        mode, rewrite, scan = _AE, Effect.YES, Effect.NO
        note = "VACUUM FULL: writes a new copy of the table"
    else:
        mode, rewrite, scan = _SUE, Effect.NO, Effect.YES
        note = "VACUUM: reads and writes go on"
    return [
        TableLock(_name(relation.relation), mode, rewrite, scan, note)
        for relation in node.rels
        if relation.relation is not None
    ]


def _cluster(node: ast.ClusterStmt) -> list[TableLock] | str:
    if node.relation is None:
        return "every table clustered before, one after the other"
    note = "CLUSTER: writes a new copy of the table in index order"
    return [TableLock(_name(node.relation), _AE, Effect.YES, note=note)]


def _reindex(node: ast.ReindexStmt) -> list[TableLock] | str:
    kind = node.kind
    concurrently = any(option.defname == "concurrently" for option in node.params or ())
    if kind not in (
        enums.ReindexObjectType.REINDEX_OBJECT_TABLE,
        enums.ReindexObjectType.REINDEX_OBJECT_INDEX,
    ):
        return "REINDEX SCHEMA/DATABASE/SYSTEM: every table in it, one after the other"
    if concurrently:
        mode, note = _SUE, "REINDEX CONCURRENTLY: reads and writes go on"
    else:
        # The Explicit Locking page lists REINDEX under ACCESS EXCLUSIVE: that is the lock on
        # each index; its table gets SHARE (see REINDEX's page, and pg_locks).
        mode = _SHARE
        note = (
            "REINDEX: each index gets ACCESS EXCLUSIVE, and planning any query on the table "
            "locks all its indexes: nearly every query waits, not only writes"
        )
    of_index = kind == enums.ReindexObjectType.REINDEX_OBJECT_INDEX
    assert node.relation is not None
    return [TableLock(_name(node.relation), mode, scan=Effect.YES, note=note, of_index=of_index)]


def _refresh(node: ast.RefreshMatViewStmt) -> list[TableLock]:
    view = _name(node.relation)
    reads = "the tables its query reads get ACCESS SHARE"
    if node.concurrent:
        note = f"REFRESH MATERIALIZED VIEW CONCURRENTLY: reads go on; {reads}"
        return [TableLock(view, _EX, scan=Effect.YES, note=note)]
    note = f"REFRESH MATERIALIZED VIEW: fills a new copy; {reads}"
    return [TableLock(view, _AE, Effect.YES, note=note)]


# -- ALTER TABLE -------------------------------------------------------------------------------

AT = enums.AlterTableType

# PostgreSQL 15's AlterTableGetLockLevel, for the subcommands that take less than ACCESS
# EXCLUSIVE; every other one takes ACCESS EXCLUSIVE.
_AT_MODES: dict[AT, LockMode] = {
    **dict.fromkeys(
        (AT.AT_SetStatistics, AT.AT_SetOptions, AT.AT_ResetOptions, AT.AT_ClusterOn,
         AT.AT_DropCluster, AT.AT_ValidateConstraint, AT.AT_AttachPartition,
         AT.AT_DetachPartitionFinalize),
        _SUE,
    ),
    **dict.fromkeys(
        (AT.AT_EnableTrig, AT.AT_EnableAlwaysTrig, AT.AT_EnableReplicaTrig, AT.AT_EnableTrigAll,
         AT.AT_EnableTrigUser, AT.AT_DisableTrig, AT.AT_DisableTrigAll, AT.AT_DisableTrigUser),
        _SRE,
    ),
}  # fmt: skip

# Storage parameters that SET (...) / RESET (...) change under SHARE UPDATE EXCLUSIVE
# (reloptions.c); any other takes ACCESS EXCLUSIVE.
_LIGHT_STORAGE_PARAMETERS = frozenset(
    {
        "fillfactor", "toast_tuple_target", "parallel_workers", "vacuum_index_cleanup",
        "vacuum_truncate", "log_autovacuum_min_duration",
    }
)  # fmt: skip

_AT_NOTES: dict[AT, tuple[Effect, Effect, str]] = {  # rewrite, scan, note
    AT.AT_DropColumn: (
        Effect.NO,
        Effect.NO,
        "DROP COLUMN: catalog only, quick; if the column is in a FOREIGN KEY, "
        + _DROPPED_FOREIGN_KEY,
    ),
    AT.AT_ColumnDefault: (Effect.NO, Effect.NO, "SET/DROP DEFAULT: catalog only, quick"),
    AT.AT_DropNotNull: (Effect.NO, Effect.NO, "DROP NOT NULL: catalog only, quick"),
    AT.AT_SetNotNull: (
        Effect.NO,
        Effect.MAYBE,
        "SET NOT NULL: scans for NULLs under the lock, unless a valid CHECK (column IS NOT "
        "NULL) constraint already proves it",
    ),
    AT.AT_AlterColumnType: (
        Effect.MAYBE,
        Effect.NO,
        "ALTER COLUMN TYPE: rewrites the table and its indexes unless the old type converts "
        "to the new without change (varchar(n) to text or to a longer varchar, say)",
    ),
    AT.AT_SetStatistics: (Effect.NO, Effect.NO, "SET STATISTICS: catalog only"),
    AT.AT_ValidateConstraint: (
        Effect.NO,
        Effect.YES,
        "VALIDATE CONSTRAINT: reads and writes go on while it scans; a foreign key also takes "
        "ROW SHARE on the table it references",
    ),
    AT.AT_SetTableSpace: (Effect.YES, Effect.NO, "SET TABLESPACE: copies the table"),
    AT.AT_SetAccessMethod: (Effect.YES, Effect.NO, "SET ACCESS METHOD: rewrites the table"),
    AT.AT_SetLogged: (Effect.YES, Effect.NO, "SET LOGGED: rewrites the table"),
    AT.AT_SetUnLogged: (Effect.YES, Effect.NO, "SET UNLOGGED: rewrites the table"),
    AT.AT_DropConstraint: (
        Effect.NO,
        Effect.NO,
        f"DROP CONSTRAINT: quick; dropping a FOREIGN KEY, {_DROPPED_FOREIGN_KEY}",
    ),
    AT.AT_DetachPartition: (Effect.NO, Effect.NO, "DETACH PARTITION"),
}


def _alter_table(node: ast.AlterTableStmt) -> list[TableLock] | str:
    if node.objtype == enums.ObjectType.OBJECT_INDEX:
        return "ALTER INDEX locks the index, not its table; not analysed"
    table = _name(node.relation)
    locks: list[TableLock] = []
    for command in node.cmds or ():
        locks.extend(_subcommand(command, table))
    return locks


def _subcommand(command: ast.AlterTableCmd, table: str) -> list[TableLock]:
    subtype = command.subtype
    definition: Any = command.def_
    if subtype == AT.AT_AddColumn:
        return _add_column(definition, table)
    if subtype == AT.AT_AddConstraint and isinstance(definition, ast.Constraint):
        return _add_constraint(definition, table)
    if subtype in (AT.AT_SetRelOptions, AT.AT_ResetRelOptions):
        light = all(_light(option) for option in definition or ())
        mode = _SUE if light else _AE
        return [TableLock(table, mode, note="SET/RESET (storage parameters): catalog only")]
    if subtype == AT.AT_AttachPartition:
        return [
            TableLock(table, _SUE, note="ATTACH PARTITION: a DEFAULT partition is scanned too"),
            TableLock(
                _name(definition.name),
                _AE,
                scan=Effect.MAYBE,
                note="attached: scanned to check its rows fit the bound, unless one of its "
                "CHECK constraints implies it",
            ),
        ]
    if subtype == AT.AT_DetachPartition and definition.concurrent:
        return [
            TableLock(table, _SUE, note="DETACH PARTITION CONCURRENTLY: two transactions"),
            TableLock(
                _name(definition.name),
                _AE,
                note="detached: SHARE UPDATE EXCLUSIVE in the first transaction, ACCESS "
                "EXCLUSIVE briefly at the end of the second",
            ),
        ]
    if subtype == AT.AT_DetachPartition:
        return [
            TableLock(table, _AE, note="DETACH PARTITION"),
            TableLock(_name(definition.name), _AE, note="detached"),
        ]
    if subtype is None:
        return [TableLock(table, _AE)]
    rewrite, scan, note = _AT_NOTES.get(subtype, (Effect.NO, Effect.NO, ""))
    return [TableLock(table, _AT_MODES.get(subtype, _AE), rewrite, scan, note)]


def _light(option: ast.DefElem) -> bool:
    name = option.defname or ""
    return name in _LIGHT_STORAGE_PARAMETERS or name.startswith("autovacuum_")


_SERIAL = frozenset({"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"})


def _add_column(column: ast.ColumnDef, table: str) -> list[TableLock]:
    rewrite, scan = Effect.NO, Effect.NO
    notes: list[str] = []
    others: list[TableLock] = []
    type_name = column.typeName.names[-1].sval if column.typeName and column.typeName.names else ""
    if type_name in _SERIAL:
        rewrite = Effect.YES
        notes.append(f"{type_name}: every row gets a value from the sequence")
    constraints = column.constraints or ()
    has_default = any(_is(c, enums.ConstrType.CONSTR_DEFAULT) for c in constraints)
    for constraint in constraints:
        contype = constraint.contype
        if contype == enums.ConstrType.CONSTR_DEFAULT:
            effect = _default(constraint.raw_expr)
            rewrite = max(rewrite, effect)
            notes.append(_DEFAULT_NOTES[effect])
        elif contype in (enums.ConstrType.CONSTR_IDENTITY, enums.ConstrType.CONSTR_GENERATED):
            rewrite = Effect.YES
            notes.append("identity or generated column: every row gets a value")
        elif contype == enums.ConstrType.CONSTR_CHECK:
            scan = Effect.YES
            notes.append("CHECK: every row is checked")
        elif contype in (enums.ConstrType.CONSTR_PRIMARY, enums.ConstrType.CONSTR_UNIQUE):
            scan = Effect.YES
            notes.append("builds its index under the lock")
        elif contype == enums.ConstrType.CONSTR_FOREIGN:
            # PostgreSQL checks the key only when the new column has a default.
            key, referenced = _foreign_key(constraint, table, validated=has_default)
            scan = max(scan, key.scan)
            notes.append(key.note)
            others.append(referenced)
    note = "ADD COLUMN: " + ("; ".join(notes) if notes else "catalog only, quick")
    return [TableLock(table, _AE, rewrite, scan, note), *others]


_DEFAULT_NOTES = {
    Effect.NO: "a constant default is stored in the catalog: no rewrite (PostgreSQL 11+)",
    Effect.MAYBE: "rewrites the table if the default is volatile, not if it is constant "
    "(PostgreSQL 11+)",
    Effect.YES: "a volatile default: every row gets its own value",
}

# Function names whose volatility decides whether ADD COLUMN ... DEFAULT rewrites: volatile
# ones give every row its own value; stable and immutable ones are computed once.
_VOLATILE = frozenset(
    {
        "random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid",
        "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "nextval", "txid_current",
    }
)  # fmt: skip
_NOT_VOLATILE = frozenset(
    {
        "now", "transaction_timestamp", "statement_timestamp", "current_setting", "lower",
        "upper", "length", "concat", "replace", "md5", "abs", "round", "date_trunc", "make_date",
        "make_interval", "to_timestamp", "to_char", "to_jsonb", "to_json", "jsonb_build_object",
        "jsonb_build_array", "json_build_object", "json_build_array", "array_fill",
    }
)  # fmt: skip


def _default(expression: Any) -> Effect:
    """YES when the default is volatile, NO when it is computed once, MAYBE when unknown."""
    verdict = Effect.NO
    for n in _nodes(expression):
        if isinstance(n, ast.FuncCall):
            name = (n.funcname[-1].sval or "").lower() if n.funcname else ""
            if name in _VOLATILE:
                return Effect.YES
            if name not in _NOT_VOLATILE:
                verdict = Effect.MAYBE
        elif isinstance(n, ast.SubLink):
            verdict = Effect.MAYBE
    return verdict


def _add_constraint(constraint: ast.Constraint, table: str) -> list[TableLock]:
    contype = constraint.contype
    not_valid = bool(constraint.skip_validation)
    if contype == enums.ConstrType.CONSTR_FOREIGN:
        return _foreign_key(constraint, table)
    if contype == enums.ConstrType.CONSTR_CHECK:
        if not_valid:
            return [TableLock(table, _AE, note="ADD CHECK ... NOT VALID: catalog only, quick")]
        note = "ADD CHECK: every row is checked under the lock; NOT VALID, then VALIDATE, avoids it"
        return [TableLock(table, _AE, scan=Effect.YES, note=note)]
    if contype in (
        enums.ConstrType.CONSTR_PRIMARY,
        enums.ConstrType.CONSTR_UNIQUE,
        enums.ConstrType.CONSTR_EXCLUSION,
    ):
        what = {
            enums.ConstrType.CONSTR_PRIMARY: "PRIMARY KEY",
            enums.ConstrType.CONSTR_UNIQUE: "UNIQUE",
            enums.ConstrType.CONSTR_EXCLUSION: "EXCLUDE",
        }[contype]
        if constraint.indexname:
            scan = Effect.MAYBE if contype == enums.ConstrType.CONSTR_PRIMARY else Effect.NO
            note = f"ADD {what} USING INDEX: the index is already built"
            if scan:
                note += "; columns not yet NOT NULL are scanned for NULLs"
            return [TableLock(table, _AE, scan=scan, note=note)]
        note = f"ADD {what}: builds its index under the lock"
        if contype != enums.ConstrType.CONSTR_EXCLUSION:
            note += "; CREATE UNIQUE INDEX CONCURRENTLY, then ADD ... USING INDEX, avoids it"
        return [TableLock(table, _AE, scan=Effect.YES, note=note)]
    return [TableLock(table, _AE, note="ADD CONSTRAINT")]


def _foreign_key(constraint: ast.Constraint, table: str, validated: bool = True) -> list[TableLock]:
    """Both tables get SHARE ROW EXCLUSIVE: the key adds triggers to both."""
    referenced = _name(constraint.pktable)
    if not validated:
        note = "FOREIGN KEY on a new column without a default: nothing to check, quick"
        return [TableLock(table, _SRE, note=note), TableLock(referenced, _SRE, note=note)]
    if constraint.skip_validation:
        note = "FOREIGN KEY ... NOT VALID: existing rows are not checked, quick"
        return [TableLock(table, _SRE, note=note), TableLock(referenced, _SRE, note=note)]
    note = "FOREIGN KEY: existing rows are checked under the lock; NOT VALID, then VALIDATE, "
    note += "avoids that"
    looked_up = "referenced by a FOREIGN KEY: each key is looked up here, by index or by a scan"
    return [
        TableLock(table, _SRE, scan=Effect.YES, note=note),
        TableLock(referenced, _SRE, scan=Effect.MAYBE, note=looked_up),
    ]


_HANDLERS: dict[type[ast.Node], Callable[[Any], list[TableLock] | str]] = {
    ast.SelectStmt: _query,
    ast.InsertStmt: _query,
    ast.UpdateStmt: _query,
    ast.DeleteStmt: _query,
    ast.MergeStmt: _query,
    ast.CopyStmt: _copy,
    ast.CreateStmt: _create_table,
    ast.CreateTableAsStmt: _create_table_as,
    ast.ViewStmt: _create_view,
    ast.CreatePolicyStmt: _policy,
    ast.AlterPolicyStmt: _policy,
    ast.IndexStmt: _create_index,
    ast.CreateTrigStmt: _create_trigger,
    ast.CreateStatsStmt: _create_statistics,
    ast.DropStmt: _drop,
    ast.TruncateStmt: _truncate,
    ast.RenameStmt: _rename,
    ast.CommentStmt: _comment,
    ast.LockStmt: _lock,
    ast.VacuumStmt: _vacuum,
    ast.ClusterStmt: _cluster,
    ast.ReindexStmt: _reindex,
    ast.RefreshMatViewStmt: _refresh,
    ast.AlterTableStmt: _alter_table,
}

# Statements that lock no table.
_NO_TABLE_LOCKS = (
    ast.TransactionStmt, ast.VariableSetStmt, ast.VariableShowStmt, ast.CreateFunctionStmt,
    ast.CreateSchemaStmt, ast.CreateSeqStmt, ast.AlterSeqStmt, ast.CreateEnumStmt,
    ast.AlterEnumStmt, ast.CompositeTypeStmt, ast.CreateDomainStmt, ast.DefineStmt,
    ast.CreateRoleStmt, ast.AlterRoleStmt, ast.GrantStmt, ast.GrantRoleStmt,
    ast.AlterDefaultPrivilegesStmt, ast.CreateCastStmt, ast.PrepareStmt, ast.DeallocateStmt,
    ast.ListenStmt, ast.UnlistenStmt, ast.NotifyStmt,
)  # fmt: skip


# -- a file ------------------------------------------------------------------------------------


def lock_plan(files: Sequence[MigrationFile]) -> list[FileLockPlan]:
    """Per file: how it runs, each statement's locks, and what each transaction holds until its
    end (the whole file in one transaction; each BEGIN ... COMMIT block of a no-transaction
    file)."""
    return [_file_plan(file) for file in files]


class _Transaction:
    def __init__(self, line: int) -> None:
        self.first_line = self.last_line = line
        self.taken: dict[tuple[str, bool], dict[LockMode, int]] = {}  # mode: its first line
        self.created: set[str] = set()
        self.unknown: list[int] = []

    def take(self, line: int, found: _Analysis) -> None:
        self.last_line = line
        self.created.update(found.created)
        if found.not_analysed:
            self.unknown.append(line)
        for lock in found.locks:
            self.taken.setdefault((lock.table, lock.of_index), {}).setdefault(lock.mode, line)

    def end(self) -> TransactionLocks:
        held = []
        for (table, of_index), modes in self.taken.items():
            strongest = max(modes)
            held.append(
                HeldLock(
                    table,
                    strongest,
                    tuple(sorted(modes)),
                    min(modes.values()),
                    modes[strongest],
                    new=table in self.created and not of_index,
                    of_index=of_index,
                )
            )
        return TransactionLocks(self.first_line, self.last_line, tuple(held), tuple(self.unknown))


def _file_plan(file: MigrationFile) -> FileLockPlan:
    one = not file.no_transaction
    statements: list[StatementLocks] = []
    transactions: list[TransactionLocks] = []
    current: _Transaction | None = None
    groupable = False  # whether the next statement may join the last entry
    try:
        with file.reader() as read:
            for unit in read_units(read):
                statement = unit.statement if isinstance(unit, CopyData) else unit
                if statement.kind is Kind.META_COMMAND:
                    continue  # pg_dump's \restrict guards: not sent (the planner refuses others)
                if statement.kind in _TRANSACTION_CONTROL:
                    if one:
                        continue  # the runner ignores a file's own BEGIN/COMMIT wrapper
                    if current is not None and statement.kind in _ENDS:
                        current.last_line = statement.line
                        transactions.append(current.end())
                        current = None
                    if statement.kind in (Kind.BEGIN, Kind.BEGIN_WITH_MODES, Kind.CHAIN):
                        current = _Transaction(statement.line)
                    line = statement.line
                    statements.append(StatementLocks(line, line, _words(statement), ()))
                    groupable = False
                    continue
                if one and current is None:
                    current = _Transaction(statement.line)
                found = _analyse(statement)
                if current is not None:
                    current.take(statement.line, found)
                line = statement.line
                entry = StatementLocks(
                    line, line, _words(statement), found.locks, found.not_analysed
                )
                if groupable and _same_locks(statements[-1], entry):
                    last = statements[-1]
                    statements[-1] = replace(last, count=last.count + 1, last_line=line)
                else:
                    statements.append(entry)
                groupable = True
    except (ScriptSyntaxError, MigrationSetError) as error:
        return FileLockPlan(file.filename, _MODES[one], (), (), problem=str(error))
    if current is not None:
        transactions.append(current.end())
    return FileLockPlan(file.filename, _MODES[one], tuple(statements), tuple(transactions))


_MODES = {True: ONE_TRANSACTION, False: NO_TRANSACTION}
_ENDS = frozenset({Kind.COMMIT, Kind.ROLLBACK, Kind.CHAIN})
_TRANSACTION_CONTROL = _ENDS | {Kind.BEGIN, Kind.BEGIN_WITH_MODES}


def _same_locks(last: StatementLocks, entry: StatementLocks) -> bool:
    """Consecutive statements that take the same locks make one entry: a seed file of
    100,000 INSERTs is one line of the plan."""
    return last.locks == entry.locks and last.not_analysed == entry.not_analysed


_WORDS = 10  # of a statement, in the plan


def _words(statement: Statement) -> str:
    words = statement.text.split()
    text = " ".join(words[:_WORDS])
    if len(text) > 80:
        return text[:79] + "…"
    return text + (" …" if len(words) > _WORDS else "")


def tables_of(plans: Sequence[FileLockPlan]) -> list[str]:
    """Every table (or index, for its table) the plans name, for estimate()."""
    names = (
        lock.table for plan in plans for statement in plan.statements for lock in statement.locks
    )
    return list(dict.fromkeys(names))


# -- the database's estimates ------------------------------------------------------------------

# The table a name means (an index's table for an index's name), its estimated rows and total
# size with TOAST and indexes; a partitioned table's are its leaf partitions' sums.
_SIZE = """
WITH target AS (
    SELECT coalesce(i.indrelid, r.oid) AS oid
    FROM (SELECT to_regclass(%(name)s) AS oid) AS r
    LEFT JOIN pg_index AS i ON i.indexrelid = r.oid
    WHERE r.oid IS NOT NULL
)
SELECT t.oid::regclass::text,
       CASE WHEN bool_or(c.reltuples < 0) THEN NULL
            ELSE coalesce(sum(c.reltuples), 0)::bigint END,
       coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM target AS t
LEFT JOIN pg_class AS c ON c.relkind <> 'p' AND c.oid IN (
    SELECT t.oid UNION ALL SELECT relid FROM pg_partition_tree(t.oid) WHERE isleaf
)
GROUP BY t.oid
"""

# pg_total_relation_size takes ACCESS SHARE: a migration running now must not stall the plan.
SIZE_LOCK_TIMEOUT = "1s"


def estimate(conn: db.Connection, tables: Collection[str]) -> dict[str, TableSize]:
    """Estimated rows and total size of each of `tables` (names as statement_locks gives them;
    an index's name gives its table's) that exists. Reads the catalog only."""
    sizes: dict[str, TableSize] = {}
    with conn.transaction():
        db.execute(conn, "SET TRANSACTION READ ONLY")
        db.execute(conn, f"SET LOCAL lock_timeout = '{SIZE_LOCK_TIMEOUT}'")
        for name in dict.fromkeys(tables):
            try:
                with conn.transaction():
                    row = db.execute(conn, _SIZE, {"name": name}).fetchone()
            except psycopg.errors.LockNotAvailable:
                row = _unsized(conn, name)
            if row is not None:
                sizes[name] = TableSize(str(row[0]), _int(row[1]), _int(row[2]))
    return sizes


def _unsized(conn: db.Connection, name: str) -> tuple[Any, ...] | None:
    """The name and rows of a table another session holds in ACCESS EXCLUSIVE; no size."""
    query = """SELECT coalesce(i.indrelid, r.oid)::regclass::text,
       (SELECT nullif(reltuples, -1)::bigint FROM pg_class WHERE oid = coalesce(i.indrelid, r.oid)),
       NULL
FROM (SELECT to_regclass(%(name)s) AS oid) AS r
LEFT JOIN pg_index AS i ON i.indexrelid = r.oid
WHERE r.oid IS NOT NULL"""
    return db.execute(conn, query, {"name": name}).fetchone()


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# -- showing it --------------------------------------------------------------------------------


def render_text(plans: Sequence[FileLockPlan], sizes: Mapping[str, TableSize]) -> str:
    lines: list[str] = []
    for plan in plans:
        lines.append(f"{plan.filename}: {_transaction_words(plan)}")
        if plan.problem:
            lines.append(f"  cannot be read: {plan.problem}")
        for statement in plan.statements:
            where = f"line {statement.line}"
            if statement.count > 1:
                where = (
                    f"lines {statement.line}-{statement.last_line} ({statement.count} "
                    "statements taking the same locks)"
                )
            lines.append(f"  {where}: {statement.sql}")
            if statement.not_analysed:
                lines.append(f"    locks unknown: {statement.not_analysed}")
            for lock in statement.locks:
                lines.append("    " + _lock_line(lock, sizes))
        for transaction in plan.transactions:
            if not transaction.held:
                continue
            lines.append(
                f"  held until COMMIT (lines {transaction.first_line}-{transaction.last_line}):"
            )
            if transaction.unknown_lines:
                unknown = ", ".join(str(line) for line in transaction.unknown_lines)
                lines.append(f"    and whatever the statements at lines {unknown} lock")
            for held in transaction.held:
                lines.append("    " + _held_line(held, sizes))
        lines.append("")
    return "\n".join(lines)


def _transaction_words(plan: FileLockPlan) -> str:
    if plan.transaction == ONE_TRANSACTION:
        return "one transaction: every lock is held until its COMMIT"
    return "no transaction: each statement's locks end with it, except in BEGIN ... COMMIT"


def _table(table: str, of_index: bool, sizes: Mapping[str, TableSize]) -> str:
    name = f"table of index {table}" if of_index else table
    size = sizes.get(table)
    return f"{name} ({_size_words(size)})" if size else name


def _size_words(size: TableSize) -> str:
    rows = "rows unknown (never analyzed)" if size.rows is None else f"~{size.rows:,} rows"
    if size.total_bytes is None:
        return f"{rows}, size unknown (locked)"
    return f"{rows}, {_bytes(size.total_bytes)}"


def _bytes(count: int) -> str:
    """As pg_size_pretty writes it."""
    value, unit = float(count), "bytes"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 10 * 1024:
            break
        value, unit = value / 1024, bigger
    return f"{round(value)} {unit}"


def _lock_line(lock: TableLock, sizes: Mapping[str, TableSize]) -> str:
    parts = [f"{_table(lock.table, lock.of_index, sizes)}: {lock.mode.sql}"]
    parts.append("blocks " + ", ".join(lock.mode.blocks))
    if lock.rewrite:
        parts.append(("rewrites" if lock.rewrite is Effect.YES else "may rewrite") + " it")
    elif lock.scan:
        parts.append(("scans" if lock.scan is Effect.YES else "may scan") + " it")
    if lock.note:
        parts.append(lock.note)
    return "; ".join(parts)


def _held_line(held: HeldLock, sizes: Mapping[str, TableSize]) -> str:
    name = _table(held.table, held.of_index, sizes)
    if held.new:
        return f"{name}: created here: no other session sees it before COMMIT"
    text = f"{name}: {held.mode.sql} from line {held.mode_line}"
    if held.since_line < held.mode_line:
        text += f" (locked from line {held.since_line})"
    return f"{text}; blocks {', '.join(held.blocks)} until COMMIT"


def to_json(plans: Sequence[FileLockPlan], sizes: Mapping[str, TableSize]) -> dict[str, Any]:
    return {
        "files": [_file_json(plan) for plan in plans],
        "tables": {
            name: {"table": size.table, "rows": size.rows, "total_bytes": size.total_bytes}
            for name, size in sizes.items()
        },
    }


def _file_json(plan: FileLockPlan) -> dict[str, Any]:
    return {
        "file": plan.filename,
        "transaction": plan.transaction,
        "problem": plan.problem or None,
        "statements": [
            {
                "line": statement.line,
                "last_line": statement.last_line,
                "count": statement.count,
                "sql": statement.sql,
                "not_analysed": statement.not_analysed or None,
                "locks": [_lock_json(lock) for lock in statement.locks],
            }
            for statement in plan.statements
        ],
        "transactions": [
            {
                "first_line": transaction.first_line,
                "last_line": transaction.last_line,
                "unknown_lines": list(transaction.unknown_lines),
                "held": [
                    {
                        "table": held.table,
                        "of_index": held.of_index,
                        "mode": held.mode.sql,
                        "modes": [mode.sql for mode in held.modes],
                        "blocks": list(held.blocks),
                        "since_line": held.since_line,
                        "mode_line": held.mode_line,
                        "new": held.new,
                    }
                    for held in transaction.held
                ],
            }
            for transaction in plan.transactions
        ],
    }


def _lock_json(lock: TableLock) -> dict[str, Any]:
    return {
        "table": lock.table,
        "of_index": lock.of_index,
        "mode": lock.mode.sql,
        "pg_locks_mode": lock.mode.pg_locks,
        "blocks": list(lock.mode.blocks),
        "rewrite": lock.rewrite.word,
        "scan": lock.scan.word,
        "note": lock.note,
    }
