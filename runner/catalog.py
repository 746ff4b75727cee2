"""A schema as data: what pg_catalog says about every user object, keyed by name, and the
differences between two such snapshots.

A `Catalog` is plain JSON: {kind: {name: {property: value}}}. Names are schema-qualified
(`public.users`, `public.users.email`, `public.f(integer)`), never OIDs, so that snapshots of
two databases compare. Objects that belong to an extension are left out (the extension itself
is listed); so are owners and privileges, and table data.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from runner import db

Value = str | int | bool | list[str] | None
Properties = dict[str, Value]
Catalog = dict[str, dict[str, Properties]]

ADDED = "added"
MISSING = "missing"
CHANGED = "changed"

_USER_SCHEMA = """{n}.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND {n}.nspname NOT LIKE 'pg\\_temp\\_%' AND {n}.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"""


def _where(n: str, member: str, catalog: str) -> str:
    """A user schema, and not an object of an extension."""
    return (
        _USER_SCHEMA.format(n=n)
        + f"""
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass
                  AND e.objid = {member} AND e.deptype = 'e')"""
    )


# One query per kind; `key` is the name, every other column a property. Aliases are quoted:
# several are reserved words.
_QUERIES: dict[str, str] = {
    "schema": f"""SELECT n.nspname AS key, obj_description(n.oid, 'pg_namespace') AS "comment"
FROM pg_namespace n
WHERE {_where("n", "n.oid", "pg_namespace")}""",
    "extension": """SELECT x.extname AS key, n.nspname AS "schema", x.extversion AS "version",
       obj_description(x.oid, 'pg_extension') AS "comment"
FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace""",
    "type": f"""SELECT n.nspname || '.' || t.typname AS key,
       CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' WHEN 'c' THEN 'composite'
                      WHEN 'r' THEN 'range' ELSE 'base' END AS "kind",
       CASE WHEN t.typtype = 'e' THEN ARRAY(
           SELECT l.enumlabel::text FROM pg_enum l WHERE l.enumtypid = t.oid
           ORDER BY l.enumsortorder) END AS "labels",
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END AS "base_type",
       CASE WHEN t.typtype = 'd' THEN t.typnotnull END AS "not_null",
       CASE WHEN t.typtype = 'd' THEN pg_get_expr(t.typdefaultbin, 0) END AS "default",
       CASE WHEN t.typtype = 'c' THEN ARRAY(
           SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
           WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum) END AS "attributes",
       (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid)
           AS "subtype",
       obj_description(t.oid, 'pg_type') AS "comment"
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {_where("n", "t.oid", "pg_type")}
  AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
  AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_type element WHERE element.typarray = t.oid)""",
    "sequence": f"""SELECT n.nspname || '.' || c.relname AS key,
       format_type(s.seqtypid, NULL) AS "type", s.seqstart AS "start",
       s.seqincrement AS "increment", s.seqmin AS "minimum", s.seqmax AS "maximum",
       s.seqcache AS "cache", s.seqcycle AS "cycle",
       (SELECT tn.nspname || '.' || tc.relname || '.' || a.attname
        FROM pg_depend d
        JOIN pg_class tc ON tc.oid = d.refobjid
        JOIN pg_namespace tn ON tn.oid = tc.relnamespace
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
          AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
          AND d.deptype IN ('a', 'i')
        LIMIT 1) AS "owned_by",
       obj_description(c.oid, 'pg_class') AS "comment"
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_where("n", "c.oid", "pg_class")}""",
    "table": f"""SELECT n.nspname || '.' || c.relname AS key,
       CASE c.relkind WHEN 'p' THEN 'partitioned table' WHEN 'f' THEN 'foreign table'
                      ELSE 'table' END AS "kind",
       CASE c.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'permanent' END AS "persistence",
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS "partition_key",
       (SELECT pn.nspname || '.' || p.relname
        FROM pg_inherits i
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE i.inhrelid = c.oid AND c.relispartition) AS "partition_of",
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END
           AS "partition_bound",
       NULLIF(ARRAY(
           SELECT pn.nspname || '.' || p.relname
           FROM pg_inherits i
           JOIN pg_class p ON p.oid = i.inhparent
           JOIN pg_namespace pn ON pn.oid = p.relnamespace
           WHERE i.inhrelid = c.oid AND NOT c.relispartition
           ORDER BY i.inhseqno), '{{}}') AS "inherits",
       c.reloptions::text[] AS "options",
       NULLIF(c.relrowsecurity, false) AS "row_security",
       NULLIF(c.relforcerowsecurity, false) AS "force_row_security",
       obj_description(c.oid, 'pg_class') AS "comment"
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f') AND {_where("n", "c.oid", "pg_class")}""",
    "column": f"""SELECT n.nspname || '.' || c.relname || '.' || a.attname AS key,
       n.nspname || '.' || c.relname AS "table",
       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS "position",
       format_type(a.atttypid, a.atttypmod) AS "type",
       a.attnotnull AS "not_null",
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS "default",
       CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END AS "identity",
       CASE a.attgenerated WHEN '' THEN NULL WHEN 's' THEN 'stored: ' ELSE 'virtual: ' END
           || pg_get_expr(d.adbin, d.adrelid) AS "generated",
       CASE WHEN a.attcollation <> t.typcollation THEN
           (SELECT cn.nspname || '.' || co.collname FROM pg_collation co
            JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = a.attcollation) END AS "collation",
       col_description(c.oid, a.attnum) AS "comment"
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f')
  AND {_where("n", "c.oid", "pg_class")}""",
    "constraint": f"""SELECT n.nspname || '.' || coalesce(c.relname, t.typname) || '.' || k.conname
           AS key,
       n.nspname || '.' || c.relname AS "table",
       n.nspname || '.' || t.typname AS "domain",
       CASE k.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                      WHEN 'f' THEN 'foreign key' WHEN 'c' THEN 'check'
                      WHEN 'x' THEN 'exclusion' WHEN 't' THEN 'trigger'
                      WHEN 'n' THEN 'not null' ELSE k.contype::text END AS "type",
       pg_get_constraintdef(k.oid) AS "definition",
       k.convalidated AS "validated",
       obj_description(k.oid, 'pg_constraint') AS "comment"
FROM pg_constraint k
JOIN pg_namespace n ON n.oid = k.connamespace
LEFT JOIN pg_class c ON c.oid = k.conrelid AND k.conrelid <> 0
LEFT JOIN pg_type t ON t.oid = k.contypid AND k.contypid <> 0
WHERE (c.oid IS NOT NULL AND {_where("n", "c.oid", "pg_class")})
   OR (t.oid IS NOT NULL AND {_where("n", "t.oid", "pg_type")})""",
    "index": f"""SELECT n.nspname || '.' || ic.relname AS key,
       tn.nspname || '.' || tc.relname AS "table",
       pg_get_indexdef(i.indexrelid) AS "definition",
       i.indisvalid AS "valid",
       obj_description(ic.oid, 'pg_class') AS "comment"
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class tc ON tc.oid = i.indrelid
JOIN pg_namespace tn ON tn.oid = tc.relnamespace
WHERE {_where("n", "tc.oid", "pg_class")}""",
    "view": f"""SELECT n.nspname || '.' || c.relname AS key,
       CASE c.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END AS "kind",
       pg_get_viewdef(c.oid) AS "definition",
       c.reloptions::text[] AS "options",
       obj_description(c.oid, 'pg_class') AS "comment"
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND {_where("n", "c.oid", "pg_class")}""",
    "function": f"""SELECT n.nspname || '.' || p.proname
           || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS key,
       CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                      WHEN 'w' THEN 'window function' ELSE 'function' END AS "kind",
       CASE WHEN p.prokind = 'a' THEN
           (SELECT 'AGGREGATE RETURNS ' || pg_get_function_result(p.oid)
                   || ' SFUNC ' || g.aggtransfn::regprocedure::text
                   || ' STYPE ' || format_type(g.aggtranstype, NULL)
                   || coalesce(' FINALFUNC ' || CASE WHEN g.aggfinalfn::oid <> 0
                                 THEN g.aggfinalfn::regprocedure::text END, '')
                   || coalesce(' INITCOND ' || quote_literal(g.agginitval), '')
            FROM pg_aggregate g WHERE g.aggfnoid = p.oid)
       ELSE pg_get_functiondef(p.oid) END AS "definition",
       obj_description(p.oid, 'pg_proc') AS "comment"
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {_where("n", "p.oid", "pg_proc")}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'i')""",
    "trigger": f"""SELECT n.nspname || '.' || c.relname || '.' || g.tgname AS key,
       n.nspname || '.' || c.relname AS "table",
       pg_get_triggerdef(g.oid) AS "definition",
       CASE g.tgenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica'
                        WHEN 'A' THEN 'always' ELSE 'origin' END AS "enabled",
       obj_description(g.oid, 'pg_trigger') AS "comment"
FROM pg_trigger g
JOIN pg_class c ON c.oid = g.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT g.tgisinternal AND {_where("n", "c.oid", "pg_class")}""",
}
KINDS: tuple[str, ...] = tuple(_QUERIES)

