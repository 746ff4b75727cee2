"""A throwaway PostgreSQL primary with a synchronous standby, from the local initdb and pg_ctl:
the standby replicates through a DelayProxy, so that every synchronous commit on the primary
waits for a round trip of the proxy's delay, as on a cloud database with a standby in another
zone. Both servers run with fsync on, like a real server; everything is removed on close()."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

from bench.procs import BenchError, kill_live_children, run_checked
from bench.proxy import DelayProxy

SUPERUSER = "postgres"

# Every pair not closed yet: main() closes them on the way out, also after Ctrl-C or SIGTERM.
_RUNNING: list[SyncPair] = []


def find_bindir(given: Path | None) -> Path:
    """The directory of initdb, pg_ctl and pg_basebackup: `given`, else PATH, else the newest
    of Debian's /usr/lib/postgresql/*/bin."""
    if given is None:
        found = shutil.which("initdb")
        if found and shutil.which("pg_ctl"):
            given = Path(found).resolve().parent
        else:
            candidates = sorted(
                glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True
            )
            given = Path(candidates[0]).parent if candidates else None
    if given is None:
        raise BenchError("many-sync needs initdb and pg_ctl: install the server or --pg-bindir")
    for tool in ("initdb", "pg_ctl", "pg_basebackup"):
        if not os.access(given / tool, os.X_OK):
            raise BenchError(f"many-sync: no {tool} in {given}")
    return given


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def close_all() -> None:
    for pair in list(_RUNNING):
        pair.close()


class SyncPair:
    """initdb a primary, start it, pg_basebackup -R a standby through the proxy, start that,
    wait until the primary reports it as its synchronous standby. As root, the server's
    binaries run as the `postgres` system user (initdb refuses root)."""

    def __init__(self, bindir: Path, delay: float, log: Path) -> None:
        self.bindir = bindir
        self.delay = delay
        self.log = log  # the output of initdb, pg_ctl and pg_basebackup
        self.root = Path(tempfile.mkdtemp(prefix="migration-runner-bench-pg-"))
        _RUNNING.append(self)
        self.primary = self.root / "primary"
        self.standby = self.root / "standby"
        self.port = free_port()
        self.standby_port = free_port()
        while self.standby_port == self.port:
            self.standby_port = free_port()
        self.proxy: DelayProxy | None = None
        self._started: list[Path] = []  # data directories pg_ctl start was run on
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                self.close()
                raise BenchError(
                    f"many-sync runs as root, so its servers run as the `{SUPERUSER}` user, "
                    "which does not exist"
                ) from None
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
            self._as_user = ["runuser", "-u", SUPERUSER, "--"]

    @property
    def url(self) -> str:
        """The primary's, without a database, like --server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.primary),
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--auth=trust",  # pg_hba.conf then lets 127.0.0.1 replicate too
                "--no-sync",
            ]
        )
        self._configure(
            self.primary,
            listen_addresses="'127.0.0.1'",
            port=str(self.port),
            unix_socket_directories=f"'{self.root}'",
            cluster_name="'bench_primary'",
            fsync="on",
            synchronous_commit="on",
            full_page_writes="on",
            wal_level="replica",
            max_wal_senders="5",
            synchronous_standby_names="'*'",
        )
        self._pg_ctl(self.primary, "start")
        self.proxy = DelayProxy(("127.0.0.1", self.port), self.delay)
        self._run(
            [
                str(self.bindir / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.proxy.port),  # so that -R points the standby at the proxy
                "-U",
                SUPERUSER,
                "-D",
                str(self.standby),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ]
        )
        self._configure(
            self.standby,
            port=str(self.standby_port),
            cluster_name="'bench_standby'",  # also its application_name on the primary
            synchronous_standby_names="''",
            hot_standby="on",
        )
        self._pg_ctl(self.standby, "start")
        self._wait_for_sync_standby(timeout)

    def close(self) -> None:
        """Stop both servers (immediate: nothing of theirs is kept) and the proxy, remove the
        directory. Idempotent, so that main() can call it again after an interrupted one."""
        kill_live_children()  # an interrupted initdb or pg_ctl (a runner rolls back first)
        for data in (self.standby, self.primary):
            deadline = time.monotonic() + 3
            while data in self._started and not (data / "postmaster.pid").exists():
                if time.monotonic() > deadline:  # a start that failed, or never got that far
                    break
                time.sleep(0.05)  # an interrupted `pg_ctl start` may have forked the server
            if (data / "postmaster.pid").exists():
                try:
                    self._pg_ctl(data, "stop", "-m", "immediate")
                except BenchError:
                    _kill_postmaster(data)
        self._started = []
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        shutil.rmtree(self.root, ignore_errors=True)
        if self in _RUNNING:
            _RUNNING.remove(self)

    def server_log_tail(self, lines: int = 5) -> str:
        found: list[str] = []
        for name in ("primary.log", "standby.log"):
            with contextlib.suppress(OSError):
                text = (self.root / name).read_text(encoding="utf-8", errors="replace")
                found += [f"{name}: {line}" for line in text.strip().splitlines()[-lines:]]
        return " | ".join(found) or "(no server log)"

    def _wait_for_sync_standby(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication "
                    "WHERE state = 'streaming' AND sync_state = 'sync'"
                ).fetchone()
                if row and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"many-sync: the standby did not become synchronous in {timeout:g}s: "
                        + self.server_log_tail()
                    )
                time.sleep(0.05)

    def _configure(self, data: Path, **settings: str) -> None:
        """Append to postgresql.conf: the last setting of a name wins."""
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# migration-runner bench\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _pg_ctl(self, data: Path, action: str, *options: str) -> None:
        log = self.root / f"{data.name}.log"
        if action == "start":
            self._started.append(data)
        argv = [str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120"]
        try:
            self._run([*argv, *options, action])
        except BenchError as error:
            raise BenchError(f"{error}; {self.server_log_tail()}") from None

    def _run(self, argv: Sequence[str]) -> None:
        run_checked([*self._as_user, *argv], cwd=self.root, log=self.log, timeout=180)


def _kill_postmaster(data: Path) -> None:
    """When pg_ctl could not stop a server: SIGQUIT (immediate shutdown), then SIGKILL."""
    try:
        pid = int((data / "postmaster.pid").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return
    for signum in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)
