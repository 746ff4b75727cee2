#!/usr/bin/env python3
"""Benchmark `python entrypoint.py up` against its floor (`psql -1 -f` of the same SQL) and
dbmate, on databases it creates on a PostgreSQL server and drops again.

    python bench/bench.py                  # full run: 5 runs per figure, ~5-10 minutes
    python bench/bench.py --quick          # fewer runs, smaller workloads, ~1-2 minutes
    python bench/bench.py --json out.json  # also write every figure

Workloads (see bench/README.md): noop, many, bulk, race, and the peak memory of one `up`;
bigfile (single files of 40 and 200 MiB that `up` streams; minutes long) and many-sync (`many`
on a throwaway primary with a synchronous standby) only when named.
Exit code 0 whatever the timings; 1 when a correctness check fails (a runner that should have
succeeded exited non-zero, or a database does not hold exactly the expected migrations);
2 on a usage or setup error; 130 on Ctrl-C. Every database it creates is dropped on the way out,
every server it starts stopped and removed.

This file is the entry point (options, the order of the workloads, cleanup); the rest of the
package bench/ is imported from the checkout: procs (processes, rusage), databases (the server,
migration sets), context, checks, workloads, bigfile, manysync with cluster and proxy, report.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/bench.py`: import bench/ as the package `bench`
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from types import FrameType

from bench import cluster
from bench.bigfile import bench_bigfile
from bench.context import ROOT, Context
from bench.databases import Server, bulk_table, small_tables, write_set
from bench.dbmate import find_dbmate
from bench.manysync import bench_many_sync
from bench.procs import BenchError, clean_env, kill_live_children, progress
from bench.report import MemoryResult, Workload, machine_info, render, write_json
from bench.workloads import bench_apply, bench_memory, bench_noop, bench_race

DEFAULT_ENTRYPOINT = ROOT / "entrypoint.py"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "migration-runner-bench"
)
WORKLOADS = ("noop", "many", "bulk", "race", "bigfile", "many-sync")
# The targets (issue 13's), each a flag: (flag, default, what it bounds).
TARGETS = (
    ("--target-noop", 1.2, "noop: ratio to import psycopg + connect"),
    ("--target-many", 1.15, "many: ratio to psql -1 -f"),
    ("--target-bulk", 1.03, "bulk: ratio to psql -1 -f"),
    ("--target-many-sync", 1.25, "many-sync: the runner as shipped, behind the standby"),
    ("--target-race", 2.0, "race, the smallest crowd: ratio to psql -1 -f"),
    (
        "--target-race-baseline",
        1.3,
        "race, the smallest crowd: median <= psql floor + this x the same crowd of bare "
        "`python -c 'import psycopg'` released at one instant",
    ),
    ("--target-memory-mb", 45.0, "peak RSS of each `many` run, MB"),
)


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
        help=f"comma-separated subset of {','.join(WORKLOADS)} (memory comes with many; "
        "bigfile, minutes long, and many-sync, which starts its own servers, run only when "
        "named)",
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
    parser.add_argument(
        "--many", type=int, help="migrations in `many` and `many-sync` (1000; 200 with --quick)"
    )
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
    for flag, default, meaning in TARGETS:
        parser.add_argument(flag, type=float, default=default, help=meaning)
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
        "--commit-delay-ms",
        type=float,
        default=1.0,
        help="many-sync: delay of each chunk between the primary and its synchronous standby, "
        "each way",
    )
    parser.add_argument(
        "--pg-bindir",
        type=Path,
        help="many-sync: directory of initdb, pg_ctl, pg_basebackup (else PATH, else the newest "
        "/usr/lib/postgresql/*/bin)",
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
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    args.workloads = chosen
    args.race_runners = sorted({int(n) for n in args.race_runners.split(",") if n.strip()})
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.bigfile_mib or min(args.bigfile_mib) < 2:
        parser.error("--bigfile-mib: sizes of 2 MiB or more (smaller files are not streamed)")
    if args.commit_delay_ms < 0:
        parser.error("--commit-delay-ms must not be negative")
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
        if name == "many-sync":  # two tables: with the standby, and on --server
            for work in bench_many_sync(ctx, runs, args.many):
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
    crashed = False
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
            # Warm-up: byte-compile the runner as the image's build does (an environment with
            # PYTHONDONTWRITEBYTECODE would otherwise compile every module on every run), and
            # load the binaries into the page cache.
            ctx.run(
                [
                    *(ctx.python, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash"),
                    str(ctx.entrypoint.parent / "runner"),
                ],
                clean_env(),
                "compile",
            )
            ctx.run([ctx.python, str(ctx.entrypoint), "--version"], clean_env(), "warmup")
            workloads, memory = run_workloads(ctx)
            elapsed = time.perf_counter() - started
            report = render(machine, workloads, memory, ctx, elapsed)
            print(report, flush=True)
            if args.json:
                write_json(args.json, machine, args, workloads, memory, ctx, elapsed)
                progress(f"wrote {args.json}")
            return 1 if ctx.correctness else 0
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    except BenchError as error:
        progress(f"error: {error}")
        return 2
    except Exception:
        crashed = True  # a bug of the benchmark's: keep the logs for its traceback
        raise
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not stop us
        try:
            kill_live_children()
            cluster.close_all()  # many-sync's servers, when an interruption left them running
            if server is not None:
                left = server.drop_all()
                if left:
                    progress(f"could not drop: {', '.join(left)}")
                server.close()
            if args.keep_logs or crashed or (ctx is not None and ctx.correctness):
                progress(f"kept {root} (logs of every run)")
            else:
                shutil.rmtree(root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
