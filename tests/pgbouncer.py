"""A real PgBouncer (Debian's `pgbouncer` package) for tests, in front of a given PostgreSQL.

It listens on a free port on 127.0.0.1 (TCP only, no Unix socket) and maps every database name
to the same name on the server (`* = host=... port=...`), so `url(dbname)` works for a database
a test has just created. Clients are trusted; PgBouncer logs into the server as the server
URL's user, with its password when the URL has one (the auth_file holds it in plain text,
which SCRAM needs). The config, log and pidfile live in a temporary directory, removed on
close. It runs in the foreground as our own child process, never through the package's
service (whose instance, if any, is not used).

As root it runs as the `postgres` system user (PgBouncer refuses root): `-u postgres`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests.pgcluster import SUPERUSER, free_port

DEFAULT_BINARY = "/usr/sbin/pgbouncer"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def find_pgbouncer() -> str | None:
    """The path of the pgbouncer binary: PATH first, then Debian's /usr/sbin; None if absent."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return DEFAULT_BINARY if os.access(DEFAULT_BINARY, os.X_OK) else None


def _ini_value(value: str) -> str:
    """A value for a libpq-style connect string in the [databases] section."""
    if value and not any(c in value for c in " '\\"):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _userlist_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """Start with start() (or `with PgBouncer(url).start() as bouncer:`), stop with close()."""

    def __init__(
        self, server_url: str, *, pool_mode: str = "transaction", pool_size: int = 40
    ) -> None:
        if pool_mode not in ("session", "transaction", "statement"):
            raise ValueError(f"unknown pool_mode {pool_mode!r}")
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("no pgbouncer binary found: apt-get install pgbouncer")
        self.binary = binary
        self.server_url = server_url
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        params = conninfo_to_dict(server_url)
        self.server_host = str(params.get("host") or params.get("hostaddr") or "127.0.0.1")
        self.server_port = int(params.get("port") or 5432)
        self.user = str(params.get("user") or SUPERUSER)
        password = params.get("password")
        self.password = str(password) if password is not None else None
        self.server_dbname = str(params.get("dbname") or self.user)
        self.port = 0
        self.root: Path | None = None
        self.log: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PgBouncer:
        """Write the config, start PgBouncer, and wait until it lets a client reach the server.
        Raises RuntimeError, with the end of PgBouncer's log, when it does not."""
        if self._process is not None:
            raise RuntimeError("PgBouncer already started")
        for attempt in range(3):
            try:
                self._launch()
                error = self._wait_ready()
            except BaseException:
                self.close()
                raise
            if error is None:
                return self
            tail = self.log_tail()
            self.close()
            # The free port can be taken by someone else before PgBouncer binds it: try another.
            if "Address already in use" not in tail or attempt == 2:
                raise RuntimeError(f"{error}\n{tail}")
        raise AssertionError("unreachable")

    def url(self, dbname: str) -> str:
        """A postgresql:// URL through PgBouncer to `dbname` on the server, as the same user."""
        if not self.port:
            raise RuntimeError("PgBouncer not started")
        secret = self.password
        auth = (
            f"{quote(self.user, safe='')}:{quote(secret, safe='')}"
            if secret
            else quote(self.user, safe="")
        )
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def close(self) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL after a few seconds); remove its directory."""
        process, self._process = self._process, None
        try:
            if process is not None:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=STOP_TIMEOUT)
                else:
                    process.wait()
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            self.port = 0

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- diagnostics -----------------------------------------------------------------------

    def log_tail(self, chars: int = 3000) -> str:
        """The end of PgBouncer's log file; of its stderr when the log file is still empty (an
        error before the config named the log file). Its stderr repeats its log otherwise."""
        if self.root is None:
            return "(no log)"
        for name in ("pgbouncer.log", "stderr.log"):
            path = self.root / name
            text = path.read_text(errors="replace") if path.exists() else ""
            if text.strip():
                return f"--- {name}:\n{text[-chars:]}"
        return "(no log)"

    # -- internals -------------------------------------------------------------------------

    def config(self) -> str:
        """The pgbouncer.ini written into the temporary directory."""
        assert self.root is not None
        assert self.log is not None
        return "\n".join(
            [
                "[databases]",
                # Any database name the client asks for, the same name on the server.
                f"* = host={_ini_value(self.server_host)} port={self.server_port}",
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.root / 'userlist.txt'}",
                f"logfile = {self.log}",
                f"pidfile = {self.root / 'pgbouncer.pid'}",
                f"pool_mode = {self.pool_mode}",
                "max_client_conn = 500",
                f"default_pool_size = {self.pool_size}",
                # PgBouncer tracks client_encoding, DateStyle, TimeZone, application_name and
                # standard_conforming_strings itself; any other startup parameter is refused
                # unless listed here (JDBC and old psycopg2 send extra_float_digits).
                "ignore_startup_parameters = extra_float_digits",
                "server_login_retry = 1",
                "server_connect_timeout = 5",
                "",
            ]
        )

    def userlist(self) -> str:
        fields = [_userlist_field(self.user)]
        fields.append(_userlist_field(self.password or ""))
        return " ".join(fields) + "\n"

    def _launch(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="migration-runner-pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        self.port = free_port()
        ini = self.root / "pgbouncer.ini"
        userlist = self.root / "userlist.txt"
        userlist.write_text(self.userlist())
        userlist.chmod(0o600)
        ini.write_text(self.config())
        command = [self.binary]
        if os.geteuid() == 0:
            for path in (self.root, ini, userlist):
                shutil.chown(path, SUPERUSER, SUPERUSER)
            command += ["-u", SUPERUSER]
        command.append(str(ini))
        self._stderr = (self.root / "stderr.log").open("wb")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C aimed at pytest is not PgBouncer's to handle
        )

    def _wait_ready(self) -> str | None:
        """Poll until a client gets through to the server: None then, else what went wrong
        (PgBouncer exited, or the time ran out)."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        url = self.url(self.server_dbname)
        last_error = ""
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"PgBouncer exited at start ({self._process.returncode})"
            try:
                with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return None
            except psycopg.Error as exc:
                last_error = str(exc).strip()
            time.sleep(0.1)
        return (
            f"PgBouncer on 127.0.0.1:{self.port} let no client through to "
            f"{self.server_host}:{self.server_port} within {START_TIMEOUT:.0f} s: {last_error}"
        )
