#!/usr/bin/env python3
"""Benchmark `python entrypoint.py up` against its floor (`psql -1 -f` of the same SQL) and
dbmate, on databases it creates on a PostgreSQL server and drops again.

    python bench/bench.py                  # full run: 5 runs per figure, ~5-10 minutes
    python bench/bench.py --quick          # fewer runs, smaller workloads, ~1-2 minutes
    python bench/bench.py --json out.json  # also write every figure

Workloads (see bench/README.md): noop, many, bulk, race, and the peak memory of one `up`;
bigfile (single files of 40 and 200 MiB that `up` streams; minutes long) only when named.
Exit code 0 whatever the timings; 1 when a correctness check fails (a runner that should have
succeeded exited non-zero, or a database does not hold exactly the expected migrations);
2 on a usage or setup error; 130 on Ctrl-C. Every database it creates is dropped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENTRYPOINT = ROOT / "entrypoint.py"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "migration-runner-bench"
)
TOOL = "migration-runner"

# Environment variables that would change what the runner, psql or dbmate do.
_SCRUBBED_PREFIXES = ("DB_", "DBMATE_", "MIGRATION", "LOG_", "PG")
_SCRUBBED = {"DATABASE_URL", "DATABASE_URL_FILE", "TERMINATION_LOG", "ALLOW_OUT_OF_ORDER"}

# Started by the race in place of each runner: say "ready", block until the parent closes the
# "go" pipe, then become the runner (exec), so that all of them start at the same instant.
_BARRIER = (
    "import os, sys\n"
    "go, ready = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.write(ready, b'.')\n"
    "os.close(ready)\n"
    "os.read(go, 1)\n"
    "os.close(go)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


class BenchError(Exception):
    """Setup failed (no psql, server unreachable...): exit 2."""


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Sample:
    """One measured run of one command (or of N commands at once, for the race)."""

    seconds: float
    exit_codes: list[int]
    max_rss_kb: list[int]

    @property
    def failures(self) -> int:
        return sum(1 for code in self.exit_codes if code != 0)


_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _kill_group(proc: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
    """Signal the process group that _spawn() made for `proc` (it and its children only)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for `proc` (a blocking wait: Popen.wait(timeout) polls, adding up to 50 ms to a
    measurement); kill its group after `timeout` seconds. Its exit code."""
    timer = threading.Timer(timeout, _kill_group, (proc,))
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    _LIVE.pop(proc.pid, None)
    return code


def _spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # so that cleanup can end it and its children together
        )
    _LIVE[proc.pid] = proc
    return proc


# Peak memory. A child's ru_maxrss also counts the memory it had before exec(): the parent's
# own (a copy after fork(); the parent's very address space after the vfork() that
# subprocess uses). Measured from this interpreter, psql would "use" as much memory as this
# script. So each measured command is started by a small parent that forks it and reports
# wait4()'s rusage for it alone: GNU time (1-2 MB) when installed, else this Python wrapper
# (~9 MB: figures below that are the wrapper's, not the command's).
GNU_TIME = Path("/usr/bin/time")
_RUSAGE = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    out.write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) % 256)\n"
)


def rss_wrapper(report: Path) -> list[str]:
    if GNU_TIME.is_file() and os.access(GNU_TIME, os.X_OK):
        return [str(GNU_TIME), "-q", "-f", "%M", "-o", str(report)]
    return [sys.executable, "-S", "-c", _RUSAGE, str(report)]


def _read_rss(report: Path) -> int | None:
    try:
        lines = report.read_text(encoding="utf-8").split()
        return int(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    finally:
        report.unlink(missing_ok=True)


def measure(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path, timeout: float
) -> Sample:
    """Wall time, exit code and max RSS (KiB) of one fresh child process."""
    report = log.with_suffix(".rss")
    started = time.perf_counter()
    proc = _spawn([*rss_wrapper(report), *argv], env=env, cwd=cwd, log=log)
    code = _reap(proc, timeout)
    elapsed = time.perf_counter() - started
    rss = _read_rss(report)
    return Sample(seconds=elapsed, exit_codes=[code], max_rss_kb=[rss] if rss else [])


def measure_race(
    argv: Sequence[str], count: int, *, env: dict[str, str], cwd: Path, log: Path, timeout: float
) -> Sample:
    """Start `count` copies of `argv` at one instant (a pipe barrier); wall time from the
    release to the last exit."""
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            wrapper = [sys.executable, "-S", "-c", _BARRIER, str(go_read), str(ready_write)]
            procs.append(
                _spawn(
                    [*wrapper, *argv],
                    env=env,
                    cwd=cwd,
                    log=log,
                    pass_fds=(go_read, ready_write),
                )
            )
        os.close(ready_write)
        ready_write = -1
        waiting = count
        while waiting:
            got = os.read(ready_read, waiting)
            if not got:
                raise BenchError("a race process died before the barrier; see " + str(log))
            waiting -= len(got)
        started = time.perf_counter()
        os.close(go_write)  # every blocked os.read() returns at once
        go_write = -1
        codes = [_reap(proc, max(1.0, timeout - (time.perf_counter() - started))) for proc in procs]
        # No memory figure: these children were forked from this interpreter (see above).
        return Sample(seconds=time.perf_counter() - started, exit_codes=codes, max_rss_kb=[])
    finally:
        for fd in (go_read, go_write, ready_read, ready_write):
            if fd >= 0:
                os.close(fd)


def kill_live_children() -> None:
    """SIGTERM (the runner rolls back and exits), then SIGKILL after 3 s, to every process
    group this script started and has not reaped yet."""
    live = list(_LIVE.values())
    for proc in live:
        _kill_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 3
    for proc in live:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
        _LIVE.pop(proc.pid, None)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
    }
    # libpq may still need a password from the environment for a non-trust server.
    for key in ("PGPASSWORD", "PGPASSFILE", "PGSSLMODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def output_of(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"
    return (done.stdout or done.stderr).strip()


# ---------------------------------------------------------------------------------------------
# Databases


class Server:
    """The PostgreSQL server: creates and drops the bench_* databases, checks their contents."""

    def __init__(self, base_url: str, *, checkpoint: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self.created: list[str] = []
        self._counter = 0
        self.checkpoint_enabled = checkpoint
        try:
            self.admin = psycopg.connect(self.url("postgres"), autocommit=True)
        except psycopg.Error as error:
            raise BenchError(f"cannot connect to {self.url('postgres')}: {error}") from None

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def dbmate_url(self, database: str) -> str:
        url = self.url(database).replace("postgresql://", "postgres://", 1)
        return url + ("&" if "?" in url else "?") + "sslmode=disable"

    def create(self, label: str) -> str:
        self._counter += 1
        name = f"bench_{os.getpid()}_{self._counter}_{label}"
        self.created.append(name)
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop(self, name: str) -> None:
        self.admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> list[str]:
        failed = []
        for name in list(self.created):
            try:
                self.drop(name)
            except psycopg.Error:
                failed.append(name)
        return failed

    def checkpoint(self) -> None:
        """Flush dirty buffers before a measurement, so that no run pays for an earlier one's
        checkpoint (needs superuser or pg_checkpoint; turned off when refused)."""
        if not self.checkpoint_enabled:
            return
        try:
            self.admin.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            self.checkpoint_enabled = False

    def query(self, database: str, query: sql.SQL | sql.Composed) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            return conn.execute(query).fetchall()

    def settings(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_wal_size",
            "max_connections",
        ):
            row = self.admin.execute(
                sql.SQL("SELECT current_setting({})").format(sql.Literal(name))
            ).fetchone()
            found[name] = str(row[0]) if row else "?"
        return found

    def close(self) -> None:
        self.admin.close()


# ---------------------------------------------------------------------------------------------
# Migration sets


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class MigrationSet:
    """One set of migrations written in each tool's format."""

    migrations: list[Migration]
    runner_dir: Path  # {version}_{name}.up.sql
    dbmate_dir: Path  # {version}_{name}.sql with -- migrate:up / -- migrate:down
    psql_file: Path  # all of them, concatenated
    expected_rows: dict[str, int] = field(default_factory=dict)  # table: rows it must hold

    @property
    def count(self) -> int:
        return len(self.migrations)


