"""The opt-in many-sync workload: `many` where a commit is expensive. On a throwaway primary whose
every synchronous commit waits for a standby behind the benchmark's delaying proxy (a round trip
of the delay and the standby's flush, like a Multi-AZ cloud database), and on the benchmark's
own server for comparison: the psql
floor (one commit), the runner as shipped (asynchronous commit per migration, one synchronous
commit at the end) and the runner with one synchronous commit per migration
(bench/sync_commit_runner.py), in rotating order on fresh databases."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import psycopg

from bench.checks import check_result
from bench.cluster import SyncPair, find_bindir
from bench.context import TOOL, Context, rotated
from bench.databases import MigrationSet, Server, small_tables, write_set
from bench.procs import clean_env, progress
from bench.report import Row, Workload

SHIM = Path(__file__).resolve().parent / "sync_commit_runner.py"
SYNC_EACH = f"{TOOL} synchronous_commit=on"
PLACES = ("standby", "local")  # the primary with its synchronous standby; --server
TOOLS = {"psql": "psql -1 -f", "shipped": TOOL, "sync": SYNC_EACH}
PROBES = 200  # autocommit INSERTs timed for the cost of one commit


def bench_many_sync(ctx: Context, runs: int, count: int) -> list[Workload]:
    """Both tables: on the primary with its synchronous standby, and on --server. The pair
    of servers is stopped and removed at the end, also on failure or interruption."""
    args = ctx.args
    started = time.perf_counter()
    mset = write_set(ctx.root / "sets", "many_sync", small_tables(count))
    delay_ms = args.commit_delay_ms
    pair = SyncPair(find_bindir(args.pg_bindir), delay_ms / 1000, ctx.log("many_sync_servers"))
    primary: Server | None = None
    try:
        progress(f"  starting a primary and its synchronous standby in {pair.root} ...")
        pair.start()
        primary = Server(pair.url, checkpoint=not args.no_checkpoint)
        contexts = {"standby": dataclasses.replace(ctx, server=primary), "local": ctx}
        costs = {place: commit_cost_ms(c) for place, c in contexts.items()}
        progress(
            "  one synchronous commit: "
            + ", ".join(f"{place} {costs[place][0]:.2f} ms" for place in PLACES)
        )
        what = f"{count} small migrations (CREATE TABLE, one file each) onto an empty database"
        works = {
            "standby": Workload(
                "many_sync",
                f"many-sync: {what}, on a throwaway primary whose commits wait for a synchronous "
                f"standby {delay_ms:g} ms away each way (one synchronous commit "
                f"{costs['standby'][0]:.2f} ms)",
                _rows(args.target_many_sync),
            ),
            "local": Workload(
                "many_sync_local",
                f"many-sync (local): the same on the benchmark's server, no standby (one "
                f"synchronous commit {costs['local'][0]:.2f} ms)",
                _rows(None),
            ),
        }
        flushes = _measure(contexts, works, mset, runs)
        for place, work in works.items():
            work.notes += _notes(work, costs[place], flushes[place], count)
        works["standby"].notes.insert(
            0,
            f"primary and standby: PostgreSQL {primary.setting('server_version')} from "
            f"{pair.bindir}, fsync={primary.setting('fsync')}, synchronous_commit="
            f"{primary.setting('synchronous_commit')}, synchronous_standby_names='"
            f"{primary.setting('synchronous_standby_names')}'; the standby (pg_basebackup -R) "
            f"streams through the benchmark's proxy, which forwards each chunk {delay_ms:g} ms "
            "late in both directions",
        )
        _expect_synchronous(contexts["standby"], flushes["standby"], count)
        # The local table's own measurements; the rest (servers, commit costs) is the standby's.
        works["standby"].seconds_spent = time.perf_counter() - started
        works["standby"].seconds_spent -= works["local"].seconds_spent
        return [works["standby"], works["local"]]
    finally:
        if primary is not None:
            primary.close()
        pair.close()


def _rows(target: float | None) -> list[Row]:
    return [
        Row(TOOLS["psql"], "floor", note="one transaction, one commit"),
        Row(
            TOOLS["shipped"],
            "info" if target is None else "target",
            target_ratio=target,
            no_failures=True,
            note="as shipped: asynchronous commit per migration, one synchronous at the end",
        ),
        Row(
            TOOLS["sync"],
            "info",
            note="bench/sync_commit_runner.py: one synchronous commit per migration",
        ),
    ]


def _measure(
    contexts: dict[str, Context], works: dict[str, Workload], mset: MigrationSet, runs: int
) -> dict[str, dict[str, list[int]]]:
    """Each run measures the six (3 tools x 2 places) in rotating order, reversed every other
    run, so that no tool always follows the same one; each on a database created just before
    and dropped just after, so that none pays for the autovacuum of another's 1,000 new tables.
    The WAL flushes (pg_stat_wal.wal_sync) each run caused, per place and tool."""
    keys = {f"{place} {kind}": (place, kind) for place in PLACES for kind in TOOLS}
    flushes: dict[str, dict[str, list[int]]] = {place: {} for place in PLACES}
    for run in range(runs):
        order = rotated(list(keys), run)
        for key in order if run % 2 == 0 else reversed(order):
            place, kind = keys[key]
            c, label = contexts[place], f"many_sync_{place}_{kind}"
            database = c.server.create(f"many_sync_{kind}")
            try:
                if kind == "psql":
                    argv, env = c.psql_argv(database, mset.psql_file), clean_env()
                elif kind == "shipped":
                    argv, env = c.runner_argv(), c.runner_env(database, mset.runner_dir)
                else:
                    argv = [c.python, str(SHIM), "up"]
                    env = c.runner_env(
                        database, mset.runner_dir, BENCH_RUNNER_ROOT=str(c.entrypoint.parent)
                    )
                measuring = time.perf_counter()
                c.server.checkpoint()
                if place == "standby":
                    caught_up(c.server)
                before = wal_syncs(c.server)
                sample = c.run(argv, env, label)
                works[place].row(TOOLS[kind]).samples.append(sample)
                after = wal_syncs(c.server, gone=database)
                if before is not None and after is not None:
                    flushes[place].setdefault(kind, []).append(after - before)
                check_result(
                    c, TOOLS[kind], database, mset, "t_", sample, strict=True, log=c.log(label)
                )
                works[place].seconds_spent += time.perf_counter() - measuring
            finally:
                c.server.drop(database)
        last = {
            key: works[place].row(TOOLS[kind]).samples[-1] for key, (place, kind) in keys.items()
        }
        progress(
            f"  many-sync run {run + 1}/{runs}: "
            + ", ".join(f"{key} {sample.seconds:.3f}s" for key, sample in last.items())
        )
    return flushes


def caught_up(server: Server, timeout: float = 60.0) -> None:
    """Wait until the standby has replayed all the WAL there is, so that no measurement
    competes for the cores with the replay of the one before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = server.admin.execute(
            "SELECT bool_and(replay_lsn >= pg_current_wal_lsn()) FROM pg_stat_replication"
        ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.02)