# Properties that name the object an object belongs to: excluded with it, and not reported
# again when it is added or missing as a whole.
_PARENT_PROPERTIES = {"table": "table", "domain": "type"}

_SEARCH_PATH = sql.SQL("SELECT current_setting('search_path')")
# Every name in every definition schema-qualified, whatever the session's search_path.
_SET_SEARCH_PATH = sql.SQL("SELECT set_config('search_path', %(path)s, true)")
_READ_ONLY = sql.SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


@contextmanager
def read_only(conn: db.Connection) -> Iterator[None]:
    """A READ ONLY, REPEATABLE READ transaction: every read in it sees one instant, and the
    server refuses any write."""
    with db.transaction(conn):
        db.execute(conn, _READ_ONLY)
        yield


def snapshot(conn: db.Connection, *, exclude_tables: Collection[str] = ()) -> Catalog:
    """Every user object of the connection's database. `exclude_tables` are schema-qualified
    names (`public.schema_migrations`) left out with their columns, constraints, indexes,
    triggers and owned sequences. Runs in the caller's transaction, or a read-only one."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return _snapshot(conn, exclude_tables)
    with read_only(conn):
        return _snapshot(conn, exclude_tables)


def _snapshot(conn: db.Connection, exclude_tables: Collection[str]) -> Catalog:
    row = db.execute(conn, _SEARCH_PATH).fetchone()
    path = str(row[0]) if row else ""
    db.execute(conn, _SET_SEARCH_PATH, {"path": "pg_catalog"})
    found = {kind: _read(conn, query) for kind, query in _QUERIES.items()}
    db.execute(conn, _SET_SEARCH_PATH, {"path": path})  # the caller's, for the rest of its work
    excluded = {("table", name) for name in exclude_tables}
    return {
        kind: {
            name: properties
            for name, properties in objects.items()
            if (kind, name) not in excluded
            and not any(parent in excluded for parent in _parents(kind, name, properties))
        }
        for kind, objects in found.items()
    }


def _read(conn: db.Connection, query: str) -> dict[str, Properties]:
    cursor = db.execute(conn, sql.SQL(query))
    columns = [column.name for column in cursor.description or ()]
    objects: dict[str, Properties] = {}
    for values in cursor.fetchall():
        record = dict(zip(columns, values, strict=True))
        key = str(record.pop("key"))
        objects[key] = {name: value for name, value in record.items() if value is not None}
    return dict(sorted(objects.items()))


def _parents(kind: str, name: str, properties: Mapping[str, Value]) -> Iterator[tuple[str, str]]:
    """The objects this one belongs to, as (kind, name)."""
    if kind == "extension":
        yield "schema", str(properties.get("schema"))
    elif kind != "schema":
        yield "schema", name.split(".", 1)[0]
    for prop, parent_kind in _PARENT_PROPERTIES.items():
        parent = properties.get(prop)
        if isinstance(parent, str):
            yield parent_kind, parent
    owner = properties.get("owned_by")
    if kind == "sequence" and isinstance(owner, str):
        yield "table", owner.rsplit(".", 1)[0]


# -- differences ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One object `added` to `after`, `missing` from it, or `changed` in one property."""

    kind: str
    name: str
    what: str
    property: str | None = None
    before: Value = None
    after: Value = None

    def __str__(self) -> str:
        line = f"{self.what} {self.kind} {self.name}"
        if self.what == CHANGED:
            before, after = _excerpts(self.before, self.after)
            line += f": {self.property}: {before} -> {after}"
        return _one_line(line)

    def as_dict(self) -> dict[str, Value]:
        found: dict[str, Value] = {"kind": self.kind, "name": self.name, "what": self.what}
        if self.what == CHANGED:
            found.update(property=self.property, before=self.before, after=self.after)
        return found