def write_set(root: Path, label: str, migrations: list[Migration]) -> MigrationSet:
    runner_dir = root / label / "runner"
    dbmate_dir = root / label / "dbmate"
    runner_dir.mkdir(parents=True)
    dbmate_dir.mkdir(parents=True)
    for m in migrations:
        stem = f"{m.version:06d}_{m.name}"
        (runner_dir / f"{stem}.up.sql").write_text(m.sql, encoding="utf-8")
        (dbmate_dir / f"{stem}.sql").write_text(
            f"-- migrate:up\n{m.sql}\n-- migrate:down\n", encoding="utf-8"
        )
    psql_file = root / label / "all.sql"
    psql_file.write_text("".join(m.sql for m in migrations), encoding="utf-8")
    return MigrationSet(migrations, runner_dir, dbmate_dir, psql_file)


def small_tables(count: int, prefix: str = "t") -> list[Migration]:
    return [
        Migration(
            version,
            f"{prefix}_{version:06d}",
            f"CREATE TABLE {prefix}_{version:06d} (id int primary key, v text);\n",
        )
        for version in range(1, count + 1)
    ]


def race_tables(count: int, rows: int) -> list[Migration]:
    """Tables r_000001...; each filled with `rows` rows so that the migrations take real time."""
    migrations = []
    for version in range(1, count + 1):
        table = f"r_{version:06d}"
        text = f"CREATE TABLE {table} (id bigint primary key, v text);\n"
        if rows:
            text += (
                f"INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;\n"
            )
        migrations.append(Migration(version, table, text))
    return migrations


# Realistic text for the bigfile sets: quotes, semicolons, a `--` and a backslash inside
# strings, non-ASCII, a tab, a line break, NULLs. 7 names x 8 notes: 56 combinations.
_BIG_NAMES = (
    "O'Brien, Siobhán", "D'Angelo; Marco", "Zoë Müller-Lüdenscheidt", 'Anne "Nan" Okafor',
    "Smith & Sons; Ltd.", "李小龍", "María José García-López",
)  # fmt: skip
_BIG_NOTES = (
    "called back; left voicemail", "paid; invoice #4411 closed -- no follow-up",
    "prefers email; don't call before 10:00", "exports in C:\\data\\2024; re-sent",
    "first line;\nsecond line: 'quoted'", "50% off; code SPRING\tapplied", None,
    "ships to 12 Rue de l'Église, 75004 Paris; signed for",
)  # fmt: skip


@dataclass(frozen=True)
class BigFile:
    label: str  # "200 MiB INSERT"
    mset: MigrationSet
    largest: int  # bytes of the largest statement (COPY data is streamed, not one)


def write_bigfile(root: Path, kind: str, mib: int) -> BigFile:
    """One migration of `mib` MiB: CREATE TABLE big, then one-row INSERTs (kind INSERT) or one
    `COPY big FROM stdin` with tab-separated data lines and `\\.` (kind COPY). Written a
    thousand rows at a time; psql runs the same file."""
    runner_dir = root / f"big_{kind.lower()}_{mib}" / "runner"
    runner_dir.mkdir(parents=True)
    path = runner_dir / "000001_big.up.sql"
    head = "CREATE TABLE big (id bigint PRIMARY KEY, name text, note text);\n"
    if kind == "COPY":
        head += "COPY big (id, name, note) FROM stdin;\n"
        names: tuple[str, ...] = _BIG_NAMES
        notes = [
            r"\N" if n is None else n.replace("\\", r"\\").replace("\t", r"\t").replace("\n", r"\n")
            for n in _BIG_NOTES
        ]
        line = "{}\t{} #{}\t{}\n"
    else:
        names = tuple(n.replace("'", "''") for n in _BIG_NAMES)
        notes = ["NULL" if n is None else "'" + n.replace("'", "''") + "'" for n in _BIG_NOTES]
        line = "INSERT INTO big (id, name, note) VALUES ({}, '{} #{}', {});\n"
    largest = max(len(text.encode()) for text in head.splitlines())
    rows = 0
    with path.open("wb") as out:
        out.write(head.encode())
        while out.tell() < mib << 20:
            chunk = [
                line.format(row, names[row % 7], row % 997, notes[row % 8]).encode()
                for row in range(rows + 1, rows + 1001)
            ]
            rows += len(chunk)
            if kind == "INSERT":
                largest = max(largest, *map(len, chunk))
            out.write(b"".join(chunk))
        if kind == "COPY":
            out.write(b"\\.\n")
    mset = MigrationSet(
        [Migration(1, "big", "")], runner_dir, runner_dir, path, expected_rows={"big": rows}
    )
    return BigFile(f"{mib} MiB {kind}", mset, largest)


