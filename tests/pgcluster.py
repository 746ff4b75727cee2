"""A throwaway PostgreSQL cluster from the local binaries (initdb/pg_ctl), for tests that need
their own server: passwords, restarts, a server that starts late, or no server at all."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The directory of initdb and pg_ctl: PATH first, then Debian's versioned directories."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TempCluster:
    """initdb into a temporary directory; start, stop and restart with pg_ctl; remove on close.

    As root, the binaries run as the `postgres` system user (initdb refuses root)."""

    def __init__(self, *, password: str | None = None, port: int | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("no initdb/pg_ctl found: install the PostgreSQL server")
        self.bindir = bindir
        self.password = password
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="migration-runner-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
            self._as_user = ["runuser", "-u", SUPERUSER, "--"]

    def init(self) -> TempCluster:
        auth = "scram-sha-256" if self.password else "trust"
        command = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            f"--auth-host={auth}",
        ]
        if self.password:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password)
            if self._as_user:
                shutil.chown(pwfile, SUPERUSER, SUPERUSER)
            command.append(f"--pwfile={pwfile}")
        self._run(command)
        return self

    def start(self, *, wait: bool = True) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            # The runner sends a migration with its own statements around it in one query: keep
            # all of it in pg_stat_activity, where the fault tests look for COMMIT.
            "-c track_activity_query_size=16384"
        )
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
        command += ["-o", options, "start", "-w" if wait else "-W"]
        self._run(command)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket (trusted)."""
        psql = self.bindir / "psql"
        result = self._run(
            [
                str(psql),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                dbname,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ]
        )
        return result.stdout

    def url(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        secret = password if password is not None else self.password
        auth = f"{quote(user)}:{quote(secret, safe='')}" if secret else quote(user)
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._as_user, *command], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n{log[-2000:]}"
            )
        return result
