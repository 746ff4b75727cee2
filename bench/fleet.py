"""Benchmark: `up` on a fleet. Standalone (psycopg, PyYAML and the standard library only).

Schema targets (default 500, in one database) and database targets (default 200 databases on
the server), 5 migrations each, migrated by one runner process at each FLEET_CONCURRENCY
(default 1, 4 and 16), then run again with nothing to do. Reports the wall time, the runner's
peak RSS (GNU time's, /usr/bin/time, when installed), and where the time goes, read from the
runner's own JSON log: its start-up, the fleet's setup before the first target starts, and
inside the targets the connecting, the migrations' own time on the server, the waits for locks
and the rest (the runner's Python). With --profile, one more run under cProfile (in every
thread) sums its time by where it was spent.

    python bench/fleet.py                           # about 5-10 minutes
    python bench/fleet.py --schemas 100 --databases 20 --concurrency 4   # about 30 s

It creates `bench_fleet_*` databases on --server and drops them at the end (--keep keeps them).
Each concurrency level migrates its own schemas and, in the shared databases, its own tables and
tracking table, so every level does the same work from scratch. Exit code: 0, or 1 when a run
fails or leaves other than every target migrated, or the no-op re-run of the schema targets
takes 10 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "entrypoint.py"
NOOP_LIMIT = 10.0  # seconds for the no-op re-run of the schema targets
GNU_TIME = Path("/usr/bin/time")
OWN_WORK = "runner's own work"

# The same migrations for the database targets, where there is no ${schema}: public.
SCHEMA_MIGRATIONS = {
    "1_orders.up.sql": "CREATE TABLE ${schema}.orders${level} (\n"
    "    id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12, 2) NOT NULL,\n"
    "    created_at timestamptz NOT NULL DEFAULT now()\n);\n",
    "2_items.up.sql": "CREATE TABLE ${schema}.items${level} (\n"
    "    order_id bigint NOT NULL REFERENCES ${schema}.orders${level}, sku text NOT NULL,\n"
    "    quantity int NOT NULL CHECK (quantity > 0)\n);\n",
    "3_index.up.sql": "CREATE INDEX items${level}_sku ON ${schema}.items${level} (sku);\n",
    "4_column.up.sql": "ALTER TABLE ${schema}.orders${level} ADD COLUMN status text "
    "NOT NULL DEFAULT 'open';\n",
    "5_seed.up.sql": "INSERT INTO ${schema}.orders${level} (id, customer, total)\n"
    "SELECT g, 'customer ' || g, g * 1.5 FROM generate_series(1, 20) g;\n",
}


@dataclass
class Measured:
    kind: str
    concurrency: int
    targets: int
    seconds: float
    rss_mib: float
    code: int
    attempt: str  # first, or no-op
    events: list[dict[str, Any]] = field(repr=False)

    def breakdown(self) -> dict[str, float]:
        """Seconds, summed over the targets (so up to `concurrency` times the wall time),
        except startup and setup, which are wall time before any target runs."""
        stamps = [_stamp(e) for e in self.events]
        first = min(stamps) if stamps else 0.0
        started = [_stamp(e) for e in self.events if e.get("target")]
        sums: dict[str, float] = defaultdict(float)
        for entry in self.events:
            if not entry.get("target"):
                continue
            name = entry["event"]
            if name == "target.finished":
                sums["in targets"] += entry["duration_ms"] / 1000
            elif name == "db.connected":
                sums["connecting"] += entry["duration_ms"] / 1000
            elif name == "migration.applied":
                sums["migrations (server)"] += entry["duration_ms"] / 1000
            elif name in ("lock.acquired", "lock.unneeded"):
                sums["lock waits"] += entry["waited_ms"] / 1000
        sums[OWN_WORK] = max(
            sums["in targets"]
            - sum(sums[k] for k in ("connecting", "migrations (server)", "lock waits")),
            0.0,
        )
        sums["setup before the first target"] = (min(started) - first) if started else 0.0
        return dict(sums)


def _stamp(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["@timestamp"]).timestamp()


MIGRATIONS = {name: text.replace("${schema}.", "") for name, text in SCHEMA_MIGRATIONS.items()}

# Runs the runner with cProfile in every thread (python -m cProfile sees the main thread only,
# which a fleet spends waiting for its pool), and writes the merged statistics to argv[1].
_PROFILED = """
import cProfile, pstats, runpy, sys, threading
profiles = [cProfile.Profile()]
run = threading.Thread.run
def profiled(self):
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.runcall(run, self)
threading.Thread.run = profiled
out, sys.argv = sys.argv[1], sys.argv[2:]
try:
    profiles[0].runcall(runpy.run_path, sys.argv[0], run_name="__main__")