def bulk_table(rows: int) -> list[Migration]:
    return [
        Migration(
            1,
            "bulk",
            "CREATE TABLE bulk (id bigint primary key, v text);\n"
            f"INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;\n",
        )
    ]


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of a workload's table: one tool (or floor) measured several times."""

    tool: str
    role: str  # "floor", "target" (has a target), "info"
    samples: list[Sample] = field(default_factory=list)
    target_ratio: float | None = None  # pass when median / floor median <= this
    no_failures: bool = False  # pass only when every process of every run exited 0
    note: str = ""
    max_seconds: float | None = None  # pass when the median is under this many seconds
    rss_bound_mb: float | None = None  # pass when every run's peak RSS is under this (MiB)
    show_rss: bool = False  # print the peak RSS beside the times
    ratio: float | None = None
    min_ratio: float | None = None  # best run / the floor's best run: less sensitive to noise
    passed: bool | None = None

    def seconds(self) -> list[float]:
        return [s.seconds for s in self.samples]

    def median(self) -> float:
        return statistics.median(self.seconds()) if self.samples else float("nan")

    def failures(self) -> int:
        return sum(s.failures for s in self.samples)

    def processes(self) -> int:
        return sum(len(s.exit_codes) for s in self.samples)

    def peak_rss_mb(self) -> float | None:
        values = [kb for s in self.samples for kb in s.max_rss_kb]
        return max(values) / 1024 if values else None

    def target_text(self) -> str:
        parts = []
        if self.target_ratio is not None:
            parts.append(f"<={self.target_ratio:.2f}x")
        if self.max_seconds is not None:
            parts.append(f"<{self.max_seconds:g}s")
        if self.rss_bound_mb is not None:
            parts.append(f"RSS<{self.rss_bound_mb:.0f}M")
        if self.no_failures:
            parts.append("0 failed")
        if self.role == "floor":
            return "(floor)"
        return ", ".join(parts) if parts else "-"

    def judge(self, floor: Row | None) -> None:
        if floor is not None and floor.samples and self.samples:
            self.ratio = self.median() / floor.median()
            self.min_ratio = min(self.seconds()) / min(floor.seconds())
        if self.role != "target":
            return
        ok = True
        if self.target_ratio is not None:
            ok = self.ratio is not None and self.ratio <= self.target_ratio
        if self.max_seconds is not None:
            ok = ok and self.median() < self.max_seconds
        if self.rss_bound_mb is not None:
            peak = self.peak_rss_mb()
            ok = ok and peak is not None and peak < self.rss_bound_mb
        if self.no_failures:
            ok = ok and self.failures() == 0 and bool(self.samples)
        self.passed = ok

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tool": self.tool,
            "role": self.role,
            "runs": len(self.samples),
            "seconds": [round(s, 4) for s in self.seconds()],
            "median_s": round(self.median(), 4) if self.samples else None,
            "min_s": round(min(self.seconds()), 4) if self.samples else None,
            "max_s": round(max(self.seconds()), 4) if self.samples else None,
            "ratio_to_floor": round(self.ratio, 3) if self.ratio is not None else None,
            "min_ratio_to_floor": round(self.min_ratio, 3) if self.min_ratio is not None else None,
            "target_ratio": self.target_ratio,
            "target_no_failures": self.no_failures,
            "target_max_seconds": self.max_seconds,
            "target_rss_mb": self.rss_bound_mb,
            "passed": self.passed,
            "failed_processes": self.failures(),
            "processes": self.processes(),
            "exit_codes": [s.exit_codes for s in self.samples],
            "max_rss_kb": [max(s.max_rss_kb) if s.max_rss_kb else None for s in self.samples],
            "note": self.note,
        }
        return data


@dataclass
class Workload:
    name: str
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds_spent: float = 0.0

    def row(self, tool: str) -> Row:
        for row in self.rows:
            if row.tool == tool:
                return row
        raise KeyError(tool)

    def judge(self) -> None:
        floor = next((row for row in self.rows if row.role == "floor"), None)
        for row in self.rows:
            row.judge(floor)


@dataclass
class MemoryResult:
    rows: list[tuple[str, list[int]]]  # tool, max RSS KiB per run
    target_mb: float
    passed: bool | None = None


