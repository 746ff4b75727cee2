"""The workloads on the benchmark's server: noop, many and bulk (one `up` at a time against
`psql -1 -f`), race (N runners released at one instant), and the peak memory of `many`."""

from __future__ import annotations

from bench.checks import check_result, error_summary
from bench.context import TOOL, Context, rotated
from bench.databases import MigrationSet, race_tables, small_tables, write_set
from bench.procs import Sample, clean_env, measure_race, progress
from bench.report import MemoryResult, Row, Workload


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


def bench_race(
    ctx: Context, runs: int, count: int, rows: int, crowds: list[int]
) -> tuple[Workload, list[str]]:
    mset = write_set(ctx.root / "sets", "race", race_tables(count, rows))
    what = f"{count} migrations" + (f" of {rows:,} rows each" if rows else " (empty tables)")
    # The concurrent-start baseline: the smallest crowd of bare interpreters importing psycopg,
    # released by the same barrier. What N runners cannot avoid paying on N processes' start.
    smallest, factor = min(crowds), ctx.args.target_race_baseline
    baseline = f"python -c 'import psycopg' x{smallest}"
    work = Workload(
        "race",
        f"race: N runners released at one instant onto an empty database, {what}; wall time "
        "from the release to the last exit",
        [
            Row("psql -1 -f", "floor", note="one process"),
            Row(baseline, "info", note="concurrent-start baseline: no database, same barrier"),
            Row(f"{TOOL} x1", "info"),
        ],
    )
    tools = ["psql", baseline, f"{TOOL} x1"]
    for crowd in crowds:
        target = ctx.args.target_race if crowd == smallest else None
        budget = (baseline, factor) if crowd == smallest else None
        work.rows.append(
            Row(
                f"{TOOL} x{crowd}",
                "target",
                target_ratio=target,
                no_failures=True,
                budget=budget,
            )
        )
        tools.append(f"{TOOL} x{crowd}")
    if ctx.dbmate:
        for crowd in crowds:
            work.rows.append(Row(f"dbmate x{crowd}", "info"))
            tools.append(f"dbmate x{crowd}")
    dbmate_notes: list[str] = []
    for run in range(runs):
        for tool in rotated(tools, run):
            if tool == baseline:
                label = f"race_import_psycopg_x{smallest}_run{run + 1}"
                sample = measure_race(
                    [ctx.python, "-c", "import psycopg"],
                    smallest,
                    env=clean_env(),
                    cwd=ctx.root,
                    log=ctx.log(label),
                    timeout=ctx.args.timeout,
                )
                work.row(baseline).samples.append(sample)
                ctx.expect(sample.failures == 0, f"race: `{baseline}` exited {sample.exit_codes}")
                continue
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
    floor_row, base_row = work.row("psql -1 -f"), work.row(baseline)
    crowd_row = work.row(f"{TOOL} x{smallest}")
    if floor_row.samples and base_row.samples and crowd_row.samples:
        bound = floor_row.median() + factor * base_row.median()
        met = "met" if crowd_row.median() <= bound else "not met"
        work.notes.append(
            f"{TOOL} x{smallest} against the concurrent start: target <= psql floor "
            f"{floor_row.median():.3f}s + {factor:g} x {base_row.median():.3f}s ({smallest} bare "
            f"`python -c 'import psycopg'` released at one instant) = {bound:.3f}s; median "
            f"{crowd_row.median():.3f}s: {met}"
        )
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