finally:
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(out)
"""


def url_of(server: str, database: str) -> str:
    params = conninfo_to_dict(server)
    params["dbname"] = database
    return make_conninfo("", **params)


def admin(server: str, statement: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(statement.encode())


def run_runner(
    env: dict[str, str], log: Path, *, profile: Path | None = None
) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of one `up`, its log in `log`. The peak is
    GNU time's: a child's own rusage also counts what it held between fork and exec, a copy of
    this process, which grows as it keeps the logs."""
    command = [sys.executable]
    if profile is not None:
        command += ["-c", _PROFILED, str(profile)]
    command += [str(ENTRYPOINT), "up"]
    peak = log.with_suffix(".rss")
    if GNU_TIME.exists():
        command = [str(GNU_TIME), "-f", "%M", "-o", str(peak), *command]
    with log.open("w") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
    kib = int(peak.read_text().split()[-1]) if GNU_TIME.exists() else usage.ru_maxrss
    return seconds, kib / 1024, os.waitstatus_to_exitcode(status)


def events_of(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def base_env(server: str, migrations: Path, targets: Path, concurrency: int) -> dict[str, str]:
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "HOME") if key in os.environ}
    env.update(
        DATABASE_URL=server,
        MIGRATIONS_DIR=str(migrations),
        TARGETS_FILE=str(targets),
        FLEET_CONCURRENCY=str(concurrency),
        MIGRATION_PLACEHOLDERS=f"level=_c{concurrency}",
        MIGRATIONS_TABLE=f"schema_migrations_c{concurrency}",
        LOG_FORMAT="json",
        DB_WAIT_TIMEOUT="60",
    )
    return env