def commit_cost_ms(ctx: Context) -> tuple[float, float]:
    """The mean milliseconds of one autocommit INSERT from psycopg with synchronous_commit on,
    and with it off, on a database of its own."""
    database = ctx.server.create("commit_cost")
    means = []
    try:
        with psycopg.connect(ctx.server.url(database), autocommit=True) as conn:
            conn.execute("CREATE TABLE commit_cost (id int)")
            for setting in ("SET synchronous_commit = on", "SET synchronous_commit = off"):
                conn.execute(setting)
                for _ in range(10):  # warm-up: the plan, the table's first page
                    conn.execute("INSERT INTO commit_cost VALUES (1)")
                started = time.perf_counter()
                for _ in range(PROBES):
                    conn.execute("INSERT INTO commit_cost VALUES (1)")
                means.append((time.perf_counter() - started) / PROBES * 1000)
    finally:
        ctx.server.drop(database)
    return means[0], means[1]


def wal_syncs(server: Server, *, gone: str | None = None) -> int | None:
    """The server's WAL flushes so far (pg_stat_wal.wal_sync; None before PostgreSQL 14). With
    `gone`, first wait (up to 5 s) until no session is left on that database: a backend adds
    its counts when it exits, before it leaves pg_stat_activity."""
    try:
        deadline = time.monotonic() + 5
        while gone is not None and time.monotonic() < deadline:
            row = server.admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (gone,)
            ).fetchone()
            if not row or not row[0]:
                break
            time.sleep(0.01)
        row = server.admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def _notes(
    work: Workload,
    cost: tuple[float, float],
    flushes: dict[str, list[int]],
    count: int,
) -> list[str]:
    where = "this primary" if work.name == "many_sync" else "the benchmark's server"
    notes = [
        f"one synchronous commit on {where}: {cost[0]:.2f} ms; the same with synchronous_commit"
        f" = off: {cost[1]:.2f} ms (means of {PROBES} autocommit INSERTs from psycopg)"
    ]
    shipped, each = work.row(TOOLS["shipped"]), work.row(TOOLS["sync"])
    if shipped.samples and each.samples:
        # Paired: the two were measured in the same run, a few seconds apart.
        pairs = [b.seconds - a.seconds for a, b in zip(shipped.samples, each.samples, strict=False)]
        extra = statistics.median(pairs) / count * 1000
        notes.append(
            f"{SYNC_EACH} costs {extra:.2f} ms per migration more than as shipped (median of "
            "the runs' differences)"
        )
    if flushes:
        notes.append(
            "WAL flushes per run (pg_stat_wal.wal_sync, median; the WAL writer's included): "
            + ", ".join(
                f"{TOOLS[kind]} {statistics.median(values):.0f}" for kind, values in flushes.items()
            )
        )
    return notes


def _expect_synchronous(ctx: Context, flushes: dict[str, list[int]], count: int) -> None:
    """The shim must have made each migration's commit synchronous: about one WAL flush per
    migration at least (each synchronous commit flushes its own commit record, unless the WAL
    writer happened to flush it first)."""
    values = flushes.get("sync")
    if values and ctx.server.setting("wal_sync_method") in ("fdatasync", "fsync"):
        ctx.expect(
            min(values) >= 0.9 * count,
            f"many-sync: {SYNC_EACH} flushed the WAL only {min(values)} times for {count} "
            "migrations: bench/sync_commit_runner.py did not make each commit synchronous",
        )
