"""The opt-in bigfile workload: one migration file of 40 and of 200 MiB (one-row INSERTs, or
COPY data) that `up` streams, against `psql -1 -f`, with the runner's peak RSS against its
bound; then `status` and `validate --offline` on the largest sets."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.checks import failure_excerpt
from bench.context import TOOL, Context
from bench.databases import Migration, MigrationSet
from bench.procs import BenchError, clean_env, progress
from bench.report import Row, Workload
from bench.workloads import bench_apply

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