@dataclass
class Context:
    args: argparse.Namespace
    server: Server
    root: Path  # temp dir: migration sets, logs, cwd of the tools
    python: str
    entrypoint: Path
    psql: str
    dbmate: str | None
    correctness: list[str] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, label: str) -> Path:
        return self.logs / f"{label}.log"

    def runner_argv(self) -> list[str]:
        return [self.python, str(self.entrypoint), "up"]

    def runner_env(self, database: str, migrations: Path, **extra: str) -> dict[str, str]:
        values = {
            "DATABASE_URL": self.server.url(database),
            "MIGRATIONS_DIR": str(migrations),
            "LOG_LEVEL": self.args.log_level,
        }
        values.update(extra)
        return clean_env(**values)

    def psql_argv(self, database: str, file: Path) -> list[str]:
        return [
            self.psql,
            "-X",
            "-q",
            "-1",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(file),
            self.server.url(database),
        ]

    def dbmate_argv(self, database: str, migrations: Path) -> list[str]:
        assert self.dbmate is not None
        return [
            self.dbmate,
            "--url",
            self.server.dbmate_url(database),
            "--migrations-dir",
            str(migrations),
            "--no-dump-schema",
            "up",
        ]

    def run(self, argv: Sequence[str], env: dict[str, str], label: str) -> Sample:
        return measure(argv, env=env, cwd=self.root, log=self.log(label), timeout=self.args.timeout)

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.correctness.append(message)
            progress(f"  CORRECTNESS: {message}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rotated(items: list[str], shift: int) -> list[str]:
    """Each run measures the tools in another order, so that no tool always goes first."""
    shift %= len(items)
    return items[shift:] + items[:shift]


# ---------------------------------------------------------------------------------------------
# Checks of the database after a run


def tables_named(ctx: Context, database: str, prefix: str) -> int:
    rows = ctx.server.query(
        database,
        sql.SQL(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public' AND c.relname LIKE {}"
        ).format(sql.Literal(prefix.replace("_", r"\_") + "%")),
    )
    return int(rows[0][0])


def runner_versions(ctx: Context, database: str) -> tuple[int, int]:
    """(rows, distinct applied versions) of the runner's tracking table."""
    rows = ctx.server.query(
        database,
        sql.SQL(
            "SELECT count(*), count(DISTINCT version) FILTER (WHERE status = 'applied') "
            "FROM schema_migrations"
        ),
    )
    return int(rows[0][0]), int(rows[0][1])


def dbmate_versions(ctx: Context, database: str) -> int:
    try:
        rows = ctx.server.query(database, sql.SQL("SELECT count(*) FROM schema_migrations"))
    except psycopg.Error:
        return -1
    return int(rows[0][0])


def check_result(
    ctx: Context,
    tool: str,
    database: str,
    mset: MigrationSet,
    prefix: str,
    sample: Sample,
    *,
    strict: bool,
    log: Path | None = None,
) -> str:
    """Verify the database holds every migration exactly once. A failure of this project or of
    the psql floor is a correctness error (exit 1); dbmate's is only noted."""
    want = mset.count
    problems = []
    if sample.failures:
        codes = sorted({code for code in sample.exit_codes if code})
        problems.append(
            f"{sample.failures}/{len(sample.exit_codes)} process(es) exited non-zero "
            f"(exit codes {', '.join(map(str, codes))})"
        )
        if strict and log is not None:
            problems.append(f"first errors in {log.name}: {failure_excerpt(log)}")
    tables = tables_named(ctx, database, prefix)
    if tables != want:
        problems.append(f"{tables} {prefix}* tables instead of {want}")
    for table, rows in mset.expected_rows.items() if tables == want else ():
        count = ctx.server.query(
            database, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        )[0][0]
        if count != rows:
            problems.append(f"{count:,} rows in {table} instead of {rows:,}")
    if tool.startswith(TOOL):
        recorded, distinct = runner_versions(ctx, database)
        if (recorded, distinct) != (want, want):
            problems.append(f"{recorded} tracking rows ({distinct} applied) instead of {want}")
    elif tool.startswith("dbmate"):
        recorded = dbmate_versions(ctx, database)
        if recorded != want:
            problems.append(f"{recorded} dbmate schema_migrations rows instead of {want}")
    text = "; ".join(problems)
    if text and strict:
        ctx.expect(False, f"{tool} on {database}: {text} (logs in {ctx.logs})")
    return text


# ---------------------------------------------------------------------------------------------
# Workloads


def failure_excerpt(log: Path, limit: int = 2) -> str:
    """The first error lines of a log (the runner's JSON ERROR lines, or any non-JSON text
    such as a traceback), so that a failure can be understood without --keep-logs."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"log.level": "ERROR"' in line or (line.strip() and not line.startswith("{")):
                found.append(line.strip()[:400])
                if len(found) >= limit:
                    break
    return " | ".join(found) or "(none)"


def bench_noop(ctx: Context, runs: int, count: int) -> Workload:
    mset = write_set(ctx.root / "sets", "noop", small_tables(count))
    floor = "python -c 'import psycopg; connect'"
    work = Workload(
        "noop",
        f"noop: `up` with all {count} migrations already applied (every init container's cost)",
        [
            Row("python -c 'import psycopg'", "info"),
            Row(floor, "floor"),
            Row(TOOL, "target", target_ratio=ctx.args.target_noop, no_failures=True),
        ],
    )
    if ctx.dbmate:
        work.rows.append(Row("dbmate", "info", no_failures=True))
    runner_db = ctx.server.create("noop_runner")
    prepared = ctx.run(ctx.runner_argv(), ctx.runner_env(runner_db, mset.runner_dir), "noop_prep")
    check_result(ctx, TOOL, runner_db, mset, "t_", prepared, strict=True, log=ctx.log("noop_prep"))
    dbmate_db = ""
    if ctx.dbmate:
        dbmate_db = ctx.server.create("noop_dbmate")
        done = ctx.run(ctx.dbmate_argv(dbmate_db, mset.dbmate_dir), clean_env(), "noop_dbmate_prep")
        if check_result(ctx, "dbmate", dbmate_db, mset, "t_", done, strict=False):
            work.notes.append("dbmate could not prepare its database; its row is meaningless")
    url = ctx.server.url(runner_db)
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c 'import psycopg'": ([ctx.python, "-c", "import psycopg"], clean_env()),
        floor: (
            [ctx.python, "-c", f"import psycopg; psycopg.connect({url!r}).close()"],
            clean_env(),
        ),
        TOOL: (ctx.runner_argv(), ctx.runner_env(runner_db, mset.runner_dir)),
    }
    if ctx.dbmate:
        commands["dbmate"] = (ctx.dbmate_argv(dbmate_db, mset.dbmate_dir), clean_env())
    for run in range(runs):
        for tool in rotated(list(commands), run):
            argv, env = commands[tool]
            sample = ctx.run(argv, env, f"noop_{tool.split()[0]}")
            work.row(tool).samples.append(sample)
            if tool == TOOL:
                ctx.expect(sample.failures == 0, f"noop: {TOOL} exited {sample.exit_codes}")
            elif tool != "dbmate":
                ctx.expect(sample.failures == 0, f"noop: floor `{tool}` failed")
        progress(
            f"  noop run {run + 1}/{runs}: "
            + ", ".join(f"{row.tool} {row.samples[-1].seconds:.3f}s" for row in work.rows)
        )
    check_result(ctx, TOOL, runner_db, mset, "t_", Sample(0, [0], [0]), strict=True)
    ctx.server.drop(runner_db)
    if dbmate_db:
        ctx.server.drop(dbmate_db)
    return work


def _tools(ctx: Context, *, warning_row: bool, dbmate: bool) -> list[str]:
    tools = ["psql", TOOL]
    if warning_row:
        tools.append(f"{TOOL} LOG_LEVEL=WARNING")
    if ctx.dbmate and dbmate:
        tools.append("dbmate")
    return tools


def bench_apply(
    ctx: Context,
    name: str,
    title: str,
    mset: MigrationSet,
    prefix: str,
    runs: int,
    target: float | None,
    *,
    warning_row: bool,
    dbmate: bool = True,
    keep: list[str] | None = None,
) -> Workload:
    """Apply `mset` onto fresh databases with each tool, `runs` times, in rotating order.
    With `keep`, the last run's runner database is kept (its name appended) for the caller to
    use and drop."""
    tools = _tools(ctx, warning_row=warning_row, dbmate=dbmate)
    work = Workload(name, title, [])
    for tool in tools:
        if tool == "psql":
            work.rows.append(Row("psql -1 -f", "floor", note="one transaction, one commit"))
        elif tool == TOOL:
            work.rows.append(
                Row(TOOL, "target", target_ratio=target, no_failures=True, note="LOG_LEVEL=INFO")
            )
        else:
            work.rows.append(Row(tool, "info"))
    row_of = {tool: work.rows[i] for i, tool in enumerate(tools)}
    for run in range(runs):
        databases = {tool: ctx.server.create(f"{name}_{i}") for i, tool in enumerate(tools)}
        try:
            for tool in rotated(tools, run):
                database = databases[tool]
                if tool == "psql":
                    argv, env = ctx.psql_argv(database, mset.psql_file), clean_env()
                elif tool == "dbmate":
                    argv, env = ctx.dbmate_argv(database, mset.dbmate_dir), clean_env()
                else:
                    level = "WARNING" if "WARNING" in tool else ctx.args.log_level
                    argv = ctx.runner_argv()
                    env = ctx.runner_env(database, mset.runner_dir, LOG_LEVEL=level)
                ctx.server.checkpoint()
                sample = ctx.run(argv, env, f"{name}_{tool.split()[0]}")
                row_of[tool].samples.append(sample)
                problem = check_result(
                    ctx,
                    tool,
                    database,
                    mset,
                    prefix,
                    sample,
                    strict=tool != "dbmate",
                    log=ctx.log(f"{name}_{tool.split()[0]}"),
                )
                if problem and tool == "dbmate":
                    row_of[tool].note = f"failed: {problem}"
        finally:
            for tool, database in databases.items():
                if keep is not None and tool == TOOL and run == runs - 1:
                    keep.append(database)
                else:
                    ctx.server.drop(database)
        progress(
            f"  {name} run {run + 1}/{runs}: "
            + ", ".join(f"{tool} {row_of[tool].samples[-1].seconds:.3f}s" for tool in tools)
        )
    return work


def error_summary(log: Path) -> str:
    """The distinct `Error:` lines of a dbmate log, table names folded, with counts."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Error:"):
                text = re.sub(r"r_\d+", "r_N", line.removeprefix("Error:").strip())
                counts[text] = counts.get(text, 0) + 1
    return ", ".join(f"{n}x {text}" for text, n in sorted(counts.items(), key=lambda i: -i[1]))


