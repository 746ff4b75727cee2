"""Child processes: spawning each in its own process group, waiting, killing, wall time and peak
memory (rusage) of one command or of N released at one instant; their environment; progress."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def run_checked(argv: Sequence[str], *, cwd: Path, log: Path, timeout: float = 120.0) -> None:
    """Run a setup command (initdb, pg_ctl...) to its end like a measured one (its own process
    group, killed on Ctrl-C, output appended to `log`); BenchError when it fails."""
    code = _reap(_spawn(argv, env=clean_env(), cwd=cwd, log=log), timeout)
    if code != 0:
        tail: list[str] = []
        with contextlib.suppress(OSError):
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise BenchError(
            f"`{' '.join(argv)}` exited {code}: " + (" | ".join(tail) if tail else "(no output)")
        )


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