def diff(before: Catalog, after: Catalog) -> list[Difference]:
    """What differs in `after` from `before`: objects added, missing, or changed property by
    property. Parts of an object that is added or missing as a whole (the columns of a table,
    the tables of a schema) are not listed again."""
    kinds = [*KINDS, *sorted((set(before) | set(after)) - set(KINDS))]
    whole: dict[tuple[str, str], str] = {}
    found: list[tuple[Difference, list[tuple[str, str]]]] = []
    for kind in kinds:
        old, new = before.get(kind, {}), after.get(kind, {})
        for name in sorted(set(old) | set(new)):
            if name in old and name in new:
                found.extend((change, []) for change in _changes(kind, name, old[name], new[name]))
                continue
            what = MISSING if name in old else ADDED
            whole[(kind, name)] = what
            parents = list(_parents(kind, name, old[name] if name in old else new[name]))
            found.append((Difference(kind, name, what), parents))
    return [
        difference
        for difference, parents in found
        if not any(whole.get(parent) == difference.what for parent in parents)
    ]


# Kept in the snapshot, not compared: PostgreSQL cannot put a re-added column back in its place,
# so every down file that restores a dropped column would fail on its position (seen on
# openmeter's migrations), while no query that names its columns can tell the difference.
NOT_COMPARED = frozenset({("column", "position")})


def _changes(kind: str, name: str, old: Properties, new: Properties) -> Iterator[Difference]:
    for prop in [*old, *(p for p in new if p not in old)]:
        if (kind, prop) in NOT_COMPARED:
            continue
        if old.get(prop) != new.get(prop):
            yield Difference(kind, name, CHANGED, prop, old.get(prop), new.get(prop))


def render_diff(differences: Sequence[Difference]) -> str:
    """One line per difference, e.g. `changed column public.users.email: default: null ->
    "''::text"`; values as JSON, long ones cut to where they differ."""
    return "".join(f"{difference}\n" for difference in differences)


def diff_as_json(differences: Sequence[Difference]) -> list[dict[str, Value]]:
    """The differences as JSON-ready objects, with whole values."""
    return [difference.as_dict() for difference in differences]


LONG = 80  # characters of a value shown whole
CONTEXT = 30  # characters shown around where two long values differ


def _excerpts(before: Value, after: Value) -> tuple[str, str]:
    if not (isinstance(before, str) and isinstance(after, str)):
        return _json(before), _json(after)
    if max(len(before), len(after)) <= LONG:
        return _json(before), _json(after)
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    end = 0
    while end < min(len(before), len(after)) - start and before[-1 - end] == after[-1 - end]:
        end += 1
    return _cut(before, start, end), _cut(after, start, end)


def _cut(text: str, start: int, end: int) -> str:
    """Where `text` starts to differ, with some context; `...` where it is cut."""
    first = max(0, start - CONTEXT)
    if first:  # from the start of a word, when one is near
        near = max(0, first - CONTEXT)
        space = max(text.rfind(" ", near, first), text.rfind("\n", near, first))
        first = space + 1 if space >= 0 else first
    last = min(len(text), len(text) - end + CONTEXT, first + CONTEXT + LONG)
    shown = json.dumps(text[first:last], ensure_ascii=False)
    return ("..." if first else "") + shown + ("..." if last < len(text) else "")


def _json(value: Value) -> str:
    return json.dumps(value, ensure_ascii=False)


# What str.splitlines() splits on, besides what json.dumps escapes already: one difference must
# stay one line whatever a name or comment holds.
_LINE_BREAKS = {ord(char): f"\\u{ord(char):04x}" for char in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_LINE_BREAKS.update({ord("\n"): "\\n", ord("\r"): "\\r"})


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


def unexpected(catalog: Catalog) -> list[str]:
    """What `catalog` holds beyond what every database made from template0 has (the public
    schema and plpgsql), as `kind name`: empty for an empty database."""
    return [
        f"{kind} {name}"
        for kind, objects in catalog.items()
        for name in objects
        if name not in _PRESENT_FROM_THE_START.get(kind, ())
    ]


_PRESENT_FROM_THE_START = {"schema": ("public",), "extension": ("plpgsql",)}