def bench_race(
    ctx: Context, runs: int, count: int, rows: int, crowds: list[int]
) -> tuple[Workload, list[str]]:
    mset = write_set(ctx.root / "sets", "race", race_tables(count, rows))
    what = f"{count} migrations" + (f" of {rows:,} rows each" if rows else " (empty tables)")
    work = Workload(
        "race",
        f"race: N runners released at one instant onto an empty database, {what}; wall time "
        "from the release to the last exit",
        [Row("psql -1 -f", "floor", note="one process"), Row(f"{TOOL} x1", "info")],
    )
    tools = ["psql", f"{TOOL} x1"]
    for crowd in crowds:
        target = ctx.args.target_race if crowd == min(crowds) else None
        work.rows.append(Row(f"{TOOL} x{crowd}", "target", target_ratio=target, no_failures=True))
        tools.append(f"{TOOL} x{crowd}")
    if ctx.dbmate:
        for crowd in crowds:
            work.rows.append(Row(f"dbmate x{crowd}", "info"))
            tools.append(f"dbmate x{crowd}")
    dbmate_notes: list[str] = []
    for run in range(runs):
        for tool in rotated(tools, run):
            database = ctx.server.create("race")
            try:
                ctx.server.checkpoint()
                label = f"race_{tool.replace(' ', '_')}_run{run + 1}"
                log = ctx.log(label)
                if tool == "psql":
                    sample = ctx.run(ctx.psql_argv(database, mset.psql_file), clean_env(), label)
                else:
                    crowd = int(tool.rsplit("x", 1)[1])
                    if tool.startswith("dbmate"):
                        argv, env = ctx.dbmate_argv(database, mset.dbmate_dir), clean_env()
                    else:
                        argv = ctx.runner_argv()
                        env = ctx.runner_env(
                            database, mset.runner_dir, MIGRATION_LOCK_TIMEOUT="120"
                        )
                    sample = measure_race(
                        argv, crowd, env=env, cwd=ctx.root, log=log, timeout=ctx.args.timeout
                    )
                work.row("psql -1 -f" if tool == "psql" else tool).samples.append(sample)
                problem = check_result(
                    ctx,
                    tool,
                    database,
                    mset,
                    "r_",
                    sample,
                    strict=not tool.startswith("dbmate"),
                    log=log,
                )
                if problem and tool.startswith("dbmate"):
                    state = "" if "instead of" in problem else "; final state correct"
                    dbmate_notes.append(
                        f"run {run + 1} {tool}: {problem}{state}; {error_summary(log)}"
                    )
            finally:
                ctx.server.drop(database)
        progress(
            f"  race run {run + 1}/{runs}: "
            + ", ".join(
                f"{row.tool} {row.samples[-1].seconds:.3f}s"
                + (f" ({row.samples[-1].failures} failed)" if row.samples[-1].failures else "")
                for row in work.rows
            )
        )
    for row in work.rows:
        if row.tool.startswith("dbmate"):
            row.note = f"{row.failures()}/{row.processes()} processes failed"
    return work, dbmate_notes