def profile_summary(path: Path) -> list[tuple[str, float]]:
    """cProfile's own time, by where it was spent."""
    stats = pstats.Stats(str(path))
    groups: dict[str, float] = defaultdict(float)
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        own = row[2]
        if "psycopg" in filename and ("wait" in function or "poll" in function):
            groups["waiting for the server (psycopg wait)"] += own
        elif "'acquire' of '_thread" in function or function in ("select", "poll"):
            groups["threads idle (pool, probe)"] += own
        elif "psycopg" in filename:
            groups["psycopg (sending, results)"] += own
        elif "pglast" in filename or "sqlscript" in filename:
            groups["reading SQL (pglast, sqlscript)"] += own
        elif "logging" in filename or "json" in filename or "logs.py" in filename:
            groups["logging (JSON lines)"] += own
        elif "importlib" in filename or function.startswith("<frozen"):
            groups["imports"] += own
        elif "/runner/" in filename:
            groups["runner's code"] += own
        else:
            groups["other (stdlib, tenacity, ...)"] += own
    return sorted(groups.items(), key=lambda item: -item[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--schemas", type=int, default=500)
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    parser.add_argument("--keep", action="store_true", help="keep the bench_fleet_* databases")
    options = parser.parse_args()
    levels = [int(level) for level in options.concurrency.split(",")]
    tag = uuid.uuid4().hex[:6]
    schema_db = f"bench_fleet_{tag}_schemas"
    databases = [f"bench_fleet_{tag}_{n:04}" for n in range(options.databases)]
    load = os.getloadavg()
    print(
        f"# fleet benchmark: {options.schemas} schema targets, {options.databases} database "
        f"targets, {len(MIGRATIONS)} migrations each; load average {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f} at the start; {os.cpu_count()} CPUs",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    for folder, files in (("schemas", SCHEMA_MIGRATIONS), ("databases", MIGRATIONS)):
        (work / folder).mkdir()
        for name, text in files.items():
            (work / folder / name).write_text(text)
    measured: list[Measured] = []
    failures: list[str] = []
    created: list[str] = []
    try:
        started = time.perf_counter()
        for name in [schema_db, *databases]:
            admin(options.server, f'CREATE DATABASE "{name}"')
            created.append(name)
        print(
            f"# created {len(created)} databases in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        main_url = url_of(options.server, schema_db)
        for level in levels:
            for kind, count in (("schema", options.schemas), ("database", options.databases)):
                if not count:
                    continue
                if kind == "schema":
                    entries = [
                        {"name": f"tenant_{n:04}", "schema": f"t{n:04}_c{level}"}
                        for n in range(count)
                    ]
                else:
                    entries = [{"name": name, "database": name} for name in databases]
                targets = work / f"{kind}-{level}.yaml"
                targets.write_text(yaml.safe_dump(entries))
                env = base_env(main_url, work / f"{kind}s", targets, level)
                for attempt in ("first", "no-op"):
                    log = work / f"{kind}-{level}-{attempt}.log"
                    seconds, rss, code = run_runner(env, log)
                    result = Measured(
                        kind, level, count, seconds, rss, code, attempt, events_of(log)
                    )
                    measured.append(result)
                    outcomes: dict[str, int] = next(
                        (e["outcomes"] for e in result.events if e["event"] == "fleet.finished"),
                        {},
                    )
                    expected = {"succeeded" if attempt == "first" else "up_to_date": count}
                    if code != 0 or outcomes != expected:
                        failures.append(f"{kind} c={level} {attempt}: exit {code}, {outcomes}")
                    if attempt == "no-op" and kind == "schema" and seconds >= NOOP_LIMIT:
                        failures.append(f"no-op re-run of {count} schemas took {seconds:.1f} s")
                    print(
                        f"{kind:8} targets={count:4} concurrency={level:2} {attempt:5}: "
                        f"{seconds:7.2f} s, peak RSS {rss:5.1f} MiB, exit {code}",
                        flush=True,
                    )
        if options.profile:
            level = levels[0]
            entries = [
                {"name": f"profiled_{n:04}", "schema": f"p{n:04}"} for n in range(options.schemas)
            ]
            targets = work / "profiled.yaml"
            targets.write_text(yaml.safe_dump(entries))
            profile = work / "profile.out"
            seconds, _, code = run_runner(
                base_env(main_url, work / "schemas", targets, level),
                work / "profile.log",
                profile=profile,
            )
            print(
                f"\n## where the time goes, cProfile (schemas, concurrency {level}, "
                f"{seconds:.1f} s, exit {code})"
            )
            print("| spent in | own seconds |\n|---|---:|")
            for group, own in profile_summary(profile):
                print(f"| {group} | {own:.2f} |")
    finally:
        if not options.keep:
            for name in created:
                admin(options.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    report(measured)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def report(measured: list[Measured]) -> None:
    print("\n## wall time and memory\n")
    print(
        "| targets | concurrency | up (s) | per target (ms) | no-op re-run (s) | peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for first, again in zip(measured[::2], measured[1::2], strict=True):
        print(
            f"| {first.targets} {first.kind} | {first.concurrency} | {first.seconds:.2f} | "
            f"{first.seconds / first.targets * 1000:.1f} | {again.seconds:.2f} | "
            f"{max(first.rss_mib, again.rss_mib):.1f} |"
        )
    print("\n## where the time goes (from the runner's log; target-seconds are summed over")
    print("## the targets running side by side)\n")
    print(
        "| run | start-up (s) | setup (s) | in targets (target-s) | connecting | migrations "
        "(server) | lock waits | runner's own work | target p50 / p95 (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in measured:
        parts = result.breakdown()
        stamps = [_stamp(e) for e in result.events]
        log_span = (max(stamps) - min(stamps)) if stamps else 0.0
        startup = max(result.seconds - log_span, 0.0)
        durations = sorted(
            e["duration_ms"] for e in result.events if e["event"] == "target.finished"
        )
        p50 = statistics.median(durations) if durations else 0
        p95 = durations[int(len(durations) * 0.95) - 1] if durations else 0
        print(
            f"| {result.kind} c={result.concurrency} {result.attempt} | {startup:.2f} | "
            f"{parts.get('setup before the first target', 0):.2f} | "
            f"{parts.get('in targets', 0):.2f} | {parts.get('connecting', 0):.2f} | "
            f"{parts.get('migrations (server)', 0):.2f} | {parts.get('lock waits', 0):.2f} | "
            f"{parts.get(OWN_WORK, 0):.2f} | {p50:.0f} / {p95:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
