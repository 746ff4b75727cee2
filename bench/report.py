"""Results: the rows of a workload's table, judged against the floor and the targets; the
machine they were measured on; the report as text and as JSON."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.context import ROOT, TOOL, Context
from bench.procs import GNU_TIME, Sample, clean_env, output_of


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
    # (tool of a baseline row, factor): pass when the median <= the floor's median + factor x
    # the baseline's median; bound_seconds is that sum, set by Workload.judge.
    budget: tuple[str, float] | None = None
    bound_seconds: float | None = None
    ratio: float | None = None
    min_ratio: float | None = None  # best run / the floor's best run: less sensitive to noise
    # The median of each run's own ratio (run i / the floor's run i, measured moments apart).
    paired_ratio: float | None = None
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
        if self.budget is not None:
            bound = self.bound_seconds
            parts.append(f"<={bound:.2f}s" if bound is not None else "<=floor+base")
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
            if len(self.samples) == len(floor.samples):
                self.paired_ratio = statistics.median(
                    mine / theirs
                    for mine, theirs in zip(self.seconds(), floor.seconds(), strict=True)
                )
        if self.role != "target":
            return
        ok = True
        if self.target_ratio is not None:
            ok = self.ratio is not None and self.ratio <= self.target_ratio
        if self.budget is not None:
            ok = ok and self.bound_seconds is not None and self.median() <= self.bound_seconds
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
            "paired_ratio_to_floor": (
                round(self.paired_ratio, 3) if self.paired_ratio is not None else None
            ),
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
        if self.budget is not None:
            data["target_budget"] = {"baseline": self.budget[0], "factor": self.budget[1]}
            data["target_bound_s"] = (
                round(self.bound_seconds, 4) if self.bound_seconds is not None else None
            )
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
            if row.budget is not None and floor is not None and floor.samples:
                base = self.row(row.budget[0])
                if base.samples:
                    row.bound_seconds = floor.median() + row.budget[1] * base.median()
            row.judge(floor)


@dataclass
class MemoryResult:
    rows: list[tuple[str, list[int]]]  # tool, max RSS KiB per run
    target_mb: float
    passed: bool | None = None


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
        "against the target; (min) = best / floor's best; (paired) = median of each run's "
        "ratio to the floor's run of the same round",
        "",
    ]
    header = (
        f"{'tool':<38} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7} {'(min)':>7} "
        f"{'(paired)':>8}  "
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
            paired = f"{row.paired_ratio:.2f}x" if row.paired_ratio is not None else "-"
            result = {True: "PASS", False: "FAIL", None: ""}[row.passed]
            extra = [row.note] if row.note else []
            if row.show_rss and row.peak_rss_mb() is not None:
                extra.insert(0, f"peak RSS {row.peak_rss_mb():.1f} MiB")
            if row.failures() and not row.note.endswith("failed"):
                extra.insert(0, f"{row.failures()}/{row.processes()} processes failed")
            lines.append(
                f"{row.tool:<38} {row.median():>7.3f}s {min(seconds):>7.3f}s "
                f"{max(seconds):>7.3f}s {ratio:>7} {min_ratio:>7} {paired:>8}  "
                f"{row.target_text():<17} {result}" + (f"  [{'; '.join(extra)}]" if extra else "")
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


def write_json(
    path: Path,
    machine: dict[str, Any],
    args: argparse.Namespace,
    workloads: list[Workload],
    memory: MemoryResult | None,
    ctx: Context,
    elapsed: float,
) -> None:
    """Every figure of the run: the machine, the options, each row's samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