def bench_memory(ctx: Context, many: Workload) -> MemoryResult:
    """Max RSS of each `up` of the `many` workload: each run was its own child process, waited
    for with os.wait4(), whose rusage is that child's alone."""
    rows = []
    for row in many.rows:
        if row.samples:
            values = [max(s.max_rss_kb) for s in row.samples if s.max_rss_kb]
            if values:
                rows.append((row.tool, values))
    result = MemoryResult(rows=rows, target_mb=ctx.args.target_memory_mb)
    for tool, values in rows:
        if tool == TOOL:
            result.passed = max(values) / 1024 < result.target_mb
    return result


def bench_bigfile(ctx: Context, runs: int) -> list[Workload]:
    """One file of each size and kind (INSERTs, COPY data), written here one set at a time:
    `up` against `psql -1 -f` on fresh databases, the runner's peak RSS against its bound; then
    on the largest sets `status` (the database the last `up` left) and `validate --offline`.
    Each set's files and databases are removed as soon as it is measured, also on failure."""
    args, largest = ctx.args, max(ctx.args.bigfile_mib)
    places = {ctx.root}
    with contextlib.suppress(psycopg.Error):  # the server's disk, when it is local and readable
        found = ctx.server.admin.execute("SHOW data_directory").fetchone()
        if found and Path(found[0]).is_dir():
            places.add(Path(found[0]))
    for place in places:  # the file, two databases of ~2.5x it and their WAL, with room
        if shutil.disk_usage(place).free < 10 * largest << 20:
            raise BenchError(f"bigfile needs about {10 * largest} MiB free in {place}")
    works: list[Workload] = []
    tools = Workload(
        "bigfile_tools",
        f"bigfile: `status` (against the applied database) and `validate --offline` (no "
        f"database) on the {largest} MiB sets",
        [],
    )
    for mib in args.bigfile_mib:
        set_runs = runs if mib < 100 else min(runs, 3)
        for kind in ("INSERT", "COPY"):
            kept: list[str] = []
            directory = ctx.root / "sets" / f"big_{kind.lower()}_{mib}"
            try:
                progress(f"  writing {mib} MiB of {kind} ...")
                big = write_bigfile(ctx.root / "sets", kind, mib)
                started = time.perf_counter()
                rows = big.mset.expected_rows["big"]
                what = "one-row INSERTs" if kind == "INSERT" else "lines of COPY FROM stdin data"
                work = bench_apply(
                    ctx,
                    f"big_{kind.lower()}_{mib}",
                    f"bigfile {big.label}: one migration of {rows:,} {what} onto an empty database",
                    big.mset,
                    "big",
                    set_runs,
                    None,
                    warning_row=False,
                    dbmate=False,
                    keep=kept,
                )
                bound = args.bigfile_rss_mb + 2 * big.largest / 2**20
                work.row(TOOL).rss_bound_mb = bound
                for row in work.rows:
                    row.show_rss = True
                work.notes.append(
                    f"memory bound: {args.bigfile_rss_mb:g} MiB + 2 x the largest statement "
                    f"({big.largest} bytes; COPY data is streamed) = {bound:.2f} MiB; "
                    f"{set_runs} run(s)"
                )
                work.seconds_spent = time.perf_counter() - started
                works.append(work)
                if mib == largest and kept:
                    started = time.perf_counter()
                    bench_tools(ctx, tools, big, kept[0], runs)
                    tools.seconds_spent += time.perf_counter() - started
            finally:
                for database in kept:
                    ctx.server.drop(database)
                shutil.rmtree(directory, ignore_errors=True)
    return [*works, tools] if tools.rows else works


def bench_tools(ctx: Context, work: Workload, big: BigFile, database: str, runs: int) -> None:
    """`status` and `validate --offline` on a big set, each against the absolute target."""
    directory = big.mset.runner_dir
    commands = {
        f"status ({big.label})": (
            [ctx.python, str(ctx.entrypoint), "status"],
            ctx.runner_env(database, directory),
        ),
        f"validate --offline ({big.label})": (
            [ctx.python, str(ctx.entrypoint), "validate", "--offline"],
            clean_env(MIGRATIONS_DIR=str(directory), LOG_LEVEL=ctx.args.log_level),
        ),
    }
    for tool, (argv, env) in commands.items():
        row = Row(tool, "target", max_seconds=ctx.args.target_bigfile_tools, no_failures=True)
        row.show_rss = True
        label = f"big_{tool.split()[0]}"
        for _ in range(runs):
            row.samples.append(sample := ctx.run(argv, env, label))
            ctx.expect(
                sample.failures == 0,
                f"bigfile: `{tool}` exited {sample.exit_codes}: {failure_excerpt(ctx.log(label))}",
            )
        progress(f"  {tool}: " + ", ".join(f"{t:.3f}s" for t in row.seconds()))
        work.rows.append(row)


# ---------------------------------------------------------------------------------------------
# Report


def machine_info(ctx: Context) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    probe = (
        "import sys, psycopg; print(sys.version.split()[0], psycopg.__version__, "
        "psycopg.pq.__impl__, psycopg.pq.version())"
    )
    runner_python = output_of([ctx.python, "-c", probe], clean_env()).split()
    commit = output_of(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    settings = ctx.server.settings()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "postgresql": settings.pop("server_version"),
        "postgresql_settings": settings,
        "python": runner_python[0] if runner_python else "?",
        "python_executable": ctx.python,
        "psycopg": " ".join(runner_python[1:]) if len(runner_python) > 1 else "?",
        "psql": output_of([ctx.psql, "--version"]),
        "dbmate": output_of([ctx.dbmate, "--version"]) if ctx.dbmate else None,
        "migration_runner_commit": commit,
        "loadavg_at_start": os.getloadavg()[0],
    }


def render(
    machine: dict[str, Any],
    workloads: list[Workload],
    memory: MemoryResult | None,
    ctx: Context,
    elapsed: float,
) -> str:
    lines = ["migration-runner benchmark", ""]
    pg = machine["postgresql_settings"]
    lines += [
        f"date        {machine['date']}",
        f"machine     {machine['cpu']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable), {machine['memory_gb']} GiB, "
        f"Linux {machine['kernel']}, load average {machine['loadavg_at_start']:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (other work on the machine skews every figure)",
        f"postgresql  {machine['postgresql']} (fsync={pg['fsync']}, synchronous_commit="
        f"{pg['synchronous_commit']}, wal_sync_method={pg['wal_sync_method']}, "
        f"shared_buffers={pg['shared_buffers']})",
        f"python      {machine['python']} ({machine['python_executable']}), "
        f"psycopg {machine['psycopg']}",
        f"psql        {machine['psql']}",
        f"dbmate      {machine['dbmate'] or 'not available: ' + ctx.args.dbmate_note}",
        f"runner      {ctx.entrypoint} at {machine['migration_runner_commit']}, "
        f"LOG_LEVEL={ctx.args.log_level}",
        f"runs        {ctx.args.runs} per figure{' (--quick)' if ctx.args.quick else ''}; "
        "seconds are wall time; ratio = median / floor median (same invocation), judged "
        "against the target; (min) = best / floor's best, for a noisy machine",
        "",
    ]
    header = (
        f"{'tool':<38} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7} {'(min)':>7}  "
        f"{'target':<17} result"
    )
    for work in workloads:
        lines += [f"== {work.title} ({work.seconds_spent:.0f}s to measure)", header]
        for row in work.rows:
            if not row.samples:
                lines.append(f"{row.tool:<38} {'(not run)':>8}")
                continue
            seconds = row.seconds()
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
            min_ratio = f"{row.min_ratio:.2f}x" if row.min_ratio is not None else "-"
            result = {True: "PASS", False: "FAIL", None: ""}[row.passed]
            extra = [row.note] if row.note else []
            if row.show_rss and row.peak_rss_mb() is not None:
                extra.insert(0, f"peak RSS {row.peak_rss_mb():.1f} MiB")
            if row.failures() and not row.note.endswith("failed"):
                extra.insert(0, f"{row.failures()}/{row.processes()} processes failed")
            lines.append(
                f"{row.tool:<38} {row.median():>7.3f}s {min(seconds):>7.3f}s "
                f"{max(seconds):>7.3f}s {ratio:>7} {min_ratio:>7}  {row.target_text():<17} {result}"
                + (f"  [{'; '.join(extra)}]" if extra else "")
            )
        lines += [f"   note: {note}" for note in work.notes]
        lines.append("")
    if memory is not None:
        lines += [
            "== memory: peak RSS (max RSS of the process alone, measured by "
            + ("GNU time" if GNU_TIME.is_file() else "a fork-and-wait4 wrapper")
            + ") of each run of the `many` workload",
            f"{'tool':<38} {'median':>8} {'min':>8} {'max':>8}  {'target':<17} result",
        ]
        for tool, values in memory.rows:
            mb = [v / 1024 for v in values]
            target = f"<{memory.target_mb:g} MB" if tool == TOOL else "-"
            result = {True: "PASS", False: "FAIL", None: ""}[memory.passed] if tool == TOOL else ""
            lines.append(
                f"{tool:<38} {statistics.median(mb):>6.1f}MB {min(mb):>6.1f}MB "
                f"{max(mb):>6.1f}MB  {target:<17} {result}"
            )
        lines.append("")
    if ctx.correctness:
        lines.append("CORRECTNESS FAILURES (exit 1):")
        lines += [f"  - {problem}" for problem in ctx.correctness]
    else:
        lines.append(
            "correctness: every run of migration-runner and psql exited 0 and left "
            "exactly the expected migrations"
        )
    lines.append(f"total time {elapsed:.0f}s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Setup


def find_dbmate(args: argparse.Namespace) -> str | None:
    """--dbmate, else `dbmate` on PATH, else the binary of the npm package in the cache dir,
    installed there with `npm install --prefix` when npm is available."""
    if args.no_dbmate:
        args.dbmate_note = "--no-dbmate"
        return None
    if args.dbmate:
        return str(args.dbmate)
    on_path = shutil.which("dbmate")
    if on_path:
        return on_path
    cache: Path = args.cache_dir

    def cached() -> str | None:
        # The platform package's binary itself, not the node wrapper in node_modules/.bin.
        for candidate in sorted(glob.glob(str(cache / "node_modules/@dbmate/*/bin/dbmate"))):
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    found = cached()
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        args.dbmate_note = "npm not found; pass --dbmate PATH"
        return None
    progress(f"installing dbmate with npm into {cache} ...")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "dbmate"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        args.dbmate_note = f"npm install dbmate failed: {error}"
        return None
    found = cached()
    if found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        args.dbmate_note = f"npm install dbmate gave no binary: {tail[0]}"
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark migration-runner's `up` against psql -1 -f and dbmate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller workloads")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    parser.add_argument(
        "--workloads",
        default="noop,many,bulk,race",
        help="comma-separated subset of noop,many,bulk,race,bigfile (memory comes with many; "
        "bigfile, minutes long, runs only when named)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for the runner")
    parser.add_argument("--entrypoint", type=Path, default=DEFAULT_ENTRYPOINT)
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help="libpq URL of the server, without a database"
    )
    parser.add_argument("--psql", default=shutil.which("psql"), help="psql binary")
    parser.add_argument("--dbmate", type=Path, help="dbmate binary (else PATH, else npm)")
    parser.add_argument("--no-dbmate", action="store_true", help="skip dbmate")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="npm dbmate here")
    parser.add_argument("--log-level", default="INFO", help="the runner's LOG_LEVEL")
    parser.add_argument("--noop-migrations", type=int, default=50)
    parser.add_argument("--many", type=int, help="migrations in `many` (1000; 200 with --quick)")
    parser.add_argument(
        "--bulk-rows", type=int, help="rows in `bulk` (2,000,000; 200,000 with --quick)"
    )
    parser.add_argument("--race-migrations", type=int, default=20)
    parser.add_argument(
        "--race-rows",
        type=int,
        help="rows each race migration inserts (20,000; 2,000 with --quick); 0: empty tables",
    )
    parser.add_argument("--race-runners", default="8,64", help="comma-separated crowd sizes")
    parser.add_argument(
        "--bigfile-mib",
        help="comma-separated file sizes (MiB) of bigfile (40,200; 4,20 with --quick); sets of "
        "100 MiB and more get min(--runs, 3) runs",
    )
    parser.add_argument("--target-noop", type=float, default=1.3)
    parser.add_argument("--target-many", type=float, default=1.2)
    parser.add_argument("--target-bulk", type=float, default=1.05)
    parser.add_argument("--target-race", type=float, default=2.0, help="for the smallest crowd")
    parser.add_argument("--target-memory-mb", type=float, default=45.0)
    parser.add_argument(
        "--bigfile-rss-mb",
        type=float,
        default=80.0,
        help="bigfile: peak RSS bound is this + 2x the largest statement (MiB)",
    )
    parser.add_argument(
        "--target-bigfile-tools",
        type=float,
        default=3.0,
        help="bigfile: seconds for status and validate --offline on the largest sets",
    )
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="do not CHECKPOINT before each measurement"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir and logs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (2 if quick else 5)
    args.many = args.many if args.many is not None else (200 if quick else 1000)
    args.bulk_rows = (
        args.bulk_rows if args.bulk_rows is not None else (200_000 if quick else 2_000_000)
    )
    args.race_rows = args.race_rows if args.race_rows is not None else (2_000 if quick else 20_000)
    sizes = args.bigfile_mib or ("4,20" if quick else "40,200")
    args.bigfile_mib = [int(n) for n in sizes.split(",") if n.strip()]
    args.dbmate_note = ""
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(chosen) - {"noop", "many", "bulk", "race", "bigfile"}
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    args.workloads = chosen
    args.race_runners = sorted({int(n) for n in args.race_runners.split(",") if n.strip()})
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.bigfile_mib or min(args.bigfile_mib) < 2:
        parser.error("--bigfile-mib: sizes of 2 MiB or more (smaller files are not streamed)")
    if not args.psql:
        parser.error("psql not found: install postgresql-client or pass --psql")
    return args


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does: through the cleanup below."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_workloads(ctx: Context) -> tuple[list[Workload], MemoryResult | None]:
    args, runs, sets = ctx.args, ctx.args.runs, ctx.root / "sets"
    workloads: list[Workload] = []
    memory: MemoryResult | None = None
    for name in args.workloads:
        progress(f"{name} ...")
        started = time.perf_counter()
        if name == "bigfile":  # one table per set (seconds_spent set in there)
            for work in bench_bigfile(ctx, runs):
                work.judge()
                workloads.append(work)
            continue
        if name == "noop":
            work = bench_noop(ctx, runs, args.noop_migrations)
        elif name == "many":
            title = (
                f"many: {args.many} small migrations (CREATE TABLE, one file each) onto an "
                "empty database"
            )
            mset = write_set(sets, "many", small_tables(args.many))
            work = bench_apply(
                ctx, "many", title, mset, "t_", runs, args.target_many, warning_row=True
            )
        elif name == "bulk":
            title = (
                f"bulk: one migration inserting {args.bulk_rows:,} rows (generate_series, md5, "
                "primary key)"
            )
            mset = write_set(sets, "bulk", bulk_table(args.bulk_rows))
            work = bench_apply(
                ctx, "bulk", title, mset, "bulk", runs, args.target_bulk, warning_row=False
            )
        else:
            work, notes = bench_race(
                ctx, runs, args.race_migrations, args.race_rows, args.race_runners
            )
            work.notes += notes
        work.seconds_spent = time.perf_counter() - started
        work.judge()
        workloads.append(work)
        if name == "many":
            memory = bench_memory(ctx, work)
    return workloads, memory


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    server: Server | None = None
    root = Path(tempfile.mkdtemp(prefix="migration-runner-bench-"))
    workloads: list[Workload] = []
    memory: MemoryResult | None = None
    ctx: Context | None = None
    try:
        with interrupts_as_keyboard_interrupt():
            server = Server(args.server, checkpoint=not args.no_checkpoint)
            dbmate = find_dbmate(args)
            ctx = Context(
                args=args,
                server=server,
                root=root,
                python=args.python,
                entrypoint=args.entrypoint.resolve(),
                psql=args.psql,
                dbmate=dbmate,
            )
            ctx.logs.mkdir()
            machine = machine_info(ctx)
            progress(f"logs and migration files in {root}")
            # Warm-up: compile the runner's bytecode, load the binaries into the page cache.
            ctx.run([ctx.python, str(ctx.entrypoint), "--version"], clean_env(), "warmup")
            workloads, memory = run_workloads(ctx)
            elapsed = time.perf_counter() - started
            report = render(machine, workloads, memory, ctx, elapsed)
            print(report, flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                document = {
                    "machine": machine,
                    "settings": {
                        key: str(value) if isinstance(value, Path) else value
                        for key, value in vars(args).items()
                    },
                    "workloads": {
                        w.name: {
                            "title": w.title,
                            "seconds_spent": round(w.seconds_spent, 1),
                            "rows": [row.to_json() for row in w.rows],
                            "notes": w.notes,
                        }
                        for w in workloads
                    },
                    "memory": asdict(memory) if memory else None,
                    "correctness_failures": ctx.correctness,
                    "total_seconds": round(elapsed, 1),
                }
                args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
                progress(f"wrote {args.json}")
            return 1 if ctx.correctness else 0
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    except BenchError as error:
        progress(f"error: {error}")
        return 2
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not stop us
        try:
            kill_live_children()
            if server is not None:
                left = server.drop_all()
                if left:
                    progress(f"could not drop: {', '.join(left)}")
                server.close()
            if args.keep_logs or (ctx is not None and ctx.correctness):
                progress(f"kept {root} (logs of every run)")
            else:
                shutil.rmtree(root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
